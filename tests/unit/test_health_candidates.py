"""Standby evidence (raven/controller/health.py): a gateway candidate's own `underlay` probes (a peer gateway's
tunnel endpoint address, over its own uplink) decide whether it can do better than the active endpoint.

Scenario (c): only the active gateway's uplink is cut -> fail over to the candidate that reaches the peers.
Scenario (g): the pool's whole uplink is cut -> the candidates reach nobody either: nothing moves (not even one
trial failover), and the condition says why; also when the pool cannot write its reports any more."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from raven.api.gateway import Endpoint
from raven.api.pathreport import State, Target
from raven.controller.health import (
    REASON_NO_BETTER,
    REASON_NOT_FORWARDING,
    REASON_REMOTE_DOWN,
    UNDERLAY_VERDICT_WINDOWS,
    HealthMemory,
    HealthVerdict,
    assess,
    record_failover,
)
from tests.unit.test_health_failover import (
    FOUR,
    NOW,
    SETTINGS,
    T0,
    TWO,
    World,
    blamed,
    node_dies,
    nodes_of,
    peers_of_lose,
    uplink_cut,
    world,
)


def underlay(w: World, node: str, state: State, only: set[str] | None = None, answered: bool = True,
             since: datetime | None = None) -> None:
    """`node` (a standby of its pool) probes every other pool's active gateway over its uplink; `only`: those up.
    `answered`: the targets had answered before (an RTT estimate); False: a `down` one never did."""
    r = w.reports[node]
    own = w.nodes[node].gateway
    targets = tuple(
        Target("underlay", h, w.active(h), f"198.18.{i}.11", st,
               since or (T0 if state == "down" else T0 - timedelta(60)),
               0.002 if answered or st != "down" else None)
        for i, h in enumerate(w.gateways) if h != own
        for st in [state if only is None or h not in only else "up"])
    targets = tuple(t for t in r.status.targets if t.kind != "underlay") + targets
    w.reports[node] = replace(r, status=replace(r.status, targets=targets))


@pytest.mark.parametrize("pools", [FOUR, TWO], ids=["four-pools", "two-pools"])
def test_c_only_the_active_gateways_uplink_cut_fails_over_to_the_standby_that_reaches_the_peers(
        pools: tuple[str, ...]) -> None:
    w = world(pools)
    uplink_cut(w, "gw-ea")
    underlay(w, "ea-2", "up")
    assert set(blamed(w)) == {"gw-ea"}  # in two pools too: the standby's uplink tells the two ends apart
    v = w.assess("gw-ea")
    assert v.condition_reason == REASON_NOT_FORWARDING
    assert "ea-2 reaches gw-cloud" in v.condition_message and "over its uplink" in v.condition_message
    assert w.elect("gw-ea", v) == ["ea-2"]
    for g in w.gateways:
        if g != "gw-ea":
            assert w.elect(g, w.assess(g)) == [nodes_of(g)[0]]


def test_c_without_standby_evidence_two_pools_still_blame_neither() -> None:
    w = world(TWO)
    uplink_cut(w, "gw-ea")
    assert blamed(w) == {}


@pytest.mark.parametrize("pools", [FOUR, TWO], ids=["four-pools", "two-pools"])
def test_g_whole_uplink_cut_moves_nothing_and_says_why(pools: tuple[str, ...]) -> None:
    w = world(pools)
    uplink_cut(w, "gw-ea")
    underlay(w, "ea-2", "down")
    v = w.assess("gw-ea")
    assert v.election.not_forwarding == {} and "ea-2" in v.election.unfit
    assert f"reaches 0 of {len(pools) - 1} peers over its uplink" in v.election.unfit["ea-2"]
    if pools == FOUR:  # the peers still reach each other: ea-1 is blamed, but nobody can do better
        assert (v.condition_status, v.condition_reason) == ("False", REASON_NO_BETTER)
        assert "no candidate can do better" in v.condition_message and "over its uplink" in v.condition_message
    else:
        assert not v.blamed and v.condition_reason == REASON_REMOTE_DOWN
    assert w.elect("gw-ea", v) == ["ea-1"]
    for g in w.gateways:
        assert w.elect(g, w.assess(g)) == [nodes_of(g)[0]]


def test_g_a_standby_that_reaches_only_peers_the_active_still_reaches_cannot_do_better() -> None:
    w = world()
    uplink_cut(w, "gw-ea")
    w.target("ea-1", lambda t: t.gateway == "gw-ep", "up")  # ea-1 still reaches gw-ep; lost the others
    w.target("ep-1", lambda t: t.gateway == "gw-ea", "up")
    underlay(w, "ea-2", "down", only={"gw-ep"})
    v = w.assess("gw-ea")
    assert "ea-1" not in v.election.not_forwarding
    assert "reaches none of the peers ea-1 lost (gw-cloud, gw-eb)" in v.election.unfit["ea-2"]
    assert w.elect("gw-ea", v) == ["ea-1"]


def test_g_a_pool_that_lost_the_api_too_keeps_its_gateway() -> None:
    """The whole uplink, API included: the pool's reports stay as they were before the cut (all up), and still
    say the members reach the peers through ea-1: nothing is blamed. When most members did report the loss just
    before the API went, the standby's last report ("up") is from before the loss: no evidence it can do better."""
    w = world()
    w.nodes["ea-4"] = replace(w.nodes["ea-3"], name="ea-4")
    w.replan()
    underlay(w, "ea-2", "up")
    peers_of_lose(w, "gw-ea")
    v = w.assess("gw-ea")
    assert not v.blamed and w.elect("gw-ea", v) == ["ea-1"]
    for m in ("ea-3", "ea-4"):
        w.target(m, lambda t: t.kind == "via", "down")
    v = w.assess("gw-ea")
    assert v.blamed and v.election.not_forwarding == {}
    assert "predates the loss" in v.election.unfit["ea-2"] and v.condition_reason == REASON_NO_BETTER
    assert w.elect("gw-ea", v) == ["ea-1"]


