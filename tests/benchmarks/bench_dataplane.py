"""Benchmark of the data-plane appliers with 10,000 remote subnets on one node.

Measured in one run, in fresh network namespaces (prefix `rdpb`):
- cold apply: `KernelApplier.reconcile` of a member node's state (raven0, neighbour, FDB, rule,
  10,000 routes) vs the baseline `ip -batch` installing the same 10,000 routes (ratio; aim <= 2);
- the netlink alternatives side by side, each installing the same 10,000 routes into a namespace that
  has raven0 (docs/architecture.md, "Netlink: one path"): Raven's encoder (`rtnl`) alone; one long-lived
  `ip -force -batch -` process fed on stdin; pyroute2 0.9's `IPBatch` (its encoder without a socket)
  sent through Raven's socket; pyroute2 `AsyncIPRoute.route("add")` with 256 requests in flight and
  one at a time; and reading them back: Raven's dump vs pyroute2's `get_routes`;
- converged reconcile (read + diff, zero writes; aim <= 50 ms);
- failover on the member node (the pool's gateway moves: neighbour + FDB) - writes and time;
- failover seen by a remote gateway (a peer pool's gateway node changes): kernel writes (expected
  none: routes go via the peer's inner address) and VICI operations and time against a real charon;
- the process's RSS.

Run as root: `python -m tests.benchmarks.bench_dataplane`; prints a table, writes bench-results/dataplane.json.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute, IPBatch

from e2e.netlab import Lab, Netns
from raven.dataplane import rtnl
from raven.dataplane.ipsec import IPsecDriver
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.state import (
    POOL_VIRTUAL_NEXT_HOP,
    Address,
    FdbEntry,
    IPsecConnection,
    Neighbor,
    NodeNetwork,
    Route,
    Rule,
    VxlanLink,
)

PREFIX = "rdpb"
N = 10_000
RUNS = 5
CONVERGED_RUNS = 15  # cheap, and the machine is shared: a median over more runs is steadier
GW_MAC = "02:f0:a8:32:02:00"


def subnets(n: int = N) -> list[str]:
    return [f"10.{i >> 8}.{i & 255}.0/24" for i in range(n)]


def member_state(gw_mac: str = GW_MAC, gw_ip: str = "192.168.50.2") -> NodeNetwork:
    return NodeNetwork(
        links=frozenset({VxlanLink("raven0", 200, 4472, 1450, "02:f0:a8:32:01:00", "192.168.50.1", "eth0")}),
        addresses=frozenset({Address("raven0", "240.168.50.1/8")}),
        routes=frozenset(Route(s, 9027, "raven0", POOL_VIRTUAL_NEXT_HOP, 1372) for s in subnets()),
        rules=frozenset({Rule(9027, 9027)}),
        neighbors=frozenset({Neighbor("raven0", POOL_VIRTUAL_NEXT_HOP, gw_mac)}),
        fdb=frozenset({FdbEntry("raven0", gw_mac, gw_ip)}),
        mss_clamp_ifnames=frozenset({"raven0"}),
    )


PEERS = 20


def gateway_state() -> NodeNetwork:
    peers = range(2, PEERS + 2)
    nets = subnets()
    return NodeNetwork(
        links=frozenset({VxlanLink("raven1", 201, 4473, 1372, "02:f1:00:00:00:01", "241.0.0.1", None)}),
        addresses=frozenset({Address("raven1", "241.0.0.1/32")}),
        # Each peer pool owns an equal share of the remote subnets.
        routes=frozenset(
            Route(s, 9027, "raven1", f"241.0.0.{2 + i % PEERS}", 1372) for i, s in enumerate(nets)
        ),
        rules=frozenset({Rule(9027, 9027)}),
        neighbors=frozenset(Neighbor("raven1", f"241.0.0.{p}", f"02:f1:00:00:00:{p:02x}") for p in peers),
        fdb=frozenset(FdbEntry("raven1", f"02:f1:00:00:00:{p:02x}", f"241.0.0.{p}") for p in peers),
    )


def conns(moved: int | None = None) -> list[IPsecConnection]:
    out = []
    for p in range(2, PEERS + 2):
        addr = f"198.51.100.{p + (100 if p == moved else 0)}"
        out.append(
            IPsecConnection(
                name=f"raven-gw{p}", local_id="gw1.raven", remote_id=f"gw{p}.raven", local_addrs=("%any",),
                remote_addrs=(addr,), remote_port=4500, local_ts="241.0.0.1/32", remote_ts=f"241.0.0.{p}/32",
                # Responder only: nothing starts towards the (absent) peers, so this is pure VICI cost.
                initiator=False,
            )
        )
    return out


def underlay(lab: Lab, short: str) -> Netns:
    ns, peer = lab.netns_many([short, short + "p"])
    lab.veth(ns, "eth0", peer, "eth0")
    ns.add_addr("eth0", "192.168.50.1/24")
    return ns


def write_batch_script() -> str:
    fd, path = tempfile.mkstemp(prefix="rdpb-", suffix=".batch")
    with os.fdopen(fd, "w") as f:
        for s in subnets():
            f.write(f"route add {s} via {POOL_VIRTUAL_NEXT_HOP} dev raven0 onlink table 9027 proto 250 mtu 1372\n")
    return path


async def cold_vs_ip_batch(lab: Lab) -> tuple[list[float], list[float]]:
    """Alternate baseline and cold runs so machine noise hits both alike.

    Baseline: `ip -batch` installing the same routes into a namespace that already has raven0 (as
    a shell script would after creating the device). Cold: a fresh namespace, everything.
    """
    ns = underlay(lab, "ipb")
    a = KernelApplier(netns=ns.name)
    await a.reconcile(dataclasses.replace(member_state(), routes=frozenset()))
    await a.close()
    script = write_batch_script()
    baseline: list[float] = []
    cold: list[float] = []
    try:
        for run in range(RUNS):
            t0 = time.perf_counter()
            ns.run(["ip", "-batch", script])
            baseline.append(time.perf_counter() - t0)
            ns.ip("route", "flush", "table", "9027")
            fresh = underlay(lab, f"cold{run}")
            applier = KernelApplier(netns=fresh.name)
            desired = member_state()  # the plan's work, not the applier's: outside the timing
            try:
                t0 = time.perf_counter()
                report = await applier.reconcile(desired)
                cold.append(time.perf_counter() - t0)
                assert report.ok and report.writes["route"] == N, report
            finally:
                await applier.close()
    finally:
        os.remove(script)
    return baseline, cold


async def pyroute2_baseline(lab: Lab) -> float:
    ns = underlay(lab, "pyr")
    a = KernelApplier(netns=ns.name)
    await a.reconcile(dataclasses.replace(member_state(), routes=frozenset()))
    await a.close()
    ipr = AsyncIPRoute(netns=ns.name, flags=0)
    await ipr.setup_endpoint()
    try:
        idx = (await ipr.link_lookup(ifname="raven0"))[0]
        t0 = time.perf_counter()
        for s in subnets():
            await ipr.route(
                "add", dst=s, gateway=POOL_VIRTUAL_NEXT_HOP, oif=idx, flags=4, table=9027, proto=250,
                metrics={"mtu": 1372},
            )  # fmt: skip
        return time.perf_counter() - t0
    finally:
        ipr.close()


async def prepared(lab: Lab, short: str) -> tuple[Netns, int]:
    """A namespace with raven0 (and no routes); returns it and raven0's ifindex."""
    ns = underlay(lab, short)
    a = KernelApplier(netns=ns.name)
    await a.reconcile(dataclasses.replace(member_state(), routes=frozenset()))
    await a.close()
    return ns, int(ns.ip("-j", "link", "show", "raven0").stdout.split('"ifindex":')[1].split(",")[0])


