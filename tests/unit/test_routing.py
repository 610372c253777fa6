"""Routing by measured cost (raven.routing): link costs, best paths, hysteresis, relay spread."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from raven.routing import paths
from raven.routing.graph import HOP_COST_MS, INF, UNMEASURED_RTT_MS, Graph, Measurement, build_graph, link_cost, pair
from raven.routing.paths import best_paths
from raven.routing.selector import Chosen, Hysteresis, expected_relays, select

RULE = Hysteresis(hold_seconds=10.0, min_gain_ratio=0.2, min_gain_ms=5.0)


def up(ms: float, loss: float = 0.0) -> Measurement:
    return Measurement("up", ms / 1000.0, loss)


def mesh(names: list[str], meas: Mapping[tuple[str, str], Measurement] | None = None,
         direct: list[tuple[str, str]] | None = None, **kw: object) -> Graph:
    pairs = direct if direct is not None else [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return build_graph(names, pairs, {pair(*k): v for k, v in (meas or {}).items()}, **kw)  # type: ignore[arg-type]


def test_link_cost_adds_rtt_loss_hop_and_weights() -> None:
    assert link_cost(up(10)) == 10 + HOP_COST_MS
    assert link_cost(up(10, 0.1)) == 10 + 100 + HOP_COST_MS
    assert link_cost(up(10), 3.0, 2.0) == 10 + HOP_COST_MS + 5
    assert link_cost(None) == UNMEASURED_RTT_MS + HOP_COST_MS
    assert link_cost(Measurement("unknown", 0.001)) == UNMEASURED_RTT_MS + HOP_COST_MS
    assert link_cost(Measurement("down", 0.001)) == INF
    assert link_cost(Measurement("degraded", 0.2, 0.3)) == 200 + 300 + HOP_COST_MS


def test_without_measurements_every_pair_goes_direct() -> None:
    g = mesh(["a", "b", "c"])
    assert best_paths(g, "a") == {"b": ("b", UNMEASURED_RTT_MS + HOP_COST_MS), "c": ("c", UNMEASURED_RTT_MS + 1)}


def test_slow_direct_link_detours_through_the_fast_relay() -> None:
    g = mesh(["a", "b", "c"], {("a", "b"): up(85), ("a", "c"): up(2), ("b", "c"): up(3)})
    assert best_paths(g, "a")["b"] == ("c", 2 + 3 + 2 * HOP_COST_MS)
    assert best_paths(g, "b")["a"] == ("c", 7.0)  # symmetric: the far end chooses the same path back


def test_down_tunnel_is_no_link_and_nat_pair_has_none_unless_punched() -> None:
    g = mesh(["a", "b", "c"], {("a", "b"): Measurement("down")})
    assert best_paths(g, "a")["b"][0] == "c"
    nat = mesh(["r", "x", "y"], direct=[("r", "x"), ("r", "y")])  # x, y both under NAT
    assert best_paths(nat, "x")["y"][0] == "r"
    punched = build_graph(["r", "x", "y"], [("r", "x"), ("r", "y")], {}, extra_direct=[("x", "y")])
    assert best_paths(punched, "x")["y"][0] == "y"


def test_operator_weight_steers_away_from_a_gateway() -> None:
    meas = {("a", "b"): up(30), ("a", "c"): up(4), ("b", "c"): up(4)}
    assert best_paths(mesh(["a", "b", "c"], meas), "a")["b"][0] == "c"
    # A weight adds to every link of that Gateway: c as a relay now costs two weights, the direct link none.
    assert best_paths(mesh(["a", "b", "c"], meas, weights={"c": 20.0}), "a")["b"][0] == "b"


def test_ties_break_by_graph_order() -> None:
    # Two equal relays: the one first in the graph's order (the relay ranking) wins, at every gateway.
    g = build_graph(["r2", "r1", "x", "y"], [("r1", "x"), ("r1", "y"), ("r2", "x"), ("r2", "y")], {})
    assert best_paths(g, "x")["y"][0] == "r2"
    assert best_paths(g, "y")["x"][0] == "r2"


def reference_best_paths(g: Graph, me: str) -> dict[str, tuple[str, float]]:
    """The definition (`raven.routing.paths`' docstring), every relay summed: min(direct, min over relays r of
    cost(me, r) + cost(r, dst)), the direct link winning a tie, then the relay first in the graph's order."""
    if me not in g.index:
        return {}
    i = g.index[me]
    out: dict[str, tuple[str, float]] = {}
    for j, dst in enumerate(g.names):
        if j == i:
            continue
        hop, best = j, g.cost[i][j]
        for r in range(len(g.names)):
            if r not in (i, j) and g.cost[i][r] + g.cost[r][j] < best:  # strict: the earlier one keeps a tie
                hop, best = r, g.cost[i][r] + g.cost[r][j]
        out[dst] = (g.names[hop], best)
    return out


