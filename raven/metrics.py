"""The process's own Prometheus registry (not the library-global one), with process metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector


def new_registry(mode: str, version: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    info = Gauge("raven_build_info", "Raven version and mode; always 1.", ["version", "mode"], registry=registry)
    info.labels(version=version, mode=mode).set(1)
    return registry
