"""Benchmark of the test API server: `python -m tests.benchmarks.bench_apiserver`.

The server runs as its own process (`python -m e2e.apiserver`), as in the end-to-end suite; the
benchmark drives it over HTTPS with aiohttp. It loads 10,000 Nodes and 1,000 Gateways, keeps 20 node
watchers open throughout, and measures: create throughput, full and paginated list latency, GET
throughput, and watch fan-out latency (write sent -> event delivered to each of the 20 watchers).

Baseline, measured in the same run: what the server would cost without its two encoding choices,
i.e. json.dumps of the whole 10k-node list per list request, and one json.dumps per watcher per event
instead of one shared encoding. Writes bench-results/apiserver.json.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.apiserver.crds import GROUP, VERSION, gateway, gateway_crd

NODES = int(os.environ.get("BENCH_NODES", "10000"))
GATEWAYS = int(os.environ.get("BENCH_GATEWAYS", "1000"))
WATCHERS = 20
CONCURRENCY = 32
FANOUT_WRITES = 200
GETS = 5000
REPEAT = 5


def node(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": f"node-{i:05d}", "labels": {
            "kubernetes.io/hostname": f"node-{i:05d}", "kubernetes.io/os": "linux",
            "raven.openyurt.io/gateway": f"gw-{i % GATEWAYS:04d}", "topology.kubernetes.io/zone": f"z{i % 7}"}},
        "spec": {"podCIDR": f"10.{i // 256 % 256}.{i % 256}.0/24", "podCIDRs": [f"10.{i // 256 % 256}.{i % 256}.0/24"]},
        "status": {
            "addresses": [{"type": "InternalIP", "address": f"172.16.{i // 256 % 256}.{i % 256}"},
                          {"type": "Hostname", "address": f"node-{i:05d}"}],
            "conditions": [{"type": t, "status": "False" if t != "Ready" else "True",
                            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "reason": f"Kubelet{t}", "message": f"kubelet reports {t}"}
                           for t in ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")],
            "nodeInfo": {"kubeletVersion": "v1.31.0", "osImage": "Debian GNU/Linux 12", "architecture": "amd64",
                         "containerRuntimeVersion": "containerd://1.7.0", "kernelVersion": "6.1.0"},
        },
    }


class Client:
    def __init__(self, kubeconfig: str) -> None:
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = cfg["clusters"][0]["cluster"]
        self.url = cluster["server"]
        ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        self.ssl = ctx
        self.headers = {"Authorization": f"Bearer {cfg['users'][0]['user']['token']}"}
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=CONCURRENCY * 2),
                                             headers=self.headers, timeout=aiohttp.ClientTimeout(total=None))

    async def raw(self, path: str) -> bytes:
        async with self.session.get(self.url + path) as r:
            payload = await r.read()
            if r.status >= 300:
                raise RuntimeError(f"GET {path} -> {r.status}: {payload[:300]!r}")
            return payload

    async def req(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        async with self.session.request(method, self.url + path, data=data,
                                        headers={"Content-Type": ctype} if data else None) as r:
            payload = await r.read()
            if r.status >= 300:
                raise RuntimeError(f"{method} {path} -> {r.status}: {payload[:300]!r}")
            return json.loads(payload)


async def bounded(items: list[Any], fn: Any) -> float:
    """Run fn over items with CONCURRENCY in flight; return wall seconds."""
    queue = list(reversed(items))
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            await fn(queue.pop())
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - started


class Watcher:
    def __init__(self, client: Client, rv: str) -> None:
        self.client = client
        self.rv = rv
        self.events = 0
        self.arrivals: dict[str, float] = {}  # resourceVersion -> monotonic arrival time
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        path = f"/api/v1/nodes?watch=true&allowWatchBookmarks=true&resourceVersion={self.rv}"
        async with self.client.session.get(self.client.url + path) as r:
            async for line in r.content:
                now = time.monotonic()
                ev = json.loads(line)
                if ev["type"] == "BOOKMARK":
                    continue
                self.events += 1
                self.arrivals[ev["object"]["metadata"]["resourceVersion"]] = now
                self.changed.set()

    async def wait_for(self, predicate: Any, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not predicate(self) and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def baselines(nodes: list[dict[str, Any]]) -> dict[str, float]:
    """What the server avoids: encoding the whole list per request, and one encoding per watcher per event."""
    full = {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": nodes}
    t = []
    for _ in range(REPEAT):
        s = time.perf_counter()
        json.dumps(full, separators=(",", ":")).encode()
        t.append(time.perf_counter() - s)
    cached = [json.dumps(n, separators=(",", ":")).encode() for n in nodes]
    c = []
    for _ in range(REPEAT):
        s = time.perf_counter()
        b'{"kind":"NodeList","items":[' + b",".join(cached) + b"]}"
        c.append(time.perf_counter() - s)
    ev = {"type": "MODIFIED", "object": nodes[0]}
    s = time.perf_counter()
    for _ in range(1000):
        for _ in range(WATCHERS):
            json.dumps(ev, separators=(",", ":")).encode()
    per_watcher = (time.perf_counter() - s) / 1000
    s = time.perf_counter()
    for _ in range(1000):
        line = json.dumps(ev, separators=(",", ":")).encode()
        for _ in range(WATCHERS):
            _ = line
    shared = (time.perf_counter() - s) / 1000
    return {"list_encode_whole_ms": 1000 * statistics.median(t), "list_join_cached_ms": 1000 * statistics.median(c),
            "fanout_encode_per_watcher_us": 1e6 * per_watcher, "fanout_encode_shared_us": 1e6 * shared}


async def run(kubeconfig: str) -> dict[str, Any]:
    c = Client(kubeconfig)
    try:
        await c.req("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", gateway_crd())
        rv = (await c.req("GET", "/api/v1/nodes?limit=1"))["metadata"]["resourceVersion"]
        watchers = [Watcher(c, rv) for _ in range(WATCHERS)]
        await asyncio.sleep(0.3)
        nodes = [node(i) for i in range(NODES)]

        async def create_node(n: dict[str, Any]) -> None:
            await c.req("POST", "/api/v1/nodes", n)
        t_nodes = await bounded(nodes, create_node)
        gws = [gateway(f"gw-{i:04d}", exposeType="", endpoints=[
            {"nodeName": f"node-{i:05d}", "type": "tunnel", "port": 4500}]) for i in range(GATEWAYS)]

        async def create_gw(g: dict[str, Any]) -> None:
            await c.req("POST", f"/apis/{GROUP}/{VERSION}/gateways", g)
        t_gws = await bounded(gws, create_gw)
        for w in watchers:
            await w.wait_for(lambda w: w.events >= NODES, 120)
        delivered = sum(w.events for w in watchers)

        # Timed up to the last byte received; the client's own json.loads is measured separately.
        full: list[float] = []
        decode: list[float] = []
        for _ in range(REPEAT):
            s = time.perf_counter()
            raw = await c.raw("/api/v1/nodes")
            full.append(time.perf_counter() - s)
            s = time.perf_counter()
            assert len(json.loads(raw)["items"]) == NODES
            decode.append(time.perf_counter() - s)
        paged: list[float] = []
        for _ in range(REPEAT):
            s = time.perf_counter()
            token, count = "", 0
            pages = []
            while True:
                raw = await c.raw(f"/api/v1/nodes?limit=500&continue={token}")
                pages.append(raw)
                tail = raw[:raw.index(b'"items"')]
                meta = json.loads(tail[:-1] + b"}")["metadata"]
                token = meta.get("continue", "")
                if not token:
                    break
            paged.append(time.perf_counter() - s)
            count = sum(len(json.loads(p)["items"]) for p in pages)
            assert count == NODES
        selected: list[float] = []
        for _ in range(REPEAT):
            s = time.perf_counter()
            sel = await c.req("GET", "/api/v1/nodes?labelSelector=raven.openyurt.io%2Fgateway%3Dgw-0007")
            selected.append(time.perf_counter() - s)
        gw_list: list[float] = []
        for _ in range(REPEAT):
            s = time.perf_counter()
            body = await c.req("GET", f"/apis/{GROUP}/{VERSION}/gateways")
            gw_list.append(time.perf_counter() - s)
            assert len(body["items"]) == GATEWAYS

        names = [f"node-{i % NODES:05d}" for i in range(GETS)]

        async def get(n: str) -> None:
            await c.req("GET", f"/api/v1/nodes/{n}")
        t_get = await bounded(names, get)

        # Fan-out: sequential label patches; each watcher records when the new resourceVersion arrives.
        lat: list[float] = []
        for i in range(FANOUT_WRITES):
            sent = time.monotonic()
            obj = await c.req("PATCH", f"/api/v1/nodes/node-{i:05d}", {"metadata": {"labels": {"bench": str(i)}}},
                              "application/merge-patch+json")
            rv_i = obj["metadata"]["resourceVersion"]
            for w in watchers:
                await w.wait_for(lambda w, rv=rv_i: rv in w.arrivals, 10)
            lat.extend(w.arrivals[rv_i] - sent for w in watchers if rv_i in w.arrivals)
        for w in watchers:
            w.task.cancel()
        return {
            "nodes": NODES, "gateways": GATEWAYS, "watchers": WATCHERS, "concurrency": CONCURRENCY,
            "create_nodes_per_s": NODES / t_nodes, "create_gateways_per_s": GATEWAYS / t_gws,
            "watch_events_delivered_during_load": delivered, "watch_events_expected": NODES * WATCHERS,
            "list_nodes_full_ms_p50": 1000 * statistics.median(full),
            "list_nodes_client_json_decode_ms_p50": 1000 * statistics.median(decode),
            "list_nodes_paginated_500_ms_p50": 1000 * statistics.median(paged),
            "list_nodes_label_selector_ms_p50": 1000 * statistics.median(selected),
            "list_nodes_label_selector_items": len(sel["items"]),
            "list_gateways_full_ms_p50": 1000 * statistics.median(gw_list),
            "get_node_per_s": GETS / t_get,
            "fanout_latency_ms_p50": 1000 * pct(lat, 50), "fanout_latency_ms_p99": 1000 * pct(lat, 99),
            "fanout_samples": len(lat), "fanout_samples_expected": FANOUT_WRITES * WATCHERS,
        }
    finally:
        await c.session.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-apiserver-") as tmp:
        kubeconfig = str(Path(tmp) / "kubeconfig")
        proc = subprocess.Popen([sys.executable, "-m", "e2e.apiserver", "--listen", "127.0.0.1:0",
                                 "--kubeconfig", kubeconfig, "--history-window", "50000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not Path(kubeconfig).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            results = asyncio.run(run(kubeconfig))
        finally:
            proc.terminate()
            proc.wait(10)
    base = baselines([node(i) for i in range(NODES)])
    results["baseline"] = base
    rows = [
        ("create Nodes (32 in flight)", f"{results['create_nodes_per_s']:.0f} /s"),
        ("create Gateways (32 in flight)", f"{results['create_gateways_per_s']:.0f} /s"),
        ("watch events delivered under load", f"{results['watch_events_delivered_during_load']}"
                                              f" / {results['watch_events_expected']}"),
        (f"list {NODES} Nodes, one request", f"{results['list_nodes_full_ms_p50']:.1f} ms"),
        ("  (client json.loads of that list)", f"{results['list_nodes_client_json_decode_ms_p50']:.1f} ms"),
        (f"list {NODES} Nodes, pages of 500", f"{results['list_nodes_paginated_500_ms_p50']:.1f} ms"),
        ("list Nodes by label selector", f"{results['list_nodes_label_selector_ms_p50']:.1f} ms"),
        (f"list {GATEWAYS} Gateways", f"{results['list_gateways_full_ms_p50']:.1f} ms"),
        ("GET Node (32 in flight)", f"{results['get_node_per_s']:.0f} /s"),
        (f"fan-out to {WATCHERS} watchers p50", f"{results['fanout_latency_ms_p50']:.2f} ms"),
        (f"fan-out to {WATCHERS} watchers p99", f"{results['fanout_latency_ms_p99']:.2f} ms"),
        ("baseline: json.dumps whole 10k list", f"{base['list_encode_whole_ms']:.1f} ms"),
        ("server: join cached per-object JSON", f"{base['list_join_cached_ms']:.1f} ms"),
        (f"baseline: encode event per watcher x{WATCHERS}", f"{base['fanout_encode_per_watcher_us']:.0f} us"),
        ("server: encode event once, share", f"{base['fanout_encode_shared_us']:.0f} us"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  value")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "apiserver.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
