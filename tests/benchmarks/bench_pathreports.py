"""Benchmark of PathReport API writes (issue 11): a steady 8-node cluster (the default topology) and one failover.

Every write the test API server receives for `health.raven-py.io` (create, status patch) is counted by its
`on_request` hook, with its time and object (= node). Steady state: after every report shows all targets up,
writes over STEADY_S seconds, per node per 30 s (target <= 1: the heartbeat is 60 s; a quiet cluster writes
nothing else). One failover: edge-a's active gateway is marked NotReady (the controller moves the Gateway),
writes over the FAILOVER_S seconds after, per node and in total.

Run as root: `python -m tests.benchmarks.bench_pathreports`; writes bench-results/pathreports.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from e2e.cluster import PathReportWrites as WriteCounter
from e2e.cluster import RavenCluster
from raven.api.pathreport import PathReport
from raven.kube.client import PATHREPORTS

PREFIX = os.environ.get("RAVEN_BENCH_PATHREPORTS_PREFIX", "rvpr")
STEADY_S = 120.0
FAILOVER_S = 30.0
TARGET_PER_NODE_PER_30S = 1.0


def all_up(rc: RavenCluster) -> bool:
    rs = [PathReport.from_dict(o) for o in rc.list_objects(PATHREPORTS)]
    return len(rs) >= len(rc.agents) and all(r.status.targets and all(t.state == "up" for t in r.status.targets)
                                             for r in rs)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_pathreports needs root (network namespaces)", file=sys.stderr)
        return 2
    rc = RavenCluster("default", prefix=PREFIX)
    counter = WriteCounter()
    try:
        rc.start()
        rc.api.server.on_request = counter
        rc.wait_converged(timeout=120)
        rc.wait_for("every report up", lambda: all_up(rc), timeout=90)
        time.sleep(5)
        nodes = len(rc.agents)
        t0 = time.monotonic()
        time.sleep(STEADY_S)
        steady = counter.between(t0, t0 + STEADY_S)
        steady_rate = len(steady) / nodes / STEADY_S * 30

        old = rc.active_gateway_node("gw-edge-a")
        t1 = time.monotonic()
        rc.set_node_ready(old, False)
        rc.wait_for("gw-edge-a failed over", lambda: rc.active_gateway_node("gw-edge-a") != old, timeout=60)
        time.sleep(max(0.0, t1 + FAILOVER_S - time.monotonic()))
        fo = counter.between(t1, t1 + FAILOVER_S)
        rc.set_node_ready(old, True)
        per_node = {n: sum(1 for w in fo if w[1] == n) for n in sorted(rc.agents)}
    finally:
        rc.api.server.on_request = None
        rc.close()
    ok = steady_rate <= TARGET_PER_NODE_PER_30S
    print(f"steady {nodes}-node cluster, {STEADY_S:.0f} s: {len(steady)} PathReport writes = "
          f"{steady_rate:.3f} per node per 30 s (target <= {TARGET_PER_NODE_PER_30S}): {'ok' if ok else 'MISSED'}")
    print(f"one failover (gw-edge-a, NotReady), {FAILOVER_S:.0f} s after: {len(fo)} writes, "
          f"max {max(per_node.values())} from one node; per node {per_node}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "pathreports.json").write_text(json.dumps({
        "nodes": nodes, "steady_s": STEADY_S, "steady_writes": len(steady),
        "steady_writes_per_node_per_30s": steady_rate, "target_per_node_per_30s": TARGET_PER_NODE_PER_30S,
        "failover_window_s": FAILOVER_S, "failover_writes": len(fo), "failover_writes_per_node": per_node,
        "met": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
