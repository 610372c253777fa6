"""Scenario 8: path health (issue 11). Every agent publishes a PathReport of what its probes measure; a cut tunnel
shows as down and comes back up; an agent restart (SIGKILL) changes no state in any report; charon killed and
restarted 20 s later (scenario j) gets its tunnels back quickly, measured; the API write rate stays bounded."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from e2e.cluster import PathReportWrites as WriteCounter
from e2e.cluster import RavenCluster
from e2e.probe import ContinuousProbe
from raven.api.pathreport import PathReport
from raven.kube.client import PATHREPORTS

from .conftest import MEASUREMENTS, own_cluster

pytestmark = [pytest.mark.root, pytest.mark.slow]

IKE_PORTS = "500,4500"
# Its own cluster (the default 8-node topology) under its own prefix: independent of the session cluster, so
# this module runs beside other e2e modules instead of queueing on their lab prefix.
PREFIX = os.environ.get("RAVEN_E2E_PATH_HEALTH_PREFIX", "rveh")


@pytest.fixture(scope="module")
def rc(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    # The agent side of path health, measured with the gateways fixed: with health failover on, the controller
    # rightly replaces gw-edge-b's active endpoint when its WAN is cut (peers report it down), which moves the
    # targets under the cut test. Failover on health is tested in test_09 and the controller's own suites.
    yield from own_cluster(request, RavenCluster("default", prefix=PREFIX, controller_args=["--no-health-failover"]))


def reports(rc: RavenCluster) -> dict[str, PathReport]:
    return {r.name: r for r in (PathReport.from_dict(o) for o in rc.list_objects(PATHREPORTS))}


def states(r: PathReport) -> dict[tuple[str, str], tuple[str, str, str]]:
    """target key -> (gateway, state, since)"""
    return {t.key: (t.gateway, t.state, t.since) for t in r.status.targets}


def all_up(rc: RavenCluster) -> bool:
    rs = reports(rc)
    return set(rs) >= set(rc.agents) and all(
        r.status.targets and all(t.state == "up" for t in r.status.targets) for r in rs.values())


def test_every_agent_reports_its_paths_and_they_are_up(rc: RavenCluster) -> None:
    rc.wait_for("every agent's PathReport with all targets up", lambda: all_up(rc), timeout=60)
    rs = reports(rc)
    for node in rc.agents:
        r = rs[node]
        assert r.well_formed and r.status.probe_interval_seconds > 0
        if r.status.role == "gateway":
            assert all(t.kind == "peer" for t in r.status.targets)
            assert {t.gateway for t in r.status.targets} == {
                n.removeprefix("raven-") for n in rc.sas(node) if n.startswith("raven-")}, "one peer target per tunnel"
        elif r.status.role == "member":
            (t,) = [t for t in r.status.targets if t.kind == "gateway"]
            assert t.node == rc.active_gateway_node(r.status.gateway)
            # Through the gateway, every peer it has a tunnel to (via); as a standby, the peers' IKE addresses.
            gw_report = rs[t.node]
            assert {x.gateway for x in r.status.targets if x.kind == "via"} == {
                x.gateway for x in gw_report.status.targets}
            assert {x.kind for x in r.status.targets} <= {"gateway", "via", "underlay"}
        assert all(t.rtt_seconds is not None and t.rtt_seconds < 0.5 for t in r.status.targets)


def _block_ike(rc: RavenCluster, pool: str, add: bool) -> None:
    router = rc.cl.pools[pool].router
    op = "-I" if add else "-D"
    for direction in ("--dports", "--sports"):
        router.run(["iptables", op, "FORWARD", "-p", "udp", "-m", "multiport", direction, IKE_PORTS, "-j", "DROP"])


def test_a_cut_tunnel_is_reported_down_then_up_again(rc: RavenCluster) -> None:
    rc.wait_for("all paths up", lambda: all_up(rc), timeout=60)
    gw = rc.active_gateway_node("gw-edge-b")
    peers_of_b = {t.gateway: t.node for t in reports(rc)[gw].status.targets}
    assert peers_of_b, "gw-edge-b's gateway has no peers"
    t0 = time.monotonic()
    _block_ike(rc, "edge-b", add=True)  # ESP-in-UDP and IKE dropped on edge-b's router (its WAN uplink)
    try:
        def cut_seen() -> bool:
            rs = reports(rc)
            mine = all(t.state == "down" for t in rs[gw].status.targets)
            theirs = all(next(t.state for t in rs[n].status.targets if t.gateway == "gw-edge-b") == "down"
                         for n in peers_of_b.values())
            return mine and theirs
        took_down = rc.wait_for("both ends report the cut", cut_seen, timeout=30, interval=0.2)
        rs = reports(rc)
        member = rc.member_node("edge-b")
        mine_m = {t.kind: t.state for t in rs[member].status.targets if t.kind != "via"}
        assert mine_m.get("gateway") == "up", "the LAN path to the gateway is intact"
        assert all(t.state == "down" for t in rs[member].status.targets if t.kind == "via"), "nothing through it"
    finally:
        _block_ike(rc, "edge-b", add=False)
    t1 = time.monotonic()

    def back() -> bool:
        rs = reports(rc)
        return all(t.state == "up" for t in rs[gw].status.targets) and all(
            next(t.state for t in rs[n].status.targets if t.gateway == "gw-edge-b") == "up"
            for n in peers_of_b.values())
    took_up = rc.wait_for("both ends report the tunnel back", back, timeout=90, interval=0.2)
    MEASUREMENTS["path_health_cut_reported_down_s"] = round(took_down, 2)
    MEASUREMENTS["path_health_restore_reported_up_s"] = round(took_up, 2)
    assert t1 - t0 < 40
    # The agent logged the change with its evidence.
    log = rc.agents[gw].logs()
    assert "path state changed" in log and "consecutive_losses" in log


def test_agent_sigkill_and_restart_changes_no_state_in_any_report(rc: RavenCluster, writes: WriteCounter) -> None:
    rc.wait_for("all paths up", lambda: all_up(rc), timeout=90)
    gw = rc.active_gateway_node("gw-edge-a")
    member = rc.member_node("edge-a")
    before = {n: states(r) for n, r in reports(rc).items()}
    n_targets = len(before[gw])
    for node in (gw, member):
        t_kill = time.monotonic()
        rc.agents[node].kill()
        rc.agents[node].start()
        rc.wait_for(f"agent on {node} ready again", lambda node=node: rc.agent_ready(node)[0], timeout=30)

        # The new agent read its report, resumed from it, judged its targets again and wrote its report.
        def judged(node: str = node, n: int = (n_targets if node == gw else 1), t_kill: float = t_kill) -> bool:
            m = rc.metrics(f"agent/{node}")
            replies = sum(v for k, v in m.items() if k.startswith("raven_probe_replies_total"))
            return replies >= 3 * n and any(w[1] == node for w in writes.between(t_kill, time.monotonic()))
        rc.wait_for(f"restarted agent on {node} probed and wrote its report", judged, timeout=30)
        m = rc.metrics(f"agent/{node}")
        assert sum(v for k, v in m.items() if k.startswith("raven_probe_state_changes_total")) == 0
    after = {n: states(r) for n, r in reports(rc).items()}
    assert after == before, "an agent restart changed a reported state (or its since)"


def _tunnels_established(rc: RavenCluster, node: str, names: set[str]) -> bool:
    try:
        sas = rc.sas(node)
    except OSError:  # charon's VICI socket is not there yet
        return False
    return all(sas.get(n, {}).get("state") == "ESTABLISHED" for n in names)


# A responder-side gateway (gw-edge-pub) is the case the IKE retransmission cap is about; `make measure` runs it
# twice more for the spread.
@pytest.mark.parametrize("gateway", ["gw-edge-b", "gw-edge-pub",
                                     *(pytest.param("gw-edge-pub", marks=pytest.mark.minute, id=f"gw-edge-pub-{i}")
                                       for i in (2, 3))])
def test_charon_killed_and_back_20s_later_recovers_quickly(rc: RavenCluster, gateway: str) -> None:
    """Scenario (j): charon's container restarts after 20 s. Measured from charon's start to (1) every tunnel of
    the gateway ESTABLISHED and (2) pod traffic through it flowing again (a 10 ms UDP probe)."""
    rc.wait_for("all paths up", lambda: all_up(rc), timeout=90)
    gw = rc.active_gateway_node(gateway)
    pool = next(name for name, p in rc.cl.pools.items() if p.spec.gateway == gateway)
    names = {n for n in rc.sas(gw) if n.startswith("raven-")}
    src = rc.cl.nodes[rc.member_node(pool)].pods[0]
    dst = rc.cl.nodes[rc.member_node("cloud" if pool != "cloud" else "edge-a")].pods[0]
    with ContinuousProbe(src.netns, dst.netns, dst.ip, port=18180 + len(pool), name=f"charon-j-{pool}") as probe:
        assert probe.wait_first_reply()
        rc.charon(gw).kill()
        time.sleep(20)
        rc.charon(gw).process.start()
        tunnels = rc.wait_for("tunnels back", lambda: _tunnels_established(rc, gw, names), timeout=60,
                              interval=0.05)
        time.sleep(3)
        res = probe.stop()
    MEASUREMENTS.setdefault("charon_20s_restart", []).append({
        "gateway": gateway, "tunnels_established_after_start_s": round(tunnels, 2),
        "probe_outages": [(round(o.start_s, 2), round(o.length_s, 2)) for o in res.outages],
    })
    # The aim (3 s) is reported with the figure, not asserted (timings are noisy here); the bound is far below the
    # VICI reconnect backoff of old (up to 30 s), which this scenario is about.
    assert tunnels <= 10.0, f"tunnels took {tunnels:.2f} s after charon's return"


def test_api_writes_in_a_steady_cluster_stay_below_one_per_node_per_30s(rc: RavenCluster,
                                                                         writes: WriteCounter) -> None:
    rc.wait_for("all paths up", lambda: all_up(rc), timeout=90)
    time.sleep(5)  # let writes of the last scenario's recovery pass
    t0 = time.monotonic()
    window = 65.0
    time.sleep(window)
    got = writes.between(t0, t0 + window)
    per_node = {n: sum(1 for w in got if w[1] == n) for n in rc.agents}
    rate = len(got) / len(rc.agents) / window * 30
    MEASUREMENTS["pathreport_writes_per_node_per_30s_steady"] = round(rate, 3)
    MEASUREMENTS["pathreport_writes_steady_max_node"] = max(per_node.values())
    assert rate <= 1.0, per_node
