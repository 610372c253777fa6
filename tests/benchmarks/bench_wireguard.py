"""The WireGuard driver's reconcile cost with many peers, against a real device (one namespace, no traffic): the
data plane the agent would choose (`--implementation`: here wireguard-go over UAPI; in a VM with the module, the
kernel's over generic netlink, written to bench-results/wireguard-kernel.json).

A gateway with N direct peers (default 1,000): the cold reconcile (every peer written in one UAPI `set`), a
converged one (one `get`, parsed and diffed, nothing written), one peer's key changed (one peer out, one in),
and `states()` (one `get`). Baseline in the same run: `wg show IFACE dump` of the same device (the reference
client reading and printing what the driver reads and parses).

Run as root: `python -m tests.benchmarks.bench_wireguard [--peers 1000] [--rounds 5]`; writes
bench-results/wireguard.json.
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
from dataclasses import replace
from pathlib import Path

from e2e.netlab import Lab
from raven.dataplane.state import IPsecConnection
from raven.dataplane.wgkernel import Implementation, choose_data_plane
from raven.dataplane.wireguard import SOCKET_DIR, WireGuardDriver

PREFIX = "rvwgp"
IFNAME = "rvwgp-bench0"


def conns(n: int) -> list[IPsecConnection]:
    out = []
    for i in range(n):
        key = base64.b64encode(i.to_bytes(4, "big").rjust(32, b"\x01")).decode()
        out.append(IPsecConnection(
            name=f"raven-gw-{i}", local_id="gw-me", remote_id=f"gw-{i}", local_addrs=("192.0.2.1",),
            remote_addrs=(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",), remote_port=4500,
            local_ts="241.0.0.1/32", remote_ts=f"241.{1 + i // 65536}.{i // 256 % 256}.{i % 256}/32",
            initiator=True, local_node="me", peer_node=f"node-{i}", peer_public_key=key))
    return out


async def run(peers: int, rounds: int, netns: str, implementation: Implementation = "auto") -> dict[str, object]:
    choice = await choose_data_plane(implementation, ifname=IFNAME, netns=netns)
    process = choice.plane
    await process.ensure()
    driver = WireGuardDriver(os.urandom(32), "bench-cluster-secret-0123456789", ifname=IFNAME, process=process)
    wanted = conns(peers)
    # A kernel device is seen only in its namespace; wireguard-go's socket is in /run, seen from here.
    wg_prefix = ["ip", "netns", "exec", netns] if process.implementation == "kernel" else []
    try:
        t0 = time.perf_counter()
        cold = await driver.reconcile(wanted)
        cold_s = time.perf_counter() - t0
        assert cold.ok and len((await process.channel.get()).peers) == peers
        converged, changed, states, wg_dump = [], [], [], []
        for r in range(rounds):
            t0 = time.perf_counter()
            report = await driver.reconcile(wanted)
            converged.append(time.perf_counter() - t0)
            assert report.ok and not report.writes, report.writes
            rotated = list(wanted)
            key = base64.b64encode(bytes([r + 2]) * 32).decode()
            rotated[0] = replace(rotated[0], peer_public_key=key)
            t0 = time.perf_counter()
            await driver.reconcile(rotated)
            changed.append(time.perf_counter() - t0)
            await driver.reconcile(wanted)  # back
            t0 = time.perf_counter()
            listed = await driver.states()
            states.append(time.perf_counter() - t0)
            assert len(listed) == peers
            t0 = time.perf_counter()
            subprocess.run([*wg_prefix, "wg", "show", IFNAME, "dump"], check=True, capture_output=True,  # noqa: ASYNC221 (timed)
                           timeout=60)
            wg_dump.append(time.perf_counter() - t0)
        return {"implementation": process.implementation, "reason": choice.reason, "peers": peers,
                "cold_apply_ms": cold_s * 1000,
                "converged_reconcile_ms": statistics.median(converged) * 1000,
                "one_peer_replaced_ms": statistics.median(changed) * 1000,
                "states_ms": statistics.median(states) * 1000,
                "wg_show_dump_ms": statistics.median(wg_dump) * 1000}
    finally:
        await process.stop()
        (SOCKET_DIR / f"{IFNAME}.log").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_wireguard")
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--implementation", choices=("auto", "kernel", "wireguard-go"), default="auto",
                    help="the data plane (auto: the kernel's where it has WireGuard, as the agent chooses)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_wireguard needs root (a network namespace for wireguard-go)", file=sys.stderr)
        return 2
    with Lab(PREFIX) as lab:
        ns = lab.netns("gw")
        result = asyncio.run(run(args.peers, args.rounds, ns.name, args.implementation))
    for k, v in result.items():
        print(f"{k:<24} {v:.1f}" if isinstance(v, float) else f"{k:<24} {v}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    name = "wireguard.json" if result["implementation"] == "wireguard-go" else "wireguard-kernel.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
