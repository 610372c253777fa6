"""Scenario 9: failover on data-plane health (issue 11), with real agents and real traffic (a 10 ms UDP probe), on
the shared session cluster (health failover is the controller's default); the node stays Ready unless said.

(d) the active gateway's agent SIGKILLed and not restarted, its kernel still forwarding: no failover, zero loss;
(e) the cloud gateway's node dies: only the cloud pool fails over (edge pools keep theirs), also in a cluster of
    only two pools (its own lab);
(f) 10% random loss of the probes on one tunnel (iptables statistic on ICMP) for 30 s (60 s: slow-marked): no
    failover;
(h) the control plane loses a pool (its nodes' Ready goes Unknown, its agents cannot reach the API) while its data
    plane works: the gateway is kept, no pool-to-pool packet is lost;
(i) the gateway's node dies and the control plane notices only later (Ready Unknown after a lab-sized grace
    period): the data plane fails it over before the control plane knows (today's NotReady-at-once case is
    test_02's, unchanged).

Before any "nothing moved" the test observes that the controller processed the event: the leader received every
PathReport write made meanwhile and its work queue is empty, or the condition it wrote says what it saw.
Outages go to MEASUREMENTS (terminal summary) as `health_<scenario>`."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.cluster import PathReportWrites, RavenCluster, metric
from e2e.probe import ContinuousProbe, ProbeResult
from e2e.topology import TOPOLOGY_DIR, parse_topology
from raven.api.pathreport import PathReport
from raven.kube.client import EVENTS, GATEWAYS, PATHREPORTS

from .conftest import MEASUREMENTS, PREFIX, own_cluster

pytestmark = [pytest.mark.root, pytest.mark.slow]

EDGE_GATEWAYS = ("gw-edge-a", "gw-edge-b", "gw-edge-pub")


def _leader(rc: RavenCluster) -> int:
    leader = rc.leader()
    assert leader is not None, "no controller leads"
    return leader


def _leader_metric(rc: RavenCluster, leader: int, name: str, **labels: str) -> float:
    return metric(rc.metrics(f"controller/{leader}"), name, **labels)


def _report_events(rc: RavenCluster, leader: int) -> float:
    return _leader_metric(rc, leader, "raven_informer_events_total", informer="pathreports")


def _wait_processed(rc: RavenCluster, leader: int, writes: PathReportWrites, t0: float, events0: float,
                    cut: str | None = None) -> None:
    """The leader has received every PathReport write made since `t0` and reconciled what they queued. `cut`: a
    node cut off meanwhile, whose writes are left out of the count (one begun as its link went may reach the
    server and never complete: counted on arrival, never applied)."""
    def caught_up() -> bool:
        n = len([w for w in writes.between(t0, time.monotonic()) if w[1] != cut])
        m = rc.metrics(f"controller/{leader}")
        return (metric(m, "raven_informer_events_total", informer="pathreports") - events0 >= n
                and metric(m, "raven_controller_queue_depth") == 0)
    rc.wait_for("the leader processed every PathReport write", caught_up, timeout=30, interval=0.2)


def _reports(rc: RavenCluster) -> dict[str, PathReport]:
    return {r.name: r for r in (PathReport.from_dict(o) for o in rc.list_objects(PATHREPORTS))}


def _condition(rc: RavenCluster, gw: str) -> dict[str, Any]:
    for c in (rc.get(GATEWAYS, gw).get("status") or {}).get("conditions") or []:
        if c.get("type") == "TunnelsHealthy":
            return dict(c)
    return {}


def _not_forwarding_events(rc: RavenCluster, gw: str) -> list[str]:
    return [str(e.get("message", "")) for e in rc.list_objects(EVENTS, "default")
            if e.get("reason") == "GatewayNotForwarding" and (e.get("involvedObject") or {}).get("name") == gw]


def _outages(res: ProbeResult) -> dict[str, Any]:
    return {"lost": res.lost, "sent": res.sent, "max_outage_s": round(res.max_outage_s, 3)}


def _probe(rc: RavenCluster, src_node: str, dst_node: str, port: int, name: str) -> ContinuousProbe:
    src, dst = rc.cl.nodes[src_node].pods[0], rc.cl.nodes[dst_node].pods[0]
    return ContinuousProbe(src.netns, dst.netns, dst.ip, port=port, name=name)


# --- (d) ---------------------------------------------------------------------------------------------------------


def test_d_gateway_agent_killed_and_not_restarted_no_failover_no_loss(rc: RavenCluster,
                                                                      writes: PathReportWrites) -> None:
    gw = rc.active_gateway_node("gw-edge-b")
    member = rc.member_node("edge-b")
    peers = {g: rc.active_gateway_node(g) for g in ("gw-cloud", "gw-edge-pub")}
    leader = _leader(rc)
    failovers0 = _leader_metric(rc, leader, "raven_gateway_failovers_total")
    replies0 = {p: metric(rc.metrics(f"agent/{p}"), "raven_probe_replies_total", kind="peer") for p in peers.values()}
    with _probe(rc, member, rc.member_node("cloud"), 18190, "health-d") as probe:
        assert probe.wait_first_reply()
        time.sleep(0.3)
        t0, events0 = time.monotonic(), _report_events(rc, leader)
        rc.agents[gw].kill()
        try:
            assert not rc.agents[gw].alive()
            # Seen: the peers keep probing gw-edge-b's gateway and its kernel answers (10 s of probes at 0.2 s, for
            # each peer), their reports say it is up, and the leader processed whatever was written meanwhile.
            for p in peers.values():
                def answered(p: str = p) -> bool:
                    got = metric(rc.metrics(f"agent/{p}"), "raven_probe_replies_total", kind="peer")
                    return got >= replies0[p] + 15 * 10
                rc.wait_for(f"{p}'s probes answered without {gw}'s agent", answered, timeout=60)
            rs = _reports(rc)
            for p in peers.values():
                states = [t.state for t in rs[p].status.targets if t.gateway == "gw-edge-b"]
                assert states and all(s in ("up", "degraded") for s in states), (p, states)
            _wait_processed(rc, leader, writes, t0, events0, cut=gw)  # a write the kill cut short never lands
            dead_s = time.monotonic() - t0
        finally:
            res = probe.stop()
            rc.agents[gw].start()
    MEASUREMENTS["health_d_agent_killed"] = {**_outages(res), "agent_dead_s": round(dead_s, 1)}
    assert rc.active_endpoints()["gw-edge-b"] == [gw]
    assert _leader_metric(rc, leader, "raven_gateway_failovers_total") == failovers0
    assert res.lost == 0, res


# --- (e) ---------------------------------------------------------------------------------------------------------


def _cloud_node_dies(rc: RavenCluster, writes: PathReportWrites, edge_gateways: tuple[str, ...], port: int,
                     relay_pair: tuple[str, str] | None) -> dict[str, Any]:
    """cloud's active node drops off its LAN (a dead node, still Ready); returns the measurements."""
    old = rc.active_gateway_node("gw-cloud")
    new = rc.member_node("cloud")
    edges = {g: rc.active_gateway_node(g) for g in edge_gateways}
    leader = _leader(rc)
    failovers0 = _leader_metric(rc, leader, "raven_gateway_failovers_total", reason="not_forwarding")
    edge_pool = next(p for p, pool in rc.cl.pools.items() if pool.spec.gateway == edge_gateways[0])
    probes = [_probe(rc, rc.member_node(edge_pool), new, port, "health-e-cloud")]
    relays: frozenset[str] = frozenset()
    if relay_pair is not None:  # NAT to NAT: relayed, by cost, through gw-cloud or gw-edge-pub (both public)
        relays = _relays_of(rc, relay_pair)
        probes.append(_probe(rc, rc.member_node(relay_pair[0]), rc.member_node(relay_pair[1]), port + 1,
                             "health-e-relay"))
    try:
        for p in probes:
            assert p.wait_first_reply()
        time.sleep(0.3)
        t0, events0 = time.monotonic(), _report_events(rc, leader)
        rc.cl.cut_link(old)
        try:
            moved = rc.wait_for("gw-cloud to fail over on health", lambda: rc.active_endpoints()["gw-cloud"] == [new],
                                timeout=30, interval=0.05)
            # Seen: every edge gateway reports the old cloud gateway lost, and the leader processed it all.
            def edges_lost_it() -> bool:
                rs = _reports(rc)
                return all(any(t.gateway == "gw-cloud" and t.node == old and t.lost for t in rs[n].status.targets)
                           or any(t.gateway == "gw-cloud" and t.node == new for t in rs[n].status.targets)
                           for n in edges.values())
            rc.wait_for("edge gateways report the cloud gateway lost", edges_lost_it, timeout=30, interval=0.1)
            _wait_processed(rc, leader, writes, t0, events0, cut=old)
            time.sleep(1.0)  # the probes' tail after recovery
        finally:
            results = [p.stop() for p in probes]
            rc.cl.restore_link(old)
    except BaseException:
        for p in probes:
            p.stop()
        raise
    assert {g: rc.active_gateway_node(g) for g in edge_gateways} == edges, "an edge pool moved"
    assert _leader_metric(rc, leader, "raven_gateway_failovers_total", reason="not_forwarding") == failovers0 + 1
    def evs() -> list[str]:
        return [m for m in _not_forwarding_events(rc, "gw-cloud") if m.startswith(f"gateway {old} is not forwarding")]
    rc.wait_for("the GatewayNotForwarding Event", lambda: bool(evs()), timeout=30)  # Events are written apart
    assert "lost the gateway since" in evs()[-1], evs()
    for g in edge_gateways:
        assert not [m for m in _not_forwarding_events(rc, g) if "since" in m and old in m], g
    out = {"detected_and_elected_s": round(moved, 3), "cloud_pool": _outages(results[0])}
    if relay_pair is not None:
        out["relayed_nat_pair"] = {"via": sorted(relays), **_outages(results[1])}
    # The pair's echo crosses the dying cloud node when either direction is relayed there.
    for r in results if "gw-cloud" in relays else results[:1]:
        assert r.received > 0 and r.outages and r.outages[-1].start_s + r.outages[-1].length_s < r.sent * r.interval_s
    if relay_pair is not None and "gw-cloud" not in relays:  # relayed elsewhere both ways: nothing to lose
        assert results[1].received > 0 and not results[1].outages, (relays, results[1])
    return out


