"""Benchmark of the agent's pure plan: `python -m tests.benchmarks.bench_plan`.

Clusters with 10,000 remote subnets, planned on a member node and on a gateway node. The baseline,
measured in the same run, is parsing the same Gateway JSON with `Gateway.from_dict` (what every relist
costs the informer anyway): the plan should cost about the same as reading its input. Also counts the
objects a failover changes (the O(1) claim, at scale). Writes bench-results/plan.json.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

from raven.agent.plan import PlanConfig, plan
from raven.api.gateway import Gateway
from raven.dataplane.state import NodeNetwork

JSON = dict[str, Any]
REPEAT = 7


def gateway(name: str, created: str, pool: list[tuple[str, str, str]], active: str, under_nat: bool) -> JSON:
    eps = [{"nodeName": n, "type": "tunnel", "port": 4500, "underNAT": under_nat} for n, _, _ in pool]
    return {
        "apiVersion": "raven.openyurt.io/v1beta1",
        "kind": "Gateway",
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"tunnelConfig": {"Replicas": 1}, "endpoints": eps},
        "status": {
            "nodes": [{"nodeName": n, "privateIP": ip, "subnets": [s]} for n, ip, s in pool],
            "activeEndpoints": [dict(e) for e in eps if e["nodeName"] == active],
        },
    }


def cluster(gateways: int, nodes_per_gateway: int) -> list[JSON]:
    """One local NAT pool (3 nodes) plus `gateways` reachable pools, one /24 per node."""
    local = [(f"local-{i}", f"192.168.0.{i + 1}", f"10.0.{i}.0/24") for i in range(3)]
    out = [gateway("gw-local", "2026-01-01T00:00:00Z", local, "local-0", True)]
    for g in range(gateways):
        pool = []
        for i in range(nodes_per_gateway):
            k = g * nodes_per_gateway + i
            pool.append(
                (f"g{g}-n{i}", f"172.{16 + k // 65536}.{k // 256 % 256}.{k % 256}", f"10.{1 + k // 256}.{k % 256}.0/24")
            )
        out.append(
            gateway(
                f"gw-{g:04d}", f"2026-01-02T{g // 3600:02d}:{g // 60 % 60:02d}:{g % 60:02d}Z", pool, pool[0][0], False
            )
        )
    return out


def parse_all(objs: list[JSON]) -> list[Gateway]:
    return [Gateway.from_dict(o) for o in objs]


def best(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEAT):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def changed(before: NodeNetwork, after: NodeNetwork) -> int:
    total = 0
    for f in fields(NodeNetwork):
        old, new = set(getattr(before, f.name)), set(getattr(after, f.name))
        total += max(len(old - new), len(new - old))
    return total


def main() -> None:
    cfg = PlanConfig()
    rows: list[dict[str, Any]] = []
    for label, gws, per in (
        ("100 gw x 100 nodes", 100, 100),
        ("1000 gw x 10 nodes", 1000, 10),
        ("10 gw x 1000 nodes", 10, 1000),
    ):
        objs = cluster(gws, per)
        parsed = [Gateway.from_dict(o) for o in objs]
        parse_s = best(partial(parse_all, objs))
        member_s = best(partial(plan, parsed, [], "local-1", cfg))
        gateway_s = best(partial(plan, parsed, [], "local-0", cfg))
        routes = len(plan(parsed, [], "local-1", cfg).state.routes)

        # Failovers at this scale: the local pool's gateway (seen by a member) and a remote one.
        local_fo = [dict(o) for o in objs]
        local_fo[0] = json.loads(json.dumps(objs[0]))
        local_fo[0]["status"]["activeEndpoints"] = [dict(local_fo[0]["spec"]["endpoints"][2])]
        remote_fo = [dict(o) for o in objs]
        remote_fo[1] = json.loads(json.dumps(objs[1]))
        remote_fo[1]["status"]["activeEndpoints"] = [dict(remote_fo[1]["spec"]["endpoints"][1])]
        fo_member = changed(
            plan(parsed, [], "local-1", cfg).state,
            plan([Gateway.from_dict(o) for o in local_fo], [], "local-1", cfg).state,
        )
        fo_gateway = changed(
            plan(parsed, [], "local-0", cfg).state,
            plan([Gateway.from_dict(o) for o in remote_fo], [], "local-0", cfg).state,
        )
        rows.append(
            {
                "cluster": label,
                "remote_subnets": routes,
                "parse_ms": round(parse_s * 1000, 1),
                "plan_member_ms": round(member_s * 1000, 1),
                "plan_gateway_ms": round(gateway_s * 1000, 1),
                "plan_vs_parse": round(gateway_s / parse_s, 2),
                "failover_changes_member": fo_member,
                "failover_changes_remote_gateway": fo_gateway,
            }
        )

    header = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[h]).ljust(w) for h, w in zip(header, widths, strict=True)))
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "plan.json").write_text(
        json.dumps({"baseline": "Gateway.from_dict of the same objects", "rows": rows}, indent=2) + "\n"
    )
    print(f"written {out / 'plan.json'}")


if __name__ == "__main__":
    main()
