"""Rendezvous, the agent's side: what an active gateway sees of its NAT'd peers, for its PathReport.

A peer under NAT dials us (the plan makes us its responder, accepting it from any address: `initiator` False,
`remote_addrs` ("%any",)); the address and
port its established tunnel arrives from is its NAT's mapping for the flow towards us: charon's SA list
(`remote-host`/`remote-port`) or WireGuard's peer endpoint, both as `TunnelState.remote_host`/`remote_port`, so
one path serves both drivers. `observe` is pure; `EndpointObserver` keeps the last result and tells the report
writer when it changed (a new peer, a new mapping after a NAT rebinding, a peer gone).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from raven.agent.addressing import node_ike_identity
from raven.api.pathreport import ObservedEndpoint, from_epoch
from raven.dataplane.ipsec import TunnelState
from raven.dataplane.state import VICI_CONN_PREFIX, IPsecConnection

_NODE_ID_PREFIX = node_ike_identity("")


def _peer_node(conn: IPsecConnection) -> str:
    """The peer's node: WireGuard's plan names it; with certificates it is in the peer's IKE identity."""
    if conn.peer_node:
        return conn.peer_node
    return conn.remote_id[len(_NODE_ID_PREFIX):] if conn.remote_id.startswith(_NODE_ID_PREFIX) else ""


def observe(conns: Iterable[IPsecConnection], states: Iterable[TunnelState],
            previous: Sequence[ObservedEndpoint], now: datetime) -> tuple[ObservedEndpoint, ...]:
    """The mapped endpoints of the peers that dial us, from their established tunnels (a mapping seen before
    keeps its `since`)."""
    # A peer we answer without insisting on its address (`%any`: under NAT, or behind a LoadBalancer) is one whose
    # source we cannot predict; a reachable peer we answer (the lower name of two reachable gateways dials) is not.
    by_name = {c.name: c for c in conns
               if not c.initiator and c.remote_addrs == ("%any",) and c.name.startswith(VICI_CONN_PREFIX)}
    before = {(e.gateway, e.node, e.address, e.port): e.since for e in previous}
    out: dict[str, ObservedEndpoint] = {}
    for s in states:
        conn = by_name.get(s.name)
        if conn is None or s.ike_state != "ESTABLISHED" or not s.remote_host or not s.remote_port:
            continue
        gateway, node = conn.name[len(VICI_CONN_PREFIX):], _peer_node(conn)
        since = before.get((gateway, node, s.remote_host, s.remote_port)) or now
        seen = ObservedEndpoint(gateway, node, s.remote_host, s.remote_port, since)
        # Two IKE_SAs for one peer (a duplicate during a restart): keep the longest-seen mapping.
        old = out.get(gateway)
        if old is None or (old.since or now) > since:
            out[gateway] = seen
    return tuple(sorted(out.values()))


class EndpointObserver:
    """Holds the latest observations; `on_change` (the report writer's `mark_dirty`) when they change."""

    def __init__(self, on_change: Callable[[], None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.endpoints: tuple[ObservedEndpoint, ...] = ()
        self.on_change = on_change
        self._clock = clock if clock is not None else time.time

    def update(self, conns: Iterable[IPsecConnection], states: Iterable[TunnelState]) -> bool:
        new = observe(conns, states, self.endpoints, from_epoch(self._clock()))
        if new == self.endpoints:
            return False
        self.endpoints = new
        if self.on_change is not None:
            self.on_change()
        return True
