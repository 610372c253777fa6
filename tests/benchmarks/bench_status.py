"""Benchmark of `raven status` (and `raven graph`) on 1,000 gateways: `python -m tests.benchmarks.bench_status`.

The test API server (in this process) holds 1,000 Gateways of 10 nodes each (10,000 Nodes), their statuses as the
controller writes them, and one PathReport per node as the agents write them: an edge-shaped cluster where
`PUBLIC` gateways are exposed and the rest are under NAT (so most of the 499,500 pairs are relayed). Each gateway
reports its direct peers, each member its gateway. Then the real CLI (`raven status`, a new process each run, as a
user types it) is timed from exec to exit, with `-o json` and text, and `raven graph -o dot`; the API calls each run
makes are counted by the server (aim: one list per kind, one ConfigMap read; no per-object calls), and the largest
CLI process's peak RSS (one more run each, under a small wrapper that reads it). In-process, the same run is split
into API reads, building the status and rendering. Writes bench-results/status.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from e2e.apiserver.server import ApiServer
from raven.agent.graph import Paint, render_graph, render_status
from raven.agent.status import iter_json
from raven.kube.client import GATEWAYS, NODES, PATHREPORTS, KubeClient, Resource, new_api_client
from raven.opscli import collect, status_extras, status_from

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("bench-results")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
GATEWAY_COUNT = int(os.environ.get("BENCH_STATUS_GATEWAYS", "1000"))
NODES_PER = 10
PUBLIC = 10
RUNS = 3
JSON = dict[str, Any]
HEARTBEAT = "2099-01-01T00:00:00Z"  # never stale while the benchmark runs


def gw_name(g: int) -> str:
    return f"gw-{g:04d}"


def node_name(g: int, i: int) -> str:
    return f"n-{g:04d}-{i}"


def _ip(g: int, i: int, base: str) -> str:
    k = g * NODES_PER + i
    return f"{base}.{k // 256}.{k % 256}"


def synthetic_cluster(gateways: int, nodes_per: int = NODES_PER, public: int = PUBLIC
                      ) -> tuple[list[JSON], list[tuple[JSON, JSON]], list[tuple[JSON, JSON]]]:
    """(Nodes, (Gateway, its status), (PathReport, its status)): every gateway active on its node 0, all healthy."""
    nodes: list[JSON] = []
    gws: list[tuple[JSON, JSON]] = []
    reports: list[tuple[JSON, JSON]] = []
    for g in range(gateways):
        exposed = g < public
        eps = [{"nodeName": node_name(g, i), "type": "tunnel", "port": 4500, "underNAT": not exposed}
               for i in range(nodes_per)]
        members = []
        for i in range(nodes_per):
            k = g * nodes_per + i
            cidr = f"10.{k // 256 % 256}.{k % 256}.0/24"
            nodes.append({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": node_name(g, i), "labels": {"raven.openyurt.io/gateway": gw_name(g)}},
                          "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                          "status": {"addresses": [{"type": "InternalIP", "address": _ip(g, i, "172.16")}],
                                     "conditions": [{"type": "Ready", "status": "True"}]}})
            members.append({"nodeName": node_name(g, i), "privateIP": _ip(g, i, "172.16"), "subnets": [cidr]})
        active = dict(eps[0])
        if exposed:
            active.update(publicIP=f"198.51.100.{g + 1}", publicPort=4500)
        spec: JSON = {"endpoints": eps, "tunnelConfig": {"Replicas": 1}}
        if exposed:
            spec["exposeType"] = "PublicIP"
        gws.append(({"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway", "metadata": {"name": gw_name(g)},
                     "spec": spec},
                    {"nodes": members, "activeEndpoints": [active],
                     "conditions": [{"type": "Valid", "status": "True", "reason": "SpecValid", "message": "",
                                     "lastTransitionTime": "2026-12-01T00:00:00Z"}]}))
    for g in range(gateways):
        peers = [p for p in range(gateways) if p != g] if g < public else list(range(min(public, gateways)))
        for i in range(nodes_per):
            if i == 0:
                targets = [{"kind": "peer", "gateway": gw_name(p), "node": node_name(p, 0), "address": "",
                            "state": "up", "since": "2026-12-01T00:00:00Z", "rttSeconds": 0.01 + p / 1e5,
                            "lossRatio": 0.0} for p in peers if p != g]
                role = "gateway"
            else:
                targets = [{"kind": "gateway", "gateway": gw_name(g), "node": node_name(g, 0), "address": "",
                            "state": "up", "since": "2026-12-01T00:00:00Z", "rttSeconds": 0.0003, "lossRatio": 0.0}]
                role = "member"
            name = node_name(g, i)
            reports.append(({"apiVersion": "health.raven-py.io/v1alpha1", "kind": "PathReport",
                             "metadata": {"name": name}, "spec": {"nodeName": name}},
                            {"gateway": gw_name(g), "role": role, "heartbeatTime": HEARTBEAT,
                             "probeIntervalSeconds": 0.2, "targets": targets}))
    return nodes, gws, reports


async def bounded(n: int, calls: list[Callable[[], Awaitable[object]]]) -> None:
    sem = asyncio.Semaphore(n)

    async def one(c: Callable[[], Awaitable[object]]) -> None:
        async with sem:
            await c()

    await asyncio.gather(*(one(c) for c in calls))


async def install_crds(client: KubeClient) -> None:
    for manifest in ("01-crd-gateways.yaml", "01-crd-pathreports.yaml"):
        for doc in yaml.safe_load_all((ROOT / "manifests" / manifest).read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                await client.create(CRDS, doc)


async def load(client: KubeClient, gateways: int, nodes_per: int = NODES_PER, public: int = PUBLIC) -> None:
    """Install the CRDs and write the synthetic cluster through the API, as the kubelet, controller and agents do."""
    await install_crds(client)
    nodes, gws, reports = synthetic_cluster(gateways, nodes_per, public)

    def with_status(res: Resource, obj: JSON, status: JSON) -> Callable[[], Awaitable[object]]:
        async def run() -> None:
            await client.create(res, obj)
            await client.merge_patch(res, obj["metadata"]["name"], {"status": status}, subresource="status")
        return run

    def create(res: Resource, obj: JSON) -> Callable[[], Awaitable[object]]:
        return lambda: client.create(res, obj)

    await bounded(32, [create(NODES, n) for n in nodes])
    await bounded(32, [with_status(GATEWAYS, g, s) for g, s in gws])
    await bounded(32, [with_status(PATHREPORTS, r, s) for r, s in reports])


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# Runs the CLI and prints its peak RSS (KiB) on stderr. A small process of its own: ru_maxrss of a child forked
# straight from this benchmark (which holds the API server's 20,000 objects) would report this process's size.
_PEAK_RSS = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")
peak_rss_kib: list[int] = []


async def run_cli(args: list[str], kubeconfig: str, rss: bool = False) -> tuple[float, bytes]:
    """One `raven ...` process, exec to exit (seconds), and its stdout. `rss`: run it under the wrapper instead
    (not timed: the wrapper's own start adds to the time) and add its peak RSS to `peak_rss_kib`."""
    raven = str(Path(sys.executable).parent / "raven")
    argv = [raven, *args, "--kubeconfig", kubeconfig]
    if rss:
        argv = [sys.executable, "-c", _PEAK_RSS, *argv]
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"raven {' '.join(args)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    if rss:
        peak_rss_kib.append(int(err.decode().strip().splitlines()[-1]))
    return elapsed, out


async def main() -> JSON:
    server = ApiServer("127.0.0.1", 0)
    await server.start()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"rvst-bench-status-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    kubeconfig = server.write_kubeconfig(tmp / "kubeconfig")
    client = KubeClient(await new_api_client(kubeconfig), timeout_s=120)
    try:
        t = time.perf_counter()
        await load(client, GATEWAY_COUNT)
        print(f"setup: {GATEWAY_COUNT} gateways, {GATEWAY_COUNT * NODES_PER} nodes and reports in "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        figures: JSON = {"gateways": GATEWAY_COUNT, "nodes": GATEWAY_COUNT * NODES_PER}
        for label, args in (("json", ["status", "-o", "json"]), ("text", ["status"]), ("graph_dot", ["graph"])):
            times: list[float] = []
            cpu: list[float] = []
            calls: Counter[tuple[str, str]] = Counter()
            out = b""
            for _ in range(RUNS):
                before = Counter(server.request_counts)
                cpu0 = children_cpu_s()
                elapsed, out = await run_cli(args, kubeconfig)
                times.append(elapsed)
                cpu.append(children_cpu_s() - cpu0)
                calls = Counter(server.request_counts)
                calls.subtract(before)
            await run_cli(args, kubeconfig, rss=True)
            figures[f"{label}_s_median"] = statistics.median(times)
            figures[f"{label}_s_min"] = min(times)
            # CPU seconds of the process: what the run costs, less dependent than wall time on a shared machine.
            figures[f"{label}_cpu_s_median"] = statistics.median(cpu)
            figures[f"{label}_api_calls"] = sum(calls.values())
            figures[f"{label}_calls_by_kind"] = {f"{v} {r}": n for (v, r), n in sorted(calls.items()) if n}
            figures[f"{label}_output_mb"] = len(out) / 1e6
            if label == "json":
                doc = json.loads(out)
                figures["pairs"] = len(doc["pairs"])
                figures["pairs_relayed"] = doc["summary"]["pairs"]["relay"]
                figures["pairs_up"] = doc["summary"]["pairHealth"]["up"]

        figures["cli_peak_rss_mb"] = max(peak_rss_kib) / 1024
        figures["load_average_1m"] = os.getloadavg()[0]  # the machine is shared: read the times with it

        # The same work in this process, split by stage (one run; the CLI figures above include Python's start).
        t0 = time.perf_counter()
        snap = await collect(kubeconfig)
        t1 = time.perf_counter()
        status = status_from(snap)
        t2 = time.perf_counter()
        sum(len(piece) for piece in iter_json(status, status_extras(snap)))
        t3 = time.perf_counter()
        render_status(status, Paint(False))
        t4 = time.perf_counter()
        render_graph(status)
        t5 = time.perf_counter()
        figures["stage_api_read_and_parse_s"] = t1 - t0
        figures["stage_build_status_s"] = t2 - t1
        figures["stage_json_s"] = t3 - t2
        figures["stage_text_s"] = t4 - t3
        figures["stage_dot_s"] = t5 - t4
        return figures
    finally:
        await client.close()
        await server.stop()


if __name__ == "__main__":
    result = asyncio.run(main())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "status.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
