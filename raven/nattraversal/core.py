"""NAT traversal, the pure core: who is behind what kind of NAT, which NAT'd pairs may try a direct tunnel, when.

Inputs are what the cluster already has: each reachable gateway's PathReport lists the endpoints (mapped
address:port) its NAT'd peers' tunnels arrive from (`status.observedEndpoints`, written by the agent from
charon's SA list or WireGuard's peer endpoints); the Gateways' `spec.endpoints[].natType` / `publicPort` are
OpenYurt users' hints. No STUN server, nothing outside the cluster.

- `sightings(reports)`: the fresh observations, one per (observer gateway, observed gateway); `evidence(...)`: those
  about one gateway, and when the first report they rest on turns stale (the controller infers again then).
- `infer(...)`: one NAT'd gateway's behaviour. Two or more observers that see the same address:port: its
  mapping is endpoint-independent (EIM: one mapping for every destination, so a third peer can aim at it);
  different ports (or addresses): address-dependent (a symmetric NAT: the mapping towards a new peer is
  unpredictable); one observer: unknown (an EIM guess). `natType` is a hint only: used when there is no
  measurement, reported as contradicted when the measurement disagrees.
- `decide_pair(a, b)`: may the pair try? Not when both mappings are address-dependent (neither has a port the
  other can aim at), nor when one is and the other's filtering is known to be port-restricted (its filter drops
  the first packet from the unpredicted port: the hint is the only way to know filtering without the peer).
  Everything else is tried: a failed attempt costs a few IKE packets and leaves the relay as it was.
- `PunchSchedule` / `advance(...)`: the attempt schedule of one pair, the same on both ends because it is derived
  only from what both read in the API (the later of the two sightings' `since`, whole seconds, plus a lead):
  attempt n starts at start + sum(backoff[:n]), lasts `window` seconds, the interval capped at the last backoff.
- `plan(...)`: per NAT'd peer of this gateway, whether to hold a punch connection now and whether the pair is
  direct. A pair is direct only while `verified` says a probe answers through its direct tunnel (the
  make-before-break stage owns that input); `direct_links` is what routing takes as "extra direct links". A
  direct path that stops answering leaves `direct_links` at once (traffic goes back to the relay, whose tunnels
  were never touched) and is re-punched: the connection stays for one window, then the backoff starts over. An
  inference the controller withdraws (its observers' reports went stale) starts no attempt, and ends one; a pair
  verified direct keeps its connection towards the mapping it was verified with while the probe answers (the
  direct path is the evidence then), and is relayed, not re-punched, once it stops.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Final, Literal

from raven.api.constants import ENDPOINT_TYPE_TUNNEL
from raven.api.gateway import Gateway
from raven.api.pathreport import PathReport

NatBehaviour = Literal["endpoint-independent", "address-dependent", "unknown"]
EIM: Final[NatBehaviour] = "endpoint-independent"
ADM: Final[NatBehaviour] = "address-dependent"
UNKNOWN: Final[NatBehaviour] = "unknown"
Source = Literal["observed", "hint", "none"]


@dataclass(frozen=True, order=True)
class Sighting:
    """One reachable gateway (`observer`) saw `gateway`'s active endpoint `node` arrive from address:port."""

    observer: str
    gateway: str
    node: str
    address: str
    port: int
    since: float = 0.0  # epoch seconds: first seen at this address:port (0 when unknown)


def report_sightings(r: PathReport, now: datetime, stale_after: timedelta) -> tuple[Sighting, ...]:
    """One report's observations: none unless it is fresh, well-formed and an active gateway's (a member sees no
    tunnels)."""
    if not r.well_formed or r.status.role != "gateway" or not r.fresh(now, stale_after):
        return ()
    observer = r.status.gateway
    return tuple(Sighting(observer, e.gateway, e.node, e.address, e.port,
                          e.since.timestamp() if e.since is not None else 0.0)
                 for e in r.status.observed_endpoints if observer and e.gateway and e.gateway != observer)


def sightings(reports: Iterable[PathReport], now: datetime, stale_after: timedelta) -> tuple[Sighting, ...]:
    """The observations in fresh, well-formed reports of active gateways."""
    return tuple(sorted({s for r in reports for s in report_sightings(r, now, stale_after)}))


@dataclass(frozen=True)
class Evidence:
    """The fresh sightings of one NAT'd gateway's nodes, and when the first report they come from turns stale (None:
    they come from none). An inference made from `seen` must be made again just after `stale_at`: from then on it
    would rest on a report that is no evidence any more (its agent died or was cut off, and nothing else changes)."""

    seen: tuple[Sighting, ...]
    stale_at: datetime | None


