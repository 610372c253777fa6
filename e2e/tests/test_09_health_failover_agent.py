"""Scenarios (a), (b), (c), (g) of issue 11: failover on what the data plane measures, with the agents' new probes
(via: a member through its gateway into the peer's SA; underlay: a standby's own uplink to the peers' IKE
addresses) and a 10 ms probe interval. The node stays Ready throughout: only the data plane fails.

(a) IP forwarding off on an edge pool's active gateway (per device: raven0, raven1, ipsec0; the global switch the
    agent would turn back on), (b) its charon killed and kept down, (c) its WAN uplink cut while its LAN and the
    API stay: each fails over, and the outage is measured from the failure itself by a 10 ms UDP probe between
    pods (the packets, not a status write). One run each in the normal suite, five (median, max) under `slow`.
(g) a pool's whole uplink cut (its router drops everything but the control plane) for 20 s, past charon's DPD:
    nothing moves anywhere, the pool's TunnelsHealthy condition says why, and pod traffic to every other pool is
    back within 3 s of the uplink's return (measured by 10 ms UDP probes).

Its own cluster (prefix RAVEN_E2E_HEALTH_AGENT_PREFIX, default `rvef`): the controller runs with
--health-failover and a 3 s hold time (the hold itself is tested in the controller suites), so five runs can
fail over one pool back and forth.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from e2e.cluster import PathReportWrites, RavenCluster
from e2e.probe import ContinuousProbe, ping
from raven.api.pathreport import PathReport
from raven.kube.client import PATHREPORTS

from .conftest import MEASUREMENTS

pytestmark = [pytest.mark.root]

PREFIX = os.environ.get("RAVEN_E2E_HEALTH_AGENT_PREFIX", "rvef")
# A 10 ms probe; the timeout stays the default 0.5 s: through userspace ESP on this loaded machine RTTs reach
# 100 ms, and a timeout below that reports a slow tunnel as down (a false failover, seen with 0.1 s).
AGENT_ARGS = ["--health-interval", "0.01", "--health-timeout", "0.5"]
CONTROLLER_ARGS = ["--health-failover", "--health-hold-time", "3"]
POOL = "edge-a"
GATEWAY = "gw-edge-a"
TARGET_S = 3.0  # the aim, reported beside each figure (MEASUREMENTS), never asserted: timings are noisy here
# What the tests assert: the outage ends, far sooner than anything but data-plane evidence could end it (the node
# stays Ready, so Node readiness never would; a black-holed tunnel never comes back at all).
BOUND_S = 15.0
RUNS = 5
WAN_CHAIN = "RVTEST-WAN"
# Each failure starts from a steady cluster: no PathReport written for longer than the agents' least write
# interval (--health-min-write-interval, 2 s), else the first report of the failure waits out the rate limit.
WRITES = PathReportWrites()
QUIET_S = 2.5
CUT_S = 20.0  # how long scenario (g) keeps the pool's uplink cut: well past charon's DPD give-up (about 10 s)


@pytest.fixture(scope="module")
def rc(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    if os.geteuid() != 0:
        pytest.skip("end-to-end scenarios need root (network namespaces)")
    cluster = RavenCluster("default", prefix=PREFIX, agent_args=AGENT_ARGS, controller_args=CONTROLLER_ARGS)
    failed = True
    try:
        cluster.start()
        cluster.api.server.on_request = WRITES
        cluster.wait_converged(timeout=180)
        failed = False
        yield cluster
    finally:
        _summarise()
        cluster.close(keep_logs=failed or request.session.testsfailed > 0
                      or os.environ.get("RAVEN_E2E_KEEP") == "1")


def _summarise() -> None:
    for key in [k for k in MEASUREMENTS if k.startswith("health_agent_") and k.endswith("_outages_s")]:
        runs = MEASUREMENTS[key]
        base = key.removesuffix("_outages_s")
        MEASUREMENTS[f"{base}_outage_median_s"] = round(statistics.median(runs), 2)
        MEASUREMENTS[f"{base}_outage_max_s"] = round(max(runs), 2)


def reports(rc: RavenCluster) -> dict[str, PathReport]:
    return {r.name: r for r in (PathReport.from_dict(o) for o in rc.list_objects(PATHREPORTS))}


def all_up(rc: RavenCluster) -> bool:
    rs = reports(rc)
    return set(rs) >= set(rc.agents) and all(
        r.status.targets and all(t.state == "up" for t in r.status.targets) for r in rs.values())


def condition(rc: RavenCluster, gateway: str) -> dict[str, Any]:
    for c in (rc.gateways()[gateway].get("status") or {}).get("conditions") or []:
        if c.get("type") == "TunnelsHealthy":
            return dict(c)
    return {}


def failovers(rc: RavenCluster) -> float:
    total = 0.0
    for i in range(len(rc.controllers)):
        m = rc.metrics(f"controller/{i}")
        total += sum(v for k, v in m.items() if k.startswith("raven_gateway_failovers_total"))
    return total


def healthy(rc: RavenCluster) -> None:
    rc.wait_for("every PathReport target up", lambda: all_up(rc), timeout=120, interval=0.2)
    rc.wait_for(f"{GATEWAY} healthy", lambda: condition(rc, GATEWAY).get("reason") == "Healthy", timeout=60)
    rc.wait_for("no PathReport write for a while (steady)",
                lambda: not WRITES.between(time.monotonic() - QUIET_S, time.monotonic() + 1), timeout=60, interval=0.1)


# --- the failures (each returns its undo) ------------------------------------------------------------------


def forwarding_off(rc: RavenCluster, node: str) -> Callable[[], None]:
    ns = rc.cl.nodes[node].netns
    devices = ("raven0", "raven1", "ipsec0")
    for dev in devices:
        ns.run(["sysctl", "-qw", f"net.ipv4.conf.{dev}.forwarding=0"])

    def undo() -> None:
        for dev in devices:
            ns.run(["sysctl", "-qw", f"net.ipv4.conf.{dev}.forwarding=1"], check=False)
    return undo


def charon_down(rc: RavenCluster, node: str) -> Callable[[], None]:
    rc.charon(node).kill()

    def undo() -> None:
        rc.charon(node).process.start()
        rc.wait_for(f"charon on {node} answering", lambda: _vici_up(rc, node), timeout=30)
    return undo


def _vici_up(rc: RavenCluster, node: str) -> bool:
    try:
        rc.sas(node)
    except OSError:
        return False
    return True


def wan_cut(rc: RavenCluster, node: str) -> Callable[[], None]:
    """The node's traffic beyond its LAN is dropped both ways, except to and from the control plane."""
    ns = rc.cl.nodes[node].netns
    lan = str(rc.cl.pools[POOL].spec.lan)
    cp = rc.cl.control_plane_ip
    script = "\n".join([
        "*filter", f":{WAN_CHAIN} - [0:0]",
        f"-A {WAN_CHAIN} -s {lan} -d {lan} -j RETURN",
        f"-A {WAN_CHAIN} -s {cp}/32 -j RETURN", f"-A {WAN_CHAIN} -d {cp}/32 -j RETURN",
        f"-A {WAN_CHAIN} -o lo -j RETURN", f"-A {WAN_CHAIN} -i lo -j RETURN",
        # Overlay and pod addresses are not the uplink (the node's own pods, raven0/raven1 inner packets).
        f"-A {WAN_CHAIN} -i eth0 -j DROP", f"-A {WAN_CHAIN} -o eth0 -j DROP",
        f"-I INPUT 1 -j {WAN_CHAIN}", f"-I OUTPUT 1 -j {WAN_CHAIN}", "COMMIT", ""])
    ns.run(["iptables-restore", "-w", "--noflush"], input=script)

    def undo() -> None:
        for hook in ("INPUT", "OUTPUT"):
            ns.run(["iptables", "-w", "-D", hook, "-j", WAN_CHAIN], check=False)
        ns.run(["iptables", "-w", "-F", WAN_CHAIN], check=False)
        ns.run(["iptables", "-w", "-X", WAN_CHAIN], check=False)
    return undo


