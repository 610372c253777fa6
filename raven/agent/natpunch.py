"""NAT traversal in the agent: a NAT'd active gateway punches direct tunnels to its NAT'd peers by itself.

`NatPuncher.evaluate` is the agent's use of the pure core (`raven.nattraversal.core`): the peers the topology
relays (`Topology.path` kind "relay": both ends unreachable), the inferences the controller published into the
Gateways (`published`), the pair states kept from the last evaluation, and `verified` from the same evidence
make-before-break uses (`raven.agent.app.tunnel_evidence`): the punch connection's SA is up (from the driver's
states, handed over by the reconciler after every read) AND the `peer` probe of the peer's inner address is `up`.
Its output feeds two places, both inputs of the pure plan or the router, never I/O of its own:
- `punch`: the targets `plan(punch=...)` turns into connections `raven-<peer>` (initiator at both ends, towards
  the peer's mapped address:port) and `peer` probes, beside the relay's tunnels, which stay untouched;
- `direct_links`: the pairs `Router.extra_direct` gives a direct link (verified pairs only), so routing by cost may
  move the pool to the direct path (and the staging step moves the routes once the tunnel is verified). A direct
  path whose probe goes `down` leaves `direct_links` at the next evaluation (the monitor's state change triggers
  it), the link leaves the graph, and the router moves the pool back to the relay at once ("unusable").
An inference the controller withdraws (the observers' reports it rested on went stale) ends an attempt, but a
verified pair keeps its target (the mapping it was verified with) and its direct link while the probe answers
(`raven.nattraversal.core.plan`).

`NatLoop` runs it: on a Gateway change, a change of the SAs that are up, a `peer` probe state change, and at the
core's `next_check` (an attempt begins or ends).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from raven.agent.inputs import PlanInputs
from raven.agent.plan import PlanResult
from raven.agent.topology import build_topology
from raven.api.gateway import Gateway
from raven.dataplane.ipsec import TunnelState
from raven.dataplane.state import VICI_CONN_PREFIX, IPsecConnection
from raven.log import kv
from raven.nattraversal.core import NatPlan, PairState, PunchSchedule, PunchTarget, plan, published
from raven.routing.choice import RouteChoice

log = logging.getLogger(__name__)

# CHILD_SA states that carry traffic (REKEYED: the old SA during a rekey, still installed); make-before-break's
# evidence (raven.agent.app.tunnel_evidence) uses the same.
SA_UP = frozenset({"INSTALLED", "REKEYING", "REKEYED"})

# The state of a `peer` probe by the peer's inner address (None: not probed).
ProbeState = Callable[[str], str | None]


class NatPuncher:
    """The pair states between evaluations and the last `NatPlan` of this node's gateway."""

    def __init__(self, tunnel_cidr: str, conn_prefix: str = VICI_CONN_PREFIX,
                 schedule: PunchSchedule | None = None) -> None:
        self.tunnel_cidr = tunnel_cidr
        self.conn_prefix = conn_prefix
        self.schedule = schedule if schedule is not None else PunchSchedule()
        self.gateway: str | None = None
        self.states: dict[str, PairState] = {}
        self.plan = NatPlan()
        self.sa_up: frozenset[str] = frozenset()  # connection names whose SA carries traffic
        self.relayed: frozenset[str] = frozenset()  # the peers the topology relays (the last evaluation's)
        self.evaluations = 0

    @property
    def punch(self) -> tuple[PunchTarget, ...]:
        return self.plan.punch

    @property
    def direct_links(self) -> frozenset[tuple[str, str]]:
        return self.plan.direct_links

    def attempting(self, peer: str) -> bool:
        """`peer` is one the topology relays and the pair is not verified direct: a `peer` probe of it can only be a
        punch attempt's (held now, or just ended), kept out of the PathReport (an attempt is no tunnel: its losses
        are no evidence for the controller's health rules, nor worth a write)."""
        if self.gateway is None or peer not in self.relayed:
            return False
        return (min(self.gateway, peer), max(self.gateway, peer)) not in self.plan.direct_links

    def observe(self, conns: Iterable[IPsecConnection], states: Sequence[TunnelState]) -> bool:
        """The reconciler's read of the driver's states; whether the set of SAs that are up changed."""
        up = frozenset(t.name for t in states if t.ike_state == "ESTABLISHED" and t.child_state in SA_UP)
        changed, self.sa_up = up != self.sa_up, up
        return changed

    def evaluate(self, gateway: str | None, gateways: Sequence[Gateway], probe: ProbeState, now: float) -> bool:
        """Plan the punching of `gateway` (None: this node is no active gateway: nothing) at `now` (epoch s);
        whether the punch targets or the direct links changed."""
        self.evaluations += 1
        before = self.plan
        if gateway != self.gateway:
            self.states = {}
            self.gateway = gateway
        topology = build_topology(gateways, self.tunnel_cidr) if gateway is not None else None
        if gateway is None or topology is None or gateway not in topology.gateways \
                or not topology.gateways[gateway].active:
            self.plan = NatPlan()
            self.states = {}
            self.relayed = frozenset()
            return self._changed(before)
        nat_peers = [p.dst for p in topology.paths_from(gateway) if p.kind == "relay"]
        self.relayed = frozenset(nat_peers)
        verified: dict[str, bool] = {}
        for peer in nat_peers:
            inner = topology.gateways[peer].inner
            verified[peer] = (f"{self.conn_prefix}{peer}" in self.sa_up and inner is not None
                              and probe(inner) == "up")
        self.plan = plan(gateway, published(gateways), nat_peers, self.states, verified, now, self.schedule)
        self.states = dict(self.plan.states)
        self._log(gateway, before)
        return self._changed(before)

    def _changed(self, before: NatPlan) -> bool:
        return self.plan.punch != before.punch or self.plan.direct_links != before.direct_links

    def _log(self, gateway: str, before: NatPlan) -> None:
        old = {t.peer: t for t in before.punch}
        for t in self.plan.punch:
            was = old.get(t.peer)
            if was is None or (was.address, was.port, was.attempt) != (t.address, t.port, t.attempt):
                log.info("nat punch", extra=kv(gateway=gateway, peer=t.peer, address=t.address, port=t.port,
                                               attempt=t.attempt))
        for t in before.punch:
            if t.peer not in {n.peer for n in self.plan.punch}:
                log.info("nat punch ended", extra=kv(gateway=gateway, peer=t.peer, attempt=t.attempt,
                                                     reason="attempt window over, not verified"))
        for a, b in sorted(self.plan.direct_links - before.direct_links):
            log.info("nat direct verified", extra=kv(gateway=gateway, peer=b if a == gateway else a))
        for a, b in sorted(before.direct_links - self.plan.direct_links):
            log.warning("nat direct lost", extra=kv(gateway=gateway, peer=b if a == gateway else a,
                                                    reason="probe or SA down: back to the relay"))


