"""The agent side of path health: plan -> targets -> pinger -> decision core -> log, metrics, PathReport.

`PathMonitor.update_plan(result)` after every plan sets what is probed (targets keep their history across plans
by key). Each probe outcome goes through `core.observe`; a state change is logged (one line, with the evidence)
and, like an RTT move beyond the threshold, marks the report dirty for the rate-limited writer. Probe results
never touch readiness: a path that is down is data, not a reason to restart the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from raven.api.pathreport import (
    ROLE_NONE,
    PathReport,
    PathReportStatus,
    Role,
    Target,
    format_time,
    from_epoch,
    to_epoch,
)
from raven.log import kv
from raven.pathhealth.core import HealthParams, TargetHealth, as_state, initial, observe, significant
from raven.pathhealth.metrics import ProbeMetrics
from raven.pathhealth.pinger import Pinger
from raven.pathhealth.report import ReportWriter
from raven.pathhealth.targets import ProbeTarget

log = logging.getLogger(__name__)

Key = tuple[str, str]
# Probe rounds a state change waits for before it is written (see `_on_outcome`), and at least this long: at a
# fast interval (10 ms) one event's verdicts land several ticks apart on a loaded host (23-67 ms seen in the e2e lab).
COALESCE_ROUNDS = 1.5
COALESCE_MIN_S = 0.1


class PathMonitor:
    def __init__(self, node_name: str, params: HealthParams, interval: float, timeout: float,
                 *, metrics: ProbeMetrics | None = None) -> None:
        self.node_name = node_name
        self.params = params
        self.interval = interval
        self.metrics = metrics
        self.pinger: Pinger[Key] = Pinger(interval, timeout, self._on_outcome)
        self.targets: dict[Key, ProbeTarget] = {}
        self.health: dict[Key, TargetHealth] = {}
        self.role: Role = ROLE_NONE
        self.gateway = ""
        self.writer: ReportWriter | None = None
        self._seed: dict[Key, Target] = {}
        self._loaded = False
        self._planned = asyncio.Event()  # set by the first plan: nothing is written before the targets are known
        self.state_changes = 0
        self._local_gateway = ""  # a member: its gateway's node (its via targets go through it)
        # Called after a target's state changed (the agent re-runs its reconcile: a path change may wait for it).
        self.on_change: Callable[[ProbeTarget, str], None] | None = None
        # Targets probed but not published (NAT traversal's punch attempts: not a tunnel until verified, so their
        # losses are no evidence for the controller and no PathReport write); True: keep it out of the report.
        self.quiet: Callable[[ProbeTarget], bool] | None = None

    def state_of(self, kind: str, address: str) -> str | None:
        """The state of the target (kind, address), None when it is not probed."""
        h = self.health.get((kind, address))
        return h.state if h is not None else None

    # --- inputs ---

    def update_plan(self, role: Role, gateway: str | None, probes: tuple[ProbeTarget, ...]) -> None:
        now = time.time()
        wanted = {t.key: t for t in probes}
        changed = (role, gateway or "") != (self.role, self.gateway) or self._reported(wanted) != self._reported(
            self.targets)
        self.role, self.gateway = role, gateway or ""
        for key in list(self.health):
            if key not in wanted:
                del self.health[key]
                if self.metrics is not None:
                    self.metrics.forget(self.targets[key])
        local = next((t.node for t in probes if t.kind == "gateway"), "")
        for key, t in wanted.items():
            old = self.targets.get(key)
            moved = old is not None and (old.node != t.node or (t.kind == "via" and local != self._local_gateway))
            if key not in self.health or moved:
                # A new path: a new target, or the same address now at another node (the peer failed over) or
                # reached through another gateway (ours did): its history is the old path's, not this one's.
                self.health[key] = self._resume(key, now, t.node) if not moved else initial(now)
        self._local_gateway = local
        self.targets = wanted
        self._planned.set()
        if self._loaded:
            self.pinger.set_targets({k: (t.source, t.address) for k, t in wanted.items()})
        if changed and self.writer is not None:
            self.writer.mark_dirty()

    def _resume(self, key: Key, now: float, node: str) -> TargetHealth:
        """A target's starting health: what the report says of it (the agent restarted), else unknown."""
        seed = self._seed.pop(key, None)
        if seed is None or seed.state == "unknown" or seed.node != node:  # a moved path starts afresh
            return initial(now)
        since = to_epoch(seed.since) if seed.since is not None else None
        # Only the verdict and its time carry over; counters and the window start afresh.
        return TargetHealth(state=as_state(seed.state), since=since if since is not None else now,
                            rtt=seed.rtt_seconds)

    def resume_from(self, report: PathReport | None) -> None:
        """Seed targets from the node's last report (before probing starts)."""
        if report is not None and report.well_formed:
            self._seed = {t.key: t for t in report.status.targets}
            for key in list(self.health):
                if key in self._seed and self.health[key].sent == 0:
                    self.health[key] = self._resume(key, time.time(), self.targets[key].node)
            if self.writer is not None:
                self.writer.last_written = report.status
        self._loaded = True
        self.pinger.set_targets({k: (t.source, t.address) for k, t in self.targets.items()})

    # --- outcomes ---

    def _on_outcome(self, key: Key, rtt: float | None, _mono: float) -> None:
        old = self.health.get(key)
        target = self.targets.get(key)
        if old is None or target is None:
            return
        now = time.time()
        # Every kind, underlay included, follows the same rules: a target that never answered is `down` after the
        # establish window (its report has no RTT: "never answered"); one that answered and stops is `down` after
        # `down_after` losses and keeps its last RTT estimate ("was up, now down"). Whether a never-answered
        # underlay target is evidence (the address may drop ICMP) is the controller's call: raven/controller/health.py.
        h = observe(old, rtt, now, self.params)
        self.health[key] = h
        if self.metrics is not None:
            self.metrics.record(target, h, rtt is not None)
        if h.state != old.state:
            self.state_changes += 1
            if self.metrics is not None:
                self.metrics.state_changes.labels(target.kind, h.state).inc()
            log.info("path state changed", extra=kv(
                kind=target.kind, gateway=target.gateway, node=target.node, address=target.address,
                source=target.source, **{"from": old.state}, to=h.state,
                consecutive_losses=h.consecutive_losses, loss=round(h.loss_ratio, 3),
                rtt_ms=round(h.rtt * 1000, 2) if h.rtt is not None else None,
                previous_since=format_time(from_epoch(old.since))))
            if self.on_change is not None:
                self.on_change(target, h.state)
        if self.writer is not None and not self._is_quiet(target):
            worth = self._worth_writing(key, h)
            if worth == "now":
                # A state change waits for the next probe round: one event (an uplink cut) changes several targets
                # within a round of each other (a standby's via and underlay targets), and a reader must not see a
                # report that holds only the first of them ("via lost, underlay still up": a candidate that
                # seems able to do better when it is cut off just the same).
                hold = max(COALESCE_ROUNDS * self.interval, COALESCE_MIN_S)
                self.writer.mark_dirty(coalesce=hold if h.state != old.state else 0.0)
            elif worth == "lazy":
                self.writer.mark_lazy()

    def _is_quiet(self, target: ProbeTarget) -> bool:
        return self.quiet is not None and self.quiet(target)

    def _reported(self, targets: Mapping[Key, ProbeTarget]) -> dict[Key, ProbeTarget]:
        return {k: t for k, t in targets.items() if not self._is_quiet(t)}

    def _worth_writing(self, key: Key, h: TargetHealth) -> str | None:
        """"now" for a state readers act on, "lazy" for an RTT move alone, None for nothing new."""
        last = self.writer.last_written if self.writer is not None else None
        reported = next((t for t in last.targets if t.key == key), None) if last is not None else None
        if reported is None:
            return "now" if h.state != "unknown" or last is None else None
        if reported.state != h.state:
            return "now"
        return "lazy" if significant(reported.state, reported.rtt_seconds, h, self.params) else None

    # --- the report ---

    def status(self, wall_now: float) -> PathReportStatus:
        targets = []
        for key, t in sorted(self.targets.items()):
            if self._is_quiet(t):
                continue
            h = self.health.get(key) or initial(wall_now)
            targets.append(Target(kind=t.kind, gateway=t.gateway, node=t.node, address=t.address,
                                  state=h.state, since=from_epoch(h.since),
                                  rtt_seconds=round(h.rtt, 6) if h.rtt is not None else None,
                                  loss_ratio=round(h.loss_ratio, 3)))
        return PathReportStatus(gateway=self.gateway, role=self.role, heartbeat_time=from_epoch(wall_now),
                                probe_interval_seconds=self.interval, targets=tuple(targets))

    async def run(self, writer: ReportWriter) -> None:
        """Load the last report (resume), then probe and publish until cancelled."""
        self.writer = writer
        delay = 1.0
        while True:
            try:
                self.resume_from(await writer.load())
                break
            except Exception as exc:  # the API may be away: resume from the report first, then probe
                log.warning("path report not readable yet", extra=kv(error=f"{type(exc).__name__}: {exc}",
                                                                     retry_in_s=delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        # A write before the first plan would publish "no targets" (after a restart: every target gone, then
        # back): wait for the plan, so the first write carries the resumed targets.
        await self._planned.wait()
        writer.mark_dirty()
        pinger = asyncio.ensure_future(self.pinger.run())
        try:
            await writer.run()
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