def random_measured_graph(rnd: random.Random, n: int) -> Graph:
    """build_graph from random reports: links missing (NAT pairs), down, unmeasured, lossy, weighted; RTTs on a
    coarse grid so that equal costs (ties) are common."""
    names = [f"g{k}" for k in rnd.sample(range(1000), n)]
    direct = [(a, b) for x, a in enumerate(names) for b in names[x + 1:] if rnd.random() < 0.8]
    meas: dict[tuple[str, str], Measurement] = {}
    for a, b in direct:
        kind = rnd.random()
        if kind < 0.1:
            meas[pair(a, b)] = Measurement("down")
        elif kind < 0.2:
            meas[pair(a, b)] = Measurement("unknown", 0.001)
        elif kind < 0.9:
            meas[pair(a, b)] = up(rnd.choice((1, 2, 3, 5, 8, 13, 50)), rnd.choice((0.0, 0.0, 0.0, 0.01, 1.0)))
    weights = {a: float(rnd.choice((0, 0, 1, 3))) for a in names if rnd.random() < 0.3}
    punched = [(a, b) for x, a in enumerate(names) for b in names[x + 1:] if rnd.random() < 0.05]
    return build_graph(names, direct, meas, weights, punched)


def random_matrix_graph(rnd: random.Random, n: int) -> Graph:
    """Any symmetric non-negative matrix (zero costs included: a relay whose first leg equals the best cost can
    still tie it), INF for no link, on a diagonal of INF."""
    names = [f"m{k}" for k in range(n)]
    rows = tuple([INF] * n for _ in range(n))
    for a in range(n):
        for b in range(a + 1, n):
            rows[a][b] = rows[b][a] = rnd.choice((INF, 0.0, 1.0, 1.0, 2.0, 3.0, 4.5, rnd.uniform(0, 10)))
    return Graph(tuple(names), rows, {x: k for k, x in enumerate(names)})


@pytest.mark.parametrize("head", [paths.HEAD_RELAYS, 0, 1, 3])
def test_best_paths_equal_the_definition_on_random_graphs(monkeypatch: pytest.MonkeyPatch, head: int) -> None:
    """The branch and bound (relays by first leg, a transposed head) returns exactly what summing every relay
    returns, ties included, from every gateway of many random graphs; small heads exercise the loop after it."""
    monkeypatch.setattr(paths, "HEAD_RELAYS", head)
    rnd = random.Random(14 + head)
    checked = relayed = ties = 0
    for trial in range(160):
        n = rnd.choice((1, 2, 3, 4, 6, 9, 17, 40, 70))
        g = random_measured_graph(rnd, n) if trial % 2 else random_matrix_graph(rnd, n)
        for me in g.names:
            want = reference_best_paths(g, me)
            assert best_paths(g, me) == want, (trial, me)
            checked += len(want)
            relayed += sum(1 for d, (h, _) in want.items() if h != d)
            i = g.index[me]
            ties += sum(1 for d, (h, c) in want.items() if c < INF and sum(
                1 for r in range(n) if r != i and g.cost[i][r] + g.cost[r][g.index[d]] == c) > 1)
    assert checked > 10_000 and relayed > 1000 and ties > 300  # the cases that matter did occur
    assert best_paths(g, "nobody") == {} == reference_best_paths(g, "nobody")


