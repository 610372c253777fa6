"""Benchmark of the network-namespace lab: building and tearing down the default topology, and
starting a charon, and the continuous probe's outage measurement against the harness's own clock;
build times against a baseline measured in the same run (the same build with one `ip` fork
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
from e2e.probe import ContinuousProbe
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


def _probe_accuracy(cut_s: float = 0.3) -> tuple[float, float, int]:
    """Cut a node's LAN link for `cut_s` under a 10 ms UDP probe: (commanded, measured outage, lost)."""
    with build(load_topology("default"), PREFIX) as cl:
        a, b = cl.pod("edge-a-1-p0"), cl.pod("edge-a-2-p0")
        with ContinuousProbe(a.netns, b.netns, b.ip, port=18300, name="bench") as probe:
            probe.wait_first_reply()
            time.sleep(0.2)
            t0 = time.monotonic()
            cl.cut_link("edge-a-2")
            time.sleep(cut_s)
            cl.restore_link("edge-a-2")
            commanded = time.monotonic() - t0
            time.sleep(0.2)
            res = probe.stop()
        return commanded, res.max_outage_s, res.lost


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
    probes = [_probe_accuracy() for _ in range(RUNS)]
    commanded = statistics.median(p[0] for p in probes)
    measured = statistics.median(p[1] for p in probes)
    base, fast = rows["baseline (one ip per command)"], rows["batched"]
    speedup = base["build_s"] / fast["build_s"] if fast["build_s"] else 0.0

    title = f"default topology (median of {RUNS})"
    print(f"{title:<34} {'build s':>9} {'teardown s':>11} {'netns':>6}")
    for label, r in rows.items():
        print(f"{label:<34} {r['build_s']:>9.3f} {r['teardown_s']:>11.3f} {int(r['namespaces']):>6}")
    print(f"build speedup vs baseline: {speedup:.1f}x")
    print(f"charon start until VICI answers (median): {charon:.3f} s")
    print(f"10 ms probe: link cut for {commanded:.3f} s (harness clock), outage measured {measured:.3f} s "
          f"(error {measured - commanded:+.3f} s), lost {statistics.median(p[2] for p in probes):.0f}")

    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "netlab.json").write_text(json.dumps({
        "runs": RUNS,
        "default_topology": rows,
        "build_speedup_vs_baseline": speedup,
        "charon_start_s": charon,
        "probe_cut_commanded_s": commanded,
        "probe_outage_measured_s": measured,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
