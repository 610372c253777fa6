"""The routing decision as the pure plan's input (`raven.agent.plan.plan(routing=...)`).

Plain, hashable data, so the agent's plan cache can key on it and a make-before-break stage can sit between the
decision and the plan (hold a pool on its old next hop until the new path is verified): whatever it passes here
is what gets routed. The plan checks every entry against the topology and falls back to the default path
(`raven.agent.topology.Topology.path`) for anything it cannot use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RouteChoice:
    # (remote gateway, next gateway) sorted: the next gateway is the remote one itself for the direct link, else
    # the relay (which must have a direct link to both ends).
    next_hops: tuple[tuple[str, str], ...] = ()
    # (relay gateway, remote gateway) sorted: the relay may send us traffic from the remote pool's subnets (the
    # remote pool's own choice of path towards us may go through it), on top of what we route through it.
    relayed: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, next_hops: Mapping[str, str], relayed: Mapping[str, Iterable[str]] | None = None) -> RouteChoice:
        pairs = sorted((relay, dst) for dst, relays in (relayed or {}).items() for relay in relays)
        return cls(tuple(sorted(next_hops.items())), tuple(pairs))

    def next_hop_map(self) -> dict[str, str]:
        return dict(self.next_hops)

    def relayed_by(self) -> dict[str, set[str]]:
        """Relay -> the remote gateways whose subnets it may send."""
        out: dict[str, set[str]] = {}
        for relay, dst in self.relayed:
            out.setdefault(relay, set()).add(dst)
        return out
