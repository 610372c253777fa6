"""NAT traversal wired into the agent (raven/agent/natpunch.py, `plan(punch=...)`, `Router.extra_direct`): two NAT'd
pools whose mappings the controller published punch towards each other at both ends, beside the relay; the pair
is routed direct only once the punch tunnel is verified (SA up and probe up), relayed before, back to the relay
as soon as the probe goes down; a symmetric / symmetric pair never punches."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from raven.agent.app import UnderlayFollower, plan_with_underlay
from raven.agent.inputs import PlanInputs
from raven.agent.natpunch import NatLoop, NatPuncher, held_targets
from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.agent.routes import Router, RouterSettings
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.config import AgentConfig, CommonConfig, ListenAddr
from raven.dataplane.ipsec import TunnelState
from raven.kube.client import GATEWAYS, NODES, KubeClient
from raven.kube.informer import Informer
from raven.kube.typed import TypedInformer
from raven.nattraversal.core import ADM, EIM, NatBehaviour, PunchTarget, Sighting, infer, to_config
from raven.routing.choice import RouteChoice
from tests.unit.plan_cluster import JSON, cluster_json, nodes, parse

CFG = PlanConfig()
T0 = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC).timestamp()
NOW = T0 + 3  # inside attempt 0: [ceil(T0 + 2), +10 s)
MAPPED = {"gw-edge-a": ("198.51.100.1", 4500), "gw-edge-b": ("198.51.100.2", 4600)}
ACTIVE = {"gw-edge-a": "edge-a-1", "gw-edge-b": "edge-b-1"}
EDGE_B_SUBNETS = ("10.246.0.0/24", "10.246.1.0/24")


def published_cluster(behaviour: dict[str, NatBehaviour] | None = None) -> list[Gateway]:
    return parse(published_json(behaviour))


def published_json(behaviour: dict[str, NatBehaviour] | None = None) -> dict[str, JSON]:
    """The reference cluster with the controller's inference in each NAT'd Gateway's active endpoint config, as
    two reachable observers (gw-cloud, gw-dc) saw it: the same port (EIM) or two ports (ADM)."""
    objs: dict[str, JSON] = copy.deepcopy(cluster_json())
    for gw, (address, port) in MAPPED.items():
        kind = (behaviour or {}).get(gw, EIM)
        seen = [Sighting("gw-cloud", gw, ACTIVE[gw], address, port, T0),
                Sighting("gw-dc", gw, ACTIVE[gw], address, port if kind == EIM else port + 7, T0)]
        inference = infer(gw, ACTIVE[gw], seen)
        assert inference.behaviour == kind
        objs[gw]["status"]["activeEndpoints"][0]["config"] = to_config(inference)
    return objs


def tunnel(name: str) -> TunnelState:
    return TunnelState(name, "ESTABLISHED", 1, "198.51.100.9", 4500, "INSTALLED", 2, 0, 0, 0, 0, True)


def inner_of(gws: list[Gateway], node: str) -> str:
    return next(link.local for link in plan(gws, nodes(), node, CFG).state.links if link.name == "raven1")


def evaluate(gws: list[Gateway], gateway: str, sa_up: tuple[str, ...] = (), probe: str | None = None,
             puncher: NatPuncher | None = None, now: float = NOW) -> NatPuncher:
    p = puncher if puncher is not None else NatPuncher(CFG.tunnel_cidr)
    p.observe([], [tunnel(n) for n in sa_up])
    p.evaluate(gateway, gws, lambda _inner: probe, now)
    return p


def routed_via(result: PlanResult, subnets: tuple[str, ...]) -> set[str | None]:
    return {r.gateway for r in result.state.routes if r.dst in subnets and r.table == CFG.table}


def test_both_ends_punch_towards_each_others_published_mapping_beside_the_relay() -> None:
    gws = published_cluster()
    inner = {n: inner_of(gws, n) for n in ("edge-a-1", "edge-b-1", "cloud-1")}
    for me, node, peer, peer_node in (("gw-edge-a", "edge-a-1", "gw-edge-b", "edge-b-1"),
                                      ("gw-edge-b", "edge-b-1", "gw-edge-a", "edge-a-1")):
        puncher = evaluate(gws, me)
        assert puncher.punch == (PunchTarget(peer, peer_node, *MAPPED[peer], 0),)
        assert puncher.direct_links == frozenset()  # nothing verified yet
        without = plan(gws, nodes(), node, CFG)
        result = plan(gws, nodes(), node, CFG, punch=puncher.punch)
        conns = {c.name: c for c in result.state.ipsec}
        direct = conns[f"raven-{peer}"]
        assert direct.initiator and direct.mutual  # at both ends: simultaneous initiation (its duplicate deleted)
        assert direct.remote_addrs == (MAPPED[peer][0],) and direct.remote_port == MAPPED[peer][1]
        assert direct.remote_ts == f"{inner[peer_node]}/32"
        # The relay's tunnel is exactly as without punching, and the routes still go through it.
        assert conns["raven-gw-cloud"] == {c.name: c for c in without.state.ipsec}["raven-gw-cloud"]
        assert routed_via(result, EDGE_B_SUBNETS if peer == "gw-edge-b" else ("10.245.0.0/24",)) == {
            inner["cloud-1"]}
        # A peer probe through the punched tunnel (the evidence for `verified`), and the ingress filter lets the
        # peer send its own subnets directly (the far end may move first).
        assert any(t.kind == "peer" and t.gateway == peer and t.address == inner[peer_node] for t in result.probes)
        assert result.state.ingress is not None
        allowed = {p.outer: set(p.sources) for p in result.state.ingress.tunnel}
        assert inner[peer_node] in allowed
        if peer == "gw-edge-b":
            assert set(EDGE_B_SUBNETS) <= allowed[inner[peer_node]]
        assert not any("nat traversal" in p for p in result.problems)


def test_verified_pair_is_routed_direct_unverified_stays_relayed_and_a_probe_down_goes_back() -> None:
    gws = published_cluster()
    edge_b, cloud = inner_of(gws, "edge-b-1"), inner_of(gws, "cloud-1")
    router = Router(RouterSettings(tunnel_cidr=CFG.tunnel_cidr))

    def route(puncher: NatPuncher, now: float) -> PlanResult:
        router.extra_direct = puncher.direct_links
        router.update("gw-edge-a", gws, [], now)
        return plan(gws, nodes(), "edge-a-1", CFG, routing=router.choice, punch=puncher.punch)

    # Punching, SA up but the probe not up yet: not verified, relayed.
    puncher = evaluate(gws, "gw-edge-a", sa_up=("raven-gw-cloud", "raven-gw-edge-b"), probe="unknown")
    assert puncher.direct_links == frozenset()
    assert routed_via(route(puncher, NOW), EDGE_B_SUBNETS) == {cloud}
    # SA up and probe up: verified, a direct link for routing, which takes it (no measurements: one hop wins).
    evaluate(gws, "gw-edge-a", sa_up=("raven-gw-cloud", "raven-gw-edge-b"), probe="up", puncher=puncher,
             now=NOW + 1)
    assert puncher.direct_links == frozenset({("gw-edge-a", "gw-edge-b")})
    fresh = Router(RouterSettings(tunnel_cidr=CFG.tunnel_cidr))
    fresh.extra_direct = puncher.direct_links
    fresh.update("gw-edge-a", gws, [], NOW + 1)
    direct = plan(gws, nodes(), "edge-a-1", CFG, routing=fresh.choice, punch=puncher.punch)
    assert routed_via(direct, EDGE_B_SUBNETS) == {edge_b}
    assert not any("routing:" in p for p in direct.problems)
    # The plan accepts the direct next hop only with the punch connection planned.
    no_punch = plan(gws, nodes(), "edge-a-1", CFG, routing=fresh.choice)
    assert routed_via(no_punch, EDGE_B_SUBNETS) == {cloud}
    # The probe goes down: out of direct_links at once, and the router moves back to the relay at once.
    router = fresh
    evaluate(gws, "gw-edge-a", sa_up=("raven-gw-cloud", "raven-gw-edge-b"), probe="down", puncher=puncher,
             now=NOW + 30)
    assert puncher.direct_links == frozenset()
    assert routed_via(route(puncher, NOW + 30), EDGE_B_SUBNETS) == {cloud}
    assert [t.peer for t in puncher.punch] == ["gw-edge-b"]  # re-punched at once


def test_the_sa_alone_is_not_verification() -> None:
    gws = published_cluster()
    puncher = evaluate(gws, "gw-edge-a", sa_up=("raven-gw-cloud",), probe="up")  # no SA of the punch tunnel
    assert puncher.direct_links == frozenset() and puncher.punch


def test_symmetric_pair_never_punches_and_stays_relayed() -> None:
    gws = published_cluster({"gw-edge-a": ADM, "gw-edge-b": ADM})
    puncher = evaluate(gws, "gw-edge-a")
    assert puncher.punch == () and puncher.plan.next_check is None
    assert "address-dependent" in puncher.plan.decisions[0].reason
    result = plan(gws, nodes(), "edge-a-1", CFG, punch=puncher.punch)
    assert "raven-gw-edge-b" not in {c.name for c in result.state.ipsec}


def test_an_attempt_ends_without_verification_and_the_connection_goes() -> None:
    gws = published_cluster()
    puncher = evaluate(gws, "gw-edge-a")
    assert puncher.punch and puncher.plan.next_check is not None
    end = puncher.plan.next_check
    evaluate(gws, "gw-edge-a", puncher=puncher, now=end)
    assert puncher.punch == () and puncher.plan.next_check is not None and puncher.plan.next_check > end


def test_an_inference_withdrawn_by_the_controller_keeps_a_verified_pair_and_ends_an_attempt() -> None:
    """The controller withdraws an inference when the observers' reports it rested on went stale (their agents died,
    or lost the API): the Gateways then carry no NAT keys. A verified pair keeps its connection and its direct link
    while the probe answers; without verification the pair is relayed and nothing is attempted."""
    gws = published_cluster()
    withdrawn = copy.deepcopy(published_json())
    for gw in MAPPED:
        withdrawn[gw]["status"]["activeEndpoints"][0].pop("config")
    bare = parse(withdrawn)
    up = ("raven-gw-cloud", "raven-gw-edge-b")
    puncher = evaluate(gws, "gw-edge-a", sa_up=up, probe="up")
    before = plan(gws, nodes(), "edge-a-1", CFG, punch=puncher.punch)
    evaluate(bare, "gw-edge-a", sa_up=up, probe="up", puncher=puncher, now=NOW + 60)
    assert puncher.direct_links == frozenset({("gw-edge-a", "gw-edge-b")})
    kept = plan(bare, nodes(), "edge-a-1", CFG, punch=puncher.punch)
    assert {c.name: c for c in kept.state.ipsec}["raven-gw-edge-b"] == {
        c.name: c for c in before.state.ipsec}["raven-gw-edge-b"]  # the same connection: its SA stays
    evaluate(bare, "gw-edge-a", sa_up=up, probe="down", puncher=puncher, now=NOW + 61)
    assert puncher.direct_links == frozenset() and puncher.punch == () and puncher.plan.next_check is None
    assert "raven-gw-edge-b" not in {c.name for c in plan(bare, nodes(), "edge-a-1", CFG,
                                                            punch=puncher.punch).state.ipsec}
    fresh = evaluate(bare, "gw-edge-a")  # never verified: nothing to aim at, nothing attempted
    assert fresh.punch == () and fresh.direct_links == frozenset()


def test_a_punch_target_the_topology_connects_directly_is_ignored_and_reported() -> None:
    gws = published_cluster()
    result = plan(gws, nodes(), "edge-a-1", CFG, punch=(PunchTarget("gw-dc", "dc-1", "198.51.100.3", 4500, 0),))
    assert any("punch target gw-dc is not a relayed" in p for p in result.problems)
    assert {c.name: c for c in result.state.ipsec}["raven-gw-dc"] == {
        c.name: c for c in plan(gws, nodes(), "edge-a-1", CFG).state.ipsec}["raven-gw-dc"]


def test_a_member_plans_nothing_of_it() -> None:
    gws = published_cluster()
    target = PunchTarget("gw-edge-b", "edge-b-1", *MAPPED["gw-edge-b"], 0)
    assert plan(gws, nodes(), "edge-a-2", CFG, punch=(target,)) == plan(gws, nodes(), "edge-a-2", CFG)


async def test_the_agent_wiring_plans_the_punch_and_reports_verification_from_the_driver_states() -> None:
    """PlanInputs + NatLoop + plan_with_underlay as agent_main joins them: the loop's targets reach the plan, the
    driver's states (as the reconciler hands them over) and the probe state make the pair verified."""
    client: Any = object.__new__(KubeClient)  # never used: only the caches are read
    registry = CollectorRegistry()
    gateways = TypedInformer(Informer(client, GATEWAYS, "gateways", registry), Gateway.from_dict)
    node_cache = TypedInformer(Informer(client, NODES, "nodes", registry), Node.from_dict)
    for obj in published_json().values():
        gateways.store(obj)
    inputs = PlanInputs("edge-a-1", gateways, node_cache)
    common = CommonConfig(kubeconfig=None, health_addr=ListenAddr("", 0), metrics_addr=ListenAddr("", 0))
    cfg = AgentConfig(common=common, node_name="edge-a-1", psk="0123456789abcdef0123", nat_traversal=True)
    puncher = NatPuncher(cfg.tunnel_cidr)
    probes: dict[str, str] = {}
    changes: list[int] = []
    loop = NatLoop(puncher, inputs, probes.get, lambda: changes.append(1), clock=lambda: NOW)

    def punch() -> tuple[PunchTarget, ...]:
        return puncher.punch

    plan_fn = loop.wrap(plan_with_underlay(cfg, inputs, UnderlayFollower(tunnel_and_paths=False), punch=punch))
    first = await plan_fn()
    assert first.role == "gateway" and loop.dirty.is_set()  # became a gateway: evaluate
    assert "raven-gw-edge-b" not in {c.name for c in first.state.ipsec}
    assert loop.step()
    second = await plan_fn()
    assert {c.name: c for c in second.state.ipsec}["raven-gw-edge-b"].remote_port == MAPPED["gw-edge-b"][1]
    edge_b = inner_of(published_cluster(), "edge-b-1")
    loop.dirty.clear()
    loop.on_states(second.state.ipsec, [tunnel("raven-gw-cloud"), tunnel("raven-gw-edge-b")])
    assert loop.dirty.is_set() and not loop.step()  # SA up, probe not up yet: nothing changes
    probes[edge_b] = "up"
    assert loop.step() and puncher.direct_links == frozenset({("gw-edge-a", "gw-edge-b")})


