"""Bounded PathReport writes: the pure write policy, and the writer + monitor against an in-memory store."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from raven.api.pathreport import PathReport, PathReportStatus, Target, parse_time
from raven.pathhealth.core import HealthParams
from raven.pathhealth.monitor import PathMonitor
from raven.pathhealth.report import ReportWriter, WritePolicy
from raven.pathhealth.targets import ProbeTarget

P = WritePolicy(min_interval=2.0, heartbeat=60.0)


def test_policy_first_write_now_then_rate_limited_then_heartbeat() -> None:
    assert P.next_write(100.0, None, dirty=False) == 100.0
    # Two state writes (the second: a straggler of the same event) may follow each other; the third waits until
    # min_interval after the first of the two.
    assert P.next_write(100.5, 100.0, dirty=True, dirty_writes=(100.0,)) == 100.5
    assert P.next_write(100.5, 100.2, dirty=True, dirty_writes=(100.0, 100.2)) == 102.0
    assert P.next_write(105.0, 100.2, dirty=True, dirty_writes=(100.0, 100.2)) == 105.0
    # An RTT-only write or a heartbeat just before does not hold a state change back.
    assert P.next_write(100.5, 100.4, dirty=True, dirty_writes=(90.0, 95.0)) == 100.5
    assert P.next_write(105.0, 100.0, dirty=True) == 105.0
    assert P.next_write(105.0, 100.0, dirty=False) == 160.0
    # An RTT move alone waits for rtt_interval (30 s) after the last write; it then restarts the heartbeat.
    assert P.next_write(105.0, 100.0, dirty=False, lazy=True) == 130.0
    assert P.next_write(105.0, 100.0, dirty=True, lazy=True) == 105.0


async def test_rtt_jitter_alone_is_written_at_most_once_per_rtt_interval() -> None:
    mon, store = _monitor(), MemoryStore()
    w = await _writer(mon, store, WritePolicy(min_interval=0.01, heartbeat=60.0, rtt_interval=0.3))
    mon.update_plan("gateway", "gw-a", (T1,))
    task = asyncio.ensure_future(w.run())
    try:
        for _ in range(3):
            mon._on_outcome(T1.key, 0.010, 0.0)
        await asyncio.sleep(0.05)
        first = len(store.writes)  # unknown, then up: written at once
        assert store.writes[-1].targets[0].state == "up"
        for i in range(30):  # the RTT swings by 10x and back, every 10 ms: all of it one lazy write
            mon._on_outcome(T1.key, 0.2 if i % 2 else 0.010, 0.0)
            await asyncio.sleep(0.01)
        assert len(store.writes) <= first + 1
        await asyncio.sleep(0.35)
        assert len(store.writes) == first + 1 and store.writes[-1].targets[0].state == "up"
    finally:
        task.cancel()


class MemoryStore:
    """An in-memory ReportStore for unit tests (the real one is exercised against the test API server)."""

    def __init__(self, existing: PathReport | None = None) -> None:
        self.report = existing
        self.writes: list[PathReportStatus] = []
        self.creates = 0

    async def read(self, name: str) -> PathReport | None:
        return self.report

    async def create(self, name: str) -> None:
        self.creates += 1
        self.report = PathReport(name, name)

    async def write_status(self, name: str, status: PathReportStatus) -> None:
        self.writes.append(status)


T1 = ProbeTarget("peer", "gw-b", "b-1", "241.0.0.1", "241.0.0.2")


def _monitor() -> PathMonitor:
    return PathMonitor("a-1", HealthParams(), interval=0.2, timeout=0.5)


async def _writer(mon: PathMonitor, store: MemoryStore, policy: WritePolicy) -> ReportWriter:
    w = ReportWriter("a-1", store, policy, mon.status)
    mon.writer = w
    mon.resume_from(await w.load())
    return w


async def test_state_changes_are_coalesced_into_rate_limited_writes() -> None:
    mon, store = _monitor(), MemoryStore()
    w = await _writer(mon, store, WritePolicy(min_interval=0.3, heartbeat=60.0))
    mon.update_plan("gateway", "gw-a", (T1,))
    assert store.creates == 1
    task = asyncio.ensure_future(w.run())
    try:
        await asyncio.sleep(0.05)
        assert len(store.writes) == 1  # the first write is immediate (target unknown)
        for _ in range(3):
            mon._on_outcome(T1.key, 0.001, 0.0)
        for _ in range(3):
            mon._on_outcome(T1.key, None, 0.0)  # up, then down: two changes inside one min_interval
        await asyncio.sleep(0.1)
        assert len(store.writes) == 1
        await asyncio.sleep(0.3)
        assert len(store.writes) == 2 and store.writes[-1].targets[0].state == "down"
        for _ in range(20):
            mon._on_outcome(T1.key, None, 0.0)  # nothing new: no write
        await asyncio.sleep(0.4)
        assert len(store.writes) == 2
    finally:
        task.cancel()


async def test_a_restarted_agent_resumes_from_its_report_without_a_state_change() -> None:
    before = PathReport("a-1", "a-1", PathReportStatus("gw-a", "gateway", parse_time("2026-12-01T12:00:00Z"), 0.2, (
        Target("peer", "gw-b", "b-1", "241.0.0.2", "up", parse_time("2026-12-01T11:00:00Z"), 0.0012, 0.0),)))
    mon, store = _monitor(), MemoryStore(before)
    mon.update_plan("gateway", "gw-a", (T1,))  # the plan may come before the report is read
    await _writer(mon, store, P)
    mon._on_outcome(T1.key, 0.0011, 0.0)
    status = mon.status(1e9)
    (t,) = status.targets
    assert (t.state, t.since) == ("up", parse_time("2026-12-01T11:00:00Z"))
    assert mon.state_changes == 0 and store.creates == 0


async def test_nothing_is_written_before_the_first_plan() -> None:
    # After a restart the report is read before the first plan: writing then would publish "no targets".
    before = PathReport("a-1", "a-1", PathReportStatus("gw-a", "gateway", parse_time("2026-12-01T12:00:00Z"), 0.2, (
        Target("peer", "gw-b", "b-1", "241.0.0.2", "up", parse_time("2026-12-01T11:00:00Z"), 0.0012, 0.0),)))
    mon, store = _monitor(), MemoryStore(before)
    w = ReportWriter("a-1", store, WritePolicy(min_interval=0.05, heartbeat=60.0), mon.status)
    task = asyncio.ensure_future(mon.run(w))
    try:
        await asyncio.sleep(0.2)
        assert store.writes == []
        mon.update_plan("gateway", "gw-a", (T1,))
        for _ in range(50):
            if store.writes:
                break
            await asyncio.sleep(0.01)
        (first,) = store.writes
        assert [(t.address, t.state, t.since) for t in first.targets] == [
            ("241.0.0.2", "up", parse_time("2026-12-01T11:00:00Z"))]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _member_writing(interval: float, probe_timeout: float, min_interval: float, targets: tuple[ProbeTarget, ...]
                          ) -> tuple[PathMonitor, MemoryStore, asyncio.Future[None]]:
    """A member a-2's monitor probing `targets` (each answered up_after times: up), its writer running."""
    mon, store = PathMonitor("a-2", HealthParams(), interval=interval, timeout=probe_timeout), MemoryStore()
    w = ReportWriter("a-2", store, WritePolicy(min_interval=min_interval, heartbeat=60.0), mon.status)
    mon.writer = w
    mon.resume_from(await w.load())
    mon.update_plan("member", "gw-a", targets)
    task = asyncio.ensure_future(w.run())
    for _ in range(3):
        for t in targets:
            mon._on_outcome(t.key, 0.001, 0.0)
    return mon, store, task