def test_evidence_beats_the_trial_budget_and_prefers_the_standby_with_it() -> None:
    """The trial budget (one uplink-kind failover, then nothing until healthy) guards against guessing; a standby
    whose own probes reach the peers is no guess."""
    w = world()
    uplink_cut(w, "gw-ea")
    v = w.assess("gw-ea")
    assert w.elect("gw-ea", v) == ["ea-2"]  # no evidence: the one trial
    memory = record_failover(v.memory, "ea-1", v.blamed["ea-1"], NOW)
    w.replan()
    uplink_cut(w, "gw-ea")  # ea-2 fails the same way; now ea-1 (released meanwhile) shows it reaches the peers
    w.target("ea-1", lambda t: t.kind == "via", "down")
    underlay(w, "ea-1", "up")
    later = NOW + timedelta(seconds=120)
    memory = replace(memory, holds={})
    v2 = w.assess("gw-ea", memory, later)
    assert v2.condition_reason == REASON_NOT_FORWARDING, v2.condition_message
    assert w.elect("gw-ea", v2) == ["ea-1"]


def test_g_healed_the_standby_back_first_is_no_reason_to_move_until_the_grace_ends() -> None:
    """The pool's whole uplink was cut at T0 and is healed: the standby reaches the peers again a moment before
    the active gateway's tunnels are back. That is the shared cut ending, not a better candidate."""
    w = world()
    uplink_cut(w, "gw-ea")
    underlay(w, "ea-2", "down")
    healed = T0 + timedelta(seconds=15)
    w.target("ea-2", lambda t: t.kind == "underlay", "up")
    w.reports["ea-2"] = replace(w.reports["ea-2"], status=replace(w.reports["ea-2"].status, targets=tuple(
        replace(t, since=healed) if t.kind == "underlay" else t for t in w.reports["ea-2"].status.targets)))
    now = healed + timedelta(seconds=1)
    v = w.assess("gw-ea", now=now)
    assert v.election.not_forwarding == {} and "only since" in v.election.unfit["ea-2"], v.election.unfit
    assert w.elect("gw-ea", v) == ["ea-1"]
    assert v.next_check is not None and v.next_check <= healed + SETTINGS.candidate_grace
    # The active's tunnels never come back: after the grace the standby's evidence counts.
    v = w.assess("gw-ea", now=healed + SETTINGS.candidate_grace)
    assert w.elect("gw-ea", v) == ["ea-2"]


