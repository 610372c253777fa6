"""The agent's reconcile loop decides when to plan and apply; these tests pin those decisions down.

The kernel and charon here are in-memory test doubles of the two small driver interfaces (the real ones
are proven against real namespaces and charons in tests/dataplane and e2e/tests): they record what the
loop asked for, so each test can assert what the loop did and did not do.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from raven.agent.plan import PlanResult
from raven.agent.reconciler import AgentMetrics, Reconciler
from raven.dataplane.ipsec import DUPLICATE_GRACE_S, CharonUnavailable, TunnelState
from raven.dataplane.metrics import DataplaneMetrics
from raven.dataplane.report import ApplyError, ApplyReport
from raven.dataplane.state import IPsecConnection, NodeNetwork, Route
from tests.controller.conftest import eventually

CONN = IPsecConnection(
    name="raven-gw-b", local_id="raven-gw-a", remote_id="raven-gw-b", local_addrs=("%any",),
    remote_addrs=("198.18.2.11",), remote_port=4500, local_ts="241.0.0.1/32", remote_ts="241.0.0.2/32",
    initiator=True,
)
GATEWAY = PlanResult(
    NodeNetwork(routes=frozenset({Route("10.2.0.0/24", 9027, "raven1", "241.0.0.2")}), ipsec=frozenset({CONN})),
    role="gateway", gateway="gw-a",
)
MEMBER = PlanResult(
    NodeNetwork(routes=frozenset({Route("10.2.0.0/24", 9027, "raven0", "169.254.240.1")})),
    role="member", gateway="gw-a",
)


class RecordingKernel:
    def __init__(self, fail_first: int = 0) -> None:
        self.applied: list[NodeNetwork] = []
        self.fail_first = fail_first

    async def reconcile(self, desired: NodeNetwork) -> ApplyReport:
        self.applied.append(desired)
        report = ApplyReport()
        if len(self.applied) <= self.fail_first:
            report.errors.append(ApplyError("route", "create", "10.2.0.0/24", "No such device"))
        return report


class RecordingCharon:
    def __init__(self, up: bool = True, daemon: str = "charon") -> None:
        self.daemon = daemon
        self.up = up
        self.connects = 1
        self.loaded: list[frozenset[IPsecConnection]] = []
        self.established: set[str] = set()
        self.state_reads = 0

    async def reconcile(self, conns: Iterable[IPsecConnection]) -> ApplyReport:
        if not self.up:
            raise CharonUnavailable("no VICI socket at /run/test.vici")
        self.loaded.append(frozenset(conns))
        self.established = {c.name for c in conns}
        return ApplyReport()

    async def states(self) -> list[TunnelState]:
        self.state_reads += 1
        if not self.up:
            raise CharonUnavailable("no VICI socket at /run/test.vici")
        return [TunnelState(n, "ESTABLISHED", 1, "198.18.2.11", 4500, "INSTALLED", 1, 0, 0, 0, 0, True)
                for n in sorted(self.established)]

    async def available(self) -> bool:
        self.availability_checks = getattr(self, "availability_checks", 0) + 1
        return self.up


def make(plan: PlanResult | list[PlanResult], kernel: RecordingKernel, charon: RecordingCharon | None,
         synced: list[bool] | None = None, sync_checks: list[int] | None = None, **kw: float) -> Reconciler:
    """`sync_checks[0]` (when given) counts the loop's looks at the sync state: it is how a test sees
    that a trigger was taken up while the caches were not synced."""
    plans = plan if isinstance(plan, list) else [plan]
    state = {"synced": synced if synced is not None else [True]}

    def is_synced() -> bool:
        if sync_checks is not None:
            sync_checks[0] += 1
        return state["synced"][0]

    async def plan_fn() -> PlanResult:
        return plans.pop(0) if len(plans) > 1 else plans[0]

    registry = CollectorRegistry()
    return Reconciler(plan_fn, is_synced, kernel, charon, AgentMetrics(registry),
                      DataplaneMetrics(registry), resync_period=kw.get("resync", 30.0),
                      debounce=kw.get("debounce", 0.01),
                      tunnel_check_period=kw.get("tunnel_check", 30.0),
                      charon_poll_period=kw.get("charon_poll", 0.2))


async def test_nothing_is_applied_before_the_informers_synced() -> None:
    # A half-filled cache looks like an empty cluster: applying it would tear down working tunnels.
    kernel, synced, checks = RecordingKernel(), [False], [0]
    rec = make(GATEWAY, kernel, RecordingCharon(), synced=synced, sync_checks=checks)
    task = asyncio.create_task(rec.run())
    rec.trigger("gateway/gw-a")
    # The loop took the trigger up and looked at the sync state (then decided not to plan) ...
    await eventually(lambda: checks[0], lambda n: n >= 1, interval=0.01, what="the trigger taken up")
    assert kernel.applied == [] and not rec.ready().ok  # ... and applied nothing
    synced[0] = True
    rec.trigger("synced")
    await eventually(lambda: bool(kernel.applied), bool, interval=0.01, what="the first apply after sync")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert kernel.applied == [GATEWAY.state] and rec.ready().ok


async def test_a_burst_of_events_is_one_pass() -> None:
    kernel, charon = RecordingKernel(), RecordingCharon()
    rec = make(GATEWAY, kernel, charon, tunnel_check=0.02)
    task = asyncio.create_task(rec.run())
    for i in range(20):
        rec.trigger(f"node/n{i}")
    await eventually(lambda: bool(kernel.applied), bool, interval=0.01, what="the first pass")
    # Tunnel checks run only while the loop waits with nothing triggered: once two have run after the
    # pass, no second pass for the burst is pending.
    reads = charon.state_reads
    await eventually(lambda: charon.state_reads, lambda n: n >= reads + 2, interval=0.01, what="the loop idle")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(kernel.applied) == 1


async def test_the_first_pass_after_sync_does_not_wait_for_the_debounce() -> None:
    # The lists are all in the caches when the informers report synced: nothing to debounce, and the
    # debounce would be added to every agent's exec -> ready. Later bursts still wait for it.
    kernel = RecordingKernel()
    rec = make(GATEWAY, kernel, RecordingCharon(), debounce=30.0)
    rec.trigger("synced")
    task = asyncio.create_task(rec.run())
    await eventually(lambda: bool(kernel.applied), bool, interval=0.01, within=5.0, what="the first pass")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert rec.ready().ok


async def test_a_dead_charon_does_not_stop_route_changes_and_fails_readiness() -> None:
    kernel, charon = RecordingKernel(), RecordingCharon()
    rec = make(GATEWAY, kernel, charon)
    await rec.reconcile_once()
    assert rec.ready().ok
    charon.up = False
    outcome = await rec.reconcile_once()
    assert kernel.applied == [GATEWAY.state, GATEWAY.state]
    assert any(e.startswith("vpn:") for e in outcome.errors)
    check = rec.ready()
    assert not check.ok and "charon: no VICI socket" in check.reason


async def test_readiness_names_the_driver_whose_daemon_is_down() -> None:
    # With --vpn-driver=wireguard a dead wireguard-go is "wireguard: ...", never "charon: ...".
    kernel, wg = RecordingKernel(), RecordingCharon(daemon="wireguard")
    rec = make(GATEWAY, kernel, wg)
    await rec.reconcile_once()
    wg.up = False
    await rec.reconcile_once()
    check = rec.ready()
    assert not check.ok and check.reason.startswith("wireguard: ") and "charon" not in check.reason


async def test_a_member_node_does_not_need_charon() -> None:
    rec = make(MEMBER, RecordingKernel(), RecordingCharon(up=False))
    outcome = await rec.reconcile_once()
    assert outcome.errors == [] and rec.ready().ok


async def test_a_planning_bug_leaves_the_data_plane_alone() -> None:
    kernel, charon = RecordingKernel(), RecordingCharon()

    async def broken() -> PlanResult:
        raise KeyError("status")

    registry = CollectorRegistry()
    rec = Reconciler(broken, lambda: True, kernel, charon, AgentMetrics(registry), DataplaneMetrics(registry),
                     resync_period=30)
    outcome = await rec.reconcile_once()
    assert outcome.errors and kernel.applied == [] and charon.loaded == []


async def test_a_failed_pass_is_retried_without_a_new_event() -> None:
    kernel = RecordingKernel(fail_first=1)
    rec = make(MEMBER, kernel, None)
    task = asyncio.create_task(rec.run())
    rec.trigger("synced")
    # The backoff starts at 0.2 s (jittered down to half).
    await eventually(lambda: len(kernel.applied) >= 2, bool, interval=0.01, what="the retry")
    await asyncio.sleep(0.1)  # a successful retry ends the backoff: no third pass
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(kernel.applied) == 2 and rec.ready().ok


async def test_a_restarted_charon_is_reloaded_between_resyncs() -> None:
    charon = RecordingCharon()
    rec = make(GATEWAY, RecordingKernel(), charon, tunnel_check=0.05)
    task = asyncio.create_task(rec.run())
    rec.trigger("synced")
    await eventually(lambda: bool(charon.loaded), bool, interval=0.01, what="the first load")
    reads = charon.state_reads
    await eventually(lambda: charon.state_reads >= reads + 2, bool, interval=0.01, what="two tunnel checks")
    assert len(charon.loaded) == 1  # checks of a healthy charon reload nothing
    # charon restarts: it lost every connection and the driver had to reconnect.
    charon.established.clear()
    charon.connects += 1
    await eventually(lambda: len(charon.loaded) >= 2, bool, interval=0.01, what="the reload after the restart")
    reads = charon.state_reads  # two tunnel checks after the reload find it healthy: no more loads
    await eventually(lambda: charon.state_reads, lambda n: n >= reads + 2, interval=0.01, what="two more checks")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(charon.loaded) == 2 and charon.established == {"raven-gw-b"}


async def test_a_converged_node_makes_no_extra_passes() -> None:
    kernel, charon = RecordingKernel(), RecordingCharon()
    rec = make(GATEWAY, kernel, charon, tunnel_check=0.05)
    task = asyncio.create_task(rec.run())
    rec.trigger("synced")
    await eventually(lambda: bool(kernel.applied), bool, interval=0.01, what="the first pass")
    reads = charon.state_reads
    await eventually(lambda: charon.state_reads >= reads + 5, bool, interval=0.01, what="five tunnel checks")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # Tunnel checks looked at charon several times, but nothing changed, so nothing was re-applied.
    assert len(kernel.applied) == 1 and len(charon.loaded) == 1


class DuplicatedCharon(RecordingCharon):
    """Lists a duplicate IKE_SA of a simultaneous initiation for this end to delete, until a reconcile (where the
    real driver deletes it)."""

    def __init__(self) -> None:
        super().__init__()
        self.duplicate = False

    async def reconcile(self, conns: Iterable[IPsecConnection]) -> ApplyReport:
        self.duplicate = False
        return await super().reconcile(conns)

    async def states(self) -> list[TunnelState]:
        states = await super().states()
        if not self.duplicate:
            return states
        kept = dataclasses.replace(states[0], initiator=True, initiator_spi="01", responder_spi="02",
                                   established_s=DUPLICATE_GRACE_S)
        return [kept, dataclasses.replace(kept, ike_unique_id=2, initiator=False, initiator_spi="ff")]


async def test_a_duplicate_ike_sa_to_delete_here_calls_for_a_pass() -> None:
    kernel, charon = RecordingKernel(), DuplicatedCharon()
    mutual = dataclasses.replace(GATEWAY, state=dataclasses.replace(
        GATEWAY.state, ipsec=frozenset({dataclasses.replace(CONN, mutual=True)})))
    rec = make(mutual, kernel, charon, tunnel_check=0.05)
    task = asyncio.create_task(rec.run())
    rec.trigger("synced")
    await eventually(lambda: bool(charon.loaded), bool, interval=0.01, what="the first load")
    charon.duplicate = True
    await eventually(lambda: len(charon.loaded) >= 2, bool, interval=0.01, what="the pass for the duplicate")
    reads = charon.state_reads  # gone with that pass: the checks after it call for nothing more
    await eventually(lambda: charon.state_reads, lambda n: n >= reads + 2, interval=0.01, what="two more checks")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(charon.loaded) == 2


async def test_a_duplicate_of_a_connection_only_one_end_initiates_calls_for_nothing() -> None:
    kernel, charon = RecordingKernel(), DuplicatedCharon()
    rec = make(GATEWAY, kernel, charon, tunnel_check=0.05)
    task = asyncio.create_task(rec.run())
    rec.trigger("synced")
    await eventually(lambda: bool(charon.loaded), bool, interval=0.01, what="the first load")
    charon.duplicate = True
    reads = charon.state_reads
    await eventually(lambda: charon.state_reads, lambda n: n >= reads + 3, interval=0.01, what="three checks")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(charon.loaded) == 1 and charon.duplicate


class GarbledCharon(RecordingCharon):
    """charon answers list-sas with something the VICI library cannot decode (not a connection error)."""

    def __init__(self) -> None:
        super().__init__()
        self.garbled = False
        self.garbled_answers = 0

    async def states(self) -> list[TunnelState]:
        if self.garbled:
            self.garbled_answers += 1
            raise ValueError("unexpected VICI message")
        return await super().states()


async def test_an_unexpected_error_in_the_tunnel_check_does_not_end_the_loop() -> None:
    # The loop is the agent's main supervised task: if it died, the node would stop converging for good.
    kernel, charon = RecordingKernel(), GarbledCharon()
    rec = make(GATEWAY, kernel, charon, tunnel_check=0.05)
    task = asyncio.create_task(rec.run())
    rec.trigger("synced")
    await eventually(lambda: bool(kernel.applied), bool, interval=0.01, what="the first pass")
    charon.garbled = True
    await eventually(lambda: charon.garbled_answers, lambda n: n >= 2, interval=0.01, what="garbled tunnel checks")
    charon.garbled = False
    applied = len(kernel.applied)
    rec.trigger("gateway/gw-b")
    await eventually(lambda: len(kernel.applied), lambda n: n > applied, interval=0.01,
                     what="a pass after the garbled checks")
    alive = not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert alive
    assert len(kernel.applied) >= 2


class SlowKernel(RecordingKernel):
    """A kernel pass that takes a while (a link being re-created, thousands of routes)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.finished = 0

    async def reconcile(self, desired: NodeNetwork) -> ApplyReport:
        self.started.set()
        await asyncio.sleep(0.2)
        self.finished += 1
        return await super().reconcile(desired)


