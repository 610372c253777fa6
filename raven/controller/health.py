"""Failover on data-plane health: from the agents' PathReports, decide whether a Gateway's active endpoint is
"not forwarding" and which candidates may replace it (pure: no I/O, no clock, the same inputs give the same verdict).

`assess()` returns a `HealthVerdict` whose `election` part (`HealthInput`) feeds the one sticky election
(election.py): `not_forwarding` active nodes are replaced when a fit candidate exists and kept otherwise,
`unfit` candidates are never newly elected, `keep` active nodes stay although their Node's Ready is Unknown (edge
autonomy).

Evidence. Only fresh reports count (heartbeat not older than `stale_after`, 3 x the agents' heartbeat; a stale
report is no evidence, never "down"), written by the node they name, by a node the controller's view agrees with
(a member report's node is labelled for that Gateway; a gateway report's node is an active endpoint of its
Gateway), and only targets probed at the *current* active endpoint (`target.node`). A target is lost only when
the agent's state machine says `down` (N consecutive losses): one lost probe in ten is at most `degraded`,
which counts as reached. For the active endpoint A of Gateway G:

- R1 LAN: more than half of G's reporting members lost A over raven0 -> A is not forwarding (the node or its
  raven0 is gone; nothing remote explains that).
- R2 forwarding: more than half of the members that reach A over raven0 and probe through A a remote gateway R
  known to work (A itself reaches R, or a third gateway does) reach none of those R through A -> A answers but
  does not forward. "Known to work" rests on another report, which may simply be written later than the loss:
  the losses count once they are `settle` old (1 s), by when a truly dead R would have been reported lost too.
  Likewise the other way round: when A's tunnels came back after a member's losses began (a shared cut healed),
  that member's losses count only `report_lag` after A's return. Not as soon as it wrote after the return: the
  return's time is whole seconds, and a report written just after it may predate the member's via probes seeing
  the path back (seen in scenario g with a 20 s cut: a failover 0.5 s after the uplink returned).
- R3 peers: no peer reaches A, and at least one peer that lost A still reaches another gateway (its own uplink
  works) -> A is not forwarding. A peer that reaches nobody is no evidence (its own uplink may be cut).
- R4 self: A's own report says it reaches no peer (losses `settle` old), no peer reaches A, and at least one peer
  it lost is reached by a third gateway -> A is not forwarding. A's losses are "better explained" when every
  peer it lost is unreached by everyone else (that peer is down, or the cut is between two pools and nothing can
  tell which end).
Any positive evidence that A forwards (a member reaching a remote gateway through A, a peer reaching A) rules
out R3 and R4, so a remote failure is never blamed on the local gateway: when the cloud gateway dies, its
members lose it (R1), while every edge gateway's losses are all "the cloud gateway", which nobody else reaches.
In a two-pool cluster a cut between the pools looks the same from both ends, so only R1/R2 (local evidence) and
R5 (a standby's own uplink, below) move anything there.

- R5 standby (assess, `_blame_by_candidates`; what tells the two ends apart in a two-pool cluster): A's own
  report says it reaches no peer (losses `settle` old), nothing says it forwards, and a standby candidate reaches
  over its own uplink (`underlay` targets) a peer A lost, having seen the failure through A -> A is not forwarding.

Candidates. A candidate c is unfit (never newly elected) when it is held (below), when its own fresh report says
it reaches none of its peers (it has peer targets and all are down) or reaches none of them over its uplink (it
has `underlay` targets, a standby's probes of the peers' IKE addresses from its node IP, and all are down: "it
reaches 0 of N peers over its uplink"), or when it lost A over raven0 while most members reach A (its own LAN is
broken). When A is blamed with uplink-kind evidence (R3/R4/R5, or R2 while its tunnels are down too), the
standbys' underlay targets decide (`_candidate_evidence`): one that reaches a peer A lost can do better; one that
reaches none of them cannot (unfit); one whose report does not yet show the failure through A (its via targets
still up: a report from before the loss, e.g. the pool lost the API with its uplink) has no evidence yet (unfit
for now); when some standby can do better, the ones without evidence are unfit too. So a cut of only A's uplink
fails over to a standby that reaches the peers, and a cut of the pool's whole uplink moves nothing: every standby
reaches 0 peers over its uplink, which the condition says. When A is not forwarding and no fit Ready candidate
exists, nothing moves and the condition says why. Trial budget (standbys without underlay evidence: older agents,
or no peer with a known address): when A was elected by a health failover whose evidence was of the uplink kind
and A now fails with that kind of evidence too, the pool's uplink is the likely cause: nothing moves until the
gateway has been seen healthy again, unless a standby's own evidence says it can do better. Without candidate
evidence a whole-pool uplink cut thus costs exactly one trial failover; with it, none.

No flapping. A node replaced on health evidence is held: it becomes eligible again only once its own reports have
shown nothing against it (nothing that makes a candidate unfit; its losses *through* the current gateway are that
gateway's; no fresh report at all: Node readiness decides, as before) for `hold_time`, counted from the failover
at the earliest. The election stays sticky, so a released node returns only when the current active is lost in
turn. A held node may still fill a hole that Node readiness left when no other candidate can
(`HealthInput.held`): better a held node than no tunnel.

Young tunnels. A loss on a path that needs a tunnel (a peer target, a member's `via` target) is no evidence while
that path is younger than `establish` (10 s) from the election of either end (`elected`, as the controller saw
it): probes start with the plan, before IKE and the routes are up, so a path that was never up yet reads `down`
whatever the gateway can do (and one direction may come up before the other). A member's `via` loss on a young
tunnel the gateway itself reaches the far end through does count: that is the gateway not forwarding. A loss
still there when the path is `establish` old counts (a gateway that never gets its tunnels up is replaced then).
A member's path to its gateway over raven0 needs no set-up (every node's raven0 and its address exist before any
election), so R1 is never masked.

Edge autonomy. An active endpoint whose Node's Ready condition is Unknown (the control plane cannot hear it: the
node lifecycle controller's NodeStatusUnknown, as when the control plane loses a pool) is kept while a fresh report
from another pool's gateway still reaches it through the tunnel and nothing above blames it. Ready=False is not
kept: the control plane hears that node, and the node itself says it is not ready (a kubelet or runtime failure,
a node being shut down or drained); it is replaced as before. When
reports stop (all stale), there is no evidence either way and the election falls back to Node readiness alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from raven.api.gateway import Gateway, HeldNode, PathHealth
from raven.api.node import Node
from raven.api.pathreport import PathReport, Target, format_time, parse_time
from raven.controller.election import HealthInput

CONDITION_TUNNELS_HEALTHY = "TunnelsHealthy"
REASON_HEALTHY = "Healthy"
REASON_DEGRADED = "Degraded"
REASON_REMOTE_DOWN = "RemoteGatewayDown"
REASON_NOT_FORWARDING = "NotForwarding"
REASON_NO_BETTER = "NoBetterCandidate"
REASON_KEPT = "KeptDespiteNotReady"
REASON_NO_EVIDENCE = "NoEvidence"
REASON_NO_ACTIVE = "NoActiveEndpoint"
REASON_FAILED_OVER = "FailedOver"

KIND_LAN = "lan"
KIND_FORWARDING = "forwarding"
KIND_PEERS = "peers"
KIND_SELF = "self"
UPLINK_KINDS = frozenset({KIND_PEERS, KIND_SELF})
# How many establish windows an `unknown` underlay target may still be waiting for its verdict (see young_underlay).
UNDERLAY_VERDICT_WINDOWS = 3


@dataclass(frozen=True)
class HealthSettings:
    stale_after: timedelta = timedelta(seconds=180)
    hold_time: timedelta = timedelta(seconds=60)
    # Evidence that rests on *another* report still saying "up" (R2, R4) counts only once the loss is this old:
    # if the other end were down too, its own report would have said so by then (reports are written apart).
    settle: timedelta = timedelta(seconds=1)
    # A standby's underlay evidence that it reaches a peer the active lost counts when it reached the peer before
    # the loss, or has for this long (after a shared cut heals, the active's tunnels need a few seconds).
    candidate_grace: timedelta = timedelta(seconds=10)
    # How long a member's report may lag behind its own probes (the agents' write rate limit,
    # --health-min-write-interval, 2 s by default, plus slack): see R2.
    report_lag: timedelta = timedelta(seconds=3)
    # A path younger than this (from either end's election) is not established yet: its losses are no evidence.
    establish: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class Hold:
    """A node replaced on health evidence at `since`; `clean_since`: since when nothing counts against it."""

    since: datetime
    clean_since: datetime | None = None
    evidence: str = ""  # why it was replaced (kept in the condition while the hold lasts)


@dataclass(frozen=True)
class HealthMemory:
    """What one Gateway's assessment remembers between calls (kept by the reconciler, in memory only)."""

    holds: Mapping[str, Hold] = field(default_factory=dict)
    # Set by a health failover on uplink-kind evidence; cleared once the gateway is seen healthy again.
    trial_spent: bool = False


