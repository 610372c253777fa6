"""The two tunnel drivers side by side: pod-to-pod TCP throughput and ping RTT across pools, IPsec (charon,
kernel-libipsec) and WireGuard (wireguard-go), in one run. Both are userspace data planes here.

Two Raven clusters of the default topology are up at once (prefixes rvwgi and rvwgw), every case once per
round, rounds interleaved so the shared CPU's noise falls on both drivers alike. Cases per driver:

- `direct`: pod on gw-edge-a's active node -> pod on gw-cloud's (one tunnel hop);
- `relayed`: gw-edge-a -> gw-edge-b (both behind NAT): through gw-cloud (two tunnel hops);
- `member`: a member of edge-a -> a member of cloud (raven0, raven1, raven0);

and `wireguard_bare`: a second, bare wireguard-go device over the very underlay path of `wireguard_direct`
(same two nodes), between two "pod" namespaces hung off them, with allowed IPs = the remote pod subnet and no
VXLAN: the design Raven did not choose (50 bytes less per packet, but allowed IPs that move with every path
change); its ratio to `wireguard_direct` is what the VXLAN layer costs.

Per case: Mbit/s (iperf3, one TCP stream, median of the rounds), ping RTT (100 echoes 10 ms apart, median of
the rounds' averages), the daemons' CPU per Gbit (charon or wireguard-go, every one of the lab: utime+stime over
the transfer), retransmits, and IP fragments created/reassembled (all namespaces of the lab).

Run as root: `python -m tests.benchmarks.bench_drivers [--rounds 3] [--seconds 5]`; prints a table and writes
bench-results/drivers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster import RavenCluster
from e2e.iperf import cpu_seconds, delta, iperf3_path, iperf3_run, snmp
from e2e.netlab import Netns
from e2e.probe import ping
from raven.dataplane.wireguard import SOCKET_DIR, WireGuardGo, public_key
from tests.benchmarks.bench_throughput import bench_pods

PREFIXES = {"ipsec": "rvwgi", "wireguard": "rvwgw"}
COUNTERS = ("IpFragCreates", "IpReasmReqds")
BARE_PORT = 4600


@dataclass
class Case:
    name: str
    src: Netns
    dst: Netns
    dst_ip: str
    daemons: Callable[[], list[int]]  # pids whose CPU the case costs
    namespaces: list[Netns]
    runs: list[dict[str, float]] = field(default_factory=list)


def _netns_pids(ns: str, comm: str) -> list[int]:
    """The processes named `comm` in namespace `ns` (`ip netns pids`)."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout.split()
    found = []
    for pid in out:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                found.append(int(pid))
        except OSError:
            continue
    return found


def _daemons(rc: RavenCluster, driver: str) -> Callable[[], list[int]]:
    nodes = sorted(rc.registered)
    if driver == "ipsec":
        return lambda: [rc.charon(n).process.pid for n in nodes]
    return lambda: [p for n in nodes for p in _netns_pids(rc.cl.nodes[n].netns.name, "wireguard-go")]


def _cases(rc: RavenCluster, driver: str) -> list[Case]:
    gw = rc.active_gateway_node
    spaces = [rc.cl.nodes[n].netns for n in sorted(rc.registered)]
    daemons = _daemons(rc, driver)

    def pods(src: str, dst: str, name: str) -> Case:
        s, d = rc.cl.nodes[src].pods[0], rc.cl.nodes[dst].pods[0]
        return Case(f"{driver}_{name}", s.netns, d.netns, d.ip, daemons, spaces)

    return [pods(gw("gw-edge-a"), gw("gw-cloud"), "direct"), pods(gw("gw-edge-a"), gw("gw-edge-b"), "relayed"),
            pods(rc.member_node("edge-a"), rc.member_node("cloud"), "member")]


