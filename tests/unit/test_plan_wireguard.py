"""The plan with --vpn-driver=wireguard: the same route-based design over raven-wg0, and the key publisher's check."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from raven.agent.app import plan_config
from raven.agent.plan import PlanConfig, plan
from raven.agent.wgkeys import elected_with_other_key
from raven.config import AgentConfig, CommonConfig
from raven.dataplane.state import IPsecConnection, NodeNetwork, Route
from tests.unit.plan_cluster import JSON, cluster_json, diff, nodes, parse, set_active

ESP = PlanConfig(ipsec_auth="psk", underlay_mtu=1500)
WG = replace(ESP, tunnel_encapsulation="wireguard", ipsec_tun_ifname="raven-wg0")


def key_of(node: str) -> str:
    return base64.b64encode(node.encode().ljust(32, b".")).decode()


def with_keys(objs: dict[str, JSON]) -> dict[str, JSON]:
    """Every tunnel endpoint carries its node's published key (spec and the copy in status)."""
    for obj in objs.values():
        for ep in [*obj["spec"]["endpoints"], *obj["status"]["activeEndpoints"]]:
            ep["config"] = {"publicKey": key_of(ep["nodeName"])}
    return objs


def state(node: str, objs: dict[str, JSON], cfg: PlanConfig = WG) -> NodeNetwork:
    return plan(parse(objs), nodes(), node, cfg).state


def conns(s: NodeNetwork) -> dict[str, IPsecConnection]:
    return {c.name: c for c in s.ipsec}


def test_wireguard_routes_each_direct_peers_inner_address_into_its_device() -> None:
    objs = with_keys(cluster_json())
    wg, esp = state("cloud-1", objs), state("cloud-1", objs, ESP)
    inner = {c.remote_ts for c in wg.ipsec}
    extra = {r for r in wg.routes if r.ifname == "raven-wg0"}
    assert extra == {Route(dst=ts, table=WG.table, ifname="raven-wg0") for ts in inner}
    # Everything else is the IPsec plan: the same routes to remote subnets via the peers' inner addresses.
    # (Only the MTUs differ: WireGuard's overhead is not ESP's.)
    def shape(routes: frozenset[Route] | set[Route]) -> set[tuple[str, int, str, str | None]]:
        return {(r.dst, r.table, r.ifname, r.gateway) for r in routes}

    assert shape(wg.routes - extra) == shape(esp.routes)
    # Decrypted packets come in through raven-wg0: the ingress filter accepts raven1's port from there only.
    assert wg.ingress.ipsec_ifname == "raven-wg0"


def test_wireguard_mtu_is_underlay_minus_60_minus_vxlan() -> None:
    s = state("cloud-1", with_keys(cluster_json()))
    raven1 = next(link for link in s.links if link.name == "raven1")
    assert raven1.mtu == 1500 - 60 - 50
    esp = state("cloud-1", with_keys(cluster_json()), ESP)
    assert next(link for link in esp.links if link.name == "raven1").mtu == 1372  # the ESP figure, for contrast


def test_tunnels_carry_the_pair_and_the_published_key_with_wireguard_only() -> None:
    objs = with_keys(cluster_json())
    c = conns(state("cloud-1", objs))["raven-gw-dc"]
    assert (c.local_node, c.peer_node, c.peer_public_key, c.local_port) == ("cloud-1", "dc-1", key_of("dc-1"), 4500)
    e = conns(state("cloud-1", objs, ESP))["raven-gw-dc"]
    assert (e.local_node, e.peer_node, e.peer_public_key) == ("", "", "")


def test_remote_failover_changes_the_peer_not_the_routes() -> None:
    before, after = with_keys(cluster_json()), with_keys(cluster_json())
    set_active(after["gw-dc"], "dc-2")
    old, new = state("cloud-1", before), state("cloud-1", after)
    changes = diff(old, new)
    assert set(changes) <= {"ipsec"}  # not one route, neighbour or FDB entry
    (removed,), (added,) = changes["ipsec"]
    assert (removed.peer_node, added.peer_node) == ("dc-1", "dc-2")
    assert added.peer_public_key == key_of("dc-2") and removed.remote_ts == added.remote_ts


def test_a_peer_without_a_published_key_still_gets_its_routes() -> None:
    s = state("cloud-1", cluster_json())  # no keys published yet
    assert all(c.peer_public_key == "" for c in s.ipsec)
    assert any(r.ifname == "raven-wg0" for r in s.routes)  # the driver skips the peer until its key is there


def test_agent_config_selects_the_wireguard_plan(tmp_path: pytest.TempPathFactory) -> None:
    cfg = AgentConfig(common=CommonConfig(), node_name="n", vpn_driver="wireguard", psk="k" * 32)
    pc = plan_config(cfg, None)
    assert (pc.tunnel_encapsulation, pc.ipsec_tun_ifname) == ("wireguard", "raven-wg0")
    ipsec = plan_config(replace(cfg, vpn_driver="ipsec"), None)
    assert (ipsec.tunnel_encapsulation, ipsec.ipsec_tun_ifname) == ("esp", "ipsec0")


def test_the_publisher_republishes_only_where_this_node_is_elected_with_another_key() -> None:
    objs = with_keys(cluster_json())
    gws = parse(objs)
    active = {ep.node_name for gw in gws for ep in gw.status.active_tunnel_endpoints()}
    node = sorted(active)[0]
    assert elected_with_other_key(gws, node, key_of(node)) == []  # the controller copied ours
    (gw,) = [g.name for g in gws if node in {e.node_name for e in g.status.active_tunnel_endpoints()}]
    assert elected_with_other_key(gws, node, "ROTATED") == [gw]  # not copied yet (or the report lost it)
    members = {ep.node_name for g in gws for ep in g.spec.endpoints or []} - active
    assert all(elected_with_other_key(gws, m, "ANY") == [] for m in members)  # not elected: nothing to compare
