"""Benchmark of an agent's start-up and memory: `python -m tests.benchmarks.bench_agent` (root; `make bench`).

A real `raven --mode=agent` process in its own network namespace (with its own charon), against the
test API server (in-process, on a thread in a third namespace, reached over a bridge) holding 100
Gateways of 2 nodes each, as the controller leaves them (statuses written). For a gateway node (the
active endpoint of its pool: 99 tunnels, VICI connections, routes) and a member node:
- exec -> /readyz 200, cold (kernel and charon cleaned by `raven --mode=agent --cleanup` first) and
  warm (a restart over the state the previous run left), median of the runs; aim <= 0.5 s;
- RSS when ready and after settling (VmRSS; and VmHWM, the peak); aim <= 60 MiB.
Every process runs with compiled bytecode, as in the image (`pip install` byte-compiles; this machine
sets PYTHONDONTWRITEBYTECODE, which would make each start compile Raven's sources again): a bytecode
cache in the lab's run dir (PYTHONPYCACHEPREFIX), filled by one unmeasured start of each executable.
Baselines in the same run, through the same `ip netns exec`: `python -c pass` and
`python -c "import aiohttp"` (exec -> exit), what any asyncio HTTP process pays before its own code.
`--compare PATH` (repeatable) runs the same measurements with another `raven` executable (e.g. an older
checkout's .venv/bin/raven) for a before/after in one run. Writes bench-results/agent.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from e2e.cluster import CRD_MANIFESTS, CRDS, ApiServerThread
from e2e.netlab import Lab, Netns
from raven.kube.client import GATEWAYS, NODES, KubeClient
from tests.unit.plan_cluster import gateway_json

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path("bench-results")
PREFIX = "rvag"
API_IP, API_PORT = "10.249.0.1", 6443
ROLES = {"gateway": ("n-000-0", "10.249.0.2"), "member": ("n-000-1", "10.249.0.3")}
HEALTH_PORT = 9650
AIM_READY_S, AIM_RSS_MIB = 0.5, 60.0
JSON = dict[str, Any]


def pool(g: int) -> list[tuple[str, str, list[str]]]:
    """Gateway g's two nodes: gw-000's are the agents' own (their bridge addresses), the rest unreachable."""
    out = []
    for i in range(2):
        k = g * 2 + i
        ip = ROLES["gateway" if i == 0 else "member"][1] if g == 0 else f"10.250.{g}.{i + 1}"
        out.append((f"n-{g:03d}-{i}", ip, [f"10.{64 + k // 256}.{k % 256}.0/24"]))
    return out