def count_routes(ns: Netns) -> int:
    return len(ns.ip("route", "show", "table", "9027").stdout.splitlines())


def ipbatch_msgs(idx: int) -> list[rtnl.RouteMsg]:
    """pyroute2's own encoder: IPBatch compiles the requests into one buffer without a socket."""
    ipb = IPBatch()
    try:
        for s in subnets():
            ipb.route(
                "add", dst=s, gateway=POOL_VIRTUAL_NEXT_HOP, oif=idx, flags=4, table=9027, proto=250,
                metrics={"mtu": 1372},
            )  # fmt: skip
        buf = bytes(ipb.batch)
    finally:
        ipb.close()
    msgs, off = [], 0
    while off < len(buf):
        length, mtype, mflags = struct.unpack_from("=IHH", buf, off)
        msgs.append(rtnl.RouteMsg(mtype, mflags | rtnl.NLM_F_ACK, buf[off + 16 : off + length]))
        off += (length + 3) & ~3
    return msgs


async def alternatives(lab: Lab) -> dict[str, float]:
    """Each way of installing the same N routes, in its own fresh namespace; seconds."""
    out: dict[str, float] = {}
    gw = POOL_VIRTUAL_NEXT_HOP

    ns, idx = await prepared(lab, "alr")  # Raven's encoder and socket, routes only
    rt = rtnl.RouteSocket(ns.name)
    try:
        t0 = time.perf_counter()
        msgs = [
            rtnl.encode_route(rtnl.RTM_NEWROUTE, rtnl.CREATE, dst=s, table=9027, protocol=250, oif=idx, gateway=gw,
                              mtu=1372) for s in subnets()
        ]  # fmt: skip
        errors = rt.send(msgs)
        out["rtnl_s"] = time.perf_counter() - t0
        assert not errors, errors[:3]
        t0 = time.perf_counter()
        assert len(rt.dump_routes(9027, 250, {idx: "raven0"})) == N
        out["rtnl_dump_s"] = time.perf_counter() - t0
    finally:
        rt.close()

    ns, idx = await prepared(lab, "alp")  # one long-lived `ip -force -batch -`, fed on stdin
    proc = subprocess.Popen(  # noqa: ASYNC220 - blocking on purpose: the clock times only the pipe
        ["ip", "netns", "exec", ns.name, "ip", "-force", "-batch", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1 << 16,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write("route show table 9027\n")  # started and warm before the clock
        proc.stdin.flush()
        lines = "".join(
            f"route add {s} via {gw} dev raven0 onlink table 9027 proto 250 mtu 1372\n" for s in subnets()
        )
        t0 = time.perf_counter()
        # The end marker: a delete that must fail; -force goes on, and its error is the only stderr line.
        proc.stdin.write(lines + "route del 255.255.255.255/32 table 9027 proto 250\n")
        proc.stdin.flush()
        proc.stderr.readline()
        out["ip_batch_stdin_s"] = time.perf_counter() - t0
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert count_routes(ns) == N

    ns, idx = await prepared(lab, "alb")  # pyroute2's encoder (IPBatch), sent through Raven's socket
    rt = rtnl.RouteSocket(ns.name)
    try:
        t0 = time.perf_counter()
        msgs = await asyncio.to_thread(ipbatch_msgs, idx)  # IPBatch is synchronous: runs its own loop
        errors = rt.send(msgs)
        out["pyroute2_ipbatch_s"] = time.perf_counter() - t0
        assert not errors, errors[:3]
    finally:
        rt.close()

    ns, idx = await prepared(lab, "ala")  # AsyncIPRoute, many requests in flight
    ipr = AsyncIPRoute(netns=ns.name, flags=0)
    await ipr.setup_endpoint()
    try:
        t0 = time.perf_counter()
        nets = subnets()
        for i in range(0, N, 256):
            await asyncio.gather(*(
                ipr.route("add", dst=s, gateway=gw, oif=idx, flags=4, table=9027, proto=250, metrics={"mtu": 1372})
                for s in nets[i : i + 256]
            ))  # fmt: skip
        out["pyroute2_async_inflight_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = len([m async for m in await ipr.get_routes(table=9027)])
        out["pyroute2_dump_s"] = time.perf_counter() - t0
        assert n >= N, n
    finally:
        ipr.close()
    assert count_routes(ns) == N
    return out


async def kernel_member(lab: Lab) -> dict[str, Any]:
    baseline, cold = await cold_vs_ip_batch(lab)
    ns = lab["cold0"]
    a = KernelApplier(netns=ns.name)
    desired = member_state()
    try:
        converged = []
        for _ in range(CONVERGED_RUNS):
            t0 = time.perf_counter()
            report = await a.reconcile(desired)
            converged.append(time.perf_counter() - t0)
            assert report.total_writes == 0, report.writes
        read_only = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            await a.read()
            read_only.append(time.perf_counter() - t0)
        failed_over = member_state("02:f0:a8:32:07:00", "192.168.50.7")
        t0 = time.perf_counter()
        failover = await a.reconcile(failed_over)
        failover_s = time.perf_counter() - t0
        assert failover.ok, failover.errors
    finally:
        await a.close()
    return {
        "ip_batch_s": statistics.median(baseline),
        "ip_batch_runs_s": baseline,
        "cold_apply_s": statistics.median(cold),
        "cold_apply_runs_s": cold,
        "converged_reconcile_s": statistics.median(converged),
        "converged_reconcile_max_s": max(converged),
        "read_s": statistics.median(read_only),
        "member_failover_writes": failover.total_writes,
        "member_failover_route_writes": failover.writes["route"],
        "member_failover_s": failover_s,
    }


async def remote_gateway(lab: Lab) -> dict[str, Any]:
    ns = lab.netns("gw")
    charon = ns.start_charon()
    kernel = KernelApplier(netns=ns.name)
    driver = IPsecDriver(str(charon.vici_socket), "rdpb-bench-psk-0123456789")
    try:
        assert (await kernel.reconcile(gateway_state())).ok
        assert (await driver.reconcile(conns())).ok
        # A remote pool's gateway node changes: its underlay address moves, its inner address does not.
        state, moved = gateway_state(), conns(moved=5)
        t0 = time.perf_counter()
        k = await kernel.reconcile(state)
        v = await driver.reconcile(moved)
        elapsed = time.perf_counter() - t0
        t1 = time.perf_counter()
        again = await driver.reconcile(moved)
        vici_converged = time.perf_counter() - t1
        assert again.total_writes == 0
    finally:
        await kernel.close()
        await driver.close()
    return {
        "remote_failover_kernel_writes": k.total_writes,
        "remote_failover_vici_ops": v.total_writes,
        "remote_failover_vici_detail": {op: n for op, n in v.writes.items() if n},
        "remote_failover_s": elapsed,
        "vici_converged_reconcile_s": vici_converged,
        "vici_peers": PEERS,
    }


def rss_kb() -> tuple[int, int]:
    current = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1])
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def run() -> dict[str, Any]:
    with Lab(PREFIX) as lab:
        member = await kernel_member(lab)
        pyr = await pyroute2_baseline(lab)
        alt = await alternatives(lab)
        gw = await remote_gateway(lab)
    rss, max_rss = rss_kb()
    return {
        "routes": N,
        **member,
        "cold_ratio_vs_ip_batch": member["cold_apply_s"] / member["ip_batch_s"],
        "pyroute2_one_by_one_s": pyr,
        **alt,
        **gw,
        "rss_kb": rss,
        "max_rss_kb": max_rss,
    }


def main() -> int:
    if os.geteuid() != 0:
        print("bench_dataplane needs root (network namespaces)", file=sys.stderr)
        return 1
    r = asyncio.run(run())
    ms = 1000.0
    rows = [
        ("routes", f"{r['routes']}", ""),
        ("ip -batch (baseline), same routes", f"{r['ip_batch_s'] * ms:.1f} ms", ""),
        ("cold reconcile (link+neigh+fdb+rule+routes)", f"{r['cold_apply_s'] * ms:.1f} ms",
         f"ratio {r['cold_ratio_vs_ip_batch']:.2f} (aim <= 2)"),
        ("10,000 routes alone, each way (ratio to ip -batch):", "", ""),
        *[(f"  {label}", f"{r[key] * ms:.1f} ms", f"{r[key] / r['ip_batch_s']:.2f}x")
          for label, key in (
              ("ip -batch file (baseline)", "ip_batch_s"),
              ("ip -force -batch - (long-lived, stdin)", "ip_batch_stdin_s"),
              ("rtnl encoder + socket (Raven's path)", "rtnl_s"),
              ("pyroute2 IPBatch encode + Raven's socket", "pyroute2_ipbatch_s"),
              ("pyroute2 AsyncIPRoute, 256 in flight", "pyroute2_async_inflight_s"),
              ("pyroute2 AsyncIPRoute, one by one", "pyroute2_one_by_one_s"),
          )],
        ("dump 10,000 routes: rtnl / pyroute2", f"{r['rtnl_dump_s'] * ms:.1f} ms",
         f"pyroute2 get_routes {r['pyroute2_dump_s'] * ms:.1f} ms"),
        ("converged reconcile (read+diff, 0 writes)", f"{r['converged_reconcile_s'] * ms:.1f} ms",
         f"median of {CONVERGED_RUNS}, max {r['converged_reconcile_max_s'] * ms:.1f} ms (aim <= 50 ms)"),
        ("  of which read", f"{r['read_s'] * ms:.1f} ms", ""),
        ("member failover", f"{r['member_failover_s'] * ms:.1f} ms",
         f"{r['member_failover_writes']} writes ({r['member_failover_route_writes']} routes)"),
        ("remote gateway failover (kernel + VICI)", f"{r['remote_failover_s'] * ms:.1f} ms",
         f"kernel writes {r['remote_failover_kernel_writes']}, VICI {r['remote_failover_vici_detail']}"),
        (f"VICI converged reconcile ({r['vici_peers']} peers)", f"{r['vici_converged_reconcile_s'] * ms:.1f} ms", ""),
        ("RSS (bench process)", f"{r['rss_kb'] / 1024:.1f} MiB", f"max {r['max_rss_kb'] / 1024:.1f} MiB"),
    ]  # fmt: skip
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>12}  {c}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "dataplane.json").write_text(json.dumps(r, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out / 'dataplane.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
