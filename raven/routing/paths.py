"""Each gateway's best path to every other pool, from the shared graph (`raven.routing.graph`).

Paths have at most two hops, and a relay only ever forwards on a direct link: traffic a gateway receives from a
tunnel is looked up in its transit table, which holds only its direct routes (the plan's return table,
`raven.agent.plan`), so no choice any gateway makes, from any version of the measurements, can send a packet
through a second relay. With that rule the best path to `dst` is

    min(cost(me, dst), min over relays r of cost(me, r) + cost(r, dst))

the direct link winning a tie (one hop fewer), then the relay first in the graph's order (today's relay ranking,
then names): every gateway that sees the same graph makes the same choice, and one that sees an older one still
cannot loop.

Computed by branch and bound (costs are never negative): the relays are taken in order of their first leg
(`cost(me, r)`) and the search for a destination stops at the first relay whose first leg alone costs more than
the best path found so far; no later relay can beat or tie it. The few relays nearest to this gateway are the
ones every destination tries first, so their legs are read once, transposed (one tuple per destination), and
summed with one C-level `map` per destination; the rest is a plain loop that usually stops after a few relays.
"""

from __future__ import annotations

from bisect import bisect_left
from operator import add
from typing import Final

from raven.routing.graph import INF, Graph

# Relays tried first for every destination, from a transposed copy of their rows (sequential reads instead of
# one scattered read per relay and destination). 32: on a full mesh of 1,000 gateways with random RTTs the
# search stops after ~50 relays on average; larger heads cost more to transpose than they save.
HEAD_RELAYS: Final = 32


def best_paths(g: Graph, me: str) -> dict[str, tuple[str, float]]:
    """For every other gateway: (next hop, cost); the next hop is the destination itself for the direct link.
    Cost INF: no path (no usable link, no relay). The unit tests hold it to the module docstring's formula, summed
    over every relay (`tests/unit/test_routing.py`, `reference_best_paths`), on random graphs."""
    i = g.index.get(me)
    if i is None:
        return {}
    row = g.cost[i]
    names = g.names
    cost = g.cost
    n = len(names)
    # Candidate relays: those with a first leg, cheapest first (ties in the graph's order: `sorted` is stable).
    # row[i] is INF, so this gateway is never its own relay; a destination as its own relay costs cost[j][j], INF.
    order = sorted(range(n), key=row.__getitem__)
    legs = [row[k] for k in order]
    usable = bisect_left(legs, INF)
    h = min(HEAD_RELAYS, usable)
    head = order[:h]
    head_legs = legs[:h]
    # cost[k][j] == cost[j][k]: column j of the head's rows is destination j's second legs through the head.
    second_legs: list[tuple[float, ...]] = list(zip(*(cost[k] for k in head), strict=True)) if h else []
    rest = list(zip(legs[h:usable], order[h:usable], strict=True))
    after_head = legs[h] if h < usable else INF
    out: dict[str, tuple[str, float]] = {}
    for j, dst in enumerate(names):
        if j == i:
            continue
        best = direct = row[j]
        hop = j
        if h and head_legs[0] < direct:
            via = list(map(add, head_legs, second_legs[j]))
            m = min(via)
            if m < direct:
                best = m
                # A tie between relays: the one first in the graph's order, as from the other end.
                hop = head[via.index(m)] if via.count(m) == 1 else min(
                    r for r, c in zip(head, via, strict=True) if c == m)
        if after_head <= best:
            to_dst = cost[j]
            for first, k in rest:
                if first > best:
                    break
                c = first + to_dst[k]
                # A tie: the direct link stays; between relays, the one first in the graph's order.
                if c <= best and (c < best or (hop != j and k < hop)):
                    best = c
                    hop = k
        out[dst] = (names[hop], best)
    return out

