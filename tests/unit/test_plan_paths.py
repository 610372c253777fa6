"""Who talks to whom: both-public peers, one side under NAT, both under NAT through a relay, relay stability."""

from __future__ import annotations

import itertools

from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.agent.topology import build_topology
from raven.dataplane.state import IPsecConnection
from tests.unit.plan_cluster import JSON, POOLS, cluster_json, gateway_json, nodes, parse

CFG = PlanConfig()
GATEWAY_NODE = {"gw-cloud": "cloud-1", "gw-edge-a": "edge-a-1", "gw-edge-b": "edge-b-1", "gw-dc": "dc-1"}


def run(node: str, objs: dict[str, JSON] | None = None) -> PlanResult:
    return plan(parse(objs if objs is not None else cluster_json()), nodes(), node, CFG)


def conn(node: str, peer: str, objs: dict[str, JSON] | None = None) -> IPsecConnection:
    return next(c for c in run(node, objs).state.ipsec if c.name == f"raven-{peer}")


def inner_of(node: str, objs: dict[str, JSON] | None = None) -> str:
    return next(link.local for link in run(node, objs).state.links if link.name == "raven1")  # the inner address


def test_both_public_peers_connect_directly_and_the_smaller_name_initiates() -> None:
    # gw-cloud (PublicIP) and gw-dc (not under NAT): "gw-cloud" < "gw-dc".
    cloud_side, dc_side = conn("cloud-1", "gw-dc"), conn("dc-1", "gw-cloud")
    assert cloud_side.initiator and not dc_side.initiator
    # Each side initiates from its node IP; the cloud also answers on its public address.
    assert cloud_side.local_addrs == ("10.0.0.11", "203.0.113.10") and dc_side.local_addrs == ("172.16.0.11",)
    assert cloud_side.remote_addrs == ("172.16.0.11",) and cloud_side.remote_port == 4500
    # The responder knows where the initiator's packets come from (1:1 public IP), so it insists on it.
    assert dc_side.remote_addrs == ("203.0.113.10",)
    assert (cloud_side.local_ts, cloud_side.remote_ts) == (dc_side.remote_ts, dc_side.local_ts)
    assert (cloud_side.local_id, cloud_side.remote_id) == (dc_side.remote_id, dc_side.local_id)


def test_one_side_nat_the_nat_side_initiates_and_the_public_side_responds_to_any() -> None:
    edge_side, cloud_side = conn("edge-a-1", "gw-cloud"), conn("cloud-1", "gw-edge-a")
    assert edge_side.initiator and edge_side.remote_addrs == ("203.0.113.10",)
    assert not cloud_side.initiator and cloud_side.remote_addrs == ("%any",)
    # Towards a gateway that is only un-NATed (no public address), the NAT side dials the node IP.
    assert conn("edge-a-1", "gw-dc").remote_addrs == ("172.16.0.11",)
    assert not conn("dc-1", "gw-edge-a").initiator


def test_public_port_goes_with_the_public_address() -> None:
    objs = cluster_json()
    objs["gw-cloud"] = gateway_json(
        "gw-cloud",
        "2026-01-01T00:00:00Z",
        POOLS["gw-cloud"],
        "cloud-1",
        under_nat=False,
        expose_type="PublicIP",
        public_ip="203.0.113.10",
        port=4600,
    )
    objs["gw-cloud"]["status"]["activeEndpoints"][0]["publicPort"] = 14500
    assert conn("edge-a-1", "gw-cloud", objs).remote_port == 14500
    # gw-dc has no public address: its port is used as is, or 4500 when unset.
    objs["gw-dc"]["status"]["activeEndpoints"][0].pop("port")
    assert conn("edge-a-1", "gw-dc", objs).remote_port == 4500