def _relays_of(rc: RavenCluster, pair: tuple[str, str]) -> frozenset[str]:
    """The Gateways relaying the NAT pools `pair`, one per direction as each end publishes it (waited for): the two
    ends choose on their own histories, so the directions may cross different relays."""
    gws = [str(rc.cl.pools[p].spec.gateway) for p in pair]
    nodes = [rc.active_gateway_node(g) for g in gws]

    def vias() -> frozenset[str] | None:
        rs = _reports(rc)
        out = {next((p.via for p in rs[n].status.paths if p.gateway == other), None) if n in rs else None
               for n, other in ((nodes[0], gws[1]), (nodes[1], gws[0]))}
        return None if out & {None, ""} else frozenset(v for v in out if v is not None)
    rc.wait_for(f"both ends of {pair} publish their relay", lambda: vias() is not None, timeout=30)
    relays = vias()
    assert relays is not None and relays <= {"gw-cloud", "gw-edge-pub"}, relays
    return relays


def test_e_cloud_gateway_node_dies_only_the_cloud_pool_fails_over(rc: RavenCluster,
                                                                  writes: PathReportWrites) -> None:
    MEASUREMENTS["health_e_cloud_node_dies"] = _cloud_node_dies(rc, writes, EDGE_GATEWAYS, 18192,
                                                                ("edge-a", "edge-b"))


