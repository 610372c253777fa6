"""The cluster as the agents see it: which gateways are usable, and how each pair of gateways talks.

`build_topology` turns the Gateway objects (spec + the status the controller writes) into checked
`GatewayView`s, skipping and reporting malformed entries. `Topology` then answers, for any two active
gateways, whether they connect directly (and who initiates) or through which relay. Everything here
depends only on cluster-wide data, so every agent (on both sides of a pair, and the relay) reaches the
same answer without talking to the others. The same functions feed the agent's plan and
`raven.agent.graph`, so what you can look at is what runs.

Rules:
- a gateway is *reachable* when peers can open a connection to it: exposed (PublicIP/LoadBalancer) with a
  public address in its active endpoint, or neither exposed nor under NAT (its node IP is reachable);
- two gateways connect directly when at least one is reachable; the one under NAT initiates, and when
  both are reachable the one with the smaller name initiates;
- two unreachable gateways are routed through a relay: the best-ranked reachable gateway, ranked by
  (exposed first, then oldest creationTimestamp, then name). Age ranking makes the choice stable when
  unrelated gateways come and go: a new gateway is younger than the current relay, so it never takes
  over; only the relay's own departure (or, rarely, a newly exposed gateway when the relay is merely
  un-NATed) moves the pair. The price is that all NAT-NAT pairs share one relay; rendezvous hashing
  would spread them but would move ~1/R of the pairs whenever a reachable gateway is added.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from raven.agent.addressing import GatewayAge, allocate_inner_addresses
from raven.api.constants import (
    DEFAULT_TUNNEL_PORT,
    ENDPOINT_TYPE_TUNNEL,
    EXPOSE_TYPE_LOAD_BALANCER,
    EXPOSE_TYPE_PUBLIC_IP,
)
from raven.api.gateway import Endpoint, Gateway, NodeInfo, validate


@dataclass(frozen=True, order=True)
class PoolNode:
    """A checked status.nodes[] entry: IPv4 private IP, normalised de-duplicated IPv4 subnets."""

    name: str
    ip: str
    subnets: tuple[str, ...]


@dataclass(frozen=True)
class GatewayView:
    name: str
    age: GatewayAge
    expose_type: str  # "" when not exposed
    nodes: tuple[PoolNode, ...]  # sorted by name
    # The active tunnel endpoint this cluster uses (the first valid one), None when there is none.
    endpoint: Endpoint | None
    inner: str | None  # None only when the inner CIDR is full
    # All subnets of the pool's usable nodes, sorted (the pool's own view).
    subnets: tuple[str, ...] = ()
    # Subnets other pools route here: `subnets` minus those an older gateway already claims.
    remote_subnets: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.endpoint is not None and self.inner is not None

    @property
    def endpoint_node(self) -> PoolNode | None:
        if self.endpoint is None:
            return None
        for node in self.nodes:
            if node.name == self.endpoint.node_name:
                return node
        return None

    @property
    def exposed(self) -> bool:
        return bool(self.expose_type)

    @property
    def under_nat(self) -> bool:
        return self.endpoint is not None and self.endpoint.is_under_nat

    @property
    def public_ip(self) -> str | None:
        return self.endpoint.public_ip if self.endpoint is not None and self.endpoint.public_ip else None

    @property
    def reachable(self) -> bool:
        if not self.active:
            return False
        if self.exposed:
            # Exposed but no public address yet (a LoadBalancer still pending): not reachable yet.
            return self.public_ip is not None
        return not self.under_nat

    @property
    def address(self) -> str | None:
        """Where peers send IKE to: the public address if any, else the node's private IP."""
        if not self.reachable:
            return None
        if self.public_ip is not None:
            return self.public_ip
        node = self.endpoint_node
        return node.ip if node is not None else None

    @property
    def port(self) -> int:
        """The UDP port peers send to: publicPort goes with publicIP, port with the private IP."""
        ep = self.endpoint
        if ep is None:
            return DEFAULT_TUNNEL_PORT
        if self.public_ip is not None and ep.public_port:
            return ep.public_port
        return ep.tunnel_port

    @property
    def source_predictable(self) -> bool:
        """Whether IKE from this gateway arrives from `address` (so a responder may insist on it).

        Not under NAT and not behind a LoadBalancer (whose address only works inbound).
        """
        return self.reachable and self.expose_type != EXPOSE_TYPE_LOAD_BALANCER


@functools.lru_cache(maxsize=1 << 17)  # type: ignore[misc]  # (its type says Callable[..., T])
def net_range(cidr: str) -> tuple[int, int]:
    """(first, last) address of a normalised IPv4 CIDR as integers, without building an IPv4Network.

    Only for strings this module produced (`normalise_subnet`); planning 10,000 subnets must not spend
    its time in `ipaddress`.
    """
    addr, _, plen = cidr.partition("/")
    first = int.from_bytes(socket.inet_aton(addr), "big")
    return first, first + (1 << (32 - int(plen))) - 1


