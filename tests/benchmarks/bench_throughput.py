"""Data-plane throughput: Raven's cross-pool paths beside a bare charon tunnel, measured in the same run.

Cases (iperf3, TCP, one stream, pod to pod unless said; every case once per round, rounds interleaved so
the shared CPU's noise falls on all of them alike):

- `underlay`: node to node on the Raven lab's underlay (edge-a-1 -> cloud-1 through the NAT router), no
  tunnel: what the namespaces and veths carry by themselves;
- `bare`: a policy-based charon tunnel (kernel-libipsec, the proposals Raven configures by default,
  UDP-encapsulated) between two gateway namespaces, a "pod" namespace behind each, one plain router between
  them: the reference for a direct pair;
- `bare_2hop`: the same, through a relay charon (A -> R -> B, two tunnels, ESP decrypted and re-encrypted
  at R): the reference for a relayed pair;
- `direct`: Raven, pod on gw-edge-a's active node -> pod on gw-cloud's (VXLAN in ESP, one tunnel);
- `relayed`: Raven, gw-edge-a -> gw-edge-b (both NAT'd): through gw-cloud;
- `member`: Raven, a member of edge-a -> a member of cloud (raven0, raven1, raven0);
- `bare_path`: a bare tunnel like `bare` but over the very underlay path of `member` (edge-a's member, behind
  the NAT router, to cloud's member, on those nodes' charons): the reference for `member`, and what the lab's
  routers and NAT cost the bare tunnel (its ratio to `bare`).

Per case: Mbit/s (median of the rounds; the ratio to the reference is the median of per-round ratios, each
Raven case measured right after its reference), charon CPU per Gbit (utime+stime of every charon of the lab over
the transfer / Gbit carried), TCP retransmits (iperf3), IP fragments created and reassemblies requested (all
namespaces of the lab), UDP receive-buffer drops (`UdpRcvbufErrors`), and the ratio to the reference.
Targets (issue 12): direct >= 0.9x bare, relayed >= 0.8x bare_2hop, zero fragments everywhere.

Run as root: `python -m tests.benchmarks.bench_throughput [--rounds 3] [--seconds 5]`; prints a table and
writes bench-results/throughput.json. `--charon-rcvbuf BYTES` gives every charon's UDP sockets (both labs alike)
that receive buffer before measuring: strongSwan has no option for it and `net.core.rmem_default` cannot be
set inside a network namespace, so the bench sets it from outside (`pidfd_getfd` + `SO_RCVBUFFORCE`), to measure
what the host-wide sysctl would be worth (docs/architecture.md "Throughput and MTU").
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster import RavenCluster
from e2e.iperf import cpu_seconds, delta, iperf3_path, iperf3_run, snmp
from e2e.netlab import Charon, Lab, Netns
from raven.dataplane.mtu import DEFAULT_ESP_PROPOSALS

PREFIX = "rvtp"  # the Raven cluster
BARE_PREFIX = "rvtb"  # the bare tunnels
PSK = "rvtb-bench-psk-0123456789abcdef"
IKE_PROPOSALS = ["aes256-sha256-modp2048"]  # raven's --ike-proposals default
ESP_PROPOSALS = list(DEFAULT_ESP_PROPOSALS)  # raven's --esp-proposals default
COUNTERS = ("IpFragCreates", "IpReasmReqds", "UdpRcvbufErrors")


@dataclass
class Case:
    name: str
    src: Netns
    dst: Netns
    dst_ip: str
    charons: list[Charon]  # whose CPU the case costs
    namespaces: list[Netns]  # whose counters are summed
    runs: list[dict[str, float]] = field(default_factory=list)


# --- the bare tunnels ------------------------------------------------------------------------------------


def _conn(name: str, local: str, remote: str, local_ts: str, remote_ts: str, initiator: bool) -> dict[str, Any]:
    return {name: {
        "version": 2, "local_addrs": [local], "remote_addrs": [remote], "proposals": IKE_PROPOSALS,
        "encap": "yes", "mobike": "no", "dpd_delay": "10s", "unique": "replace",
        "local": {"auth": "psk", "id": local}, "remote": {"auth": "psk", "id": remote},
        "children": {"c": {"mode": "tunnel", "local_ts": [local_ts], "remote_ts": [remote_ts],
                           "esp_proposals": ESP_PROPOSALS, "start_action": "none"}},
    }}


def _load(charon: Charon, conns: list[dict[str, Any]], ids: list[str]) -> None:
    with charon.session() as s:
        for c in conns:
            s.load_conn(c)
        s.load_shared({"type": "IKE", "data": PSK, "owners": ids})


def _initiate(charon: Charon, name: str) -> None:
    with charon.session() as s:
        for _ in s.initiate({"ike": name, "child": "c", "timeout": 15000}):
            pass


def _bare_chain(lab: Lab, tag: str, relay: bool) -> Case:
    """pod-a -- gw-a -- r -- gw-b -- pod-b; with `relay`, r runs a charon and is a tunnel hop (two tunnels)."""
    pa, a, r, b, pb = lab.netns_many([f"{tag}pa", f"{tag}a", f"{tag}r", f"{tag}b", f"{tag}pb"])
    lab.veth(pa, "eth0", a, "pod0")
    lab.veth(a, "eth0", r, "eth0")
    lab.veth(r, "eth1", b, "eth0")
    lab.veth(b, "pod0", pb, "eth0")
    pa.ip_batch(["addr add 10.1.0.2/24 dev eth0", "route add default via 10.1.0.1"])
    pb.ip_batch(["addr add 10.2.0.2/24 dev eth0", "route add default via 10.2.0.1"])
    a.ip_batch(["addr add 10.1.0.1/24 dev pod0", "addr add 172.31.1.1/24 dev eth0",
                "route add 172.31.2.0/24 via 172.31.1.2"])
    b.ip_batch(["addr add 10.2.0.1/24 dev pod0", "addr add 172.31.2.1/24 dev eth0",
                "route add 172.31.1.0/24 via 172.31.2.2"])
    r.ip_batch(["addr add 172.31.1.2/24 dev eth0", "addr add 172.31.2.2/24 dev eth1"])
    for ns in (a, r, b):
        ns.enable_forwarding()
    ca, cb = a.start_charon(), b.start_charon()
    charons = [ca, cb]
    if not relay:
        _load(ca, [_conn("t", "172.31.1.1", "172.31.2.1", "10.1.0.0/24", "10.2.0.0/24", True)],
              ["172.31.1.1", "172.31.2.1"])
        _load(cb, [_conn("t", "172.31.2.1", "172.31.1.1", "10.2.0.0/24", "10.1.0.0/24", False)],
              ["172.31.1.1", "172.31.2.1"])
        _initiate(ca, "t")
    else:
        # libipsec (5.9.8) installs its route with a source inside the local selector: the relay holds one
        # address in each pod subnet (ENVIRONMENT.md).
        r.ip_batch(["addr add 10.1.0.254/32 dev lo", "addr add 10.2.0.254/32 dev lo"])
        cr = r.start_charon()
        charons.append(cr)
        _load(ca, [_conn("t", "172.31.1.1", "172.31.1.2", "10.1.0.0/24", "10.2.0.0/24", True)],
              ["172.31.1.1", "172.31.1.2"])
        _load(cr, [_conn("ta", "172.31.1.2", "172.31.1.1", "10.2.0.0/24", "10.1.0.0/24", False),
                   _conn("tb", "172.31.2.2", "172.31.2.1", "10.1.0.0/24", "10.2.0.0/24", True)],
              ["172.31.1.1", "172.31.1.2", "172.31.2.1", "172.31.2.2"])
        _load(cb, [_conn("t", "172.31.2.1", "172.31.2.2", "10.2.0.0/24", "10.1.0.0/24", False)],
              ["172.31.2.1", "172.31.2.2"])
        _initiate(ca, "t")
        _initiate(cr, "tb")
    _wait_ping(pa, "10.2.0.2")
    return Case("bare_2hop" if relay else "bare", pa, pb, "10.2.0.2", charons, [pa, a, r, b, pb])


def _wait_ping(ns: Netns, dst: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.run(["ping", "-n", "-q", "-c", "1", "-W", "1", dst], check=False).returncode == 0:
            return
    raise RuntimeError(f"{ns.name}: no ping to {dst} through the bare tunnel")


def bench_pods(rc: RavenCluster, src: Netns, dst: Netns, names: tuple[str, str]) -> tuple[Netns, Netns]:
    """Two "pod" namespaces hung off two nodes of the Raven lab (10.201.0.2 behind `src`, 10.202.0.2 behind
    `dst`, each node forwarding for its pod over `bench0`), for a bare tunnel between those nodes."""
    pa, pb = rc.cl.lab.netns_many(list(names))
    rc.cl.lab.veth(pa, "eth0", src, "bench0")
    rc.cl.lab.veth(pb, "eth0", dst, "bench0")
    pa.ip_batch(["addr add 10.201.0.2/24 dev eth0", "route add default via 10.201.0.1"])
    pb.ip_batch(["addr add 10.202.0.2/24 dev eth0", "route add default via 10.202.0.1"])
    src.ip_batch(["addr add 10.201.0.1/24 dev bench0"])
    dst.ip_batch(["addr add 10.202.0.1/24 dev bench0"])
    for ns in (src, dst):
        ns.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv4.conf.bench0.rp_filter": 0})
    return pa, pb


def _bare_on_raven_path(rc: RavenCluster) -> Case:
    """A bare tunnel over exactly the underlay path of the `member` case (a member of edge-a, behind the NAT
    router, to a member of cloud), between two "pod" namespaces hung off those nodes, on the nodes' own
    charons (Raven plans no IPsec on members; its agent touches only `raven-*` connections and keys)."""
    src_node, dst_node = rc.cl.nodes[rc.member_node("edge-a")], rc.cl.nodes[rc.member_node("cloud")]
    pa, pb = bench_pods(rc, src_node.netns, dst_node.netns, ("bpa", "bpb"))
    ca, cb = rc.charon(src_node.name), rc.charon(dst_node.name)
    ids = ["bench-a", "bench-b"]
    a = _conn("bench", src_node.ip, dst_node.ip, "10.201.0.0/24", "10.202.0.0/24", True)
    b = _conn("bench", dst_node.ip, "%any", "10.202.0.0/24", "10.201.0.0/24", False)
    a["bench"]["local"]["id"], a["bench"]["remote"]["id"] = ids
    b["bench"]["local"]["id"], b["bench"]["remote"]["id"] = ids[::-1]
    _load(ca, [a], ids)
    _load(cb, [b], ids)
    _initiate(ca, "bench")
    _wait_ping(pa, "10.202.0.2")
    spaces = [rc.cl.nodes[n].netns for n in sorted(rc.registered)]
    return Case("bare_path", pa, pb, "10.202.0.2", [rc.charon(n) for n in sorted(rc.registered)], [pa, pb, *spaces])


# --- the Raven cases -------------------------------------------------------------------------------------


def _raven_cases(rc: RavenCluster) -> list[Case]:
    gw = rc.active_gateway_node
    nodes = sorted(rc.registered)
    charons = [rc.charon(n) for n in nodes]
    spaces = [rc.cl.nodes[n].netns for n in nodes]

    def pods(src: str, dst: str, name: str) -> Case:
        s, d = rc.cl.nodes[src].pods[0], rc.cl.nodes[dst].pods[0]
        return Case(name, s.netns, d.netns, d.ip, charons, spaces)

    under_src, under_dst = rc.cl.nodes[gw("gw-edge-a")], rc.cl.nodes[gw("gw-cloud")]
    return [
        Case("underlay", under_src.netns, under_dst.netns, under_dst.ip, charons, spaces),
        pods(gw("gw-edge-a"), gw("gw-cloud"), "direct"),
        pods(gw("gw-edge-a"), gw("gw-edge-b"), "relayed"),
        pods(rc.member_node("edge-a"), rc.member_node("cloud"), "member"),
    ]


# --- charon's receive buffer ----------------------------------------------------------------------------

SYS_PIDFD_GETFD = 438  # the same number on every architecture (added after the syscall tables were unified)
SO_RCVBUFFORCE = 33


def set_rcvbuf(pid: int, size: int) -> int:
    """Give every UDP socket of process `pid` a receive buffer of `size` bytes; returns how many were set."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    done = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            dup = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if dup < 0:
                raise OSError(ctypes.get_errno(), f"pidfd_getfd({pid}, {fd})")
            sock = socket.socket(fileno=dup)
            try:
                if sock.type == socket.SOCK_DGRAM and sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                    done += 1
            finally:
                sock.close()  # our duplicate only: charon's descriptor stays open
    finally:
        os.close(pidfd)
    return done


