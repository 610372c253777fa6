"""The plan for each role: member node, gateway node, node in no gateway, gateway without an endpoint."""

from __future__ import annotations

from typing import Any

import pytest

from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.dataplane.state import (
    SCOPE_SITE,
    UNREACHABLE,
    Address,
    FdbEntry,
    IPsecConnection,
    Neighbor,
    NodeNetwork,
    Route,
    Rule,
    VxlanLink,
)
from tests.unit.plan_cluster import JSON, cluster_json, nodes, parse

CFG = PlanConfig()
CLOUD_SUBNETS = {"10.244.0.0/24", "10.244.1.0/24"}
EDGE_A_SUBNETS = {"10.245.0.0/24", "10.245.1.0/24", "10.245.2.0/24"}
EDGE_B_SUBNETS = {"10.246.0.0/24", "10.246.1.0/24"}
DC_SUBNETS = {"10.247.0.0/24", "10.247.1.0/24"}


def run(node: str, objs: dict[str, JSON] | None = None, cfg: PlanConfig = CFG) -> PlanResult:
    return plan(parse(objs if objs is not None else cluster_json()), nodes(), node, cfg)


def inner_of(gateway_node: str, objs: dict[str, JSON] | None = None) -> str:
    """The inner address a gateway node holds on raven1, from its own plan."""
    (addr,) = [a for a in run(gateway_node, objs).state.addresses if a.ifname == "raven1" and a.scope == SCOPE_SITE]
    assert addr.cidr.endswith("/32")
    return addr.cidr.removesuffix("/32")


def test_member_node_routes_every_remote_subnet_via_the_virtual_next_hop() -> None:
    result = run("edge-a-2")
    s = result.state
    assert result.role == "member" and result.gateway == "gw-edge-a"
    assert result.problems == []
    assert s.links == {
        VxlanLink("raven0", 200, 4472, 1450, "0e:72:f0:a8:01:0c", local="192.168.1.12", underlay_ifname=None)
    }
    # The overlay address is site scope; the node's own source for cross-pool traffic sits beside it.
    assert s.addresses == {Address("raven0", "240.168.1.12/8", SCOPE_SITE), Address("raven0", "10.245.1.1/32")}
    # Every other pool's subnets (edge-b is relayed by the gateway: the member does not care), none of its own;
    # and the inner address of each gateway its own has a tunnel to (its `via` probes: path health).
    peers_inner = {f"{c.remote_ts}" for c in run("edge-a-1").state.ipsec}
    assert {r.dst for r in s.routes} == CLOUD_SUBNETS | EDGE_B_SUBNETS | DC_SUBNETS | peers_inner
    mtu = run("edge-a-1").state
    raven1_mtu = next(link.mtu for link in mtu.links if link.name == "raven1")
    for r in s.routes:
        # Pod subnets leave from the node source; the probes to inner addresses name their own source.
        src = None if r.dst in peers_inner else "10.245.1.1"
        assert (r.table, r.ifname, r.gateway, r.mtu, r.src) == (9027, "raven0", "169.254.240.1", raven1_mtu, src)
    # The virtual next hop resolves to the active gateway's raven0 MAC, reached at its node IP.
    # (and so does the gateway's own raven0 address, which the member probes: path health)
    assert s.neighbors == {Neighbor("raven0", "169.254.240.1", "0e:72:f0:a8:01:0b"),
                           Neighbor("raven0", "240.168.1.11", "0e:72:f0:a8:01:0b")}
    assert s.fdb == {FdbEntry("raven0", "0e:72:f0:a8:01:0b", "192.168.1.11")}
    assert s.rules == {Rule(priority=9027, table=9027)}
    assert s.ipsec == frozenset()
    assert s.mss_clamp_ifnames == {"raven0"}


def test_member_raven0_mac_matches_what_the_gateway_programs_for_it() -> None:
    member = run("edge-a-2").state
    gateway = run("edge-a-1").state
    (link,) = member.links
    assert Neighbor("raven0", "240.168.1.12", link.mac) in gateway.neighbors
    assert FdbEntry("raven0", link.mac, "192.168.1.12") in gateway.fdb
    gw_link = next(link for link in gateway.links if link.name == "raven0")
    assert member.neighbors == {Neighbor("raven0", "169.254.240.1", gw_link.mac),
                                Neighbor("raven0", "240.168.1.11", gw_link.mac)}


