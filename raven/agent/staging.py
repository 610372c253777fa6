"""Make-before-break: the staging step between the plan and the appliers (docs/architecture.md, "Path changes").

The plan says where every remote subnet should go now; `stage()` decides what is safe to apply now, given what
was applied last (`Stage.applied`), which peer tunnels are *verified* (their SA / WireGuard handshake is up AND
the path-health probe through them is `up`) and which are *broken* (no SA, or the probe says `down`), and `now`.
It is pure (the caller passes the clock and the evidence), like the plan:

- A route whose next hop moves to a peer whose tunnel is not verified stays on its old next hop while that old
  hop is not broken (a *held* change). Everything else of the new path (its connection, neighbour, FDB entry,
  ingress allowance) is applied at once, so the new tunnel comes up beside the old one.
- Once the new hop is verified, and the change has been planned for at least `settle` seconds, the route moves
  (a *planned* switch): one RTM_NEWROUTE/NLM_F_REPLACE per prefix (`raven.dataplane.diff` turns a changed next
  hop of the same (table, dst) into one replace). The settle time is for the far end: it plans the same change
  from the same Gateway event, on its own clock, and only its new plan lets its ingress filter accept what comes
  the new way (e.g. back through the relay); moving before it has would drop packets there.
- If the old hop is broken the route moves at once, verified or not (an *unplanned* switch): holding traffic on
  a dead path would only prolong the outage.
- What only the old path needed (the old hop's ingress allowance for the moved subnets, its connection,
  neighbour, FDB entry and WireGuard route when the new plan has none of them) stays for `grace` seconds after
  the switch: the far end switches on its own clock, and its packets still come the old way until it does.

A held route always points at a hop that is not broken, and nothing is removed while a route still uses it:
staging can delay a change, never black-hole a pool. A new hop that never verifies keeps the old path for as
long as that works (visible: `Staged.held`, the agent's `raven_path_staged` metric and a log line).

The integration point is one call on the plan's output: `stage(plan_result.state, previous, ...)`; the agent's
`Stager` (below) holds the memory between passes and gathers the evidence (raven.agent.app wires it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from raven.dataplane.ingress import mark_capacity, mark_shift
from raven.dataplane.state import (
    VICI_CONN_PREFIX,
    FdbEntry,
    IngressFilter,
    IngressPeer,
    IPsecConnection,
    Neighbor,
    NodeNetwork,
    Route,
)
from raven.log import kv

log = logging.getLogger(__name__)

SwitchKind = Literal["planned", "unplanned"]
# While a change is held, how often the agent looks at the evidence again (besides the path-health monitor's
# own trigger on a state change): a poll of charon's SAs, cheap, and only while something waits.
HELD_RECHECK_S = 0.2


@dataclass(frozen=True)
class Linger:
    """What an old next hop keeps for the grace period after routes moved away from it."""

    until: float
    ifname: str  # the link the moved routes were on (nothing lingers once the plan has no such link)
    sources: frozenset[str]  # the moved subnets: its ingress allowance, for what the far end still sends that way
    conn: IPsecConnection | None
    neighbors: frozenset[Neighbor] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()
    routes: frozenset[Route] = frozenset()  # the peer's own /32 (WireGuard routes it into its device)


@dataclass(frozen=True)
class Stage:
    """The memory between passes: what was handed to the appliers, the old hops in their grace period (by inner
    address) and since when a change waits for each new hop."""

    applied: NodeNetwork
    lingering: Mapping[str, Linger] = field(default_factory=dict)
    held_since: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, order=True)
class Switch:
    old_hop: str  # inner addresses
    new_hop: str
    prefixes: int
    kind: SwitchKind
    reason: str
    since: float | None = None  # when the change was first held


@dataclass(frozen=True, order=True)
class Held:
    new_hop: str
    old_hop: str
    prefixes: int
    since: float
    reason: str = ""


@dataclass(frozen=True)
class Staged:
    state: NodeNetwork  # what to apply now
    stage: Stage  # to pass to the next `stage()`
    held: tuple[Held, ...] = ()
    switches: tuple[Switch, ...] = ()
    expired: tuple[str, ...] = ()  # old hops whose grace ended in this pass (their leftovers now go)

    @property
    def wake_at(self) -> float | None:
        """When the next pass is due for staging's sake: the end of the first grace period."""
        ends = [linger.until for linger in self.stage.lingering.values()]
        return min(ends) if ends else None


def hops(state: NodeNetwork) -> dict[str, IPsecConnection]:
    """The peers a state has a tunnel to, by inner address (the next hops its raven1 routes use)."""
    return {c.remote_ts.split("/", 1)[0]: c for c in state.ipsec}


