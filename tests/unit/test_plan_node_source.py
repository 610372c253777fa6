"""Node-originated traffic (host network, kubelet, a masqueraded Service hop): its source is routed back.

The plan gives every route to another pool `src` = the node's own address inside its pod CIDR (the node
source), holds that address on raven0 (and raven1 on a gateway) with global scope, and gives the overlay and
inner addresses site scope, so that MASQUERADE, which takes the first global address of the outgoing device,
picks the node source too. These tests walk the reply back through every other node's independently
planned state with the forwarding model of test_plan_forwarding.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools

from raven.agent.plan import PlanConfig, node_source, plan
from raven.dataplane.state import SCOPE_GLOBAL, SCOPE_SITE, NodeNetwork
from tests.unit.plan_cluster import POOLS, cluster_json, nodes, parse
from tests.unit.test_plan_forwarding import ALL_NODES, Hop, Network, delivered, pod

CFG = PlanConfig()
SUBNETS = {n: subnets for pool in POOLS.values() for n, _, subnets in pool}


def _masquerade_source(state: NodeNetwork, ifname: str) -> str | None:
    """What the kernel's MASQUERADE (inet_select_addr) takes on `ifname`: its first primary address of
    universe scope; the plan's addresses are a set, so "first" is any: all of them must be the same one."""
    found = {a.cidr.split("/")[0] for a in state.addresses if a.ifname == ifname and a.scope == SCOPE_GLOBAL}
    assert len(found) <= 1, (ifname, found)
    return next(iter(found), None)


def test_every_route_to_another_pool_leaves_from_the_nodes_own_pod_cidr_address() -> None:
    gateways = parse(cluster_json())
    for name in ALL_NODES:
        result = plan(gateways, nodes(), name, CFG)
        s = result.state
        src = node_source(SUBNETS[name])
        assert src is not None and any(ipaddress.IPv4Address(src) in ipaddress.ip_network(n) for n in SUBNETS[name])
        # (a member's routes to the gateways' inner addresses carry its `via` probes, which name their source)
        inner = ipaddress.ip_network(CFG.tunnel_cidr)
        remote = [r for r in s.routes if r.table == CFG.table and not ipaddress.ip_network(r.dst).subnet_of(inner)]
        assert remote and all(r.src == src for r in remote), (name, remote)
        # Return routes (a gateway's, for its pool, reached from raven1 only) forward; they choose no source.
        assert all(r.src is None for r in s.routes if r.table == CFG.return_table)
        devices = {link.name for link in s.links}
        assert devices == ({"raven0", "raven1"} if result.role == "gateway" else {"raven0"})
        for dev in devices:
            # The route's src must be local (the kernel refuses the route otherwise), and MASQUERADE out of
            # the device picks the same address: the overlay and inner addresses are site scope.
            assert _masquerade_source(s, dev) == src, (name, dev)
            assert {a.scope for a in s.addresses if a.ifname == dev and a.cidr.split("/")[0] != src} == {SCOPE_SITE}


def test_replies_to_the_node_source_come_back_from_every_other_pool() -> None:
    net = Network(cluster_json())
    for src_node, dst_node in itertools.permutations(ALL_NODES, 2):
        if net.pool_of[src_node] == net.pool_of[dst_node]:
            continue  # intra-pool: the CNI's routes, no Raven route, no source chosen here
        route = net._lookup(src_node, ipaddress.IPv4Address(pod(dst_node)), None)
        assert route is not None and route.src is not None, (src_node, dst_node)
        reply = net.send(dst_node, route.src)
        assert delivered(reply, src_node), (src_node, dst_node, reply)
        # The reply enters Raven's devices at once: the remote pool routes the node source like a pod.
        assert reply[0] in (Hop(dst_node, "raven0"), Hop(dst_node, "raven1")), reply


def test_the_node_source_follows_a_gateway_failover() -> None:
    """A member's source does not depend on which node is the gateway: its pod CIDR stays routed to it."""
    from tests.unit.plan_cluster import set_active

    objs = cluster_json()
    set_active(objs["gw-edge-a"], "edge-a-3")
    net = Network(objs)
    for dst in ALL_NODES:
        if net.pool_of[dst] == net.pool_of["edge-a-1"]:
            continue
        route = net._lookup("edge-a-1", ipaddress.IPv4Address(pod(dst)), None)  # edge-a-1 is a member now
        assert route is not None and route.src == node_source(SUBNETS["edge-a-1"])
        assert delivered(net.send(dst, route.src), "edge-a-1")


def test_an_address_the_node_already_holds_in_its_pod_cidr_is_preferred() -> None:
    assert node_source(["10.245.1.0/24"]) == "10.245.1.1"
    assert node_source(["10.245.1.0/24"], "10.245.1.200") == "10.245.1.200"  # e.g. Cilium's cilium_host
    # Outside the pod CIDR, its network or broadcast address, or not an address: not a source other pools route.
    for bad in ("10.245.2.1", "10.245.1.0", "10.245.1.255", "nonsense"):
        assert node_source(["10.245.1.0/24"], bad) == "10.245.1.1"
    assert node_source(["10.245.1.0/31", "10.245.9.0/24"]) == "10.245.9.1"
    assert node_source([]) is None and node_source(["10.245.1.7/32"]) is None
    cfg = dataclasses.replace(CFG, detected_node_source="10.245.1.77")
    s = plan(parse(cluster_json()), nodes(), "edge-a-2", cfg).state
    inner = ipaddress.ip_network(CFG.tunnel_cidr)  # the `via` probe routes name no source (see above)
    assert {r.src for r in s.routes if not ipaddress.ip_network(r.dst).subnet_of(inner)} == {"10.245.1.77"}
    assert _masquerade_source(s, "raven0") == "10.245.1.77"


def test_a_node_without_a_pod_cidr_plans_no_source() -> None:
    objs = cluster_json()
    for entry in objs["gw-edge-a"]["status"]["nodes"]:
        if entry["nodeName"] == "edge-a-2":
            entry["subnets"] = []
    s = plan(parse(objs), nodes(), "edge-a-2", CFG).state
    assert s.routes and all(r.src is None for r in s.routes)  # (the via probe routes have none anyway)
    assert _masquerade_source(s, "raven0") is None


def test_no_node_source_from_a_pod_cidr_that_covers_a_protected_address() -> None:
    """A pod CIDR over the default gateway would make the node hold an address beside the gateway's: skipped."""
    from raven.agent.plan import ProtectedAddress

    gateway = ProtectedAddress("10.245.1.1", "the default gateway")
    result = plan(parse(cluster_json()), nodes(), "edge-a-2", CFG, [gateway])
    assert all(r.src is None for r in result.state.routes)
    assert _masquerade_source(result.state, "raven0") is None
    assert any("no node source" in p for p in result.problems), result.problems