def test_both_nat_pair_is_relayed_through_the_exposed_gateway() -> None:
    edge_a, edge_b, cloud = run("edge-a-1"), run("edge-b-1"), run("cloud-1")
    cloud_inner, a_inner, b_inner = inner_of("cloud-1"), inner_of("edge-a-1"), inner_of("edge-b-1")
    # No IPsec connection between the NAT pair; each side routes the other's subnets via the relay.
    assert "raven-gw-edge-b" not in {c.name for c in edge_a.state.ipsec}
    assert "raven-gw-edge-a" not in {c.name for c in edge_b.state.ipsec}
    assert {r.gateway for r in edge_a.state.routes if r.dst.startswith("10.246.") and r.table == 9027} == {cloud_inner}
    assert {r.gateway for r in edge_b.state.routes if r.dst.startswith("10.245.") and r.table == 9027} == {cloud_inner}
    # No raven1 neighbour for the relayed peer: the next hop is the relay.
    assert b_inner not in {n.ip for n in edge_a.state.neighbors}
    # The relay has both connections and routes both pools by their own inner addresses: it forwards.
    assert {"raven-gw-edge-a", "raven-gw-edge-b"} <= {c.name for c in cloud.state.ipsec}
    routes = {r.dst: r.gateway for r in cloud.state.routes if r.table == 9027}
    assert routes["10.245.1.0/24"] == a_inner and routes["10.246.1.0/24"] == b_inner
    # The paths say so (what logs, metrics and the graph show).
    by_dst = {p.dst: p for p in edge_a.paths}
    assert (by_dst["gw-edge-b"].kind, by_dst["gw-edge-b"].via) == ("relay", "gw-cloud")
    assert by_dst["gw-cloud"].kind == "direct" and by_dst["gw-cloud"].initiator == "gw-edge-a"


def test_both_sides_and_members_agree_on_the_relay() -> None:
    objs = cluster_json()
    # A second exposed gateway, younger: the older exposed one stays the relay on every node.
    objs["gw-cloud-2"] = gateway_json(
        "gw-cloud-2",
        "2026-02-01T00:00:00Z",
        [("cloud2-1", "10.1.0.11", ["10.248.0.0/24"])],
        "cloud2-1",
        under_nat=False,
        expose_type="PublicIP",
        public_ip="203.0.113.20",
    )
    relays = set()
    for node in ("edge-a-1", "edge-a-2", "edge-b-1", "edge-b-2"):
        result = run(node, objs)
        relays |= {p.via for p in result.paths if p.kind == "relay"}
    assert relays == {"gw-cloud"}


