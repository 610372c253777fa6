"""The failover-on-health decision (raven/controller/health.py) with synthetic PathReport sets, through the
one sticky election (raven/controller/election.py).

Each case builds a cluster of pools (first node the active gateway, second a standby candidate, third a plain
member), with the reports healthy agents would write, then applies the failure the agents' state machines would
report, and checks which gateways are blamed, what the election does, and what the condition says."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from raven.api.constants import LABEL_GATEWAY
from raven.api.gateway import Endpoint, Gateway, GatewaySpec, GatewayStatus
from raven.api.node import Node
from raven.api.pathreport import PathReport, PathReportStatus, State, Target
from raven.controller.election import elect
from raven.controller.health import (
    REASON_DEGRADED,
    REASON_HEALTHY,
    REASON_KEPT,
    REASON_NO_BETTER,
    REASON_NO_EVIDENCE,
    REASON_NOT_FORWARDING,
    REASON_REMOTE_DOWN,
    HealthMemory,
    HealthSettings,
    HealthVerdict,
    assess,
    record_failover,
)

T0 = datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC)  # when failures start
NOW = T0 + timedelta(seconds=2)
SETTINGS = HealthSettings(stale_after=timedelta(seconds=180), hold_time=timedelta(seconds=60))
FOUR = ("gw-cloud", "gw-ea", "gw-eb", "gw-ep")
TWO = ("gw-cloud", "gw-ea")


def nodes_of(gw: str) -> list[str]:
    short = gw.removeprefix("gw-")
    return [f"{short}-1", f"{short}-2", f"{short}-3"]


@dataclass
class World:
    gateways: dict[str, Gateway]
    nodes: dict[str, Node]
    reports: dict[str, PathReport]

    def actives(self) -> dict[str, frozenset[str]]:
        return {g: frozenset(e.node_name for e in gw.status.active_tunnel_endpoints())
                for g, gw in self.gateways.items()}

    def active(self, gw: str) -> str:
        (a,) = self.actives()[gw]
        return a

    def assess(self, gw: str, memory: HealthMemory | None = None, now: datetime = NOW) -> HealthVerdict:
        cands = {n.name: n for n in self.nodes.values() if n.gateway == gw}
        return assess(self.gateways[gw], cands, self.actives(), self.reports.values(), memory or HealthMemory(),
                      now, SETTINGS)

    def elect(self, gw: str, verdict: HealthVerdict) -> list[str]:
        own = [n for n in self.nodes.values() if n.gateway == gw]
        result = elect(self.gateways[gw], own, "2026-12-01T12:00:03Z", health=verdict.election)
        self.gateways[gw] = replace(self.gateways[gw], status=result.status)
        return [e.node_name for e in result.status.active_tunnel_endpoints()]

    def target(self, reporter: str, pred: Callable[[Target], bool], state: State) -> None:
        r = self.reports[reporter]
        ts = tuple(replace(t, state=state, since=T0) if pred(t) else t for t in r.status.targets)
        self.reports[reporter] = replace(r, status=replace(r.status, targets=ts))

    def set_ready(self, node: str, ready: bool, unreachable: bool = False) -> None:
        """`unreachable`: Ready is Unknown (the control plane cannot hear the node), not False."""
        self.nodes[node] = replace(self.nodes[node], ready=ready, unreachable=not ready and unreachable)

    def restale(self, node: str, age: float) -> None:
        r = self.reports[node]
        self.reports[node] = replace(r, status=replace(r.status, heartbeat_time=NOW - timedelta(seconds=age)))

    def replan(self, at: datetime = NOW) -> None:
        """Agents follow a new election: reports are rewritten against the current actives, all up."""
        self.reports = healthy_reports(self.gateways, self.nodes, at)


def healthy_reports(gateways: dict[str, Gateway], nodes: dict[str, Node], at: datetime = NOW
                    ) -> dict[str, PathReport]:
    actives = {g: gw.status.active_tunnel_endpoints()[0].node_name for g, gw in gateways.items()}
    out: dict[str, PathReport] = {}
    for node in nodes.values():
        g = node.gateway
        assert g is not None
        a = actives[g]
        if node.name == a:
            targets = [Target("peer", h, actives[h], f"241.0.0.{i}", "up", T0 - timedelta(seconds=60), 0.001, 0.0)
                       for i, h in enumerate(gateways) if h != g]
            role = "gateway"
        else:
            targets = [Target("gateway", g, a, "240.0.0.1", "up", T0 - timedelta(seconds=60), 0.0004, 0.0)]
            targets += [Target("via", h, actives[h], f"241.0.0.{i}", "up", T0 - timedelta(seconds=60), 0.001, 0.0)
                        for i, h in enumerate(gateways) if h != g]
            role = "member"
        out[node.name] = PathReport(node.name, node.name, PathReportStatus(g, role, at - timedelta(seconds=5), 0.2,
                                                                           tuple(targets)))
    return out


def world(pools: tuple[str, ...] = FOUR) -> World:
    gateways, nodes = {}, {}
    for g in pools:
        names = nodes_of(g)
        eps = [Endpoint(n, "tunnel", 4500, False) for n in names[:2]]
        gateways[g] = Gateway(g, GatewaySpec(endpoints=eps), GatewayStatus(active_endpoints=[eps[0]]),
                              metadata={"resourceVersion": "1"})
        for n in names:
            nodes[n] = Node(n, "10.0.0.1", ("10.1.0.0/24",), True, {LABEL_GATEWAY: g})
    return World(gateways, nodes, healthy_reports(gateways, nodes))


def about(gw: str, kind: str | None = None) -> Callable[[Target], bool]:
    return lambda t: t.gateway == gw and (kind is None or t.kind == kind)


def everything(t: Target) -> bool:
    return True


def peers_of_lose(w: World, gw: str) -> None:
    """Every other pool's active gateway loses `gw` through the tunnel, and their members lose it through them."""
    for h in w.gateways:
        if h == gw:
            continue
        w.target(w.active(h), about(gw, "peer"), "down")
        for m in nodes_of(h)[1:]:
            w.target(m, about(gw, "via"), "down")