@dataclass(frozen=True)
class Blame:
    kind: str  # KIND_*
    evidence: str  # "3 of 3 peers and 1 of 1 members lost the gateway since 12:00:01"


@dataclass(frozen=True)
class HealthVerdict:
    election: HealthInput
    condition_status: str  # True | False | Unknown
    condition_reason: str
    condition_message: str
    memory: HealthMemory
    blamed: Mapping[str, Blame] = field(default_factory=dict)  # active node -> why it is not forwarding
    next_check: datetime | None = None  # re-assess then even without an event (a hold ends, evidence goes stale)
    # Young tunnels seen up from both ends in this call's reports (`tunnels_up_both_ways`): the caller keeps them
    # (until either end is elected again) and passes them back as `seen_up`.
    seen_up: frozenset[Tunnel] = frozenset()
    peers_up: int = 0  # peer gateways that reach an active endpoint through the tunnel (either end says so)
    peers: int = 0  # peer gateways with a tunnel to an active endpoint (either end probes it)


def memory_from_status(ph: PathHealth | None) -> HealthMemory:
    """What a controller that never assessed this Gateway (a new leader) remembers: what the last one wrote."""
    if ph is None:
        return HealthMemory()
    holds: dict[str, Hold] = {}
    for h in ph.held:
        since = parse_time(h.since) if h.since else None
        if h.node_name and since is not None:
            clean = parse_time(h.clean_since) if h.clean_since else None
            holds[h.node_name] = Hold(since, clean, h.evidence)
    return HealthMemory(holds=holds, trial_spent=ph.trial_spent)