async def test_changes_one_probe_round_apart_land_in_one_write() -> None:
    """An uplink cut takes a standby's via and underlay targets down within a round of each other: the report
    must never say "via lost, underlay up" (a candidate that seems able to do better)."""
    via = ProbeTarget("via", "gw-b", "b-1", "240.0.0.12", "241.0.0.2")
    under = ProbeTarget("underlay", "gw-b", "b-1", "192.168.1.12", "198.18.2.11")
    mon, store, task = await _member_writing(0.05, 0.1, 0.3, (via, under))
    try:
        await asyncio.sleep(0.5)  # written: both up; and min_interval has passed since
        assert [t.state for t in store.writes[-1].targets] == ["up", "up"]
        n = len(store.writes)
        for _ in range(3):
            mon._on_outcome(via.key, None, 0.0)
        for _ in range(5):  # the writer runs meanwhile (with no hold it would write the via loss alone now)
            await asyncio.sleep(0)
        for _ in range(3):
            mon._on_outcome(under.key, None, 0.0)
        await asyncio.sleep(0.2)
        assert len(store.writes) == n + 1
        assert {t.kind: t.state for t in store.writes[-1].targets} == {"via": "down", "underlay": "down"}
    finally:
        task.cancel()


def test_a_path_that_moved_starts_afresh_and_a_new_path_is_not_down_while_it_is_set_up() -> None:
    """The peer gateway failed over (same inner address, another node), or a member's own gateway did (its via
    targets now go through another node): the old path's losses say nothing about the new one, which is unknown
    until it answers, and down only if it never does for the establish time."""
    mon = PathMonitor("a-2", HealthParams(establish_after=50), interval=0.2, timeout=0.5)
    gw = ProbeTarget("gateway", "gw-a", "a-1", "240.0.0.12", "240.0.0.11")
    via = ProbeTarget("via", "gw-b", "b-1", "240.0.0.12", "241.0.0.2")
    mon.update_plan("member", "gw-a", (gw, via))
    for _ in range(3):
        mon._on_outcome(via.key, None, 0.0)
    assert mon.health[via.key].state == "unknown"  # never answered: being set up
    for _ in range(3):
        mon._on_outcome(via.key, 0.001, 0.0)
    for _ in range(3):
        mon._on_outcome(via.key, None, 0.0)
    assert mon.health[via.key].state == "down"
    # Our gateway fails over to a-3: the via target's key stays, its history does not.
    mon.update_plan("member", "gw-a", (replace(gw, node="a-3", address="240.0.0.13"), via))
    assert mon.health[via.key].state == "unknown"
    for _ in range(3):
        mon._on_outcome(via.key, 0.001, 0.0)
    assert mon.health[via.key].state == "up"
    # The far end moves (gw-b fails over to b-2): afresh again; a plan that changes nothing keeps the history.
    mon.update_plan("member", "gw-a", (replace(gw, node="a-3", address="240.0.0.13"), replace(via, node="b-2")))
    assert mon.health[via.key].state == "unknown"
    for _ in range(3):
        mon._on_outcome(via.key, 0.001, 0.0)
    mon.update_plan("member", "gw-a", (replace(gw, node="a-3", address="240.0.0.13"), replace(via, node="b-2")))
    assert mon.health[via.key].state == "up"


