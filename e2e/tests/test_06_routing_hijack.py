"""Scenario 6: routing hijack through Node objects. A Node whose pod CIDR overlaps another pool's subnet, and
Nodes whose pod CIDR covers the WAN (and the API server's address), break no working pair and are reported
(an Event on the Node and on the Gateway, NodesValid=False, read back from the API). With the controllers
stopped and such a subnet written straight into a status, the agents' own safety net still routes nothing
that covers the API server. A node labelled for a Gateway that does not exist says so in its agent's
/readyz and in an Event."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster import RavenCluster, metric
from raven.kube.client import EVENTS, GATEWAYS, NODES

pytestmark = [pytest.mark.root, pytest.mark.slow]

API_SERVER = "198.18.0.2"


def _nodes_valid(rc: RavenCluster, gateway: str) -> dict[str, Any]:
    for c in (rc.get(GATEWAYS, gateway).get("status") or {}).get("conditions") or []:
        if c.get("type") == "NodesValid":
            return dict(c)
    return {}


def _events(rc: RavenCluster, reason: str, name: str) -> list[dict[str, Any]]:
    return [e for e in rc.list_objects(EVENTS, "default")
            if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") == name]


def _listed(rc: RavenCluster, gateway: str) -> dict[str, list[str]]:
    return {n["nodeName"]: n.get("subnets") or []
            for n in (rc.get(GATEWAYS, gateway).get("status") or {}).get("nodes") or []}


def _node(name: str, gateway: str, ip: str, cidr: str) -> dict[str, Any]:
    """A Node object without a machine behind it: all an attacker (or a careless operator) needs to write."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"raven.openyurt.io/gateway": gateway}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture
def added_nodes(rc: RavenCluster) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        rc.delete(NODES, name)


def _wait_condition(rc: RavenCluster, gateway: str, status: str, reason: str) -> dict[str, Any]:
    rc.wait_for(f"NodesValid={status} {reason} on {gateway}", lambda: (
        _nodes_valid(rc, gateway).get("status"), _nodes_valid(rc, gateway).get("reason")) == (status, reason),
        timeout=30)
    return _nodes_valid(rc, gateway)


def test_a_pod_cidr_overlapping_another_pools_subnet_breaks_no_pair(rc: RavenCluster,
                                                                    added_nodes: list[str]) -> None:
    victim = rc.cl.nodes["cloud-2"].pods[0]
    # The /25 holding the victim pod: longer than cloud-2's /24, so if it were routed anywhere it would win.
    stolen = str(ipaddress.ip_network(f"{victim.ip}/25", strict=False))
    rc.create(NODES, _node("edge-b-evil", "gw-edge-b", "192.168.12.99", stolen))
    added_nodes.append("edge-b-evil")
    cond = _wait_condition(rc, "gw-edge-b", "False", "PodCIDRConflict")
    assert f"node edge-b-evil: pod CIDR {stolen} overlaps 10.10.1.0/24 of node cloud-2 (gateway gw-cloud)" in \
        cond["message"], cond
    assert "edge-b-evil" not in _listed(rc, "gw-edge-b")
    assert _listed(rc, "gw-cloud")["cloud-2"] == ["10.10.1.0/24"]
    rc.wait_for("PodCIDRConflict events on the Node and the Gateway", lambda: bool(
        _events(rc, "PodCIDRConflict", "edge-b-evil")) and bool(_events(rc, "PodCIDRConflict", "gw-edge-b")),
        timeout=30)
    m = rc.ping_matrix()
    assert m.green, m.failed
    assert _nodes_valid(rc, "gw-cloud").get("status") == "True"


