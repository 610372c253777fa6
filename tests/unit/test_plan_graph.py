"""The text views are rendered from the same data the plan uses."""

from __future__ import annotations

from raven.agent.graph import render_dot, render_paths, render_plan, render_topology
from raven.agent.plan import PlanConfig, plan
from raven.agent.topology import build_topology
from tests.unit.plan_cluster import cluster_json, nodes, parse

CFG = PlanConfig()


def test_topology_text_names_each_pair_direct_or_via_relay() -> None:
    text = render_topology(parse(cluster_json()), CFG.tunnel_cidr)
    assert "  gw-edge-a -> gw-edge-b: via relay gw-cloud\n" in text
    assert "  gw-cloud -> gw-edge-a: direct (gw-edge-a initiates)\n" in text
    assert "  gw-cloud -> gw-dc: direct (gw-cloud initiates)\n" in text
    assert "gw-cloud: endpoint cloud-1 (10.0.0.11), reachable at 203.0.113.10:4500" in text
    assert "gw-edge-b: endpoint edge-b-1 (192.168.2.11), under NAT" in text
    # One line per unordered pair of the four active gateways.
    assert text.count(" -> ") == 6


def test_topology_text_matches_what_a_gateway_plans() -> None:
    objs = cluster_json()
    objs["gw-cloud"]["status"]["activeEndpoints"] = []
    text = render_paths(build_topology(parse(objs), CFG.tunnel_cidr))
    assert "gw-cloud: no active tunnel endpoint" in text
    relay = "gw-dc"
    assert f"gw-edge-a -> gw-edge-b: via relay {relay}" in text
    assert {p.via for p in plan(parse(objs), nodes(), "edge-a-1", CFG).paths if p.kind == "relay"} == {relay}


def test_problems_are_shown() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["nodes"][0]["subnets"] = ["bogus"]
    assert "invalid subnet 'bogus'" in render_topology(parse(objs), CFG.tunnel_cidr)


def test_dot_has_one_edge_per_pair() -> None:
    dot = render_dot(build_topology(parse(cluster_json()), CFG.tunnel_cidr))
    assert dot.startswith("graph raven {") and dot.rstrip().endswith("}")
    # Pairs join the pools' active endpoints; members join their gateway (5 members).
    assert '"gw-cloud/cloud-1" -- "gw-edge-a/edge-a-1" [label="unknown", color=gray50];' in dot
    assert '"gw-edge-a/edge-a-1" -- "gw-edge-b/edge-b-1" [label="via gw-cloud\\nunknown", style=dashed' in dot
    assert dot.count(" -- ") == 6 + 5


def test_plan_text_counts_objects_and_lists_connections() -> None:
    result = plan(parse(cluster_json()), nodes(), "edge-a-1", CFG)
    text = render_plan("edge-a-1", result)
    assert text.startswith("node edge-a-1: role gateway, gateway gw-edge-a\n")
    assert f"routes {len(result.state.routes)}," in text
    assert "ipsec raven-gw-cloud: initiates, remote 203.0.113.10:4500" in text
    assert "gw-edge-a -> gw-edge-b: via relay gw-cloud" in text
    assert render_plan("x", plan(parse(cluster_json()), nodes(), "x", CFG)).startswith("node x: role none, gateway -")
