"""The agent's plan: a pure function from the cluster view to this node's `NodeNetwork`.

No I/O, no clock, no randomness: the same Gateways, Nodes, node name and config always give an equal
`NodeNetwork`, so the reconciler can diff it against the kernel and charon and apply only changes.

Roles (docs/architecture.md, "Data plane"):
- *none*: the node is in no Gateway's status.nodes, or its Gateway has no active tunnel endpoint:
  empty state (the appliers remove whatever Raven owned).
- *member* (non-gateway node): raven0 towards the active endpoint; every remote subnet is routed in the
  Raven table via the pool's virtual next hop, whose neighbour and FDB entries name the active gateway.
  A local failover therefore rewrites one neighbour and one FDB entry and no route.
- *gateway* (the active tunnel endpoint): raven0 for the pool's other nodes (their return routes sit in
  the return table, reached only from raven1), raven1 on the Gateway's inner address, one IPsec
  connection per directly connected peer (selectors inner/32 <-> inner/32), and every remote subnet
  routed via the inner address of the gateway it is reached through (direct peer or relay). A remote
  failover changes the peer's IPsec connection only: inner addresses are per Gateway, not per node.

Safety net: no route is planned that covers this node's own underlay address or a `ProtectedAddress` the
agent found at the edge (its API server, its default gateway): the controller checks pod CIDRs first, but a
route in the table consulted before `main` that caught one of those would cut the node off. Such a subnet is
skipped and reported as a plan problem; the rest is planned.

Membership comes from status.nodes (the controller's view), not the node label: peers build their
return paths (FDB, return routes, remote routes to our subnets) from status.nodes, so planning from a
label the controller has not yet reflected would send traffic whose replies are black-holed. The label
only breaks a tie when (transiently) two statuses list the node.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from raven.agent.addressing import (
    Mtus,
    compute_mtus,
    ike_identity,
    mac_from_ipv4,
    node_ike_identity,
    overlay_address,
)
from raven.agent.topology import GatewayView, Path, PoolNode, Topology, build_topology, net_range, view_age
from raven.api.constants import DEFAULT_TUNNEL_PORT, ENDPOINT_CONFIG_PUBLIC_KEY
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.config import PlanSettings, path_mtu_problem
from raven.dataplane.ingress import mark_capacity, mark_shift
from raven.dataplane.state import (
    INTER_GATEWAY_LINK,
    INTRA_POOL_LINK,
    POOL_VIRTUAL_NEXT_HOP,
    RAVEN_RETURN_RULE_PRIORITY,
    RAVEN_RETURN_TABLE,
    RAVEN_RT_PROTO,
    RAVEN_RULE_PRIORITY,
    RAVEN_TABLE,
    SCOPE_SITE,
    UNREACHABLE,
    VICI_CONN_PREFIX,
    WIREGUARD_LINK,
    Address,
    FdbEntry,
    IngressFilter,
    IngressPeer,
    IPsecConnection,
    Neighbor,
    NodeNetwork,
    ProbeSnat,
    Route,
    Rule,
    VxlanLink,
)
from raven.nattraversal.core import PunchTarget
from raven.pathhealth.targets import ProbeTarget
from raven.routing.choice import RouteChoice

# Kernel-reserved routing tables (unspec, default, main, local).
_RESERVED_TABLES = frozenset({0, 253, 254, 255})


@dataclass(frozen=True, kw_only=True)
class PlanConfig(PlanSettings):
    """Every parameter of the plan: the user's plan settings (validated by `PlanSettings`, with messages
    naming their flags), what the agent detected about the node, and constants the agent owns."""

    # The MTU of the device holding the node IP, used when --underlay-mtu is unset.
    detected_underlay_mtu: int = 1500
    underlay_ifname: str | None = None  # the device holding the node IP, when known
    # libipsec's TUN device (`ipsec0`) when present: caps raven1's packets unless --ipsec-device-mtu is set.
    detected_tunnel_device_mtu: int | None = None
    # The smallest path MTU towards a peer's outer address (kernel route/PMTU cache), when known.
    detected_path_mtu: int | None = None
    table: int = RAVEN_TABLE
    return_table: int = RAVEN_RETURN_TABLE
    rule_priority: int = RAVEN_RULE_PRIORITY
    return_rule_priority: int = RAVEN_RETURN_RULE_PRIORITY
    # Not carried by `Route` itself: the appliers stamp it on every route they write.
    route_protocol: int = RAVEN_RT_PROTO
    intra_pool_link: str = INTRA_POOL_LINK
    inter_gateway_link: str = INTER_GATEWAY_LINK
    vici_conn_prefix: str = VICI_CONN_PREFIX
    virtual_next_hop: str = POOL_VIRTUAL_NEXT_HOP
    # The ingress filter (raven.dataplane.ingress): the skb mark bits that carry a VXLAN packet's sender
    # from the outer packet to the decapsulated one (reserved for Raven: 4095 senders), and the TUN
    # device through which strongSwan's kernel-libipsec delivers decrypted packets.
    ingress_mark_mask: int = 0x0FFF0000
    ipsec_tun_ifname: str = "ipsec0"
    # An address inside this node's pod CIDR that the node already holds (the CNI bridge's, Cilium's
    # cilium_host), found by the agent; the plan's node source (`node_source`) prefers it.
    detected_node_source: str | None = None
    # What carries raven1 between gateways (the agent's --vpn-driver): ESP (charon), or WireGuard, whose device
    # the plan routes the peers' inner addresses into (and `ipsec_tun_ifname` names, for the ingress filter).
    tunnel_encapsulation: Literal["esp", "wireguard"] = "esp"
    wireguard_link: str = WIREGUARD_LINK

    def __post_init__(self) -> None:
        super().__post_init__()
        # What follows checks only the fields above: the agent's constants (overridden by tests) and
        # the detected MTU. The user's settings were checked by PlanSettings.
        try:
            vnh = ipaddress.IPv4Address(self.virtual_next_hop)
        except ValueError:
            raise ValueError(f"virtual_next_hop: {self.virtual_next_hop!r} is not an IPv4 address") from None
        # (PlanSettings checked the default next hop against the user's CIDRs.)
        moved = vnh != ipaddress.IPv4Address(POOL_VIRTUAL_NEXT_HOP)
        if moved and any(vnh in ipaddress.ip_network(cidr) for cidr in (self.overlay_cidr, self.tunnel_cidr)):
            raise ValueError("virtual_next_hop must lie outside --overlay-cidr and --tunnel-cidr")
        for name, table in (("table", self.table), ("return_table", self.return_table)):
            if not 1 <= table <= 0xFFFFFFFF or table in _RESERVED_TABLES:
                raise ValueError(f"{name}: {table} is reserved or out of range")
        if self.table == self.return_table:
            raise ValueError("table and return_table must differ")
        for name, prio in (("rule_priority", self.rule_priority), ("return_rule_priority", self.return_rule_priority)):
            if not 1 <= prio < 32766:  # before the main table's rule
                raise ValueError(f"{name}: {prio} must be in 1-32765")
        if self.return_rule_priority >= self.rule_priority:
            # Tunnel traffic for the pool must hit the return table before the Raven table.
            raise ValueError("return_rule_priority must be smaller than rule_priority")
        if not 1 <= self.route_protocol <= 255:
            raise ValueError(f"route_protocol: {self.route_protocol} is out of range 1-255")
        for name, link in (("intra_pool_link", self.intra_pool_link), ("inter_gateway_link", self.inter_gateway_link)):
            if not 1 <= len(link) <= 15 or "/" in link or " " in link:
                raise ValueError(f"{name}: {link!r} is not a valid interface name")
        if self.intra_pool_link == self.inter_gateway_link:
            raise ValueError("intra_pool_link and inter_gateway_link must differ")
        mask = self.ingress_mark_mask
        if not 0 < mask <= 0xFFFFFFFF or (mask + (mask & -mask)) & mask:
            raise ValueError(f"ingress_mark_mask: {mask:#x} must be one contiguous run of bits in 32")
        if not 1 <= len(self.ipsec_tun_ifname) <= 15 or "/" in self.ipsec_tun_ifname:
            raise ValueError(f"ipsec_tun_ifname: {self.ipsec_tun_ifname!r} is not a valid interface name")
        if not self.vici_conn_prefix:
            raise ValueError("vici_conn_prefix must not be empty")
        if self.underlay_mtu is None:
            problem = path_mtu_problem(self.detected_underlay_mtu, self.esp_proposals, self.tunnel_device_mtu)
            if problem:
                dev = self.underlay_ifname or "the underlay device"
                raise ValueError(f"MTU of {dev}: {problem}; set --underlay-mtu")

    @property
    def effective_underlay_mtu(self) -> int:
        return self.detected_underlay_mtu if self.underlay_mtu is None else self.underlay_mtu

    @property
    def tunnel_device_mtu(self) -> int | None:
        """--ipsec-device-mtu when set (an override), else the MTU of the TUN device detected."""
        return self.detected_tunnel_device_mtu if self.ipsec_device_mtu is None else self.ipsec_device_mtu

    def _mtus(self) -> Mtus:
        return compute_mtus(self.effective_underlay_mtu, self.esp_proposals, self.tunnel_device_mtu,
                            path_mtu=self.detected_path_mtu, encapsulation=self.tunnel_encapsulation)


Role = Literal["none", "member", "gateway"]


@dataclass(frozen=True)
class PlanResult:
    state: NodeNetwork
    # Malformed input skipped (the rest is planned), in a stable order; one line each, for logs/events.
    problems: list[str] = field(default_factory=list)
    # From this node's gateway to every other active gateway (empty for role "none").
    paths: list[Path] = field(default_factory=list)
    role: Role = "none"
    gateway: str | None = None  # the Gateway this node belongs to
    # What this node probes (path health): a member its gateway over raven0; a gateway each direct peer's
    # inner address through the tunnel (from its own inner address).
    probes: tuple[ProbeTarget, ...] = ()


@dataclass(frozen=True, order=True)
class ProtectedAddress:
    """An address no Raven route may cover, found by the agent at the edge (the plan does no I/O)."""

    address: str
    what: str  # e.g. "the API server", "the default gateway"


class _Guard:
    """The protected IPv4 addresses as integers; `hit(subnet)` names the first one a subnet covers."""

    def __init__(self, protected: Sequence[ProtectedAddress]) -> None:
        self._addrs: list[tuple[int, ProtectedAddress]] = []
        for p in sorted(set(protected)):
            try:
                self._addrs.append((int.from_bytes(socket.inet_aton(p.address), "big"), p))
            except OSError:
                continue  # not IPv4: no IPv4 route can cover it

    def hit(self, subnet: str) -> ProtectedAddress | None:
        first, last = net_range(subnet)
        for value, p in self._addrs:
            if first <= value <= last:
                return p
        return None


class _Ranges:
    """Disjoint sorted address ranges; `overlaps` is a binary search (10,000 remote subnets against a
    pool's subnets must not be a quadratic loop)."""

    def __init__(self, cidrs: Sequence[str]) -> None:
        merged: list[tuple[int, int]] = []
        for first, last in sorted(net_range(c) for c in cidrs):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        self._firsts = [r[0] for r in merged]
        self._lasts = [r[1] for r in merged]

    def overlaps(self, cidr: str) -> bool:
        first, last = net_range(cidr)
        # The last range starting at or before `last` is the only candidate (ranges are disjoint).
        i = bisect.bisect_right(self._firsts, last) - 1
        return i >= 0 and self._lasts[i] >= first


def _local_membership(
    topology: Topology, node_name: str, node: Node | None, problems: list[str]
) -> tuple[GatewayView, PoolNode] | None:
    found = [
        (view, pn)
        for view in sorted(topology.gateways.values(), key=view_age)
        for pn in view.nodes
        if pn.name == node_name
    ]
    if not found:
        return None
    label = node.gateway if node is not None else None
    chosen = found[0]
    if len(found) > 1:
        chosen = next((f for f in found if f[0].name == label), found[0])
        names = ", ".join(v.name for v, _ in found)
        problems.append(
            f"node {node_name}: listed in the status of several gateways ({names}); planning for {chosen[0].name}"
        )
    elif label is not None and label != chosen[0].name:
        problems.append(
            f"node {node_name}: labelled for gateway {label} but listed in the status of {chosen[0].name}; "
            "following the status until the controller catches up"
        )
    if node is not None and node.internal_ip and node.internal_ip != chosen[1].ip:
        problems.append(
            f"node {node_name}: InternalIP {node.internal_ip} differs from privateIP {chosen[1].ip} in gateway "
            f"{chosen[0].name}'s status; using the status (what peers use)"
        )
    return chosen


def _pool_overlay(view: GatewayView, cfg: PlanConfig, problems: list[str]) -> dict[str, ipaddress.IPv4Address]:
    """Overlay address of each node of the pool. Two nodes whose IPs share their host bits would share an
    address: the active endpoint keeps it, then the first by name; the others are left out."""
    ep_name = view.endpoint.node_name if view.endpoint is not None else None
    def endpoint_first(n: PoolNode) -> tuple[bool, str]:
        return (n.name != ep_name, n.name)

    ordered = sorted(view.nodes, key=endpoint_first)
    out: dict[str, ipaddress.IPv4Address] = {}
    owner: dict[ipaddress.IPv4Address, str] = {}
    for pn in ordered:
        addr = overlay_address(pn.ip, cfg.overlay_cidr)
        if addr in owner:
            problems.append(
                f"gateway {view.name}: node {pn.name} ({pn.ip}) maps to overlay address {addr} already used by "
                f"node {owner[addr]}; node left out of the overlay"
            )
            continue
        owner[addr] = pn.name
        out[pn.name] = addr
    return out


def node_source(subnets: Sequence[str], detected: str | None = None) -> str | None:
    """The source of everything this node itself sends to another pool: an address inside its own pod CIDR.

    Every pool routes this node's pod CIDR back to it (that is what Raven does for its pods), so a reply to
    this address takes the pods' path, whatever sent the packet: a host-network process (the route's `src`),
    or a Service hop that kube-proxy masquerades (MASQUERADE takes the first global address of the outgoing
    device, and on raven0/raven1 that is this one: the overlay and inner addresses are site scope).
    `detected` (an address the node already holds there, e.g. the CNI bridge's) wins; else the first host
    address of the first pod CIDR, which the CNI's IPAM reserves as its gateway (host-local, flannel).
    None when the node has no pod CIDR wide enough."""
    nets = []
    for subnet in subnets:
        try:
            nets.append(ipaddress.IPv4Network(subnet))
        except ValueError:
            continue
    if detected is not None:
        try:
            found = ipaddress.IPv4Address(detected)
        except ValueError:
            found = None
        if found is not None and any(found in n and found not in (n.network_address, n.broadcast_address)
                                     for n in nets):
            return str(found)
    for n in nets:
        if n.prefixlen <= 30:
            return str(n.network_address + 1)
    return None


def plan(
    gateways: Sequence[Gateway],
    nodes: Mapping[str, Node] | Sequence[Node],
    node_name: str,
    cfg: PlanConfig,
    protected: Sequence[ProtectedAddress] = (),
    routing: RouteChoice | None = None,
    punch: Sequence[PunchTarget] = (),
) -> PlanResult:
    """This node's desired Raven state; malformed input is skipped and listed in `problems`. `protected`: the
    addresses the agent found at the edge that no route may cover (this node's own is added here). `routing`: the
    gateway's choice of next hop per remote pool (`raven.routing`); None or a pool it does not name: the default
    path (direct, or the top-ranked relay). `punch`: NAT traversal's targets for this gateway
    (`raven.nattraversal.core.plan`): each relayed peer named gets a direct connection (both ends initiate, towards
    its mapped address:port) and a `peer` probe beside the relay, and routing may choose it as a direct link; the
    relay's tunnels stay as they are."""
    node_map = nodes if isinstance(nodes, Mapping) else {n.name: n for n in nodes}
    topology = build_topology(gateways, cfg.tunnel_cidr)
    problems = list(topology.problems)

    membership = _local_membership(topology, node_name, node_map.get(node_name), problems)
    if membership is None:
        return PlanResult(NodeNetwork(), problems)
    gw, me = membership
    ep_node = gw.endpoint_node
    if not gw.active or ep_node is None or gw.inner is None:
        return PlanResult(NodeNetwork(), problems, gateway=gw.name)

    overlay = _pool_overlay(gw, cfg, problems)
    if me.name not in overlay or ep_node.name not in overlay:
        return PlanResult(NodeNetwork(), problems, gateway=gw.name)

    me_node = node_map.get(node_name)
    own = [ProtectedAddress(me.ip, "this node's underlay address")]
    if me_node is not None and me_node.internal_ip and me_node.internal_ip != me.ip:
        own.append(ProtectedAddress(me_node.internal_ip, "this node's InternalIP"))
    guard = _Guard([*own, *protected])

    def unsafe(subnet: str, owner: str) -> bool:
        hit = guard.hit(subnet)
        if hit is not None:
            problems.append(f"gateway {owner}: subnet {subnet} covers {hit.what} ({hit.address}); not routed")
        return hit is not None

    mtus = cfg._mtus()
    paths = topology.paths_from(gw.name)
    for p in paths:
        if p.kind == "unreachable":
            problems.append(f"gateway {gw.name}: no path to gateway {p.dst}: {p.describe()}")

    # Remote subnets, with the gateway they are reached through. Anything overlapping this pool's own
    # subnets is left out: a route for it would steer intra-pool traffic into the tunnel.
    local_nets = _Ranges(gw.subnets)
    remote: list[tuple[str, str, str]] = []  # (subnet, next gateway name, owning gateway)
    direct_names = {p.dst for p in paths if p.kind == "direct"}
    # NAT hole punching (gateway only): peers the topology relays, with a direct connection of their own.
    punched = _punched(topology, paths, punch, problems) if me.name == ep_node.name else {}
    direct_names |= punched.keys()
    chosen = routing.next_hop_map() if routing is not None else {}
    for p in paths:
        nxt = _next_gateway(topology, p, chosen.get(p.dst), direct_names, problems)
        if nxt is None:
            continue
        for subnet in topology.gateways[p.dst].remote_subnets:
            if local_nets.overlaps(subnet):
                problems.append(
                    f"gateway {p.dst}: subnet {subnet} overlaps a subnet of this node's pool ({gw.name}); not routed"
                )
                continue
            if unsafe(subnet, p.dst):
                continue
            remote.append((subnet, nxt, p.dst))

    links: set[VxlanLink] = set()
    addresses: set[Address] = set()
    routes: set[Route] = set()
    rules: set[Rule] = {Rule(priority=cfg.rule_priority, table=cfg.table)}
    neighbors: set[Neighbor] = set()
    fdb: set[FdbEntry] = set()
    ipsec: set[IPsecConnection] = set()
    clamp: set[str] = {cfg.intra_pool_link}

    my_overlay = overlay[me.name]
    overlay_prefix = ipaddress.IPv4Network(cfg.overlay_cidr).prefixlen
    # A pod CIDR that covers a protected address (this node's own, the API server, the default gateway) is no
    # place for the node source: holding an address there could shadow one of them.
    safe_own = [s for s in me.subnets if guard.hit(s) is None]
    if len(safe_own) < len(me.subnets):
        problems.append(f"node {me.name}: a pod CIDR covers a protected address; no node source taken from it")
    src = node_source(safe_own, cfg.detected_node_source)
    links.add(
        VxlanLink(
            name=cfg.intra_pool_link,
            vni=cfg.vxlan_vni,
            port=cfg.vxlan_port,
            mtu=mtus.intra_pool,
            mac=mac_from_ipv4(my_overlay),
            local=me.ip,
            underlay_ifname=cfg.underlay_ifname,
        )
    )
    # Site scope: never the source of a packet for another pool (no pool routes overlay addresses back).
    addresses.add(Address(cfg.intra_pool_link, f"{my_overlay}/{overlay_prefix}", SCOPE_SITE))
    if src is not None:
        addresses.add(Address(cfg.intra_pool_link, f"{src}/32"))

    if me.name != ep_node.name:
        gw_mac = mac_from_ipv4(overlay[ep_node.name])
        neighbors.add(Neighbor(cfg.intra_pool_link, cfg.virtual_next_hop, gw_mac))
        # Path health: the gateway's own raven0 address, which this member probes (raven0 floods nothing: without
        # this entry the echo would wait on an ARP reply that never comes).
        neighbors.add(Neighbor(cfg.intra_pool_link, str(overlay[ep_node.name]), gw_mac))
        fdb.add(FdbEntry(cfg.intra_pool_link, gw_mac, ep_node.ip))
        for subnet, _, _ in remote:
            routes.add(
                Route(
                    dst=subnet,
                    table=cfg.table,
                    ifname=cfg.intra_pool_link,
                    gateway=cfg.virtual_next_hop,
                    mtu=mtus.cross_pool_path,
                    src=src,
                )
            )
        # Path health through the gateway: a route for each direct peer's inner address, so the member's `via`
        # probes (from its raven0 address) ride raven0 to the gateway, which forwards them into that peer's SA
        # with its own inner address as source (its `probe_snat`): the peer's kernel answers through the SA.
        direct = _direct_peers(topology, paths)
        for peer in direct:
            routes.add(Route(dst=f"{peer.inner}/32", table=cfg.table, ifname=cfg.intra_pool_link,
                             gateway=cfg.virtual_next_hop, mtu=mtus.cross_pool_path))
        # Only the active gateway may send into raven0 here. Whatever inner source it sends was checked
        # against its peers by its own filter, so any source goes: a failover rewrites one rule, not one
        # per remote subnet, before the FDB moves.
        gw_peer = (ep_node.ip, "0.0.0.0/0", "")
        ingress = _ingress(cfg, routes, tunnel=[], pool=[gw_peer], problems=problems)
        probes = (ProbeTarget("gateway", gw.name, ep_node.name, str(my_overlay), str(overlay[ep_node.name])),
                  *sorted(ProbeTarget("via", peer.name, _node_name(peer), str(my_overlay), str(peer.inner))
                          for peer in direct),
                  *_underlay_probes(gateways, gw, me, direct))
        return PlanResult(
            _state(links, addresses, routes, rules, neighbors, fdb, ipsec, clamp, ingress),
            problems,
            paths,
            role="member",
            gateway=gw.name,
            probes=probes,
        )

    # --- this node is the gateway ---
    for pn in gw.nodes:
        if pn.name == me.name or pn.name not in overlay:
            continue
        addr = overlay[pn.name]
        mac = mac_from_ipv4(addr)
        neighbors.add(Neighbor(cfg.intra_pool_link, str(addr), mac))
        fdb.add(FdbEntry(cfg.intra_pool_link, mac, pn.ip))
        for subnet in pn.subnets:
            if unsafe(subnet, gw.name):
                continue
            routes.add(Route(dst=subnet, table=cfg.return_table, ifname=cfg.intra_pool_link, gateway=str(addr)))
    rules.add(Rule(priority=cfg.return_rule_priority, table=cfg.return_table, iif=cfg.inter_gateway_link))

    links.add(
        VxlanLink(
            name=cfg.inter_gateway_link,
            vni=cfg.tunnel_vni,
            port=cfg.tunnel_port,
            mtu=mtus.inter_gateway,
            mac=mac_from_ipv4(gw.inner),
            local=gw.inner,
            udp_csum=False,  # inside ESP: its ICV protects the packet; a checksum costs a pass over it twice
        )
    )
    addresses.add(Address(cfg.inter_gateway_link, f"{gw.inner}/32", SCOPE_SITE))
    if src is not None:
        addresses.add(Address(cfg.inter_gateway_link, f"{src}/32"))
    clamp.add(cfg.inter_gateway_link)

    peer_probes: list[ProbeTarget] = []
    for p in paths:
        if p.kind != "direct":
            continue
        peer = topology.gateways[p.dst]
        if peer.inner is None:  # cannot happen: active gateways have one
            continue
        peer_mac = mac_from_ipv4(peer.inner)
        neighbors.add(Neighbor(cfg.inter_gateway_link, peer.inner, peer_mac))
        fdb.add(FdbEntry(cfg.inter_gateway_link, peer_mac, peer.inner))
        ipsec.add(_connection(gw, me, peer, p, cfg))
        if cfg.tunnel_encapsulation == "wireguard":
            # WireGuard picks the peer by the packet's destination (allowed IPs: the inner /32): route it in.
            routes.add(Route(dst=f"{peer.inner}/32", table=cfg.table, ifname=cfg.wireguard_link))
        peer_probes.append(ProbeTarget("peer", peer.name, _node_name(peer), gw.inner, peer.inner))
    for name, target in sorted(punched.items()):
        peer = topology.gateways[name]
        if peer.inner is None:  # cannot happen: `_punched` keeps active gateways only
            continue
        peer_mac = mac_from_ipv4(peer.inner)
        neighbors.add(Neighbor(cfg.inter_gateway_link, peer.inner, peer_mac))
        fdb.add(FdbEntry(cfg.inter_gateway_link, peer_mac, peer.inner))
        # Both ends initiate at once towards each other's mapping, from the tunnel port they already use.
        conn = _connection(gw, me, peer, Path(gw.name, name, "direct", initiator=gw.name), cfg)
        ipsec.add(replace(conn, remote_addrs=(target.address,), remote_port=target.port, mutual=True))
        if cfg.tunnel_encapsulation == "wireguard":
            routes.add(Route(dst=f"{peer.inner}/32", table=cfg.table, ifname=cfg.wireguard_link))
        peer_probes.append(ProbeTarget("peer", peer.name, _node_name(peer), gw.inner, peer.inner))
    by_pool: dict[str, list[str]] = {}
    for subnet, nxt, owner in remote:
        by_pool.setdefault(owner, []).append(subnet)
        next_inner = topology.gateways[nxt].inner
        if next_inner is None:  # cannot happen: paths only lead through active gateways
            continue
        routes.add(
            Route(
                dst=subnet,
                table=cfg.table,
                ifname=cfg.inter_gateway_link,
                gateway=next_inner,
                mtu=mtus.cross_pool_path,
                src=src,
            )
        )
        # The transit table (the return table: reached only from raven1): what arrives from a tunnel leaves on a
        # direct link or not at all, so no packet ever crosses a second relay, whatever the gateways' views.
        owner_inner = topology.gateways[owner].inner
        if owner in direct_names and owner_inner is not None:
            routes.add(Route(dst=subnet, table=cfg.return_table, ifname=cfg.inter_gateway_link, gateway=owner_inner,
                             mtu=mtus.cross_pool_path))
        else:
            routes.add(Route(dst=subnet, table=cfg.return_table, ifname=UNREACHABLE))
    # Peers may send from the subnets we route via them (relayed pools included), the subnets of pools whose path
    # towards us may go through them (`routing.relayed`, direct peers with a direct link to that pool only), and
    # their inner address; members from their own pod CIDRs (the return routes) and their overlay address.
    relayed = _relayed_sources(topology, routing, direct_names, by_pool, gw.name)
    for name in punched:  # the far end may move to the direct path before we do: its own subnets come that way
        inner = topology.gateways[name].inner
        if inner is not None and name in by_pool:
            relayed.setdefault(inner, set()).update(by_pool[name])
    tunnel_peers = [(n.ip, f"{n.ip}/32", n.ip) for n in neighbors if n.ifname == cfg.inter_gateway_link]
    pool_peers = [
        (pn.ip, f"{overlay[pn.name]}/32", str(overlay[pn.name]))
        for pn in gw.nodes
        if pn.name != me.name and pn.name in overlay
    ]
    ingress = _ingress(cfg, routes, tunnel=tunnel_peers, pool=pool_peers, problems=problems, extra=relayed)
    snat = ProbeSnat(sources=cfg.overlay_cidr, destinations=cfg.tunnel_cidr, to_source=gw.inner)
    return PlanResult(
        _state(links, addresses, routes, rules, neighbors, fdb, ipsec, clamp, ingress, snat),
        problems,
        paths,
        role="gateway",
        gateway=gw.name,
        probes=tuple(sorted(peer_probes)),
    )


def _connection(gw: GatewayView, me: PoolNode, peer: GatewayView, path: Path, cfg: PlanConfig) -> IPsecConnection:
    initiator = path.initiator == gw.name
    # Insist on the peer's address when we dial it, or when its IKE packets are known to come from it;
    # otherwise (peer under NAT, or behind a LoadBalancer that only works inbound) accept it from
    # anywhere: the peer is still authenticated by its identity and the PSK.
    if peer.address is not None and (initiator or peer.source_predictable):
        remote_addrs: tuple[str, ...] = (peer.address,)
    else:
        remote_addrs = ("%any",)
    # We initiate from the node IP; as responder we also accept IKE sent to our public address, for
    # clouds that put the public IP on the NIC rather than 1:1-NATing it to the node IP.
    local_addrs: tuple[str, ...] = (me.ip,)
    if gw.public_ip is not None and gw.public_ip != me.ip:
        local_addrs += (gw.public_ip,)
    if cfg.ipsec_auth == "cert" and peer.endpoint is not None:
        # Each side proves the node it is with its certificate, and accepts the peer Gateway only from
        # the node that is its active endpoint now: a member node cannot take over another's tunnels.
        local_id, remote_id = node_ike_identity(me.name), node_ike_identity(peer.endpoint.node_name)
    else:
        local_id, remote_id = ike_identity(gw.name), ike_identity(peer.name)
    # WireGuard's peers are nodes (each has its own key): the pair and the peer's key, with that driver only (an
    # IPsec plan stays the same through a failover it does not need to see).
    wg = cfg.tunnel_encapsulation == "wireguard"
    return IPsecConnection(
        name=f"{cfg.vici_conn_prefix}{peer.name}",
        local_id=local_id,
        remote_id=remote_id,
        auth="pubkey" if cfg.ipsec_auth == "cert" else "psk",
        local_addrs=local_addrs,
        remote_addrs=remote_addrs,
        remote_port=peer.port,
        local_ts=f"{gw.inner}/32",  # callers pass active gateways: inner is set
        remote_ts=f"{peer.inner}/32",
        initiator=initiator,
        proposals=cfg.ike_proposals,
        esp_proposals=cfg.esp_proposals,
        local_port=gw.port if wg else DEFAULT_TUNNEL_PORT,
        local_node=me.name if wg else "",
        peer_node=peer.endpoint.node_name if wg and peer.endpoint is not None else "",
        peer_public_key=_published_key(peer) if wg else "",
    )


def _published_key(peer: GatewayView) -> str:
    """The WireGuard public key the peer's active endpoint published ("" when none)."""
    config = peer.endpoint.config if peer.endpoint is not None else None
    return (config or {}).get(ENDPOINT_CONFIG_PUBLIC_KEY, "")


def _state(
    links: set[VxlanLink],
    addresses: set[Address],
    routes: set[Route],
    rules: set[Rule],
    neighbors: set[Neighbor],
    fdb: set[FdbEntry],
    ipsec: set[IPsecConnection],
    clamp: set[str],
    ingress: IngressFilter,
    probe_snat: ProbeSnat | None = None,
) -> NodeNetwork:
    return NodeNetwork(
        links=frozenset(links),
        addresses=frozenset(addresses),
        routes=frozenset(routes),
        rules=frozenset(rules),
        neighbors=frozenset(neighbors),
        fdb=frozenset(fdb),
        ipsec=frozenset(ipsec),
        mss_clamp_ifnames=frozenset(clamp),
        ingress=ingress,
        probe_snat=probe_snat,
    )


def _next_gateway(topology: Topology, path: Path, wanted: str | None, direct: set[str],
                  problems: list[str]) -> str | None:
    """The gateway `path.dst`'s subnets are routed through: the routing choice when the topology allows it (the
    destination itself over a direct link, or a relay with direct links to both ends), else the default path."""
    default = path.next_gateway
    if wanted is None or wanted == default or path.kind == "unreachable":
        return default
    if wanted == path.dst:
        ok = path.dst in direct
    else:
        ok = wanted in direct and wanted in topology.gateways and topology.path(wanted, path.dst).kind == "direct"
    if not ok:
        problems.append(f"routing: {path.dst} via {wanted} is not a usable path here; using {path.describe()}")
        return default
    return wanted


def _relayed_sources(topology: Topology, routing: RouteChoice | None, direct: set[str],
                     by_pool: Mapping[str, Sequence[str]], me: str) -> dict[str, set[str]]:
    """Relay's inner address -> the subnets of pools it may relay to us (it must have a direct link to the pool:
    a relay forwards only on direct links, so anything else from it is not the pool's traffic)."""
    out: dict[str, set[str]] = {}
    if routing is None:
        return out
    for relay, dst in routing.relayed:
        view = topology.gateways.get(relay)
        if relay not in direct or view is None or view.inner is None or dst in (relay, me) or dst not in by_pool:
            continue
        if topology.path(relay, dst).kind != "direct":
            continue
        out.setdefault(view.inner, set()).update(by_pool[dst])
    return out


def _punched(topology: Topology, paths: Sequence[Path], punch: Sequence[PunchTarget],
             problems: list[str]) -> dict[str, PunchTarget]:
    """The punch targets the plan uses: active peers this gateway has no direct path to (the topology relays
    them), one target each (the first named)."""
    relayed = {p.dst for p in paths if p.kind == "relay"}
    out: dict[str, PunchTarget] = {}
    for t in punch:
        view = topology.gateways.get(t.peer)
        if t.peer in out:
            continue
        if t.peer not in relayed or view is None or view.inner is None:
            problems.append(f"nat traversal: punch target {t.peer} is not a relayed active gateway; ignored")
            continue
        out[t.peer] = t
    return out


def _direct_peers(topology: Topology, paths: Sequence[Path]) -> list[GatewayView]:
    """The gateways this node's gateway has a tunnel to (an IPsec SA between the inner addresses)."""
    out = []
    for p in paths:
        peer = topology.gateways[p.dst]
        if p.kind == "direct" and peer.inner is not None:  # active gateways have one
            out.append(peer)
    return out


def _node_name(view: GatewayView) -> str:
    node = view.endpoint_node
    return node.name if node is not None else ""


def _underlay_probes(gateways: Sequence[Gateway], gw: GatewayView, me: PoolNode,
                     direct: Sequence[GatewayView]) -> list[ProbeTarget]:
    """A standby candidate (a tunnel endpoint in its Gateway's spec, not the active one) probes, from its node IP,
    each direct peer's tunnel endpoint address (where its IKE would go if it took over): whether it could do better
    than the active endpoint. A peer without a known address (under NAT: it dials us) cannot be probed."""
    spec = next((g for g in gateways if g.name == gw.name), None)
    if spec is None or not any(ep.node_name == me.name and ep.type == "tunnel" for ep in spec.spec.all_endpoints):
        return []
    return sorted(ProbeTarget("underlay", peer.name, _node_name(peer), me.ip, peer.address)
                  for peer in direct if peer.address is not None)


def _ingress(
    cfg: PlanConfig,
    routes: set[Route],
    *,
    tunnel: list[tuple[str, str, str]],
    pool: list[tuple[str, str, str]],
    problems: list[str],
    extra: Mapping[str, set[str]] | None = None,
) -> IngressFilter:
    """Who may send into raven1 (`tunnel`) and raven0 (`pool`): (outer source, its own inner address, the
    next hop our routes use for it). A sender may use as inner source its own address and every subnet
    routed via that next hop on that link (so the filter follows whatever the plan routes)."""
    via: dict[tuple[str, str], set[str]] = {}
    for r in routes:
        if r.gateway is not None:
            via.setdefault((r.ifname, r.gateway), set()).add(r.dst)
    for nh, subnets in (extra or {}).items():  # more sources of a tunnel peer (by inner address)
        via.setdefault((cfg.inter_gateway_link, nh), set()).update(subnets)
    capacity = mark_capacity(cfg.ingress_mark_mask)
    shift = mark_shift(cfg.ingress_mark_mask)

    def peers(ifname: str, senders: list[tuple[str, str, str]]) -> tuple[IngressPeer, ...]:
        out: list[IngressPeer] = []
        for i, (outer, own, nh) in enumerate(sorted(senders), start=1):
            if i > capacity:
                problems.append(
                    f"ingress filter: more than {capacity} senders on {ifname}; {outer} and later ones are "
                    "refused (widen ingress_mark_mask)"
                )
                break
            out.append(IngressPeer(outer, i << shift, tuple(sorted(via.get((ifname, nh), set()) | {own}))))
        return tuple(out)

    return IngressFilter(
        tunnel_port=cfg.tunnel_port,
        pool_port=cfg.vxlan_port,
        tunnel_ifname=cfg.inter_gateway_link,
        pool_ifname=cfg.intra_pool_link,
        ipsec_ifname=cfg.ipsec_tun_ifname,
        mark_mask=cfg.ingress_mark_mask,
        tunnel=peers(cfg.inter_gateway_link, tunnel),
        pool=peers(cfg.intra_pool_link, pool),
    )
