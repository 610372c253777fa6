"""Process health and readiness: what /healthz and /readyz report.

Liveness (`/healthz`) fails only when something is broken beyond self-repair: a supervised task died.
Readiness (`/readyz`) is the conjunction of named checks that components register (informers synced,
first reconcile done, charon reachable, ...); each check reports ok plus a human-readable reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str = ""


ReadinessCheck = Callable[[], CheckResult]


class Health:
    def __init__(self) -> None:
        self._checks: dict[str, ReadinessCheck] = {}
        self._dead: dict[str, str] = {}

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} registered twice")
        self._checks[name] = check

    def mark_dead(self, task_name: str, reason: str) -> None:
        self._dead[task_name] = reason

    @property
    def dead_tasks(self) -> dict[str, str]:
        return dict(self._dead)

    @property
    def alive(self) -> bool:
        return not self._dead

    @property
    def ready(self) -> bool:
        """What /readyz answers (also the `raven_ready` gauge): every check ok and no task dead."""
        return self.alive and all(r.ok for r in self.readiness().values())

    def readiness(self) -> dict[str, CheckResult]:
        results: dict[str, CheckResult] = {}
        for name, check in sorted(self._checks.items()):
            try:
                results[name] = check()
            except Exception as exc:  # a broken check must not break the endpoint
                log.exception("readiness check raised", extra={"raven_fields": {"check": name}})
                results[name] = CheckResult(False, f"check raised {type(exc).__name__}: {exc}")
        return results
