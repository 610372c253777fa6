"""Scenario 3: restarts. Agent restarts drop nothing; a charon restart heals without touching the agent;
the controller leader's death changes no active endpoint; dropped API watches break nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.cluster import RavenCluster, metric
from e2e.probe import ContinuousProbe
from raven.kube.client import GATEWAYS

from .conftest import MEASUREMENTS

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _established_ids(rc: RavenCluster, node: str) -> dict[str, str]:
    return {n: sa["uniqueid"] for n, sa in rc.sas(node).items() if sa["state"] == "ESTABLISHED"}


def test_agent_restart_on_a_gateway_and_on_a_member_loses_no_packet(rc: RavenCluster) -> None:
    gw = rc.active_gateway_node("gw-edge-b")
    member = rc.member_node("edge-b")
    dst = rc.member_node("edge-pub")
    sas_before = _established_ids(rc, gw)
    # Traffic from the member, through its gateway, to a member of another pool: both agents are on the path.
    r_gw = rc.restart_agent_under_probe(gw, member, dst, port=18110)
    r_member = rc.restart_agent_under_probe(member, member, dst, port=18111)
    lost_gw, sent_gw, lost_member, sent_member = r_gw.lost, r_gw.sent, r_member.lost, r_member.sent
    MEASUREMENTS["agent_restart_probe_loss"] = {"gateway": f"{lost_gw}/{sent_gw}",
                                                "member": f"{lost_member}/{sent_member}"}
    assert lost_gw == 0 and lost_member == 0
    # The restarted gateway agent found its tunnels as they were: no SA was replaced.
    assert _established_ids(rc, gw) == sas_before
    # ... and it wrote nothing to the kernel or charon: its counters are all zero since the restart.
    m = rc.metrics(f"agent/{gw}")
    assert metric(m, "raven_agent_kernel_writes_total") == 0
    assert metric(m, "raven_agent_vici_operations_total", op="load_conn") == 0
    assert metric(m, "raven_agent_vici_operations_total", op="terminate") == 0


def test_charon_restart_on_a_gateway_recovers_without_restarting_the_agent(rc: RavenCluster) -> None:
    """The agent reloads a restarted charon by itself. While charon is down its peers lose the gateway, which
    health failover (the default) cannot tell from charon dead for good (scenario b): with a standby to go to, it
    fails over, which is the designed outcome (test_05's credential mismatch and test_09 cover it). Here the standby
    reports itself NotReady, so nothing can do better (NoBetterCandidate): the gateway stays and heals in place."""
    gw = rc.active_gateway_node("gw-edge-pub")
    standby = rc.member_node("edge-pub")
    agent_pid = rc.agents[gw].pid
    peers = [rc.active_gateway_node(g) for g in ("gw-cloud", "gw-edge-a", "gw-edge-b")]
    rc.set_node_ready(standby, False)
    try:
        _charon_restart_heals_in_place(rc, gw, agent_pid, peers)
        # The data plane is back; the standby may return only once the peers' reports say so too (an "up" is
        # written after 3 answered probes and the agents' write rate limit), or it would rightly take over.
        rc.wait_for("gw-edge-pub's peers report it reached again", lambda: _settled(rc, "gw-edge-pub"), timeout=30)
    finally:
        rc.set_node_ready(standby, True)
    assert rc.active_endpoints()["gw-edge-pub"] == [gw]


def _quiet(rc: RavenCluster, for_s: float = 3.0) -> bool:
    """No Gateway holds a node after a health failover, and none was written during the last `for_s` seconds."""
    def state() -> dict[str, tuple[str, bool]]:
        return {n: (g["metadata"]["resourceVersion"], bool(((g.get("status") or {}).get("pathHealth") or {})
                                                           .get("held"))) for n, g in rc.gateways().items()}
    before = state()
    if any(held for _, held in before.values()):
        return False
    time.sleep(for_s)
    return state() == before


def _settled(rc: RavenCluster, gateway: str) -> bool:
    """The Gateway's TunnelsHealthy condition says every peer reaches its active endpoint (Healthy, Degraded: slow
    but up, or FailedOver: healthy while an earlier scenario's failed-over node is still held)."""
    status = rc.get(GATEWAYS, gateway).get("status") or {}
    cond: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "TunnelsHealthy"), {})
    health = status.get("pathHealth") or {}
    return cond.get("reason") in ("Healthy", "Degraded", "FailedOver") and health.get("peersUp") == health.get("peers")