def uplink_cut(w: World, gw: str) -> None:
    """`gw`'s active gateway loses its WAN (or its charon): its tunnels are gone both ways."""
    w.target(w.active(gw), everything, "down")
    for m in nodes_of(gw)[1:]:
        w.target(m, lambda t: t.kind == "via", "down")
    peers_of_lose(w, gw)


def node_dies(w: World, gw: str) -> None:
    """`gw`'s active node dies (still Ready: the grace period has not passed). Its own report stays as it was."""
    for m in nodes_of(gw)[1:]:
        w.target(m, everything, "down")
    peers_of_lose(w, gw)


def forwarding_off(w: World, gw: str) -> None:
    """IP forwarding off on `gw`'s active gateway: it answers (to raven0 and to tunnel probes) but forwards nothing."""
    for m in nodes_of(gw)[1:]:
        w.target(m, lambda t: t.kind == "via", "down")


def blamed(w: World) -> dict[str, str]:
    return {g: v.condition_reason for g in w.gateways if (v := w.assess(g)).blamed}


# --- the properties -----------------------------------------------------------------------------------------


def test_healthy_cluster_blames_nothing() -> None:
    w = world()
    for g in w.gateways:
        v = w.assess(g)
        assert not v.blamed and v.election.not_forwarding == {} and v.election.unfit == {}
        assert (v.condition_status, v.condition_reason) == ("True", REASON_HEALTHY), v.condition_message
        assert "3 of 3 peers reach it" in v.condition_message and "2 of 2 members" in v.condition_message