def path_health(memory: HealthMemory, peers_up: int, peers: int) -> PathHealth:
    """status.pathHealth for `memory` (the held nodes in name order) and the peer counts."""
    held = tuple(HeldNode(n, format_time(h.since), None if h.clean_since is None else format_time(h.clean_since),
                          h.evidence) for n, h in sorted(memory.holds.items()))
    return PathHealth(peers_up=peers_up, peers=peers, held=held, trial_spent=memory.trial_spent)


def record_failover(memory: HealthMemory, node: str, blame: Blame, now: datetime) -> HealthMemory:
    """`node` was replaced on `blame`: hold it, and spend the trial budget when the evidence was of the uplink kind."""
    holds = dict(memory.holds)
    holds[node] = Hold(since=now, evidence=blame.evidence)
    return HealthMemory(holds=holds, trial_spent=memory.trial_spent or blame.kind in UPLINK_KINDS)


def _hhmmss(ts: datetime | None) -> str:
    return ts.strftime("%H:%M:%S") if ts is not None else "?"


def _latest(targets: Iterable[Target]) -> datetime | None:
    times = [t.since for t in targets if t.since is not None]
    return max(times) if times else None


@dataclass(frozen=True)
class _View:
    """The fresh, trusted evidence of a cluster, indexed for one assessment."""

    gateway: str
    actives: Mapping[str, frozenset[str]]  # gateway -> its active tunnel nodes (the controller's view)
    member_reports: Sequence[PathReport]  # fresh reports of nodes labelled for `gateway`
    gateway_reports: Mapping[str, PathReport]  # node -> fresh report of an active endpoint (any gateway)
    by_node: Mapping[str, PathReport]  # node -> its fresh, trusted report (the two above)
    # (gateway, node) -> (reporting gateway, target) of every other gateway's active endpoint that probed it
    peer_index: Mapping[tuple[str, str], Sequence[tuple[str, Target]]]
    # Addresses some fresh report's underlay probe got an answer from (now or before: it has an RTT estimate):
    # they answer ICMP, so a standby that never got an answer from one is cut off from it.
    answering: frozenset[str] = frozenset()

    def peer_views_of(self, gw: str, node: str) -> Sequence[tuple[str, Target]]:
        return self.peer_index.get((gw, node), ())

    def reached_by_others(self, gw: str, node: str, excluding: frozenset[str]) -> bool:
        return any(t.reached for g, t in self.peer_views_of(gw, node) if g not in excluding)

    def reaches_another(self, reporter: PathReport, other_than: str) -> bool:
        return any(t.kind == "peer" and t.gateway != other_than and t.reached for t in reporter.status.targets)

    def own_peers(self, node: str, kind: str = "peer") -> list[Target]:
        """`node`'s own targets of `kind` (peer; underlay: a standby's) that are about current active endpoints."""
        r = self.by_node.get(node)  # a standby's report may carry peer probes too (hot standby)
        if r is None:
            return []
        return [t for t in r.status.targets if t.kind == kind and t.state != "unknown"
                and t.node in self.actives.get(t.gateway, frozenset())]

    def underlay(self, node: str) -> list[Target]:
        """`node`'s underlay targets that are evidence: reached, or lost after answering ("was up, now down": it
        has an RTT estimate), or never answered although the address answers others' probes. A target that never
        answered anyone is no evidence (the address may drop ICMP, as a cloud security group may)."""
        return [t for t in self.own_peers(node, "underlay")
                if not t.lost or t.rtt_seconds is not None or t.address in self.answering]

    def young_underlay(self, node: str, now: datetime, establish: timedelta) -> list[datetime]:
        """Until when `node`'s underlay targets that have no verdict yet (`unknown`) may still get one; empty when
        none. The agent gives a target that never answered its verdict after the establish window, counted in
        probes (which run late on a loaded host: 10 s of 10 ms probes took 10.5 s in the e2e lab), so `unknown`
        is "no verdict yet" for UNDERLAY_VERDICT_WINDOWS windows; after that it is an older agent's "never"."""
        r = self.by_node.get(node)
        if r is None:
            return []
        within = establish * UNDERLAY_VERDICT_WINDOWS
        return [t.since + within for t in r.status.targets if t.kind == "underlay" and t.state == "unknown"
                and t.since is not None and now - t.since < within
                and t.node in self.actives.get(t.gateway, frozenset())]