def _bare_wireguard(rc: RavenCluster) -> tuple[Case, Callable[[], None]]:
    """A bare wireguard-go tunnel (allowed IPs = the pod subnet, no VXLAN) between the direct case's nodes."""
    a_node, b_node = rc.cl.nodes[rc.active_gateway_node("gw-edge-a")], rc.cl.nodes[rc.active_gateway_node("gw-cloud")]
    pa, pb = bench_pods(rc, a_node.netns, b_node.netns, ("wpa", "wpb"))
    keys = {n: os.urandom(32) for n in ("a", "b")}
    procs = {n: WireGuardGo(f"rvwgb-{n}", netns=ns.netns.name) for n, ns in (("a", a_node), ("b", b_node))}
    underlay_mtu = 1500

    async def up() -> None:
        for p in procs.values():
            p.mtu = underlay_mtu - 60
            await p.ensure()
        pub = {n: base64.b64decode(public_key(k)).hex() for n, k in keys.items()}
        await procs["a"].uapi.set([f"private_key={keys['a'].hex()}", f"listen_port={BARE_PORT}",
                                   f"public_key={pub['b']}", f"endpoint={b_node.ip}:{BARE_PORT}",
                                   "persistent_keepalive_interval=25", "allowed_ip=10.202.0.0/24"])
        await procs["b"].uapi.set([f"private_key={keys['b'].hex()}", f"listen_port={BARE_PORT}",
                                   f"public_key={pub['a']}", "allowed_ip=10.201.0.0/24"])

    loop = asyncio.new_event_loop()  # one loop for the daemons' whole life (their child watchers live in it)
    loop.run_until_complete(up())
    # The Raven table is consulted first: the bench subnets are not in it, so main routes them here.
    a_node.netns.ip("route", "add", "10.202.0.0/24", "dev", "rvwgb-a")
    b_node.netns.ip("route", "add", "10.201.0.0/24", "dev", "rvwgb-b")
    deadline = time.monotonic() + 30  # a lost first initiation is retried after 5 s (REKEY_TIMEOUT)
    while not ping(pa, "10.202.0.2", count=1, wait=1).ok:
        if time.monotonic() > deadline:
            raise RuntimeError("no ping through the bare WireGuard tunnel")

    def close() -> None:
        async def down() -> None:
            for p in procs.values():
                await p.stop()
                (SOCKET_DIR / f"{p.ifname}.log").unlink(missing_ok=True)

        loop.run_until_complete(down())
        loop.close()

    spaces = [rc.cl.nodes[n].netns for n in sorted(rc.registered)]

    def daemons() -> list[int]:
        return [p.pid for p in procs.values() if p.pid is not None]

    return Case("wireguard_bare", pa, pb, "10.202.0.2", daemons, [pa, pb, *spaces]), close


def _measure(case: Case, seconds: float, port: int) -> dict[str, float]:
    before = [snmp(ns) for ns in case.namespaces]
    pids = case.daemons()
    cpu0 = sum(cpu_seconds(p) for p in pids)
    t = iperf3_run(case.src, case.dst, case.dst_ip, port, seconds=seconds, name=f"drv-{case.name}")
    cpu1 = sum(cpu_seconds(p) for p in pids)
    moved = dict.fromkeys(COUNTERS, 0)
    for ns, b in zip(case.namespaces, before, strict=True):
        for k, v in delta(b, snmp(ns), COUNTERS).items():
            moved[k] += v
    rtt = ping(case.src, case.dst_ip, count=100, interval=0.01, wait=1)
    gbit = t.bytes * 8 / 1e9
    return {"mbit_s": t.bits_per_second / 1e6, "retransmits": t.retransmits,
            "daemon_cpu_s_per_gbit": (cpu1 - cpu0) / gbit if gbit else 0.0,
            "rtt_ms": rtt.rtt_avg_ms if rtt.rtt_avg_ms is not None else float("nan"),
            "ping_loss": rtt.loss, "frag_creates": moved["IpFragCreates"], "reasm_reqds": moved["IpReasmReqds"]}