@pytest.mark.parametrize("pools", [FOUR, TWO], ids=["four-pools", "two-pools"])
@pytest.mark.parametrize("failure,failed", [
    (forwarding_off, "gw-ea"),
    (node_dies, "gw-ea"),
    (node_dies, "gw-cloud"),
])
def test_only_the_failed_pool_fails_over(pools: tuple[str, ...], failure: Callable[[World, str], None],
                                         failed: str) -> None:
    w = world(pools)
    failure(w, failed)
    assert set(blamed(w)) == {failed}
    v = w.assess(failed)
    assert v.condition_reason == REASON_NOT_FORWARDING and v.condition_status == "False"
    assert w.elect(failed, v) == [nodes_of(failed)[1]]
    assert "since 12:00:01" in v.blamed[nodes_of(failed)[0]].evidence
    for g in w.gateways:
        if g != failed:
            assert w.elect(g, w.assess(g)) == [nodes_of(g)[0]], f"{g} moved because {failed} failed"


def test_remote_failure_is_named_but_not_blamed_on_the_local_gateway() -> None:
    w = world(TWO)
    node_dies(w, "gw-cloud")
    v = w.assess("gw-ea")
    assert not v.blamed and (v.condition_status, v.condition_reason) == ("False", REASON_REMOTE_DOWN)
    assert "gw-cloud" in v.condition_message and "nothing moves" in v.condition_message


def test_uplink_cut_of_one_gateway_blames_it_alone_with_the_evidence() -> None:
    w = world()
    uplink_cut(w, "gw-ea")
    assert set(blamed(w)) == {"gw-ea"}
    v = w.assess("gw-ea")
    assert v.blamed["ea-1"].evidence.startswith("3 of 3 peers and 2 of 2 members (through it) lost the gateway "
                                                "since 12:00:01"), v.blamed["ea-1"].evidence
    assert w.elect("gw-ea", v) == ["ea-2"]


def test_a_cut_between_two_pools_is_blamed_on_neither() -> None:
    """Two pools, the tunnel between them gone: both ends see the same, nothing can tell which end is at fault."""
    w = world(TWO)
    uplink_cut(w, "gw-ea")
    assert blamed(w) == {}
    for g in TWO:
        assert w.assess(g).condition_reason == REASON_REMOTE_DOWN


def test_one_lost_probe_in_ten_is_degraded_and_moves_nothing() -> None:
    w = world()
    w.target("cloud-1", about("gw-ea", "peer"), "degraded")  # the state machine's view of 10 % loss
    w.target("ea-3", about("gw-cloud", "via"), "degraded")
    assert blamed(w) == {}
    v = w.assess("gw-ea")
    assert (v.condition_status, v.condition_reason) == ("True", REASON_DEGRADED)
    assert w.elect("gw-ea", v) == ["ea-1"]


def test_a_minority_of_members_losing_the_gateway_is_their_problem() -> None:
    w = world()
    w.target("ea-3", everything, "down")  # one member's raven0 is broken; ea-2 still reaches ea-1
    w.nodes["ea-4"] = Node("ea-4", "10.0.0.1", ("10.1.0.0/24",), True, {LABEL_GATEWAY: "gw-ea"})
    w.replan()
    w.target("ea-3", everything, "down")
    assert blamed(w) == {}


def test_whole_uplink_cut_with_candidate_evidence_moves_nothing_and_says_why() -> None:
    w = world()
    uplink_cut(w, "gw-ea")
    # The standby's own report (e.g. hot-standby probes) says it reaches none of the peers either.
    r = w.reports["ea-2"]
    peers = tuple(Target("peer", h, w.active(h), "x", "down", T0) for h in FOUR if h != "gw-ea")
    w.reports["ea-2"] = replace(r, status=replace(r.status, targets=r.status.targets + peers))
    v = w.assess("gw-ea")
    assert v.blamed and v.election.not_forwarding == {}
    assert (v.condition_status, v.condition_reason) == ("False", REASON_NO_BETTER)
    assert "no candidate can do better" in v.condition_message and "reaches 0 of 3 peers" in v.condition_message
    assert w.elect("gw-ea", v) == ["ea-1"]