def test_three_reachable_gateways_spread_nat_pairs_to_the_nearest() -> None:
    relays = ["r1", "r2", "r3"]
    edges = ["e1", "e2", "e3", "e4", "e5", "e6"]  # all under NAT: no direct link between two of them
    region = {"e1": "r1", "e2": "r1", "e3": "r2", "e4": "r2", "e5": "r3", "e6": "r3"}
    meas: dict[tuple[str, str], Measurement] = {}
    for e in edges:
        for r in relays:
            meas[pair(e, r)] = up(10 if region[e] == r else 40)
    for i, a in enumerate(relays):
        for b in relays[i + 1:]:
            meas[pair(a, b)] = up(30)
    direct = [(e, r) for e in edges for r in relays] + [(a, b) for i, a in enumerate(relays) for b in relays[i + 1:]]
    g = build_graph([*relays, *edges], direct, meas)
    edge_pairs = [(a, b) for i, a in enumerate(edges) for b in edges[i + 1:]]
    chosen = {(a, b): best_paths(g, a)[b][0] for a, b in edge_pairs}
    for a, b in edge_pairs:
        if region[a] == region[b]:
            assert chosen[(a, b)] == region[a], (a, b)  # the nearest relay, not one global one
    assert set(chosen.values()) == {"r1", "r2", "r3"}
    assert all(best_paths(g, b)[a][0] == chosen[(a, b)] for a, b in edge_pairs)  # both ends agree

    # A new reachable gateway r4: 1 ms from e5 and e6, 9 ms from e1 and e2, far from e3 and e4. Only the pairs for
    # which it is clearly better move (e1-e2 would gain 2 ms of 22: stays on r1).
    far = {"e1": 9.0, "e2": 9.0, "e3": 60.0, "e4": 60.0, "e5": 1.0, "e6": 1.0}
    meas4 = {**meas, **{pair(e, "r4"): up(far[e]) for e in edges}, **{pair(r, "r4"): up(30) for r in relays}}
    g4 = build_graph([*relays, "r4", *edges], [*direct, *((e, "r4") for e in edges), *((r, "r4") for r in relays)],
                     meas4)
    moved = {}
    for a, b in edge_pairs:
        best = {b: best_paths(g4, a)[b]}
        state, _ = select({b: Chosen(chosen[(a, b)], 0.0, 0.0)}, best, g4, a, 1.0, RULE)
        state, changes = select(state, best, g4, a, 11.0, RULE)
        if changes:
            moved[(a, b)] = state[b].next_hop
    assert moved == {("e5", "e6"): "r4", ("e1", "e5"): "r4", ("e1", "e6"): "r4", ("e2", "e5"): "r4",
                     ("e2", "e6"): "r4"}


def test_hysteresis_moves_only_for_a_clear_sustained_gain() -> None:
    names = ["a", "b", "c"]
    slow = mesh(names, {("a", "b"): up(90), ("a", "c"): up(2), ("b", "c"): up(2)})
    fast = mesh(names, {("a", "b"): up(2), ("a", "c"): up(2), ("b", "c"): up(2)})
    state, ch = select({}, {"b": best_paths(fast, "a")["b"]}, fast, "a", 0.0, RULE)
    assert state["b"].next_hop == "b" and [c.reason for c in ch] == ["new"]
    state, ch = select(state, {"b": best_paths(slow, "a")["b"]}, slow, "a", 1.0, RULE)
    assert state["b"].next_hop == "b" and not ch and state["b"].better_since == 1.0
    state, ch = select(state, {"b": best_paths(slow, "a")["b"]}, slow, "a", 10.9, RULE)
    assert state["b"].next_hop == "b" and not ch
    state, ch = select(state, {"b": best_paths(slow, "a")["b"]}, slow, "a", 11.0, RULE)
    assert state["b"].next_hop == "c" and [c.reason for c in ch] == ["better"]
    # Back to fast: the direct link must be clearly better for 10 s again.
    state, ch = select(state, {"b": best_paths(fast, "a")["b"]}, fast, "a", 12.0, RULE)
    assert state["b"].next_hop == "c" and not ch
    # ... and it does come back, although two fast links are not 5 ms slower than one: towards fewer hops a path
    # only has to be the best one for the hold time.
    state, ch = select(state, {"b": best_paths(fast, "a")["b"]}, fast, "a", 21.9, RULE)
    assert state["b"].next_hop == "c" and not ch
    state, ch = select(state, {"b": best_paths(fast, "a")["b"]}, fast, "a", 22.0, RULE)
    assert state["b"].next_hop == "b" and [c.reason for c in ch] == ["better"]