def test_diagnose_plans_the_connection_of_a_punched_pair_its_agent_routes_direct() -> None:
    """`raven diagnose` has no NatPuncher memory: a pair the published paths route direct although the topology
    relays it is a verified punched pair, planned towards the peer's published mapping (so it reads as no drift)."""
    gws = published_cluster()
    choice = RouteChoice.of({"gw-edge-b": "gw-edge-b", "gw-cloud": "gw-cloud", "gw-dc": "gw-dc"})
    targets = held_targets("gw-edge-a", gws, choice, CFG.tunnel_cidr)
    assert targets == (PunchTarget("gw-edge-b", "edge-b-1", *MAPPED["gw-edge-b"], 0),)
    assert held_targets("gw-edge-a", gws, RouteChoice.of({"gw-edge-b": "gw-cloud"}), CFG.tunnel_cidr) == ()
    result = plan(gws, nodes(), "edge-a-1", CFG, routing=choice, punch=targets)
    assert routed_via(result, EDGE_B_SUBNETS) == {inner_of(gws, "edge-b-1")} and not result.problems


async def test_a_punch_attempts_probe_stays_out_of_the_report_until_verified() -> None:
    """A punch attempt is no tunnel: its `peer` probe is probed (the evidence) but neither published nor a reason
    to write, so its losses never reach the controller's health rules; once verified it is published."""
    from raven.pathhealth.core import HealthParams
    from raven.pathhealth.monitor import PathMonitor
    from raven.pathhealth.report import ReportWriter, WritePolicy
    from raven.pathhealth.targets import ProbeTarget
    from tests.unit.test_pathhealth_report import MemoryStore

    relay = ProbeTarget("peer", "gw-cloud", "cloud-1", "241.0.0.1", "241.0.0.3")
    punched = ProbeTarget("peer", "gw-edge-b", "edge-b-1", "241.0.0.1", "241.0.0.2")
    mon, store = PathMonitor("edge-a-1", HealthParams(), interval=0.2, timeout=0.5), MemoryStore()
    writer = ReportWriter("edge-a-1", store, WritePolicy(min_interval=0.01, heartbeat=60.0), mon.status)
    mon.writer = writer
    mon.resume_from(await writer.load())
    verified = False
    mon.quiet = lambda t: t.gateway == "gw-edge-b" and not verified
    mon.update_plan("gateway", "gw-edge-a", (relay,))
    writer._dirty.clear()
    mon.update_plan("gateway", "gw-edge-a", (relay, punched))
    assert not writer._dirty.is_set()  # the attempt's target alone is no change of the report
    for _ in range(3):
        mon._on_outcome(punched.key, None, 0.0)
    assert mon.state_of("peer", punched.address) in ("unknown", "down")  # probed all the same
    assert not writer._dirty.is_set()
    assert [t.gateway for t in mon.status(T0).targets] == ["gw-cloud"]
    verified = True
    assert sorted(t.gateway for t in mon.status(T0).targets) == ["gw-cloud", "gw-edge-b"]


def test_a_relayed_peers_probe_is_an_attempt_until_verified_even_between_attempts() -> None:
    """The target of an attempt that just ended may still be probed until the next plan: it stays quiet too (else
    every attempt's end would publish it, and cost a write)."""
    gws = published_cluster()
    puncher = evaluate(gws, "gw-edge-a")
    assert puncher.attempting("gw-edge-b") and not puncher.attempting("gw-cloud")
    end = puncher.plan.next_check
    assert end is not None
    evaluate(gws, "gw-edge-a", puncher=puncher, now=end)  # attempt over, not verified
    assert puncher.punch == () and puncher.attempting("gw-edge-b")
    evaluate(gws, "gw-edge-a", sa_up=("raven-gw-edge-b",), probe="up", puncher=puncher, now=end + 1)
    assert not puncher.attempting("gw-edge-b")  # verified: published