@functools.lru_cache(maxsize=1 << 17)  # type: ignore[misc]  # (its type says Callable[..., T])
def normalise_subnet(text: str) -> str:
    """The canonical IPv4 CIDR for a status subnet (host bits cleared); ValueError when it is not one.

    Cached: the same subnets are checked on every plan, and the function is pure.
    """
    net = ipaddress.ip_network(text, strict=False)
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError("IPv6 subnets are not supported")
    return str(net)


@functools.lru_cache(maxsize=1 << 17)  # type: ignore[misc]  # (its type says Callable[..., T])
def _canonical_ipv4(text: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


PathKind = Literal["direct", "relay", "unreachable"]


# Sort keys as functions, not lambdas: a lambda's inferred type carries sorted()'s `Any` (mypy's
# --disallow-any-expr, which this package is checked with).
def view_age(v: GatewayView) -> GatewayAge:
    return v.age


def view_name(v: GatewayView) -> str:
    return v.name


def _gateway_name(g: Gateway) -> str:
    return g.name


def _reachable_first_then_age(g: GatewayView) -> tuple[bool, GatewayAge]:
    return (not g.exposed, g.age)


def _by_node_then_index(e: tuple[int, NodeInfo]) -> tuple[str, int]:
    return (e[1].node_name, e[0])


@dataclass(frozen=True, order=True)
class Path:
    """How traffic from gateway `src` reaches gateway `dst`."""

    src: str
    dst: str
    kind: PathKind
    via: str | None = None  # the relay when kind == "relay"
    # For direct paths: the gateway that initiates the IKE SA.
    initiator: str | None = None

    @property
    def next_gateway(self) -> str | None:
        """The gateway whose inner address is the next hop (direct peer or relay)."""
        if self.kind == "direct":
            return self.dst
        if self.kind == "relay":
            return self.via
        return None

    def describe(self) -> str:
        if self.kind == "direct":
            return f"{self.src} -> {self.dst}: direct ({self.initiator} initiates)"
        if self.kind == "relay":
            return f"{self.src} -> {self.dst}: via relay {self.via}"
        return f"{self.src} -> {self.dst}: unreachable (both under NAT, no reachable gateway to relay)"


def _created(gw: Gateway) -> str | None:
    value = gw.metadata.get("creationTimestamp")
    return value if isinstance(value, str) and value else None


def _parse_nodes(gw: Gateway, problems: list[str]) -> tuple[tuple[PoolNode, ...], set[str]]:
    """The usable status.nodes of a gateway (sorted by name), plus every name listed (usable or not)."""
    listed: set[str] = set()
    by_name: dict[str, PoolNode] = {}
    claimed: dict[str, str] = {}  # subnet -> node, inside this pool

    def where(i: int, name: str) -> str:  # built only when there is something to report
        return f"gateway {gw.name}: status.nodes[{i}] ({name})"

    # By name so that the same entries give the same result (and the same problems) in any order.
    entries = sorted(enumerate(gw.status.nodes or []), key=_by_node_then_index)
    for i, info in entries:
        name = info.node_name
        if not name:
            problems.append(f"gateway {gw.name}: status.nodes[{i}]: empty nodeName; skipped")
            continue
        listed.add(name)
        if name in by_name:
            problems.append(f"{where(i, name)}: duplicate entry; skipped")
            continue
        ip = _canonical_ipv4(info.private_ip)
        if ip is None:
            problems.append(f"{where(i, name)}: invalid privateIP {info.private_ip!r} (IPv4 expected); skipped")
            continue
        subnets: set[str] = set()
        for cidr in info.subnets:
            try:
                text = normalise_subnet(cidr)
            except ValueError as exc:
                problems.append(f"{where(i, name)}: invalid subnet {cidr!r} ({exc}); skipped")
                continue
            owner = claimed.setdefault(text, name)
            if owner != name:
                problems.append(f"{where(i, name)}: subnet {text} already belongs to node {owner}; skipped")
                continue
            subnets.add(text)
        by_name[name] = PoolNode(name, ip, tuple(sorted(subnets)))
    return tuple(by_name.values()), listed


def _pick_endpoint(gw: Gateway, nodes: tuple[PoolNode, ...], listed: set[str], problems: list[str]) -> Endpoint | None:
    usable = {n.name for n in nodes}
    chosen: Endpoint | None = None
    for i, ep in enumerate(gw.status.active_endpoints or []):
        if ep.type != ENDPOINT_TYPE_TUNNEL:
            continue
        where = f"gateway {gw.name}: status.activeEndpoints[{i}] ({ep.node_name or '<empty>'})"
        if ep.node_name not in listed:
            problems.append(f"{where}: names a node not in status.nodes; skipped")
            continue
        if ep.node_name not in usable:
            problems.append(f"{where}: its status.nodes entry is unusable; skipped")
            continue
        if ep.public_ip and _canonical_ipv4(ep.public_ip) is None:
            problems.append(f"{where}: invalid publicIP {ep.public_ip!r} (IPv4 expected); skipped")
            continue
        if chosen is None:
            # Several active tunnel endpoints would all claim the gateway's one inner address; the first
            # carries the traffic, the others plan as ordinary members of the pool.
            chosen = ep
    return chosen


@dataclass(frozen=True)
class Topology:
    """Checked gateways by name (valid ones only) and the problems found while checking."""

    gateways: dict[str, GatewayView]
    problems: tuple[str, ...]

    def active(self) -> list[GatewayView]:
        return [g for g in self.gateways.values() if g.active]

    def relay_ranking(self) -> list[GatewayView]:
        """Reachable gateways, best relay first: exposed, then oldest, then by name."""
        reachable = [g for g in self.gateways.values() if g.reachable]
        return sorted(reachable, key=_reachable_first_then_age)

    def path(self, src: str, dst: str, ranking: Sequence[GatewayView] | None = None) -> Path:
        a, b = self.gateways[src], self.gateways[dst]
        if a.reachable or b.reachable:
            if a.reachable and b.reachable:
                initiator = min(a.name, b.name)
            else:
                initiator = b.name if a.reachable else a.name
            return Path(src, dst, "direct", initiator=initiator)
        for relay in ranking if ranking is not None else self.relay_ranking():
            if relay.name not in (src, dst):
                return Path(src, dst, "relay", via=relay.name)
        return Path(src, dst, "unreachable")

    def paths_from(self, src: str) -> list[Path]:
        """Paths from an active gateway to every other active gateway, sorted by destination."""
        ranking = self.relay_ranking()
        return [self.path(src, g.name, ranking) for g in sorted(self.active(), key=view_name) if g.name != src]

    def all_paths(self) -> list[Path]:
        """One path per unordered pair of active gateways (paths are symmetric), sorted."""
        ranking = self.relay_ranking()
        names = sorted(g.name for g in self.active())
        return [self.path(a, b, ranking) for i, a in enumerate(names) for b in names[i + 1 :]]


# Expose types that make a gateway reachable; an unknown value counts as not exposed (the safe reading).
_EXPOSED = frozenset({EXPOSE_TYPE_PUBLIC_IP, EXPOSE_TYPE_LOAD_BALANCER})


def build_topology(gateways: Sequence[Gateway], tunnel_cidr: str) -> Topology:
    problems: list[str] = []
    # Inner addresses are allocated over every named Gateway, valid or not, active or not: a Gateway
    # turning invalid or losing its endpoint must not move anyone else's address.
    inner, unallocated = allocate_inner_addresses(((g.name, _created(g)) for g in gateways), tunnel_cidr)
    for name in unallocated:
        problems.append(f"gateway {name}: no free inner address left in {tunnel_cidr}; gateway not planned")

    views: dict[str, GatewayView] = {}
    for gw in sorted(gateways, key=_gateway_name):
        if not gw.name:
            problems.append("gateway with an empty name; skipped")
            continue
        if gw.name in views:
            problems.append(f"gateway {gw.name}: listed twice; second copy skipped")
            continue
        # A spec problem does not stop planning: what the plan uses is the status, where the controller
        # keeps the last good election, so a typo in the spec must not tear a working pool's tunnels down.
        invalid = validate(gw)
        if invalid:
            problems.append(f"gateway {gw.name}: invalid spec (planned from its status): {'; '.join(invalid)}")
        expose_type = gw.spec.expose_type if gw.spec.expose_type in _EXPOSED else ""
        nodes, listed = _parse_nodes(gw, problems)
        endpoint = _pick_endpoint(gw, nodes, listed, problems)
        address = inner.get(gw.name)
        views[gw.name] = GatewayView(
            name=gw.name,
            age=GatewayAge.of(gw.name, _created(gw)),
            expose_type=expose_type,
            nodes=nodes,
            endpoint=endpoint,
            inner=str(address) if address is not None else None,
            subnets=tuple(sorted({s for n in nodes for s in n.subnets})),
        )

    # The same subnet claimed by two active gateways: the older gateway keeps it everywhere, so every
    # agent routes it the same way. (Overlapping but unequal subnets are left to longest-prefix match.)
    owner: dict[str, str] = {}
    for view in sorted(views.values(), key=view_age):
        if not view.active:
            continue
        kept: list[str] = []
        for subnet in view.subnets:
            first = owner.get(subnet)
            if first is not None:
                problems.append(
                    f"gateway {view.name}: subnet {subnet} is also in older gateway {first}; not routed here"
                )
                continue
            owner[subnet] = view.name
            kept.append(subnet)
        views[view.name] = replace(view, remote_subnets=tuple(kept))
    return Topology(views, tuple(problems))