def test_an_underlay_target_that_never_answered_is_down_after_the_establish_window_without_an_rtt() -> None:
    """A standby that was just failed over for an uplink cut starts its underlay targets with the uplink already
    cut: they never answer. They are `unknown` while young (the establish window), then `down` with no RTT ("never
    answered": the controller decides whether that is evidence, as the address may drop ICMP); a target that
    answered and then stops is `down` after `down_after` losses and keeps its RTT ("was up, now down")."""
    mon = PathMonitor("a-2", HealthParams(establish_after=5), interval=0.2, timeout=0.5)
    silent = ProbeTarget("underlay", "gw-b", "b-1", "192.168.1.12", "198.18.2.11")
    cut = ProbeTarget("underlay", "gw-c", "c-1", "192.168.1.12", "198.18.3.11")
    mon.update_plan("member", "gw-a", (silent, cut))
    for _ in range(3):
        mon._on_outcome(cut.key, 0.001, 0.0)
    for _ in range(4):  # young: the first establish_after - 1 losses are no verdict
        mon._on_outcome(silent.key, None, 0.0)
    assert mon.health[silent.key].state == "unknown"
    mon._on_outcome(silent.key, None, 0.0)
    for _ in range(3):
        mon._on_outcome(cut.key, None, 0.0)
    assert (mon.health[silent.key].state, mon.health[cut.key].state) == ("down", "down")
    by_address = {t.address: t for t in mon.status(0.0).targets}
    assert by_address[silent.address].rtt_seconds is None  # never answered
    assert by_address[cut.address].rtt_seconds == 0.001  # was up, now down
    # The uplink returns: up after up_after replies, as any target.
    for _ in range(3):
        mon._on_outcome(silent.key, 0.002, 0.0)
    assert mon.health[silent.key].state == "up"


