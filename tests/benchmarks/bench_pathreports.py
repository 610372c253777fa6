"""Benchmark of API writes (issue 11): a steady 8-node cluster (the default topology) and one health failover.

Every write the test API server receives (create, update, patch, delete) is counted by its `on_request` hook,
with its time, resource and object, and grouped as PathReports (the agents' measurements), Gateway status (the
controller), Events, Leases (the controllers' leader election, one renewal per retry period, whatever the cluster
does) and other. Steady state: after every report shows all targets up, writes over STEADY_S seconds, per node per
30 s (target for PathReports <= 1: the heartbeat is 60 s; a quiet cluster writes nothing else, and the controller
writes no Gateway at all). One failover: edge-a's active gateway drops off its LAN (a dead node, still Ready: health
failover decides, as in a real cluster before the node-monitor grace period ends); writes over the FAILOVER_S
seconds after, by kind and per node.

Run as root: `python -m tests.benchmarks.bench_pathreports`; writes bench-results/pathreports.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from e2e.apiserver import ApiRequest
from e2e.cluster import RavenCluster
from raven.api.pathreport import PathReport
from raven.kube.client import PATHREPORTS

# Another checkout can run it beside this one under its own lab prefix.
PREFIX = os.environ.get("RAVEN_BENCH_PATHREPORTS_PREFIX", "rvpr")
STEADY_S = 120.0
FAILOVER_S = 30.0
TARGET_PER_NODE_PER_30S = 1.0
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class ApiWrites:
    """The API server's on_request hook: every write, as (time, kind, object name)."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, str, str]] = []

    def __call__(self, r: ApiRequest) -> None:
        if r.verb not in WRITE_VERBS:
            return
        if r.group == PATHREPORTS.group:
            kind = "pathreports"
        elif r.resource == "gateways":
            kind = "gateways/" + (r.subresource or "main")
        elif r.resource == "events":
            kind = "events"
        elif r.resource == "leases":
            kind = "leases"
        else:
            kind = f"other:{r.resource}"
        self.writes.append((time.monotonic(), kind, r.name or ""))

    def between(self, t0: float, t1: float) -> list[tuple[float, str, str]]:
        return [w for w in self.writes if t0 <= w[0] < t1]


def status_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What a Gateway status write changed, field by field (conditions by type; a condition's message and its
    lastTransitionTime apart), e.g. ["pathHealth.peersUp", "conditions[TunnelsHealthy].message"]."""
    def flat(obj: Any, path: str, out: dict[str, Any]) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                flat(v, f"{path}.{k}" if path else k, out)
        elif isinstance(obj, list) and path == "conditions":
            for c in obj:
                for k, v in (c if isinstance(c, dict) else {}).items():
                    out[f"conditions[{c.get('type')}].{k}"] = v
        else:
            out[path] = obj
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    flat((old or {}).get("status") or {}, "", a)
    flat(new.get("status") or {}, "", b)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def gateway_status_writes(rc: RavenCluster, rv_from: int) -> list[tuple[str, list[str]]]:
    """(Gateway, what changed) of each Gateway change committed after resourceVersion `rv_from` (the test API
    server's watch history)."""
    store = rc.api.server.state.stores[("raven.openyurt.io", "gateways")]
    return [(str(e.obj["metadata"]["name"]), status_changes(e.old, e.obj)) for e in list(store.history)
            if e.rv > rv_from and e.type == "MODIFIED"]


def by_kind(writes: list[tuple[float, str, str]]) -> dict[str, int]:
    return dict(sorted(Counter(w[1] for w in writes).items()))


def all_up(rc: RavenCluster) -> bool:
    rs = [PathReport.from_dict(o) for o in rc.list_objects(PATHREPORTS)]
    return len(rs) >= len(rc.agents) and all(r.status.targets and all(t.state == "up" for t in r.status.targets)
                                             for r in rs)


def main() -> int:
    if os.geteuid() != 0:
        print("bench_pathreports needs root (network namespaces)", file=sys.stderr)
        return 2
    rc = RavenCluster("default", prefix=PREFIX)
    counter = ApiWrites()
    try:
        rc.start()
        rc.api.server.on_request = counter
        rc.wait_converged(timeout=120)
        rc.wait_for("every report up", lambda: all_up(rc), timeout=90)
        time.sleep(15)  # past the controllers' young-tunnel time (10 s): the start's reconciles are over
        nodes = len(rc.agents)
        t0 = time.monotonic()
        time.sleep(STEADY_S)
        steady = counter.between(t0, t0 + STEADY_S)
        steady_kinds = by_kind(steady)
        steady_rate = steady_kinds.get("pathreports", 0) / nodes / STEADY_S * 30
        non_lease = sum(n for k, n in steady_kinds.items() if k != "leases")

        old = rc.active_gateway_node("gw-edge-a")
        rv1 = rc.api.server.state.rv
        t1 = time.monotonic()
        rc.cl.cut_link(old)
        try:
            took = rc.wait_for("gw-edge-a failed over on health", lambda: rc.active_gateway_node("gw-edge-a") != old,
                               timeout=60, interval=0.05)
            time.sleep(max(0.0, t1 + FAILOVER_S - time.monotonic()))
        finally:
            rc.cl.restore_link(old)
        fo = counter.between(t1, t1 + FAILOVER_S)
        fo_reports = [w for w in fo if w[1] == "pathreports"]
        per_node = {n: sum(1 for w in fo_reports if w[2] == n) for n in sorted(rc.agents)}
        per_gateway = dict(sorted(Counter(w[2] for w in fo if w[1] == "gateways/status").items()))
        changes = gateway_status_writes(rc, rv1)
    finally:
        rc.api.server.on_request = None
        rc.close()
    ok = steady_rate <= TARGET_PER_NODE_PER_30S
    print(f"steady {nodes}-node cluster, {STEADY_S:.0f} s: {steady_kinds.get('pathreports', 0)} PathReport writes = "
          f"{steady_rate:.3f} per node per 30 s (target <= {TARGET_PER_NODE_PER_30S}): {'ok' if ok else 'MISSED'}; "
          f"all writes by kind {steady_kinds} ({non_lease / STEADY_S * 60:.1f} per minute besides the Lease)")
    print(f"one health failover (gw-edge-a's node dies, still Ready): elected after {took:.2f} s; "
          f"{FAILOVER_S:.0f} s after: {len(fo)} writes {by_kind(fo)}; PathReports max {max(per_node.values())} "
          f"from one node; per node {per_node}; Gateway status writes per Gateway {per_gateway}")
    print("what each Gateway write changed (in order):")
    for name, what in changes:
        print(f"  {name}: {', '.join(what) or 'NOTHING'}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "pathreports.json").write_text(json.dumps({
        "nodes": nodes, "steady_s": STEADY_S, "steady_writes": steady_kinds.get("pathreports", 0),
        "steady_writes_per_node_per_30s": steady_rate, "target_per_node_per_30s": TARGET_PER_NODE_PER_30S,
        "steady_writes_by_kind": steady_kinds, "steady_writes_per_minute_besides_leases": non_lease / STEADY_S * 60,
        "failover_elected_s": took, "failover_window_s": FAILOVER_S, "failover_writes": len(fo_reports),
        "failover_writes_by_kind": by_kind(fo), "failover_writes_per_node": per_node,
        "failover_status_writes_per_gateway": per_gateway,
        "failover_gateway_changes": [[name, what] for name, what in changes],
        "met": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