def two_pool_spec() -> Any:
    doc: dict[str, Any] = copy.deepcopy(yaml.safe_load((TOPOLOGY_DIR / "default.yaml").read_text()))
    doc["pools"] = [p for p in doc["pools"] if p["name"] in ("cloud", "edge-a")]
    doc["gateways"] = [g for g in doc["gateways"] if g["metadata"]["name"] in ("gw-cloud", "gw-edge-a")]
    return parse_topology(doc)


@pytest.fixture(scope="module")
def rc2(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    yield from own_cluster(request, RavenCluster(two_pool_spec(), prefix=f"{PREFIX}2"))


def test_e_two_pools_cloud_gateway_node_dies_only_the_cloud_pool_fails_over(rc2: RavenCluster) -> None:
    """With two pools the edge gateway's only peer is the dead one: its losses are explained by that peer being
    down (nobody else reaches it), so only the cloud pool's own member (R1) moves anything."""
    counter = PathReportWrites()
    rc2.api.server.on_request = counter
    try:
        rc2.wait_for("every agent's report up", lambda: all(
            r.status.targets and all(t.state == "up" for t in r.status.targets) for r in _reports(rc2).values())
            and len(_reports(rc2)) == len(rc2.agents), timeout=60)
        MEASUREMENTS["health_e_two_pools"] = _cloud_node_dies(rc2, counter, ("gw-edge-a",), 18194, None)
    finally:
        rc2.api.server.on_request = None
    rc2.wait_converged(timeout=60)


# --- (f) ---------------------------------------------------------------------------------------------------------


def _state_changes(rc: RavenCluster, node: str) -> dict[str, float]:
    """The agent's probe state changes so far, by new state."""
    out: dict[str, float] = {}
    for to in ("up", "degraded", "down"):
        out[to] = metric(rc.metrics(f"agent/{node}"), "raven_probe_state_changes_total", kind="peer", to=to)
    return out


def _lossy_tunnel(rc: RavenCluster, seconds: float, port: int) -> dict[str, Any]:
    """10% of the ICMP between gw-edge-pub's and gw-cloud's inner addresses dropped at gw-edge-pub (both probe
    directions: the cloud's echo requests and the replies to gw-edge-pub's own probes)."""
    pub = rc.active_gateway_node("gw-edge-pub")
    cloud = rc.active_gateway_node("gw-cloud")
    rs = _reports(rc)
    cloud_inner = next(t.address for t in rs[pub].status.targets if t.gateway == "gw-cloud" and t.kind == "peer")
    pub_inner = next(t.address for t in rs[cloud].status.targets if t.gateway == "gw-edge-pub" and t.kind == "peer")
    leader = _leader(rc)
    failovers0 = _leader_metric(rc, leader, "raven_gateway_failovers_total")
    lost0 = {n: metric(rc.metrics(f"agent/{n}"), "raven_probe_lost_total", kind="peer") for n in (pub, cloud)}
    changes0 = {n: _state_changes(rc, n) for n in (pub, cloud)}
    replies0 = {n: metric(rc.metrics(f"agent/{n}"), "raven_probe_replies_total", kind="peer") for n in (pub, cloud)}
    rule = ["INPUT", "-p", "icmp", "-s", cloud_inner, "-d", pub_inner, "-m", "statistic", "--mode", "random",
            "--probability", "0.1", "-j", "DROP"]
    ns = rc.cl.nodes[pub].netns
    with _probe(rc, rc.member_node("edge-pub"), rc.member_node("cloud"), port, "health-f") as probe:
        assert probe.wait_first_reply()
        ns.run(["iptables", "-I", *rule])
        try:
            time.sleep(seconds)  # the scenario is the loss lasting this long; what it did is checked below
        finally:
            ns.run(["iptables", "-D", *rule])
            res = probe.stop()
    lost = {n: metric(rc.metrics(f"agent/{n}"), "raven_probe_lost_total", kind="peer") - lost0[n] for n in lost0}
    sent = {n: lost[n] + metric(rc.metrics(f"agent/{n}"), "raven_probe_replies_total", kind="peer") - replies0[n]
            for n in lost0}
    # Seen: both ends lost probes on that tunnel (about 10% of one peer's share), so there was loss to react to.
    assert all(lost[n] > 0 for n in lost), lost
    changes = {n: {to: v - changes0[n][to] for to, v in _state_changes(rc, n).items()} for n in (pub, cloud)}
    assert rc.active_gateway_node("gw-edge-pub") == pub and rc.active_gateway_node("gw-cloud") == cloud
    assert _leader_metric(rc, leader, "raven_gateway_failovers_total") == failovers0
    return {"seconds": seconds, "probes_lost": lost, "probes_sent_all_peers": sent,
            "state_changes_total": changes, "traffic": _outages(res)}


def test_f_ten_percent_probe_loss_on_one_tunnel_for_30s_moves_nothing(rc: RavenCluster) -> None:
    out = _lossy_tunnel(rc, 30.0, 18196)
    MEASUREMENTS["health_f_lossy_tunnel_30s"] = out
    assert out["traffic"]["lost"] == 0


@pytest.mark.minute
def test_f_ten_percent_probe_loss_on_one_tunnel_for_a_minute_moves_nothing(rc: RavenCluster) -> None:
    out = _lossy_tunnel(rc, 60.0, 18197)
    MEASUREMENTS["health_f_lossy_tunnel_60s"] = out
    assert out["traffic"]["lost"] == 0


# --- (h) ---------------------------------------------------------------------------------------------------------


def _api_cut(rc: RavenCluster, pool: str, add: bool) -> None:
    """The pool's router drops everything to and from the API server (the control plane loses the pool)."""
    router = rc.cl.pools[pool].router
    op = "-I" if add else "-D"
    cp = rc.cl.control_plane_ip
    for match in (["-d", cp, "-p", "tcp", "--dport", "6443"], ["-s", cp, "-p", "tcp", "--sport", "6443"]):
        router.run(["iptables", op, "FORWARD", *match, "-j", "DROP"])


def test_h_control_plane_loses_a_pool_whose_data_plane_works_no_packet_lost(rc: RavenCluster,
                                                                           writes: PathReportWrites) -> None:
    gw = rc.active_gateway_node("gw-edge-b")
    nodes = [n.name for n in rc.cl.pools["edge-b"].nodes if n.name in rc.registered]
    leader = _leader(rc)
    failovers0 = _leader_metric(rc, leader, "raven_gateway_failovers_total")
    # Into the pool from a public pool (direct tunnel) and from a NAT'd one (relayed), and out of it.
    probes = [_probe(rc, rc.member_node("edge-pub"), rc.member_node("edge-b"), 18198, "health-h-in"),
              _probe(rc, rc.member_node("edge-a"), rc.member_node("edge-b"), 18199, "health-h-relayed"),
              _probe(rc, rc.member_node("edge-b"), rc.member_node("cloud"), 18200, "health-h-out")]
    try:
        for p in probes:
            assert p.wait_first_reply()
        _api_cut(rc, "edge-b", add=True)
        try:
            for n in nodes:
                rc.set_node_unreachable(n)
            # Seen: the controller decided on it and says why it keeps the gateway.
            rc.wait_for("gw-edge-b kept despite NotReady", lambda: _condition(rc, "gw-edge-b").get("reason")
                        == "KeptDespiteNotReady", timeout=30, interval=0.1)
            kept = _condition(rc, "gw-edge-b")
            time.sleep(10)  # the outage of the control plane lasts; the data plane must carry on through it
            assert rc.active_endpoints()["gw-edge-b"] == [gw]
        finally:
            _api_cut(rc, "edge-b", add=False)
            for n in nodes:
                rc.set_node_ready(n, True)
        results = [p.stop() for p in probes]
    except BaseException:
        for p in probes:
            p.stop()
        raise
    MEASUREMENTS["health_h_control_plane_loses_pool"] = {
        "in": _outages(results[0]), "relayed": _outages(results[1]), "out": _outages(results[2])}
    assert "peers reach it" in kept.get("message", ""), kept
    assert _leader_metric(rc, leader, "raven_gateway_failovers_total") == failovers0
    assert all(r.lost == 0 for r in results), results


# --- (i) ---------------------------------------------------------------------------------------------------------


GRACE_S = 5.0  # the lab's node-monitor grace period (40 s in a default cluster)


def test_i_gateway_node_dies_fails_over_before_the_control_plane_notices(rc: RavenCluster) -> None:
    """Today's NotReady scenario as it happens in a real cluster: the node dies, and only after the grace period
    does the control plane mark it (Ready Unknown). Without health failover the outage was that grace period plus
    the handover (test_02 measures the handover from the NotReady write); with it, the data plane decides."""
    old = rc.active_gateway_node("gw-edge-a")
    new = rc.member_node("edge-a")
    leader = _leader(rc)
    failovers0 = _leader_metric(rc, leader, "raven_gateway_failovers_total", reason="not_forwarding")
    with _probe(rc, new, rc.member_node("cloud"), 18201, "health-i") as probe:
        assert probe.wait_first_reply()
        time.sleep(0.3)
        t0 = time.monotonic()
        rc.cl.cut_link(old)
        try:
            moved = rc.wait_for("gw-edge-a to fail over on health", lambda: rc.active_endpoints()["gw-edge-a"]
                                == [new], timeout=30, interval=0.05)
            time.sleep(max(0.0, t0 + GRACE_S - time.monotonic()))
            rc.set_node_unreachable(old)  # the control plane notices, late
            time.sleep(1.0)
        finally:
            res = probe.stop()
            rc.cl.restore_link(old)
            rc.set_node_ready(old, True)
    MEASUREMENTS["health_i_node_dies"] = {"failure_to_elected_s": round(moved, 3), **_outages(res),
                                          "grace_s": GRACE_S}
    assert moved < GRACE_S, "the data plane did not decide before the control plane noticed"
    assert _leader_metric(rc, leader, "raven_gateway_failovers_total", reason="not_forwarding") == failovers0 + 1
    assert res.outages and res.outages[-1].start_s + res.outages[-1].length_s < res.sent * res.interval_s - 0.3