def test_pod_cidrs_covering_the_wan_and_the_api_server_break_no_pair(rc: RavenCluster,
                                                                     added_nodes: list[str]) -> None:
    # /16: the whole WAN side of the lab, every public node included. /24: only the WAN segment, which holds
    # the API server and no node (the controller reserves the API server's address itself).
    rc.create(NODES, _node("edge-pub-wan16", "gw-edge-pub", "198.18.4.98", "198.18.0.0/16"))
    added_nodes.append("edge-pub-wan16")
    rc.create(NODES, _node("edge-pub-wan24", "gw-edge-pub", "198.18.4.99", "198.18.0.0/24"))
    added_nodes.append("edge-pub-wan24")
    rc.wait_for("both nodes reported", lambda: "edge-pub-wan16" in _nodes_valid(rc, "gw-edge-pub").get(
        "message", "") and "edge-pub-wan24" in _nodes_valid(rc, "gw-edge-pub").get("message", ""), timeout=30)
    cond = _nodes_valid(rc, "gw-edge-pub")
    assert (cond["status"], cond["reason"]) == ("False", "PodCIDRReserved"), cond
    assert "node edge-pub-wan16: pod CIDR 198.18.0.0/16 covers 198.18.1.11, the InternalIP of node cloud-1" in \
        cond["message"]
    assert f"node edge-pub-wan24: pod CIDR 198.18.0.0/24 overlaps the API server's address {API_SERVER}" in \
        cond["message"]
    assert set(_listed(rc, "gw-edge-pub")) == {"edge-pub-1", "edge-pub-2"}
    for name in ("edge-pub-wan16", "edge-pub-wan24"):
        rc.wait_for(f"PodCIDRReserved event on {name}", lambda name=name: bool(
            _events(rc, "PodCIDRReserved", name)), timeout=30)
    assert _events(rc, "PodCIDRReserved", "gw-edge-pub")
    leader = rc.leader()
    assert leader is not None
    assert metric(rc.metrics(f"controller/{leader}"), "raven_controller_rejected_nodes") == 2
    m = rc.ping_matrix()
    assert m.green, m.failed
    for node in sorted(rc.agents):
        assert rc.agent_ready(node)[0], (node, rc.agent_ready(node)[1])


def _raven_routes(rc: RavenCluster, node: str) -> set[str]:
    out = rc.cl.nodes[node].netns.ip("-j", "route", "show", "table", "all", "proto", "250").stdout
    return {r["dst"] for r in json.loads(out or "[]")}


def test_agents_route_nothing_that_covers_the_api_server_even_without_the_controller(rc: RavenCluster) -> None:
    # The controllers are stopped, so what is written into a status stays: the agents are the last line.
    for proc in rc.controllers:
        proc.stop()
    try:
        gw = rc.get(GATEWAYS, "gw-edge-pub")
        nodes = [*gw["status"]["nodes"], {"nodeName": "edge-pub-wan", "privateIP": "198.18.4.99",
                                          "subnets": ["198.18.0.0/24"]}]
        rc.patch(GATEWAYS, "gw-edge-pub", {"status": {"nodes": nodes}}, subresource="status")
        problem = "subnet 198.18.0.0/24 covers the API server's address (198.18.0.2); not routed"
        # Every node that would route it: all other pools, and edge-pub's gateway (a return route). The
        # pool's members route none of their own pool's subnets anyway.
        routing = [*sorted(n for n in rc.agents if rc.cl.nodes[n].pool != "edge-pub"),
                   rc.active_gateway_node("gw-edge-pub")]

        def every_agent_skipped_it() -> bool:
            return all(problem in rc.agents[n].logs() for n in routing)

        rc.wait_for("every agent that would route it reports the skipped subnet", every_agent_skipped_it,
                    timeout=30)
        for node in routing:
            assert metric(rc.metrics(f"agent/{node}"), "raven_agent_plan_problems") >= 1, node
        for node in sorted(rc.agents):
            assert "198.18.0.0/24" not in _raven_routes(rc, node), node
        m = rc.ping_matrix()
        assert m.green, m.failed
    finally:
        for proc in rc.controllers:
            proc.start()
    # A controller leads again and rewrites the status from the Nodes: the injected entry goes.
    rc.wait_for("the injected entry is gone", lambda: "edge-pub-wan" not in _listed(rc, "gw-edge-pub"), timeout=30)


def test_a_node_labelled_for_a_missing_gateway_says_so(rc: RavenCluster) -> None:
    node = rc.member_node("edge-a")
    rc.patch(NODES, node, {"metadata": {"labels": {"raven.openyurt.io/gateway": "gw-typo"}}})
    try:
        rc.wait_for(f"{node} unready", lambda: not rc.agent_ready(node)[0], timeout=30)
        body = rc.agent_ready(node)[1]
        assert "membership" in body and "no Gateway gw-typo exists" in body, body
        assert "node is out of the network" in rc.agents[node].logs()
        rc.wait_for("GatewayNotFound event", lambda: bool(_events(rc, "GatewayNotFound", node)), timeout=30)
        others = [p for p in rc.pods() if rc.cl.pods[p[0]].node != node]
        m = rc.ping_matrix(others)
        assert m.green, m.failed
    finally:
        rc.patch(NODES, node, {"metadata": {"labels": {"raven.openyurt.io/gateway": "gw-edge-a"}}})
    rc.wait_for(f"{node} ready again", lambda: rc.agent_ready(node)[0], timeout=30)