def test_a_detour_returns_when_it_is_no_longer_clearly_better_though_the_direct_link_reads_slower() -> None:
    """After a delay the direct link's published RTT can stay a few ms above what it measures now (an RTT is
    republished only when it moved by --health-rtt-change-min): the detour is still the cheapest path on paper
    but no longer clearly better, and the pool goes back to the direct link after the hold (e2e test_10_routing
    (a) waited for the next heartbeat, up to a minute, without this)."""
    names = ["a", "b", "c"]
    stale = mesh(names, {("a", "b"): up(6), ("a", "c"): up(1), ("b", "c"): up(1)})  # direct 7, via c 4
    assert best_paths(stale, "a")["b"][0] == "c"
    state = {"b": Chosen("c", 4.0, 0.0)}
    state, ch = select(state, {"b": best_paths(stale, "a")["b"]}, stale, "a", 1.0, RULE)
    assert state["b"].next_hop == "c" and not ch and state["b"].better_since == 1.0
    state, ch = select(state, {"b": best_paths(stale, "a")["b"]}, stale, "a", 11.0, RULE)
    assert state["b"].next_hop == "b" and [(c.new, c.reason) for c in ch] == [("b", "better")]
    # A detour still clearly better (direct 20, via c 4) stays, however long.
    slow = mesh(names, {("a", "b"): up(20), ("a", "c"): up(1), ("b", "c"): up(1)})
    state = {"b": Chosen("c", 4.0, 0.0)}
    for t in (1.0, 11.0, 30.0):
        state, ch = select(state, {"b": best_paths(slow, "a")["b"]}, slow, "a", t, RULE)
        assert state["b"].next_hop == "c" and not ch and state["b"].better_since is None