def test_g_healed_members_lagging_reports_do_not_blame_the_gateway_whose_tunnels_are_back() -> None:
    """After a shared cut heals, the peers' reports (ea-1 reached again) may come before the members' (their via
    probes through ea-1 recovered too, but their agents' writes are rate-limited): their old losses are no
    evidence that ea-1 does not forward, until they wrote after ea-1's return or `report_lag` passed."""
    w = world()
    uplink_cut(w, "gw-ea")
    underlay(w, "ea-2", "down")
    healed = T0 + timedelta(seconds=15)
    for h in w.gateways:  # ea-1's tunnels are back: every peer reaches it, it reaches every peer
        w.target(w.active(h), lambda t: t.kind == "peer", "up")
    for r in list(w.reports.values()):
        if r.status.role == "gateway":
            w.reports[r.name] = replace(r, status=replace(r.status, heartbeat_time=healed, targets=tuple(
                replace(t, since=healed) for t in r.status.targets)))
    for m in ("ea-2", "ea-3"):  # the members wrote last during the cut: via still down since T0
        w.reports[m] = replace(w.reports[m], status=replace(w.reports[m].status,
                                                            heartbeat_time=T0 + timedelta(seconds=1)))
    v = w.assess("gw-ea", now=healed + timedelta(seconds=1))
    assert not v.blamed and v.next_check == healed + SETTINGS.report_lag, v.condition_message
    assert w.elect("gw-ea", v) == ["ea-1"]
    # A member that wrote just after ea-1's return (its via probes had not seen the path back yet: e2e scenario g
    # with a 20 s cut failed over 0.5 s after the uplink returned) is no evidence yet either.
    for m in ("ea-2", "ea-3"):
        w.reports[m] = replace(w.reports[m], status=replace(w.reports[m].status,
                                                            heartbeat_time=healed + timedelta(seconds=0.5)))
    v = w.assess("gw-ea", now=healed + timedelta(seconds=1))
    assert not v.blamed and v.next_check == healed + SETTINGS.report_lag, v.condition_message
    # `report_lag` after the return, members still losing everything through it: that is evidence.
    v = w.assess("gw-ea", now=healed + SETTINGS.report_lag)
    assert "ea-1" in v.blamed and v.blamed["ea-1"].kind == "forwarding"


# --- the standby blind spot: a failed-over node whose uplink stays cut ------------------------------------------


def _failed_over_for_an_uplink_cut() -> tuple[World, HealthMemory]:
    """Scenario (c): ea-1's uplink is cut, ea-2 reaches the peers and takes over; the agents follow the election.
    ea-1 is now a standby whose uplink is still cut; the other pools' standbys probe the same peer addresses."""
    w = world()
    uplink_cut(w, "gw-ea")
    underlay(w, "ea-2", "up")
    v = w.assess("gw-ea")
    assert w.elect("gw-ea", v) == ["ea-2"]
    memory = record_failover(v.memory, "ea-1", v.blamed["ea-1"], NOW)
    w.replan()
    for other in ("cloud-2", "eb-2", "ep-2"):
        underlay(w, other, "up")
    return w, memory


def test_a_failed_over_node_whose_underlay_probes_never_answer_stays_held_and_is_not_elected_back() -> None:
    """ea-1's underlay targets started after its uplink was cut: they never answered (no RTT), while other
    standbys' probes of the same addresses do answer. That is evidence: ea-1 stays held past the hold time, and
    when ea-2 is lost it is not elected back (a node whose own reports say it cannot do better). Once its uplink
    is back and it has been clean for the hold time, it is released."""
    w, memory = _failed_over_for_an_uplink_cut()
    underlay(w, "ea-1", "down", answered=False)
    later = NOW + SETTINGS.hold_time + timedelta(seconds=60)
    v = w.assess("gw-ea", memory, later)
    assert "ea-1" in v.memory.holds and v.memory.holds["ea-1"].clean_since is None
    assert "reaches 0 of 3 peers over its uplink" in v.election.unfit["ea-1"], v.election.unfit
    assert "ea-1" not in v.election.held  # not even as a last resort
    w.set_ready("ea-2", False)
    peers_of_lose(w, "gw-ea")
    v = w.assess("gw-ea", v.memory, later)
    assert w.elect("gw-ea", v) == []
    # The uplink returns: its probes answer; clean from then on, released after the hold time.
    back = later + timedelta(seconds=30)
    underlay(w, "ea-1", "up", since=back)
    v = w.assess("gw-ea", v.memory, back)
    assert v.memory.holds["ea-1"].clean_since == back
    v = w.assess("gw-ea", v.memory, back + SETTINGS.hold_time - timedelta(seconds=1))
    assert "ea-1" in v.memory.holds
    v = w.assess("gw-ea", v.memory, back + SETTINGS.hold_time)
    assert v.memory.holds == {} and "ea-1" not in v.election.unfit
    assert w.elect("gw-ea", v) == ["ea-1"]