async def test_a_shutdown_in_the_middle_of_a_pass_lets_the_pass_finish() -> None:
    # Stopping half-way (a link deleted, not yet re-created) would drop traffic until the next agent starts.
    kernel = SlowKernel()
    rec = make(MEMBER, kernel, None)
    task = asyncio.create_task(rec.run())
    rec.trigger("synced")
    await asyncio.wait_for(kernel.started.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert kernel.finished == 1


async def test_charon_back_after_a_long_outage_is_reloaded_within_a_poll_not_after_the_grown_backoff() -> None:
    # Scenario (j): charon dies for a while, the retry backoff grows (0.2 s doubling, cap 30 s); when charon
    # returns, its connections must be loaded within a socket poll, not when the grown backoff expires.
    charon = RecordingCharon(up=False)
    rec = make(GATEWAY, RecordingKernel(), charon, charon_poll=0.05)
    rec._backoff.attempts = 10  # as after ~20 s of failed passes: the next retry would be 15-30 s away
    task = asyncio.create_task(rec.run())
    rec.trigger("synced")
    await eventually(lambda: getattr(charon, "availability_checks", 0), lambda n: n >= 2, interval=0.01,
                     what="charon's socket polled while it is down")
    assert charon.loaded == []
    charon.up = True
    t0 = asyncio.get_running_loop().time()
    await eventually(lambda: bool(charon.loaded), bool, interval=0.01, within=5.0, what="the load after return")
    took = asyncio.get_running_loop().time() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert took < 1.0, took
    assert rec._backoff.attempts <= 1  # reset on charon's return: pending tunnels are looked at soon