def stage(planned: NodeNetwork, previous: Stage | None, *, verified: Iterable[str], broken: Iterable[str],
          now: float, grace: float, settle: float = 0.0) -> Staged:
    """What to apply now on the way from `previous.applied` to `planned` (see the module docstring).
    `verified`, `broken`: inner addresses of peers whose tunnel is verified, broken (a peer in neither is unknown:
    not a reason to move, not one to stay). `settle`: the least time a planned change waits. `None` as
    `previous` (the first pass): the plan as it is."""
    if previous is None:
        return Staged(planned, Stage(planned))
    ok, bad = frozenset(verified), frozenset(broken)
    prev = previous.applied
    prev_hops, new_hops = hops(prev), hops(planned)
    old_routes = {(r.table, r.dst): r for r in prev.routes if r.gateway is not None and r.gateway in prev_hops}

    routes = set(planned.routes)
    held: dict[tuple[str, str], list[Route]] = {}  # (new hop, old hop) -> the old routes kept
    moved: dict[tuple[str, str, SwitchKind], list[Route]] = {}  # (old, new, kind) -> the old routes replaced
    for r in planned.routes:
        if r.gateway is None or r.gateway not in new_hops:
            continue
        old = old_routes.get((r.table, r.dst))
        if old is None or old.gateway is None or old.gateway == r.gateway or old.ifname != r.ifname:
            continue
        settled = now - previous.held_since.get(r.gateway, now) >= settle
        if r.gateway in ok and settled:
            moved.setdefault((old.gateway, r.gateway, "planned"), []).append(old)
        elif old.gateway in bad:
            moved.setdefault((old.gateway, r.gateway, "unplanned"), []).append(old)
        else:
            routes.discard(r)
            routes.add(old)
            held.setdefault((r.gateway, old.gateway), []).append(old)

    lingering = {hop: ln for hop, ln in previous.lingering.items() if ln.until > now}
    expired = tuple(sorted(hop for hop in previous.lingering if hop not in lingering))
    for (old_hop, _new, _kind), olds in moved.items():
        before = lingering.get(old_hop)
        sources = frozenset(r.dst for r in olds) | (before.sources if before is not None else frozenset())
        lingering[old_hop] = _leftovers(prev, old_hop, olds[0].ifname, sources, now + grace, prev_hops.get(old_hop))

    links = {link.name for link in planned.links}
    lingering = {hop: ln for hop, ln in lingering.items() if ln.ifname in links}
    # The held routes' old hops keep everything they need, like an old hop in its grace period.
    keep = dict(lingering)
    for (_new, old_hop), olds in held.items():
        linger = keep.get(old_hop)
        srcs = frozenset(r.dst for r in olds) | (linger.sources if linger is not None else frozenset())
        keep[old_hop] = _leftovers(prev, old_hop, olds[0].ifname, srcs, now, prev_hops.get(old_hop))
    state = replace(planned, routes=frozenset(routes)) if held else planned
    if keep:
        state = _with_leftovers(state, keep.items())

    held_since = {new: previous.held_since.get(new, now) for new, _old in held}
    held_out = tuple(sorted(
        Held(new, old, len(olds), held_since[new],
             "the far end may not have planned it yet (settle)" if new in ok else "tunnel not verified yet")
        for (new, old), olds in held.items()))
    switches = tuple(sorted(
        Switch(old, new, len(olds), kind,
               "new tunnel verified" if kind == "planned" else "old next hop broken",
               previous.held_since.get(new))
        for (old, new, kind), olds in moved.items()))
    return Staged(state, Stage(state, lingering, held_since), held_out, switches, expired)


def _leftovers(prev: NodeNetwork, hop: str, ifname: str, sources: frozenset[str], until: float,
               conn: IPsecConnection | None) -> Linger:
    return Linger(until=until, ifname=ifname, sources=sources, conn=conn,
                  neighbors=frozenset(n for n in prev.neighbors if n.ip == hop),
                  fdb=frozenset(f for f in prev.fdb if f.dst == hop),
                  routes=frozenset(r for r in prev.routes if r.dst == f"{hop}/32" and r.gateway is None))


def _with_leftovers(state: NodeNetwork, keep: Iterable[tuple[str, Linger]]) -> NodeNetwork:
    """`state` plus what the old hops keep, wherever the plan has nothing of its own under the same key."""
    conns = {c.name: c for c in state.ipsec}
    neighbors = {(n.ifname, n.ip): n for n in state.neighbors}
    fdb = {(f.ifname, f.mac): f for f in state.fdb}
    routes = {(r.table, r.dst): r for r in state.routes}
    extra: dict[str, set[str]] = {}
    for hop, ln in keep:
        if ln.conn is not None:
            conns.setdefault(ln.conn.name, ln.conn)
        for n in ln.neighbors:
            neighbors.setdefault((n.ifname, n.ip), n)
        for f in ln.fdb:
            fdb.setdefault((f.ifname, f.mac), f)
        for r in ln.routes:
            routes.setdefault((r.table, r.dst), r)
        extra.setdefault(hop, set()).update(ln.sources)
    ingress = _widened(state.ingress, extra) if state.ingress is not None else None
    return replace(state, ipsec=frozenset(conns.values()), neighbors=frozenset(neighbors.values()),
                   fdb=frozenset(fdb.values()), routes=frozenset(routes.values()), ingress=ingress)