FAILURES: dict[str, Callable[[RavenCluster, str], Callable[[], None]]] = {
    "a_forwarding_off": forwarding_off,
    "b_charon_down": charon_down,
    "c_wan_cut": wan_cut,
}


def fail_over_under_probe(rc: RavenCluster, scenario: str, port: int) -> float:
    """Inject `scenario` on the pool's active gateway while a pod behind the other node probes a cloud pod every
    10 ms; returns the outage from the failure on (seconds). Undoes the failure and waits until healthy again."""
    healthy(rc)
    old = rc.active_gateway_node(GATEWAY)
    new = next(n.spec.name for n in rc.cl.pools[POOL].nodes if n.spec.name != old)
    dst_node = next(n for n in (node.spec.name for node in rc.cl.pools["cloud"].nodes)
                    if n != rc.active_gateway_node("gw-cloud"))
    src, dst = rc.cl.nodes[new].pods[0], rc.cl.nodes[dst_node].pods[0]
    n_failovers = failovers(rc)
    with ContinuousProbe(src.netns, dst.netns, dst.ip, port=port, name=f"{scenario}-{port}") as probe:
        assert probe.wait_first_reply(), "no traffic before the failure"
        time.sleep(0.5)
        t_fail = time.monotonic()
        undo = FAILURES[scenario](rc, old)
        try:
            rc.wait_for(f"{GATEWAY} to elect {new}", lambda: rc.active_endpoints()[GATEWAY] == [new], timeout=30,
                        interval=0.05)
            cond = condition(rc, GATEWAY)  # names the evidence while the old node is held
            rc.wait_for("traffic through the new gateway", lambda: ping(src.netns, dst.ip, count=1, wait=0.3).ok,
                        timeout=30, interval=0.05)
            time.sleep(2.0)  # a later blip (the old gateway standing down) would still count
            res = probe.stop()
        finally:
            undo()
    outage = res.outage_from(t_fail)
    MEASUREMENTS.setdefault(f"health_agent_{scenario}_outages_s", []).append(round(outage, 2))
    MEASUREMENTS.setdefault(f"health_agent_{scenario}_evidence", cond.get("message", "")[:200])
    assert failovers(rc) >= n_failovers + 1
    healthy(rc)
    return outage


