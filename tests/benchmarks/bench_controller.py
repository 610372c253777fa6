"""Benchmark of controller mode: `python -m tests.benchmarks.bench_controller` (part of `make bench`).

On the test API server (its own process) with 10,000 nodes in 1,000 gateways:
1. baseline: 1,000 bare status merge-PATCH calls with the controller's concurrency, same server, same run, made
   twice: before the controller starts and again after it stopped (a loaded machine's load drifts within a run;
   the ratio is to the mean of the two, and both are reported);
2. a real `raven --mode=controller` process: time from its start to every Gateway's status written
   (seen through a watch), and the ratio to the baseline (aim <= 1.5: the controller is not the bottleneck).
   Beside the wall-clock ratio, the CPU: the controller's from exec to every status written, against the bench
   client's own for the bare PATCHes (the same client code), which the machine's load hardly moves;
3. failover latency: nodes' Ready=False writes at 50/s, each the active endpoint of its gateway; time
   from sending the write to the new active endpoint appearing in that gateway's status (aim p99 <= 100 ms);
4. the controller's peak RSS (VmHWM; aim <= 250 MB).
Writes bench-results/controller.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from raven.kube.client import GATEWAYS, NODES, KubeClient, Resource, new_api_client

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("bench-results")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
CONCURRENCY = 8  # the controller's worker count (raven.controller.app.Controller default)
JSON = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node(gw: int, i: int, ready: bool = True) -> JSON:
    k = gw * 10 + i
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": f"n-{gw:04d}-{i}", "labels": {"raven.openyurt.io/gateway": f"gw-{gw:04d}"}},
        "spec": {"podCIDR": f"10.{k // 256 % 256}.{k % 256}.0/24", "podCIDRs": [f"10.{k // 256 % 256}.{k % 256}.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": f"172.16.{k // 256}.{k % 256}"}],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def gateway(gw: int) -> JSON:
    return {
        "apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway", "metadata": {"name": f"gw-{gw:04d}"},
        "spec": {"endpoints": [{"nodeName": f"n-{gw:04d}-{i}", "type": "tunnel", "port": 4500, "underNAT": False}
                               for i in range(3)]},
    }


def baseline_status(gw: int) -> JSON:
    """A status of the size the controller writes, but not the one it wants (so it must write its own)."""
    nodes = [node(gw, i) for i in range(10)]
    return {
        "nodes": [{"nodeName": n["metadata"]["name"], "privateIP": n["status"]["addresses"][0]["address"],
                   "subnets": n["spec"]["podCIDRs"]} for n in nodes],
        "activeEndpoints": [gateway(gw)["spec"]["endpoints"][0]],
        "conditions": [{"type": "Valid", "status": "Unknown", "reason": "Baseline", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }


async def bounded(n: int, coros: list[Any]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(c: Any) -> None:
        async with sem:
            for attempt in range(5):
                try:
                    await c()
                    return
                except Exception:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.1)

    await asyncio.gather(*(one(c) for c in coros))


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


class GatewayWatch:
    """The bench's own view of every Gateway's status, with the arrival time of each change."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self.valid: set[str] = set()
        self.active: dict[str, str] = {}
        self.changed: dict[str, float] = {}
        self.all_valid = asyncio.Event()
        self.listed = asyncio.Event()
        self.expected = 0
        self.rv = ""
        self._waiters: dict[str, tuple[str, asyncio.Event]] = {}

    async def wait_for(self, name: str, active: str) -> None:
        if self.active.get(name) == active:
            return
        event = asyncio.Event()
        self._waiters[name] = (active, event)
        await event.wait()

    def _apply(self, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if any(c.get("type") == "Valid" and c.get("status") == "True" for c in status.get("conditions") or []):
            self.valid.add(name)
        act = ",".join(e["nodeName"] for e in status.get("activeEndpoints") or [])
        if self.active.get(name) != act:
            self.active[name] = act
            self.changed[name] = time.perf_counter()
            waiter = self._waiters.get(name)
            if waiter is not None and waiter[0] == act:
                del self._waiters[name]
                waiter[1].set()
        if self.expected and len(self.valid) >= self.expected:
            self.all_valid.set()

    async def run(self) -> None:
        listing = await self.client.list(GATEWAYS)
        for obj in listing["items"]:
            self._apply(obj)
        self.rv = listing["metadata"]["resourceVersion"]
        self.listed.set()
        while True:
            with contextlib.suppress(Exception):
                async for ev in self.client.watch(GATEWAYS, self.rv, timeout_seconds=600, read_timeout_s=120):
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._apply(ev["object"])
                    self.rv = ev["object"]["metadata"].get("resourceVersion", self.rv)


async def wait_ready(port: int, t0: float) -> float:
    """Seconds from t0 until /readyz answers 200 (process started, informers synced)."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            await asyncio.sleep(0.01)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(gateways: int, events: int, rate: float, raven: str) -> JSON:
    tmp = Path(tempfile.mkdtemp(prefix="rvctl-bench-"))
    kubeconfig = tmp / "kubeconfig"
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "e2e.apiserver", "--listen", f"127.0.0.1:{port}", "--kubeconfig", str(kubeconfig),
        "--history-window", "100000", cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
        stderr=(tmp / "apiserver.log").open("wb"))
    controller: asyncio.subprocess.Process | None = None
    try:
        for _ in range(200):
            if kubeconfig.exists():
                break
            await asyncio.sleep(0.05)
        client = KubeClient(await new_api_client(str(kubeconfig)), timeout_s=60)
        crd = yaml.safe_load((ROOT / "manifests" / "01-crd-gateways.yaml").read_text())
        await client.create(CRDS, crd)

        t = time.perf_counter()
        await bounded(32, [lambda g=g, i=i: client.create(NODES, node(g, i))
                           for g in range(gateways) for i in range(10)])
        await bounded(32, [lambda g=g: client.create(GATEWAYS, gateway(g)) for g in range(gateways)])
        setup_s = time.perf_counter() - t
        print(f"setup: {gateways * 10} nodes, {gateways} gateways in {setup_s:.1f} s", file=sys.stderr)

        # The bench watches Gateways during both phases, so both pay for the same watch traffic.
        watch = GatewayWatch(client)
        watch_task = asyncio.create_task(watch.run())
        await watch.listed.wait()

        # 1. Baseline: bare status PATCHes, same count and concurrency as the controller's writes.
        async def bare_patches() -> tuple[float, float, float]:
            """(seconds, server CPU s, this client's CPU s) of one round of bare status PATCHes."""
            server_cpu0, client_cpu0 = cpu_s(server.pid), time.process_time()
            t = time.perf_counter()
            await bounded(CONCURRENCY, [
                lambda g=g: client.merge_patch(GATEWAYS, f"gw-{g:04d}", {"status": baseline_status(g)},
                                               subresource="status")
                for g in range(gateways)])
            return (time.perf_counter() - t, cpu_s(server.pid) - server_cpu0, time.process_time() - client_cpu0)

        load_start = os.getloadavg()[0]
        baseline_s, server_cpu_baseline, client_cpu_baseline = await bare_patches()
        watch.expected = gateways

        # 2. The controller, as a real process, with compiled bytecode as in the image (`pip install`
        # byte-compiles; this machine may set PYTHONDONTWRITEBYTECODE, which would make the start compile
        # Raven's sources): a cache in the run's temp dir, filled by one unmeasured import first.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(POD_NAME="rvctl-bench", PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
        warm = await asyncio.create_subprocess_exec(
            str(Path(raven).parent / "python"), "-P", "-c", "import raven.cli, raven.controller.app", env=env)
        await warm.wait()
        hp = free_port()
        t = time.perf_counter()
        controller = await asyncio.create_subprocess_exec(
            raven, "--mode=controller", f"--kubeconfig={kubeconfig}",
            f"--health-addr=127.0.0.1:{hp}", f"--metrics-addr=127.0.0.1:{hp}", "--lease-namespace=kube-system",
            "--log-level=info", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=(tmp / "controller.log").open("wb"))
        ready_s = await wait_ready(hp, t)
        server_cpu_ready, ctl_cpu_ready = cpu_s(server.pid), cpu_s(controller.pid)
        await asyncio.wait_for(watch.all_valid.wait(), 600)
        converge_s = time.perf_counter() - t
        ctl_cpu_converge = cpu_s(controller.pid)
        server_cpu_writes = cpu_s(server.pid) - server_cpu_ready
        ctl_cpu_writes = ctl_cpu_converge - ctl_cpu_ready
        await asyncio.sleep(1.0)

        # 3. Failover latency at `rate` events/s, each on a different gateway's active node.
        latencies: list[float] = []
        pending: list[asyncio.Task[None]] = []

        async def fail_over(g: int) -> None:
            name = f"gw-{g:04d}"
            want = f"n-{g:04d}-1"
            obj = node(g, 0, ready=False)
            start = time.perf_counter()
            await client.merge_patch(NODES, obj["metadata"]["name"], {"status": obj["status"]}, subresource="status")
            await watch.wait_for(name, want)
            latencies.append((watch.changed[name] - start) * 1000)

        t0 = time.perf_counter()
        for k in range(min(events, gateways)):
            await asyncio.sleep(max(0.0, t0 + k / rate - time.perf_counter()))
            pending.append(asyncio.create_task(fail_over(k)))
        await asyncio.wait_for(asyncio.gather(*pending), 120)
        rss = vm_hwm_mb(controller.pid)
        if os.environ.get("BENCH_DEBUG"):
            import aiohttp

            async with aiohttp.ClientSession() as hs, hs.get(f"http://127.0.0.1:{hp}/metrics") as r:
                text = await r.text()
            print("\n".join(ln for ln in text.splitlines() if "reconcile_duration" in ln or "gc_" in ln),
                  file=sys.stderr)
            print("slowest failovers ms:", sorted(latencies)[-10:], file=sys.stderr)
        # The second baseline, with the controller gone (it would answer every PATCH with its own).
        controller.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(controller.wait(), 10)
        if controller.returncode is None:
            controller.kill()
            await controller.wait()
        baseline2_s, _, client_cpu_baseline2 = await bare_patches()
        load_end = os.getloadavg()[0]
        watch_task.cancel()
        await client.close()
    except BaseException:
        print(f"bench failed; apiserver and controller logs in {tmp}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # logs are kept only when the run failed
    finally:
        for proc in (controller, server):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 10)
                if proc.returncode is None:
                    proc.kill()
    base = (baseline_s + baseline2_s) / 2
    return {
        "nodes": gateways * 10,
        "gateways": gateways,
        "load_average_1m": {"start": round(load_start, 1), "end": round(load_end, 1)},
        "baseline_status_patches_s": round(base, 3),
        "baseline_before_and_after_s": [round(baseline_s, 3), round(baseline2_s, 3)],
        "controller_start_to_all_status_s": round(converge_s, 3),
        "ratio_controller_to_baseline": round(converge_s / base, 2),
        "controller_start_to_ready_s": round(ready_s, 3),
        "controller_ready_to_all_status_s": round(converge_s - ready_s, 3),
        "ratio_after_ready_to_baseline": round((converge_s - ready_s) / base, 2),
        "cpu_ratio_controller_to_bare_client": round(ctl_cpu_converge / ((client_cpu_baseline + client_cpu_baseline2)
                                                                         / 2), 2),
        "failover_events": len(latencies),
        "failover_rate_per_s": rate,
        "failover_latency_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                                "p99": round(percentile(latencies, 99), 1),
                                "max": round(max(latencies), 1), "mean": round(statistics.mean(latencies), 1)},
        "controller_peak_rss_mb": round(rss, 1),
        "cpu_s": {"server_during_baseline": round(server_cpu_baseline, 2),
                  "bench_client_during_baselines": [round(client_cpu_baseline, 2), round(client_cpu_baseline2, 2)],
                  "controller_start_to_all_status": round(ctl_cpu_converge, 2),
                  "server_ready_to_all_status": round(server_cpu_writes, 2),
                  "controller_ready_to_all_status": round(ctl_cpu_writes, 2)},
        "aims": {"ratio": 1.5, "failover_p99_ms": 100, "peak_rss_mb": 250},
    }


def report(res: JSON) -> None:
    lat = res["failover_latency_ms"]
    rows = [
        ("cluster", f"{res['nodes']} nodes, {res['gateways']} gateways", ""),
        ("load average (1 min) at start / end", f"{res['load_average_1m']['start']:.1f} / "
         f"{res['load_average_1m']['end']:.1f}", ""),
        ("baseline: bare status PATCHes (before, after)", f"{res['baseline_status_patches_s']:.2f} s  "
         f"({res['baseline_before_and_after_s'][0]:.2f}, {res['baseline_before_and_after_s'][1]:.2f})", ""),
        ("controller start -> all status written", f"{res['controller_start_to_all_status_s']:.2f} s", ""),
        ("ratio (aim <= 1.5)", f"{res['ratio_controller_to_baseline']:.2f}",
         "ok" if res["ratio_controller_to_baseline"] <= 1.5 else "MISSED"),
        ("  of which start (imports, lists) -> ready", f"{res['controller_start_to_ready_s']:.2f} s", ""),
        ("  ready -> all status written / baseline", f"{res['controller_ready_to_all_status_s']:.2f} s  "
         f"x{res['ratio_after_ready_to_baseline']:.2f}", ""),
        ("CPU s: controller start -> all status / bare client",
         f"{res['cpu_s']['controller_start_to_all_status']:.2f} / "
         f"{sum(res['cpu_s']['bench_client_during_baselines']) / 2:.2f}  "
         f"x{res['cpu_ratio_controller_to_bare_client']:.2f}",
         ""),
        (f"failover p50 / p95 / p99 at {res['failover_rate_per_s']:.0f}/s",
         f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms",
         "ok" if lat["p99"] <= 100 else "MISSED"),
        ("CPU s: server baseline / server+controller after ready",
         f"{res['cpu_s']['server_during_baseline']:.2f} / {res['cpu_s']['server_ready_to_all_status']:.2f}"
         f"+{res['cpu_s']['controller_ready_to_all_status']:.2f}", ""),
        ("controller peak RSS (aim <= 250 MB)", f"{res['controller_peak_rss_mb']:.0f} MB",
         "ok" if res["controller_peak_rss_mb"] <= 250 else "MISSED"),
    ]
    width = max(len(r[0]) for r in rows)
    print("bench_controller")
    for name, value, verdict in rows:
        print(f"  {name:<{width}}  {value:>22}  {verdict}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=1000)
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--raven", default=str(ROOT / ".venv" / "bin" / "raven"),
                    help="the raven executable to measure (e.g. another checkout's, for a before/after)")
    args = ap.parse_args()
    result = asyncio.run(main(args.gateways, args.events, args.rate, args.raven))
    report(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "controller.json").write_text(json.dumps(result, indent=2) + "\n")
