"""Failover while the API server misbehaves: dropped watches, forced 410 (history compacted while the
controller was cut off), injected 500s and 429s. The status must still converge, nothing lost."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable

import pytest

from e2e.apiserver import ApiServer
from raven.controller.reconciler import GatewayReconciler
from raven.kube.client import GATEWAYS, NODES, KubeClient
from raven.log import FIELDS_ATTR
from tests.controller.conftest import RunningController, active, eventually, set_ready
from tests.controller.test_gateway_election import two_gateways, wait_active

Start = Callable[..., Awaitable[RunningController]]


async def test_failover_converges_through_outage_410_and_500s(
    apiserver: ApiServer, kube: KubeClient, start: Start
) -> None:
    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await wait_active(kube, "gw-b", ["b-1"])

    # Cut the controller off; meanwhile a-1 goes NotReady and b-1 disappears, and the server forgets
    # the history, so the controller's watches can only catch up through a re-list (410).
    await apiserver.stop_accepting()
    cluster = apiserver.state
    nodes_rt = cluster.lookup("", "v1", "nodes")
    assert nodes_rt is not None
    a1 = copy.deepcopy(cluster.get(nodes_rt, None, "a-1").obj)
    a1["status"]["conditions"][0]["status"] = "False"
    cluster.update(nodes_rt, None, "a-1", a1, subresource="status")
    cluster.delete(nodes_rt, None, "b-1", {})
    apiserver.compact()
    apiserver.fail_next(6, 500)
    await apiserver.resume_accepting()

    await wait_active(kube, "gw-a", ["a-2"], within=30)
    await wait_active(kube, "gw-b", ["b-2"], within=30)
    expired = rc.metric("raven_informer_watch_restarts_total", {"informer": "nodes", "reason": "expired"})
    assert expired >= 1
    gw_b = await kube.get(GATEWAYS, "gw-b")
    assert [n["nodeName"] for n in gw_b["status"]["nodes"]] == ["b-2", "b-3"]  # the synthetic delete applied


async def test_failover_converges_through_dropped_watches_and_throttling(
    apiserver: ApiServer, kube: KubeClient, start: Start
) -> None:
    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await set_ready(kube, "a-1", False)
    apiserver.drop_watches(abrupt=True)
    apiserver.fail_next(5, 429, retry_after=0)
    await asyncio.sleep(0.05)
    await kube_retrying(lambda: set_ready(kube, "a-2", False))  # lands while the controller reconnects
    apiserver.drop_watches()
    await wait_active(kube, "gw-a", ["a-3"], within=30)
    seen = rc.delivered("nodes", "MODIFIED")
    await set_ready(kube, "a-1", True)
    await set_ready(kube, "a-2", True)
    await rc.acted_on("nodes", "MODIFIED", seen, n=2, within=30)
    assert await active(kube, "gw-a") == ["a-3"]  # both recoveries seen: no stealing back
    assert rc.metric("raven_informer_watch_restarts_total", {"informer": "nodes", "reason": "closed"}) + \
        rc.metric("raven_informer_watch_restarts_total", {"informer": "nodes", "reason": "error"}) >= 1


async def test_status_write_failures_are_retried(apiserver: ApiServer, kube: KubeClient, start: Start) -> None:
    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    apiserver.fail_next(3, 500)
    await kube_retrying(lambda: set_ready(kube, "a-1", False))
    await wait_active(kube, "gw-a", ["a-2"], within=30)
    node = await kube.get(NODES, "a-1")
    assert node["status"]["conditions"][0]["status"] == "False"
    assert rc.metric("raven_controller_status_writes_total") >= 3


async def kube_retrying(fn: Callable[[], Awaitable[None]]) -> None:
    """The test's own write may hit an injected failure too; retry it."""
    for _ in range(10):
        try:
            await fn()
            return
        except Exception:
            await asyncio.sleep(0.05)
    await fn()


async def test_a_bug_in_reconcile_is_logged_with_its_traceback_once_and_counted(
    kube: KubeClient, start: Start, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A code bug is retried like any failure, but must be visible: its traceback once, a metric by kind.
    await two_gateways(kube)
    calls = 0

    def broken(self: GatewayReconciler, gw: object) -> None:
        nonlocal calls
        calls += 1
        raise ZeroDivisionError("a bug in the election")

    monkeypatch.setattr(GatewayReconciler, "_elect", broken)
    caplog.set_level(logging.WARNING, logger="raven.controller.reconciler")
    rc = await start()
    await eventually(lambda: rc.metric("raven_controller_reconcile_errors_total", {"kind": "unexpected"}),
                     lambda n: n >= 6, what="the bug counted on every retry")
    failures = [r for r in caplog.records if r.getMessage().startswith("reconcile failed")]
    with_traceback = [r for r in failures if r.exc_info is not None]
    # One traceback per gateway (gw-a, gw-b), however many retries; every retry still logs one line.
    assert sorted(getattr(r, FIELDS_ATTR)["gateway"] for r in with_traceback) == ["gw-a", "gw-b"], failures
    assert all(r.levelno == logging.ERROR and r.exc_info and r.exc_info[0] is ZeroDivisionError
               for r in with_traceback)
    assert len(failures) >= 6 and all(r.levelno == logging.WARNING for r in failures if r.exc_info is None)
    assert rc.metric("raven_controller_reconcile_errors_total", {"kind": "api"}) == 0
    assert calls >= 6
