"""The node's network state as plain data: what the agent's plan wants and what the kernel/charon has.

This is the contract between `raven.agent.plan` (pure: cluster view -> `NodeNetwork`) and the
appliers in `raven.dataplane` (read current state, diff, apply). Every object here is one the agent
owns and can recognise as its own: the links `raven0` and `raven1`, routes with protocol `RAVEN_RT_PROTO` in the
agent's tables, rules at the agent's priorities, VICI connections named `raven-*`.

All types are frozen and hashable so a diff is set arithmetic. Addresses and CIDRs are normalised
strings (`str(ipaddress.ip_network(x))`), MACs lower case with colons.

Addressing (see docs/architecture.md, "Data plane"):
- `raven0` (intra-pool VXLAN, VNI 200, UDP 4472): every node in a pool with an active gateway has one,
  with an overlay address derived from its node IP (240.0.0.0/8 + the IP's low 24 bits) and a MAC
  derived from that overlay address. A non-gateway node routes remote subnets via the pool's virtual
  next hop (one fixed address, `POOL_VIRTUAL_NEXT_HOP`) whose neighbour entry points to the active
  gateway's raven0 MAC and whose FDB entry points to the gateway's node IP. A failover moves one
  neighbour and one FDB entry, whatever the number of subnets.
- `raven1` (inter-gateway VXLAN over IPsec): an active gateway holds its gateway's inner address (a
  /32 stable per Gateway, not per node); the IPsec CHILD_SA to a peer protects inner/32 <-> inner/32;
  a remote subnet is routed via the inner address of the gateway it is reached through (direct peer
  or relay). A failover in a remote pool replaces one VICI connection and writes no route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

# Ownership markers (all configurable through AgentConfig; these are the defaults).
RAVEN_RT_PROTO: Final = 250  # route protocol number marking routes the agent owns
RAVEN_TABLE: Final = 9027  # remote subnets (all nodes of a pool with a gateway)
RAVEN_RETURN_TABLE: Final = 9028  # gateway only: the pool's other nodes' subnets, for tunnel traffic
RAVEN_RULE_PRIORITY: Final = 9027
RAVEN_RETURN_RULE_PRIORITY: Final = 9026
INTRA_POOL_LINK: Final = "raven0"
INTER_GATEWAY_LINK: Final = "raven1"
# The WireGuard driver's device (OpenYurt Raven's name), when --vpn-driver=wireguard.
WIREGUARD_LINK: Final = "raven-wg0"
VICI_CONN_PREFIX: Final = "raven-"
# The fixed address non-gateway nodes route through; its neighbour entry names the active gateway.
POOL_VIRTUAL_NEXT_HOP: Final = "169.254.240.1"


@dataclass(frozen=True, order=True)
class VxlanLink:
    name: str
    vni: int
    port: int
    mtu: int
    mac: str
    # The VXLAN's local (source) address: the node IP for raven0, the inner address for raven1.
    local: str
    # The underlay device to bind to (raven0: the device holding the node IP); None lets routing pick.
    underlay_ifname: str | None = None
    # The outer UDP checksum (the kernel computes it in software when the next device cannot offload it, and
    # the receiver verifies it). raven1's packets are inside ESP, whose ICV already covers them: off there.
    # The kernel cannot change it in place (the link is recreated).
    udp_csum: bool = True


# Address scopes (rtnetlink's ifa_scope). MASQUERADE (`inet_select_addr`) takes the first address of universe
# (global) scope of the outgoing device, so the overlay and inner addresses are site scope: never the source of
# a packet for another pool. (Not link scope: charon's kernel-libipsec then finds no local address for the
# CHILD_SA's selector and installs no route: "error installing route with policy".)
SCOPE_GLOBAL: Final = 0
SCOPE_SITE: Final = 200


@dataclass(frozen=True, order=True)
class Address:
    ifname: str
    cidr: str  # "240.0.1.2/8", "241.0.0.3/32"
    scope: int = SCOPE_GLOBAL


# `Route.ifname` of a route of type unreachable (no device, no next hop): what the route reader reports for a route
# without an output device, so a planned one reads back equal.
UNREACHABLE: Final = "#0"


@dataclass(frozen=True, order=True)
class Route:
    dst: str  # a CIDR
    table: int
    ifname: str  # UNREACHABLE: a route of type unreachable
    gateway: str | None = None  # next hop, always onlink on the VXLAN devices
    mtu: int | None = None
    src: str | None = None


@dataclass(frozen=True, order=True)
class Rule:
    priority: int
    table: int
    iif: str | None = None


@dataclass(frozen=True, order=True)
class Neighbor:
    ifname: str
    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class FdbEntry:
    ifname: str
    mac: str
    dst: str  # the remote VTEP's underlay address


@dataclass(frozen=True, order=True)
class IPsecConnection:
    """One IKEv2 connection with one CHILD_SA, to one peer gateway (route-based: inner/32 <-> inner/32)."""

    name: str  # VICI_CONN_PREFIX + peer gateway name
    local_id: str
    remote_id: str
    local_addrs: tuple[str, ...]  # ("%any",) or addresses
    remote_addrs: tuple[str, ...]  # ("%any",) when the peer is under NAT and we only respond
    remote_port: int
    local_ts: str  # our inner /32
    remote_ts: str  # the peer's inner /32
    initiator: bool  # start the SA ourselves (and restart it on DPD/close) or only respond
    proposals: tuple[str, ...] = ("aes256-sha256-modp2048",)
    esp_proposals: tuple[str, ...] = ("aes256-sha256",)
    # "psk": both ids are Gateway identities, proven by the cluster PSK. "pubkey": both ids are node
    # identities (the local node, the peer Gateway's active endpoint), proven by certificates of the cluster CA.
    auth: Literal["psk", "pubkey"] = "psk"
    # For the WireGuard driver (not part of charon's config): the port this gateway listens on, this node, the
    # peer Gateway's active endpoint node and the WireGuard public key it published (base64, "" when none).
    local_port: int = 4500
    local_node: str = ""
    peer_node: str = ""
    peer_public_key: str = ""
    # The peer initiates this connection too, at the same time (a NAT-punched pair, both ends `initiator`): charon
    # then does not re-establish an SA the peer deleted (the duplicate of a simultaneous initiation, which one end
    # deletes; raven.dataplane.ipsec.duplicates_to_end), and an SA gone for good is re-initiated by the driver.
    mutual: bool = False


@dataclass(frozen=True, order=True)
class IngressPeer:
    """A sender the overlay accepts VXLAN packets from, and the inner sources it may use.

    `outer`: the outer (VXLAN) source address: a peer gateway's inner address on the tunnel port, a
    node IP on the pool port. `mark`: the value (within `IngressFilter.mark_mask`) its packets carry from
    the outer UDP packet to the decapsulated one. `sources`: CIDRs the decapsulated packets may come from.
    """

    outer: str
    mark: int
    sources: tuple[str, ...]


@dataclass(frozen=True)
class IngressFilter:
    """What may enter the overlay through the VXLAN sockets (see `raven.dataplane.ingress`).

    `tunnel`: peers on the inter-gateway port (decrypted by an IPsec SA only); `pool`: nodes on the
    intra-pool port. A port whose link is not planned has no peers and is closed to everyone.
    """

    tunnel_port: int
    pool_port: int
    tunnel_ifname: str
    pool_ifname: str
    # strongSwan kernel-libipsec's TUN device: packets read from it were decrypted by charon.
    ipsec_ifname: str
    mark_mask: int
    tunnel: tuple[IngressPeer, ...] = ()
    pool: tuple[IngressPeer, ...] = ()


@dataclass(frozen=True)
class ProbeSnat:
    """At an active gateway: members' `via` probes (ICMP from an overlay address in `sources` to a peer gateway's
    inner address in `destinations`) leave with the gateway's inner address `to_source` (see
    `raven.dataplane.probenat`), so they match the SA's selectors and the peer's kernel can answer them."""

    sources: str  # the overlay CIDR (members' raven0 addresses)
    destinations: str  # the tunnel CIDR (gateways' inner addresses)
    to_source: str  # this gateway's inner address


@dataclass(frozen=True)
class NodeNetwork:
    """Everything Raven wants on one node. The empty state means "no Raven state at all"."""

    links: frozenset[VxlanLink] = field(default_factory=frozenset)
    addresses: frozenset[Address] = field(default_factory=frozenset)
    routes: frozenset[Route] = field(default_factory=frozenset)
    rules: frozenset[Rule] = field(default_factory=frozenset)
    neighbors: frozenset[Neighbor] = field(default_factory=frozenset)
    fdb: frozenset[FdbEntry] = field(default_factory=frozenset)
    ipsec: frozenset[IPsecConnection] = field(default_factory=frozenset)
    # Devices on which TCP MSS is clamped to the path MTU for forwarded traffic.
    mss_clamp_ifnames: frozenset[str] = field(default_factory=frozenset)
    # Who may send into raven0/raven1 (None: no filter, only with no links).
    ingress: IngressFilter | None = None
    # At an active gateway: the source NAT of its members' via probes (None elsewhere).
    probe_snat: ProbeSnat | None = None

    @property
    def empty(self) -> bool:
        return not (
            self.links
            or self.addresses
            or self.routes
            or self.rules
            or self.neighbors
            or self.fdb
            or self.ipsec
            or self.mss_clamp_ifnames
            or self.ingress is not None
            or self.probe_snat is not None
        )