_PORTS = {"a_forwarding_off": 18400, "b_charon_down": 18420, "c_wan_cut": 18440}


@pytest.mark.parametrize("scenario", list(FAILURES))
def test_failure_of_a_ready_gateway_fails_over(rc: RavenCluster, scenario: str) -> None:
    outage = fail_over_under_probe(rc, scenario, _PORTS[scenario])
    assert outage <= BOUND_S, f"{scenario}: {outage:.2f} s of outage from the failure"


@pytest.mark.slow
@pytest.mark.minute  # `make measure`: four more runs of each for the median and max over five
@pytest.mark.parametrize("scenario", list(FAILURES))
def test_failure_of_a_ready_gateway_five_runs(rc: RavenCluster, scenario: str) -> None:
    """Four more runs (the one above is the first): the median and the max over five go to the measurements."""
    for i in range(1, RUNS):
        fail_over_under_probe(rc, scenario, _PORTS[scenario] + i)
    runs = MEASUREMENTS[f"health_agent_{scenario}_outages_s"]
    MEASUREMENTS[f"health_agent_{scenario}_within_target"] = f"{sum(r <= TARGET_S for r in runs)} of {len(runs)}"
    assert max(runs) <= BOUND_S, f"{scenario}: outages {runs} s"


HOLD_S = 3.0  # CONTROLLER_ARGS' --health-hold-time


def _held(rc: RavenCluster, node: str) -> dict[str, Any] | None:
    """status.pathHealth.held[] entry of `node` in GATEWAY (None: not held)."""
    ph = (rc.gateways()[GATEWAY].get("status") or {}).get("pathHealth") or {}
    return next((dict(h) for h in ph.get("held") or [] if h.get("nodeName") == node), None)


def _underlay(rc: RavenCluster, node: str) -> list[Any]:
    return [t for t in reports(rc)[node].status.targets if t.kind == "underlay"]


