"""Two controller replicas: exactly one writes; a standby is ready without leading; kill -9 of the leader
-> the standby takes over within the lease duration; SIGTERM -> the Lease is released, the standby takes
over at once and the process exits 0 within 5 s; a stolen Lease stops writes immediately.
Real `raven --mode=controller` processes where process behaviour is the point, in-process otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from e2e.apiserver import ApiServer
from raven.controller.reconciler import GatewayReconciler
from raven.kube import workqueue
from raven.kube.backoff import Backoff
from raven.kube.client import GATEWAYS, LEASES, KubeClient
from raven.kube.leader import micro_time
from tests.controller.conftest import RunningController, active, eventually, set_ready
from tests.controller.test_gateway_election import two_gateways, wait_active

Start = Callable[..., Awaitable[RunningController]]
ROOT = Path(__file__).resolve().parents[2]
RAVEN = str(ROOT / ".venv" / "bin" / "raven") if (ROOT / ".venv" / "bin" / "raven").exists() else "raven"
NS, LEASE = "kube-system", "raven-controller"


async def holder(kube: KubeClient) -> str:
    try:
        lease = await kube.get(LEASES, LEASE, NS)
    except Exception:
        return ""
    return str(lease["spec"].get("holderIdentity") or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    identity: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.port}{path}") as r:
            return r.status, await r.text()

    async def metric(self, name: str) -> float:
        _, text = await self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{}"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
async def spawn(apiserver: ApiServer, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Proc]]]:
    procs: list[Proc] = []

    async def run(identity: str, *flags: str) -> Proc:
        assert apiserver.kubeconfig
        port = free_port()
        log = tmp_path / f"{identity}.log"
        proc = await asyncio.create_subprocess_exec(
            RAVEN, "--mode=controller", f"--kubeconfig={apiserver.kubeconfig}",
            f"--health-addr=127.0.0.1:{port}", f"--metrics-addr=127.0.0.1:{port}", *flags,
            env={**os.environ, "POD_NAME": identity}, stdout=log.open("wb"), stderr=asyncio.subprocess.STDOUT,
        )
        p = Proc(identity, port, proc, log)
        procs.append(p)
        await eventually(lambda: p.get("/healthz"), lambda r: r[0] == 200, within=20, what=f"{identity} serving")
        return p

    try:
        yield run
    finally:
        for p in procs:
            if p.proc.returncode is None:
                p.proc.kill()
                await p.proc.wait()
            sys.stderr.write(f"--- {p.identity} log ---\n{p.log.read_text()[-3000:]}\n")


LEASE_FLAGS = ("--leader-elect", f"--lease-namespace={NS}", f"--lease-name={LEASE}")


async def test_kill_9_of_the_leader_hands_over_within_the_lease_duration(
    kube: KubeClient, spawn: Callable[..., Awaitable[Proc]]
) -> None:
    await two_gateways(kube)
    timing = ("--lease-duration=3", "--renew-deadline=2", "--retry-period=0.5")
    a = await spawn("rvctl-a", *LEASE_FLAGS, *timing)
    await eventually(lambda: holder(kube), lambda h: h == "rvctl-a", what="a leads")
    b = await spawn("rvctl-b", *LEASE_FLAGS, *timing)
    await wait_active(kube, "gw-a", ["a-1"])
    # The standby is ready (informers synced) without leading, and only the leader writes.
    await eventually(lambda: b.get("/readyz"), lambda r: r[0] == 200, what="standby ready")
    await eventually(lambda: a.metric("raven_controller_status_writes_total"), lambda n: n >= 2,
                     what="the leader wrote both gateways' status")
    # The standby received both gateways (its handlers queued them: the queue depth says so) and, not
    # leading, works none of them: only then does "b wrote nothing" mean something.
    await eventually(lambda: b.metric("raven_controller_queue_depth"), lambda n: n >= 2,
                     what="both gateways queued, unworked, on the standby")
    assert await a.metric("raven_controller_leader") == 1 and await b.metric("raven_controller_leader") == 0
    assert await b.metric("raven_controller_status_writes_total") == 0

    a.proc.send_signal(signal.SIGKILL)
    await a.proc.wait()
    killed = time.monotonic()
    await set_ready(kube, "a-1", False)
    await eventually(lambda: holder(kube), lambda h: h == "rvctl-b", within=3 * 2 + 5, what="b takes over")
    took = time.monotonic() - killed
    await wait_active(kube, "gw-a", ["a-2"])
    assert await b.metric("raven_controller_status_writes_total") >= 1
    print(f"takeover after kill -9: {took:.2f} s (lease duration 3 s)")


async def test_sigterm_releases_the_lease_and_exits_0_quickly(
    kube: KubeClient, spawn: Callable[..., Awaitable[Proc]]
) -> None:
    await two_gateways(kube)
    timing = ("--lease-duration=10", "--renew-deadline=6", "--retry-period=0.5")
    a = await spawn("rvctl-a", *LEASE_FLAGS, *timing)
    await eventually(lambda: holder(kube), lambda h: h == "rvctl-a", what="a leads")
    b = await spawn("rvctl-b", *LEASE_FLAGS, *timing)
    await wait_active(kube, "gw-a", ["a-1"])
    status, text = await a.get("/readyz")
    assert status == 200 and "informer-nodes ok" in text
    assert "raven_controller_reconcile_duration_seconds_bucket" in (await a.get("/metrics"))[1]
    await eventually(lambda: b.get("/readyz"), lambda r: r[0] == 200, what="standby ready")

    a.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc = await asyncio.wait_for(a.proc.wait(), 5.0)
    assert rc == 0
    lease = await kube.get(LEASES, LEASE, NS)
    assert lease["spec"].get("holderIdentity") in (None, "", "rvctl-b")  # released, not left to expire
    # Well under the 10 s lease: the standby takes the released Lease at its next retry.
    await eventually(lambda: holder(kube), lambda h: h == "rvctl-b", within=8, what="b takes over")
    print(f"takeover after SIGTERM: {time.monotonic() - t0:.2f} s (lease duration 10 s)")
    await set_ready(kube, "a-1", False)
    await wait_active(kube, "gw-a", ["a-2"])


async def test_single_replica_without_leader_election_serves_and_exits_0(
    kube: KubeClient, spawn: Callable[..., Awaitable[Proc]]
) -> None:
    await two_gateways(kube)
    p = await spawn("rvctl-solo", "--no-leader-elect")
    await wait_active(kube, "gw-b", ["b-1"])
    await eventually(lambda: p.get("/readyz"), lambda r: r[0] == 200, what="ready")
    assert (await p.get("/healthz"))[0] == 200
    assert await p.metric("raven_controller_leader") == 1
    assert await holder(kube) == ""  # no Lease involved
    p.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(p.proc.wait(), 5.0) == 0


async def test_in_process_replicas_exactly_one_writes_and_a_stolen_lease_stops_writes(
    kube: KubeClient, start: Start
) -> None:
    await two_gateways(kube)
    lease = (3.0, 2.0, 0.2)
    a = await start(identity="ctrl-a", leader_elect=True, lease=lease)
    await eventually(lambda: holder(kube), lambda h: h == "ctrl-a", what="a leads")
    b = await start(identity="ctrl-b", leader_elect=True, lease=lease)
    await wait_active(kube, "gw-a", ["a-1"])
    await eventually(lambda: all(r.ok for r in b.rt.health.readiness().values()), bool,
                     what="standby ready")
    await set_ready(kube, "a-1", False)
    await wait_active(kube, "gw-a", ["a-2"])
    assert a.metric("raven_controller_status_writes_total") >= 3
    assert b.metric("raven_controller_status_writes_total") == 0
    assert (a.metric("raven_controller_leader"), b.metric("raven_controller_leader")) == (1, 0)

    # Someone else takes the Lease: a must stop writing at once and so must b (not the holder).
    obj = await kube.get(LEASES, LEASE, NS)
    obj["spec"].update(holderIdentity="thief", renewTime=micro_time(), leaseDurationSeconds=30)
    await kube.replace(LEASES, LEASE, obj, NS)
    await eventually(lambda: a.metric("raven_controller_leader"), lambda v: v == 0,
                     what="a steps down")
    gw_rv = (await kube.get(GATEWAYS, "gw-a"))["metadata"]["resourceVersion"]
    seen = {rc.identity: rc.delivered("nodes", "MODIFIED") for rc in (a, b)}
    await set_ready(kube, "a-2", False)
    # Both replicas received the failure and queued gw-a for it, and neither works the queue now.
    for rc in (a, b):
        await eventually(lambda rc=rc: rc.delivered("nodes", "MODIFIED"), lambda n, rc=rc: n > seen[rc.identity],
                         what=f"a-2 NotReady delivered to {rc.identity}")
        await eventually(lambda rc=rc: rc.metric("raven_controller_queue_depth"), lambda n: n >= 1,
                         what=f"gw-a queued, unworked, on {rc.identity}")
    assert (await kube.get(GATEWAYS, "gw-a"))["metadata"]["resourceVersion"] == gw_rv
    assert await active(kube, "gw-a") == ["a-2"]

    # The thief leaves: one of the replicas leads again and the pending failover is written.
    obj = await kube.get(LEASES, LEASE, NS)
    del obj["spec"]["holderIdentity"]
    await kube.replace(LEASES, LEASE, obj, NS)
    await wait_active(kube, "gw-a", ["a-3"])
    assert a.metric("raven_controller_leader") + b.metric("raven_controller_leader") == 1
    with contextlib.suppress(Exception):
        await a.stop()


async def test_losing_leadership_cancels_the_pending_retries(
    kube: KubeClient, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every reconcile fails and its retry is scheduled 10 s out: long enough that only close() removes it.
    monkeypatch.setattr(workqueue, "Backoff", lambda **_: Backoff(base=10.0, cap=10.0, jitter=0.0))

    def broken(self: GatewayReconciler, gw: object) -> None:
        raise ZeroDivisionError("a bug in the election")

    monkeypatch.setattr(GatewayReconciler, "_elect", broken)
    await two_gateways(kube)
    a = await start(identity="ctrl-a", leader_elect=True, lease=(3.0, 2.0, 0.2))
    queue = a.controller.reconciler.queue
    await eventually(lambda: queue.retries_scheduled, lambda n: n == 2, what="both gateways' retries scheduled")
    obj = await kube.get(LEASES, LEASE, NS)
    obj["spec"].update(holderIdentity="thief", renewTime=micro_time(), leaseDurationSeconds=30)
    await kube.replace(LEASES, LEASE, obj, NS)
    await eventually(lambda: a.metric("raven_controller_leader"), lambda v: v == 0, what="a steps down")
    await eventually(lambda: queue.retries_scheduled, lambda n: n == 0, within=3.0,
                     what="the retries cancelled with the term")