def held_targets(gateway: str | None, gateways: Sequence[Gateway], routing: RouteChoice | None,
                 tunnel_cidr: str) -> tuple[PunchTarget, ...]:
    """The punch targets an agent holds for the pairs its published route choice (`routing`) sends direct although
    the topology relays them: verified pairs keep their connection, towards the peer's published mapping. For
    `raven diagnose`, which plans as the agent does without its memory (a pair in an attempt is not known)."""
    if gateway is None or routing is None:
        return ()
    topology = build_topology(gateways, tunnel_cidr)
    if gateway not in topology.gateways or not topology.gateways[gateway].active:
        return ()
    inferences = published(gateways)
    out: list[PunchTarget] = []
    for dst, hop in routing.next_hops:
        peer = inferences.get(dst)
        if hop != dst or dst not in topology.gateways or topology.path(gateway, dst).kind != "relay" or peer is None \
                or peer.address is None or peer.port is None:
            continue
        out.append(PunchTarget(dst, peer.node, peer.address, peer.port, 0))
    return tuple(out)


class NatLoop:
    """Runs the puncher when its inputs changed or at its `next_check`; a change calls `on_change` (re-plan and
    re-route)."""

    def __init__(self, puncher: NatPuncher, inputs: PlanInputs, probe: ProbeState,
                 on_change: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        self.puncher = puncher
        self.inputs = inputs
        self.probe = probe
        self.on_change = on_change
        self.clock = clock
        self.dirty = asyncio.Event()

    def mark(self) -> None:
        self.dirty.set()

    def wrap(self, plan_fn: Callable[[], Awaitable[PlanResult]]) -> Callable[[], Awaitable[PlanResult]]:
        """The plan step, also evaluating again when this node became (or stopped being) an active gateway."""

        async def plan_and_punch() -> PlanResult:
            result = await plan_fn()
            if (result.gateway if result.role == "gateway" else None) != self.puncher.gateway:
                self.mark()
            return result

        return plan_and_punch

    def on_states(self, conns: Iterable[IPsecConnection], states: list[TunnelState]) -> None:
        if self.puncher.observe(conns, states):
            self.mark()

    def step(self) -> bool:
        last = self.inputs.last
        gateway = last.gateway if last is not None and last.role == "gateway" else None
        return self.puncher.evaluate(gateway, self.inputs.gateways(), self.probe, self.clock())

    async def run(self) -> None:
        while True:
            wake = self.puncher.plan.next_check
            timeout = None if wake is None else max(0.0, wake - self.clock())
            try:
                await asyncio.wait_for(self.dirty.wait(), timeout)
            except TimeoutError:
                pass
            self.dirty.clear()
            if self.step():
                self.on_change()