def test_whole_uplink_cut_without_candidate_evidence_tries_once_then_stops() -> None:
    w = world()
    uplink_cut(w, "gw-ea")
    v = w.assess("gw-ea")
    assert w.elect("gw-ea", v) == ["ea-2"]
    memory = record_failover(v.memory, "ea-1", v.blamed["ea-1"], NOW)
    # ea-2 takes over and is cut off just the same (the pool's uplink): its agents and the peers say so.
    w.replan()
    uplink_cut(w, "gw-ea")
    w.target("ea-1", lambda t: t.kind == "via", "down")
    v2 = w.assess("gw-ea", memory, NOW + timedelta(seconds=5))
    assert v2.blamed and v2.election.not_forwarding == {}
    assert v2.condition_reason == REASON_NO_BETTER and "uplink is likely cut" in v2.condition_message
    assert w.elect("gw-ea", v2) == ["ea-2"]


def test_a_failed_over_node_is_held_until_healthy_for_the_hold_time() -> None:
    w = world()
    forwarding_off(w, "gw-ea")
    v = w.assess("gw-ea")
    assert w.elect("gw-ea", v) == ["ea-2"]
    memory = record_failover(v.memory, "ea-1", v.blamed["ea-1"], NOW)
    later = NOW + timedelta(seconds=120)
    w.replan(later)
    # Its own report counts against it (it lost ea-2 over raven0 while ea-3 reaches it): held however long.
    w.target("ea-1", about("gw-ea", "gateway"), "down")
    v = w.assess("gw-ea", memory, later)
    assert "ea-1" in v.election.unfit and "lost ea-2 over raven0" in v.election.unfit["ea-1"]
    w.replan(later)  # clean from now on
    v = w.assess("gw-ea", v.memory, later)
    assert "ea-1" in v.election.unfit and v.next_check == later + SETTINGS.hold_time
    # ea-2 now fails while ea-1 is held: nothing better to move to, nothing moves.
    for m in ("ea-1", "ea-3"):
        w.target(m, lambda t: t.kind == "via", "down")
    v = w.assess("gw-ea", v.memory, later + timedelta(seconds=30))
    assert v.condition_reason == REASON_NO_BETTER and "held until healthy" in v.condition_message
    assert w.elect("gw-ea", v) == ["ea-2"]
    # Clean for the hold time (its own report: it reaches ea-2, and nothing through it, like every member):
    # eligible again, and the election moves back.
    v = w.assess("gw-ea", v.memory, later + timedelta(seconds=60))
    assert "ea-1" not in v.election.unfit and v.memory.holds == {}
    assert w.elect("gw-ea", v) == ["ea-1"]


def test_no_flap_released_node_is_not_moved_back_while_the_active_works() -> None:
    w = world()
    forwarding_off(w, "gw-ea")
    v = w.assess("gw-ea")
    w.elect("gw-ea", v)
    memory = record_failover(v.memory, "ea-1", v.blamed["ea-1"], NOW)
    w.replan()
    for dt in (0, 30, 61, 200):
        v = w.assess("gw-ea", memory, NOW + timedelta(seconds=dt))
        memory = v.memory
        assert w.elect("gw-ea", v) == ["ea-2"]
    assert memory.holds == {}


def test_edge_autonomy_keeps_a_notready_gateway_that_the_data_plane_still_reaches() -> None:
    w = world()
    for n in nodes_of("gw-ea"):
        w.set_ready(n, False, unreachable=True)
        w.restale(n, 400)  # the pool cannot write its reports either
    w.set_ready("ea-2", True)  # even with a Ready candidate to go to
    v = w.assess("gw-ea")
    assert v.election.keep.keys() == {"ea-1"} and v.condition_reason == REASON_KEPT
    assert "3 of 3 peers reach it" in v.condition_message
    assert w.elect("gw-ea", v) == ["ea-1"]


