"""Make-before-break (raven.agent.staging): synthetic sequences of plans, evidence and clock, on the real plan of
the reference cluster (tests/unit/plan_cluster.py): edge-a and edge-b under NAT, relayed through gw-cloud, until
gw-edge-a is exposed (relay -> direct) and again after (direct -> relay)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import pytest
from prometheus_client import CollectorRegistry

from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.agent.reconciler import AgentMetrics, Reconciler
from raven.agent.staging import Evidence, Stage, Staged, Stager, StagingMetrics, hops, stage
from raven.dataplane.diff import Observed, diff
from raven.dataplane.metrics import DataplaneMetrics
from raven.dataplane.state import NodeNetwork
from tests.unit.plan_cluster import JSON, POOLS, cluster_json, gateway_json, nodes, parse

CFG = PlanConfig()
GRACE = 5.0
EDGE_A_SUBNETS = {s for _, _, subnets in POOLS["gw-edge-a"] for s in subnets}


def relayed() -> dict[str, JSON]:
    return cluster_json()


def direct() -> dict[str, JSON]:
    objs = cluster_json()
    objs["gw-edge-a"] = gateway_json("gw-edge-a", "2026-01-02T00:00:00Z", POOLS["gw-edge-a"], "edge-a-1",
                                     under_nat=True, expose_type="PublicIP", public_ip="203.0.113.20")
    return objs


def state_on(node: str, objs: dict[str, JSON]) -> NodeNetwork:
    return plan(parse(objs), nodes(), node, CFG).state


def inner_of(state: NodeNetwork, gateway: str) -> str:
    return next(hop for hop, c in hops(state).items() if c.name == f"raven-{gateway}")


def next_hops(state: NodeNetwork, subnets: set[str]) -> set[str | None]:
    return {r.gateway for r in state.routes if r.dst in subnets and r.table == CFG.table}


def allowed(state: NodeNetwork, outer: str) -> set[str]:
    assert state.ingress is not None
    return next((set(p.sources) for p in state.ingress.tunnel if p.outer == outer), set())


def run(planned: NodeNetwork, previous: Stage | None, now: float, verified: Iterable[str] = (),
        broken: Iterable[str] = ()) -> Staged:
    return stage(planned, previous, verified=verified, broken=broken, now=now, grace=GRACE)


@pytest.fixture
def states() -> tuple[NodeNetwork, NodeNetwork, str, str]:
    before, after = state_on("edge-b-1", relayed()), state_on("edge-b-1", direct())
    return before, after, inner_of(before, "gw-cloud"), inner_of(after, "gw-edge-a")


def test_the_scenario_is_a_relay_to_direct_change(states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    before, after, cloud, edge_a = states
    assert next_hops(before, EDGE_A_SUBNETS) == {cloud}
    assert next_hops(after, EDGE_A_SUBNETS) == {edge_a}
    assert edge_a not in hops(before)


def test_relay_to_direct_waits_for_the_new_tunnel_then_switches_then_cleans_up_after_the_grace(
        states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    before, after, cloud, edge_a = states
    first = run(before, None, 0.0)
    assert first.state == before

    # Planned, the new tunnel not verified yet: its connection comes at once, the routes stay on the relay.
    held = run(after, first.stage, 1.0, verified={cloud})
    assert next_hops(held.state, EDGE_A_SUBNETS) == {cloud}
    assert held.state.ipsec == after.ipsec
    assert allowed(held.state, edge_a) >= EDGE_A_SUBNETS  # the new path's allowance is there from the start
    assert allowed(held.state, cloud) >= EDGE_A_SUBNETS  # and the relay's stays
    assert [(h.new_hop, h.old_hop, h.prefixes) for h in held.held] == [(edge_a, cloud, len(EDGE_A_SUBNETS))]
    assert not held.switches

    # Still not verified a while later: still held, since the first time.
    still = run(after, held.stage, 2.0, verified={cloud})
    assert next_hops(still.state, EDGE_A_SUBNETS) == {cloud}
    assert still.held[0].since == 1.0

    # Verified: the routes move, nothing else of the relay goes yet.
    switched = run(after, still.stage, 3.0, verified={cloud, edge_a})
    assert next_hops(switched.state, EDGE_A_SUBNETS) == {edge_a}
    assert [(s.old_hop, s.new_hop, s.kind) for s in switched.switches] == [(cloud, edge_a, "planned")]
    assert allowed(switched.state, cloud) >= EDGE_A_SUBNETS  # edge-a may still send via the relay
    assert switched.wake_at == 3.0 + GRACE
    # Only the moved prefixes are written, each one replace.
    changes = diff(switched.state, Observed.of(still.state))
    assert {r.dst for r in changes.route_replace} == EDGE_A_SUBNETS
    assert not changes.route_create and not changes.route_delete

    # Grace not over: unchanged. Over: exactly the plan.
    during = run(after, switched.stage, 3.0 + GRACE - 0.1, verified={cloud, edge_a})
    assert during.state == switched.state
    done = run(after, during.stage, 3.0 + GRACE, verified={cloud, edge_a})
    assert done.state == after
    assert done.expired == (cloud,)
    assert not allowed(done.state, cloud) & EDGE_A_SUBNETS


def test_direct_to_relay_switches_at_once_when_the_relay_is_verified_and_keeps_the_old_tunnel_for_the_grace(
        states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    relay_state, direct_state, cloud, edge_a = states
    first = run(direct_state, None, 0.0)
    back = run(relay_state, first.stage, 1.0, verified={cloud, edge_a})
    assert next_hops(back.state, EDGE_A_SUBNETS) == {cloud}
    assert [s.kind for s in back.switches] == ["planned"]
    # The old direct tunnel, its neighbour, FDB entry and allowance stay: edge-a still sends directly until it
    # switches on its own clock.
    assert "raven-gw-edge-a" in {c.name for c in back.state.ipsec}
    assert any(n.ip == edge_a for n in back.state.neighbors) and any(f.dst == edge_a for f in back.state.fdb)
    assert allowed(back.state, edge_a) >= EDGE_A_SUBNETS
    done = run(relay_state, back.stage, 1.0 + GRACE, verified={cloud})
    assert done.state == relay_state


def test_a_new_hop_that_never_verifies_keeps_the_old_path_until_it_breaks(
        states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    before, after, cloud, edge_a = states
    st = run(before, None, 0.0).stage
    for t in range(1, 100):
        out = run(after, st, float(t), verified={cloud}, broken={edge_a})  # the new tunnel fails its probe
        assert next_hops(out.state, EDGE_A_SUBNETS) == {cloud}
        st = out.stage
    # The relay breaks: unplanned switch, at once.
    out = run(after, st, 100.0, broken={cloud, edge_a})
    assert next_hops(out.state, EDGE_A_SUBNETS) == {edge_a}
    assert [s.kind for s in out.switches] == ["unplanned"]


def test_unknown_evidence_holds_only_on_an_old_hop_that_is_not_broken(
        states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    before, after, cloud, edge_a = states
    st = run(before, None, 0.0).stage
    assert next_hops(run(after, st, 1.0).state, EDGE_A_SUBNETS) == {cloud}  # nothing known: keep what worked
    assert next_hops(run(after, st, 1.0, broken={cloud}).state, EDGE_A_SUBNETS) == {edge_a}


def test_a_held_route_never_points_at_a_hop_without_tunnel_neighbour_or_allowance(
        states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    """Through any sequence of plans and evidence, every raven1 route's next hop has its connection, its
    neighbour and FDB entry, and the filter lets it send: staging cannot black-hole a pool."""
    relay_state, direct_state, cloud, edge_a = states
    sequence: list[tuple[NodeNetwork, set[str]]] = [
        (direct_state, set()), (direct_state, {cloud}), (relay_state, {cloud}), (direct_state, {edge_a}),
                (relay_state, set()), (direct_state, {cloud, edge_a}), (relay_state, {cloud, edge_a})]
    st: Stage | None = None
    for t, (planned, ok) in enumerate(sequence * 3):
        out = run(planned, st, t * 1.5, verified=ok)
        st = out.stage
        conns = hops(out.state)
        for r in out.state.routes:
            if r.ifname == CFG.inter_gateway_link and r.gateway is not None:
                assert r.gateway in conns, (t, r)
                assert any(n.ip == r.gateway for n in out.state.neighbors)
                assert any(f.dst == r.gateway for f in out.state.fdb)
                assert r.dst in allowed(out.state, r.gateway)


def test_a_member_is_never_staged() -> None:
    before, after = state_on("edge-b-2", relayed()), state_on("edge-b-2", direct())
    out = run(after, run(before, None, 0.0).stage, 1.0)
    assert out.state == after and not out.held


def test_leaving_the_gateway_role_drops_whatever_lingered(states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    before, after, cloud, edge_a = states
    switched = run(after, run(before, None, 0.0).stage, 1.0, verified={cloud, edge_a})
    assert switched.stage.lingering
    out = run(NodeNetwork(), switched.stage, 2.0)
    assert out.state == NodeNetwork()


def test_the_stager_logs_meters_and_asks_for_the_evidence_of_both_states(
        states: tuple[NodeNetwork, NodeNetwork, str, str], caplog: pytest.LogCaptureFixture) -> None:
    before, after, cloud, edge_a = states
    clock = [0.0]
    evidence = Evidence(verified=frozenset({cloud}))
    asked: list[Mapping[str, str]] = []

    async def verify(names: Mapping[str, str]) -> Evidence:
        asked.append(dict(names))
        return evidence

    registry = CollectorRegistry()
    stager = Stager(GRACE, verify, StagingMetrics(registry), clock=lambda: clock[0])

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    async def scenario() -> None:
        nonlocal evidence
        assert await stager(before) == before
        assert not asked  # the first pass applies the plan: nothing to ask
        clock[0] = 1.0
        caplog.set_level("INFO", logger="raven.agent.staging")
        held = await stager(after)
        assert asked[-1] == {cloud: "raven-gw-cloud", edge_a: "raven-gw-edge-a",
                             **{h: c.name for h, c in hops(before).items()}}
        assert next_hops(held, EDGE_A_SUBNETS) == {cloud}
        assert value("raven_path_staged", via="gw-edge-a") == len(EDGE_A_SUBNETS)
        assert stager.wake_at is not None and stager.wake_at <= 1.0 + 0.2
        assert any(r.message == "path change held" for r in caplog.records)
        evidence = Evidence(verified=frozenset({cloud, edge_a}))
        clock[0] = 2.0
        switched = await stager(after)
        assert next_hops(switched, EDGE_A_SUBNETS) == {edge_a}
        assert value("raven_path_staged", via="gw-edge-a") is None
        assert value("raven_path_switch_total", kind="planned") == 1
        assert value("raven_path_lingering") == 1
        assert stager.wake_at == 2.0 + GRACE
        assert any(r.message == "path switched" for r in caplog.records)

    asyncio.run(scenario())




async def test_the_reconciler_switches_by_itself_once_the_tunnel_verifies_and_cleans_up_after_the_grace(
        states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    """The loop re-runs while a change is held (no event needed: the evidence changes outside the cluster's
    objects) and at the end of the grace period."""
    from tests.controller.conftest import eventually
    from tests.unit.test_reconciler import RecordingCharon, RecordingKernel

    before, after, cloud, edge_a = states
    plans = [PlanResult(before, role="gateway", gateway="gw-edge-b"),
             PlanResult(after, role="gateway", gateway="gw-edge-b")]
    evidence = Evidence(verified=frozenset({cloud}))

    async def verify(names: Mapping[str, str]) -> Evidence:
        return evidence

    async def plan_fn() -> PlanResult:
        return plans.pop(0) if len(plans) > 1 else plans[0]

    registry = CollectorRegistry()
    kernel, charon = RecordingKernel(), RecordingCharon()
    rec = Reconciler(plan_fn, lambda: True, kernel, charon, AgentMetrics(registry), DataplaneMetrics(registry),
                     resync_period=30.0, debounce=0.01, tunnel_check_period=30.0,
                     stager=Stager(0.3, verify, StagingMetrics(registry)))
    task = asyncio.create_task(rec.run())
    try:
        rec.trigger("synced")
        await eventually(lambda: len(kernel.applied), lambda n: n >= 1, interval=0.01, what="first pass")
        rec.trigger("gateway/gw-edge-a")
        await eventually(lambda: len(kernel.applied), lambda n: n >= 2, interval=0.01, what="the change planned")
        assert next_hops(kernel.applied[-1], EDGE_A_SUBNETS) == {cloud}
        assert "raven-gw-edge-a" in {c.name for c in charon.loaded[-1]}  # the new tunnel is loaded at once
        evidence = Evidence(verified=frozenset({cloud, edge_a}))
        await eventually(lambda: next_hops(kernel.applied[-1], EDGE_A_SUBNETS), lambda h: h == {edge_a},
                         interval=0.01, within=2.0, what="the switch")
        assert kernel.applied[-1] != after  # the relay's allowance still lingers ...
        await eventually(lambda: kernel.applied[-1], lambda s: s == after, interval=0.01, within=2.0,
                         what="the end of the grace")  # ... until the grace is over
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_planned_change_waits_the_settle_time_for_the_far_end_an_unplanned_one_does_not(
        states: tuple[NodeNetwork, NodeNetwork, str, str]) -> None:
    """Direct -> relay: the relay is verified at once, but edge-a plans the same change on its own clock, and only
    its new plan lets its filter take edge-b's packets from the relay: the move waits `settle` seconds."""
    relay_state, direct_state, cloud, edge_a = states
    ok = {cloud, edge_a}
    first = stage(direct_state, None, verified=ok, broken=(), now=0.0, grace=GRACE, settle=1.0).stage
    held = stage(relay_state, first, verified=ok, broken=(), now=10.0, grace=GRACE, settle=1.0)
    assert next_hops(held.state, EDGE_A_SUBNETS) == {edge_a}
    assert "settle" in held.held[0].reason
    still = stage(relay_state, held.stage, verified=ok, broken=(), now=10.9, grace=GRACE, settle=1.0)
    assert next_hops(still.state, EDGE_A_SUBNETS) == {edge_a}
    moved = stage(relay_state, still.stage, verified=ok, broken=(), now=11.0, grace=GRACE, settle=1.0)
    assert next_hops(moved.state, EDGE_A_SUBNETS) == {cloud}
    assert [(s.kind, s.since) for s in moved.switches] == [("planned", 10.0)]
    # The direct tunnel breaks before the settle time is over: no reason to wait.
    broken = stage(relay_state, held.stage, verified={cloud}, broken={edge_a}, now=10.1, grace=GRACE, settle=1.0)
    assert next_hops(broken.state, EDGE_A_SUBNETS) == {cloud}
    assert [s.kind for s in broken.switches] == ["unplanned"]