def cluster_objects(gateways: int) -> tuple[list[JSON], list[JSON]]:
    nodes: list[JSON] = []
    gws: list[JSON] = []
    for g in range(gateways):
        members = pool(g)
        for name, ip, subnets in members:
            nodes.append({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": name, "labels": {"raven.openyurt.io/gateway": f"gw-{g:03d}"}},
                          "spec": {"podCIDR": subnets[0], "podCIDRs": subnets},
                          "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                                     "conditions": [{"type": "Ready", "status": "True"}]}})
        created = f"2026-01-01T00:{g // 60:02d}:{g % 60:02d}Z"
        if g == 0:  # the cloud pool, exposed at its gateway node's address
            gws.append(gateway_json("gw-000", created, members, members[0][0], under_nat=False,
                                    expose_type="PublicIP", public_ip=members[0][1]))
        else:  # edge pools behind NAT: they initiate, so the agent's charon only waits (no IKE retransmits)
            gws.append(gateway_json(f"gw-{g:03d}", created, members, members[0][0], under_nat=True))
    return nodes, gws


async def populate(client: KubeClient, gateways: int) -> None:
    for manifest in CRD_MANIFESTS:
        await client.create(CRDS, yaml.safe_load(manifest.read_text()))
    nodes, gws = cluster_objects(gateways)
    for obj in nodes:
        await client.create(NODES, obj)
    for obj in gws:
        status = obj.pop("status")
        for key in ("resourceVersion", "uid", "generation", "creationTimestamp"):
            obj["metadata"].pop(key, None)
        await client.create(GATEWAYS, obj)
        await client.merge_patch(GATEWAYS, obj["metadata"]["name"], {"status": status}, subresource="status")


async def wait_ready(url: str, t0: float, limit_s: float = 60.0) -> tuple[float, float]:
    """Seconds from t0 (perf_counter) until `url` answers at all (the process serves HTTP: imports done),
    and until it answers 200."""
    serving = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as s:
        while time.perf_counter() - t0 < limit_s:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with s.get(url) as r:
                    serving = serving or time.perf_counter() - t0
                    if r.status == 200:
                        return serving, time.perf_counter() - t0
            await asyncio.sleep(0.005)
    raise TimeoutError(f"{url} not ready after {limit_s} s")


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (robust to a busy machine, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_bytecode(cache: Path, argv: list[str]) -> list[str]:
    """`argv` run with a bytecode cache that it may fill (see the module docstring)."""
    return ["env", "-u", "PYTHONDONTWRITEBYTECODE", f"PYTHONPYCACHEPREFIX={cache}", *argv]


def timed_exit(ns: Netns, argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(ns.exec_argv(argv), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


class Bench:
    def __init__(self, lab: Lab, api: ApiServerThread, kubeconfig: Path) -> None:
        self.lab = lab
        self.api = api
        self.kubeconfig = kubeconfig
        self.ns: dict[str, Netns] = {}
        self.pycache = lab.run_dir / "pycache"

    def setup_node(self, role: str) -> Netns:
        ip = ROLES[role][1]
        ns = self.lab.netns(role[:2])
        self.lab.veth(ns, "eth0", self.lab["api"], f"v-{role[:2]}")
        self.lab["api"].ip("link", "set", f"v-{role[:2]}", "master", "br0")
        ns.add_addr("eth0", f"{ip}/24")
        ns.enable_forwarding()
        ns.start_charon().wait_ready()
        (ns.run_dir / "psk").write_text("bench-psk-" + "0" * 32 + "\n")
        self.ns[role] = ns
        return ns

    def agent_argv(self, raven: str, role: str) -> list[str]:
        ns = self.ns[role]
        assert ns.charon is not None
        node = ROLES[role][0]
        return [*with_bytecode(self.pycache, [raven]), "--mode=agent", "--node-name", node,
                "--kubeconfig", str(self.kubeconfig), "--vici-socket", str(ns.charon.vici_socket),
                # PSK: a certificate needs a running signer (the controller), which is not what this measures;
                # the e2e tests cover the certificate path.
                "--ipsec-auth", "psk", "--psk-file", str(ns.run_dir / "psk"),
                "--log-level", "warning"]

    def cleanup(self, raven: str, role: str) -> None:
        self.ns[role].run([*self.agent_argv(raven, role), "--cleanup"], timeout=60)

    def start(self, raven: str, role: str) -> JSON:
        """One agent start: exec -> /readyz 200, RSS when ready and once settled; then SIGTERM."""
        ns = self.ns[role]
        ip = ROLES[role][1]
        addr = f"{ip}:{HEALTH_PORT}"
        argv = [*self.agent_argv(raven, role), "--health-addr", addr, "--metrics-addr", addr]
        t0 = time.perf_counter()
        proc = ns.popen(argv, name=f"agent-{role}")
        try:
            serving_s, ready_s = self.api.call(wait_ready(f"http://{addr}/readyz", t0), timeout=90)
            rss_ready = proc_kib(proc.pid, "VmRSS")
            cpu_ready = cpu_s(proc.pid)
            time.sleep(2.0)  # settled: the first reconcile's garbage collected, the informers idle
            rss = proc_kib(proc.pid, "VmRSS")
            hwm = proc_kib(proc.pid, "VmHWM")
        finally:
            proc.stop()
            ns.processes.remove(proc)
        return {"serving_s": serving_s, "ready_s": ready_s, "cpu_to_ready_s": cpu_ready,
                "rss_ready_mib": rss_ready / 1024, "rss_settled_mib": rss / 1024, "hwm_mib": hwm / 1024}


def _median(rows: list[JSON], key: str) -> float:
    return round(float(statistics.median(r[key] for r in rows)), 3)


def measure(bench: Bench, raven: str, runs: int) -> JSON:
    out: JSON = {}
    bench.start(raven, "member")  # unmeasured: fills the bytecode cache for this executable
    for role in ROLES:
        cold, warm = [], []
        for _ in range(runs):
            bench.cleanup(raven, role)
            cold.append(bench.start(raven, role))
            warm.append(bench.start(raven, role))
        out[role] = {
            "serving_s": _median(cold + warm, "serving_s"),
            "cold_ready_s": _median(cold, "ready_s"), "warm_ready_s": _median(warm, "ready_s"),
            "cold_cpu_to_ready_s": _median(cold, "cpu_to_ready_s"),
            "warm_cpu_to_ready_s": _median(warm, "cpu_to_ready_s"),
            "rss_ready_mib": _median(cold + warm, "rss_ready_mib"),
            "rss_settled_mib": _median(cold + warm, "rss_settled_mib"),
            "hwm_mib_max": round(max(r["hwm_mib"] for r in cold + warm), 1),
        }
        print(f"  {raven}: {role}: {out[role]}", file=sys.stderr, flush=True)
    return out


def main(gateways: int, runs: int, compare: list[str]) -> JSON:
    raven = str(ROOT / ".venv" / "bin" / "raven")
    with Lab(PREFIX) as lab:
        api_ns = lab.netns("api")
        api_ns.add_bridge("br0")
        api_ns.add_addr("br0", f"{API_IP}/24")
        kubeconfig = lab.run_dir / "kubeconfig"
        api = ApiServerThread(api_ns.name, API_IP, API_PORT, kubeconfig)
        api.start()
        try:
            api.api(lambda c: populate(c, gateways), timeout=300)
            bench = Bench(lab, api, kubeconfig)
            for role in ROLES:
                bench.setup_node(role)
            py = sys.executable
            member = bench.ns["member"]
            cached = [*with_bytecode(bench.pycache, [py]), "-c"]
            timed_exit(member, [*cached, "import aiohttp"])  # fills the cache
            base_pass = statistics.median(timed_exit(member, [*cached, "pass"]) for _ in range(runs * 2))
            base_aiohttp = statistics.median(timed_exit(member, [*cached, "import aiohttp"]) for _ in range(runs * 2))
            result: JSON = {
                "gateways": gateways, "runs": runs,
                "baseline_python_pass_s": round(base_pass, 3), "baseline_import_aiohttp_s": round(base_aiohttp, 3),
                "agent": measure(bench, raven, runs),
                "aims": {"ready_s": AIM_READY_S, "rss_mib": AIM_RSS_MIB},
            }
            if compare:
                result["compare"] = [{"raven": other, **measure(bench, other, runs)} for other in compare]
        finally:
            api.stop()
    return result


def report(res: JSON) -> None:
    print(f"bench_agent ({res['gateways']} gateways, median of {res['runs']} runs)")
    cols = [("agent", res["agent"])] + [(f"compare{i + 1}", c) for i, c in enumerate(res.get("compare", []))]
    print(f"  {'measure':<48}" + "".join(f"{name:>12}" for name, _ in cols) + "  verdict")
    for role in ROLES:
        for key, label, aim in (("serving_s", "exec -> serving HTTP (imports done) (s)", AIM_READY_S),
                                ("cold_ready_s", "exec -> ready, cold (s)", AIM_READY_S),
                                ("warm_ready_s", "exec -> ready, restart (s)", AIM_READY_S),
                                ("cold_cpu_to_ready_s", "CPU used until ready, cold (s)", AIM_READY_S),
                                ("warm_cpu_to_ready_s", "CPU used until ready, restart (s)", AIM_READY_S),
                                ("rss_ready_mib", "RSS when ready (MiB)", AIM_RSS_MIB),
                                ("rss_settled_mib", "RSS settled (MiB)", AIM_RSS_MIB),
                                ("hwm_mib_max", "peak RSS, VmHWM (MiB)", AIM_RSS_MIB)):
            vals = [c[role][key] for _, c in cols]
            verdict = "ok" if vals[0] <= aim else "MISSED"
            print(f"  {role + ': ' + label:<48}" + "".join(f"{v:>12.3f}" if key.endswith("_s") else f"{v:>12.1f}"
                                                          for v in vals) + f"  {verdict} (aim <= {aim})")
    print(f"  {'baseline: python -c pass (s)':<48}{res['baseline_python_pass_s']:>12.3f}")
    label = 'baseline: python -c "import aiohttp" (s)'
    print(f"  {label:<48}{res['baseline_import_aiohttp_s']:>12.3f}")
    for i, c in enumerate(res.get("compare", [])):
        print(f"  (compare{i + 1}: {c['raven']})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compare", action="append", default=[], help="another raven executable to measure the same way")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_agent needs root (network namespaces)", file=sys.stderr)
        sys.exit(2)
    result = main(args.gateways, args.runs, args.compare)
    report(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent.json").write_text(json.dumps(result, indent=2) + "\n")
