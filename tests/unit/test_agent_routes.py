"""The agent's routing step (raven.agent.routes): from Gateways + PathReports to the plan's RouteChoice."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

from prometheus_client import CollectorRegistry

from raven.agent.app import RoutingLoop
from raven.agent.inputs import PlanInputs
from raven.agent.plan import PlanConfig, plan
from raven.agent.routes import Router, RouterSettings, RoutingMetrics, link_weights
from raven.api.pathreport import PathReport, PathReportStatus, RoutedPath, Target
from raven.kube.typed import TypedInformer
from raven.routing.selector import Hysteresis
from tests.unit.plan_cluster import cluster_json, nodes, parse

ACTIVE = {"gw-cloud": "cloud-1", "gw-edge-a": "edge-a-1", "gw-edge-b": "edge-b-1", "gw-dc": "dc-1"}
T0 = 1_800_000_000.0
SETTINGS = RouterSettings(Hysteresis(hold_seconds=10.0), timedelta(seconds=180))


def reports(rtt_ms: dict[tuple[str, str], float], now: float, down: frozenset[tuple[str, str]] = frozenset()
            ) -> list[PathReport]:
    """Each active gateway's report: a peer target per measured tunnel, as both ends publish it."""
    targets: dict[str, list[Target]] = {gw: [] for gw in ACTIVE}
    for (a, b), ms in rtt_ms.items():
        for me, peer in ((a, b), (b, a)):
            state = "down" if (a, b) in down else "up"
            targets[me].append(Target("peer", peer, ACTIVE[peer], f"241.0.0.{len(targets[me]) + 1}", state,
                                      datetime.fromtimestamp(now - 60, UTC), ms / 1000.0, 0.0))
    hb = datetime.fromtimestamp(now, UTC)
    return [PathReport(node, node, PathReportStatus(gw, "gateway", hb, 0.2, tuple(targets[gw])))
            for gw, node in ACTIVE.items()]


FAST = {("gw-cloud", "gw-edge-a"): 2.0, ("gw-cloud", "gw-edge-b"): 30.0, ("gw-cloud", "gw-dc"): 2.0,
        ("gw-dc", "gw-edge-a"): 3.0, ("gw-dc", "gw-edge-b"): 3.0}


def test_a_slow_direct_link_moves_to_the_relay_after_the_hold_and_back() -> None:
    gws = parse(cluster_json())
    reg = CollectorRegistry()
    router = Router(SETTINGS, RoutingMetrics(reg))
    router.update("gw-edge-a", gws, reports(FAST, T0), T0)
    choice = router.choice
    assert choice is not None and choice.next_hop_map()["gw-dc"] == "gw-dc"
    # NAT-NAT pair edge-a/edge-b: the nearer relay (dc: 3 + 3 against the cloud's 2 + 30), not the top-ranked one.
    assert choice.next_hop_map()["gw-edge-b"] == "gw-dc"
    slow = {**FAST, ("gw-dc", "gw-edge-a"): 90.0}
    assert not router.update("gw-edge-a", gws, reports(slow, T0 + 1), T0 + 1) and router.pending()
    changes = router.update("gw-edge-a", gws, reports(slow, T0 + 11), T0 + 11)
    assert [(c.dst, c.new, c.reason) for c in changes] == [("gw-dc", "gw-cloud", "better"),
                                                           ("gw-edge-b", "gw-cloud", "better")]
    assert router.choice is not None and router.choice.next_hop_map()["gw-dc"] == "gw-cloud"
    assert reg.get_sample_value("raven_path_changes_total", {"reason": "better"}) == 2
    assert reg.get_sample_value("raven_path_hops", {"gateway": "gw-dc"}) == 2
    assert reg.get_sample_value("raven_path_since_timestamp_seconds", {"gateway": "gw-dc"}) == T0 + 11
    assert reg.get_sample_value("raven_path_since_timestamp_seconds", {"gateway": "gw-cloud"}) == T0
    assert reg.get_sample_value("raven_path_cost", {"gateway": "gw-dc"}) == 2 + 2 + 2
    published = {p.gateway: p for p in router.paths()}
    assert published["gw-dc"].via == "gw-cloud" and published["gw-cloud"].via == ""
    # The plan routes dc's subnets through the cloud.
    cfg = PlanConfig()
    inner = {gw: next(link.local for link in plan(gws, nodes(), n, cfg).state.links if link.name == "raven1")
             for gw, n in ACTIVE.items()}
    state = plan(gws, nodes(), "edge-a-1", cfg, routing=router.choice).state
    assert {r.gateway for r in state.routes if r.table == 9027 and r.dst.startswith("10.247.")} == {inner["gw-cloud"]}
    # Delay removed: back after the hold.
    router.update("gw-edge-a", gws, reports(FAST, T0 + 12), T0 + 12)
    assert router.choice is not None and router.choice.next_hop_map()["gw-dc"] == "gw-cloud"
    router.update("gw-edge-a", gws, reports(FAST, T0 + 22), T0 + 22)
    assert router.choice is not None and router.choice.next_hop_map()["gw-dc"] == "gw-dc"