def test_a_node_that_says_it_is_not_ready_is_replaced_as_before_whatever_the_data_plane_says() -> None:
    """Ready=False comes from the node itself (the control plane hears it): not edge autonomy."""
    w = world()
    w.set_ready("ea-1", False)
    v = w.assess("gw-ea")
    assert v.election.keep == {} and v.condition_reason == REASON_HEALTHY
    assert w.elect("gw-ea", v) == ["ea-2"]


def test_edge_autonomy_ends_when_the_peers_lose_it() -> None:
    w = world()
    for n in nodes_of("gw-ea"):
        w.set_ready(n, False, unreachable=True)
        w.restale(n, 400)
    w.set_ready("ea-2", True)
    peers_of_lose(w, "gw-ea")
    v = w.assess("gw-ea")
    assert v.election.keep == {}
    assert w.elect("gw-ea", v) == ["ea-2"]


def test_stale_reports_are_no_evidence_and_readiness_decides() -> None:
    w = world()
    node_dies(w, "gw-ea")
    for n in w.reports:
        w.restale(n, 181)
    v = w.assess("gw-ea")
    assert not v.blamed and (v.condition_status, v.condition_reason) == ("Unknown", REASON_NO_EVIDENCE)
    assert w.elect("gw-ea", v) == ["ea-1"]  # Ready: stays, as before
    w.set_ready("ea-1", False)
    assert w.elect("gw-ea", w.assess("gw-ea")) == ["ea-2"]  # NotReady, nothing says it works: fails over


def test_reports_from_the_wrong_writer_or_an_unknown_node_are_ignored() -> None:
    w = world()
    for m in ("ea-2", "ea-3"):
        r = w.reports[m]
        bad = replace(r, node_name="someone-else")
        w.reports[m] = bad
    forwarding_off(w, "gw-ea")
    assert "gw-ea" not in blamed(w)
    w = world()
    # A report claiming to be a member of gw-ea from a node not labelled for it.
    forwarding_off(w, "gw-ea")
    for m in ("ea-2", "ea-3"):
        w.nodes[m] = replace(w.nodes[m], labels={LABEL_GATEWAY: "gw-eb"})
    assert "gw-ea" not in blamed(w)


def test_a_candidate_that_lost_the_gateway_over_raven0_while_others_reach_it_is_unfit() -> None:
    w = world()
    w.nodes["ea-4"] = Node("ea-4", "10.0.0.1", ("10.1.0.0/24",), True, {LABEL_GATEWAY: "gw-ea"})
    w.replan()
    w.target("ea-2", about("gw-ea", "gateway"), "down")
    v = w.assess("gw-ea")
    assert "lost ea-1 over raven0" in v.election.unfit["ea-2"]


def test_a_loss_that_another_report_contradicts_waits_for_that_report() -> None:
    """Two pools, the cloud gateway dies: ea's members report their losses through ea-1 before ea-1's own report
    says it lost the cloud too. Until the losses are `settle` old, "ea-1 still reaches the cloud" may only be an
    older report: nothing is blamed, and the verdict asks to be re-checked when they are."""
    w = world(TWO)
    for m in ("ea-2", "ea-3"):
        w.target(m, about("gw-cloud", "via"), "down")
    early = T0 + timedelta(milliseconds=500)
    v = w.assess("gw-ea", now=early)
    assert not v.blamed and v.next_check == T0 + SETTINGS.settle
    # ea-1's report arrives: it lost the cloud too. Nobody is known to reach the cloud: not ea's fault.
    w.target("ea-1", about("gw-cloud", "peer"), "down")
    assert not w.assess("gw-ea", now=T0 + timedelta(seconds=1.5)).blamed