def test_a_held_node_is_not_clean_while_its_underlay_probes_have_no_verdict_yet() -> None:
    """With a hold time shorter than the agents' establish window (the e2e lab's 3 s), the failed-over node's
    underlay targets are still `unknown` (young) when the hold time ends: no evidence yet is not "healthy"."""
    w, memory = _failed_over_for_an_uplink_cut()
    settings = replace(SETTINGS, hold_time=timedelta(seconds=3))
    r = w.reports["ea-1"]
    young = tuple(Target("underlay", h, w.active(h), f"198.18.{i}.11", "unknown", NOW)
                  for i, h in enumerate(w.gateways) if h != "gw-ea")
    w.reports["ea-1"] = replace(r, status=replace(r.status, targets=r.status.targets + young))

    def verdict(at: datetime, mem: HealthMemory) -> HealthVerdict:
        cands = {n.name: n for n in w.nodes.values() if n.gateway == "gw-ea"}
        return assess(w.gateways["gw-ea"], cands, w.actives(), w.reports.values(), mem, at, settings)

    v = verdict(NOW + timedelta(seconds=4), memory)
    assert "ea-1" in v.memory.holds and "no verdict yet" in v.election.unfit["ea-1"], v.election.unfit
    # Also a little after the window: the agent counts it in probes, which run late on a loaded host.
    v = verdict(NOW + settings.establish + timedelta(seconds=1), v.memory)
    assert "no verdict yet" in v.election.unfit["ea-1"] and v.memory.holds["ea-1"].clean_since is None
    assert v.next_check is not None and v.next_check <= NOW + settings.establish * UNDERLAY_VERDICT_WINDOWS
    # The window ends with no answer (others' probes of those addresses answer): still held, now with evidence.
    underlay(w, "ea-1", "down", answered=False, since=NOW + settings.establish)
    v = verdict(NOW + settings.establish + timedelta(seconds=5), v.memory)
    assert "reaches 0 of 3 peers over its uplink" in v.election.unfit["ea-1"]


def test_underlay_probes_that_nobody_ever_got_an_answer_from_are_no_evidence() -> None:
    """The peers' addresses drop ICMP (a cloud security group): every standby's underlay targets are `down` without
    an RTT. That says nothing about the standby: when ea-1's node dies, ea-2 takes over as before. Had another
    node's probe of those addresses been answered, ea-2's silence would be evidence against it."""
    w = world()
    underlay(w, "ea-2", "down", answered=False)
    underlay(w, "eb-2", "down", answered=False)
    w.set_ready("ea-1", False)
    node_dies(w, "gw-ea")
    v = w.assess("gw-ea")
    assert "ea-2" not in v.election.unfit, v.election.unfit
    assert w.elect("gw-ea", v) == ["ea-2"]
    w = world()
    underlay(w, "ea-2", "down", answered=False)
    underlay(w, "eb-2", "up")  # answered from gw-cloud's and gw-ep's addresses (eb-2 does not probe its own)
    w.set_ready("ea-1", False)
    node_dies(w, "gw-ea")
    v = w.assess("gw-ea")
    assert "reaches 0 of 2 peers over its uplink" in v.election.unfit["ea-2"]
    assert w.elect("gw-ea", v) == []


def test_evidence_first_a_hole_is_filled_by_the_standby_that_reaches_the_peers() -> None:
    """Three candidates: ea-2 (first in spec order) has no underlay evidence, ea-3 reaches the peers over its
    uplink. When ea-1's node dies, ea-3 is elected, not ea-2."""
    w = world()
    gw = w.gateways["gw-ea"]
    eps = [*gw.spec.endpoints, Endpoint("ea-3", "tunnel", 4500, False)]
    w.gateways["gw-ea"] = replace(gw, spec=replace(gw.spec, endpoints=eps))
    w.set_ready("ea-1", False)
    node_dies(w, "gw-ea")
    underlay(w, "ea-3", "up")
    v = w.assess("gw-ea")
    assert v.election.prefer == {"ea-3": 3}
    assert w.elect("gw-ea", v) == ["ea-3"]
    # Both with evidence: the one that reaches more peers; equals keep spec order.
    underlay(w, "ea-2", "up")
    w.gateways["gw-ea"] = replace(w.gateways["gw-ea"], status=gw.status)
    assert w.elect("gw-ea", w.assess("gw-ea")) == ["ea-2"]
    underlay(w, "ea-2", "down", only={"gw-cloud"})
    w.gateways["gw-ea"] = replace(w.gateways["gw-ea"], status=gw.status)
    assert w.elect("gw-ea", w.assess("gw-ea")) == ["ea-3"]