def _widened(f: IngressFilter, extra: Mapping[str, set[str]]) -> IngressFilter:
    """The filter with each old hop (outer address on the tunnel port = its inner address) also allowed the
    sources it keeps; a hop the plan no longer lists gets its entry back. Marks are handed out again in order."""
    sources = {p.outer: set(p.sources) for p in f.tunnel}
    for outer, srcs in extra.items():
        sources.setdefault(outer, {f"{outer}/32"}).update(srcs)
    if all(set(p.sources) == sources[p.outer] for p in f.tunnel) and len(sources) == len(f.tunnel):
        return f
    shift, capacity = mark_shift(f.mark_mask), mark_capacity(f.mark_mask)
    peers = tuple(IngressPeer(outer, i << shift, tuple(sorted(sources[outer])))
                  for i, outer in enumerate(sorted(sources), start=1) if i <= capacity)
    return replace(f, tunnel=peers)


# --- the agent's side: memory between passes, evidence, log lines and metrics ---------------------------------


@dataclass(frozen=True)
class Evidence:
    verified: frozenset[str] = frozenset()  # inner addresses
    broken: frozenset[str] = frozenset()


# Gathers the evidence for the given tunnels ({inner address: connection name}).
Verify = Callable[[Mapping[str, str]], Awaitable[Evidence]]


class StagingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.staged = Gauge("raven_path_staged",
                            "Remote prefixes held on their old next hop until the tunnel to `via` is verified.",
                            ["via"], registry=registry)
        self.switches = Counter("raven_path_switch_total",
                                "Route moves to a new next hop: planned (new tunnel verified first) or unplanned "
                                "(old next hop broken).", ["kind"], registry=registry)
        self.lingering = Gauge("raven_path_lingering",
                               "Old next hops kept for the grace period after routes moved away from them.",
                               registry=registry)
        for kind in ("planned", "unplanned"):
            self.switches.labels(kind=kind)


class Stager:
    """Calls `stage()` once per reconcile pass with the last pass's output, the evidence (`verify`) and the clock;
    logs each hold, switch and end of grace, and keeps the metrics."""

    def __init__(self, grace: float, verify: Verify, metrics: StagingMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic, conn_prefix: str = VICI_CONN_PREFIX,
                 settle: float = 0.0) -> None:
        self.grace = grace
        self.settle = settle
        self._verify = verify
        self._metrics = metrics
        self._clock = clock
        self._prefix = conn_prefix
        self._stage: Stage | None = None
        self._held_via: set[str] = set()  # gateway names, for the metric's labels
        self._held_hops: set[str] = set()  # inner addresses, for one log line per hold
        self.last: Staged | None = None

    @property
    def wake_at(self) -> float | None:
        """When the reconciler should run again for staging (monotonic clock): soon while a change is held (the
        new tunnel's SA may come up between probe state changes), else at the end of the first grace period."""
        last = self.last
        if last is None:
            return None
        if last.held:
            return self._clock() + HELD_RECHECK_S
        return last.wake_at

    def _name(self, hop: str, *states: NodeNetwork) -> str:
        for st in states:
            conn = hops(st).get(hop)
            if conn is not None:
                return conn.name.removeprefix(self._prefix)
        return hop

    async def __call__(self, planned: NodeNetwork) -> NodeNetwork:
        previous = self._stage
        names: dict[str, str] = {}
        if previous is not None:
            names = {hop: c.name for st in (previous.applied, planned) for hop, c in hops(st).items()}
        evidence = await self._verify(names) if names else Evidence()
        staged = stage(planned, previous, verified=evidence.verified, broken=evidence.broken,
                       now=self._clock(), grace=self.grace, settle=self.settle)
        self._report(staged, planned, previous.applied if previous is not None else planned)
        self._stage, self.last = staged.stage, staged
        return staged.state

    def _report(self, staged: Staged, planned: NodeNetwork, before: NodeNetwork) -> None:
        now = self._clock()
        for h in staged.held:
            if h.new_hop not in self._held_hops:
                log.info("path change held", extra=kv(
                    via=self._name(h.new_hop, planned), keep=self._name(h.old_hop, before), prefixes=h.prefixes,
                    reason=h.reason))
        for s in staged.switches:
            log.info("path switched", extra=kv(
                **{"from": self._name(s.old_hop, before)}, to=self._name(s.new_hop, planned), prefixes=s.prefixes,
                kind=s.kind, reason=s.reason, held_s=round(now - s.since, 3) if s.since is not None else 0.0,
                grace_s=self.grace))
        for hop in staged.expired:
            log.info("path grace ended", extra=kv(old=self._name(hop, before), reason="grace period over"))
        via = {self._name(h.new_hop, planned) for h in staged.held}
        if self._metrics is not None:
            for name in self._held_via - via:
                self._metrics.staged.remove(name)
            counts: dict[str, int] = {}
            for h in staged.held:
                name = self._name(h.new_hop, planned)
                counts[name] = counts.get(name, 0) + h.prefixes
            for name, n in counts.items():
                self._metrics.staged.labels(via=name).set(n)
            for s in staged.switches:
                self._metrics.switches.labels(kind=s.kind).inc()
            self._metrics.lingering.set(len(staged.stage.lingering))
        self._held_via = via
        self._held_hops = {h.new_hop for h in staged.held}