def test_forwarding_off_in_two_pools_is_blamed_once_the_losses_settled() -> None:
    w = world(TWO)
    forwarding_off(w, "gw-ea")
    assert not w.assess("gw-ea", now=T0 + timedelta(milliseconds=500)).blamed
    v = w.assess("gw-ea", now=T0 + timedelta(seconds=1))
    assert v.blamed["ea-1"].kind == "forwarding"
    assert w.elect("gw-ea", v) == ["ea-2"]


def test_a_held_node_still_fills_a_hole_left_by_readiness_when_nobody_else_can() -> None:
    """a-1 was failed over on health and is held; then ea-2's node goes NotReady. A held node is better than no
    tunnel at all; a node whose own reports say it cannot do better is not."""
    w = world()
    forwarding_off(w, "gw-ea")
    v = w.assess("gw-ea")
    assert w.elect("gw-ea", v) == ["ea-2"]
    memory = record_failover(v.memory, "ea-1", v.blamed["ea-1"], NOW)
    w.replan()
    w.set_ready("ea-2", False)
    peers_of_lose(w, "gw-ea")  # ea-2 is really gone: no edge autonomy
    v = w.assess("gw-ea", memory, NOW + timedelta(seconds=5))
    assert "ea-1" in v.election.unfit and v.election.held == {"ea-1"}
    assert w.elect("gw-ea", v) == ["ea-1"]


def test_losses_on_a_tunnel_still_coming_up_are_no_evidence_until_it_is_old_enough() -> None:
    """At start (or after an election) probes run before IKE is up: a peer's first `down` about a gateway elected
    a moment ago is not a failure (seen in the e2e cluster: one peer's report, written before the others', failed
    over a gateway whose tunnels were still coming up). Still down once the tunnel is `establish` old: it counts."""
    w = world()
    ep = w.active("gw-ep")
    elected = {(g, w.active(g)): T0 - timedelta(seconds=1) for g in w.gateways}
    for h in ("gw-cloud", "gw-ea", "gw-eb"):
        w.target(w.active(h), about("gw-ep", "peer"), "down")
    w.target(ep, everything, "unknown")  # its own probes have not judged anything yet
    for m in nodes_of("gw-ep")[1:]:  # its members reach it over raven0, nothing through it yet
        w.target(m, lambda t: t.kind == "via", "down")

    def verdict(now: datetime) -> HealthVerdict:
        cands = {n.name: n for n in w.nodes.values() if n.gateway == "gw-ep"}
        return assess(w.gateways["gw-ep"], cands, w.actives(), w.reports.values(), HealthMemory(), now, SETTINGS,
                      elected)

    young = verdict(NOW)
    assert not young.blamed and young.next_check == T0 - timedelta(seconds=1) + SETTINGS.establish
    old = verdict(T0 + SETTINGS.establish)
    assert old.blamed[ep].kind == "peers", old
    # Without election times (a controller that saw the election happen before it started) nothing is young.
    assert w.assess("gw-ep").blamed


def test_a_young_tunnel_that_one_end_reaches_is_established_and_its_losses_count() -> None:
    """The members of a just-elected gateway lose everything through it while it reaches its peers itself: its
    tunnels are up, so it answers but does not forward (R2) at once."""
    w = world()
    a = w.active("gw-ea")
    elected = {("gw-ea", a): NOW - timedelta(seconds=1)}
    forwarding_off(w, "gw-ea")
    cands = {n.name: n for n in w.nodes.values() if n.gateway == "gw-ea"}
    v = assess(w.gateways["gw-ea"], cands, w.actives(), w.reports.values(), HealthMemory(), NOW, SETTINGS, elected)
    assert v.blamed[a].kind == "forwarding", v


