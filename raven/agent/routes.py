"""The agent's routing by measured cost: from the Gateways and the published PathReports to the plan's
`RouteChoice` (no I/O; the caller passes the clock).

`Router.update` builds the graph (`raven.routing.graph`) over the active gateways: a link for every pair the
topology lets connect directly (`Topology.path`, plus `extra_direct`, the pairs NAT hole punching connects), its
cost from the tunnel's health as `raven status` reads it (`raven.agent.status.tunnel_health`: fresh reports of
the current endpoints, both ends combined, so both ends compute the same cost) and the Gateways' weight
annotations; then the best paths from this node's gateway (`raven.routing.paths`) through the hysteresis
(`raven.routing.selector`). The result, `choice`, is what `plan(routing=...)` routes; `paths()` is what the
node's PathReport publishes. Every change is logged with its reason and counted
(`raven_path_changes_total{reason}`); `raven_path_cost{gateway}` / `raven_path_hops{gateway}` show the paths.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Gauge

from raven.agent.status import Health, health_and_routes
from raven.agent.topology import Topology, build_topology
from raven.api.constants import ANNOTATION_LINK_WEIGHT
from raven.api.gateway import Gateway
from raven.api.pathreport import PathReport, RoutedPath
from raven.log import kv
from raven.routing.choice import RouteChoice
from raven.routing.graph import INF, Graph, Measurement, build_graph, pair
from raven.routing.paths import best_paths
from raven.routing.selector import REASONS, Change, Chosen, Hysteresis, expected_relays, select

log = logging.getLogger(__name__)

class RoutingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.cost = Gauge("raven_path_cost", "Cost (raven/routing/graph.py) of the path this gateway uses to a pool",
                          ["gateway"], registry=registry)
        self.hops = Gauge("raven_path_hops", "Tunnels on the path this gateway uses to a pool (1 direct, 2 relayed)",
                          ["gateway"], registry=registry)
        self.since = Gauge("raven_path_since_timestamp_seconds",
                           "When this gateway's path to a pool took its current next hop (Unix time)", ["gateway"],
                           registry=registry)
        self.changes = Counter("raven_path_changes", "Path changes of this gateway, by reason", ["reason"],
                               registry=registry)
        for reason in REASONS:
            self.changes.labels(reason)


def link_weights(gateways: Iterable[Gateway], problems: list[str] | None = None) -> dict[str, float]:
    """The operator weights (annotation `raven-py.io/link-weight`, milliseconds >= 0); a bad value adds nothing."""
    out: dict[str, float] = {}
    for gw in gateways:
        annotations = gw.metadata.get("annotations")
        raw = annotations.get(ANNOTATION_LINK_WEIGHT) if isinstance(annotations, dict) else None
        if not isinstance(raw, str):
            continue
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value < 0:
            if problems is not None:
                problems.append(f"gateway {gw.name}: annotation {ANNOTATION_LINK_WEIGHT}={raw!r} is not a number "
                                ">= 0 (milliseconds); ignored")
            continue
        out[gw.name] = value
    return out


def graph_of(topology: Topology, health: Mapping[tuple[str, str], Health], weights: dict[str, float],
             extra_direct: Iterable[tuple[str, str]] = ()) -> Graph:
    """The published graph over the active gateways, in tie-break order (the relay ranking first); `health`:
    `raven.agent.status.tunnel_health`."""
    ranked = [g.name for g in topology.relay_ranking()]
    known = set(ranked)
    names = ranked + sorted(g.name for g in topology.active() if g.name not in known)
    views = topology.gateways
    # Topology.path's rule: a pair connects directly when at least one end is reachable.
    direct = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if views[a].reachable or views[b].reachable]
    meas = {pair(a, b): Measurement(h.state, h.rtt_seconds, h.loss_ratio) for (a, b), h in health.items() if a < b}
    return build_graph(names, direct, meas, weights, extra_direct)


@dataclass(frozen=True)
class RouterSettings:
    rule: Hysteresis = field(default_factory=Hysteresis)
    stale_after: timedelta = timedelta(seconds=180)
    tunnel_cidr: str = "241.0.0.0/16"


class Router:
    """The selector's state for this node's gateway, and the `RouteChoice` it gives the plan."""

    def __init__(self, settings: RouterSettings, metrics: RoutingMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.gateway: str | None = None
        self.state: dict[str, Chosen] = {}
        self.choice: RouteChoice | None = None
        # Pairs with a direct link although both are under NAT (hole punching, #15): set by whoever knows.
        self.extra_direct: frozenset[tuple[str, str]] = frozenset()
        self.punched: frozenset[str] = frozenset()  # the pools of `extra_direct` at the last evaluation
        self.punch_lost: dict[str, float] = {}  # pool -> when its punched link left `extra_direct` (epoch s)
        self.evaluations = 0
        # Relays this gateway moved a pool away from, accepted for the pool until then (epoch seconds): the far end
        # makes the same move from the same graph, but a few seconds apart (its own hold), still sending through it.
        self.grace: dict[str, dict[str, float]] = {}

    def pending(self) -> bool:
        """A clearly better path is waiting out its hold time, or a relay's grace runs out: evaluate again even
        without new reports."""
        return any(c.better_since is not None for c in self.state.values()) or bool(self.grace)

    def update(self, gateway: str | None, gateways: Sequence[Gateway], reports: Iterable[PathReport],
               now: float, adopt: Sequence[RoutedPath] = ()) -> list[Change]:
        """Re-evaluate for this node's gateway (None: not an active gateway: no choice). `now`: epoch seconds.
        `adopt`: the paths this node last published for `gateway` (its own PathReport's `status.paths`), taken as
        the paths in use when the gateway changes (an agent restart): the data plane routes them, so the router
        goes on from them through the hysteresis instead of choosing afresh (a restart writes nothing)."""
        self.evaluations += 1
        if gateway != self.gateway:
            self._clear_metrics()
            self.state = {p.gateway: Chosen(p.via or p.gateway, p.cost, p.since.timestamp() if p.since else now)
                          for p in adopt} if gateway is not None else {}
            self.grace = {}
            self.punched, self.punch_lost = frozenset(), {}
            self.gateway = gateway
        if gateway is None:
            self.choice = None
            return []
        topology = build_topology(gateways, self.settings.tunnel_cidr)
        if gateway not in topology.gateways or not topology.gateways[gateway].active:
            self.choice = None
            return []
        wall = datetime.fromtimestamp(now, UTC)
        health, published = health_and_routes(topology, reports, wall, self.settings.stale_after)
        graph = graph_of(topology, health, link_weights(gateways), self.extra_direct)
        rule = self.settings.rule
        before = self.state
        best = best_paths(graph, gateway)
        # The punched links are verified by this agent (probe up through the tunnel): moving to one waits no hold,
        # unless that link was lost within the hold time (a flapping link gets the ordinary hysteresis).
        punched = frozenset(b if a == gateway else a for a, b in self.extra_direct if gateway in (a, b))
        self.punch_lost.update((dst, now) for dst in self.punched - punched)
        self.punch_lost = {dst: t for dst, t in self.punch_lost.items() if now - t < rule.hold_seconds}
        self.punched = punched
        self.state, changes = select(before, best, graph, gateway, now, rule, punched - self.punch_lost.keys())
        for ch in changes:
            if ch.old is not None and ch.old != ch.dst:
                self.grace.setdefault(ch.dst, {})[ch.old] = now + rule.hold_seconds
        self.grace = {dst: kept for dst, relays in self.grace.items()
                      if (kept := {r: until for r, until in relays.items() if until > now})}
        # The far end's own path towards us, as it publishes it (its history may differ from ours: a restart).
        far_via = {dst: p.via for dst, paths in published.items() for p in paths if p.gateway == gateway and p.via}
        relayed: dict[str, set[str]] = {}
        for dst, chosen in self.state.items():
            relayed[dst] = {*expected_relays(chosen, best.get(dst), dst), *self.grace.get(dst, {})}
            if dst in far_via and graph.path_cost(gateway, dst, far_via[dst]) < INF:
                relayed[dst].add(far_via[dst])
        self.choice = RouteChoice.of({dst: c.next_hop for dst, c in self.state.items()},
                                     {dst: r for dst, r in relayed.items() if r})
        for ch in changes:
            (log.info if ch.reason == "new" else log.warning if ch.reason == "unreachable" else log.info)(
                "path change", extra=kv(gateway=gateway, to=ch.dst, old=_hop(ch.dst, ch.old), new=_hop(ch.dst, ch.new),
                                        reason=ch.reason, old_cost=_round(ch.old_cost), new_cost=_round(ch.new_cost)))
        self._record(before, changes)
        return changes

    def paths(self) -> tuple[RoutedPath, ...]:
        """What the node's PathReport publishes: the path to each pool, by gateway."""
        return tuple(RoutedPath(dst, "" if c.next_hop == dst else c.next_hop, round(c.cost, 3),
                                datetime.fromtimestamp(int(c.since), UTC))
                     for dst, c in sorted(self.state.items()))

    def vias(self) -> tuple[tuple[str, str], ...]:
        """The next hop to each pool, without costs: what a change of the published paths is judged by."""
        return tuple((dst, c.next_hop) for dst, c in sorted(self.state.items()))

    def _record(self, before: dict[str, Chosen], changes: list[Change]) -> None:
        m = self.metrics
        if m is None:
            return
        for ch in changes:
            m.changes.labels(ch.reason).inc()
        for dst in before.keys() - self.state.keys():
            for g in (m.cost, m.hops, m.since):
                _remove(g, dst)
        for dst, c in self.state.items():
            m.cost.labels(dst).set(c.cost)
            m.hops.labels(dst).set(1 if c.next_hop == dst else 2)
            m.since.labels(dst).set(c.since)

    def _clear_metrics(self) -> None:
        if self.metrics is not None:
            for dst in self.state:
                for g in (self.metrics.cost, self.metrics.hops, self.metrics.since):
                    _remove(g, dst)


def _remove(g: Gauge, label: str) -> None:
    try:
        g.remove(label)
    except KeyError:
        pass


def _hop(dst: str, hop: str | None) -> str:
    return "none" if hop is None else "direct" if hop == dst else f"via {hop}"


def _round(cost: float | None) -> float | None:
    return None if cost is None else round(cost, 3)
