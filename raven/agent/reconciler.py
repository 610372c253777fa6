"""The agent's one reconcile loop: events and a periodic resync trigger plan -> diff -> apply.

Why it is shaped this way:
- Events are debounced: a burst (a failover touches a Gateway and several Nodes) becomes one pass.
- Nothing is planned before every informer has synced: planning from a half-filled cache would look
  like "the cluster is empty" and tear down working tunnels.
- The kernel and the VPN are applied independently: a dead charon must not stop route changes, and a
  kernel error must not stop IPsec from converging. A failed pass is retried with backoff.
- Shutdown lets a pass in flight finish, then leaves the data plane as it is, so an agent restart drops
  no packet; only `--cleanup` removes Raven's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from raven.agent.plan import PlanResult
from raven.agent.staging import Stager
from raven.dataplane.ipsec import TunnelState, duplicates_to_end
from raven.dataplane.metrics import DataplaneMetrics
from raven.dataplane.report import ApplyReport
from raven.dataplane.state import IPsecConnection, NodeNetwork
from raven.dataplane.tunnel import DriverUnavailable
from raven.health import CheckResult
from raven.kube.backoff import Backoff
from raven.log import kv

log = logging.getLogger(__name__)


class KernelDriver(Protocol):
    """Makes the kernel match the desired state (`raven.dataplane.kernel.KernelApplier`)."""

    async def reconcile(self, desired: NodeNetwork) -> ApplyReport: ...


class VpnDriver(Protocol):
    """Makes the VPN daemon match the desired tunnels (`raven.dataplane.tunnel`: `raven.dataplane.ipsec.IPsecDriver`,
    `raven.dataplane.wireguard.WireGuardDriver`)."""

    # What /readyz names when the driver's daemon is down: "charon" (IPsec), "wireguard" (WireGuard).
    daemon: str

    # How many times the driver (re)connected to the daemon: a change means charon (wireguard-go) restarted.
    @property
    def connects(self) -> int: ...

    async def reconcile(self, conns: Iterable[IPsecConnection]) -> ApplyReport: ...

    async def states(self) -> list[TunnelState]: ...

    async def available(self) -> bool: ...


@dataclass
class ReconcileOutcome:
    plan: PlanResult
    kernel: ApplyReport | None = None
    vpn: ApplyReport | None = None
    errors: list[str] = field(default_factory=list)
    # Tunnels this node initiates that charon does not report ESTABLISHED yet (checked again soon).
    tunnels_pending: int = 0

    @property
    def writes(self) -> int:
        return sum(r.total_writes for r in (self.kernel, self.vpn) if r is not None)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "raven_agent_reconcile_duration_seconds",
            "Time of one plan -> diff -> apply pass.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.reconciles = Counter(
            "raven_agent_reconciles_total", "Reconcile passes by result.", ["result"], registry=registry
        )
        self.errors = Counter(
            "raven_agent_errors_total", "Reconcile errors by stage (kernel, vpn, plan).", ["stage"], registry=registry
        )
        self.remote_subnets = Gauge(
            "raven_agent_remote_subnets", "Remote pod subnets this node routes into Raven.", registry=registry
        )
        self.role = Gauge(
            "raven_agent_role", "1 for this node's current role (none, member, gateway).", ["role"], registry=registry
        )
        self.problems = Gauge(
            "raven_agent_plan_problems", "Malformed cluster inputs skipped by the last plan.", registry=registry
        )
        self.last_success = Gauge(
            "raven_agent_last_success_timestamp_seconds", "When the last reconcile succeeded.", registry=registry
        )


class Reconciler:
    """Owns the loop; `trigger()` is what informer handlers call."""

    def __init__(
        self,
        plan_fn: Callable[[], Awaitable[PlanResult]],
        synced: Callable[[], bool],
        kernel: KernelDriver,
        vpn: VpnDriver | None,
        metrics: AgentMetrics,
        dataplane_metrics: DataplaneMetrics,
        resync_period: float,
        debounce: float = 0.05,
        tunnel_check_period: float = 2.0,
        charon_poll_period: float = 0.2,
        stager: Stager | None = None,
    ) -> None:
        self._plan_fn = plan_fn
        # Make-before-break (raven.agent.staging): what of each plan is safe to apply now.
        self._stager = stager
        self._dp_metrics = dataplane_metrics
        self._vpn_error: str | None = None
        self._synced = synced
        self._kernel = kernel
        self._vpn = vpn
        self._metrics = metrics
        self._resync = resync_period
        self._debounce = debounce
        self._tunnel_check_period = tunnel_check_period
        # While charon is unreachable and tunnels are wanted: how often to look for its return (a connect on the
        # VICI socket), so a restarted charon gets its connections within a poll, not after the grown backoff.
        self._charon_poll_period = charon_poll_period
        self._charon_down = False
        self._wake = asyncio.Event()
        self._reasons: set[str] = set()
        self._backoff = Backoff(base=0.2, cap=min(30.0, resync_period))
        self._last_plan: PlanResult | None = None
        self.first_success = asyncio.Event()
        self.last_outcome: ReconcileOutcome | None = None
        # Called with the plan's tunnels and charon's (or WireGuard's) states each time they are read (NAT
        # traversal's rendezvous: raven.nattraversal.observer).
        self.on_states: Callable[[Iterable[IPsecConnection], list[TunnelState]], object] | None = None

    def trigger(self, reason: str) -> None:
        self._reasons.add(reason)
        self._wake.set()

    def ready(self) -> CheckResult:
        if not self._synced():
            return CheckResult(False, "informers have not synced yet")
        if not self.first_success.is_set():
            return CheckResult(False, "first reconcile has not succeeded yet")
        outcome = self.last_outcome
        if outcome is not None and outcome.plan.role == "gateway" and self._vpn_error is not None:
            return CheckResult(False, f"{self._vpn.daemon if self._vpn is not None else 'vpn'}: {self._vpn_error}")
        return CheckResult(True)

    async def run(self) -> None:
        retry_at: float | None = None
        last_pass = time.monotonic()
        while True:
            due = last_pass + self._resync if retry_at is None else retry_at
            check = self._charon_poll_period if self._charon_down else self._tunnel_check_period
            wake_at = min(due, time.monotonic() + check) if self._vpn is not None else due
            staged_at = self._stager.wake_at if self._stager is not None else None
            if staged_at is not None:  # a held path change to look at again, or a grace period ending
                wake_at = min(wake_at, staged_at)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, wake_at - time.monotonic()))
            except TimeoutError:
                if time.monotonic() >= due:
                    self._reasons.add("retry" if retry_at is not None else "resync")
                elif staged_at is not None and time.monotonic() >= staged_at:
                    self._reasons.add("path-staging")
                elif self._charon_down and self._vpn is not None:
                    if not await self._vpn.available():
                        continue
                    log.info("charon is back", extra=kv(socket_poll_s=self._charon_poll_period))
                    self._backoff.reset()  # its tunnels come up now: look at them soon, not at the old backoff
                    self._reasons.add("charon-available")
                else:
                    reason = await self._tunnel_check()
                    if reason is None:
                        continue
                    self._reasons.add(reason)
            if self.last_outcome is not None or not self._synced():
                await asyncio.sleep(self._debounce)  # let the rest of a burst arrive
            # else the first pass, informers synced: the lists are all in the caches, no burst to wait for
            # (the debounce would be 50 ms of every agent's exec -> ready).
            self._wake.clear()
            reasons, self._reasons = self._reasons, set()
            if not self._synced():
                retry_at = None
                continue
            pass_task = asyncio.ensure_future(self.reconcile_once(",".join(sorted(reasons))))
            try:
                outcome = await asyncio.shield(pass_task)
            except asyncio.CancelledError:
                # Shutting down mid-pass: finish it first (a link deleted and not yet re-created would drop
                # traffic until the next agent starts). The supervisor's shutdown grace bounds the wait.
                await asyncio.wait({pass_task})
                raise
            last_pass = time.monotonic()
            if outcome.errors:
                delay = self._backoff.next()
                retry_at = time.monotonic() + delay
                log.warning(
                    "reconcile incomplete, retrying",
                    extra=kv(retry_in_s=round(delay, 2), errors="; ".join(outcome.errors)),
                )
            elif outcome.tunnels_pending:
                # An IKE_SA we initiate is not up (e.g. the peer had not loaded its side yet and charon
                # gave up): look again soon (backoff), the driver re-initiates, instead of at the resync.
                retry_at = time.monotonic() + self._backoff.next()
            else:
                self._backoff.reset()
                retry_at = None

    async def _tunnel_check(self) -> str | None:
        """Between passes, a cheap look at charon (nodes with tunnels only). A restarted charon (the driver
        had to reconnect: charon lost every connection), a tunnel we initiate that charon no longer
        lists, or a duplicate IKE_SA for this end to delete calls for a reconcile now rather than at the
        next resync. Returns the reason, or None."""
        outcome = self.last_outcome
        if self._vpn is None or outcome is None or not outcome.plan.state.ipsec or self._vpn_error is not None:
            return None
        connects = self._vpn.connects
        try:
            states = await self._vpn.states()
        except DriverUnavailable as exc:
            log.warning("charon unavailable", extra=kv(error=str(exc)))
            return "charon-unavailable"
        except Exception as exc:  # this runs in the agent's main loop: nothing here may end it
            log.warning("tunnel check failed", extra=kv(error=f"{type(exc).__name__}: {exc}"))
            return "tunnel-check-failed"
        self._dp_metrics.set_tunnels(states)
        if self.on_states is not None:
            self.on_states(outcome.plan.state.ipsec, states)
        if self._vpn.connects != connects:
            return "charon-restarted"
        listed = {t.name for t in states}
        if any(c.initiator and c.name not in listed for c in outcome.plan.state.ipsec):
            return "tunnel-down"
        mutual = {c.name for c in outcome.plan.state.ipsec if c.mutual}
        if duplicates_to_end(t for t in states if t.name in mutual):  # for this end to delete (the driver does)
            return "duplicate-sa"
        return None

    async def reconcile_once(self, reason: str = "manual") -> ReconcileOutcome:
        started = time.perf_counter()
        try:
            result = await self._plan_fn()
        except Exception as exc:  # a planning bug must not kill the loop; the data plane stays as it is
            log.exception("planning failed; keeping the current data plane", extra=kv(reason=reason))
            self._metrics.errors.labels(stage="plan").inc()
            self._metrics.reconciles.labels(result="error").inc()
            outcome = ReconcileOutcome(PlanResult(NodeNetwork()), errors=[f"plan: {exc}"])
            self.last_outcome = outcome
            return outcome
        self._log_plan_changes(result)
        if self._stager is not None:
            try:
                result = replace(result, state=await self._stager(result.state))
            except Exception:  # staging only delays changes: without it, the plan is applied as it is
                log.exception("path staging failed; applying the plan as it is", extra=kv(reason=reason))
        outcome = ReconcileOutcome(result)

        try:
            outcome.kernel = await self._kernel.reconcile(result.state)
            self._dp_metrics.record_kernel(outcome.kernel)
            for err in outcome.kernel.errors:
                log.error("kernel write failed", extra=kv(kind=err.kind, op=err.op, obj=err.obj, reason=err.reason))
            if outcome.kernel.errors:
                outcome.errors.append(f"kernel: {len(outcome.kernel.errors)} writes failed")
        except Exception as exc:
            log.exception("kernel reconcile failed", extra=kv(reason=reason))
            outcome.errors.append(f"kernel: {exc}")
        if outcome.errors:
            self._metrics.errors.labels(stage="kernel").inc()
        if self._vpn is not None:
            await self._reconcile_vpn(result, outcome)

        elapsed = time.perf_counter() - started
        self._metrics.duration.observe(elapsed)
        self._metrics.reconciles.labels(result="error" if outcome.errors else "ok").inc()
        if not outcome.errors:
            self._metrics.last_success.set_to_current_time()
            self.first_success.set()
        log.log(
            logging.INFO if outcome.writes or outcome.errors else logging.DEBUG,
            "reconciled",
            extra=kv(reason=reason, role=result.role, gateway=result.gateway,
                     kernel_writes=_nonzero(outcome.kernel), vpn_ops=_nonzero(outcome.vpn),
                     errors=len(outcome.errors), ms=round(elapsed * 1000, 1)),
        )
        self.last_outcome = outcome
        return outcome

    async def _reconcile_vpn(self, result: PlanResult, outcome: ReconcileOutcome) -> None:
        assert self._vpn is not None
        conns = result.state.ipsec
        try:
            outcome.vpn = await self._vpn.reconcile(conns)
            self._dp_metrics.record_vici(outcome.vpn)
            for err in outcome.vpn.errors:
                log.error("vici operation failed", extra=kv(op=err.op, conn=err.obj, reason=err.reason))
            if outcome.vpn.errors:
                outcome.errors.append(f"vpn: {len(outcome.vpn.errors)} operations failed")
            if conns:
                states = await self._vpn.states()
                self._dp_metrics.set_tunnels(states)
                if self.on_states is not None:
                    self.on_states(conns, states)
                up = {t.name for t in states if t.ike_state == "ESTABLISHED"}
                outcome.tunnels_pending = sum(1 for c in conns if c.initiator and c.name not in up)
            self._vpn_error = None
            self._charon_down = False
        except DriverUnavailable as exc:
            self._vpn_error = str(exc)
            self._charon_down = bool(conns)
            if not conns:
                # Nothing to load, and whatever charon had is gone with it: not an error for this node.
                log.debug("charon unavailable, no tunnels wanted", extra=kv(error=str(exc)))
                return
            # Expected while charon is down or restarting: one line, no traceback; retried with backoff.
            log.error("charon unavailable", extra=kv(error=str(exc), tunnels_wanted=len(conns)))
            self._metrics.errors.labels(stage="vpn").inc()
            outcome.errors.append(f"vpn: {exc}")
        except Exception as exc:
            self._vpn_error = str(exc)
            log.exception("vpn reconcile failed")
            self._metrics.errors.labels(stage="vpn").inc()
            outcome.errors.append(f"vpn: {exc}")

    def _log_plan_changes(self, result: PlanResult) -> None:
        last = self._last_plan
        self._last_plan = result
        m = self._metrics
        for role in ("none", "member", "gateway"):
            m.role.labels(role=role).set(1 if result.role == role else 0)
        m.problems.set(len(result.problems))
        m.remote_subnets.set(len({r.dst for r in result.state.routes if r.table == _remote_table(result)}))
        if last is None or (last.role, last.gateway) != (result.role, result.gateway):
            log.info("role decided", extra=kv(role=result.role, gateway=result.gateway))
        if last is None or last.paths != result.paths:
            for p in result.paths:
                log.info("path", extra=kv(gateway=result.gateway, to=p.dst, path=p.describe()))
        new_problems = sorted(set(result.problems) - set(last.problems if last else []))
        for problem in new_problems:
            log.warning("skipped malformed input", extra=kv(problem=problem))


def _nonzero(report: ApplyReport | None) -> dict[str, int]:
    return {k: v for k, v in report.writes.items() if v} if report is not None else {}


def _remote_table(result: PlanResult) -> int | None:
    """The table holding remote subnets: the one the rule without `iif` points to."""
    for rule in result.state.rules:
        if rule.iif is None:
            return rule.table
    return None
