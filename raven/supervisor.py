"""The one place long-running tasks are started, so none of them can die silently.

Every eternal task (informer, reconcile loop, leader elector, HTTP server) is started with
`Supervisor.spawn`. If it ever returns or raises while the process is not shutting down, that is a
bug or an unrecoverable fault: it is logged loudly with the traceback, counted, and liveness fails so
the kubelet restarts the pod. On shutdown all tasks are cancelled and awaited with a deadline, so each
can run its own cleanup (`finally:` blocks: release the Lease, close sockets).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from raven.health import Health
from raven.log import kv

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, health: Health, registry: CollectorRegistry) -> None:
        self._health = health
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._stopping = False
        self._deaths = Counter(
            "raven_supervised_task_failures_total",
            "Supervised background tasks that ended unexpectedly.",
            ["task"],
            registry=registry,
        )

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if name in self._tasks and not self._tasks[name].done():
            coro.close()
            raise ValueError(f"task {name!r} is already running")
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._on_done)
        log.debug("task started", extra=kv(task=name))
        return task

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        name = task.get_name()
        if self._stopping:
            return
        if task.cancelled():
            reason = "cancelled"
            log.error("supervised task was cancelled unexpectedly", extra=kv(task=name))
        elif (exc := task.exception()) is not None:
            reason = f"{type(exc).__name__}: {exc}"
            log.error("supervised task crashed", exc_info=exc, extra=kv(task=name))
        else:
            reason = "returned"
            log.error("supervised task ended unexpectedly", extra=kv(task=name))
        self._deaths.labels(task=name).inc()
        self._health.mark_dead(name, reason)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Cancel every task and wait for their cleanup, at most `grace_s` seconds in all."""
        self._stopping = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            log.error("task did not stop in time", extra=kv(task=task.get_name(), timeout_s=grace_s))
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning(
                    "task failed while stopping",
                    exc_info=task.exception(),
                    extra=kv(task=task.get_name()),
                )