def build_view(gateway: str, actives: Mapping[str, frozenset[str]], reports: Iterable[PathReport],
               labelled: Mapping[str, str | None], now: datetime, stale_after: timedelta) -> _View:
    """`labelled`: node -> the Gateway its label names (the controller's view), for the nodes of `reports`."""
    members: list[PathReport] = []
    gateways: dict[str, PathReport] = {}
    answering: set[str] = set()
    for r in reports:
        if not r.well_formed or not r.fresh(now, stale_after):
            continue
        st = r.status
        answering.update(t.address for t in st.targets if t.kind == "underlay" and t.rtt_seconds is not None)
        if st.role == "gateway" and r.name in actives.get(st.gateway, frozenset()):
            gateways[r.name] = r
        elif st.gateway == gateway and labelled.get(r.name) == gateway and st.role != "gateway":
            members.append(r)
    index: dict[tuple[str, str], list[tuple[str, Target]]] = {}
    for r in gateways.values():
        for t in r.status.targets:
            if t.kind == "peer" and t.gateway != r.status.gateway and t.state != "unknown":
                index.setdefault((t.gateway, t.node), []).append((r.status.gateway, t))
    return _View(gateway, actives, members, gateways, {**{r.name: r for r in members}, **gateways}, index,
                 frozenset(answering))


Tunnel = tuple[str, str, str, str]  # (gateway, node, peer gateway, peer node)


def mask_young_paths(reports: Iterable[PathReport], actives: Mapping[str, frozenset[str]],
                     elected: Mapping[tuple[str, str], datetime], now: datetime, establish: timedelta,
                     pending: list[datetime], seen_up: frozenset[Tunnel] = frozenset()) -> list[PathReport]:
    """The reports with every loss on a path younger than `establish` read as `unknown` (see "Young tunnels"),
    except a member's loss *through* its gateway on a tunnel that gateway reaches the far end by: that one is the
    gateway's forwarding; and except a loss on a tunnel in `seen_up` (both ends' reports reached each other since
    the younger end's election: it was up, and now it is down). A peer's loss of a young tunnel is masked even when
    the other end reaches it now (seen at start in e2e: one direction up before the other).

    `elected`: (gateway, node) -> when the controller saw that node become an active endpoint (absent: before
    the controller started, i.e. old). A masked loss re-checks when its path comes of age (`pending`)."""
    if not elected:
        return list(reports)

    def born(gw: str, nodes: Iterable[str]) -> datetime | None:
        times = [t for n in nodes if (t := elected.get((gw, n))) is not None]
        return max(times) if times else None

    reports = list(reports)
    # Tunnels an end's own report reaches: (gateway, node, peer gateway, peer node). Such a tunnel is established,
    # however young: a loss through it counts at once.
    up: set[tuple[str, str, str, str]] = set()
    for r in reports:
        if r.status.role == "gateway":
            up |= {(r.status.gateway, r.name, t.gateway, t.node) for t in r.status.targets
                   if t.kind == "peer" and t.reached}

    def established(gw: str, nodes: Iterable[str], far_gw: str, far: str) -> bool:
        return any((gw, n, far_gw, far) in up or (far_gw, far, gw, n) in up for n in nodes)

    out: list[PathReport] = []
    for r in reports:
        st = r.status
        near = [r.name] if st.role == "gateway" else sorted(actives.get(st.gateway, frozenset()))
        mine = born(st.gateway, near)
        targets: list[Target] = []
        changed = False
        for t in st.targets:
            if t.lost and t.kind in ("peer", "via"):
                ends = [x for x in (elected.get((t.gateway, t.node)), mine) if x is not None]
                youngest = max(ends) if ends else None
                was_up = any((st.gateway, n, t.gateway, t.node) in seen_up or (t.gateway, t.node, st.gateway, n)
                             in seen_up for n in near)
                if youngest is not None and now - youngest < establish and not was_up and not (
                        t.kind == "via" and established(st.gateway, near, t.gateway, t.node)):
                    pending.append(youngest + establish)
                    targets.append(replace(t, state="unknown"))
                    changed = True
                    continue
            targets.append(t)
        out.append(replace(r, status=replace(st, targets=tuple(targets))) if changed else r)
    return out


def tunnels_up_both_ways(reports: Iterable[PathReport], elected: Mapping[tuple[str, str], datetime], now: datetime,
                         establish: timedelta) -> frozenset[Tunnel]:
    """The young tunnels (an end elected less than `establish` ago) whose two ends' reports both reach each other
    (each gateway's own `peer` target of the other, up or degraded): established, whatever the age. Only a
    gateway's own probes through its own SA say so: a peer's probe alone may still be answered by the old
    endpoint's SA while the plans change."""
    reached: set[Tunnel] = set()
    for r in reports:
        if r.well_formed and r.status.role == "gateway":
            reached |= {(r.status.gateway, r.name, t.gateway, t.node) for t in r.status.targets
                        if t.kind == "peer" and t.reached}

    def young(gw: str, node: str) -> bool:
        at = elected.get((gw, node))
        return at is not None and now - at < establish

    return frozenset(k for k in reached if (k[2], k[3], k[0], k[1]) in reached and (young(k[0], k[1])
                                                                                  or young(k[2], k[3])))


