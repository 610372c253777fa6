"""`python -m e2e.demo [--once] [--topology NAME]`: Raven on one machine, in network namespaces.

Brings up a topology (default: a public cloud pool, two edge pools behind NAT, a public edge pool)
with the test API server, two controllers, one charon and one agent per node (`e2e.cluster`),
shows progress while it converges, then prints:

- the pod-to-pod connectivity matrix (every ordered pod pair, ok with RTT, or FAIL);
- every Gateway with its active endpoint (read back from the API server);
- `raven status`: each pool, the path each pair of pools takes and its health, computed by the agents' own
  planning code from the Gateways and the agents' PathReports, so what is shown is what the agents plan;
- where it wrote `raven graph` of the cluster (DOT, and SVG when Graphviz is installed; `--out-dir`, default
  `.demo/`);
- the time from start to a full green matrix.

Then it keeps running until Ctrl-C (with a hint for poking at it), or tears down at once with
`--once`. Teardown removes every namespace and process it created, also on Ctrl-C and errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from e2e.cluster import Matrix, RavenCluster
from e2e.netlab import find_leftovers
from e2e.topology import load_topology
from raven.agent.graph import render_graph, render_status
from raven.agent.status import ClusterStatus
from raven.opscli import collect, status_from, svg

PREFIX = "rvd"


def _short(pod: str) -> str:
    return pod[:-3] if pod.endswith("-p0") else pod


def format_matrix(m: Matrix, pods: Sequence[str]) -> str:
    """Rows are sources, columns destinations; a cell is the RTT in ms, FAIL, or '-' on the diagonal."""
    names = [_short(p) for p in pods]
    width = max(8, *(len(n) for n in names)) + 1
    lines = ["from \\ to".ljust(width) + "".join(n.rjust(width) for n in names)]
    for src, sname in zip(pods, names, strict=True):
        cells = []
        for dst in pods:
            if src == dst:
                cells.append("-".rjust(width))
                continue
            r = m.results.get((src, dst))
            if r is None or not r.ok:
                cells.append("FAIL".rjust(width))
            else:
                cells.append(f"{r.rtt_avg_ms:.2f}ms".rjust(width) if r.rtt_avg_ms is not None else "ok".rjust(width))
        lines.append(sname.ljust(width) + "".join(cells))
    ok = len(m.results) - len(m.failed)
    lines.append(f"{ok}/{len(m.results)} pod pairs ok")
    return "\n".join(lines)


def format_gateways(rc: RavenCluster) -> str:
    lines = []
    for name, g in sorted(rc.gateways().items()):
        spec = g.get("spec") or {}
        status = g.get("status") or {}
        eps = status.get("activeEndpoints") or []
        if eps:
            ep = eps[0]
            node = ep.get("nodeName", "?")
            ip = rc.cl.nodes[node].ip if node in rc.cl.nodes else "?"
            where = f"public {ep['publicIP']}" if ep.get("publicIP") else ("under NAT" if ep.get("underNAT")
                                                                            else "reachable")
            active = f"active endpoint {node} ({ip}, {where})"
        else:
            active = "NO active endpoint"
        expose = spec.get("exposeType") or "-"
        members = ", ".join(n.get("nodeName", "?") for n in status.get("nodes") or [])
        lines.append(f"  {name:<13} {active}; exposeType {expose}; nodes {members or '-'}")
    return "\n".join(lines)


async def _cluster_status(kubeconfig: str) -> ClusterStatus:
    return status_from(await collect(kubeconfig))


def cluster_status(rc: RavenCluster, timeout: float = 20.0) -> ClusterStatus:
    """What `raven status` shows (its own reads and computation, run in the control-plane netns), once the agents'
    reports say every pair is up (their loss window first has to forget the probes sent before the tunnels were
    up), or after `timeout` s: then the status shows what is not."""
    deadline = time.monotonic() + timeout
    while True:
        status = rc.api.call(_cluster_status(str(rc.kubeconfig)))
        if all(p.state == "up" for p in status.pairs) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def write_graph(status: ClusterStatus, out_dir: Path) -> list[Path]:
    """`raven graph` of the demo's cluster as DOT and, when Graphviz is installed, SVG; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dot = render_graph(status)
    written = [out_dir / "raven-graph.dot"]
    written[0].write_text(dot)
    if shutil.which("dot") is not None:
        written.append(out_dir / "raven-graph.svg")
        written[1].write_text(svg(dot))
    return written