def _charon_restart_heals_in_place(rc: RavenCluster, gw: str, agent_pid: int, peers: list[str]) -> None:
    t0 = time.monotonic()
    rc.restart_charon(gw)
    assert not any(n.startswith("raven-") for n in rc.sas(gw)), "a restarted charon starts empty"
    rc.wait_for("tunnels back on the restarted charon", lambda: {
        f"raven-{g}" for g in ("gw-cloud", "gw-edge-a", "gw-edge-b")} <= set(_established_ids(rc, gw)), timeout=60)
    for peer in peers:
        def back(peer: str = peer) -> bool:
            return "raven-gw-edge-pub" in _established_ids(rc, peer)
        rc.wait_for(f"{peer}: tunnel to gw-edge-pub", back, timeout=60)
    pods_pub = [p for p in rc.pods() if rc.cl.pods[p[0]].node.startswith("edge-pub")]
    others = [p for p in rc.pods() if p not in pods_pub]
    rc.wait_for("pods of edge-pub reachable again", lambda: not [
        k for k, r in rc.ping_matrix(pods_pub[:1] + others).results.items() if not r.ok], timeout=60, interval=0.2)
    MEASUREMENTS["charon_restart_recovery_s"] = round(time.monotonic() - t0, 2)
    assert rc.agents[gw].pid == agent_pid and rc.agents[gw].alive()
    assert rc.active_endpoints()["gw-edge-pub"] == [gw]


def test_controller_leader_killed_standby_takes_over_without_flapping(rc: RavenCluster) -> None:
    leader = rc.leader()
    assert leader is not None, "no controller reports leadership"
    standby = 1 - leader
    # Nothing changing: no node held after a health failover (its release is a write of its own, due whoever
    # leads) and no Gateway written for 3 s (an earlier scenario's failover or restart keeps the statuses moving
    # for a few seconds as the peers' reports follow; those writes are the cluster's, not the leader change's).
    rc.wait_for("Gateway statuses quiet", lambda: _quiet(rc), timeout=120, interval=0.5)
    active_before = rc.active_endpoints()
    rvs_before = {n: g["metadata"]["resourceVersion"] for n, g in rc.gateways().items()}
    rc.controllers[leader].kill()
    try:
        took = rc.wait_for("standby to lead", lambda: rc.leader() == standby, timeout=30, interval=0.2)
        MEASUREMENTS["controller_takeover_s"] = round(took, 2)
        # The new leader reconciles every Gateway from its caches: same decisions, no status rewrite.
        rc.wait_for("new leader reconciled every gateway", lambda: metric(
            rc.metrics(f"controller/{standby}"), "raven_controller_reconcile_duration_seconds_count")
            >= len(active_before), timeout=15)
        assert rc.active_endpoints() == active_before
        rvs_after = {n: g["metadata"]["resourceVersion"] for n, g in rc.gateways().items()}
        assert rvs_after == rvs_before, "the new leader rewrote Gateway objects although nothing changed"
    finally:
        rc.controllers[leader].start()
    rc.wait_for("restarted replica ready", lambda: rc.http_get(
        rc.cl.control_plane, rc.controller_http(leader), "/readyz")[0] == 200, timeout=30)
    assert rc.leader() == standby  # the old leader comes back as the standby: no flap back


def test_api_server_dropping_all_watches_breaks_nothing(rc: RavenCluster) -> None:
    member = rc.member_node("edge-a")
    dst = rc.member_node("edge-b")
    src_pod, dst_pod = rc.cl.nodes[member].pods[0], rc.cl.nodes[dst].pods[0]
    restarts_before = metric(rc.metrics(f"agent/{member}"), "raven_informer_watch_restarts_total")
    with ContinuousProbe(src_pod.netns, dst_pod.netns, dst_pod.ip, port=18112, name="drop-watches") as probe:
        assert probe.wait_first_reply()
        dropped = rc.api.drop_watches(abrupt=True)
        assert dropped >= len(rc.agents) * 2  # every agent watches Gateways and Nodes
        rc.wait_for("agents re-watched", lambda: metric(rc.metrics(f"agent/{member}"),
                                                         "raven_informer_watch_restarts_total") > restarts_before,
                    timeout=30)
        # Changes made after the drop still arrive: a new Gateway gets a status from the controller.
        rc.create(GATEWAYS, {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway",
                             "metadata": {"name": "gw-after-drop"},
                             "spec": {"endpoints": [{"nodeName": "nowhere", "type": "tunnel", "port": 4500}]}})
        try:
            rc.wait_for("controller to write the new gateway's status", lambda: bool(
                rc.get(GATEWAYS, "gw-after-drop").get("status") or {}), timeout=30)
            rc.wait_for("agents to see the new gateway", lambda: metric(
                rc.metrics(f"agent/{member}"), "raven_informer_events_total", informer="gateways", type="ADDED")
                >= len(rc.gateways()), timeout=30)
        finally:
            rc.delete(GATEWAYS, "gw-after-drop")
        res = probe.stop()
    assert res.lost == 0, res