def test_the_far_end_accepts_the_detoured_pool_from_the_relay() -> None:
    gws = parse(cluster_json())
    slow = {**FAST, ("gw-dc", "gw-edge-a"): 90.0}
    router = Router(SETTINGS)
    router.update("gw-dc", gws, reports(slow, T0), T0)
    assert router.choice is not None and "gw-cloud" in router.choice.relayed_by()
    assert "gw-edge-a" in router.choice.relayed_by()["gw-cloud"]
    cfg = PlanConfig()
    cloud_inner = next(link.local for link in plan(gws, nodes(), "cloud-1", cfg).state.links if link.name == "raven1")
    f = plan(gws, nodes(), "dc-1", cfg, routing=router.choice).state.ingress
    assert f is not None
    assert "10.245.0.0/24" in next(p for p in f.tunnel if p.outer == cloud_inner).sources


def test_a_down_tunnel_moves_at_once() -> None:
    gws = parse(cluster_json())
    router = Router(SETTINGS)
    router.update("gw-edge-a", gws, reports(FAST, T0), T0)
    changes = router.update("gw-edge-a", gws, reports(FAST, T0 + 1, frozenset({("gw-dc", "gw-edge-a")})), T0 + 1)
    assert ("gw-dc", "gw-cloud", "unusable") in [(c.dst, c.new, c.reason) for c in changes]


def test_stale_reports_are_no_evidence() -> None:
    gws = parse(cluster_json())
    router = Router(SETTINGS)
    slow = {**FAST, ("gw-dc", "gw-edge-a"): 90.0}
    old = reports(slow, T0)
    router.update("gw-edge-a", gws, old, T0 + 1000)
    router.update("gw-edge-a", gws, old, T0 + 1020)
    assert router.choice is not None and router.choice.next_hop_map()["gw-dc"] == "gw-dc"


def test_weight_annotation_and_bad_values() -> None:
    objs = cluster_json()
    objs["gw-cloud"]["metadata"]["annotations"] = {"raven-py.io/link-weight": "25"}
    objs["gw-dc"]["metadata"]["annotations"] = {"raven-py.io/link-weight": "-3"}
    problems: list[str] = []
    assert link_weights(parse(objs), problems) == {"gw-cloud": 25.0}
    assert problems and "gw-dc" in problems[0]
    # The cloud as a relay now costs 2 x 25 more: the slow direct link stays.
    router = Router(SETTINGS)
    slow = {**FAST, ("gw-dc", "gw-edge-a"): 40.0}
    router.update("gw-edge-a", parse(objs), reports(slow, T0), T0)
    router.update("gw-edge-a", parse(objs), reports(slow, T0 + 11), T0 + 11)
    assert router.choice is not None and router.choice.next_hop_map()["gw-dc"] == "gw-dc"


def test_a_member_node_has_no_choice() -> None:
    router = Router(SETTINGS)
    assert router.update(None, parse(cluster_json()), [], T0) == [] and router.choice is None


def test_raven_status_shows_the_chosen_paths() -> None:
    from dataclasses import replace

    from raven.agent.graph import render_status
    from raven.agent.status import build_status, to_json

    gws = parse(cluster_json())
    slow = {**FAST, ("gw-dc", "gw-edge-a"): 90.0}
    router = Router(SETTINGS)
    router.update("gw-edge-a", gws, reports(slow, T0), T0)
    router.update("gw-edge-a", gws, reports(slow, T0 + 11), T0 + 11)
    published = [replace(r, status=replace(r.status, paths=router.paths())) if r.name == "edge-a-1" else r
                 for r in reports(slow, T0 + 11)]
    s = build_status(gws, nodes(), published, datetime.fromtimestamp(T0 + 12, UTC), cfg=PlanConfig(),
                     stale_after=timedelta(seconds=180))
    pools = {p["gateway"]: p for p in to_json(s)["pools"]}  # type: ignore[attr-defined]
    assert {"gateway": "gw-dc", "via": "gw-cloud", "cost": 6.0,
            "since": "2027-01-15T08:00:00Z"} in pools["gw-edge-a"]["routes"]
    text = render_status(s)
    assert "ROUTES" in text
    line = next(x.split() for x in text.splitlines() if x.split()[:3] == ["gw-edge-a", "gw-dc", "gw-cloud"])
    assert line[3] == "6.0"


