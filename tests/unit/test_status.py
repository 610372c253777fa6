"""`raven status` / `raven graph` on synthetic clusters: path kinds, health from reports, problems, JSON schema."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from raven.agent.graph import Paint, render_graph, render_status
from raven.agent.plan import PlanConfig, plan
from raven.agent.status import ClusterStatus, build_status, combine, iter_json, to_json
from raven.agent.topology import build_topology
from raven.api.gateway import Gateway, UnparsableGateway, parse_gateway
from raven.api.node import Node
from raven.api.pathreport import PathReport
from raven.config import ConfigError
from raven.opscli import Snapshot, kubeconfig_path, plan_config, status_document
from tests.unit.plan_cluster import cluster_json, gateway_json, nodes, parse, set_active

JSON = dict[str, Any]
NOW = datetime(2026, 12, 2, 3, 0, 0, tzinfo=UTC)
STALE = timedelta(seconds=180)
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "raven-status.schema.json").read_text())


def target(kind: str, gw: str, node: str, state: str, rtt: float | None = 0.001, loss: float = 0.0,
           since: str = "2026-12-02T02:50:00Z") -> JSON:
    return {"kind": kind, "gateway": gw, "node": node, "address": "241.0.0.1", "state": state, "since": since,
            "rttSeconds": rtt, "lossRatio": loss}


def report(node: str, gw: str, role: str, targets: list[JSON], heartbeat: str = "2026-12-02T02:59:30Z") -> PathReport:
    return PathReport.from_dict({"metadata": {"name": node}, "spec": {"nodeName": node},
                                 "status": {"gateway": gw, "role": role, "heartbeatTime": heartbeat,
                                            "targets": targets}})


def healthy_reports() -> list[PathReport]:
    """Every tunnel the reference cluster has, up, from both ends; every member up to its gateway."""
    return [
        report("cloud-1", "gw-cloud", "gateway", [target("peer", "gw-edge-a", "edge-a-1", "up", 0.010),
                                                  target("peer", "gw-edge-b", "edge-b-1", "up", 0.020),
                                                  target("peer", "gw-dc", "dc-1", "up", 0.004)]),
        report("edge-a-1", "gw-edge-a", "gateway", [target("peer", "gw-cloud", "cloud-1", "up", 0.012),
                                                    target("peer", "gw-dc", "dc-1", "up", 0.006)]),
        report("edge-b-1", "gw-edge-b", "gateway", [target("peer", "gw-cloud", "cloud-1", "up", 0.020),
                                                    target("peer", "gw-dc", "dc-1", "up", 0.008)]),
        report("dc-1", "gw-dc", "gateway", [target("peer", "gw-cloud", "cloud-1", "up", 0.004)]),
        report("edge-a-2", "gw-edge-a", "member", [target("gateway", "gw-edge-a", "edge-a-1", "up", 0.0002)]),
    ]


def status(objs: dict[str, JSON] | None = None, reports: list[PathReport] | None = None,
           node_list: list[Node] | None = None, extra: list[Gateway | UnparsableGateway] | None = None
           ) -> ClusterStatus:
    gws: list[Gateway | UnparsableGateway] = [*parse(objs if objs is not None else cluster_json()), *(extra or [])]
    return build_status(gws, nodes() if node_list is None else node_list,
                        healthy_reports() if reports is None else reports, NOW, cfg=PlanConfig(), stale_after=STALE)


def pair(s: ClusterStatus, a: str, b: str) -> Any:
    return next(p for p in s.pairs if {p.a, p.b} == {a, b})


def test_every_pair_has_the_path_kind_the_agents_plan() -> None:
    s = status()
    kinds = {(p.a, p.b): (p.kind, p.via, p.initiator) for p in s.pairs}
    assert kinds == {
        ("gw-cloud", "gw-dc"): ("direct", None, "gw-cloud"),
        ("gw-cloud", "gw-edge-a"): ("direct", None, "gw-edge-a"),
        ("gw-cloud", "gw-edge-b"): ("direct", None, "gw-edge-b"),
        ("gw-dc", "gw-edge-a"): ("direct", None, "gw-edge-a"),
        ("gw-dc", "gw-edge-b"): ("direct", None, "gw-edge-b"),
        ("gw-edge-a", "gw-edge-b"): ("relay", "gw-cloud", None),
    }
    # The same answer as a gateway's own plan.
    planned = {(p.dst, p.kind, p.via) for p in plan(parse(cluster_json()), nodes(), "edge-a-1", PlanConfig()).paths}
    assert planned == {(b if a == "gw-edge-a" else a, k, v) for (a, b), (k, v, _) in kinds.items()
                       if "gw-edge-a" in (a, b)}


def test_unreachable_pair_is_a_problem_and_dotted_red() -> None:
    objs = cluster_json()
    for name in ("gw-cloud", "gw-dc"):  # no reachable gateway left: the two NAT'd pools have no path
        del objs[name]
    s = status(objs, reports=[])
    (p,) = s.pairs
    assert (p.kind, p.via) == ("unreachable", None)
    assert any(pr.reason == "NoPath" and "gw-edge-a and gw-edge-b" in pr.message for pr in s.problems)
    assert '[label="unknown", style=dotted, color=red, fontcolor=red]' in render_graph(s)
    assert "unreachable (both under NAT, no gateway to relay)  down" in render_status(s)


def test_members_reach_other_pools_via_their_gateway() -> None:
    s = status()
    pool = s.pool("gw-edge-a")
    assert pool is not None and pool.endpoint == "edge-a-1"
    roles = {m.name: (m.role, m.health.state) for m in pool.members}
    assert roles == {"edge-a-1": ("gateway", "unknown"), "edge-a-2": ("member", "up"),
                     "edge-a-3": ("member", "unknown")}
    text = render_status(s)
    assert "gw-edge-a  edge-a-2 (192.168.1.12)  via edge-a-1  up       0.20ms" in text


def test_health_joins_both_ends_and_a_relay_adds_its_legs() -> None:
    s = status()
    direct = pair(s, "gw-cloud", "gw-edge-a")
    assert direct.health.state == "up"
    assert direct.health.rtt_seconds == pytest.approx(0.011)  # mean of 10 ms and 12 ms
    assert direct.health.reporters == ("cloud-1", "edge-a-1")
    assert direct.health.since == datetime(2026, 12, 2, 2, 50, tzinfo=UTC)
    relay = pair(s, "gw-edge-a", "gw-edge-b")
    assert relay.health.state == "up"
    assert relay.health.rtt_seconds == pytest.approx(0.011 + 0.020)
    doc = to_json(s)
    assert doc["summary"] == {"gateways": 4, "active": 4, "nodes": 9,
                              "pairs": {"direct": 5, "relay": 1, "unreachable": 0},
                              "pairHealth": {"up": 6, "degraded": 0, "down": 0, "unknown": 0}, "problems": 0}


def test_an_unhealthy_link_is_red_and_spoils_every_pair_relayed_over_it() -> None:
    reports = healthy_reports()
    reports[0] = report("cloud-1", "gw-cloud", "gateway", [target("peer", "gw-edge-a", "edge-a-1", "up", 0.010),
                                                           target("peer", "gw-edge-b", "edge-b-1", "down", None, 1.0),
                                                           target("peer", "gw-dc", "dc-1", "up", 0.004)])
    s = status(reports=reports)
    assert pair(s, "gw-cloud", "gw-edge-b").health.state == "down"  # the worse end wins
    relayed = pair(s, "gw-edge-a", "gw-edge-b").health
    assert relayed.state == "down" and relayed.loss_ratio == pytest.approx(1.0)
    dot = render_graph(s)
    assert '"gw-cloud/cloud-1" -- "gw-edge-b/edge-b-1" [label="20.00ms", color=red, fontcolor=red, penwidth=2];' in dot
    assert ('"gw-edge-a/edge-a-1" -- "gw-edge-b/edge-b-1" [label="via gw-cloud\\n31.00ms", style=dashed, color=red'
            in dot)
    coloured = render_status(s, Paint(True))
    assert "\033[31mdown" in coloured and "\033[32mup" in coloured
    assert "\033[" not in render_status(s, Paint(False))
    assert "1 relayed, 0 unreachable, 2 unhealthy" in render_status(s).splitlines()[0]


def test_degraded_and_loss_compound_over_a_relay() -> None:
    a = combine([])
    assert a.state == "unknown"
    reports = healthy_reports()
    reports[1] = report("edge-a-1", "gw-edge-a", "gateway", [target("peer", "gw-cloud", "cloud-1", "degraded", 0.012,
                                                                    0.1)])
    reports[2] = report("edge-b-1", "gw-edge-b", "gateway", [target("peer", "gw-cloud", "cloud-1", "up", 0.020, 0.2)])
    h = pair(status(reports=reports), "gw-edge-a", "gw-edge-b").health
    assert h.state == "degraded"
    assert h.loss_ratio == pytest.approx(1 - 0.9 * 0.8)


def test_stale_reports_and_reports_about_a_former_endpoint_are_no_evidence() -> None:
    reports = [report("cloud-1", "gw-cloud", "gateway", [target("peer", "gw-dc", "dc-1", "down", None, 1.0)],
                      heartbeat="2026-12-02T02:55:00Z")]  # 5 minutes old: stale
    assert pair(status(reports=reports), "gw-cloud", "gw-dc").health.state == "unknown"
    # Failover of gw-edge-a to edge-a-2: what was measured towards edge-a-1, or by it, no longer counts.
    objs = cluster_json()
    set_active(objs["gw-edge-a"], "edge-a-2")
    s = status(objs)
    assert s.pool("gw-edge-a").endpoint == "edge-a-2"  # type: ignore[union-attr]
    h = pair(s, "gw-cloud", "gw-edge-a").health
    assert h.state == "unknown" and h.reporters == ()
    # Once the new endpoint reports, the pair has health again.
    reports = [*healthy_reports(), report("edge-a-2", "gw-edge-a", "gateway",
                                          [target("peer", "gw-cloud", "cloud-1", "up", 0.015)])]
    assert pair(status(objs, reports=reports), "gw-cloud", "gw-edge-a").health.reporters == ("edge-a-2",)


def test_a_report_not_written_by_its_node_is_ignored() -> None:
    forged = PathReport.from_dict({"metadata": {"name": "dc-1"}, "spec": {"nodeName": "cloud-1"},
                                   "status": {"gateway": "gw-dc", "role": "gateway",
                                              "heartbeatTime": "2026-12-02T02:59:30Z",
                                              "targets": [target("peer", "gw-cloud", "cloud-1", "down")]}})
    assert pair(status(reports=[forged]), "gw-cloud", "gw-dc").health.state == "unknown"


def test_invalid_and_unparsable_gateways_are_problems_with_their_reasons() -> None:
    objs = cluster_json()
    objs["gw-dc"]["spec"]["exposeType"] = "Bogus"
    objs["gw-dc"]["status"]["conditions"] = [
        {"type": "Valid", "status": "False", "reason": "InvalidSpec",
         "message": "spec.exposeType: unknown expose type 'Bogus'", "lastTransitionTime": "2026-12-02T02:00:00Z"},
        {"type": "TunnelsHealthy", "status": "True", "reason": "Healthy", "message": ""}]
    broken = parse_gateway({"metadata": {"name": "gw-broken"}, "spec": {"endpoints": "not-a-list"}})
    assert isinstance(broken, UnparsableGateway)
    s = status(objs, extra=[broken])
    problems = {(p.kind, p.name, p.reason) for p in s.problems}
    assert ("gateway", "gw-dc", "InvalidSpec") in problems
    assert ("gateway", "gw-broken", "Malformed") in problems
    assert not any(p.reason == "Healthy" for p in s.problems)  # a True condition is no problem
    # The planner's own finding about the spec is there too (it plans from the status anyway).
    assert any(p.kind == "plan" and "gw-dc: invalid spec" in p.message for p in s.problems)
    text = render_status(s)
    assert "[InvalidSpec] gateway gw-dc: Valid=False: spec.exposeType: unknown expose type 'Bogus'" in text


def test_nodes_left_out_say_why() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["conditions"] = [
        {"type": "NodesValid", "status": "False", "reason": "PodCIDRConflict",
         "message": "node dc-3: pod CIDR 10.247.0.0/25 overlaps 10.247.0.0/24 of node dc-1 (gateway gw-dc), which "
                    "had it first; node left out of the network"}]

    def node(name: str, gw: str, cidr: str | None, ready: bool = True) -> Node:
        return Node.from_dict({"metadata": {"name": name, "labels": {"raven.openyurt.io/gateway": gw}},
                               "spec": {"podCIDRs": [cidr]} if cidr else {},
                               "status": {"addresses": [{"type": "InternalIP", "address": "172.16.0.13"}],
                                          "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})

    extra = [node("dc-3", "gw-dc", "10.247.0.0/25"), node("lost-1", "gw-nowhere", "10.250.0.0/24"),
             node("dc-4", "gw-dc", None), node("cloud-1", "gw-cloud", "10.244.0.0/24", ready=False)]
    s = status(objs, node_list=[n for n in nodes() if n.name != "cloud-1"] + extra)
    by_node = {p.name: (p.reason, p.message) for p in s.problems if p.kind == "node"}
    assert by_node["dc-3"][0] == "PodCIDRConflict" and "overlaps 10.247.0.0/24 of node dc-1" in by_node["dc-3"][1]
    assert by_node["lost-1"][0] == "GatewayNotFound"
    assert by_node["dc-4"][0] == "NotListed" and "no pod CIDR" in by_node["dc-4"][1]
    assert by_node["cloud-1"][0] == "NotReady"
    assert [m.ready for m in s.pool("gw-cloud").members] == [False, True]  # type: ignore[union-attr]


def test_planner_problems_are_shown() -> None:
    objs = cluster_json()
    # 240.0.0.0/8 keeps the low 24 bits of a node IP: 10.16.0.11 and dc-1's 172.16.0.11 share 240.16.0.11.
    objs["gw-dc"]["status"]["nodes"][1]["privateIP"] = "10.16.0.11"
    objs["gw-edge-b"]["status"]["nodes"][1]["subnets"] = ["bogus"]
    s = status(objs)
    assert any(p.reason == "OverlayAddressClash" and "dc-2" in p.message for p in s.problems)
    assert any(p.reason == "Planner" and "invalid subnet 'bogus'" in p.message for p in s.problems)


def test_no_active_endpoint_is_a_problem_and_a_dashed_red_cluster() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["activeEndpoints"] = []
    s = status(objs)
    assert any(p.reason == "NoActiveEndpoint" and p.name == "gw-dc" for p in s.problems)
    assert len(s.pairs) == 3
    assert 'label="gw-dc - no active endpoint"; style=dashed; color=red;' in render_graph(s)


def test_json_matches_its_schema() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["conditions"] = [{"type": "Valid", "status": "False", "reason": "InvalidSpec",
                                              "message": "x", "lastTransitionTime": "2026-12-02T02:00:00Z"}]
    broken = parse_gateway({"metadata": {"name": "gw-broken"}, "spec": {"endpoints": 3}})
    s = status(objs, extra=[broken])
    snap = Snapshot(gateways=[], nodes=[], reports=[], now=NOW, notes=["a note"])
    doc = json.loads(json.dumps(status_document(snap, s)))
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["time"] == "2026-12-02T03:00:00Z"
    relay = next(p for p in doc["pairs"] if p["kind"] == "relay")
    assert relay["via"] == "gw-cloud" and relay["health"]["ageSeconds"] == 600.0
    # What the CLI streams is the same document.
    streamed = json.loads("".join(iter_json(s, {"settingsSource": "defaults", "notes": ["a note"]}, batch=2)))
    assert streamed == doc
    for other in (status(reports=[]), status(reports=[report("cloud-1", "gw-cloud", "gateway", [
            target("peer", "gw-dc", "dc-1", "degraded", None, 0.25)])])):  # unknown pairs; no RTT, a loss
        assert json.loads("".join(iter_json(other))) == to_json(other)
    # A document that breaks the schema is refused (the check can fail).
    bad = copy.deepcopy(doc)
    bad["pairs"][0]["kind"] = "teleport"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_large_cluster_text_lists_what_is_not_up_and_counts_the_rest() -> None:
    gws: dict[str, JSON] = {}
    for i in range(40):  # 780 pairs: above the text limit
        nat = i >= 2
        gws[f"gw-{i:02d}"] = gateway_json(f"gw-{i:02d}", f"2026-01-01T00:00:{i:02d}Z",
                                          [(f"n{i}", f"10.1.{i}.1", [f"10.200.{i}.0/24"])], f"n{i}", under_nat=nat)
    s = status(gws, reports=[], node_list=[])
    text = render_status(s)
    assert len(s.pairs) == 780
    # Every pair is unknown here (no reports), so up to the limit are listed, and the count of the rest.
    assert "(380 more pairs not listed: relays: gw-00 carries 703; -o json lists every pair)" in text
    # Pair by pair what the agents' Topology.all_paths() says.
    topology = build_topology(parse(gws), PlanConfig().tunnel_cidr)
    assert [(p.a, p.b, p.kind, p.via, p.initiator) for p in s.pairs] == [
        (q.src, q.dst, q.kind, q.via, q.initiator) for q in topology.all_paths()]


def test_kubeconfig_is_found_as_kubectl_does(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    b.write_text("x")
    home = tmp_path / "home"
    assert kubeconfig_path(str(b), {}, home) == str(b)
    with pytest.raises(ConfigError):
        kubeconfig_path(str(a), {}, home)
    assert kubeconfig_path(None, {"KUBECONFIG": f"{a}:{b}"}, home) == str(b)  # the first that exists
    with pytest.raises(ConfigError, match="no kubeconfig"):
        kubeconfig_path(None, {}, home)
    assert kubeconfig_path(None, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, home) is None
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("x")
    assert kubeconfig_path(None, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, home) == str(home / ".kube" / "config")


def test_settings_come_from_the_agents_configmap() -> None:
    cfg, stale = plan_config({"RAVEN_TUNNEL_CIDR": "100.64.0.0/16", "RAVEN_HEALTH_HEARTBEAT": "20"})
    assert (cfg.tunnel_cidr, cfg.overlay_cidr, stale) == ("100.64.0.0/16", "240.0.0.0/8", timedelta(seconds=60))
    with pytest.raises(ConfigError, match="tunnel-cidr"):
        plan_config({"RAVEN_TUNNEL_CIDR": "nonsense"})


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not installed")
def test_graphviz_accepts_the_graph() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["activeEndpoints"] = []
    for s in (status(), status(objs)):
        out = subprocess.run(["dot", "-Tsvg"], input=render_graph(s), capture_output=True, text=True, check=True)
        assert out.stdout.lstrip().startswith("<?xml") and "</svg>" in out.stdout


def test_raven_dispatches_the_operator_tools(capsys: pytest.CaptureFixture[str]) -> None:
    from raven.cli import main

    assert main(["status", "--kubeconfig", "/nonexistent/kubeconfig"], env={}) == 2
    assert "raven: error: kubeconfig '/nonexistent/kubeconfig' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a mode flag, the tools' own usage
        main(["graph", "-o", "png"], env={})
    assert "invalid choice: 'png'" in capsys.readouterr().err
