"""Benchmark of routing by measured cost: `python -m tests.benchmarks.bench_routing`.

1,000 gateways, every pair directly connected and measured (a full mesh of 499,500 links with random RTTs and some
loss): the path computation of one gateway (best path to each of the 999 others, `raven.routing.paths`, target
<= 100 ms), the hysteresis over them, and building the graph from the measurements. Then what an agent pays per
evaluation at 100 gateways, from Gateway objects and PathReports (`raven.agent.routes.Router.update`). Writes
bench-results/routing.json.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from raven.agent.routes import Router, RouterSettings
from raven.api.gateway import Gateway
from raven.api.pathreport import PathReport, PathReportStatus, Target
from raven.routing.graph import Measurement, build_graph, pair
from raven.routing.paths import best_paths
from raven.routing.selector import Hysteresis, select
from tests.benchmarks.bench_plan import best as best_of
from tests.benchmarks.bench_plan import gateway


def mesh(n: int, seed: int = 14) -> tuple[list[str], list[tuple[str, str]], dict[tuple[str, str], Measurement]]:
    rnd = random.Random(seed)
    names = [f"gw-{i:04d}" for i in range(n)]
    direct = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    meas = {pair(a, b): Measurement("up", rnd.uniform(0.001, 0.2), rnd.choice((0.0, 0.0, 0.0, 0.01, 0.05)))
            for a, b in direct}
    return names, direct, meas


def geo_mesh(n: int, seed: int = 14) -> tuple[list[str], list[tuple[str, str]], dict[tuple[str, str], Measurement]]:
    """The same mesh with RTTs from distances between points in a plane (plus 10 % noise): like real WANs, mostly
    consistent with the triangle inequality, so few relays pay off."""
    rnd = random.Random(seed)
    names = [f"gw-{i:04d}" for i in range(n)]
    at = {a: (rnd.uniform(0, 100), rnd.uniform(0, 100)) for a in names}
    direct = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    meas = {}
    for a, b in direct:
        (x1, y1), (x2, y2) = at[a], at[b]
        ms = (((x1 - x2) ** 2 + (y1 - y2) ** 2) ** 0.5 + 1.0) * rnd.uniform(1.0, 1.1)
        meas[pair(a, b)] = Measurement("up", ms / 1000.0, 0.0)
    return names, direct, meas


def agent_cluster(n: int, now: float) -> tuple[list[Gateway], list[PathReport]]:
    """`n` reachable gateways of one node each, and each active endpoint's report of all its peers."""
    rnd = random.Random(7)
    objs = [gateway(f"gw-{g:04d}", f"2026-01-02T00:{g // 60 % 60:02d}:{g % 60:02d}Z",
                    [(f"g{g}-n0", f"172.16.{g // 256}.{g % 256}", f"10.{1 + g // 256}.{g % 256}.0/24")], f"g{g}-n0",
                    False) for g in range(n)]
    gws = [Gateway.from_dict(o) for o in objs]
    hb = datetime.fromtimestamp(now, UTC)
    reports = []
    for g in range(n):
        targets = tuple(Target("peer", f"gw-{p:04d}", f"g{p}-n0", f"241.0.{p // 256}.{p % 256}", "up",
                               hb - timedelta(seconds=60), rnd.uniform(0.001, 0.1), 0.0)
                        for p in range(n) if p != g)
        reports.append(PathReport(f"g{g}-n0", f"g{g}-n0", PathReportStatus(f"gw-{g:04d}", "gateway", hb, 0.2, targets)))
    return gws, reports


def main() -> None:
    n = 1000
    names, direct, meas = mesh(n)
    graph = build_graph(names, direct, meas)
    me = names[0]
    paths_s = best_of(lambda: best_paths(graph, me))
    best = best_paths(graph, me)
    state, _ = select({}, best, graph, me, 0.0, Hysteresis())
    select_s = best_of(lambda: select(state, best, graph, me, 1.0, Hysteresis()))
    graph_s = best_of(lambda: build_graph(names, direct, meas))
    relayed = sum(1 for d, (h, _) in best.items() if h != d)
    geo_names, geo_direct, geo_meas = geo_mesh(n)
    geo = build_graph(geo_names, geo_direct, geo_meas)
    geo_s = best_of(lambda: best_paths(geo, geo_names[0]))
    geo_relayed = sum(1 for d, (h, _) in best_paths(geo, geo_names[0]).items() if h != d)

    now = time.time()
    gws, reports = agent_cluster(100, now)
    router = Router(RouterSettings(stale_after=timedelta(seconds=180)))
    router.update("gw-0000", gws, reports, now)
    update_s = best_of(lambda: router.update("gw-0000", gws, reports, now))

    result = {
        "gateways": n,
        "links": len(direct),
        "paths_ms": round(paths_s * 1000, 1),
        "paths_target_ms": 100,
        "select_ms": round(select_s * 1000, 1),
        "graph_build_ms": round(graph_s * 1000, 1),
        "pools_relayed": relayed,
        "paths_geometric_ms": round(geo_s * 1000, 1),
        "pools_relayed_geometric": geo_relayed,
        "agent_update_100_gateways_ms": round(update_s * 1000, 1),
    }
    for k, v in result.items():
        print(f"{k:32} {v}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "routing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out / 'routing.json'}")


if __name__ == "__main__":
    main()
