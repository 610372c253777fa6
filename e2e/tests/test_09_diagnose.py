"""Scenario 9: `raven diagnose` (issue 18). A healthy node reports nothing (exit 0); each case breaks exactly one
thing on one node and sees diagnose name it (exit 1), then restores it (the `healthy` fixture waits for green).

Breaks that the agent would repair on its own (a deleted route, a sysctl) are made while that node's agent is
stopped (the data plane stays: an agent stop never touches it), so what diagnose sees is the break itself."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster import RavenCluster

from .test_05_bad_input import _break_credentials, _restore_credentials

pytestmark = [pytest.mark.root, pytest.mark.slow]


def findings(report: dict[str, Any], check: str | None = None) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if check is None or f["check"] == check]


def describe(report: dict[str, Any]) -> str:
    return "\n".join(f"[{f['check']}] {f['problem']}" for f in report["findings"]) or "no findings"


@contextlib.contextmanager
def agent_stopped(rc: RavenCluster, node: str) -> Iterator[None]:
    rc.agents[node].stop()
    try:
        yield
    finally:
        rc.agents[node].start()


def remote_route(rc: RavenCluster, node: str) -> str:
    """A remote subnet the node routes into Raven's table (from the kernel, `ip -j route show table 9027`)."""
    import json

    routes = json.loads(rc.cl.nodes[node].netns.ip("-j", "route", "show", "table", "9027", "proto", "250").stdout)
    assert routes, f"{node} routes nothing into Raven"
    return str(routes[0]["dst"])


def test_a_healthy_gateway_and_member_report_nothing(rc: RavenCluster) -> None:
    nodes = (rc.active_gateway_node("gw-edge-a"), rc.member_node("edge-a"), rc.active_gateway_node("gw-cloud"))
    for node in nodes:
        # In the agent's container: its flags read from the agent process (pid 1 there).
        code, report = rc.diagnose(node, agent_pid=node != nodes[0])
        assert report["findings"] == [], f"{node}: {describe(report)}"
        assert code == 0 and report["ok"]
        assert report["role"] in ("gateway", "member")
        assert any(c.startswith("probes") for c in report["checked"]), report["checked"]


def test_a_missing_route_is_named(rc: RavenCluster) -> None:
    node = rc.member_node("edge-b")
    dst = remote_route(rc, node)
    with agent_stopped(rc, node):
        rc.cl.nodes[node].netns.ip("route", "del", dst, "table", "9027")
        code, report = rc.diagnose(node, "--no-probes")
    assert code == 1, describe(report)
    assert any(f["subject"] == f"route {dst}" and "missing" in f["problem"] for f in findings(report, "kernel")), \
        describe(report)
    assert not findings(report, "route"), "the default route the lookup falls back to is not a foreign route"


def test_a_foreign_route_taking_the_traffic_is_named(rc: RavenCluster) -> None:
    node = rc.member_node("edge-b")
    dst = remote_route(rc, node)
    ns = rc.cl.nodes[node].netns
    ns.ip("route", "add", dst, "dev", "eth0", "table", "190")
    ns.ip("rule", "add", "priority", "9000", "lookup", "190")
    try:
        code, report = rc.diagnose(node, "--no-probes")
    finally:
        ns.ip("rule", "del", "priority", "9000", "lookup", "190")
        ns.ip("route", "del", dst, "table", "190")
    assert code == 1
    hits = findings(report, "route")
    assert [f["subject"] for f in hits] == [f"route {dst}"], describe(report)
    assert "table 190" in hits[0]["problem"] and "foreign" in hits[0]["problem"]
    assert not findings(report, "kernel"), "Raven's own route is intact: only the foreign one is wrong"


def test_strict_rp_filter_is_named(rc: RavenCluster) -> None:
    node = rc.active_gateway_node("gw-edge-pub")
    with agent_stopped(rc, node):
        rc.cl.nodes[node].netns.sysctl(**{"net.ipv4.conf.raven1.rp_filter": 1})
        code, report = rc.diagnose(node, "--no-probes")
    assert code == 1
    assert [f["subject"] for f in findings(report)] == ["net.ipv4.conf.raven1.rp_filter"], describe(report)


def test_ip_forwarding_off_is_named(rc: RavenCluster) -> None:
    node = rc.member_node("edge-pub")
    with agent_stopped(rc, node):
        rc.cl.nodes[node].netns.sysctl(**{"net.ipv4.ip_forward": 0})
        try:
            code, report = rc.diagnose(node, "--no-probes")
        finally:
            rc.cl.nodes[node].netns.sysctl(**{"net.ipv4.ip_forward": 1})
    assert code == 1
    assert [f["subject"] for f in findings(report)] == ["net.ipv4.ip_forward"], describe(report)


@contextlib.contextmanager
def gateway_kept(rc: RavenCluster, pool: str) -> Iterator[None]:
    """Health failover (the default) replaces a Ready gateway that cannot forward, so the node a test breaks would
    stop being the one whose tunnels are diagnosed: its pool's standby says it is not ready meanwhile."""
    standby = rc.member_node(pool)
    rc.set_node_ready(standby, False)
    try:
        yield
    finally:
        rc.set_node_ready(standby, True)