def _peer_counts(view: _View, gw: str, active: Sequence[str]) -> tuple[int, int]:
    """(peer gateways reaching an active endpoint of `gw` through the tunnel, peer gateways with such a tunnel):
    either end's fresh report counts."""
    seen: dict[str, bool] = {}
    for a in active:
        for t in view.own_peers(a):
            seen[t.gateway] = seen.get(t.gateway, False) or t.reached
        for g, t in view.peer_views_of(gw, a):
            seen[g] = seen.get(g, False) or t.reached
    return sum(1 for up in seen.values() if up), len(seen)


def _member_targets(view: _View, node: str) -> list[tuple[PathReport, Target]]:
    out = []
    for r in view.member_reports:
        if r.name == node:
            continue
        for t in r.status.targets:
            if t.kind == "gateway" and t.gateway == view.gateway and t.node == node and t.state != "unknown":
                out.append((r, t))
    return out


def _blame(view: _View, node: str, now: datetime, settle: timedelta,
           pending: list[datetime], report_lag: timedelta = timedelta(seconds=3)) -> tuple[Blame | None, list[str]]:
    """Why `node` (an active endpoint of view.gateway) is not forwarding, or None; plus what was seen (for the
    condition when nothing is blamed). The evidence names every loss seen, e.g. "3 of 3 peers and 1 of 1 members
    lost the gateway since 12:00:01"."""
    g = view.gateway

    def settled(t: Target) -> bool:
        """A loss old enough that a report contradicting it is not merely written later (else: re-check then)."""
        if t.since is None or now - t.since >= settle:
            return True
        pending.append(t.since + settle)
        return False

    lan = _member_targets(view, node)
    lan_lost = [t for _, t in lan if t.lost]
    own = view.own_peers(node)
    own_reached = {t.gateway for t in own if t.reached}
    # When A's tunnels came back (a peer reaches it again, it reaches a peer again) after a member's losses
    # through it began, that member's report may only lag (agents rate-limit their writes, its via probes need a
    # moment to see the path back, `since` is whole seconds): its losses count `report_lag` after A's return.
    returns = [t.since for t in (*own, *(t for _, t in view.peer_views_of(g, node))) if t.reached and t.since]

    def lagging(r: PathReport, lost: Sequence[Target]) -> bool:
        began = min((t.since for t in lost if t.since is not None), default=None)
        back = max((b for b in returns if began is not None and b > began), default=None)
        if back is None or now - back >= report_lag:
            return False
        pending.append(back + report_lag)
        return True

    # Members that reach A over raven0 and probe, through A, remote gateways known to work.
    fwd_total, fwd_failing, forwards = 0, 0, False
    fwd_lost: list[Target] = []
    for r, gt in lan:
        if not gt.reached:
            continue
        relevant = [t for t in r.status.targets if t.kind == "via" and t.gateway != g and t.state != "unknown"
                    and t.node in view.actives.get(t.gateway, frozenset())
                    and (t.gateway in own_reached or view.reached_by_others(t.gateway, t.node, frozenset({g})))]
        if not relevant:
            continue
        if any(t.reached for t in relevant):
            fwd_total += 1
            forwards = True
        elif all(settled(t) for t in relevant) and not lagging(r, relevant):
            fwd_total += 1
            fwd_failing += 1
            fwd_lost.extend(relevant)
    peers = view.peer_views_of(g, node)
    peers_lost = [t for _, t in peers if t.lost]
    peers_reaching = len(peers) - len(peers_lost)

    def evidence(extra: str = "") -> str:
        parts = []
        if peers_lost:
            parts.append(f"{len(peers_lost)} of {len(peers)} peers")
        if lan_lost:
            parts.append(f"{len(lan_lost)} of {len(lan)} members")
        elif fwd_failing:
            parts.append(f"{fwd_failing} of {fwd_total} members (through it)")
        since = _latest([*peers_lost, *lan_lost, *fwd_lost])
        who = " and ".join(parts) if parts else "the evidence"
        return f"{who} lost the gateway since {_hhmmss(since)}{extra}"

    seen: list[str] = []
    if lan:
        seen.append(f"{len(lan) - len(lan_lost)} of {len(lan)} members reach it over raven0")
    if peers:
        seen.append(f"{peers_reaching} of {len(peers)} peers reach it")
    # R1: most members lost A itself over raven0.
    if lan_lost and 2 * len(lan_lost) > len(lan):
        return Blame(KIND_LAN, evidence(" (over raven0)")), seen
    # R2: most members reach A but nothing known to work through it.
    if fwd_total and 2 * fwd_failing > fwd_total:
        if peers_lost or (own and not own_reached):  # its tunnels are gone too: the uplink kind
            return Blame(KIND_PEERS, evidence(" (its tunnels are down)")), seen
        return Blame(KIND_FORWARDING, evidence(" (it answers but does not forward)")), seen
    if forwards or peers_reaching:
        return None, seen
    # R3: every peer lost A, and one of them still reaches another gateway (its own uplink works).
    if any(t.lost and view.reaches_another(r, g) for r in view.gateway_reports.values()
           for t in r.status.targets if t.kind == "peer" and t.gateway == g and t.node == node):
        return Blame(KIND_PEERS, evidence(" (the peers still reach each other)")), seen
    # R4: A's own report: it reaches no peer, and one it lost is reached by a third gateway.
    if own and not own_reached and all(settled(t) for t in own):
        third = sorted({t.gateway for t in own if view.reached_by_others(t.gateway, t.node, frozenset({g}))})
        if third:
            return Blame(KIND_SELF, f"the gateway lost {len(own)} of {len(own)} peers since "
                                    f"{_hhmmss(_latest(own))} while others reach {', '.join(third)}"), seen
    return None, seen