def evidence(reports: Iterable[PathReport], gateway: str, nodes: Iterable[str], now: datetime,
             stale_after: timedelta) -> Evidence:
    """The fresh sightings of `gateway`'s `nodes` (see `Evidence`)."""
    about = frozenset(nodes)
    seen: set[Sighting] = set()
    stale: list[datetime] = []
    for r in reports:
        mine = [s for s in report_sightings(r, now, stale_after) if s.gateway == gateway and s.node in about]
        if mine and r.status.heartbeat_time is not None:  # fresh: it has a heartbeat
            seen.update(mine)
            stale.append(r.status.heartbeat_time + stale_after)
    return Evidence(tuple(sorted(seen)), min(stale, default=None))


# OpenYurt's natType values (from its STUN library) -> the mapping they imply, and whether filtering is known to be
# address-and-port dependent. Matched case- and punctuation-insensitively.
_HINTS: Final[dict[str, tuple[NatBehaviour, bool | None]]] = {
    "fullcone": (EIM, False),
    "restrictedcone": (EIM, False),
    "addressrestrictedcone": (EIM, False),
    "portrestrictedcone": (EIM, True),
    "portrestricted": (EIM, True),
    "symmetric": (ADM, True),
    "symmetricudpfirewall": (ADM, True),
}


def _hint(nat_type: str) -> tuple[NatBehaviour, bool | None] | None:
    key = "".join(ch for ch in nat_type.lower() if ch.isalnum())
    return _HINTS.get(key)


@dataclass(frozen=True)
class NatInference:
    gateway: str
    node: str  # the active endpoint the inference is about
    behaviour: NatBehaviour
    address: str | None  # the mapped address to aim at (None: nothing observed, no hint)
    port: int | None  # the mapped port: reusable by a new peer only when behaviour is endpoint-independent
    observers: tuple[str, ...]  # the reachable gateways whose sightings it rests on
    source: Source
    port_restricted: bool | None  # filtering, known from the hint only (None: not known)
    since: float  # the latest `since` among the sightings used (epoch s; 0 when none)
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"behaviour": self.behaviour, "address": self.address, "port": self.port,
                "observers": list(self.observers), "source": self.source, "reason": self.reason}


def _latest(s: Sighting) -> tuple[float, str]:
    return s.since, s.observer


# Where the controller publishes an inference for the agents: keys of the NAT'd Gateway's active tunnel endpoint's
# `status.activeEndpoints[].config` (OpenYurt's free-form map, where the WireGuard `publicKey` lives too), so every
# agent reads the same from the Gateways alone. Values are strings, as that map holds.
CONFIG_BEHAVIOUR: Final = "natBehaviour"
CONFIG_ADDRESS: Final = "natMappedAddress"
CONFIG_PORT: Final = "natMappedPort"
CONFIG_OBSERVERS: Final = "natObservers"
CONFIG_SINCE: Final = "natSince"
CONFIG_KEYS: Final = (CONFIG_BEHAVIOUR, CONFIG_ADDRESS, CONFIG_PORT, CONFIG_OBSERVERS, CONFIG_SINCE)


def to_config(i: NatInference) -> dict[str, str]:
    """The endpoint config keys that publish `i` (only what was observed: a hint-only inference adds nothing)."""
    if i.source != "observed" or i.address is None or i.port is None:
        return {}
    return {CONFIG_BEHAVIOUR: i.behaviour, CONFIG_ADDRESS: i.address, CONFIG_PORT: str(i.port),
            CONFIG_OBSERVERS: ",".join(i.observers), CONFIG_SINCE: str(int(i.since))}


def from_config(gateway: str, node: str, config: Mapping[str, str], nat_type: str = "") -> NatInference | None:
    """An agent's reading of what the controller published (None when nothing, or malformed: never a guess)."""
    behaviour = config.get(CONFIG_BEHAVIOUR, "")
    address = config.get(CONFIG_ADDRESS, "")
    try:
        port, since = int(config.get(CONFIG_PORT, "")), float(config.get(CONFIG_SINCE, "0"))
    except ValueError:
        return None
    if behaviour not in (EIM, ADM, UNKNOWN) or not address or not 0 < port < 65536:
        return None
    hint = _hint(nat_type) if nat_type else None
    observers = tuple(o for o in config.get(CONFIG_OBSERVERS, "").split(",") if o)
    kind: NatBehaviour = EIM if behaviour == EIM else ADM if behaviour == ADM else UNKNOWN
    return NatInference(gateway, node, kind, address, port, observers, "observed",
                        hint[1] if hint is not None and kind != EIM else None, since, "published by the controller")


