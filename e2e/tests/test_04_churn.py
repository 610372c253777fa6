"""Scenario 4: churn. A node joins a pool, a node leaves, a new pool (Gateway) appears and goes away."""

from __future__ import annotations

import pytest

from e2e.cluster import RavenCluster
from raven.kube.client import GATEWAYS

from .conftest import SPARE_GATEWAY, SPARE_NODE, SPARE_POOL_NODE

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _pairs_with(rc: RavenCluster, node: str) -> list[tuple[str, str]]:
    """Failing pod pairs (both directions) between `node`'s pods and every other registered pod."""
    mine = [p for p in rc.pods() if rc.cl.pods[p[0]].node == node]
    m = rc.ping_matrix(rc.pods())
    names = {p[0] for p in mine}
    return [k for k in m.failed if k[0] in names or k[1] in names]


def _routes_to(rc: RavenCluster, node: str, cidr: str, raven_only: bool) -> list[str]:
    out = rc.cl.nodes[node].netns.ip("route", "show", "table", "all").stdout.splitlines()
    return [line for line in out if (not cidr or line.startswith(cidr + " "))
            and (not raven_only or "proto 250" in line)]


def _leave(rc: RavenCluster, node: str) -> None:
    rc.remove_node(node)
    rc.cleanup_agent(node)


def _no_routes_anywhere(rc: RavenCluster, cidr: str, pool: str) -> bool:
    for name in rc.registered:
        # Inside the pool the "CNI" keeps its own route; Raven's must be gone everywhere.
        same_pool = rc.cl.nodes[name].pool == pool
        if _routes_to(rc, name, cidr, raven_only=same_pool):
            return False
    return True


def test_node_joining_a_pool_becomes_reachable_and_leaving_removes_its_routes(rc: RavenCluster) -> None:
    cidr = rc.cl.nodes[SPARE_NODE].pod_cidr
    pool = rc.cl.nodes[SPARE_NODE].pool
    rc.join_node(SPARE_NODE)
    try:
        rc.wait_for(f"{SPARE_NODE} agent ready", lambda: rc.agent_ready(SPARE_NODE)[0], timeout=30)
        rc.wait_for(f"{SPARE_NODE}'s pods reachable from everywhere and back",
                    lambda: not _pairs_with(rc, SPARE_NODE), timeout=45, interval=0.3)
        # Every other pool's gateway routes the new subnet into the tunnel overlay.
        for gw in ("gw-cloud", "gw-edge-b", "gw-edge-pub"):
            node = rc.active_gateway_node(gw)
            assert any("raven1" in r for r in _routes_to(rc, node, cidr, raven_only=True)), (gw, node)
    finally:
        _leave(rc, SPARE_NODE)
    rc.wait_for(f"{cidr} routes gone everywhere", lambda: _no_routes_anywhere(rc, cidr, pool), timeout=30)
    # --cleanup left nothing of Raven's on the node that left.
    leftover = rc.cl.nodes[SPARE_NODE].netns.ip("-o", "link", "show").stdout
    assert "raven0" not in leftover and "raven1" not in leftover
    assert not _routes_to(rc, SPARE_NODE, "", raven_only=True)
    assert "proto 250" not in rc.cl.nodes[SPARE_NODE].netns.ip("rule").stdout


def test_new_pool_joins_the_matrix_and_leaves_it_cleanly(rc: RavenCluster) -> None:
    cidr = rc.cl.nodes[SPARE_POOL_NODE].pod_cidr
    rc.create_gateway(SPARE_GATEWAY)
    rc.join_node(SPARE_POOL_NODE)
    try:
        rc.wait_for(f"{SPARE_GATEWAY} elected", lambda: rc.active_endpoints().get(SPARE_GATEWAY) == [SPARE_POOL_NODE],
                    timeout=30)
        rc.wait_for("the new pool in a full green matrix", lambda: rc.ping_matrix().green, timeout=60, interval=0.3)
        # edge-c is under NAT: it talks to the other NAT pools through the relay, to reachable ones directly.
        rc.wait_for("edge-c's tunnels to the reachable pools",
                    lambda: {"raven-gw-cloud", "raven-gw-edge-pub"} <= rc.tunnels_up(SPARE_POOL_NODE), timeout=15)
        assert not ({"raven-gw-edge-a", "raven-gw-edge-b"} & rc.tunnels_up(SPARE_POOL_NODE))
    finally:
        _leave(rc, SPARE_POOL_NODE)
        rc.delete(GATEWAYS, SPARE_GATEWAY)
        rc.hold_gateways.add(SPARE_GATEWAY)
    rc.wait_for(f"{cidr} routes gone everywhere", lambda: _no_routes_anywhere(rc, cidr, "edge-c"), timeout=30)
    relay = rc.active_gateway_node("gw-cloud")
    rc.wait_for("relay dropped the pool's tunnel", lambda: "raven-gw-edge-c" not in rc.tunnels(relay), timeout=30)