def test_c_the_cut_gateway_is_not_elected_back_while_its_uplink_stays_cut(rc: RavenCluster) -> None:
    """The standby blind spot: after (c) fails over, the old gateway stands by with its uplink still cut. Its
    underlay probes started after the cut and never answer: `down` with no RTT once the establish window ends,
    while other pools' standbys get answers from the same addresses. So when the new gateway fails too (its charon
    killed) after the hold time, the old one is not elected back: nothing moves, the condition says why. Once its
    uplink returns and it has been healthy for the hold time it is released, and the next failure elects it."""
    healthy(rc)
    old = rc.active_gateway_node(GATEWAY)
    new = next(n.spec.name for n in rc.cl.pools[POOL].nodes if n.spec.name != old)
    undo_cut = wan_cut(rc, old)
    undo_charon: Callable[[], None] | None = None
    try:
        rc.wait_for(f"{GATEWAY} to elect {new}", lambda: rc.active_endpoints()[GATEWAY] == [new], timeout=30,
                    interval=0.05)
        t_failover = time.monotonic()
        # The agent's verdict on the silent targets (after --health-establish-time, 10 s), then the controller's:
        # the hold does not end (no cleanSince), and the new gateway was seen healthy (the trial budget is back).
        rc.wait_for(f"{old}'s underlay targets down, never answered", lambda: (u := _underlay(rc, old)) != [] and all(
            t.state == "down" and t.rtt_seconds is None for t in u), timeout=40, interval=0.2)
        rc.wait_for(f"{GATEWAY} healthy through {new}", lambda: condition(rc, GATEWAY).get("status") == "True",
                    timeout=30)
        rc.wait_for("the hold time over", lambda: time.monotonic() >= t_failover + HOLD_S + 1, timeout=10)
        held = _held(rc, old)
        assert held is not None and not held.get("cleanSince"), held
        undo_charon = charon_down(rc, new)
        took = rc.wait_for(f"{GATEWAY}: no better candidate than {new}", lambda: (c := condition(rc, GATEWAY)).get(
            "reason") == "NoBetterCandidate" and old in c.get("message", ""), timeout=30, interval=0.1)
        cond = condition(rc, GATEWAY)
        assert "over its uplink" in cond["message"], cond
        assert rc.active_endpoints()[GATEWAY] == [new]
        for _ in range(6):  # each poll an observed verdict: the condition still names the reason
            assert rc.active_endpoints()[GATEWAY] == [new], f"{old} elected back with its uplink cut"
            assert condition(rc, GATEWAY).get("reason") == "NoBetterCandidate"
            time.sleep(0.5)
        undo_charon()
        undo_charon = None
        rc.wait_for(f"{GATEWAY} healthy through {new} again", lambda: condition(rc, GATEWAY).get("status") == "True",
                    timeout=60)
    finally:
        if undo_charon is not None:
            undo_charon()
        undo_cut()
    t_back = time.monotonic()
    rc.wait_for(f"{old}'s underlay targets answer", lambda: all(t.reached for t in _underlay(rc, old)), timeout=30,
                interval=0.1)
    answered_s = time.monotonic() - t_back
    rc.wait_for(f"{old} released", lambda: _held(rc, old) is None, timeout=30, interval=0.1)
    released_s = time.monotonic() - t_back
    MEASUREMENTS["health_agent_c_held_no_better_after_s"] = round(took, 2)
    MEASUREMENTS["health_agent_c_held_condition"] = cond["message"][:300]
    MEASUREMENTS["health_agent_c_uplink_back_underlay_up_s"] = round(answered_s, 2)
    MEASUREMENTS["health_agent_c_uplink_back_released_s"] = round(released_s, 2)
    # Released only after the hold time of healthy reports (times are whole seconds: one second of slack).
    assert released_s >= answered_s + HOLD_S - 1.0, (answered_s, released_s)
    # Eligible again: the new gateway's failure now elects the old one.
    healthy(rc)
    undo = charon_down(rc, new)
    try:
        rc.wait_for(f"{GATEWAY} to elect {old} again", lambda: rc.active_endpoints()[GATEWAY] == [old], timeout=30,
                    interval=0.05)
    finally:
        undo()
    healthy(rc)


def _tunnels(rc: RavenCluster, node: str) -> dict[str, tuple[int, list[int]]]:
    """The node's raven-* IKE_SAs with an INSTALLED CHILD_SA: name -> (IKE unique id, the CHILD_SAs' reqids)."""
    out: dict[str, tuple[int, list[int]]] = {}
    for name, ike in rc.sas(node).items():
        children = [c for c in (ike.get("child-sas") or {}).values() if c.get("state") == "INSTALLED"]
        if name.startswith("raven-") and ike.get("state") == "ESTABLISHED" and children:
            out[name] = (int(ike["uniqueid"]), sorted(int(c["reqid"]) for c in children))
    return out


