"""Benchmark of the probe edge: CPU of the pinger plus decision core on a gateway probing 100 peers.

Synthetic peers: 100 addresses on a veth in a second namespace, answered by that namespace's kernel (what a peer
gateway's kernel does for its inner address). The pinger runs as its own process in the first namespace
(`raven.pathhealth.probe_run`), so its rusage is the probe cost alone: first as the agent runs it (`PathMonitor`:
pinger, decision core, Prometheus metrics, log lines), the figure held to the target, then the pinger and core
alone. Target: <= 2 % of one core at the default interval (0.2 s). The bare path is also measured at 50 ms and
10 ms (the e2e scenarios' probe), for scale.

Run as root: `python -m tests.benchmarks.bench_probes`; writes bench-results/probes.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from e2e.netlab import Lab

PREFIX = os.environ.get("RAVEN_BENCH_PROBES_PREFIX", "rvpb")
PEERS = 100
SECONDS = 20.0
TARGET_FRACTION = 0.02


def measure(lab: Lab, interval: float, seconds: float = SECONDS, mode: str = "core") -> dict[str, float | str]:
    """`mode`: "core" (pinger + decision core) or "monitor" (the agent's PathMonitor: also the metrics and logs)."""
    g = lab["g"]
    addrs = [f"10.99.{1 + i // 250}.{1 + i % 250}" for i in range(PEERS)]
    out = g.run([sys.executable, "-m", "raven.pathhealth.probe_run", "10.99.0.1", ",".join(addrs), str(seconds),
                 str(interval), "0.5", *(["monitor"] if mode == "monitor" else [])], timeout=seconds + 60)
    res = json.loads(out.stdout)
    up = sum(1 for t in res["targets"].values() if t["state"] == "up")
    return {"mode": mode, "interval_s": interval, "peers": PEERS, "cpu_fraction_of_core": res["cpu_fraction"],
            "probes_per_s": PEERS / interval, "peers_up": up, "lost": res["stats"]["lost"]}


def main() -> int:
    if os.geteuid() != 0:
        print("bench_probes needs root (network namespaces)", file=sys.stderr)
        return 1
    with Lab(PREFIX) as lab:
        g, p = lab.netns_many(["g", "p"])
        lab.veth(g, "g0", p, "p0")
        g.add_addr("g0", "10.99.0.1/16")
        p.ip_batch([f"addr add 10.99.{1 + i // 250}.{1 + i % 250}/16 dev p0" for i in range(PEERS)])
        rows = [measure(lab, 0.2, mode="monitor")] + [measure(lab, interval) for interval in (0.2, 0.05, 0.01)]
    print(f"{'mode':>8} {'interval s':>10} {'probes/s':>9} {'CPU % core':>11} {'peers up':>9} {'lost':>5}")
    for r in rows:
        print(f"{r['mode']:>8} {r['interval_s']:>10.2f} {r['probes_per_s']:>9.0f} "
              f"{100 * float(r['cpu_fraction_of_core']):>10.2f}% {r['peers_up']:>9.0f} {r['lost']:>5.0f}")
    default = rows[0]  # what the agent runs on a gateway with 100 peers, at the default interval
    ok = float(default["cpu_fraction_of_core"]) <= TARGET_FRACTION and default["peers_up"] == PEERS
    print(f"agent monitor, default interval: {100 * float(default['cpu_fraction_of_core']):.2f}% of a core for "
          f"{PEERS} peers (target <= {100 * TARGET_FRACTION:.0f}%): {'ok' if ok else 'MISSED'}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "probes.json").write_text(json.dumps({"peers": PEERS, "seconds": SECONDS, "rows": rows,
                                                 "target_fraction": TARGET_FRACTION, "met": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
