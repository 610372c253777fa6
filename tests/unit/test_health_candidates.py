"""Standby evidence (raven/controller/health.py): a gateway candidate's own `underlay` probes (a peer gateway's
tunnel endpoint address, over its own uplink) decide whether it can do better than the active endpoint.

Scenario (c): only the active gateway's uplink is cut -> fail over to the candidate that reaches the peers.
Scenario (g): the pool's whole uplink is cut -> the candidates reach nobody either: nothing moves (not even one
trial failover), and the condition says why; also when the pool cannot write its reports any more."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from raven.api.pathreport import State, Target
from raven.controller.health import REASON_NO_BETTER, REASON_NOT_FORWARDING, REASON_REMOTE_DOWN, record_failover
from tests.unit.test_health_failover import (
    FOUR,
    NOW,
    SETTINGS,
    T0,
    TWO,
    World,
    blamed,
    nodes_of,
    peers_of_lose,
    uplink_cut,
    world,
)


def underlay(w: World, node: str, state: State, only: set[str] | None = None) -> None:
    """`node` (a standby of its pool) probes every other pool's active gateway over its uplink; `only`: those up."""
    r = w.reports[node]
    own = w.nodes[node].gateway
    targets = tuple(
        Target("underlay", h, w.active(h), f"198.18.{i}.11",
               state if only is None or h not in only else "up", T0 if state == "down" else T0 - timedelta(60))
        for i, h in enumerate(w.gateways) if h != own)
    w.reports[node] = replace(r, status=replace(r.status, targets=r.status.targets + targets))


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