def test_g_whole_uplink_cut_moves_nothing_says_why_and_heals(rc: RavenCluster) -> None:
    """The cut lasts CUT_S (20 s), well past charon's DPD give-up (about 10 s here): every tunnel of the pool is
    torn down and re-established when the uplink returns. Pod traffic from the pool to a public pool (edge-pub), the
    cloud and, relayed through the cloud, the other NAT'd pool must be back within BOUND_S of the uplink's return
    (measured against TARGET_S), for good (a tunnel that comes back and then breaks is counted to the end of the
    probe). Before the fixed reqids of the IPsec driver the edge-b -> edge-pub tunnel came back with IKE up and ESP
    a black hole (both restarted CHILD_SAs of edge-b's gateway shared one reqid: libipsec sent edge-pub's packets
    into the cloud's SA); whether it did depended on which tunnel charon happened to re-establish first."""
    healthy(rc)
    pool, gateway = "edge-b", "gw-edge-b"
    before = rc.active_endpoints()
    n_failovers = failovers(rc)
    gw_node = rc.active_gateway_node(gateway)
    member = next(n.spec.name for n in rc.cl.pools[pool].nodes if n.spec.name != gw_node)
    tunnels_before = _tunnels(rc, gw_node)
    dsts = {"edge-pub": rc.active_gateway_node("gw-edge-pub"), "cloud": rc.active_gateway_node("gw-cloud"),
            "edge-a": rc.active_gateway_node("gw-edge-a")}
    router = rc.cl.pools[pool].router
    cp = rc.cl.control_plane_ip
    # Everything between the pool and the WAN but the control plane (the LAN is bridged in the router: only
    # what crosses wan0 is cut).
    rules = [["FORWARD", "-o", "wan0", "!", "-d", f"{cp}/32", "-j", "DROP"],
             ["FORWARD", "-i", "wan0", "!", "-s", f"{cp}/32", "-j", "DROP"]]
    src = rc.cl.nodes[member].pods[0]
    with contextlib.ExitStack() as stack:
        probes = {
            peer: stack.enter_context(ContinuousProbe(src.netns, rc.cl.nodes[node].pods[0].netns,
                                                      rc.cl.nodes[node].pods[0].ip, port=18480 + i,
                                                      name=f"g-{peer}"))
            for i, (peer, node) in enumerate(sorted(dsts.items()))}
        for peer, probe in probes.items():
            assert probe.wait_first_reply(), f"no traffic to {peer} before the cut"
        for rule in rules:
            router.run(["iptables", "-w", "-I", *rule])
        t0 = time.monotonic()
        try:
            # The controller processed the evidence: the pool's condition names the standbys' uplinks.
            took = rc.wait_for(f"{gateway}: no better candidate", lambda: condition(rc, gateway).get("reason")
                               == "NoBetterCandidate", timeout=30, interval=0.1)
            cond = condition(rc, gateway)
            assert "over its uplink" in cond["message"], cond
            # ... and keeps it so: no election moves while the cut lasts (each poll an observed verdict).
            while time.monotonic() < t0 + CUT_S:
                assert rc.active_endpoints() == before, "an election moved during the pool's uplink cut"
                assert condition(rc, gateway).get("reason") == "NoBetterCandidate"
                time.sleep(0.5)
            # Past DPD: charon gave every tunnel of the gateway up (none of the old SAs is left).
            old = {uid for uid, _reqids in tunnels_before.values()}
            assert not old & {int(ike["uniqueid"]) for ike in rc.sas(gw_node).values()}, "the cut ended before DPD"
        finally:
            for rule in rules:
                router.run(["iptables", "-w", "-D", *rule], check=False)
            t_back = time.monotonic()
        assert t_back - t0 >= CUT_S
        # Healed: traffic back to every pool, and it stays (a later break would extend the outage).
        rc.wait_for("pod traffic to every pool again", lambda: all(
            ping(src.netns, rc.cl.nodes[node].pods[0].ip, count=1, wait=0.3).ok for node in dsts.values()),
            timeout=60, interval=0.1)
        time.sleep(5.0)
        results = {peer: probe.stop() for peer, probe in probes.items()}
    recovery = {peer: round(res.outage_from(t_back, horizon=5.0), 2) for peer, res in results.items()}
    rc.wait_for("every PathReport target up again", lambda: all_up(rc), timeout=120, interval=0.2)
    reports_up_s = time.monotonic() - t_back
    rc.wait_for(f"{gateway} healthy again", lambda: condition(rc, gateway).get("reason") == "Healthy", timeout=60)
    tunnels_after = _tunnels(rc, gw_node)
    MEASUREMENTS["health_agent_g_uplink_cut_s"] = round(t_back - t0, 1)
    MEASUREMENTS["health_agent_g_uplink_cut_condition_after_s"] = round(took, 2)
    MEASUREMENTS["health_agent_g_uplink_cut_failovers"] = failovers(rc) - n_failovers
    MEASUREMENTS["health_agent_g_uplink_cut_condition"] = cond["message"][:300]
    MEASUREMENTS["health_agent_g_uplink_recovery_s"] = recovery
    MEASUREMENTS["health_agent_g_uplink_recovery_max_s"] = max(recovery.values())
    MEASUREMENTS["health_agent_g_uplink_reports_up_after_s"] = round(reports_up_s, 2)
    assert failovers(rc) == n_failovers
    assert rc.active_endpoints() == before
    # Every tunnel of the gateway re-established, each CHILD_SA on a reqid of its own.
    assert set(tunnels_after) == set(tunnels_before), (tunnels_before, tunnels_after)
    reqids = [r for _uid, rs in tunnels_after.values() for r in rs]
    assert len(reqids) == len(set(reqids)), tunnels_after
    assert max(recovery.values()) <= BOUND_S, f"pod traffic back {recovery} s after the uplink's return"