def test_a_relay_moved_away_from_stays_accepted_for_the_hold_time() -> None:
    """The far end moves a few seconds later (its own hold): until then its traffic still comes through the old relay,
    which must not be dropped by our ingress filter although it is now clearly worse."""
    gws = parse(cluster_json())
    near_cloud = {**FAST, ("gw-cloud", "gw-edge-b"): 3.0, ("gw-dc", "gw-edge-a"): 40.0, ("gw-dc", "gw-edge-b"): 40.0}
    router = Router(SETTINGS)
    router.update("gw-edge-a", gws, reports(near_cloud, T0), T0)
    assert router.choice is not None and router.choice.next_hop_map()["gw-edge-b"] == "gw-cloud"
    near_dc = {**near_cloud, ("gw-cloud", "gw-edge-a"): 60.0, ("gw-cloud", "gw-edge-b"): 60.0,
               ("gw-dc", "gw-edge-a"): 3.0, ("gw-dc", "gw-edge-b"): 3.0}
    router.update("gw-edge-a", gws, reports(near_dc, T0 + 1), T0 + 1)
    router.update("gw-edge-a", gws, reports(near_dc, T0 + 11), T0 + 11)
    assert router.choice.next_hop_map()["gw-edge-b"] == "gw-dc"
    assert "gw-edge-b" in router.choice.relayed_by().get("gw-cloud", set())  # edge-b may still be on the cloud
    assert router.pending()
    router.update("gw-edge-a", gws, reports(near_dc, T0 + 21), T0 + 21)
    assert "gw-edge-b" not in router.choice.relayed_by().get("gw-cloud", set())


LAN = {("gw-cloud", "gw-edge-a"): 1.0, ("gw-cloud", "gw-edge-b"): 1.2, ("gw-cloud", "gw-dc"): 0.8,
       ("gw-dc", "gw-edge-a"): 1.1, ("gw-dc", "gw-edge-b"): 0.9}


def test_a_lan_like_mesh_opens_no_relay_for_a_direct_pool() -> None:
    """Every relay within a few ms of the direct link (a LAN, the e2e lab) is no reason to accept a pool's subnets
    from a relay: the far end uses the direct link as we do (ingress scenario D of e2e/tests/test_08_ingress.py)."""
    gws = parse(cluster_json())
    router = Router(SETTINGS)
    for t in (T0, T0 + 1, T0 + 15):
        router.update("gw-cloud", gws, reports(LAN, t), t)
        assert router.choice is not None and router.choice.relayed == ()
    # The NAT-NAT pair: only the relay of the path in use.
    router = Router(SETTINGS)
    router.update("gw-edge-a", gws, reports(LAN, T0), T0)
    assert router.choice is not None
    relay = router.choice.next_hop_map()["gw-edge-b"]
    assert router.choice.relayed_by() == {relay: {"gw-edge-b"}}


def test_the_relay_the_far_end_publishes_is_accepted() -> None:
    """The far end's history may differ (an agent restart took the best path of that moment): the relay its
    PathReport says it uses towards us is accepted as well."""
    gws = parse(cluster_json())
    router = Router(SETTINGS)
    router.update("gw-edge-a", gws, reports(LAN, T0), T0)
    assert router.choice is not None
    mine = router.choice.next_hop_map()["gw-edge-b"]
    other = "gw-dc" if mine == "gw-cloud" else "gw-cloud"
    rs = [replace(r, status=replace(r.status, paths=(RoutedPath("gw-edge-a", other, 2.5),)))
          if r.status.gateway == "gw-edge-b" else r for r in reports(LAN, T0 + 1)]
    router.update("gw-edge-a", gws, rs, T0 + 1)
    assert router.choice.next_hop_map()["gw-edge-b"] == mine
    assert router.choice.relayed_by() == {mine: {"gw-edge-b"}, other: {"gw-edge-b"}}


def test_rtt_jitter_writes_no_path_report_and_a_new_via_does() -> None:
    """A steady cluster must not write its PathReports because path costs jitter with the RTT (every write makes
    every gateway re-evaluate: e2e test_08_path_health's write bound); a new next hop is written at once."""
    gws = parse(cluster_json())
    inputs = SimpleNamespace(last=SimpleNamespace(role="gateway", gateway="gw-edge-a"), gateways=lambda: gws,
                             node_name="edge-a-1")
    current: list[PathReport] = reports(FAST, T0)
    informer = SimpleNamespace(values=lambda: current, get=lambda name: None)
    events: list[str] = []
    loop = RoutingLoop(Router(SETTINGS), cast(PlanInputs, inputs), cast("TypedInformer[PathReport]", informer),
                       lambda: events.append("choice"), on_paths=lambda: events.append("paths"))
    loop.step(T0)
    assert events == ["choice", "paths"]
    events.clear()
    costs = set()
    for i in range(1, 30):  # jitter: relays' costs crossing each other and the "clearly worse" bound
        current = reports({**FAST, ("gw-cloud", "gw-dc"): 2.0 + (i % 3) * 4.0,
                           ("gw-cloud", "gw-edge-a"): 2.0 + (i % 2) * 3.0}, T0 + i)
        loop.step(T0 + i)
        costs.add(tuple(p.cost for p in loop.router.paths()))
    assert events == [] and len(costs) > 1
    slow = {**FAST, ("gw-dc", "gw-edge-a"): 90.0}
    for t in (T0 + 31, T0 + 42):
        current = reports(slow, t)
        loop.step(t)
    assert events == ["choice", "choice", "paths"]  # the pending move (ingress opens), then the move itself