async def _first_writes_after(mon: PathMonitor, store: MemoryStore, keys: list[tuple[str, str]], apart: float,
                              within: float) -> list[tuple[float, list[str]]]:
    """Take each of `keys` down (3 losses) `apart` seconds after the previous one; the writes seen within `within`
    seconds after the first change: (seconds after it, the states written)."""
    n = len(store.writes)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    seen: list[tuple[float, list[str]]] = []

    async def inject() -> None:
        for i, key in enumerate(keys):
            if i:
                await asyncio.sleep(apart)
            for _ in range(3):
                mon._on_outcome(key, None, 0.0)

    injecting = asyncio.ensure_future(inject())
    while loop.time() < t0 + within:
        while len(store.writes) > n + len(seen):
            seen.append((loop.time() - t0, [t.state for t in store.writes[n + len(seen)].targets]))
        await asyncio.sleep(0.005)
    await injecting
    return seen


async def test_one_events_verdicts_a_few_ticks_apart_are_written_together_or_at_once() -> None:
    """Scenario (b) of issue 11 at a 10 ms probe: a member's two via targets through the dead gateway went down
    23-67 ms apart (loaded host); the first write held only the first loss, and the second one waited out the 2 s
    rate limit, which is as long as the controller saw "the member still reaches gw-cloud through it" and could
    not decide (2 s of extra outage in two runs of five). Verdicts up to 0.1 s apart now land in one write, and a
    straggler beyond that is written at once (the rate limit allows two state writes back to back)."""
    via1 = ProbeTarget("via", "gw-b", "b-1", "240.0.0.12", "241.0.0.2")
    via2 = ProbeTarget("via", "gw-c", "c-1", "240.0.0.12", "241.0.0.3")
    mon, store, task = await _member_writing(0.01, 0.5, 2.0, (via1, via2))
    try:
        await asyncio.sleep(2.3)  # written (both up), and the rate limit has passed since
        assert [t.state for t in store.writes[-1].targets] == ["up", "up"]
        seen = await _first_writes_after(mon, store, [via1.key, via2.key], apart=0.05, within=0.6)
        assert [states for _t, states in seen] == [["down", "down"]], seen
        for t in (via1, via2):  # both answer again (up), then quiet for the rate limit
            for _ in range(3):
                mon._on_outcome(t.key, 0.001, 0.0)
        await asyncio.sleep(2.3)
        seen = await _first_writes_after(mon, store, [via1.key, via2.key], apart=0.25, within=0.8)
        assert [states for _t, states in seen] == [["down", "up"], ["down", "down"]], seen
        assert seen[1][0] < 0.6  # not after the 2 s rate limit
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
