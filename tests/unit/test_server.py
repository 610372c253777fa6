"""The HTTP endpoints and the supervisor behind them, served for real on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from raven.config import ListenAddr
from raven.health import CheckResult, Health
from raven.metrics import new_registry
from raven.server import HttpServer, make_app
from raven.supervisor import Supervisor
from tests.controller.conftest import eventually


class Served:
    def __init__(self) -> None:
        self.health = Health()
        self.registry = new_registry("test", "0.0.0")
        self.supervisor = Supervisor(self.health, self.registry)
        self.server = HttpServer(make_app(self.health, self.registry), [ListenAddr("127.0.0.1", 0)])

    @property
    def base(self) -> str:
        host, port = self.server.bound[0]
        return f"http://{host}:{port}"

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as resp:
            return resp.status, await resp.text()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s = Served()
    await s.server.start()
    try:
        yield s
    finally:
        await s.supervisor.stop(1.0)
        await s.server.stop()


async def test_healthz_ok(served: Served) -> None:
    assert await served.get("/healthz") == (200, "ok\n")


async def test_readyz_lists_each_check_and_fails_on_one(served: Served) -> None:
    served.health.add_readiness_check("informers-synced", lambda: CheckResult(True))
    served.health.add_readiness_check("charon", lambda: CheckResult(False, "no VICI socket at /run/x"))
    status, body = await served.get("/readyz")
    assert status == 503
    assert "[+]informers-synced ok" in body
    assert "[-]charon failed: no VICI socket at /run/x" in body


async def test_readyz_verbose_gives_the_reasons_of_passing_checks_too(served: Served) -> None:
    served.health.add_readiness_check("wireguard", lambda: CheckResult(True, "wireguard-go (pid 7) for raven-wg0"))
    served.health.add_readiness_check("plain", lambda: CheckResult(True))
    assert "[+]wireguard ok\n" in (await served.get("/readyz"))[1]
    status, body = await served.get("/readyz?verbose")
    assert status == 200 and "[+]wireguard ok: wireguard-go (pid 7) for raven-wg0\n" in body
    assert "[+]plain ok\n" in body


async def test_readyz_passes_when_all_pass(served: Served) -> None:
    served.health.add_readiness_check("a", lambda: CheckResult(True))
    status, body = await served.get("/readyz")
    assert status == 200 and "readyz check passed" in body


async def test_a_raising_check_is_reported_not_fatal(served: Served) -> None:
    def broken() -> CheckResult:
        raise RuntimeError("boom")

    served.health.add_readiness_check("broken", broken)
    status, body = await served.get("/readyz")
    assert status == 503 and "[-]broken failed: check raised RuntimeError: boom" in body


async def test_metrics_has_process_and_build_info(served: Served) -> None:
    status, body = await served.get("/metrics")
    assert status == 200
    assert 'raven_build_info{mode="test",version="0.0.0"} 1.0' in body
    assert "process_resident_memory_bytes" in body


async def test_crashed_supervised_task_flips_healthz(served: Served) -> None:
    async def doomed() -> None:
        await asyncio.sleep(0)
        raise ValueError("lost the plot")

    served.supervisor.spawn("reconciler", doomed())
    for _ in range(100):
        if served.health.dead_tasks:
            break
        await asyncio.sleep(0.01)
    status, body = await served.get("/healthz")
    assert status == 500
    assert "task reconciler: ValueError: lost the plot" in body
    _, metrics = await served.get("/metrics")
    assert 'raven_supervised_task_failures_total{task="reconciler"} 1.0' in metrics


async def test_task_returning_early_is_also_a_death(served: Served) -> None:
    async def quits() -> None:
        return None

    served.supervisor.spawn("informer", quits())
    await eventually(lambda: served.health.dead_tasks, bool, what="the early return noticed")
    assert served.health.dead_tasks == {"informer": "returned"}


async def test_stop_cancels_tasks_without_marking_them_dead(served: Served) -> None:
    cleaned = asyncio.Event()

    async def eternal() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    served.supervisor.spawn("eternal", eternal())
    await asyncio.sleep(0)
    await served.supervisor.stop(1.0)
    assert cleaned.is_set()
    assert served.health.alive
