"""Hysteresis: which path a gateway uses now, given the best one and what it used before (pure, explicit state).

The rule (`Hysteresis`):
- a pool seen for the first time takes the best path;
- the current path becomes unusable (a link of it is down, its relay is gone): the best path at once;
- otherwise the path moves only when the best path is *clearly* better (cheaper by at least `min_gain_ratio` of
  the current cost and by at least `min_gain_ms`) and has stayed clearly better for `hold_seconds`; any moment
  in between at which no path is clearly better restarts the wait. The move goes to the best path of that moment;
- one exception, towards fewer hops: a detour is kept only while it stays clearly better than the (usable) direct
  link; once it has not been for `hold_seconds`, the pool returns to the direct link, clear gain or not. A detour
  costs a relay's capacity and adds a point of failure, so it is kept only while it pays; without this a detour
  taken around a delay would never come back once the delay is gone (two fast links are rarely 5 ms slower than
  one). "Not clearly better" rather than "cheaper" also absorbs the resolution of the reports (an RTT is
  republished only when it moved by `--health-rtt-change-min`): a direct link reported a few ms above what it
  measures now must not keep a detour until the next heartbeat.
So a delay that flaps faster than the hold time moves nothing, and noise of a few milliseconds moves nothing.

One exception to the wait (`verified`, reason "verified"): a move *to the direct link* of a pool whose direct link
the agent itself verified (a punched NAT-to-NAT tunnel, #15: SA or handshake up and a probe answering through
it) is made at once, under the same cost conditions. That link is the move NAT traversal planned, not a
fluctuation of a measurement: waiting out the hold would only keep a relay's capacity in use. The caller
(`raven.agent.routes.Router`) leaves out a link lost within the hold time, so a flapping punched link gets the
ordinary hysteresis.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from raven.routing.graph import INF, Graph

Reason = Literal["new", "unusable", "better", "verified", "unreachable"]
REASONS: Final[tuple[Reason, ...]] = ("new", "unusable", "better", "verified", "unreachable")


@dataclass(frozen=True, slots=True)
class Hysteresis:
    hold_seconds: float = 10.0
    min_gain_ratio: float = 0.2
    min_gain_ms: float = 5.0

    def clearly_better(self, candidate: float, current: float) -> bool:
        if candidate >= INF:
            return False
        if current >= INF:
            return True
        gain = current - candidate
        return gain >= self.min_gain_ms and gain >= self.min_gain_ratio * current


@dataclass(frozen=True, slots=True)
class Chosen:
    """The path in use to one pool: its next hop (the pool's own gateway: direct), its cost now, since when it is
    used, and since when a clearly better path has existed (None: none now)."""

    next_hop: str
    cost: float
    since: float
    better_since: float | None = None


@dataclass(frozen=True, slots=True)
class Change:
    dst: str
    old: str | None  # next hop before (None: none)
    new: str | None  # next hop now (None: no path)
    reason: Reason
    old_cost: float | None
    new_cost: float | None


def select(
    current: Mapping[str, Chosen],
    best: Mapping[str, tuple[str, float]],
    graph: Graph,
    me: str,
    now: float,
    rule: Hysteresis,
    verified: Collection[str] = (),
) -> tuple[dict[str, Chosen], list[Change]]:
    """The paths to use now and the changes from `current` (destinations missing from `best` are dropped).
    `verified`: destinations whose direct link the agent verified itself (punched): a move to it waits no hold."""
    out: dict[str, Chosen] = {}
    changes: list[Change] = []
    for dst in sorted(best):
        hop, cost = best[dst]
        cur = current.get(dst)
        if cost >= INF:
            if cur is not None:
                changes.append(Change(dst, cur.next_hop, None, "unreachable", cur.cost, None))
            continue
        if cur is None:
            out[dst] = Chosen(hop, cost, now)
            changes.append(Change(dst, None, hop, "new", None, cost))
            continue
        cur_cost = graph.path_cost(me, dst, cur.next_hop)
        if cur_cost >= INF:
            out[dst] = Chosen(hop, cost, now)
            changes.append(Change(dst, cur.next_hop, hop, "unusable", cur.cost, cost))
            continue
        target, target_cost = _target(dst, hop, cost, cur.next_hop, cur_cost, graph.path_cost(me, dst, dst), rule)
        if target is None:
            out[dst] = Chosen(cur.next_hop, cur_cost, cur.since)
            continue
        since = cur.better_since if cur.better_since is not None else now
        if target == dst and dst in verified:
            out[dst] = Chosen(target, target_cost, now)
            changes.append(Change(dst, cur.next_hop, target, "verified", cur_cost, target_cost))
        elif now - since >= rule.hold_seconds:
            out[dst] = Chosen(target, target_cost, now)
            changes.append(Change(dst, cur.next_hop, target, "better", cur_cost, target_cost))
        else:
            out[dst] = Chosen(cur.next_hop, cur_cost, cur.since, since)
    return out, changes


def _target(dst: str, best: str, best_cost: float, cur: str, cur_cost: float, direct_cost: float,
            rule: Hysteresis) -> tuple[str | None, float]:
    """Where the path to `dst` is heading (None: it stays): the best path when it is clearly better, else the
    direct link when the current detour is no longer clearly better than it."""
    if best != cur and rule.clearly_better(best_cost, cur_cost):
        return best, best_cost
    if cur != dst and direct_cost < INF and not rule.clearly_better(cur_cost, direct_cost):
        return dst, direct_cost
    return None, cur_cost


def expected_relays(cur: Chosen, best: tuple[str, float] | None, dst: str) -> tuple[str, ...]:
    """Relays the gateway of `dst` may be sending our way through, by the rule it applies to the same (symmetric)
    graph: the relay of our current path (the path it took too) and the relay of a clearly better path waiting
    out its hold (it may make the move a few seconds before us). Its ingress filter accepts `dst`'s subnets from
    them (`raven.agent.plan`); with the direct link in use and no move pending, none: noise between relays within
    a few milliseconds of each other opens nothing."""
    out: list[str] = []
    if cur.next_hop != dst:
        out.append(cur.next_hop)
    if cur.better_since is not None and best is not None and best[0] not in (dst, cur.next_hop):
        out.append(best[0])
    return tuple(out)