async def test_the_evidence_is_the_sa_and_the_peer_probe_together() -> None:
    """Verified: SA up and the probe through it `up`; broken: no SA, or the probe `down`; a probe still unknown
    (the tunnel just came up) is neither. A probe state change calls the monitor's `on_change` (the agent
    re-runs its loop: a held change may go now)."""
    from raven.agent.app import tunnel_evidence
    from raven.pathhealth.core import HealthParams, TargetHealth
    from raven.pathhealth.monitor import PathMonitor
    from raven.pathhealth.targets import ProbeTarget
    from tests.unit.test_reconciler import RecordingCharon

    charon = RecordingCharon()
    charon.established = {"raven-gw-b", "raven-gw-c"}
    mon = PathMonitor("a-1", HealthParams(), interval=0.2, timeout=0.5)
    b, c, d = (ProbeTarget("peer", f"gw-{x}", f"{x}-1", "241.0.0.1", f"241.0.0.{i}")
               for i, x in ((2, "b"), (3, "c"), (4, "d")))
    mon.update_plan("gateway", "gw-a", (b, c, d))
    changes: list[tuple[str, str]] = []
    mon.on_change = lambda t, state: changes.append((t.gateway, state))
    for _ in range(3):
        mon._on_outcome(b.key, 0.001, 0.0)
    assert changes == [("gw-b", "up")]
    names = {"241.0.0.2": "raven-gw-b", "241.0.0.3": "raven-gw-c", "241.0.0.4": "raven-gw-d"}
    ev = await tunnel_evidence(charon, mon)(names)
    assert ev.verified == {"241.0.0.2"}  # c: SA up, probe unknown; d: no SA
    assert ev.broken == {"241.0.0.4"}
    mon.health[c.key] = TargetHealth(state="down")  # its probe lost (the state machine: test_pathhealth_core)
    ev = await tunnel_evidence(charon, mon)(names)
    assert "241.0.0.3" in ev.broken
    # Without path health the SA alone verifies.
    ev = await tunnel_evidence(charon, None)(names)
    assert ev.verified == {"241.0.0.2", "241.0.0.3"} and ev.broken == {"241.0.0.4"}
