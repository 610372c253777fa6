"""The routing choice in the plan (`plan(routing=...)`): honoured when the topology allows it, and loop-free by
construction whatever each gateway chose and whichever version of the cluster each node planned from: packets
walked through every node's separately planned tables (the forwarding model of test_plan_forwarding) never loop
and never cross more than two tunnels."""

from __future__ import annotations

import itertools
import random

from raven.agent.plan import PlanConfig, plan
from raven.api.gateway import Gateway
from raven.dataplane.state import UNREACHABLE
from raven.routing.choice import RouteChoice
from tests.unit.plan_cluster import JSON, POOLS, cluster_json, nodes, parse
from tests.unit.test_plan_forwarding import ALL_NODES, Hop, Network, delivered, pod

CFG = PlanConfig()
GATEWAYS = sorted(POOLS)
ACTIVE = {"gw-cloud": "cloud-1", "gw-edge-a": "edge-a-1", "gw-edge-b": "edge-b-1", "gw-dc": "dc-1"}


class RoutedNetwork(Network):
    """Every node planned from its own view of the Gateways and its gateway's own routing choice."""

    def __init__(self, views: dict[str, list[Gateway]], choices: dict[str, RouteChoice]) -> None:
        super().__init__(cluster_json())
        node_list = nodes()
        gw_of = {n: gw for gw, pool in POOLS.items() for n, _, _ in pool}
        self.states = {n: plan(views[n], node_list, n, CFG, routing=choices.get(gw_of[n])).state for n in self.ip}


def tunnels(hops: list[Hop]) -> int:
    return sum(1 for h in hops if h.via == "raven1")


def consistent_views() -> dict[str, list[Gateway]]:
    gws = parse(cluster_json())
    return {n: gws for n in ALL_NODES}


def test_a_valid_detour_is_routed_and_walked() -> None:
    # edge-a detours to dc through the cloud (say the direct link is slow); dc still answers directly.
    choices = {"gw-edge-a": RouteChoice.of({"gw-dc": "gw-cloud"})}
    net = RoutedNetwork(consistent_views(), choices)
    there = net.send("edge-a-2", pod("dc-2"))
    assert [h.node for h in there] == ["edge-a-2", "edge-a-1", "cloud-1", "dc-1", "dc-2"], there
    back = net.send("dc-2", pod("edge-a-2"))
    assert [h.node for h in back] == ["dc-2", "dc-1", "edge-a-1", "edge-a-2"], back


def test_an_impossible_choice_falls_back_to_the_default_path_and_is_reported() -> None:
    gws = parse(cluster_json())
    # edge-a and edge-b are both under NAT: no direct link, and edge-b cannot relay to itself.
    result = plan(gws, nodes(), "edge-a-1", CFG, routing=RouteChoice.of({"gw-edge-b": "gw-edge-b"}))
    cloud_inner = next(link.local for link in plan(gws, nodes(), "cloud-1", CFG).state.links if link.name == "raven1")
    assert {r.gateway for r in result.state.routes if r.dst.startswith("10.246.") and r.table == 9027} == {cloud_inner}
    assert any("gw-edge-b via gw-edge-b is not a usable path" in p for p in result.problems)


def test_two_relays_pointing_at_each_other_cannot_loop() -> None:
    # The worst inconsistency: the cloud routes edge-b via dc and dc routes edge-b via the cloud. A relay forwards
    # what it receives from a tunnel only on a direct link (its transit table), so edge-a's packet is delivered.
    choices = {"gw-cloud": RouteChoice.of({"gw-edge-b": "gw-dc"}), "gw-dc": RouteChoice.of({"gw-edge-b": "gw-cloud"})}
    net = RoutedNetwork(consistent_views(), choices)
    hops = net.send("edge-a-2", pod("edge-b-2"))
    assert delivered(hops, "edge-b-2") and tunnels(hops) == 2, hops
    # And the cloud's own pods still reach edge-b, through dc: two tunnels.
    hops = net.send("cloud-2", pod("edge-b-2"))
    assert delivered(hops, "edge-b-2") and tunnels(hops) == 2, hops


def _variant(objs: dict[str, JSON], rnd: random.Random) -> list[Gateway]:
    """Another version of the cluster as one agent may hold it: dc under NAT or not, edge-a exposed or not."""
    if rnd.random() < 0.5:
        for ep in [*objs["gw-dc"]["spec"]["endpoints"], *objs["gw-dc"]["status"]["activeEndpoints"]]:
            ep["underNAT"] = True
    if rnd.random() < 0.3:
        objs["gw-edge-a"]["spec"]["exposeType"] = "PublicIP"
        for ep in objs["gw-edge-a"]["status"]["activeEndpoints"]:
            ep["publicIP"], ep["publicPort"] = "198.51.100.7", 4500
    return parse(objs)


def test_no_loop_from_any_choices_and_inconsistent_views() -> None:
    rnd = random.Random(14)
    for _trial in range(60):
        views = {n: _variant(cluster_json(), rnd) for n in ALL_NODES}
        # Any next hop per destination, valid or not (the plan keeps only what its own view allows).
        choices = {
            gw: RouteChoice.of({dst: rnd.choice(GATEWAYS) for dst in GATEWAYS if dst != gw})
            for gw in GATEWAYS
        }
        net = RoutedNetwork(views, choices)
        for src, dst in itertools.permutations(ALL_NODES, 2):
            hops = net.send(src, pod(dst))
            assert hops[-1].via != "loop", (choices, src, dst, hops)
            assert tunnels(hops) <= 2, (choices, src, dst, hops)


def test_ingress_accepts_a_pool_from_a_relay_only_when_told_and_the_relay_has_a_direct_link() -> None:
    gws = parse(cluster_json())
    inner = {gw: next(link.local for link in plan(gws, nodes(), node, CFG).state.links if link.name == "raven1")
             for gw, node in ACTIVE.items()}

    def sources(routing: RouteChoice | None, sender: str) -> set[str]:
        f = plan(gws, nodes(), "dc-1", CFG, routing=routing).state.ingress
        assert f is not None
        return set(next(p for p in f.tunnel if p.outer == inner[sender]).sources)

    edge_a = {s for _, _, subs in POOLS["gw-edge-a"] for s in subs}
    assert not edge_a & sources(None, "gw-cloud")
    # edge-a's path to dc may go through the cloud (it measured its direct link slow): dc accepts it from there.
    told = RouteChoice.of({}, {"gw-edge-a": ["gw-cloud"]})
    assert edge_a <= sources(told, "gw-cloud")
    # edge-b has no direct link to edge-a (both under NAT): it never relays edge-a's traffic, whatever it is told.
    assert not edge_a & sources(RouteChoice.of({}, {"gw-edge-a": ["gw-edge-b"]}), "gw-edge-b")


def test_transit_table_holds_only_direct_routes_and_unreachable_for_the_rest() -> None:
    gws = parse(cluster_json())
    edge_a = plan(gws, nodes(), "edge-a-1", CFG, routing=RouteChoice.of({"gw-dc": "gw-cloud"})).state
    transit = {r.dst: r for r in edge_a.routes if r.table == 9028 and r.ifname != "raven0"}
    # dc is routed via the cloud for edge-a's own traffic, but what arrives from a tunnel for dc goes direct.
    assert transit["10.247.0.0/24"].ifname == "raven1"
    raven = {r.dst: r for r in edge_a.routes if r.table == 9027}
    assert raven["10.247.0.0/24"].gateway != transit["10.247.0.0/24"].gateway
    assert transit["10.246.0.0/24"].ifname == UNREACHABLE  # edge-b: no direct link