def test_a_proposal_mismatch_is_named_with_charons_reason(rc: RavenCluster) -> None:
    node = rc.active_gateway_node("gw-edge-a")  # behind NAT: it initiates its tunnels to the public gateways
    with gateway_kept(rc, "edge-a"):
        _proposal_mismatch(rc, node)


def _proposal_mismatch(rc: RavenCluster, node: str) -> None:
    agent = rc.agents[node]
    argv = list(agent.argv)
    agent.stop()
    seen = len(agent.logs())
    agent.argv = [*argv, "--ike-proposals", "aes128-sha256-modp3072"]
    agent.start()
    cloud = rc.active_gateway_node("gw-cloud")
    try:
        rc.wait_for("the changed connection loaded", lambda: "conn=raven-gw-cloud" in agent.logs()[seen:], timeout=30)
        # The responder (gw-cloud) cannot initiate: it listens to charon's log while the initiator tries again
        # (its own diagnose initiates, 2 s into the listening window).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            responder = pool.submit(rc.diagnose, cloud, "--no-probes", "--log-wait", "10")
            time.sleep(2)
            code, report = rc.diagnose(node, "--no-probes")
            cloud_code, cloud_report = responder.result()
    finally:
        agent.stop()
        agent.argv = argv
        agent.start()
    assert code == 1
    hits = [f for f in findings(report, "sa") if f["subject"] == "raven-gw-cloud"]
    assert hits and "proposal mismatch" in hits[0]["problem"], describe(report)
    assert any("NO_PROPOSAL_CHOSEN" in e for e in hits[0]["evidence"]), hits[0]["evidence"]
    assert cloud_code == 1
    theirs = [f for f in findings(cloud_report, "sa") if f["subject"] == "raven-gw-edge-a"]
    assert theirs and "proposal mismatch" in theirs[0]["problem"], describe(cloud_report)


def test_an_authentication_failure_is_named_with_charons_reason(rc: RavenCluster) -> None:
    """gw-edge-pub's node holds a key and certificate of another CA: its peers' charons refuse it."""
    gw = rc.active_gateway_node("gw-edge-pub")
    peer = rc.active_gateway_node("gw-edge-a")  # behind NAT: it initiates towards gw-edge-pub
    with gateway_kept(rc, "edge-pub"):
        _authentication_failure(rc, gw, peer)


def _authentication_failure(rc: RavenCluster, gw: str, peer: str) -> None:
    seen = {n: len(rc.charon(n).read_log()) for n in (gw, peer)}
    _break_credentials(rc, gw)
    rc.agents[gw].restart()
    rc.restart_charon(gw)  # SAs authenticated with the old key go: every peer must authenticate again
    try:
        rc.wait_for("the peer's tunnel to gw-edge-pub down",
                    lambda: rc.sas(peer).get("raven-gw-edge-pub", {}).get("state") != "ESTABLISHED", timeout=45)
        # Until gw-edge-pub's restarted agent has loaded its connections, its charon refuses every IKE_SA_INIT
        # with NO_PROPOSAL_CHOSEN (no config at all): diagnose once an authentication was really tried.
        rc.wait_for("a failed authentication in the charon logs",
                    lambda: any("AUTH_FAILED" in rc.charon(n).read_log()[seen[n]:] for n in seen), timeout=60)
        code, report = rc.diagnose(peer, "--no-probes")
    finally:
        _restore_credentials(rc, gw)
        rc.agents[gw].restart()
        rc.restart_charon(gw)
    assert code == 1
    hits = [f for f in findings(report, "sa") if f["subject"] == "raven-gw-edge-pub"]
    assert hits and "authentication failed" in hits[0]["problem"], describe(report)
    assert any("AUTHENTICATION_FAILED" in e for e in hits[0]["evidence"]), hits[0]["evidence"]


def _block_tunnel_port(rc: RavenCluster, pool: str, add: bool) -> None:
    router = rc.cl.pools[pool].router
    for direction in ("--dport", "--sport"):
        router.run(["iptables", "-I" if add else "-D", "FORWARD", "-p", "udp", direction, "4500", "-j", "DROP"])


def test_a_filtered_tunnel_port_is_named(rc: RavenCluster) -> None:
    node = rc.active_gateway_node("gw-edge-a")
    _block_tunnel_port(rc, "edge-a", add=True)
    try:
        code, report = rc.diagnose(node)
    finally:
        _block_tunnel_port(rc, "edge-a", add=False)
    assert code == 1
    hits = findings(report, "tunnel-port")
    assert {f["subject"].removeprefix("peer ").removeprefix("raven-") for f in hits} >= {"gw-cloud"}, \
        describe(report)
    assert {f["check"] for f in findings(report)} <= {"tunnel-port", "sa"}, describe(report)


def test_a_path_mtu_smaller_than_the_plan_is_named(rc: RavenCluster) -> None:
    node = rc.active_gateway_node("gw-edge-a")
    router = rc.cl.pools["edge-a"].router
    router.ip("link", "set", "wan0", "mtu", "1300")
    try:
        code, report = rc.diagnose(node)
    finally:
        router.ip("link", "set", "wan0", "mtu", "1500")
        rc.cl.nodes[node].netns.ip("route", "flush", "cache")
    assert code == 1
    hits = findings(report, "mtu")
    assert hits and all("at most 1300-byte" in f["problem"] for f in hits), describe(report)
    assert {f["subject"] for f in hits} >= {"peer gw-cloud"}
