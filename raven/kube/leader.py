"""Leader election on a `coordination.k8s.io/v1` Lease (client-go's algorithm, written small).

Why not kubernetes_asyncio's elector: it returns after losing the lease, never releases the lease on
shutdown and swallows exceptions of the leading callback (ENVIRONMENT.md). This one:

- competes every `retry_period` (with a little jitter); a Lease held by someone else counts as expired
  when its record has not changed for `leaseDurationSeconds` of *our* clock (the holder's timestamps
  are not trusted: clocks differ), so a standby takes over within one lease duration of the leader's
  death;
- runs the `lead()` coroutine while leading and cancels it the moment leadership is lost (renewal
  failing for `renew_deadline`, or another holder seen in the Lease), then competes again;
- `is_leader` turns false by itself once `renew_deadline` passes without a successful renewal, so a
  leader whose renew loop is stuck stops writing before anyone else may take over;
- on cancellation (SIGTERM) it stops `lead()` first, then releases the Lease (empty holder,
  leaseDurationSeconds 1, like client-go's ReleaseOnCancel) so a standby takes over at its next try;
- if `lead()` raises, the lease is released and the exception propagates (the supervisor reports it).
Writes to the Lease are PUTs carrying the resourceVersion, so two candidates can never both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from raven.kube.client import JSON, LEASES, ApiError, KubeClient
from raven.log import kv

log = logging.getLogger(__name__)


def micro_time(ts: datetime | None = None) -> str:
    """A metav1.MicroTime: RFC 3339 with microseconds."""
    return (ts or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_change = on_change
        self._clock = clock
        self._leader = False
        self._last_renew = -math.inf
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = -math.inf
        self._other_holder = ""
        self._rng = random.Random()

    @property
    def is_leader(self) -> bool:
        """Safe to write: leading, and the last renewal is recent enough that nobody else can lead."""
        return self._leader and self._clock() < self._last_renew + self.renew_deadline

    def _set_leader(self, value: bool) -> None:
        if value == self._leader:
            return
        self._leader = value
        log.info("leadership changed", extra=kv(lease=f"{self.namespace}/{self.name}", identity=self.identity,
                                                leader=value))
        if self._on_change is not None:
            self._on_change(value)

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Compete forever; run `lead()` whenever leading. Ends only by cancellation (or lead() raising)."""
        try:
            while True:
                await self._acquire()
                lead_task = asyncio.create_task(lead(), name=f"lead-{self.name}")
                try:
                    await self._renew_until_lost(lead_task)
                finally:
                    # Stop writing first, then anything else (release, compete again).
                    self._set_leader(False)
                    if not lead_task.done():
                        lead_task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await lead_task
                if lead_task.done() and not lead_task.cancelled():
                    exc = lead_task.exception()
                    if exc is not None:
                        raise exc
                    log.error("lead() returned while leading; competing again", extra=kv(lease=self.name))
                    await self._release()
        finally:
            self._set_leader(False)
            await self._release()

    async def _acquire(self) -> None:
        while True:
            try:
                ok = await asyncio.wait_for(self._try_acquire_or_renew(), timeout=self.renew_deadline)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ok = False
                log.warning("lease acquire attempt failed",
                            extra=kv(lease=self.name, error=f"{type(exc).__name__}: {exc}"))
            if ok:
                self._last_renew = self._clock()
                self._set_leader(True)
                return
            await asyncio.sleep(self.retry_period * (1 + 0.2 * self._rng.random()))

    async def _renew_until_lost(self, lead_task: asyncio.Task[None]) -> None:
        while True:
            await asyncio.wait({lead_task}, timeout=self.retry_period)
            if lead_task.done():
                return
            deadline = self._last_renew + self.renew_deadline
            remaining = deadline - self._clock()
            try:
                ok = await asyncio.wait_for(self._try_acquire_or_renew(), timeout=max(remaining, 0.01))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ok = False
                log.warning("lease renew failed", extra=kv(lease=self.name, error=f"{type(exc).__name__}: {exc}"))
            if ok:
                self._last_renew = self._clock()
                continue
            if self._other_holder:
                log.warning("lease taken by another holder", extra=kv(lease=self.name, holder=self._other_holder))
                return
            if self._clock() >= deadline:
                log.warning("lease not renewed within the renew deadline", extra=kv(lease=self.name,
                                                                                   renew_deadline_s=self.renew_deadline))
                return

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time()
        try:
            lease = await self.client.get(LEASES, self.name, self.namespace)
        except ApiError as exc:
            if not exc.not_found:
                raise
            body: JSON = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec({}, now, new_holder=True),
            }
            try:
                created = await self.client.create(LEASES, body, self.namespace)
            except ApiError as exc2:
                if exc2.status == 409:
                    return False  # someone created it first
                raise
            self._observe_own(created)
            return True

        spec = lease.get("spec") if isinstance(lease.get("spec"), dict) else {}
        assert isinstance(spec, dict)
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        duration = spec.get("leaseDurationSeconds")
        duration_s = float(duration) if isinstance(duration, int | float) and duration > 0 else self.lease_duration
        if holder and holder != self.identity and self._clock() < self._observed_at + duration_s:
            self._other_holder = holder
            return False
        lease["spec"] = self._spec(spec, now, new_holder=holder != self.identity)
        try:
            updated = await self.client.replace(LEASES, self.name, lease, self.namespace)
        except ApiError as exc:
            if exc.conflict:
                return False  # changed under us: look again next round
            raise
        self._observe_own(updated)
        return True

    def _observe_own(self, lease: JSON) -> None:
        spec = lease.get("spec") or {}
        self._observed = (self.identity, spec.get("renewTime"), spec.get("leaseDurationSeconds"),
                          spec.get("leaseTransitions"))
        self._observed_at = self._clock()
        self._other_holder = ""

    def _spec(self, old: JSON, now: str, new_holder: bool) -> JSON:
        spec = dict(old)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, math.ceil(self.lease_duration))
        spec["renewTime"] = now
        if new_holder:
            spec["acquireTime"] = now
            transitions = old.get("leaseTransitions")
            if old.get("holderIdentity"):
                spec["leaseTransitions"] = (transitions if isinstance(transitions, int) else 0) + 1
            else:
                spec.setdefault("leaseTransitions", transitions if isinstance(transitions, int) else 0)
        return spec

    async def _release(self) -> None:
        """Give the Lease up if we hold it: empty holder, 1 s duration, so a standby takes it at once."""
        if self._observed is None or self._observed[0] != self.identity:
            return
        try:
            await asyncio.wait_for(self._do_release(), timeout=max(self.retry_period, 2.0))
        except Exception as exc:
            log.warning("lease release failed; standbys take over when it expires",
                        extra=kv(lease=self.name, error=f"{type(exc).__name__}: {exc}"))

    async def _do_release(self) -> None:
        for _ in range(3):
            lease = await self.client.get(LEASES, self.name, self.namespace)
            spec = lease.get("spec") if isinstance(lease.get("spec"), dict) else None
            if spec is None or spec.get("holderIdentity") != self.identity:
                return
            spec.pop("holderIdentity", None)
            spec["leaseDurationSeconds"] = 1
            spec["renewTime"] = micro_time()
            try:
                await self.client.replace(LEASES, self.name, lease, self.namespace)
            except ApiError as exc:
                if exc.conflict:
                    continue
                raise
            self._observed = None
            log.info("lease released", extra=kv(lease=f"{self.namespace}/{self.name}", identity=self.identity))
            return