def test_gateway_node_serves_its_pool_and_tunnels_to_remote_gateways() -> None:
    result = run("edge-a-1")
    s = result.state
    assert result.role == "gateway" and result.problems == []
    my_inner = inner_of("edge-a-1")
    cloud_inner, dc_inner = inner_of("cloud-1"), inner_of("dc-1")
    assert {link.name for link in s.links} == {"raven0", "raven1"}
    raven1 = next(link for link in s.links if link.name == "raven1")
    assert (raven1.vni, raven1.port, raven1.local) == (201, 4473, my_inner)
    assert raven1.mtu < 1450
    assert s.addresses == {Address("raven0", "240.168.1.11/8", SCOPE_SITE), Address("raven0", "10.245.0.1/32"),
                           Address("raven1", f"{my_inner}/32", SCOPE_SITE), Address("raven1", "10.245.0.1/32")}
    assert s.rules == {Rule(9027, 9027), Rule(9026, 9028, iif="raven1")}

    # Return path for the pool's other nodes: only in the return table, only reached from raven1.
    returns = {r for r in s.routes if r.table == 9028 and r.ifname == "raven0"}
    assert returns == {
        Route("10.245.1.0/24", 9028, "raven0", "240.168.1.12"),
        Route("10.245.2.0/24", 9028, "raven0", "240.168.1.13"),
    }
    # The same table is the transit table (reached only from raven1): direct peers' subnets on their direct
    # link, the relayed pool's unreachable (a relay forwards only on direct links: no packet crosses two).
    transit = {r.dst: r.ifname for r in s.routes if r.table == 9028 and r.ifname != "raven0"}
    assert transit == {"10.244.0.0/24": "raven1", "10.244.1.0/24": "raven1", "10.247.0.0/24": "raven1",
                       "10.247.1.0/24": "raven1", "10.246.0.0/24": UNREACHABLE, "10.246.1.0/24": UNREACHABLE}
    assert Neighbor("raven0", "240.168.1.13", "0e:72:f0:a8:01:0d") in s.neighbors
    assert FdbEntry("raven0", "0e:72:f0:a8:01:0d", "192.168.1.13") in s.fdb

    # Remote subnets via the inner address of the gateway they are reached through; edge-b via the relay.
    remote = {r.dst: r.gateway for r in s.routes if r.table == 9027}
    assert remote == {
        **dict.fromkeys(CLOUD_SUBNETS, cloud_inner),
        **dict.fromkeys(DC_SUBNETS, dc_inner),
        **dict.fromkeys(EDGE_B_SUBNETS, cloud_inner),
    }
    assert all(r.ifname == "raven1" for r in s.routes if r.table == 9027)
    # No route at all for the pool's own subnets in the Raven table.
    assert not EDGE_A_SUBNETS & set(remote)

    # One IPsec connection per directly connected peer, inner/32 <-> inner/32; raven1 neighbour + FDB each.
    assert {c.name for c in s.ipsec} == {"raven-gw-cloud", "raven-gw-dc"}
    for peer, inner, endpoint in (("gw-cloud", cloud_inner, "cloud-1"), ("gw-dc", dc_inner, "dc-1")):
        conn = next(c for c in s.ipsec if c.name == f"raven-{peer}")
        assert (conn.local_ts, conn.remote_ts) == (f"{my_inner}/32", f"{inner}/32")
        # Certificate mode (the default): this node's identity, and the peer's ACTIVE ENDPOINT's identity.
        assert (conn.local_id, conn.remote_id, conn.auth) == ("raven-node-edge-a-1", f"raven-node-{endpoint}",
                                                              "pubkey")
        assert conn.local_addrs == ("192.168.1.11",)
        mac = "0e:72:" + ":".join(f"{int(o):02x}" for o in inner.split("."))
        assert Neighbor("raven1", inner, mac) in s.neighbors
        assert FdbEntry("raven1", mac, inner) in s.fdb
    assert s.mss_clamp_ifnames == {"raven0", "raven1"}


def test_gateway_with_one_node_has_no_return_routes() -> None:
    objs = cluster_json()
    for key in ("nodes",):
        objs["gw-dc"]["status"][key] = objs["gw-dc"]["status"][key][:1]
    s = run("dc-1", objs).state
    assert not [r for r in s.routes if r.ifname == "raven0"]  # table 9028 holds only the transit routes
    assert not [n for n in s.neighbors if n.ifname == "raven0"]


def test_node_in_no_gateway_has_no_raven_state() -> None:
    result = run("worker-without-gateway")
    assert result.state == NodeNetwork() and result.state.empty
    assert result.role == "none" and result.gateway is None and result.paths == []


def test_gateway_without_active_endpoint_gives_its_nodes_nothing_and_others_no_route_to_it() -> None:
    objs = cluster_json()
    objs["gw-edge-b"]["status"]["activeEndpoints"] = []
    for node in ("edge-b-1", "edge-b-2"):
        result = run(node, objs)
        assert result.state.empty, node
        assert result.gateway == "gw-edge-b" and result.role == "none"
    for node in ("cloud-1", "cloud-2", "edge-a-2"):
        s = run(node, objs).state
        assert not {r.dst for r in s.routes} & EDGE_B_SUBNETS
    assert "raven-gw-edge-b" not in {c.name for c in run("cloud-1", objs).state.ipsec}