def test_a_restarted_router_adopts_the_paths_it_published_instead_of_choosing_afresh() -> None:
    """An agent restart adopts the data plane as it is: the router goes on from the paths its node last published
    (PathReport status.paths), through the hysteresis; choosing afresh would move pools a restart must not move."""
    gws = parse(cluster_json())
    slow_dc = {**FAST, ("gw-dc", "gw-edge-b"): 90.0}
    before = Router(SETTINGS)
    before.update("gw-edge-a", gws, reports(slow_dc, T0), T0)
    assert before.choice is not None and before.choice.next_hop_map()["gw-edge-b"] == "gw-cloud"
    # dc became the better relay, the hold has not run out: the running router keeps the cloud.
    before.update("gw-edge-a", gws, reports(FAST, T0 + 3), T0 + 3)
    assert before.choice is not None and before.choice.next_hop_map()["gw-edge-b"] == "gw-cloud"
    published = before.paths()
    fresh = Router(SETTINGS)
    fresh.update("gw-edge-a", gws, reports(FAST, T0 + 4), T0 + 4)
    assert fresh.choice is not None and fresh.choice.next_hop_map()["gw-edge-b"] == "gw-dc"  # what a restart did
    restarted = Router(SETTINGS)
    changes = restarted.update("gw-edge-a", gws, reports(FAST, T0 + 4), T0 + 4, adopt=published)
    assert changes == [] and restarted.choice == before.choice
    # ... and from there the hysteresis as before: the move after the hold.
    moved = restarted.update("gw-edge-a", gws, reports(FAST, T0 + 15), T0 + 15, adopt=published)
    assert [(c.dst, c.new, c.reason) for c in moved] == [("gw-edge-b", "gw-dc", "better")]


def test_a_verified_punched_link_is_taken_at_once_and_after_a_loss_only_after_the_hold() -> None:
    """NAT hole punching (#15): the NAT'd pair edge-a/edge-b is relayed (via dc) until the agent verifies its punched
    tunnel (`extra_direct`); then the pool moves to it at the next evaluation, not after --route-hold-time (the
    relay stays accepted for the hold, the far end may move a moment later). A punched link lost and verified
    again within the hold time gets the ordinary hold: a flapping link does not drag the pool back and forth."""
    gws = parse(cluster_json())
    reg = CollectorRegistry()
    router = Router(SETTINGS, RoutingMetrics(reg))
    router.update("gw-edge-a", gws, reports(FAST, T0), T0)
    assert router.choice is not None and router.choice.next_hop_map()["gw-edge-b"] == "gw-dc"
    pair_ab = ("gw-edge-a", "gw-edge-b")
    punched = {**FAST, pair_ab: 2.0}  # direct 3 against 8 via dc
    router.extra_direct = frozenset({pair_ab})
    changes = router.update("gw-edge-a", gws, reports(punched, T0 + 1), T0 + 1)
    assert [(c.dst, c.new, c.reason) for c in changes] == [("gw-edge-b", "gw-edge-b", "verified")]
    assert router.choice.next_hop_map()["gw-edge-b"] == "gw-edge-b"
    assert "gw-edge-b" in router.choice.relayed_by().get("gw-dc", set())
    assert reg.get_sample_value("raven_path_changes_total", {"reason": "verified"}) == 1
    # Its probe went down: the link leaves extra_direct, back to the relay at once.
    router.extra_direct = frozenset()
    changes = router.update("gw-edge-a", gws, reports(FAST, T0 + 2), T0 + 2)
    assert [(c.dst, c.new, c.reason) for c in changes] == [("gw-edge-b", "gw-dc", "unusable")]
    # Verified again a second later: the ordinary hold this time.
    router.extra_direct = frozenset({pair_ab})
    assert not router.update("gw-edge-a", gws, reports(punched, T0 + 3), T0 + 3) and router.pending()
    assert not router.update("gw-edge-a", gws, reports(punched, T0 + 11), T0 + 11)
    router.update("gw-edge-a", gws, reports(punched, T0 + 13), T0 + 13)
    assert router.choice.next_hop_map()["gw-edge-b"] == "gw-edge-b"