def test_flapping_delay_restarts_the_wait() -> None:
    names = ["a", "b", "c"]
    slow = mesh(names, {("a", "b"): up(90), ("a", "c"): up(2), ("b", "c"): up(2)})
    fast = mesh(names, {("a", "b"): up(2), ("a", "c"): up(2), ("b", "c"): up(2)})
    state = {"b": Chosen("b", 3.0, 0.0)}
    moves = 0
    for step in range(30):  # on/off every 2 s for a minute
        g = slow if (step // 2) % 2 == 0 else fast
        state, ch = select(state, {"b": best_paths(g, "a")["b"]}, g, "a", float(step * 2), RULE)
        moves += len(ch)
    assert moves == 0


def test_small_gain_does_not_move() -> None:
    names = ["a", "b", "c"]
    g = mesh(names, {("a", "b"): up(10), ("a", "c"): up(2), ("b", "c"): up(2)})  # direct 11, via c 6: 5 ms, 45 %
    state = {"b": Chosen("b", 11.0, 0.0)}
    state, _ = select(state, {"b": best_paths(g, "a")["b"]}, g, "a", 0.0, RULE)
    state, ch = select(state, {"b": best_paths(g, "a")["b"]}, g, "a", 20.0, RULE)
    assert [c.new for c in ch] == ["c"]
    g2 = mesh(names, {("a", "b"): up(9), ("a", "c"): up(2), ("b", "c"): up(2)})  # gain 4 ms: not clear
    state2 = {"b": Chosen("b", 10.0, 0.0)}
    state2, _ = select(state2, {"b": best_paths(g2, "a")["b"]}, g2, "a", 0.0, RULE)
    state2, ch2 = select(state2, {"b": best_paths(g2, "a")["b"]}, g2, "a", 20.0, RULE)
    assert not ch2 and state2["b"].next_hop == "b"


def test_unusable_path_moves_at_once_and_no_path_is_dropped() -> None:
    names = ["a", "b", "c"]
    g = mesh(names, {("a", "b"): Measurement("down")})
    state, ch = select({"b": Chosen("b", 3.0, 0.0)}, {"b": best_paths(g, "a")["b"]}, g, "a", 1.0, RULE)
    assert state["b"].next_hop == "c" and [c.reason for c in ch] == ["unusable"]
    none = mesh(names, {("a", "b"): Measurement("down"), ("a", "c"): Measurement("down")})
    state, ch = select(state, {"b": best_paths(none, "a")["b"]}, none, "a", 2.0, RULE)
    assert state == {} and [c.reason for c in ch] == ["unreachable"]


def test_expected_relays_only_on_the_path_or_a_pending_move() -> None:
    """A healthy LAN-like mesh (every relay within a few ms of the direct link) opens no relay: the far end uses
    the direct link as we do. Only the relay of our path, or of a clearly better path waiting out its hold, is
    expected (the far end applies the same rule to the same graph)."""
    names = ["a", "b", "c", "d"]
    lan = mesh(names, {("a", "b"): up(1.0), ("a", "c"): up(0.4), ("b", "c"): up(0.5), ("a", "d"): up(0.6),
                       ("b", "d"): up(0.3), ("c", "d"): up(0.5)})
    state, _ = select({}, best_paths(lan, "a"), lan, "a", 0.0, RULE)
    assert expected_relays(state["b"], best_paths(lan, "a")["b"], "b") == ()
    detour = mesh(names, {("a", "b"): up(90), ("a", "c"): up(2), ("b", "c"): up(2), ("a", "d"): up(30),
                          ("b", "d"): up(30), ("c", "d"): up(30)})
    best = best_paths(detour, "a")
    state, _ = select(state, best, detour, "a", 1.0, RULE)
    assert state["b"].next_hop == "b" and state["b"].better_since == 1.0
    assert expected_relays(state["b"], best["b"], "b") == ("c",)  # the far end may move first
    state, _ = select(state, best, detour, "a", 11.0, RULE)
    assert expected_relays(state["b"], best["b"], "b") == ("c",)  # on the detour
    assert expected_relays(Chosen("b", 3.0, 0.0), ("d", 2.0), "b") == ()  # a cheaper relay, not clearly better


def test_a_verified_punched_link_is_taken_without_the_hold() -> None:
    """NAT hole punching (#15): the direct link of a NAT'd pair the agent verified itself is the planned target, so
    the move from the relay waits no hold (reason "verified"); the cost rule still applies: a relay clearly better
    than the punched link stays."""
    names = ["a", "b", "c"]
    g = mesh(names, {("a", "b"): up(2), ("a", "c"): up(1), ("b", "c"): up(1)}, direct=[("a", "c"), ("b", "c")],
             extra_direct=[("a", "b")])  # direct 3, via c 4
    relayed = {"b": Chosen("c", 4.0, 0.0)}
    state, ch = select(relayed, {"b": best_paths(g, "a")["b"]}, g, "a", 1.0, RULE)
    assert state["b"].next_hop == "c" and not ch  # unverified: the ordinary hold
    state, ch = select(relayed, {"b": best_paths(g, "a")["b"]}, g, "a", 1.0, RULE, verified={"b"})
    assert state["b"].next_hop == "b" and [(c.new, c.reason) for c in ch] == [("b", "verified")]
    assert state["b"].since == 1.0 and state["b"].better_since is None
    slow = mesh(names, {("a", "b"): up(20), ("a", "c"): up(1), ("b", "c"): up(1)}, direct=[("a", "c"), ("b", "c")],
                extra_direct=[("a", "b")])
    state, ch = select(relayed, {"b": best_paths(slow, "a")["b"]}, slow, "a", 1.0, RULE, verified={"b"})
    assert state["b"].next_hop == "c" and not ch
    # A detour to another pool is no punched link's move: it keeps the hold although its pool is verified.
    far = mesh(names, {("a", "b"): up(90), ("a", "c"): up(1), ("b", "c"): up(1)})
    state, ch = select({"b": Chosen("b", 91.0, 0.0)}, {"b": best_paths(far, "a")["b"]}, far, "a", 1.0, RULE,
                       verified={"b"})
    assert state["b"].next_hop == "b" and not ch and state["b"].better_since == 1.0