def test_proxy_only_active_endpoint_is_not_a_tunnel_endpoint() -> None:
    objs = cluster_json()
    status = objs["gw-edge-b"]["status"]
    status["activeEndpoints"] = [{"nodeName": "edge-b-1", "type": "proxy", "port": 10262}]
    assert run("edge-b-2", objs).state.empty


def test_standby_active_endpoint_plans_as_a_member() -> None:
    # tunnelConfig.Replicas=2: two active tunnel endpoints; the first carries the Gateway's inner address.
    objs = cluster_json()
    gw = objs["gw-edge-a"]
    gw["spec"]["tunnelConfig"] = {"Replicas": 2}
    gw["status"]["activeEndpoints"] = gw["spec"]["endpoints"][:2]
    assert run("edge-a-1", objs).role == "gateway"
    second = run("edge-a-2", objs)
    assert second.role == "member"
    assert second.state.fdb == {FdbEntry("raven0", "0e:72:f0:a8:01:0b", "192.168.1.11")}


def test_config_changes_reach_every_object() -> None:
    cfg = PlanConfig(
        vxlan_vni=300,
        vxlan_port=5472,
        tunnel_vni=301,
        tunnel_port=5473,
        overlay_cidr="100.64.0.0/10",
        tunnel_cidr="198.18.0.0/16",
        table=100,
        return_table=101,
        rule_priority=200,
        return_rule_priority=199,
        intra_pool_link="rv0",
        inter_gateway_link="rv1",
        vici_conn_prefix="x-",
        virtual_next_hop="169.254.1.1",
        underlay_mtu=9000,
        underlay_ifname="eth1",
        ike_proposals=("aes128-sha256-modp3072",),
        esp_proposals=("aes128-sha256",),
    )
    s = run("edge-a-1", cfg=cfg).state
    links = {link.name: link for link in s.links}
    assert (links["rv0"].vni, links["rv0"].port, links["rv0"].underlay_ifname) == (300, 5472, "eth1")
    assert (links["rv1"].vni, links["rv1"].port) == (301, 5473)
    assert links["rv0"].mtu == 8950
    # 100.64.0.0/10 keeps the node IP's low 22 bits: 192.168.1.11 -> 100.(64 | 168 & 63).1.11.
    assert Address("rv0", "100.104.1.11/10", SCOPE_SITE) in s.addresses
    inner = next(a for a in s.addresses if a.ifname == "rv1" and a.scope == SCOPE_SITE).cidr
    assert inner.startswith("198.18.") and inner.endswith("/32")
    assert s.rules == {Rule(200, 100), Rule(199, 101, iif="rv1")}
    assert {r.table for r in s.routes} == {100, 101}
    assert {c.name for c in s.ipsec} == {"x-gw-cloud", "x-gw-dc"}
    conn: IPsecConnection = next(iter(s.ipsec))
    assert (conn.proposals, conn.esp_proposals) == (("aes128-sha256-modp3072",), ("aes128-sha256",))
    member = run("edge-a-2", cfg=cfg).state
    assert {r.gateway for r in member.routes} == {"169.254.1.1"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vxlan_vni": 0},
        {"tunnel_vni": 200},
        {"vxlan_port": 70000},
        {"tunnel_port": 4472},
        {"overlay_cidr": "240.0.0.0/33"},
        {"tunnel_cidr": "240.1.0.0/16"},  # overlaps the overlay
        {"tunnel_cidr": "fd00::/64"},
        {"virtual_next_hop": "240.0.0.1"},
        {"table": 254},
        {"return_table": 9027},
        {"rule_priority": 32766},
        {"return_rule_priority": 9030},
        {"intra_pool_link": "a-name-longer-than-15"},
        {"inter_gateway_link": "raven0"},
        {"underlay_mtu": 600},
        {"esp_proposals": ()},
    ],
)
def test_config_rejects_invalid_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PlanConfig(**kwargs)


def test_raven1_sends_no_outer_udp_checksum_and_raven0_does() -> None:
    # raven1's VXLAN packets travel inside ESP (its ICV covers them): a checksum would be computed and
    # verified in software for nothing (libipsec's TUN offloads none). raven0 crosses the bare underlay.
    from raven.agent.plan import PlanConfig, plan
    from tests.unit.plan_cluster import cluster_json, nodes, parse

    result = plan(parse(cluster_json()), nodes(), "edge-a-1", PlanConfig())
    links = {link.name: link for link in result.state.links}
    assert result.role == "gateway" and links["raven1"].udp_csum is False and links["raven0"].udp_csum is True


def test_psk_mode_uses_gateway_identities() -> None:
    s = plan(parse(cluster_json()), nodes(), "edge-a-1", PlanConfig(ipsec_auth="psk")).state
    ids = {(c.name, c.local_id, c.remote_id, c.auth) for c in s.ipsec}
    assert ids == {("raven-gw-cloud", "raven-gw-gw-edge-a", "raven-gw-gw-cloud", "psk"),
                   ("raven-gw-dc", "raven-gw-gw-edge-a", "raven-gw-gw-dc", "psk")}
