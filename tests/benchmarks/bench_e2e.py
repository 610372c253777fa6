"""End-to-end benchmark on the default topology (e2e.cluster): what a user of Raven would feel.

- start to full matrix: from nothing to every pod pair answering (topology, API server, charons,
  controllers, agents, elections, tunnels), per cluster build; baseline in the same run: the time
  until every process is started (what the harness alone costs, Raven's convergence excluded);
- failover outage: a NAT'd pool's active gateway crashes (drops off its LAN) and is marked NotReady
  while a pod behind the pool's other node probes a pod in the cloud pool every 10 ms; outage =
  longest run of unanswered probes (median of several runs, alternating between the pool's two
  nodes; aim < 2 s); also the time from the NotReady write to the new election in the API and to a
  ping through the new gateway; and the same for a drained gateway (NotReady only, still up);
- probe loss during agent restarts (gateway and member node; aim: zero); baseline in the same
  run: the same probe with no restart (the harness's own loss).

Run as root: `python -m tests.benchmarks.bench_e2e [--builds N] [--failovers N] [--restarts N]`;
prints a table and writes bench-results/e2e.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from e2e.cluster import RavenCluster, metric
from e2e.probe import ContinuousProbe

PREFIX = "rveb"


def _converge_once() -> tuple[RavenCluster, float, float]:
    t0 = time.monotonic()
    rc = RavenCluster("default", prefix=PREFIX)
    try:
        rc.start()
        started = time.monotonic() - t0
        rc.wait_converged(timeout=120)
        return rc, started, time.monotonic() - t0
    except BaseException:
        rc.close(keep_logs=True)
        raise


def _idle_probe(rc: RavenCluster, src_node: str, dst_node: str, seconds: float, port: int) -> tuple[int, int]:
    src, dst = rc.cl.nodes[src_node].pods[0], rc.cl.nodes[dst_node].pods[0]
    with ContinuousProbe(src.netns, dst.netns, dst.ip, port=port, name=f"idle-{port}") as probe:
        assert probe.wait_first_reply()
        time.sleep(seconds)
        res = probe.stop()
    return res.lost, res.sent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_e2e")
    ap.add_argument("--builds", type=int, default=2)
    ap.add_argument("--failovers", type=int, default=5)
    ap.add_argument("--restarts", type=int, default=3)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_e2e needs root (network namespaces)", file=sys.stderr)
        return 2

    builds: list[dict[str, float]] = []
    rc: RavenCluster | None = None
    try:
        for i in range(args.builds):
            rc, started, green = _converge_once()
            builds.append({"processes_started_s": started, "full_matrix_s": green})
            print(f"build {i + 1}: processes started {started:.2f} s, full matrix {green:.2f} s", flush=True)
            if i < args.builds - 1:
                rc.close()
                rc = None
        assert rc is not None

        failovers: list[dict[str, Any]] = []
        dst = rc.member_node("cloud")
        drained: list[dict[str, Any]] = []
        for i in range(2 * args.failovers):
            # Alternate: a crashed gateway (link cut + NotReady) and a drained one (NotReady only).
            dead = i % 2 == 0
            r = rc.failover_under_probe("edge-a", dst, port=18200 + i, dead=dead)
            row = {"from": r.old, "to": r.new, "elected_s": r.elected_s, "traffic_s": r.traffic_s,
                   "outage_s": r.probe.max_outage_s, "lost": r.probe.lost, "resumed": r.resumed}
            (failovers if dead else drained).append(row)
            kind = "crashed" if dead else "drained"
            print(f"failover {i + 1} ({kind}): {r.old} -> {r.new}: outage {r.probe.max_outage_s:.3f} s "
                  f"(elected {r.elected_s:.3f} s, traffic {r.traffic_s:.3f} s after the write)", flush=True)
            rc.wait_converged(timeout=60)

        # Memory of the real processes after all that churn (their own process_resident_memory_bytes).
        rss_mib = {name: metric(rc.metrics(f"agent/{name}"), "process_resident_memory_bytes") / 2**20
                   for name in rc.registered}
        rss_mib["controller/0"] = metric(rc.metrics("controller/0"), "process_resident_memory_bytes") / 2**20

        restarts: list[dict[str, Any]] = []
        gw = rc.active_gateway_node("gw-edge-b")
        member = rc.member_node("edge-b")
        far = rc.member_node("edge-pub")
        base_lost, base_sent = _idle_probe(rc, member, far, 3.0, port=18250)
        for i in range(args.restarts):
            for role, node in (("gateway", gw), ("member", member)):
                res = rc.restart_agent_under_probe(node, member, far, port=18260 + 2 * i + (role == "member"))
                restarts.append({"role": role, "node": node, "lost": res.lost, "sent": res.sent})
                print(f"agent restart {role} {node}: lost {res.lost}/{res.sent}", flush=True)
    finally:
        if rc is not None:
            rc.close()

    outages = [f["outage_s"] for f in failovers]
    median_outage = statistics.median(outages)
    full = [b["full_matrix_s"] for b in builds]
    started_med = statistics.median(b["processes_started_s"] for b in builds)
    lost_gw = sum(r["lost"] for r in restarts if r["role"] == "gateway")
    lost_member = sum(r["lost"] for r in restarts if r["role"] == "member")
    sent_restart = sum(r["sent"] for r in restarts)
    print()
    print(f"{'measure':<52} {'value':>12} {'baseline':>12}")
    print(f"{'start -> full pod matrix (median s)':<52} {statistics.median(full):>12.2f} {started_med:>12.2f}")
    print(f"{'failover outage, median of ' + str(len(outages)) + ' (s; aim < 2)':<52} {median_outage:>12.3f} "
          f"{'-':>12}")
    print(f"{'failover outage, max (s)':<52} {max(outages):>12.3f} {'-':>12}")
    print(f"{'drained gateway (NotReady only): outage median (s)':<52} "
          f"{statistics.median(f['outage_s'] for f in drained):>12.3f} {'-':>12}")
    print(f"{'NotReady write -> new active endpoint (median s)':<52} "
          f"{statistics.median(f['elected_s'] for f in failovers):>12.3f} {'-':>12}")
    print(f"{'NotReady write -> ping via new gateway (median s)':<52} "
          f"{statistics.median(f['traffic_s'] for f in failovers):>12.3f} {'-':>12}")
    print(f"{'probe loss, agent restarts on a gateway (packets)':<52} {lost_gw:>12d} {base_lost:>12d}")
    print(f"{'probe loss, agent restarts on a member (packets)':<52} {lost_member:>12d} {base_lost:>12d}")
    agents_rss = [v for k, v in rss_mib.items() if not k.startswith("controller")]
    print(f"{'agent RSS, max over ' + str(len(agents_rss)) + ' agents (MiB)':<52} {max(agents_rss):>12.1f} {'-':>12}")
    print(f"{'controller RSS (MiB)':<52} {rss_mib['controller/0']:>12.1f} {'-':>12}")
    print(f"(baselines: processes merely started; the same 10 ms probe for 3 s with no restart, {base_sent} sent; "
          f"{sent_restart} probes sent across restarts)")

    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "e2e.json").write_text(json.dumps({
        "topology": "default",
        "builds": builds,
        "rss_mib": rss_mib,
        "full_matrix_median_s": statistics.median(full),
        "baseline_processes_started_median_s": started_med,
        "failovers_crashed_gateway": failovers,
        "failovers_drained_gateway": drained,
        "failover_outage_median_s": median_outage,
        "failover_outage_aim_s": 2.0,
        "agent_restarts": restarts,
        "agent_restart_loss_gateway": lost_gw,
        "agent_restart_loss_member": lost_member,
        "baseline_idle_probe": {"lost": base_lost, "sent": base_sent},
    }, indent=2))
    print(f"wrote {out / 'e2e.json'}")
    print(f"aims: failover outage < 2 s {'met' if median_outage < 2.0 else 'MISSED'}; "
          f"zero loss on agent restart {'met' if lost_gw == 0 and lost_member == 0 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
