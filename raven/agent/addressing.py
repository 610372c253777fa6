"""Addresses every agent derives on its own, without talking to anyone: the same inputs give the same
answer on every node, which is what lets a cluster agree on addressing with no coordinator.

- the intra-pool overlay address of a node (raven0): overlay network + the low bits of the node IP;
- a MAC from an IPv4 address (locally administered, so it never collides with a real NIC);
- the stable inner address of each Gateway (raven1, IPsec selectors) from the inner CIDR;
- the IKE identity of a Gateway (PSK mode) and of a node (certificate mode);
- the MTUs of the two VXLAN devices and of the cross-pool path (arithmetic in `raven.dataplane.mtu`).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from raven.dataplane import mtu

# 0x0e: unicast (bit 0 clear), locally administered (bit 1 set); 0x72 is "r" for raven.
MAC_PREFIX = (0x0E, 0x72)


def overlay_address(node_ip: str, overlay_cidr: str) -> ipaddress.IPv4Address:
    """The node's raven0 address: the overlay network's prefix + the node IP's host bits.

    With the default 240.0.0.0/8 this is 240.0.0.0 + the low 24 bits of the node IP (OpenYurt Raven's
    scheme). Raises ValueError for a non-IPv4 node IP.
    """
    ip = ipaddress.IPv4Address(node_ip)
    net = ipaddress.IPv4Network(overlay_cidr)
    host_bits = int(ip) & int(net.hostmask)
    return ipaddress.IPv4Address(int(net.network_address) | host_bits)


def mac_from_ipv4(address: str | ipaddress.IPv4Address) -> str:
    """A MAC that encodes the address: 0e:72:a:b:c:d, so a neighbour entry is checkable by eye."""
    packed = ipaddress.IPv4Address(address).packed
    return ":".join(f"{b:02x}" for b in MAC_PREFIX + tuple(packed))


def ike_identity(gateway_name: str) -> str:
    """The IKE identity of a gateway (local_id/remote_id, PSK owner).

    Per Gateway, not per node, so a failover does not change it. Prefixed so strongSwan always parses it
    as an FQDN identity: a Gateway may legally be named like an IP address ("10.0.0.1"), which strongSwan
    would otherwise parse as an IP identity.
    """
    return f"raven-gw-{gateway_name}"


def node_ike_identity(node_name: str) -> str:
    """A node's IKE identity with --ipsec-auth=cert: the dNSName SAN of its certificate (raven.pki).

    Per node: a peer accepts Gateway G only from the node that is G's active endpoint. Prefixed like
    `ike_identity` so strongSwan parses it as an FQDN identity even for a node named like an address.
    """
    return f"raven-node-{node_name}"


def _hash_slot(name: str, size: int) -> int:
    # sha256, not hash(): the result must be the same in every process on every node.
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % size


@dataclass(frozen=True, order=True)
class GatewayAge:
    """Sort key of a Gateway for address allocation: older first, then by name."""

    # RFC 3339 as the API server writes it ("2026-01-02T03:04:05Z"): sorts as a string. None sorts last.
    missing_timestamp: bool
    created: str
    name: str

    @classmethod
    def of(cls, name: str, created: str | None) -> GatewayAge:
        return cls(created is None, created or "", name)


def allocate_inner_addresses(
    gateways: Iterable[tuple[str, str | None]], inner_cidr: str
) -> tuple[dict[str, ipaddress.IPv4Address], list[str]]:
    """The inner address of every Gateway: {name: address}, plus names that got none (CIDR full).

    `gateways` are (name, creationTimestamp) pairs. Each Gateway's first choice is a hash of its name
    into the CIDR's usable host addresses; collisions are resolved by linear probing in order of age
    (creationTimestamp, name). So:
    - every agent computes the same map from the same Gateway list;
    - a new Gateway (younger than all others) never moves an existing one;
    - removing a Gateway moves nobody, except a younger one that had collided with it (it gets its
      first choice back); with N gateways in a /16 that is a ~N/65534 chance per removal.
    """
    net = ipaddress.IPv4Network(inner_cidr)
    # Skip the network and broadcast addresses where they exist (prefix < 31).
    first = 1 if net.prefixlen < 31 else 0
    size = net.num_addresses - 2 * first
    base = int(net.network_address) + first
    taken: set[int] = set()
    out: dict[str, ipaddress.IPv4Address] = {}
    unallocated: list[str] = []
    ordered = sorted({GatewayAge.of(name, created) for name, created in gateways if name})
    seen: set[str] = set()
    for age in ordered:
        if age.name in seen:  # the same name twice (should not happen): first, i.e. oldest, wins
            continue
        seen.add(age.name)
        if len(taken) >= size:
            unallocated.append(age.name)
            continue
        slot = _hash_slot(age.name, size)
        while slot in taken:
            slot = (slot + 1) % size
        taken.add(slot)
        out[age.name] = ipaddress.IPv4Address(base + slot)
    return out, unallocated


# --- MTU: the arithmetic lives in raven.dataplane.mtu; this names what the plan needs from it ---


@dataclass(frozen=True)
class Mtus:
    intra_pool: int  # raven0
    inter_gateway: int  # raven1: VXLAN inside ESP/UDP
    cross_pool_path: int  # what a packet to a remote subnet can carry, from any node of the pool


def compute_mtus(
    underlay_mtu: int,
    esp_proposals: Sequence[str] = mtu.DEFAULT_ESP_PROPOSALS,
    tunnel_device_mtu: int | None = None,
    path_mtu: int | None = None,
    encapsulation: Literal["esp", "wireguard"] = "esp",
) -> Mtus:
    """raven0, raven1 and the cross-pool path MTU, so that nothing Raven sends is fragmented.

    `underlay_mtu`: the device holding the node IP (raven0's VXLAN and the ESP packets leave by it);
    `tunnel_device_mtu`: a userspace ESP device (libipsec's `ipsec0`) that raven1's VXLAN packets cross
    before they are encrypted; `path_mtu`: the smallest path MTU towards a peer's outer address, which
    caps the ESP packets (raven1), not the intra-pool VXLAN (raven0). `encapsulation`: what carries raven1's
    packets between gateways (ESP, or WireGuard: 60 bytes, whatever the cipher; `tunnel_device_mtu` is then
    not read, the WireGuard device's MTU being the driver's output, `raven.dataplane.wireguard`).
    """
    intra = mtu.raven0_mtu(underlay_mtu)
    esp_mtu = underlay_mtu if path_mtu is None else min(underlay_mtu, path_mtu)
    if encapsulation == "wireguard":
        # The WireGuard device (MTU set by the driver to this same figure) carries raven1's VXLAN packets.
        inter = mtu.wireguard_device_mtu(esp_mtu) - mtu.VXLAN_OVERHEAD
    else:
        inter = mtu.raven1_mtu(esp_mtu, esp_proposals, udp_encap=True, tunnel_device_mtu=tunnel_device_mtu)
    # A non-gateway node's packet crosses raven0 then raven1 (and a relay re-encapsulates the same way).
    return Mtus(intra_pool=intra, inter_gateway=inter, cross_pool_path=min(intra, inter))
