"""The process's own Prometheus registry (not the library-global one), with process metrics."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector


def new_registry(mode: str, version: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    info = Gauge("raven_build_info", "Raven version and mode; always 1.", ["version", "mode"], registry=registry)
    info.labels(version=version, mode=mode).set(1)
    return registry


def readiness_gauge(registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
    """`raven_ready`: 1 while /readyz passes, read at scrape time (the "agent not ready" alert)."""
    g = Gauge("raven_ready", "1 while /readyz passes (every readiness check ok, no task dead).", registry=registry)
    g.set_function(lambda: 1.0 if ready() else 0.0)
