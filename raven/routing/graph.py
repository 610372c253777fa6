"""The published graph: one cost per usable direct link between two gateways.

Cost of a working tunnel (milliseconds, symmetric: both ends compute the same number from the same reports):

    cost(a, b) = rtt_ms + LOSS_COST_MS * loss + HOP_COST_MS + weight(a) + weight(b)

- `rtt_ms`: the tunnel's measured RTT (the mean of both ends' `peer` targets); unmeasured (a young tunnel, no
  fresh report) counts as `UNMEASURED_RTT_MS`, so with no measurements at all the direct link (one hop) beats
  every detour (two hops), and a detour over measured links is not abandoned for a direct link nobody measured.
- `loss`: the worst loss ratio either end reports; 10 % loss costs as much as 100 ms of RTT.
- `HOP_COST_MS`: a per-hop constant, so a detour must gain more than the relay's forwarding costs.
- `weight`: an operator's per-Gateway addition (annotation `raven-py.io/link-weight`, milliseconds, >= 0) to every
  link of that Gateway; a Gateway without it (an OpenYurt one) adds nothing.
A tunnel reported `down` by either end has no link (no cost); a pair that can never connect directly (both under
NAT) has no link unless the `extra_direct` input says a direct link exists (NAT hole punching).

The matrix is dense (lists of floats, `INF` for no link): the path computation (`raven.routing.paths`, a branch
and bound over the relays by first leg) reads rows and columns of it directly, 1,000 gateways in ~10-40 ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

INF: Final = math.inf
UNMEASURED_RTT_MS: Final = 50.0
LOSS_COST_MS: Final = 1000.0
HOP_COST_MS: Final = 1.0

LinkState = Literal["up", "degraded", "down", "unknown"]


@dataclass(frozen=True, slots=True)
class Measurement:
    """What the reports say about one tunnel (both ends combined)."""

    state: LinkState = "unknown"
    rtt_seconds: float | None = None
    loss_ratio: float | None = None


def link_cost(m: Measurement | None, weight_a: float = 0.0, weight_b: float = 0.0) -> float:
    """The cost of one direct link (module docstring); INF when the tunnel is down."""
    if m is not None and m.state == "down":
        return INF
    measured = m is not None and m.state != "unknown" and m.rtt_seconds is not None
    rtt_ms = m.rtt_seconds * 1000.0 if measured and m is not None and m.rtt_seconds is not None else UNMEASURED_RTT_MS
    loss = m.loss_ratio if m is not None and m.loss_ratio is not None and m.state != "unknown" else 0.0
    if loss >= 1.0:
        return INF
    return rtt_ms + LOSS_COST_MS * max(loss, 0.0) + HOP_COST_MS + max(weight_a, 0.0) + max(weight_b, 0.0)


def pair(a: str, b: str) -> tuple[str, str]:
    """The one key of an unordered pair."""
    return (a, b) if a < b else (b, a)


@dataclass(frozen=True)
class Graph:
    """Gateways in tie-break order (`names`: the relay ranking first, then the others) and the symmetric cost
    matrix `cost[i][j]` (INF: no usable direct link; the diagonal is INF)."""

    names: tuple[str, ...]
    cost: tuple[list[float], ...]
    index: Mapping[str, int] = field(default_factory=dict)

    def link(self, a: str, b: str) -> float:
        i, j = self.index.get(a), self.index.get(b)
        return INF if i is None or j is None else self.cost[i][j]

    def via(self, src: str, dst: str, relay: str) -> float:
        """Cost of src -> relay -> dst (INF when a leg has no link)."""
        return self.link(src, relay) + self.link(relay, dst) if relay not in (src, dst) else INF

    def path_cost(self, src: str, dst: str, next_hop: str) -> float:
        """Cost of the path src takes to dst through `next_hop` (dst itself: direct)."""
        return self.link(src, dst) if next_hop == dst else self.via(src, dst, next_hop)


def build_graph(
    names: Sequence[str],
    direct: Iterable[tuple[str, str]],
    measurements: Mapping[tuple[str, str], Measurement],
    weights: Mapping[str, float] | None = None,
    extra_direct: Iterable[tuple[str, str]] = (),
) -> Graph:
    """The graph over `names` (in tie-break order). `direct`: the pairs that may connect directly (at least one
    end reachable); `extra_direct`: pairs that have a direct link anyway (NAT hole punching). `measurements` is
    keyed by `pair(a, b)`; `weights` by gateway name (milliseconds)."""
    index = {n: i for i, n in enumerate(names)}
    n = len(names)
    rows = tuple([INF] * n for _ in range(n))
    w = weights or {}
    for a, b in (*direct, *extra_direct):
        i, j = index.get(a), index.get(b)
        if i is None or j is None or i == j:
            continue
        c = link_cost(measurements.get(pair(a, b)), w.get(a, 0.0), w.get(b, 0.0))
        rows[i][j] = rows[j][i] = c
    return Graph(tuple(names), rows, index)