def test_relay_prefers_an_exposed_gateway_over_an_older_unnated_one() -> None:
    objs = cluster_json()
    objs["gw-dc"]["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    assert {p.via for p in run("edge-a-1", objs).paths if p.kind == "relay"} == {"gw-cloud"}


def _relay(objs: dict[str, JSON]) -> str | None:
    cluster = build_topology(parse(objs), CFG.tunnel_cidr)
    return cluster.path("gw-edge-a", "gw-edge-b").via


def test_relay_stays_when_unrelated_gateways_come_and_go() -> None:
    base = cluster_json()
    assert _relay(base) == "gw-cloud"
    # Adding gateways of every kind (exposed, un-NATed, NAT), one at a time and all together.
    extra = {
        "gw-z-exposed": gateway_json(
            "gw-z-exposed",
            "2026-03-01T00:00:00Z",
            [("z1", "10.9.0.1", ["10.249.0.0/24"])],
            "z1",
            under_nat=False,
            expose_type="PublicIP",
            public_ip="203.0.113.30",
        ),
        "gw-a-exposed": gateway_json(  # sorts before gw-cloud by name, but younger
            "gw-a-exposed",
            "2026-03-02T00:00:00Z",
            [("a1", "10.9.1.1", ["10.250.0.0/24"])],
            "a1",
            under_nat=False,
            expose_type="LoadBalancer",
            public_ip="203.0.113.31",
        ),
        "gw-open": gateway_json(
            "gw-open", "2026-03-03T00:00:00Z", [("o1", "10.9.2.1", ["10.251.0.0/24"])], "o1", under_nat=False
        ),
        "gw-nat": gateway_json(
            "gw-nat", "2026-03-04T00:00:00Z", [("n1", "10.9.3.1", ["10.252.0.0/24"])], "n1", under_nat=True
        ),
    }
    for r in range(1, len(extra) + 1):
        for names in itertools.combinations(extra, r):
            objs = {**base, **{n: extra[n] for n in names}}
            assert _relay(objs) == "gw-cloud", names
    # Removing an unrelated gateway changes nothing either.
    without_dc = {k: v for k, v in base.items() if k != "gw-dc"}
    assert _relay(without_dc) == "gw-cloud"


def test_relay_moves_only_when_the_relay_goes_away() -> None:
    objs = cluster_json()
    objs["gw-cloud"]["status"]["activeEndpoints"] = []
    # The next reachable gateway takes over (gw-dc: reachable at its node IP).
    assert _relay(objs) == "gw-dc"
    edge_a = run("edge-a-1", objs)
    dc_inner = inner_of("dc-1", objs)
    assert {r.gateway for r in edge_a.state.routes if r.dst.startswith("10.246.") and r.table == 9027} == {dc_inner}
    assert {"raven-gw-edge-a", "raven-gw-edge-b"} <= {c.name for c in run("dc-1", objs).state.ipsec}


def test_nat_pair_without_any_reachable_gateway_is_reported_and_not_routed() -> None:
    objs = {k: v for k, v in cluster_json().items() if k in ("gw-edge-a", "gw-edge-b")}
    result = run("edge-a-1", objs)
    assert [(p.dst, p.kind) for p in result.paths] == [("gw-edge-b", "unreachable")]
    assert not [r for r in result.state.routes if r.table == 9027]
    assert result.state.ipsec == frozenset()
    assert any("no path to gateway gw-edge-b" in p for p in result.problems)
    # The gateway still holds its raven0/raven1 state: a peer appearing later only adds to it.
    assert {link.name for link in result.state.links} == {"raven0", "raven1"}


def test_load_balancer_exposed_gateway_is_dialled_at_its_public_ip_and_accepted_from_anywhere() -> None:
    objs = cluster_json()
    objs["gw-dc"] = gateway_json(
        "gw-dc",
        "2026-01-04T00:00:00Z",
        POOLS["gw-dc"],
        "dc-1",
        under_nat=False,
        expose_type="LoadBalancer",
        public_ip="198.51.100.7",  # the Service's ingress IP, written by the controller
    )
    assert conn("edge-a-1", "gw-dc", objs).remote_addrs == ("198.51.100.7",)
    # Both reachable, "gw-cloud" < "gw-dc": gw-cloud dials the LB address; gw-dc responds and insists on
    # gw-cloud's 1:1 public address, where gw-cloud's packets come from.
    assert conn("cloud-1", "gw-dc", objs).remote_addrs == ("198.51.100.7",)
    assert conn("dc-1", "gw-cloud", objs).remote_addrs == ("203.0.113.10",)


def test_load_balancer_initiator_is_accepted_from_any_address() -> None:
    objs = cluster_json()
    # gw-a-lb < gw-cloud: the LoadBalancer-exposed gateway initiates; its source address is not its LB IP.
    objs["gw-a-lb"] = gateway_json(
        "gw-a-lb",
        "2026-01-05T00:00:00Z",
        [("lb-1", "10.3.0.11", ["10.253.0.0/24"])],
        "lb-1",
        under_nat=False,
        expose_type="LoadBalancer",
        public_ip="198.51.100.8",
    )
    assert conn("lb-1", "gw-cloud", objs).initiator
    responder = conn("cloud-1", "gw-a-lb", objs)
    assert not responder.initiator and responder.remote_addrs == ("%any",)


def test_exposed_gateway_without_public_address_yet_is_not_reachable() -> None:
    objs = cluster_json()
    objs["gw-cloud"]["status"]["activeEndpoints"][0].pop("publicIP")
    objs["gw-cloud"]["status"]["activeEndpoints"][0].pop("publicPort")
    cluster = build_topology(parse(objs), CFG.tunnel_cidr)
    assert not cluster.gateways["gw-cloud"].reachable
    # It still reaches gw-dc (reachable) directly, and the NAT pair falls back to gw-dc as relay.
    assert cluster.path("gw-cloud", "gw-dc").kind == "direct"
    assert cluster.path("gw-cloud", "gw-edge-a").via == "gw-dc"


def test_every_pair_sees_the_same_path_from_both_ends() -> None:
    cluster = build_topology(parse(cluster_json()), CFG.tunnel_cidr)
    for a, b in itertools.permutations(GATEWAY_NODE, 2):
        pa, pb = cluster.path(a, b), cluster.path(b, a)
        assert (pa.kind, pa.via, pa.initiator) == (pb.kind, pb.via, pb.initiator)
        # And each side's plan is consistent with it: a direct pair has exactly one initiator.
        if pa.kind == "direct":
            ca, cb = conn(GATEWAY_NODE[a], b), conn(GATEWAY_NODE[b], a)
            assert ca.initiator != cb.initiator