def _unfit(view: _View, node: str, active: Sequence[str]) -> str | None:
    """Why candidate `node`'s own reports say it cannot do better than the current active, or None."""
    own = view.own_peers(node)
    if own and not any(t.reached for t in own):
        return f"its own report says it reaches 0 of {len(own)} peers"
    under = view.underlay(node)
    if under and not any(t.reached for t in under):
        return f"it reaches 0 of {len(under)} peers over its uplink"
    for r in view.member_reports:
        if r.name != node:
            continue
        for t in r.status.targets:
            if t.kind == "gateway" and t.gateway == view.gateway and t.node in active and t.lost:
                others = [x for o, x in _member_targets(view, t.node) if o.name != node]
                reached = sum(1 for x in others if x.reached)
                if 2 * reached > len(others):
                    return f"it lost {t.node} over raven0 while {reached} of {len(others)} other members reach it"
    return None


def _lost_by(view: _View, node: str) -> dict[str, datetime | None]:
    """The peer gateways active endpoint `node` lost (by its own report, or by theirs: they lost it), each with
    since when (the earliest of the reports)."""
    lost: dict[str, datetime | None] = {}
    pairs = [(t.gateway, t) for t in view.own_peers(node)] + list(view.peer_views_of(view.gateway, node))
    for g, t in pairs:
        if t.lost:
            known = lost.get(g)
            lost[g] = t.since if known is None or (t.since is not None and t.since < known) else known
    return lost


def _candidate_evidence(view: _View, c: str, a: str, lost: Mapping[str, datetime | None], now: datetime,
                        grace: timedelta, pending: list[datetime]) -> tuple[list[str], str | None]:
    """What standby `c`'s own `underlay` probes say about replacing `a`, which lost the peers `lost` (each since
    when): (the lost peers `c` reaches over its uplink: it can do better, why it cannot). Both empty/None: `c`
    has no underlay evidence (an older agent, or no peer with a known address): the trial rule decides, as before.

    The evidence counts only once it is from after the failure: `c`'s report must show the failure through `a`
    (a via target through it lost). An older report ("everything up") is what a candidate cut off together
    with `a` still has in the API when the pool's uplink, API included, is gone: no evidence it can do better.
    And `c` must have reached the peer while `a` lost it: up since before the loss, or for `grace` since. A
    standby whose uplink just came back (the pool's whole uplink was cut and is healed) reaches the peers a few
    seconds before `a`'s tunnels are up again: that is no reason to move."""
    under = view.underlay(c)
    if not under:
        return [], None
    r = view.by_node.get(c)
    saw = r is not None and any(t.kind == "via" and t.lost and t.gateway in lost for t in r.status.targets)
    if not saw:
        return [], f"its report predates the loss (it still reaches {a}'s peers through {a}): no evidence yet"
    reached, recent = set(), set()
    for t in under:
        if not t.reached or t.gateway not in lost:
            continue
        loss = lost[t.gateway]
        if t.since is None or loss is None or t.since <= loss or now - t.since >= grace:
            reached.add(t.gateway)
        else:
            recent.add(t.gateway)
            pending.append(t.since + grace)
    if reached:
        return sorted(reached), None
    if recent:
        return [], (f"it reaches {', '.join(sorted(recent))} over its uplink only since "
                    f"{_hhmmss(max(t.since for t in under if t.gateway in recent and t.since is not None))}, after "
                    f"{a} lost them: the cut was shared, {a}'s tunnels may come back")
    return [], f"it reaches none of the peers {a} lost ({', '.join(sorted(lost))}) over its uplink"


def _blame_by_candidates(view: _View, a: str, standbys: Sequence[str], now: datetime, settle: timedelta,
                         grace: timedelta, pending: list[datetime]) -> Blame | None:
    """R5 (two pools, or when nothing else tells): `a`'s own report says it reaches no peer (losses `settle` old),
    nothing says it forwards (no peer reaches it, no member reaches a remote gateway through it), and a standby
    reaches over its own uplink a peer `a` lost, having seen the failure through `a` -> `a` is not forwarding."""
    own = view.own_peers(a)
    if not own or any(t.reached for t in own) or any(t.reached for _, t in view.peer_views_of(view.gateway, a)):
        return None
    if any(t.kind == "via" and t.reached and t.node in view.actives.get(t.gateway, frozenset())
           for r in view.member_reports for t in r.status.targets):
        return None
    for t in own:
        if t.since is not None and now - t.since < settle:
            pending.append(t.since + settle)
            return None
    lost = _lost_by(view, a)
    for c in standbys:
        reached, _ = _candidate_evidence(view, c, a, lost, now, grace, pending)
        if reached:
            return Blame(KIND_SELF, f"the gateway lost {len(own)} of {len(own)} peers since {_hhmmss(_latest(own))} "
                                    f"while {c} reaches {', '.join(reached)} over its uplink")
    return None


