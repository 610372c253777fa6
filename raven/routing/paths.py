"""Each gateway's best path to every other pool, from the shared graph (`raven.routing.graph`).

Paths have at most two hops, and a relay only ever forwards on a direct link: traffic a gateway receives from a
tunnel is looked up in its transit table, which holds only its direct routes (the plan's return table,
`raven.agent.plan`), so no choice any gateway makes, from any version of the measurements, can send a packet
through a second relay. With that rule the best path to `dst` is

    min(cost(me, dst), min over relays r of cost(me, r) + cost(r, dst))

the direct link winning a tie (one hop fewer), then the relay first in the graph's order (today's relay ranking,
then names): every gateway that sees the same graph makes the same choice, and one that sees an older one still
cannot loop. Per destination this is one `map` over a row and one `min`: no Python loop over relays.
"""

from __future__ import annotations

from bisect import bisect_left
from operator import add

from raven.routing.graph import INF, Graph


def best_paths(g: Graph, me: str) -> dict[str, tuple[str, float]]:
    """For every other gateway: (next hop, cost); the next hop is the destination itself for the direct link.
    Cost INF: no path (no usable link, no relay).

    Costs are positive, so a relay whose first leg alone costs as much as the direct link cannot beat it: the
    relays are taken in order of their first leg and only the prefix cheaper than the direct link is summed.
    """
    i = g.index.get(me)
    if i is None:
        return {}
    row = g.cost[i]
    names = g.names
    cost = g.cost
    n = len(names)
    # row[i] is INF (sorted last), so this gateway is never its own relay; the destination's own row entry is the
    # direct cost, which bisect_left leaves out of the prefix (or, with no direct link, cost[j][j] is INF).
    order = sorted(range(n), key=row.__getitem__)
    first_legs = [row[k] for k in order]
    out: dict[str, tuple[str, float]] = {}
    for j, dst in enumerate(names):
        if j == i:
            continue
        direct = row[j]
        bound = bisect_left(first_legs, direct) if direct < INF else n
        if bound == 0:
            out[dst] = (dst, direct)
            continue
        relays = order[:bound]
        via = list(map(add, first_legs[:bound], map(cost[j].__getitem__, relays)))
        m = min(via)
        if direct <= m:
            out[dst] = (dst, direct)
        elif via.count(m) == 1:
            out[dst] = (names[relays[via.index(m)]], m)
        else:  # a tie: the relay first in the graph's order, as from the other end
            out[dst] = (names[min(r for r, c in zip(relays, via, strict=True) if c == m)], m)
    return out

