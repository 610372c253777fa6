"""What `raven status` and `raven graph` show: the cluster's pools, paths and their health (pure, no I/O).

Built from the very functions the agents plan with (`build_topology`, `Topology.all_paths`) and from what the
agents measure (their PathReports), so what you look at is what runs:

- a *pool* is a Gateway: its active tunnel endpoint, how peers reach it (exposure, NAT, address), its inner
  address, its nodes (from status.nodes, as the agents read them) and its status conditions;
- a *pair* is two active gateways: `direct` (one IPsec SA; the initiator named), `relay` (through the gateway
  `via`: two tunnels) or `unreachable` (both under NAT and no reachable gateway to relay);
- a member node reaches every other pool through its gateway (over raven0).

Health comes from fresh PathReports only (a report whose heartbeat is older than `stale_after` is no evidence,
as for the controller), and only from the reporter that is the current active endpoint of its gateway, about the
current active endpoint of the target (`target.node`): after a failover a pair is `unknown` until the new
endpoints have reported. A tunnel's state is the worse of what its two ends report (up < degraded < down; an end
that has not measured adds nothing), its RTT their mean, its loss the larger; a relayed pair combines its two
tunnels (RTTs add, losses compound). `since` is when the state last changed (the latest of the ends').

Problems: everything the planners report (`Topology.problems`, a pair with no path, two nodes of a pool on one
overlay address), Gateways whose conditions are False (`Valid`, `NodesValid`, `TunnelsHealthy`, with their
reasons), Gateways that do not parse, and nodes left out: labelled for a Gateway that does not exist, or not
listed by their Gateway (with the controller's reason from `NodesValid` when it names the node).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from raven.agent.plan import PlanConfig
from raven.agent.plan import _pool_overlay as pool_overlay
from raven.agent.topology import GatewayView, Topology, build_topology, view_name
from raven.api.gateway import Condition, Gateway, UnparsableGateway
from raven.api.node import Node
from raven.api.pathreport import STATES, PathReport, RoutedPath, State, Target
from raven.nattraversal.core import NatInference, Sighting, infer, sightings

SCHEMA_VERSION: Final = 1

Kind = Literal["direct", "relay", "unreachable"]
_RANK: Final[Mapping[str, int]] = {"unknown": 0, "up": 1, "degraded": 2, "down": 3}


@dataclass(frozen=True, slots=True)
class Health:
    """What the reports say about one link (or a relayed pair's two links)."""

    state: State = "unknown"
    rtt_seconds: float | None = None
    loss_ratio: float | None = None
    since: datetime | None = None
    # Who measured it (node names); empty: no fresh report covers it.
    reporters: tuple[str, ...] = ()

    @property
    def bad(self) -> bool:
        return self.state in ("down", "degraded")


UNKNOWN: Final = Health()


def _worst(states: Iterable[State]) -> State:
    out: State = "unknown"
    for s in states:
        if _RANK[s] > _RANK[out]:
            out = s
    return out


def _latest(times: Iterable[datetime | None]) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _from_targets(targets: Sequence[tuple[str, Target]]) -> Health:
    """One link as measured by each (reporter, target) that probed it; `unknown` targets add nothing."""
    measured = [(who, t) for who, t in targets if t.state != "unknown"]
    if not measured:
        return UNKNOWN
    rtts = [t.rtt_seconds for _, t in measured if t.rtt_seconds is not None]
    losses = [t.loss_ratio for _, t in measured if t.loss_ratio is not None]
    return Health(
        state=_worst(t.state for _, t in measured),
        rtt_seconds=sum(rtts) / len(rtts) if rtts else None,
        loss_ratio=max(losses) if losses else None,
        since=_latest(t.since for _, t in measured),
        reporters=tuple(sorted({who for who, _ in measured})),
    )


def combine(legs: Sequence[Health]) -> Health:
    """A path over several links: the worst state (unknown when any link is unknown, unless one is down), RTTs
    added, losses compounded."""
    if len(legs) == 2:
        return _relayed(legs[0], legs[1])
    if not legs or any(h.state == "unknown" for h in legs):
        known = [h for h in legs if h.state != "unknown"]
        state: State = "down" if any(h.state == "down" for h in known) else "unknown"
        return Health(state, since=_latest(h.since for h in known),
                      reporters=tuple(sorted({r for h in known for r in h.reporters})))
    out = legs[0]
    for h in legs[1:]:
        out = _relayed(out, h)
    return out


def _relayed(x: Health, y: Health) -> Health:
    """Two links in a row (a relayed pair: half a million of them at 1,000 gateways, so written for speed)."""
    if x.state == "unknown" or y.state == "unknown":
        return combine([x, y, UNKNOWN])  # the general rule, for the (rare) pair with an unmeasured leg
    state = x.state if _RANK[x.state] >= _RANK[y.state] else y.state
    rtt = None if x.rtt_seconds is None or y.rtt_seconds is None else x.rtt_seconds + y.rtt_seconds
    if x.loss_ratio is None and y.loss_ratio is None:
        loss = None
    else:
        loss = 1.0 - (1.0 - (x.loss_ratio or 0.0)) * (1.0 - (y.loss_ratio or 0.0))
    since = x.since if y.since is None or (x.since is not None and x.since >= y.since) else y.since
    return Health(state, rtt, loss, since, tuple(sorted(set(x.reporters + y.reporters))))


@dataclass(frozen=True)
class Member:
    name: str
    ip: str
    subnets: tuple[str, ...]
    role: Literal["gateway", "member"]  # gateway: the pool's active tunnel endpoint
    ready: bool | None  # the Node's Ready condition; None when there is no Node object
    health: Health  # member -> its gateway over raven0 (UNKNOWN for the gateway itself)


@dataclass(frozen=True)
class Pool:
    gateway: str
    active: bool
    endpoint: str | None  # the active tunnel endpoint's node
    endpoint_ip: str | None
    exposure: str  # "" | PublicIP | LoadBalancer
    under_nat: bool
    reachable: bool
    address: str | None  # where peers send IKE to (None: peers cannot dial it)
    port: int
    inner: str | None
    subnets: tuple[str, ...]  # routed to this pool by the others
    members: tuple[Member, ...]
    conditions: tuple[Condition, ...]
    # NAT traversal: the NAT behaviour inferred from the reachable gateways' sightings (pools under NAT only)
    nat: NatInference | None = None
    # The paths its active endpoint routes by (routing by cost: its fresh PathReport's status.paths), by gateway.
    routes: tuple[RoutedPath, ...] = ()


@dataclass(frozen=True, slots=True)
class Pair:
    a: str  # a < b
    b: str
    kind: Kind
    via: str | None
    initiator: str | None
    # The links the pair's traffic crosses: one tunnel (direct), two (relay), none (unreachable).
    legs: tuple[Health, ...]

    @property
    def health(self) -> Health:
        """Computed when asked (a relayed pair combines its legs), not stored: the text view of half a million
        pairs only needs `state`."""
        legs = self.legs
        if len(legs) == 1:
            return legs[0]
        if len(legs) == 2:
            return _relayed(legs[0], legs[1])
        return combine(legs) if legs else UNKNOWN

    @property
    def state(self) -> State:
        legs = self.legs
        if len(legs) == 1:
            return legs[0].state
        if len(legs) == 2:
            x, y = legs[0].state, legs[1].state
            if x == "down" or y == "down":
                return "down"
            if x == "unknown" or y == "unknown":
                return "unknown"
            return x if _RANK[x] >= _RANK[y] else y
        return "unknown"

    @property
    def describe(self) -> str:
        if self.kind == "direct":
            return f"direct ({self.initiator} initiates)"
        if self.kind == "relay":
            return f"relay via {self.via}"
        return "unreachable (both under NAT, no gateway to relay)"


ProblemKind = Literal["plan", "gateway", "node"]


@dataclass(frozen=True, order=True)
class Problem:
    kind: ProblemKind
    name: str  # the object the problem is about ("" when the planner's message names it)
    reason: str
    message: str


@dataclass(frozen=True)
class ClusterStatus:
    now: datetime
    pools: tuple[Pool, ...]
    pairs: tuple[Pair, ...]
    problems: tuple[Problem, ...]
    tunnel_cidr: str

    def pool(self, name: str) -> Pool | None:
        for p in self.pools:
            if p.gateway == name:
                return p
        return None


def _link_key(a: str, b: str) -> tuple[str, str]:  # (one key per tunnel, whichever end reports it)
    return (a, b) if a < b else (b, a)


class _Evidence:
    """The fresh reports, indexed by what they measure at the current active endpoints."""

    def __init__(self, topology: Topology, reports: Iterable[PathReport], now: datetime,
                 stale_after: timedelta) -> None:
        self.links: dict[tuple[str, str], list[tuple[str, Target]]] = {}  # gateway pair -> peer targets
        self.members: dict[str, list[Target]] = {}  # member node -> targets about its gateway
        self.routes: dict[str, tuple[RoutedPath, ...]] = {}  # gateway -> the paths its active endpoint chose
        endpoint_of = {g.name: g.endpoint.node_name for g in topology.gateways.values() if g.endpoint is not None}
        for r in reports:
            if not r.well_formed or not r.fresh(now, stale_after):
                continue
            st = r.status
            mine = st.gateway
            if st.role == "gateway" and st.paths and endpoint_of.get(mine) == r.name:
                self.routes[mine] = st.paths
            for t in st.targets:
                if t.gateway not in endpoint_of or t.node != endpoint_of[t.gateway]:
                    continue  # probed at a former endpoint (or of a Gateway gone): not about the current path
                if t.kind == "peer" and st.role == "gateway" and endpoint_of.get(mine) == r.name:
                    self.links.setdefault(_link_key(mine, t.gateway), []).append((r.name, t))
                elif t.kind == "gateway" and st.role == "member" and t.gateway == mine:
                    self.members.setdefault(r.name, []).append(t)
        # Both orders of every measured pair, computed once: a relayed pair looks up two links, and there are
        # half a million pairs at 1,000 gateways.
        self._links: dict[tuple[str, str], Health] = {}
        for (a, b), targets in self.links.items():
            self._links[a, b] = self._links[b, a] = _from_targets(targets)

    def link(self, a: str, b: str) -> Health:
        return self._links.get((a, b), UNKNOWN)

    @property
    def links_health(self) -> Mapping[tuple[str, str], Health]:
        return self._links

    def member(self, node: str) -> Health:
        return _from_targets([(node, t) for t in self.members.get(node, [])])


def tunnel_health(topology: Topology, reports: Iterable[PathReport], now: datetime,
                  stale_after: timedelta) -> Mapping[tuple[str, str], Health]:
    """Each measured tunnel (both orders of every gateway pair) by the evidence rules of `raven status`: fresh,
    well-formed reports of the current active endpoints about the current far ends. Routing by cost reads its
    graph from this, so what `raven status` shows is what the gateways route by."""
    return _Evidence(topology, reports, now, stale_after).links_health


def health_and_routes(topology: Topology, reports: Iterable[PathReport], now: datetime, stale_after: timedelta
                      ) -> tuple[Mapping[tuple[str, str], Health], Mapping[str, tuple[RoutedPath, ...]]]:
    """`tunnel_health`, and the paths each gateway's active endpoint publishes (its fresh report's
    `status.paths`), from one pass over the reports."""
    ev = _Evidence(topology, reports, now, stale_after)
    return ev.links_health, ev.routes


_BAD_WHEN_FALSE: Final = ("Valid", "NodesValid", "TunnelsHealthy")


def _nat(view: GatewayView, gw: Gateway | None, seen: Sequence[Sighting]) -> NatInference | None:
    """The inferred NAT behaviour of a pool under NAT (its active endpoint's `natType`/`publicPort` as hints)."""
    ep = view.endpoint_node if view.active else None
    if not view.under_nat or ep is None:
        return None
    spec = next((e for e in (gw.spec.endpoints or []) if e.node_name == ep.name), None) if gw is not None else None
    if spec is None:
        return infer(view.name, ep.name, seen)
    return infer(view.name, ep.name, seen, nat_type=spec.nat_type or "", public_ip=spec.public_ip or "",
                 public_port=spec.public_port)


def _pool(view: GatewayView, gw: Gateway | None, nodes: Mapping[str, Node], ev: _Evidence,
          seen: Sequence[Sighting] = ()) -> Pool:
    ep = view.endpoint_node if view.active else None
    members = tuple(
        Member(
            name=n.name, ip=n.ip, subnets=n.subnets,
            role="gateway" if ep is not None and n.name == ep.name else "member",
            ready=nodes[n.name].ready if n.name in nodes else None,
            health=UNKNOWN if ep is not None and n.name == ep.name else ev.member(n.name),
        )
        for n in view.nodes
    )
    return Pool(
        gateway=view.name, active=view.active, endpoint=ep.name if ep is not None else None,
        endpoint_ip=ep.ip if ep is not None else None, exposure=view.expose_type, under_nat=view.under_nat,
        reachable=view.reachable, address=view.address, port=view.port, inner=view.inner,
        subnets=view.remote_subnets, members=members,
        conditions=tuple(gw.status.conditions or ()) if gw is not None else (),
        nat=_nat(view, gw, seen),
        routes=ev.routes.get(view.name, ()),
    )


def _pairs(topology: Topology, ev: _Evidence) -> tuple[Pair, ...]:
    """`Topology.all_paths()`, pair by pair (the same `Topology.path` with the same ranking), each kept only as its
    `Pair`: at 1,000 gateways the half a million `Path`s would otherwise all be alive at once."""
    link = ev.link
    ranking = topology.relay_ranking()
    path = topology.path
    names = sorted(g.name for g in topology.active())
    out: list[Pair] = []
    append = out.append
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            p = path(a, b, ranking)
            if p.kind == "direct":
                append(Pair(a, b, "direct", None, p.initiator, (link(a, b),)))
            elif p.kind == "relay" and p.via is not None:
                append(Pair(a, b, "relay", p.via, None, (link(a, p.via), link(p.via, b))))
            else:
                append(Pair(a, b, p.kind, p.via, p.initiator, ()))
    return tuple(out)


def _overlay_clashes(view: GatewayView, cfg: PlanConfig) -> list[Problem]:
    """The plan's own check: two nodes of a pool whose IPs share their host bits share a raven0 address."""
    found: list[str] = []
    pool_overlay(view, cfg, found)
    return [Problem("plan", view.name, "OverlayAddressClash", m) for m in found]


def _node_reason(gw: Gateway, node: str) -> tuple[str, str] | None:
    """The controller's reason for leaving `node` out, from the Gateway's NodesValid condition."""
    for c in gw.status.conditions or ():
        if c.type == "NodesValid" and c.status == "False":
            for part in c.message.split("; "):
                if part.startswith(f"node {node}:"):
                    # The condition carries the first finding's reason; others show their message only.
                    return (c.reason if c.message.startswith(part) else "NodeLeftOut", part)
    return None


def _left_out(gateways: Mapping[str, Gateway], unparsable: Sequence[str], nodes: Iterable[Node],
              topology: Topology) -> list[Problem]:
    listed = {n.name for v in topology.gateways.values() for n in v.nodes}
    out: list[Problem] = []
    for node in nodes:
        label = node.gateway
        if label is None or node.name in listed or label in unparsable:
            continue
        gw = gateways.get(label)
        if gw is None:
            out.append(Problem("node", node.name, "GatewayNotFound",
                               f"node {node.name}: labelled for gateway {label}, which does not exist; "
                               "in no pool"))
            continue
        found = _node_reason(gw, node.name)
        if found is not None:
            out.append(Problem("node", node.name, found[0], found[1]))
            continue
        own = node.problems()
        why = "; ".join(own) if own else "the controller has not listed it (yet)"
        out.append(Problem("node", node.name, "NotListed",
                           f"node {node.name}: not in gateway {label}'s status ({why}); in no pool"))
    return out


def build_status(
    gateways: Sequence[Gateway | UnparsableGateway],
    nodes: Sequence[Node],
    reports: Sequence[PathReport],
    now: datetime,
    *,
    cfg: PlanConfig,
    stale_after: timedelta,
) -> ClusterStatus:
    """`cfg`: the agents' plan settings (their --tunnel-cidr and --overlay-cidr decide addresses)."""
    good = [g for g in gateways if isinstance(g, Gateway)]
    bad = sorted((g for g in gateways if isinstance(g, UnparsableGateway)), key=_unparsable_name)
    topology = build_topology(good, cfg.tunnel_cidr)
    return status_of(topology, good, nodes, reports, now, stale_after=stale_after, cfg=cfg, unparsable=bad)


def _unparsable_name(g: UnparsableGateway) -> str:
    return g.name


def status_of(
    topology: Topology,
    gateways: Sequence[Gateway] = (),
    nodes: Sequence[Node] = (),
    reports: Sequence[PathReport] = (),
    now: datetime | None = None,
    *,
    stale_after: timedelta = timedelta(seconds=180),
    cfg: PlanConfig | None = None,
    unparsable: Sequence[UnparsableGateway] = (),
) -> ClusterStatus:
    """The status of a topology already built (`raven.agent.graph.render_dot` passes one alone); `cfg` None
    skips the checks that need the agents' settings."""
    when = now if now is not None else datetime.fromtimestamp(0, UTC)
    by_name = {g.name: g for g in gateways}
    node_map = {n.name: n for n in nodes}
    ev = _Evidence(topology, reports, when, stale_after)
    views = sorted(topology.gateways.values(), key=view_name)
    seen = sightings(reports, when, stale_after)
    pools = tuple(_pool(v, by_name.get(v.name), node_map, ev, seen) for v in views)
    pairs = _pairs(topology, ev)

    problems: list[Problem] = [Problem("plan", "", "Planner", p) for p in topology.problems]
    problems += [Problem("plan", p.a, "NoPath", f"gateways {p.a} and {p.b}: {p.describe}")
                 for p in pairs if p.kind == "unreachable"]
    if cfg is not None:
        for v in views:
            problems += _overlay_clashes(v, cfg)
    for bad in unparsable:
        problems.append(Problem("gateway", bad.name, "Malformed",
                                f"gateway {bad.name}: does not parse ({bad.error}); agents plan its last good "
                                "version, if they saw one"))
    for pool in pools:
        for c in pool.conditions:
            if c.type in _BAD_WHEN_FALSE and c.status == "False":
                problems.append(Problem("gateway", pool.gateway, c.reason or c.type,
                                        f"gateway {pool.gateway}: {c.type}=False: {c.message}"))
        if not pool.active:
            problems.append(Problem("gateway", pool.gateway, "NoActiveEndpoint",
                                    f"gateway {pool.gateway}: no usable active tunnel endpoint; its pool is cut off"))
    for n in nodes:
        if n.gateway is not None and n.gateway in by_name and not n.ready:
            problems.append(Problem("node", n.name, "NotReady", f"node {n.name} (gateway {n.gateway}): NotReady"))
    problems += _left_out(by_name, [b.name for b in unparsable], nodes, topology)
    return ClusterStatus(when, pools, pairs, tuple(problems), cfg.tunnel_cidr if cfg is not None else "")


# --- JSON (-o json): its schema is docs/raven-status.schema.json (checked by tests/unit/test_status.py) ---


def _time(ts: datetime | None) -> str | None:
    return None if ts is None else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


class _HealthJSON:
    """Health as JSON, with each distinct `since` formatted once (half a million pairs share a few hundred)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._times: dict[datetime, tuple[str | None, float]] = {}

    def __call__(self, h: Health) -> dict[str, object]:
        since = h.since
        if since is None:
            text, age = None, None
        else:
            known = self._times.get(since)
            if known is None:
                known = self._times[since] = (_time(since), max(0.0, (self.now - since).total_seconds()))
            text, age = known
        return {"state": h.state, "rttSeconds": h.rtt_seconds, "lossRatio": h.loss_ratio, "since": text,
                "ageSeconds": age, "reporters": list(h.reporters)}


def to_json(s: ClusterStatus, *, pairs: bool = True) -> dict[str, object]:
    """The whole document as one object (`pairs=False`: without the pairs, which `iter_json` streams)."""
    health = _HealthJSON(s.now)
    pools: list[object] = []
    for p in s.pools:
        pools.append({
            "gateway": p.gateway, "active": p.active, "endpoint": p.endpoint, "endpointIP": p.endpoint_ip,
            "exposure": p.exposure, "underNAT": p.under_nat, "reachable": p.reachable, "address": p.address,
            "port": p.port, "inner": p.inner, "subnets": list(p.subnets),
            "nodes": [{"name": m.name, "ip": m.ip, "subnets": list(m.subnets), "role": m.role, "ready": m.ready,
                       "health": health(m.health)} for m in p.members],
            "conditions": [c.to_dict() for c in p.conditions],
            "natTraversal": p.nat.to_dict() if p.nat is not None else None,
            "routes": [r.to_dict() for r in p.routes],
        })
    problems: list[object] = [
        {"kind": p.kind, "name": p.name, "reason": p.reason, "message": p.message} for p in s.problems
    ]
    doc: dict[str, object] = {"schemaVersion": SCHEMA_VERSION, "time": _time(s.now), "tunnelCIDR": s.tunnel_cidr,
                              "pools": pools}
    if pairs:
        doc["pairs"] = [_pair_json(p, health) for p in s.pairs]
    doc["problems"] = problems
    doc["summary"] = summary(s)
    return doc


def _pair_json(p: Pair, health: _HealthJSON) -> dict[str, object]:
    return {"a": p.a, "b": p.b, "kind": p.kind, "via": p.via, "initiator": p.initiator, "health": health(p.health)}


class _PairText:
    """One pair as compact JSON text, equal to `json.dumps(_pair_json(p))` but written directly: json.dumps of
    half a million small dicts is most of `-o json`'s time at 1,000 gateways. Strings are encoded by json.dumps
    (each distinct one once), numbers as json does (`float.__repr__`)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._strings: dict[str | None, str] = {None: "null"}
        self._times: dict[datetime | None, str] = {None: '"since":null,"ageSeconds":null'}

    def _s(self, text: str | None) -> str:
        out = self._strings.get(text)
        if out is None:
            out = self._strings[text] = json.dumps(text)
        return out

    def __call__(self, p: Pair) -> str:
        h = p.health
        reporters = "[" + ",".join([self._s(r) for r in h.reporters]) + "]"
        since = self._times.get(h.since)
        if since is None:
            assert h.since is not None
            age = max(0.0, (self.now - h.since).total_seconds())
            since = self._times[h.since] = f'"since":{self._s(_time(h.since))},"ageSeconds":{age!r}'
        rtt = "null" if h.rtt_seconds is None else repr(float(h.rtt_seconds))
        loss = "null" if h.loss_ratio is None else repr(float(h.loss_ratio))
        return (f'{{"a":{self._s(p.a)},"b":{self._s(p.b)},"kind":"{p.kind}","via":{self._s(p.via)},'
                f'"initiator":{self._s(p.initiator)},"health":{{"state":"{h.state}","rttSeconds":{rtt},'
                f'"lossRatio":{loss},{since},"reporters":{reporters}}}}}')


def iter_json(s: ClusterStatus, extra: Mapping[str, object] | None = None, batch: int = 2000) -> Iterator[str]:
    """`to_json(s)` (plus the `extra` keys) as compact JSON text, in pieces: the pairs are encoded a batch at a time,
    so half a million of them never exist as objects all at once."""
    doc = to_json(s, pairs=False)
    doc.update(extra or {})
    head = json.dumps(doc, separators=(",", ":"))
    yield head[:-1] + ',"pairs":['
    text = _PairText(s.now)
    for i in range(0, len(s.pairs), batch):
        yield ("," if i else "") + ",".join(text(p) for p in s.pairs[i:i + batch])
    yield "]}\n"


def summary(s: ClusterStatus) -> dict[str, object]:
    kinds = {"direct": 0, "relay": 0, "unreachable": 0}
    states = dict.fromkeys(STATES, 0)
    for p in s.pairs:
        kinds[p.kind] += 1
        states[p.state] += 1
    return {"gateways": len(s.pools), "active": sum(1 for p in s.pools if p.active),
            "nodes": sum(len(p.members) for p in s.pools), "pairs": dict(kinds), "pairHealth": states,
            "problems": len(s.problems)}