def _hold_step(view: _View, holds: Mapping[str, Hold], active: Sequence[str], now: datetime, hold: timedelta,
               establish: timedelta = timedelta(seconds=10)) -> tuple[dict[str, Hold], dict[str, str], list[datetime]]:
    """Advance every hold: (holds still in force, why each held node is unfit, when each could end).

    What counts against a held node is what makes a candidate unfit (`_unfit`): its own report says it reaches
    no peer, or it lost its pool's gateway over raven0 while most members reach it. Its losses *through* the
    current gateway are that gateway's, not its own. A held node whose underlay targets have no verdict yet (they
    start when it stands down, and one that never answers gets its verdict after `establish`) is not clean yet
    either: its uplink may be the very thing that was cut."""
    kept: dict[str, Hold] = {}
    why: dict[str, str] = {}
    ends: list[datetime] = []
    for node, h in holds.items():
        against = _unfit(view, node, active)
        if against is None and (young := view.young_underlay(node, now, establish)):
            ends.append(max(young))
            against = f"its underlay probes have no verdict yet (until {_hhmmss(max(young))})"
        clean = None if against is not None else (h.clean_since or now)
        end = max(h.since + hold, clean + hold) if clean is not None else None
        if end is not None and end <= now:
            continue  # released
        kept[node] = Hold(h.since, clean, h.evidence)
        if end is not None:
            ends.append(end)
            why[node] = (f"failed over at {_hhmmss(h.since)}, held until healthy for {hold.total_seconds():g} s "
                         f"(clean since {_hhmmss(clean)})")
        else:
            why[node] = f"failed over at {_hhmmss(h.since)}, and {against}"
    return kept, why, ends


