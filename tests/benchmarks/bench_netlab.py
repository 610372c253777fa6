"""Benchmark of the network-namespace lab: building and tearing down the default topology, and
starting a charon, against a baseline measured in the same run (the same build with one `ip` fork
per command instead of `ip -batch`).

Run as root: `python -m tests.benchmarks.bench_netlab`; writes bench-results/netlab.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from e2e.netlab import Lab, find_leftovers
from e2e.topology import build, load_topology

PREFIX = "rvlb"
RUNS = 3


def _build_teardown(batch: bool) -> tuple[float, float, int]:
    spec = load_topology("default")
    t0 = time.monotonic()
    cl = build(spec, PREFIX, batch=batch)
    built = time.monotonic() - t0
    n = len(cl.lab.namespaces)
    t1 = time.monotonic()
    cl.close()
    down = time.monotonic() - t1
    assert not any(find_leftovers(PREFIX).values()), find_leftovers(PREFIX)
    return built, down, n


def _charon_start() -> float:
    with Lab(PREFIX) as lab:
        ns = lab.netns("c")
        t0 = time.monotonic()
        ns.start_charon()
        return time.monotonic() - t0


def main() -> int:
    if os.geteuid() != 0:
        print("bench_netlab needs root (network namespaces)", file=sys.stderr)
        return 1
    rows: dict[str, dict[str, float]] = {}
    for label, batch in (("batched", True), ("baseline (one ip per command)", False)):
        runs = [_build_teardown(batch) for _ in range(RUNS)]
        rows[label] = {
            "build_s": statistics.median(r[0] for r in runs),
            "teardown_s": statistics.median(r[1] for r in runs),
            "namespaces": runs[0][2],
        }
    charon = statistics.median(_charon_start() for _ in range(RUNS))
    base, fast = rows["baseline (one ip per command)"], rows["batched"]
    speedup = base["build_s"] / fast["build_s"] if fast["build_s"] else 0.0

    title = f"default topology (median of {RUNS})"
    print(f"{title:<34} {'build s':>9} {'teardown s':>11} {'netns':>6}")
    for label, r in rows.items():
        print(f"{label:<34} {r['build_s']:>9.3f} {r['teardown_s']:>11.3f} {int(r['namespaces']):>6}")
    print(f"build speedup vs baseline: {speedup:.1f}x")
    print(f"charon start until VICI answers (median): {charon:.3f} s")

    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "netlab.json").write_text(json.dumps({
        "runs": RUNS,
        "default_topology": rows,
        "build_speedup_vs_baseline": speedup,
        "charon_start_s": charon,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