def test_path_health_counts_the_peers_and_carries_the_memory_to_a_new_leader() -> None:
    from raven.api.gateway import GatewayStatus as Status
    from raven.controller.health import memory_from_status

    w = world()
    w.target(w.active("gw-cloud"), about("gw-ea", "peer"), "down")
    v = w.assess("gw-ea")
    assert (v.peers_up, v.peers) == (3, 3)  # gw-ea's own report still reaches the cloud gateway
    w.target(w.active("gw-ea"), about("gw-cloud", "peer"), "down")
    v = w.assess("gw-ea")
    assert (v.peers_up, v.peers) == (2, 3)
    node_dies(w, "gw-eb")
    b = w.active("gw-eb")
    v = w.assess("gw-eb")
    memory = record_failover(v.memory, b, v.blamed[b], NOW)
    after = w.assess("gw-eb", memory)
    ph = after.election.path_health
    assert ph is not None and [h.node_name for h in ph.held] == [b] and not ph.trial_spent
    # What a new leader reads back from the written status is what the old one remembered.
    parsed = Status.from_dict({"pathHealth": ph.to_dict()}).path_health
    assert parsed == ph and memory_from_status(parsed) == after.memory


def test_a_young_tunnel_up_in_one_direction_only_is_still_coming_up() -> None:
    """Seen at start in e2e: the gateway's own probes reach its peers while theirs do not reach it yet (one
    direction's routes or SAs up before the other's): not a failure while the tunnel is young."""
    w = world()
    ep = w.active("gw-ep")
    elected = {(g, w.active(g)): NOW - timedelta(seconds=4) for g in w.gateways}
    for h in ("gw-cloud", "gw-ea", "gw-eb"):
        w.target(w.active(h), about("gw-ep", "peer"), "down")
    for m in nodes_of("gw-ep")[1:]:
        w.target(m, lambda t: t.kind == "via", "unknown")
    cands = {n.name: n for n in w.nodes.values() if n.gateway == "gw-ep"}
    v = assess(w.gateways["gw-ep"], cands, w.actives(), w.reports.values(), HealthMemory(), NOW, SETTINGS, elected)
    assert not v.blamed, v.condition_message
    later = assess(w.gateways["gw-ep"], cands, w.actives(), w.reports.values(), HealthMemory(),
                   NOW + SETTINGS.establish, SETTINGS, elected)
    assert later.blamed[ep].kind == "peers"


def test_a_young_tunnel_seen_up_from_both_ends_that_goes_down_counts_at_once() -> None:
    """Scenario (b) five times in a row: the next failure came 8-9 s after the last failover, inside the establish
    window, so the peers' losses were masked until the window ended (2 s of extra outage). A tunnel both ends'
    own probes reached since the election was up: its loss is a loss, whatever the tunnel's age."""
    from raven.controller.health import tunnels_up_both_ways

    w = world()
    ep = w.active("gw-ep")
    elected = {("gw-ep", ep): NOW - timedelta(seconds=8)}
    cands = {n.name: n for n in w.nodes.values() if n.gateway == "gw-ep"}
    seen = tunnels_up_both_ways(w.reports.values(), elected, NOW - timedelta(seconds=2), SETTINGS.establish)
    assert ("gw-ep", ep, "gw-cloud", w.active("gw-cloud")) in seen and len(seen) == 6  # 3 peers, both ways
    uplink_cut(w, "gw-ep")  # its charon dies: every tunnel of it down, both ways

    def verdict(up: frozenset[tuple[str, str, str, str]]) -> HealthVerdict:
        return assess(w.gateways["gw-ep"], cands, w.actives(), w.reports.values(), HealthMemory(), NOW, SETTINGS,
                      elected, up)

    assert not verdict(frozenset()).blamed  # not seen up: still coming up, as before
    assert verdict(seen).blamed[ep].kind == "peers"
    # The peers' probes alone are not enough (the old endpoint's SA may still answer them while plans change).
    w.replan()
    w.target(ep, everything, "unknown")
    assert not tunnels_up_both_ways(w.reports.values(), elected, NOW - timedelta(seconds=2), SETTINGS.establish)
    # ... nor a tunnel that came of age (only young ones are kept: old ones are never masked anyway).
    assert not tunnels_up_both_ways(w.reports.values(), elected, NOW + SETTINGS.establish, SETTINGS.establish)