def assess(gw: Gateway, candidates: Mapping[str, Node], actives: Mapping[str, frozenset[str]],
           reports: Iterable[PathReport], memory: HealthMemory, now: datetime,
           settings: HealthSettings, elected: Mapping[tuple[str, str], datetime] | None = None,
           seen_up: frozenset[Tunnel] = frozenset()) -> HealthVerdict:
    """The health verdict for `gw`.

    `candidates`: the nodes labelled for `gw` (by name). `actives`: every Gateway's active tunnel nodes, as the
    controller sees them (`gw`'s own included). `reports`: the PathReports that may matter (at least those of
    `gw`'s nodes and of every active endpoint; more is harmless). `memory`: what the last call returned.
    `elected`: when each (gateway, node) became active, as the controller saw it (see "Young tunnels");
    `seen_up`: the young tunnels earlier calls saw up from both ends (`HealthVerdict.seen_up`).
    """
    young: list[datetime] = []
    reports = list(reports)
    up_now = tunnels_up_both_ways(reports, elected or {}, now, settings.establish)
    seen_up = seen_up | up_now
    reports = mask_young_paths(reports, actives, elected or {}, now, settings.establish, young, seen_up)
    labelled = {r.name: (n.gateway if (n := candidates.get(r.name)) is not None else None) for r in reports}
    view = build_view(gw.name, actives, reports, labelled, now, settings.stale_after)
    active = sorted(actives.get(gw.name, frozenset()))
    holds, held_why, ends = _hold_step(view, memory.holds, active, now, settings.hold_time, settings.establish)
    spec_nodes = [ep.node_name for ep in gw.spec.all_endpoints if ep.type == "tunnel"]

    unfit: dict[str, str] = dict(held_why)
    for c in spec_nodes:
        if c in active or c in unfit:
            continue
        why = _unfit(view, c, active)
        if why is not None:
            unfit[c] = why

    stale_times = [r.status.heartbeat_time + settings.stale_after for r in
                   (*view.member_reports, *view.gateway_reports.values()) if r.status.heartbeat_time is not None]
    next_check = min([*ends, *stale_times, *young], default=None)
    n_peers_up, n_peers = _peer_counts(view, gw.name, active)
    has_evidence = bool(view.member_reports) or any(
        view.peer_views_of(gw.name, a) for a in active) or any(view.own_peers(a) for a in active)

    if not active:
        status, reason = ("False", REASON_NO_ACTIVE) if view.member_reports else ("Unknown", REASON_NO_EVIDENCE)
        kept = HealthMemory(holds, memory.trial_spent)
        return HealthVerdict(HealthInput(unfit=unfit, path_health=path_health(kept, 0, 0)), status, reason,
                             "no active tunnel endpoint", kept, next_check=next_check, seen_up=up_now)

    not_forwarding: dict[str, str] = {}
    blamed: dict[str, Blame] = {}
    keep: dict[str, str] = {}
    messages: list[str] = []
    status, reason = "True", REASON_HEALTHY
    trial_spent = memory.trial_spent
    pending: list[datetime] = []
    standbys = [c for c in spec_nodes if c not in active and c not in unfit]
    for a in active:
        blame, seen = _blame(view, a, now, settings.settle, pending, settings.report_lag)
        if blame is None:
            blame = _blame_by_candidates(view, a, standbys, now, settings.settle, settings.candidate_grace,
                                         pending)
        node = candidates.get(a)
        if blame is None:
            peers = view.peer_views_of(gw.name, a)
            reaching = [t for _, t in peers if t.reached]
            if node is not None and node.unreachable and not node.being_deleted and reaching:
                keep[a] = f"{len(reaching)} of {len(peers)} peers reach it through the tunnel"
                messages.append(f"{a} is unreachable by the control plane (Ready Unknown) but kept: {keep[a]}")
                status, reason = "True", REASON_KEPT
                continue
            lost_own = [t for t in view.own_peers(a) if t.lost]
            degraded = [t for t in (*view.own_peers(a), *(t for _, t in peers)) if t.state == "degraded"]
            if lost_own:
                messages.append(f"{a} lost {', '.join(sorted({t.gateway for t in lost_own}))}, which nobody else "
                                f"reaches either: not this pool's fault, nothing moves")
                status, reason = "False", REASON_REMOTE_DOWN
            elif degraded:
                messages.append(f"{a}: {len(degraded)} tunnel(s) degraded (loss or RTT), none down")
                status, reason = "True", REASON_DEGRADED
            elif not has_evidence:
                messages.append("no fresh PathReports: failover follows Node readiness only")
                status, reason = "Unknown", REASON_NO_EVIDENCE
            else:
                messages.append(f"{a}: " + ("; ".join(seen) or "no losses reported"))
            continue
        blamed[a] = blame
        better: dict[str, list[str]] = {}
        if blame.kind in UPLINK_KINDS:
            # The standbys' own underlay probes: who can do better than `a` over its own uplink.
            lost = _lost_by(view, a)
            cannot: dict[str, str] = {}
            for c in standbys:
                reached, why = _candidate_evidence(view, c, a, lost, now, settings.candidate_grace, pending)
                if reached:
                    better[c] = reached
                elif why is not None:
                    cannot[c] = why
            if better:  # evidence beats no evidence: only the candidates that can do better are elected
                cannot.update({c: f"no evidence it can do better ({', '.join(sorted(better))} has)"
                               for c in standbys if c not in better and c not in cannot})
            unfit.update(cannot)
        if trial_spent and blame.kind in UPLINK_KINDS and not better:
            messages.append(f"{a} is not forwarding ({blame.evidence}), but it replaced a gateway that failed the "
                            f"same way: the pool's uplink is likely cut, nothing moves")
            status, reason = "False", REASON_NO_BETTER
            continue
        fit = [c for c in spec_nodes if c not in active and c not in unfit and (n := candidates.get(c)) is not None
               and n.eligible]
        if not fit:
            others = [f"{c}: {unfit[c]}" if c in unfit else f"{c}: not Ready" for c in spec_nodes if c not in active]
            messages.append(f"{a} is not forwarding ({blame.evidence}); no candidate can do better"
                            + (f" ({'; '.join(others)})" if others else " (no other candidate)"))
            status, reason = "False", REASON_NO_BETTER
            continue
        not_forwarding[a] = blame.evidence
        messages.append(f"{a} is not forwarding: {blame.evidence}" + "".join(
            f"; {c} reaches {', '.join(better[c])} over its uplink" for c in fit if c in better))
        status, reason = "False", REASON_NOT_FORWARDING
    if status == "True" and reason == REASON_HEALTHY and has_evidence:
        trial_spent = False  # seen healthy: a later uplink-kind failure may be tried once more
    if holds and reason in (REASON_HEALTHY, REASON_NO_EVIDENCE, REASON_DEGRADED):
        # The failover stays visible while its node is held.
        reason = REASON_FAILED_OVER
        messages += [f"{n} failed over at {_hhmmss(h.since)}: {h.evidence}" for n, h in sorted(holds.items())]
    if pending:
        next_check = min([*pending, *([next_check] if next_check is not None else [])])
    kept = replace(memory, holds=holds, trial_spent=trial_spent)
    # Evidence first: a standby whose underlay probes reach peers beats one without evidence (the unfit ones,
    # whose probes fail, are not elected at all).
    prefer = {c: k for c in spec_nodes if c not in active and (k := sum(1 for t in view.underlay(c) if t.reached))}
    return HealthVerdict(
        election=HealthInput(not_forwarding=not_forwarding, unfit=unfit, keep=keep, prefer=prefer,
                             held=frozenset(n for n in holds if n in held_why and _unfit(view, n, active) is None),
                             path_health=path_health(kept, n_peers_up, n_peers)),
        condition_status=status, condition_reason=reason, condition_message="; ".join(messages),
        memory=kept, blamed=blamed, next_check=next_check, peers_up=n_peers_up, peers=n_peers, seen_up=up_now)