def published(gateways: Iterable[Gateway]) -> dict[str, NatInference]:
    """Gateway name -> the inference the controller published for its active tunnel endpoint: what an agent passes
    to `plan` as `inferences` (its own Gateway's included), read from the Gateways alone."""
    out: dict[str, NatInference] = {}
    for gw in gateways:
        for ep in gw.status.active_endpoints or []:
            if ep.type == ENDPOINT_TYPE_TUNNEL and ep.config:
                i = from_config(gw.name, ep.node_name, ep.config, ep.nat_type or "")
                if i is not None:
                    out[gw.name] = i
                break
    return out


def infer(gateway: str, node: str, seen: Iterable[Sighting], nat_type: str = "", public_ip: str = "",
          public_port: int | None = None) -> NatInference:
    """The NAT behaviour of `gateway` (active endpoint `node`) from the sightings about that node."""
    mine = sorted({s.observer: s for s in seen if s.gateway == gateway and s.node == node}.values())
    hint = _hint(nat_type) if nat_type else None
    restricted = hint[1] if hint is not None else None
    observers = tuple(s.observer for s in mine)
    since = max((s.since for s in mine), default=0.0)
    if not mine:
        if hint is not None:
            return NatInference(gateway, node, hint[0], public_ip or None, public_port, (), "hint", restricted, 0.0,
                                f"not observed; natType {nat_type!r} says {hint[0]}")
        return NatInference(gateway, node, UNKNOWN, public_ip or None, public_port, (), "none", None, 0.0,
                            "not observed by any reachable gateway")
    endpoints = sorted({(s.address, s.port) for s in mine})
    last = max(mine, key=_latest)
    where = ", ".join(f"{s.observer} sees {s.address}:{s.port}" for s in mine)
    if len(mine) == 1:
        if hint is not None:
            return NatInference(gateway, node, hint[0], last.address, last.port, observers, "hint", restricted,
                                since, f"one observer ({where}); natType {nat_type!r} says {hint[0]}")
        return NatInference(gateway, node, UNKNOWN, last.address, last.port, observers, "observed", None, since,
                            f"one observer ({where}): mapping behaviour not measurable")
    behaviour = EIM if len(endpoints) == 1 else ADM
    reason = ("the same mapping seen by " if behaviour == EIM else "different mappings seen by ") + where
    if hint is not None and hint[0] != behaviour:
        reason += f"; natType {nat_type!r} hint contradicted"
        restricted = None if behaviour == EIM else restricted
    return NatInference(gateway, node, behaviour, last.address, last.port, observers, "observed", restricted,
                        since, reason)


@dataclass(frozen=True)
class PairDecision:
    a: str
    b: str
    punch: bool
    reason: str


def decide_pair(a: NatInference, b: NatInference) -> PairDecision:
    """Whether two NAT'd gateways may try a direct tunnel (names sorted into a, b)."""
    x, y = (a, b) if a.gateway <= b.gateway else (b, a)

    def out(punch: bool, reason: str) -> PairDecision:
        return PairDecision(x.gateway, y.gateway, punch, reason)

    for i in (x, y):
        if i.address is None or i.port is None:
            return out(False, f"{i.gateway}: no mapped endpoint known yet")
    if x.behaviour == ADM and y.behaviour == ADM:
        return out(False, "both mappings are address-dependent (symmetric NATs): no port to aim at")
    for sym, other in ((x, y), (y, x)):
        if sym.behaviour == ADM and other.port_restricted:
            return out(False, f"{sym.gateway} is address-dependent and {other.gateway}'s filtering is "
                              "port-restricted (natType hint): its first packet from a new port is dropped")
    if ADM in (x.behaviour, y.behaviour):
        sym = x if x.behaviour == ADM else y
        return out(True, f"{sym.gateway} is address-dependent: only its packets can open the path (the other "
                         "side's filter must admit a new port from a known address)")
    return out(True, f"mappings {x.behaviour} / {y.behaviour}")


