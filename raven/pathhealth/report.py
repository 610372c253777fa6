"""Publishing a node's PathReport with bounded writes.

The write policy (`WritePolicy`, pure): write when something significant changed (a target's state, its RTT
estimate beyond the threshold, the target set, the node's role or gateway), but at most `burst` such writes within
`min_interval` seconds (changes beyond that are coalesced into the next write), and at least every `heartbeat`
seconds even when nothing changed, so a reader can tell a live report from a stale one. The burst (2) is for the
stragglers of one event: the verdicts one failure causes land a few probe ticks apart on a loaded host (23-67 ms
in the e2e lab at a 10 ms interval), and a report holding only the first of them ("via to gw-cloud lost, via to
gw-edge-pub still up") is what a reader acts on for the whole rate-limit interval (it cost scenario b 2 s in two
runs of five). RTT-only writes and heartbeats do not count against it: they have their own intervals.

The writer (`ReportWriter`) owns the API side: it reads the node's existing report once at start (the agent's
memory across restarts: targets resume from their reported state, so a restart is not a state change), creates
the object if it is missing, then writes only `/status` merge patches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from raven.api.pathreport import (
    PathReport,
    PathReportStatus,
    new_report_body,
    status_patch,
)
from raven.kube.client import PATHREPORTS, ApiError
from raven.kube.typed import TypedClient
from raven.log import kv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WritePolicy:
    min_interval: float = 2.0
    heartbeat: float = 60.0
    # An RTT-only change (no state, target or role change) waits until this long after the last write: it is
    # news for routing by cost, not for failover. Any write restarts the heartbeat, so a steady node writes at
    # most once per min(rtt_interval, heartbeat), whatever the jitter.
    rtt_interval: float = 30.0
    # Writes of changes readers act on allowed within any `min_interval` (see the module doc).
    burst: int = 2

    def __post_init__(self) -> None:
        if self.burst < 1:
            raise ValueError("burst must be >= 1")

    def next_write(self, now: float, last_write: float | None, dirty: bool, lazy: bool = False,
                   dirty_writes: Sequence[float] = ()) -> float:
        """When the next write is due (may be <= now: due now). `dirty`: a change readers act on (state, targets,
        role); `lazy`: only an RTT estimate moved; `dirty_writes`: when the last writes (attempts) of such changes
        were, oldest first (only the last `burst` matter)."""
        if last_write is None:
            return now
        if dirty:
            recent = list(dirty_writes)[-self.burst:]
            return now if len(recent) < self.burst else max(now, recent[0] + self.min_interval)
        if lazy:
            return last_write + min(self.rtt_interval, self.heartbeat)
        return last_write + self.heartbeat


class ReportStore(Protocol):
    """The API calls of the writer (KubeReportStore; tests may use the test API server through it)."""

    async def read(self, name: str) -> PathReport | None: ...

    async def create(self, name: str) -> None: ...

    async def write_status(self, name: str, status: PathReportStatus) -> None: ...


class KubeReportStore:
    def __init__(self, client: TypedClient) -> None:
        self.client = client

    async def read(self, name: str) -> PathReport | None:
        try:
            return await self.client.get(PATHREPORTS, name, PathReport.from_dict)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def create(self, name: str) -> None:
        try:
            await self.client.create(PATHREPORTS, new_report_body(name))
        except ApiError as exc:
            if not exc.already_exists:
                raise

    async def write_status(self, name: str, status: PathReportStatus) -> None:
        await self.client.merge_patch(PATHREPORTS, name, status_patch(status), subresource="status")


class ReportWriter:
    """Writes `snapshot()` when the policy says so; `mark_dirty()` after a significant change."""

    def __init__(self, node_name: str, store: ReportStore, policy: WritePolicy,
                 snapshot: Callable[[float], PathReportStatus], on_write: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.node_name = node_name
        self.store = store
        self.policy = policy
        self.snapshot = snapshot  # called with the wall clock: the status to write now
        self.on_write = on_write  # called with "ok" or "error" after each attempt
        self.clock = clock
        self.wall = wall
        self.writes = 0
        self.last_written: PathReportStatus | None = None
        self._last_write: float | None = None
        self._dirty = asyncio.Event()
        self._lazy = False
        self._wake = asyncio.Event()
        self._exists = False
        self._hold_until = 0.0
        self._dirty_writes: deque[float] = deque(maxlen=policy.burst)  # attempts of dirty writes (clock)

    def mark_dirty(self, coalesce: float = 0.0) -> None:
        """Something readers act on changed: write within min_interval, and not before `coalesce` seconds from
        the first change of the batch (so changes that one event causes together land in one write)."""
        if not self._dirty.is_set():
            self._hold_until = self.clock() + coalesce
        self._dirty.set()
        self._wake.set()

    def mark_lazy(self) -> None:
        """Only an RTT estimate moved: write by the policy's rtt_interval."""
        if not self._lazy:
            self._lazy = True
            self._wake.set()  # the loop recomputes when the next write is due

    async def load(self) -> PathReport | None:
        """The node's report as the API holds it (None when there is none); creates the object if missing."""
        report = await self.store.read(self.node_name)
        if report is None:
            await self.store.create(self.node_name)
        elif not report.well_formed:
            log.warning("own path report is ill-formed; overwriting its status",
                        extra=kv(name=report.name, spec_node=report.node_name))
        self._exists = True
        return report

    async def write_now(self) -> None:
        status = self.snapshot(self.wall())
        if self._dirty.is_set():
            self._dirty_writes.append(self.clock())  # an attempt counts: a failing API is not hammered either
        self._dirty.clear()
        self._lazy = False
        try:
            if not self._exists:
                await self.store.create(self.node_name)
                self._exists = True
            try:
                await self.store.write_status(self.node_name, status)
            except ApiError as exc:
                if not exc.not_found:
                    raise
                await self.store.create(self.node_name)  # deleted under us: create again, then write
                await self.store.write_status(self.node_name, status)
        except Exception as exc:
            self._dirty.set()  # retried after min_interval
            self._wake.set()
            self._last_write = self.clock()
            if self.on_write is not None:
                self.on_write("error")
            log.warning("path report write failed", extra=kv(name=self.node_name, error=f"{type(exc).__name__}: {exc}"))
            return
        self._last_write = self.clock()
        self.last_written = status
        self.writes += 1
        if self.on_write is not None:
            self.on_write("ok")

    async def run(self) -> None:
        while True:
            now = self.clock()
            due = self.policy.next_write(now, self._last_write, self._dirty.is_set(), self._lazy, self._dirty_writes)
            if self._dirty.is_set():
                due = max(due, self._hold_until)
            if due > now:
                if self._dirty.is_set():
                    await asyncio.sleep(due - now)  # rate limit: coalesce what changes meanwhile
                else:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=due - now)
                    except TimeoutError:
                        pass
                continue
            await self.write_now()