# --- measuring -------------------------------------------------------------------------------------------


def _measure(case: Case, seconds: float, port: int) -> dict[str, float]:
    before = [snmp(ns) for ns in case.namespaces]
    cpu0 = sum(cpu_seconds(c.process.pid) for c in case.charons)
    t = iperf3_run(case.src, case.dst, case.dst_ip, port, seconds=seconds, name=f"tp-{case.name}")
    cpu1 = sum(cpu_seconds(c.process.pid) for c in case.charons)
    moved = {k: 0 for k in COUNTERS}
    for ns, b in zip(case.namespaces, before, strict=True):
        for k, v in delta(b, snmp(ns), COUNTERS).items():
            moved[k] += v
    gbit = t.bytes * 8 / 1e9
    return {"mbit_s": t.bits_per_second / 1e6, "bytes": t.bytes, "retransmits": t.retransmits,
            "charon_cpu_s": cpu1 - cpu0, "charon_cpu_s_per_gbit": (cpu1 - cpu0) / gbit if gbit else 0.0,
            "frag_creates": moved["IpFragCreates"], "reasm_reqds": moved["IpReasmReqds"],
            "udp_rcvbuf_errors": moved["UdpRcvbufErrors"]}


def _summary(case: Case) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in case.runs)

    return {"mbit_s": med("mbit_s"), "mbit_s_runs": [round(r["mbit_s"], 1) for r in case.runs],
            "charon_cpu_s_per_gbit": med("charon_cpu_s_per_gbit"), "retransmits": med("retransmits"),
            "frag_creates": sum(r["frag_creates"] for r in case.runs),
            "reasm_reqds": sum(r["reasm_reqds"] for r in case.runs),
            "udp_rcvbuf_errors": med("udp_rcvbuf_errors")}


