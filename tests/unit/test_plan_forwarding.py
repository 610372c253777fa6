"""End-to-end reachability of the planned states, checked by walking packets through them (pure).

Every node's `NodeNetwork` is planned independently, as the agents do; a small forwarding model then
follows a packet from a pod on one node to a pod on another: policy rules by priority (then the main
table, standing in for the CNI: local pods and the pool's other nodes), longest-prefix match, the
next hop's neighbour and FDB entries, the receiving VXLAN device (its MAC and VNI must match), and for
raven1 the IPsec connection pair that must protect inner/32 <-> inner/32 on both ends. This proves that
the separately planned pieces fit together: return paths, relays, and that intra-pool traffic never
enters Raven's devices.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass

from raven.agent.plan import PlanConfig, plan
from raven.dataplane.state import NodeNetwork, Route, VxlanLink
from tests.unit.plan_cluster import JSON, POOLS, cluster_json, nodes, parse, set_active

CFG = PlanConfig()
MAX_HOPS = 8


@dataclass(frozen=True)
class Hop:
    node: str
    via: str  # how the packet left: "raven0", "raven1" or "underlay" (CNI), or "delivered"


class Network:
    def __init__(self, objs: dict[str, JSON]) -> None:
        gateways = parse(objs)
        node_list = nodes()
        self.pool_of = {n: gw for gw, pool in POOLS.items() for n, _, _ in pool}
        self.ip = {n: ip for pool in POOLS.values() for n, ip, _ in pool}
        self.subnets = {n: [ipaddress.ip_network(s) for s in subs] for pool in POOLS.values() for n, _, subs in pool}
        self.states: dict[str, NodeNetwork] = {n: plan(gateways, node_list, n, CFG).state for n in self.ip}

    def link(self, node: str, name: str) -> VxlanLink | None:
        return next((link for link in self.states[node].links if link.name == name), None)

    def _lookup(self, node: str, dst: ipaddress.IPv4Address, iif: str | None) -> Route | None:
        state = self.states[node]
        for rule in sorted(state.rules):
            if rule.iif is not None and rule.iif != iif:
                continue
            matches = [r for r in state.routes if r.table == rule.table and dst in ipaddress.ip_network(r.dst)]
            if matches:
                return max(matches, key=lambda r: ipaddress.ip_network(r.dst).prefixlen)
        return None

    def _vxlan_peer(self, node: str, route: Route) -> tuple[str, str] | None:
        """The node the VXLAN frame reaches, and the device it arrives on."""
        state = self.states[node]
        mac = next((n.mac for n in state.neighbors if n.ifname == route.ifname and n.ip == route.gateway), None)
        vtep = next((f.dst for f in state.fdb if f.ifname == route.ifname and f.mac == mac), None)
        out = self.link(node, route.ifname)
        if mac is None or vtep is None or out is None:
            return None
        if route.ifname == CFG.intra_pool_link:
            # Underlay delivery inside the pool, to the node holding the VTEP address.
            targets = [n for n, ip in self.ip.items() if ip == vtep and self.pool_of[n] == self.pool_of[node]]
        else:
            # Inside IPsec: both ends must hold a matching connection for inner/32 <-> inner/32.
            if not self._protected(node, out.local, vtep):
                return None
            targets = [n for n in self.ip if (link := self.link(n, route.ifname)) is not None and link.local == vtep]
        if len(targets) != 1:
            return None
        target_link = self.link(targets[0], route.ifname)
        if target_link is None or target_link.mac != mac or target_link.vni != out.vni:
            return None
        return targets[0], route.ifname

    def _protected(self, node: str, local_inner: str, remote_inner: str) -> bool:
        ours = [
            c
            for c in self.states[node].ipsec
            if (c.local_ts, c.remote_ts) == (f"{local_inner}/32", f"{remote_inner}/32")
        ]
        theirs = [
            c
            for n in self.ip
            for c in self.states[n].ipsec
            if (c.local_ts, c.remote_ts) == (f"{remote_inner}/32", f"{local_inner}/32")
        ]
        if len(ours) != 1 or len(theirs) != 1:
            return False
        a, b = ours[0], theirs[0]
        # Exactly one side starts the SA, and the responder accepts it from where the initiator dials.
        if a.initiator == b.initiator:
            return False
        initiator, responder = (a, b) if a.initiator else (b, a)
        return (initiator.local_id, initiator.remote_id) == (responder.remote_id, responder.local_id) and (
            responder.remote_addrs == ("%any",) or responder.remote_addrs[0] in initiator.local_addrs
        )

    def _reverse_path_ok(self, node: str, src: ipaddress.IPv4Address, iif: str) -> bool:
        """Strict reverse-path filtering: the route back to `src` must leave by the arrival device.

        The kernel does this lookup as if from loopback, so `iif` rules do not apply. A gateway's raven0 is
        exempt: it receives its pool's pod traffic whose reverse path is the CNI's, so the agent must set
        rp_filter to loose (2) there; every other device is checked strictly.
        """
        state = self.states[node]
        if iif == CFG.intra_pool_link and any(link.name == CFG.inter_gateway_link for link in state.links):
            return True
        route = self._lookup(node, src, None)
        if route is not None:
            return route.ifname == iif
        in_pool = any(
            src in s for n, subs in self.subnets.items() if self.pool_of[n] == self.pool_of[node] for s in subs
        )
        return in_pool and iif == "eth0"

    def send(self, src_node: str, dst: str) -> list[Hop]:
        """The hops of a packet from a pod on `src_node` to address `dst`; ends in "delivered" or not."""
        addr = ipaddress.IPv4Address(dst)
        src = ipaddress.IPv4Address(pod(src_node))
        node, iif = src_node, None
        hops: list[Hop] = []
        for _ in range(MAX_HOPS):
            if iif is not None and not self._reverse_path_ok(node, src, iif):
                return [*hops, Hop(node, f"dropped by rp_filter on {iif}")]
            route = self._lookup(node, addr, iif)
            if route is None:
                # The main table (the CNI): a local pod, or another node of the same pool over the LAN.
                if any(addr in s for s in self.subnets[node]):
                    return [*hops, Hop(node, "delivered")]
                owner = [n for n, subs in self.subnets.items() if any(addr in s for s in subs)]
                if owner and self.pool_of[owner[0]] == self.pool_of[node]:
                    hops.append(Hop(node, "underlay"))
                    node, iif = owner[0], "eth0"
                    continue
                return [*hops, Hop(node, "no route")]
            nxt = self._vxlan_peer(node, route)
            if nxt is None:
                return [*hops, Hop(node, f"broken next hop {route}")]
            hops.append(Hop(node, route.ifname))
            node, iif = nxt
        return [*hops, Hop(node, "loop")]


POD_SUBNET = {n: subnets[0] for pool in POOLS.values() for n, _, subnets in pool}


def pod(node: str) -> str:
    """An address of a pod on `node`: the first host of its first pod subnet."""
    return str(next(ipaddress.ip_network(POD_SUBNET[node]).hosts()))


def delivered(hops: list[Hop], dst_node: str) -> bool:
    return hops[-1] == Hop(dst_node, "delivered")


ALL_NODES = [n for pool in POOLS.values() for n, _, _ in pool]


def test_every_pod_reaches_every_pod_in_every_other_pool() -> None:
    net = Network(cluster_json())
    for src, dst in itertools.permutations(ALL_NODES, 2):
        hops = net.send(src, pod(dst))
        assert delivered(hops, dst), (src, dst, hops)


def test_intra_pool_traffic_never_enters_raven_devices() -> None:
    net = Network(cluster_json())
    for pool in POOLS.values():
        for (src, _, _), (dst, _, _) in itertools.permutations(pool, 2):
            hops = net.send(src, pod(dst))
            assert hops == [Hop(src, "underlay"), Hop(dst, "delivered")], hops


def test_nat_pair_traffic_goes_through_the_relay_both_ways() -> None:
    net = Network(cluster_json())
    there = net.send("edge-a-2", pod("edge-b-2"))
    assert [h.node for h in there] == ["edge-a-2", "edge-a-1", "cloud-1", "edge-b-1", "edge-b-2"]
    assert [h.via for h in there] == ["raven0", "raven1", "raven1", "raven0", "delivered"]
    back = net.send("edge-b-2", pod("edge-a-2"))
    assert [h.node for h in back] == ["edge-b-2", "edge-b-1", "cloud-1", "edge-a-1", "edge-a-2"]
    # A directly connected pair does not touch the relay.
    assert [h.node for h in net.send("edge-a-3", pod("dc-2"))] == ["edge-a-3", "edge-a-1", "dc-1", "dc-2"]


def test_every_pair_still_connects_after_failovers_everywhere() -> None:
    objs = cluster_json()
    for gw, node in (("gw-cloud", "cloud-2"), ("gw-edge-a", "edge-a-3"), ("gw-edge-b", "edge-b-2"), ("gw-dc", "dc-2")):
        set_active(objs[gw], node)
    net = Network(objs)
    for src, dst in itertools.permutations(ALL_NODES, 2):
        assert delivered(net.send(src, pod(dst)), dst), (src, dst)


def test_pool_without_endpoint_is_cut_off_and_the_rest_still_connects() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["activeEndpoints"] = []
    net = Network(objs)
    others = [n for n in ALL_NODES if not n.startswith("dc-")]
    for src, dst in itertools.permutations(others, 2):
        assert delivered(net.send(src, pod(dst)), dst), (src, dst)
    assert net.send("edge-a-2", pod("dc-1"))[-1].via == "no route"
    assert net.send("dc-1", pod("cloud-1"))[-1].via == "no route"


def test_a_remote_claim_over_a_pools_subnets_does_not_capture_its_intra_pool_traffic() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["nodes"][1]["subnets"].append("10.245.0.0/16")
    net = Network(objs)
    for (src, _, _), (dst, _, _) in itertools.permutations(POOLS["gw-edge-a"], 2):
        assert net.send(src, pod(dst)) == [Hop(src, "underlay"), Hop(dst, "delivered")]
    # Other pools still reach edge-a's pods by longest-prefix match.
    assert delivered(net.send("cloud-2", pod("edge-a-2")), "edge-a-2")