@dataclass(frozen=True)
class PunchSchedule:
    """Bounded retries with backoff: attempt n starts `backoff[n-1]` seconds after attempt n-1 (the last value
    repeats: never more than one attempt per `backoff[-1]` seconds), each lasts `window` seconds."""

    lead: float = 2.0  # after the later sighting: both agents have read both reports by then
    window: float = 10.0  # an attempt not verified within this has failed (IKE retransmits: 1, 2.4, 4.4, 6.7 s)
    backoff: tuple[float, ...] = (5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0)

    def attempt_start(self, start: float, n: int) -> float:
        """When attempt `n` (0-based) begins."""
        total = start
        for i in range(n):
            total += self.window + self.backoff[min(i, len(self.backoff) - 1)]
        return total

    def attempt_at(self, start: float, now: float) -> tuple[int, float, float]:
        """(n, begin, end) of the attempt running at `now`, or of the next one when none runs."""
        n = 0
        while True:
            begin = self.attempt_start(start, n)
            if now < begin + self.window:
                return n, begin, begin + self.window
            n += 1


@dataclass(frozen=True)
class PunchTarget:
    """Hold an initiating connection to `peer` at address:port (the peer's mapping) from our tunnel port."""

    peer: str
    node: str
    address: str
    port: int
    attempt: int


@dataclass(frozen=True)
class PairState:
    """What one end remembers of a pair between plans."""

    endpoints: tuple[str, int, str, int]  # ours and the peer's mapping as last planned: a change starts over
    start: float  # the schedule's origin (epoch s)
    direct_since: float | None = None  # verified direct since (None: relayed)
    node: str = ""  # the peer's node the connection was planned towards (kept while an inference is withdrawn)


@dataclass(frozen=True)
class NatPlan:
    punch: tuple[PunchTarget, ...] = ()
    direct_links: frozenset[tuple[str, str]] = frozenset()  # sorted gateway pairs with a verified direct tunnel
    decisions: tuple[PairDecision, ...] = ()
    next_check: float | None = None  # epoch s: plan again then (an attempt begins or ends)
    states: Mapping[str, PairState] = field(default_factory=dict)


def pair_start(a: NatInference, b: NatInference, schedule: PunchSchedule) -> float:
    """The first attempt's start: derived from the two inferences alone, so both ends compute the same."""
    return float(math.ceil(max(a.since, b.since) + schedule.lead))


def plan(local: str, inferences: Mapping[str, NatInference], nat_peers: Sequence[str],
         states: Mapping[str, PairState], verified: Mapping[str, bool], now: float,
         schedule: PunchSchedule = PunchSchedule()) -> NatPlan:
    """This NAT'd gateway's punching for each NAT'd peer (`nat_peers`: the peers the topology relays today).

    `verified[peer]`: a probe answers through the direct tunnel to `peer` now (the make-before-break input).
    `states`: the previous plan's `states` (empty at start)."""
    me = inferences.get(local)
    punch: list[PunchTarget] = []
    links: set[tuple[str, str]] = set()
    decisions: list[PairDecision] = []
    new_states: dict[str, PairState] = {}
    wake: list[float] = []
    for peer in sorted(set(nat_peers)):
        other = inferences.get(peer)
        old = states.get(peer)
        if me is None or other is None:
            # An inference withdrawn (the reports it rested on went stale): no attempt, but a pair verified direct
            # keeps its connection, towards the mapping it was verified with, for as long as its probe answers.
            if old is not None and old.direct_since is not None and verified.get(peer, False):
                punch.append(PunchTarget(peer, old.node, old.endpoints[2], old.endpoints[3], 0))
                links.add((min(local, peer), max(local, peer)))
                new_states[peer] = old
            continue
        d = decide_pair(me, other)
        decisions.append(d)
        if not d.punch or other.address is None or other.port is None or me.address is None or me.port is None:
            continue
        ends = (me.address, me.port, other.address, other.port)
        st = old if old is not None and old.endpoints == ends else PairState(ends, pair_start(me, other, schedule))
        st = st if st.node == other.node else replace(st, node=other.node)
        target = PunchTarget(peer, other.node, other.address, other.port, 0)
        if verified.get(peer, False):
            st = st if st.direct_since is not None else replace(st, direct_since=now)
            punch.append(target)
            links.add((min(local, peer), max(local, peer)))
            new_states[peer] = st
            continue
        if st.direct_since is not None:  # it was direct and broke: re-punch now, backoff from the start again
            st = PairState(ends, now, node=other.node)
        n, begin, end = schedule.attempt_at(st.start, now)
        if begin <= now < end:
            punch.append(replace(target, attempt=n))
            wake.append(end)
        else:
            wake.append(begin)
        new_states[peer] = st
    return NatPlan(tuple(punch), frozenset(links), tuple(decisions), min(wake, default=None), new_states)
