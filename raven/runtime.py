"""What every mode gets to run in: health registry, task supervisor, metrics registry.

`run_mode` owns the process lifecycle shared by both modes: start the HTTP server, start the mode's
main coroutine under supervision, wait for SIGTERM/SIGINT, then stop everything gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from raven.config import CommonConfig
from raven.health import Health
from raven.log import kv
from raven.metrics import new_registry, readiness_gauge
from raven.server import HttpServer, make_app
from raven.supervisor import Supervisor

log = logging.getLogger(__name__)

# How long cleanup (Lease release, socket close) may take after SIGTERM before we exit anyway.
SHUTDOWN_TIMEOUT_S = 8.0


@dataclass
class Runtime:
    health: Health
    supervisor: Supervisor
    registry: CollectorRegistry
    stop: asyncio.Event


ModeMain = Callable[[Runtime], Coroutine[Any, Any, None]]


async def run_mode(mode: str, version: str, common: CommonConfig, main: ModeMain) -> int:
    """Run `main(rt)` as a supervised task until a stop signal; return the process exit code."""
    health = Health()
    registry = new_registry(mode, version)
    readiness_gauge(registry, lambda: health.ready)
    rt = Runtime(health, Supervisor(health, registry), registry, asyncio.Event())

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, rt.stop, sig)

    server = HttpServer(make_app(health, registry), [common.health_addr, common.metrics_addr])
    await server.start()
    rt.supervisor.spawn(mode, main(rt))
    log.info("started", extra=kv(mode=mode, version=version))
    try:
        await rt.stop.wait()
    finally:
        log.info("stopping", extra=kv(mode=mode))
        await rt.supervisor.stop(SHUTDOWN_TIMEOUT_S)
        await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped", extra=kv(mode=mode))
    return 0


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("signal received, shutting down", extra=kv(signal=sig.name))
    stop.set()
