"""Issue 18: `raven status` and `raven graph` against the running lab (the real CLI, in the control-plane netns).

- every Gateway and every pair is listed with the path kind the topology implies (NAT'd pools relayed through
  the exposed cloud gateway, everything else direct), and, once the agents have probed, each pair is `up` with
  an RTT from both ends' PathReports;
- `kubectl raven status` (the plugin installed with the package) prints the same;
- a failover is shown within a second of the controller writing it, and the moved pool's pairs get their
  health back from the new endpoint's reports;
- `raven graph` gives DOT that Graphviz lays out (`dot -Tsvg`), and `-o svg` does it itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from e2e.apiserver.server import ApiRequest
from e2e.cluster import RAVEN_ARGV, RavenCluster
from raven.opscli import collect, status_from

from .conftest import MEASUREMENTS

pytestmark = [pytest.mark.root, pytest.mark.slow]

GATEWAYS = {"gw-cloud", "gw-edge-a", "gw-edge-b", "gw-edge-pub"}
# What the default topology implies: gw-cloud is exposed, gw-edge-pub reachable, gw-edge-a/b under NAT.
KINDS = {
    ("gw-cloud", "gw-edge-a"): ("direct", None),
    ("gw-cloud", "gw-edge-b"): ("direct", None),
    ("gw-cloud", "gw-edge-pub"): ("direct", None),
    ("gw-edge-a", "gw-edge-b"): ("relay", "gw-cloud"),
    ("gw-edge-a", "gw-edge-pub"): ("direct", None),
    ("gw-edge-b", "gw-edge-pub"): ("direct", None),
}


def raven(rc: RavenCluster, *args: str, timeout: float = 60.0) -> str:
    out = rc.cl.control_plane.run([*RAVEN_ARGV, *args, "--kubeconfig", str(rc.kubeconfig)], check=False,
                                  timeout=timeout)
    assert out.returncode == 0, f"raven {' '.join(args)}: rc={out.returncode} {out.stderr[-2000:]}"
    return out.stdout


def status_json(rc: RavenCluster) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(raven(rc, "status", "-o", "json"))
    return doc


def pairs(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(p["a"], p["b"]): p for p in doc["pairs"]}


def test_status_lists_every_gateway_and_pair_with_its_path_kind_and_health(rc: RavenCluster) -> None:
    # An earlier scenario on this cluster may have failed a gateway over (test_09_monitoring cuts gw-edge-b's
    # tunnels): the old endpoint is then held for --health-hold-time (60 s) and the Gateway says so until then.
    rc.wait_for("no problem left by an earlier scenario", lambda: not status_json(rc)["problems"], timeout=90,
                interval=1.0)
    doc = status_json(rc)
    assert {p["gateway"] for p in doc["pools"]} == GATEWAYS
    active = rc.active_endpoints()
    for pool in doc["pools"]:
        assert pool["active"] and [pool["endpoint"]] == active[pool["gateway"]]
    assert {k: (p["kind"], p["via"]) for k, p in pairs(doc).items()} == KINDS
    assert doc["problems"] == [], doc["problems"]

    # Health comes from the agents' reports: every pair up, with an RTT, measured by both ends of each tunnel.
    def all_up() -> bool:
        nonlocal doc
        doc = status_json(rc)
        return all(p["health"]["state"] == "up" and p["health"]["rttSeconds"] for p in doc["pairs"])

    rc.wait_for("every pair up in raven status", all_up, timeout=60, interval=0.5)
    ps = pairs(doc)
    assert len(ps[("gw-cloud", "gw-edge-a")]["health"]["reporters"]) == 2
    relayed = ps[("gw-edge-a", "gw-edge-b")]["health"]
    assert relayed["rttSeconds"] > max(ps[("gw-cloud", "gw-edge-a")]["health"]["rttSeconds"],
                                       ps[("gw-cloud", "gw-edge-b")]["health"]["rttSeconds"])
    members = [n for p in doc["pools"] for n in p["nodes"] if n["role"] == "member"]
    assert members and all(n["health"]["state"] == "up" for n in members)

    text = raven(rc, "status")
    assert "\033[" not in text  # not a terminal: no colour
    for gw in GATEWAYS:
        assert gw in text
    assert "relay via gw-cloud" in text and "PROBLEMS: none" in text
    MEASUREMENTS["raven_status_text"] = text.splitlines()[0]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_raven_status_is_the_plugin(rc: RavenCluster) -> None:
    bindir = Path(sys.executable).parent
    assert (bindir / "kubectl-raven").exists(), "the package installs the kubectl-raven console script"
    path = f"{bindir}:{os.environ.get('PATH', '')}"
    # kubectl takes no flag before a plugin's name: the kubeconfig comes from $KUBECONFIG, as for kubectl itself.
    out = rc.cl.control_plane.run(["env", f"PATH={path}", f"KUBECONFIG={rc.kubeconfig}", "kubectl", "raven",
                                   "status", "-o", "json"], check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {p["gateway"] for p in doc["pools"]} == GATEWAYS and len(doc["pairs"]) == len(KINDS)


def test_status_shows_a_failover_within_a_second(rc: RavenCluster) -> None:
    gateway = "gw-edge-b"
    old = rc.active_gateway_node(gateway)
    new = rc.member_node("edge-b")
    kubeconfig = str(rc.kubeconfig)
    writes: list[float] = []
    previous_hook = rc.api.server.on_request
    armed = threading.Event()

    def hook(r: ApiRequest) -> None:
        if previous_hook is not None:
            previous_hook(r)
        if armed.is_set() and r.resource == "gateways" and r.subresource == "status" and r.name == gateway \
                and r.verb in ("patch", "update"):
            writes.append(time.monotonic())

    async def endpoint() -> tuple[str | None, float]:
        # `raven status`'s own reads and computation (the CLI minus argparse), on the lab's API thread (in the
        # control-plane netns): the time is when the answer was ready.
        status = status_from(await collect(kubeconfig))
        pool = status.pool(gateway)
        return (pool.endpoint if pool is not None else None), time.monotonic()

    assert rc.api.call(endpoint())[0] == old
    rc.api.server.on_request = hook
    try:
        armed.set()
        t0 = time.monotonic()
        rc.set_node_ready(old, False)
        seen = None
        deadline = t0 + 30
        while time.monotonic() < deadline:
            shown, at = rc.api.call(endpoint())
            if shown == new:
                seen = at
                break
        assert seen is not None, f"raven status never showed {gateway} on {new}"
        written = [w for w in writes if w <= seen]
        assert written, "the status showed the new endpoint before any status write was seen"
        lag = seen - written[0]
        MEASUREMENTS["raven_status_failover_lag_s"] = round(lag, 3)
        MEASUREMENTS["raven_status_failover_after_notready_s"] = round(seen - t0, 3)
        assert lag < 1.0, f"raven status showed the failover {lag:.3f} s after the controller wrote it"
    finally:
        rc.api.server.on_request = previous_hook
        rc.set_node_ready(old, True)

    # The real CLI agrees, and the moved pool's pairs get their health back from the new endpoint's reports.
    def healthy_again() -> bool:
        doc = status_json(rc)
        pool = next(p for p in doc["pools"] if p["gateway"] == gateway)
        mine = [p for p in doc["pairs"] if gateway in (p["a"], p["b"]) and p["kind"] == "direct"]
        return pool["endpoint"] == new and all(p["health"]["state"] == "up" and new in p["health"]["reporters"]
                                               for p in mine)

    rc.wait_for(f"{gateway}'s pairs measured by {new}", healthy_again, timeout=60, interval=0.5)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")
def test_graph_is_dot_that_graphviz_accepts(rc: RavenCluster, tmp_path: Path) -> None:
    dot = raven(rc, "graph")
    assert dot.startswith("graph raven {")
    assert dot.count("subgraph cluster_") == len(GATEWAYS)
    assert "style=dashed" in dot and "via gw-cloud" in dot
    (tmp_path / "lab.dot").write_text(dot)
    laid_out = rc.cl.control_plane.run(["dot", "-Tsvg", str(tmp_path / "lab.dot")], check=False)
    assert laid_out.returncode == 0, laid_out.stderr
    assert "</svg>" in laid_out.stdout
    svg = raven(rc, "graph", "-o", "svg")
    # (Graphviz writes "-" in names as &#45;.)
    assert svg.lstrip().startswith("<?xml") and svg.count("<title>cluster_") == len(GATEWAYS)