def hint(rc: RavenCluster) -> str:
    pods = sorted(rc.cl.pods.values(), key=lambda p: p.name)
    a, b = pods[0], pods[-1]
    gw = next(iter(rc.cl.nodes.values()))
    return "\n".join([
        "The cluster keeps running. Poke at it from another shell (as root):",
        f"  ip netns exec {a.netns.name} ping {b.ip}            # pod {a.name} -> pod {b.name}",
        f"  ip netns exec {gw.netns.name} ip route show table all | grep -v local   # a node's routes",
        f"  ip netns exec {gw.netns.name} swanctl --list-sas --uri unix://{rc.charon(gw.name).vici_socket} 2>/dev/null",
        f"  ip netns exec {rc.cl.control_plane.name} kubectl --kubeconfig {rc.kubeconfig} get gw",
        f"  ip netns list | grep '^{rc.prefix}-'                # every namespace of the demo",
        f"Logs: {rc.run_dir}/<namespace>/{{agent,charon}}.*.log, controllers in {rc.run_dir}/cp/",
        "Press Ctrl-C to tear everything down.",
    ])


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--once", action="store_true", help="tear down right after printing the results")
    ap.add_argument("--topology", default="default", help="a name in e2e/topologies/ or a YAML path")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for convergence")
    ap.add_argument("--prefix", default=PREFIX, help="name prefix of every namespace the demo creates")
    ap.add_argument("--out-dir", default=".demo", help="where the graph (DOT, SVG) is written")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every lab step")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo builds network namespaces: run it as root", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, _sigterm)
    # Ctrl-C must tear down even when started in the background of a script (where SIGINT is ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = load_topology(args.topology)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    rc = RavenCluster(spec, prefix=args.prefix)
    ok = False
    failed = False  # logs are kept only when something went wrong (not on Ctrl-C)
    try:
        say(f"building topology {args.topology!r}: "
            + ", ".join(f"{p.name} ({'NAT' if p.nat else 'public'}, {len(p.nodes)} nodes)" for p in spec.pools))
        rc.start(progress=say)
        matrix = rc.wait_converged(timeout=args.timeout, progress=say)
        green_s = time.monotonic() - t0
        pods = sorted(p for p, _, _ in rc.pods())
        print("\nPod-to-pod connectivity (ping RTT; rows = source, columns = destination; <node> = pod <node>-p0):")
        print(format_matrix(matrix, pods))
        print("\nGateways (status written by the controller):")
        print(format_gateways(rc))
        status = cluster_status(rc)
        print("\n`raven status` (pools, paths and their health, from the agents' planning code and PathReports; "
              "also `kubectl raven status`):")
        print(render_status(status), end="")
        files = write_graph(status, Path(args.out_dir))
        print(f"\nThe same as a picture (`raven graph`): {', '.join(str(f) for f in files)}"
              + ("" if len(files) > 1 else " (install graphviz for the SVG)"))
        print(f"\nFull green matrix {green_s:.1f}s after start "
              f"(topology {rc.timings.get('build_s', 0):.2f}s, all processes started at "
              f"{rc.timings.get('started_s', 0):.1f}s).")
        ok = True
        if not args.once:
            print("\n" + hint(rc), flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    except Exception as e:
        failed = True
        print(f"\ndemo failed: {e}", file=sys.stderr)
    finally:
        print("tearing down ...", flush=True)
        # A second Ctrl-C must not leave a half-removed lab behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        rc.close(keep_logs=failed)
        if failed and rc.net is not None:
            print(f"logs kept in {rc.run_dir}")
        left = {k: v for k, v in find_leftovers(rc.prefix).items() if v}
        if left:
            print(f"WARNING: left behind: {left}; remove with: python -m e2e.netlab cleanup {rc.prefix}")
        else:
            print(f"done: no namespace, mount or process named {rc.prefix}-* is left.", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