def _summary(case: Case) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in case.runs)

    return {"mbit_s": med("mbit_s"), "mbit_s_runs": [round(r["mbit_s"], 1) for r in case.runs],
            "rtt_ms": med("rtt_ms"), "daemon_cpu_s_per_gbit": med("daemon_cpu_s_per_gbit"),
            "retransmits": med("retransmits"), "ping_loss": max(r["ping_loss"] for r in case.runs),
            "frag_creates": sum(r["frag_creates"] for r in case.runs),
            "reasm_reqds": sum(r["reasm_reqds"] for r in case.runs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_drivers")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_drivers needs root (network namespaces)", file=sys.stderr)
        return 2
    iperf3_path()
    clusters = {d: RavenCluster("default", prefix=p, vpn_driver=d, controllers=1) for d, p in PREFIXES.items()}
    closers: list[Callable[[], None]] = [c.close for c in clusters.values()]
    cases: list[Case] = []
    try:
        for rc in clusters.values():
            rc.start()
        for d, rc in clusters.items():
            rc.wait_converged(timeout=180)
            cases += _cases(rc, d)
        bare, close_bare = _bare_wireguard(clusters["wireguard"])
        closers.insert(0, close_bare)
        cases.append(bare)
        # The same path under both drivers one after the other (then the bare reference after WireGuard's direct).
        order = ["ipsec_direct", "wireguard_direct", "wireguard_bare", "ipsec_relayed", "wireguard_relayed",
                 "ipsec_member", "wireguard_member"]
        cases.sort(key=lambda c: order.index(c.name))
        for rnd in range(args.rounds):
            for i, case in enumerate(cases):
                r = _measure(case, args.seconds, 18400 + i)
                case.runs.append(r)
                print(f"round {rnd + 1} {case.name:<18} {r['mbit_s']:8.1f} Mbit/s  rtt {r['rtt_ms']:6.3f} ms  "
                      f"cpu/Gbit {r['daemon_cpu_s_per_gbit']:5.2f} s  retr {r['retransmits']:5.0f}  frags "
                      f"{r['frag_creates']:.0f}/{r['reasm_reqds']:.0f}", flush=True)
    finally:
        for close in closers:
            try:
                close()
            except Exception as exc:  # the rest must still be closed
                print(f"cleanup step failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    results = {c.name: _summary(c) for c in cases}
    by_name = {c.name: c for c in cases}
    for kind in ("direct", "relayed", "member"):
        w, i = by_name[f"wireguard_{kind}"], by_name[f"ipsec_{kind}"]
        ratios = [a["mbit_s"] / b["mbit_s"] for a, b in zip(w.runs, i.runs, strict=True)]
        results[f"wireguard_{kind}"]["ratio_to_ipsec"] = statistics.median(ratios)
    ratios = [a["mbit_s"] / b["mbit_s"] for a, b in zip(by_name["wireguard_direct"].runs,
                                                       by_name["wireguard_bare"].runs, strict=True)]
    results["wireguard_direct"]["ratio_to_wireguard_bare"] = statistics.median(ratios)
    print()
    print(f"{'case':<18} {'Mbit/s':>8} {'RTT ms':>8} {'daemon s/Gbit':>14} {'retrans':>8} {'frags':>6} {'ratio':>22}")
    for name, r in results.items():
        ratio = "; ".join(f"{v:.2f}x {k.removeprefix('ratio_to_')}" for k, v in r.items() if k.startswith("ratio_"))
        print(f"{name:<18} {r['mbit_s']:>8.1f} {r['rtt_ms']:>8.3f} {r['daemon_cpu_s_per_gbit']:>14.2f} "
              f"{r['retransmits']:>8.0f} {r['frag_creates'] + r['reasm_reqds']:>6d} {ratio:>22}")
    print(f"(median of {args.rounds} rounds of {args.seconds:g} s; RTT: 100 echoes 10 ms apart; daemon CPU: every "
          "charon or wireguard-go of the lab)")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "drivers.json").write_text(json.dumps({"rounds": args.rounds, "seconds": args.seconds,
                                                  "cases": results}, indent=2))
    print(f"wrote {out / 'drivers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