REFERENCE = {"direct": "bare", "member": "bare_path", "relayed": "bare_2hop", "bare_2hop": "bare", "bare_path": "bare"}
ALSO = {"direct": "bare_path"}  # a second reference: the same underlay path as Raven's pairs
TARGET = {"direct": 0.9, "relayed": 0.8}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_throughput")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--agent-arg", action="append", default=[], help="extra agent flag (e.g. for comparisons)")
    ap.add_argument("--prefix", default=PREFIX,
                    help=f"lab prefix of the Raven cluster; the bare tunnels' lab is PREFIX + 'b' (default {PREFIX}, "
                         f"{BARE_PREFIX}): another prefix lets a second bench run beside this one")
    ap.add_argument("--charon-rcvbuf", type=int, default=0,
                    help="receive buffer (bytes) for every charon's UDP sockets, both labs (default: the host's)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_throughput needs root (network namespaces)", file=sys.stderr)
        return 2
    iperf3_path()
    only = {s for s in args.only.split(",") if s}
    lab = Lab(BARE_PREFIX if args.prefix == PREFIX else f"{args.prefix}b")
    rc = RavenCluster("default", prefix=args.prefix, agent_args=args.agent_arg)
    closers: list[Callable[[], None]] = [lab.close, rc.close]
    try:
        cases = [_bare_chain(lab, "d", relay=False), _bare_chain(lab, "t", relay=True)]
        rc.start()
        rc.wait_converged(timeout=120)
        cases += _raven_cases(rc)
        cases.append(_bare_on_raven_path(rc))
        # Each Raven case right after its reference (see the ratios below).
        order = ["underlay", "bare", "direct", "bare_path", "member", "bare_2hop", "relayed"]
        cases = sorted((c for c in cases if not only or c.name in only), key=lambda c: order.index(c.name))
        if args.charon_rcvbuf:
            pids = sorted({ch.process.pid for c in cases for ch in c.charons})
            n = sum(set_rcvbuf(pid, args.charon_rcvbuf) for pid in pids)
            print(f"charon receive buffer {args.charon_rcvbuf} bytes on {n} sockets of {len(pids)} charons", flush=True)
        for rnd in range(args.rounds):
            for i, case in enumerate(cases):
                r = _measure(case, args.seconds, 18300 + i)
                case.runs.append(r)
                print(f"round {rnd + 1} {case.name:<10} {r['mbit_s']:8.1f} Mbit/s  cpu/Gbit "
                      f"{r['charon_cpu_s_per_gbit']:5.2f} s  retr {r['retransmits']:5.0f}  frags "
                      f"{r['frag_creates']:.0f}/{r['reasm_reqds']:.0f}  rcvbuf {r['udp_rcvbuf_errors']:.0f}",
                      flush=True)
    finally:
        for close in closers:
            close()

    results = {c.name: _summary(c) for c in cases}
    by_name = {c.name: c for c in cases}
    for name, ref in [*REFERENCE.items(), *ALSO.items()]:
        if name in results and ref in results:
            # Per round, against the reference measured a few seconds apart; then the median: the load other
            # work puts on a shared machine drifts over minutes, and a ratio of medians would carry it.
            ratios = [a["mbit_s"] / b["mbit_s"] for a, b in zip(by_name[name].runs, by_name[ref].runs, strict=True)]
            results[name][f"ratio_to_{ref}"] = statistics.median(ratios)
            results[name][f"ratio_to_{ref}_runs"] = [round(r, 2) for r in ratios]
            results[name][f"cpu_ratio_to_{ref}"] = (results[name]["charon_cpu_s_per_gbit"]
                                                    / results[ref]["charon_cpu_s_per_gbit"])
    print()
    print(f"{'case':<10} {'Mbit/s':>8} {'ratio':>14} {'charon s/Gbit':>14} {'retrans':>8} {'frags':>7} "
          f"{'reasm':>7} {'rcvbuf':>7}")
    for name, r in results.items():
        base = REFERENCE.get(name)
        ratio = f"{r[f'ratio_to_{base}']:.2f}x {base}" if base and f"ratio_to_{base}" in r else "-"
        print(f"{name:<10} {r['mbit_s']:>8.1f} {ratio:>14} {r['charon_cpu_s_per_gbit']:>14.2f} "
              f"{r['retransmits']:>8.0f} {r['frag_creates']:>7d} {r['reasm_reqds']:>7d} {r['udp_rcvbuf_errors']:>7.0f}")
    aims = []
    for name, target in TARGET.items():
        ref = REFERENCE[name]
        if name in results and f"ratio_to_{ref}" in results[name]:
            ratio = results[name][f"ratio_to_{ref}"]
            aims.append(f"{name} >= {target}x {ref}: {'met' if ratio >= target else 'MISSED'} ({ratio:.2f})")
        also = ALSO.get(name)
        if also and name in results and f"ratio_to_{also}" in results[name]:
            ratio = results[name][f"ratio_to_{also}"]
            aims.append(f"{name} >= {target}x {also}: {'met' if ratio >= target else 'MISSED'} ({ratio:.2f})")
    frags = sum(r["frag_creates"] + r["reasm_reqds"] for n, r in results.items())
    aims.append(f"zero fragments: {'met' if frags == 0 else 'MISSED'} ({frags})")
    print("aims: " + "; ".join(aims))
    print(f"(median of {args.rounds} rounds of {args.seconds:g} s; charon CPU summed over every charon of the lab)")

    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "throughput.json").write_text(json.dumps({
        "rounds": args.rounds, "seconds": args.seconds, "agent_args": args.agent_arg,
        "charon_rcvbuf": args.charon_rcvbuf or None, "cases": results,
        "targets": TARGET,
    }, indent=2))
    print(f"wrote {out / 'throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
