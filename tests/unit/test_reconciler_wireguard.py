"""The reconcile loop with the real WireGuard driver whose wireguard-go is not there (yet): treated as a daemon
that is away (one error, no traceback, polled for its return), exactly as a dead charon is."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from raven.dataplane.wireguard import WireGuardDriver, WireGuardGo
from tests.controller.conftest import eventually
from tests.unit.test_reconciler import GATEWAY, RecordingKernel, make


async def test_absent_wireguard_go_is_a_daemon_away_and_its_return_is_polled(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    process = WireGuardGo("rvwgtest0", socket_dir=tmp_path)  # no socket: nothing listens
    driver = WireGuardDriver(bytes(range(32)), "a-cluster-secret-0123456789", process=process)
    checks = {"n": 0}
    original = driver.available

    async def counted() -> bool:
        checks["n"] += 1
        return await original()

    driver.available = counted  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    kernel = RecordingKernel()
    rec = make(GATEWAY, kernel, driver, charon_poll=0.01)
    outcome = await rec.reconcile_once("test")
    assert kernel.applied == [GATEWAY.state]  # the kernel side is applied all the same
    (error,) = outcome.errors
    assert error.startswith("vpn: ") and "rvwgtest0.sock" in error
    assert not any(r.exc_info for r in caplog.records)  # expected while it starts: one line, no traceback
    assert not rec.ready().ok
    task = asyncio.create_task(rec.run())
    await eventually(lambda: checks["n"], lambda n: n >= 2, interval=0.01, what="the socket polled")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
