"""The kernel WireGuard's generic-netlink messages, in the style of `raven.dataplane.rtnl` (pure encoding and
decoding; no socket here).

Where the kernel has WireGuard, a device is configured over generic netlink (family "wireguard",
include/uapi/linux/wireguard.h) instead of wireguard-go's UAPI socket. The driver's diff
(`raven.dataplane.wireguard.set_lines`) is expressed in UAPI lines; `encode_set_device` turns the same lines into
one WG_CMD_SET_DEVICE message, and `parse_device` turns WG_CMD_GET_DEVICE answers (a dump: a device with many
peers spans several messages, a peer's allowed IPs may continue in the next one) into the same `DeviceInfo` the
UAPI parser gives, so the diff is one piece of code for both data planes. Checked against pyroute2's WireGuard
message classes (an independent encoder/decoder of the same spec, dev-only) in tests/unit/test_wgnetlink.py.
Also here: the rtnetlink messages creating a kernel WireGuard device and reading a link's kind. The sockets, the
family lookup and the choice between the kernel and wireguard-go: `raven.dataplane.wgkernel`.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Final

from raven.dataplane.rtnl import (
    _IFINFOMSG,
    _RTA,
    CREATE,
    IFF_UP,
    IFLA_IFNAME,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    RTM_NEWLINK,
    RouteMsg,
    _attr,
    attrs,
    text,
)
from raven.dataplane.wireguard import DeviceInfo, PeerInfo

GENL_ID_CTRL: Final = 0x10
CTRL_CMD_GETFAMILY: Final = 3
CTRL_ATTR_FAMILY_ID: Final = 1
CTRL_ATTR_FAMILY_NAME: Final = 2
WG_GENL_NAME: Final = "wireguard"
WG_GENL_VERSION: Final = 1
WG_CMD_GET_DEVICE: Final = 0
WG_CMD_SET_DEVICE: Final = 1

WGDEVICE_A_IFINDEX: Final = 1
WGDEVICE_A_IFNAME: Final = 2
WGDEVICE_A_PRIVATE_KEY: Final = 3
WGDEVICE_A_PUBLIC_KEY: Final = 4
WGDEVICE_A_FLAGS: Final = 5
WGDEVICE_A_LISTEN_PORT: Final = 6
WGDEVICE_A_FWMARK: Final = 7
WGDEVICE_A_PEERS: Final = 8
WGDEVICE_F_REPLACE_PEERS: Final = 1

WGPEER_A_PUBLIC_KEY: Final = 1
WGPEER_A_PRESHARED_KEY: Final = 2
WGPEER_A_FLAGS: Final = 3
WGPEER_A_ENDPOINT: Final = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: Final = 5
WGPEER_A_LAST_HANDSHAKE_TIME: Final = 6
WGPEER_A_RX_BYTES: Final = 7
WGPEER_A_TX_BYTES: Final = 8
WGPEER_A_ALLOWEDIPS: Final = 9
WGPEER_F_REMOVE_ME: Final = 1
WGPEER_F_REPLACE_ALLOWEDIPS: Final = 2

WGALLOWEDIP_A_FAMILY: Final = 1
WGALLOWEDIP_A_IPADDR: Final = 2
WGALLOWEDIP_A_CIDR_MASK: Final = 3

NLA_F_NESTED: Final = 0x8000
_GENL: Final = struct.Struct("=BBH")
_SOCKADDR_IN: Final = struct.Struct("=H2s4s8x")  # family (host order), port (network order), address, zero


def _nested(kind: int, children: Iterable[bytes]) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(children))


def encode_get_family(name: str = WG_GENL_NAME) -> RouteMsg:
    """CTRL_CMD_GETFAMILY: the answer carries the family's id (CTRL_ATTR_FAMILY_ID), the message type of its
    requests."""
    body = _GENL.pack(CTRL_CMD_GETFAMILY, 1, 0) + _attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    return RouteMsg(GENL_ID_CTRL, NLM_F_REQUEST, body)


def family_id(answer: bytes) -> int | None:
    """The family id in a CTRL_CMD_NEWFAMILY answer's payload (genl header, then attributes)."""
    raw = attrs(answer, _GENL.size).get(CTRL_ATTR_FAMILY_ID)
    return int(struct.unpack_from("=H", raw)[0]) if raw is not None and len(raw) >= 2 else None


def encode_get_device(family: int, ifname: str) -> RouteMsg:
    body = _GENL.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0) + _attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0")
    return RouteMsg(family, NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP, body)


def _endpoint(value: str) -> bytes:
    host, _, port = value.rpartition(":")
    return _SOCKADDR_IN.pack(socket.AF_INET, struct.pack("!H", int(port)), socket.inet_aton(host))


def _allowed_ip(index: int, cidr: str) -> bytes:
    addr, _, mask = cidr.partition("/")
    return _nested(index, (_attr(WGALLOWEDIP_A_FAMILY, struct.pack("=H", socket.AF_INET)),
                           _attr(WGALLOWEDIP_A_IPADDR, socket.inet_aton(addr)),
                           _attr(WGALLOWEDIP_A_CIDR_MASK, bytes([int(mask or 32)]))))


def _parse_set(lines: Sequence[str]) -> tuple[list[bytes], int, list[bytes]]:
    """UAPI `set` lines as (device attributes, device flags, one encoded peer body per peer, in order)."""
    device: list[bytes] = []
    flags = 0
    peers: list[list[bytes]] = []
    peer_flags: list[int] = []
    allowed: list[list[bytes]] = []
    for line in lines:
        key, _, value = line.partition("=")
        if key == "public_key":
            peers.append([_attr(WGPEER_A_PUBLIC_KEY, bytes.fromhex(value))])
            peer_flags.append(0)
            allowed.append([])
        elif not peers:
            if key == "private_key":
                device.append(_attr(WGDEVICE_A_PRIVATE_KEY, bytes.fromhex(value)))
            elif key == "listen_port":
                device.append(_attr(WGDEVICE_A_LISTEN_PORT, struct.pack("=H", int(value))))
            elif key == "fwmark":
                device.append(_attr(WGDEVICE_A_FWMARK, struct.pack("=I", int(value))))
            elif key == "replace_peers" and value == "true":
                flags |= WGDEVICE_F_REPLACE_PEERS
            else:
                raise ValueError(f"UAPI device line not encodable: {key}")
        elif key == "remove" and value == "true":
            peer_flags[-1] |= WGPEER_F_REMOVE_ME
        elif key == "preshared_key":
            peers[-1].append(_attr(WGPEER_A_PRESHARED_KEY, bytes.fromhex(value)))
        elif key == "endpoint":
            peers[-1].append(_attr(WGPEER_A_ENDPOINT, _endpoint(value)))
        elif key == "persistent_keepalive_interval":
            peers[-1].append(_attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", int(value))))
        elif key == "replace_allowed_ips" and value == "true":
            peer_flags[-1] |= WGPEER_F_REPLACE_ALLOWEDIPS
        elif key == "allowed_ip":
            allowed[-1].append(_allowed_ip(len(allowed[-1]), value))
        else:
            raise ValueError(f"UAPI peer line not encodable: {key}")
    bodies = []
    for peer, pflags, ips in zip(peers, peer_flags, allowed, strict=True):
        body = list(peer)
        if pflags:
            body.append(_attr(WGPEER_A_FLAGS, struct.pack("=I", pflags)))
        if ips:
            body.append(_nested(WGPEER_A_ALLOWEDIPS, ips))
        bodies.append(b"".join(body))
    return device, flags, bodies


def _set_message(family: int, ifname: str, device: Sequence[bytes], flags: int, peers: Sequence[bytes]) -> RouteMsg:
    attrs_ = [_attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0"), *device]
    if flags:
        attrs_.append(_attr(WGDEVICE_A_FLAGS, struct.pack("=I", flags)))
    if peers:
        attrs_.append(_nested(WGDEVICE_A_PEERS, (_nested(i, (body,)) for i, body in enumerate(peers))))
    message = _GENL.pack(WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0) + b"".join(attrs_)
    return RouteMsg(family, NLM_F_REQUEST | NLM_F_ACK, message)


def encode_set_device(family: int, ifname: str, lines: Sequence[str]) -> RouteMsg:
    """WG_CMD_SET_DEVICE carrying what the UAPI `set` lines say (`raven.dataplane.wireguard.set_lines`: hex keys,
    IPv4 endpoints and allowed IPs), in one message (a few hundred peers at most: `encode_set_messages`)."""
    device, flags, peers = _parse_set(lines)
    return _set_message(family, ifname, device, flags, peers)


# A nested attribute's length is 16 bits: WGDEVICE_A_PEERS cannot hold more than 64 KiB. `wg` splits a
# configuration at its socket buffer's size (a page or 8 KiB); 32 KiB is ~200 of Raven's peers per message.
PEERS_PER_MESSAGE_BYTES: Final = 32 << 10


def encode_set_messages(family: int, ifname: str, lines: Sequence[str],
                        budget: int = PEERS_PER_MESSAGE_BYTES) -> list[RouteMsg]:
    """The `set` lines as WG_CMD_SET_DEVICE messages whose peers fit `budget` bytes each (as `wg` does for a
    large configuration): the device's own attributes in the first, whole peers (Raven's have one allowed IP)
    in each; the kernel applies them in order, each as one change. [] when the lines are []."""
    if not lines:
        return []
    device, flags, peers = _parse_set(lines)
    chunks: list[list[bytes]] = [[]]
    size = 0
    for body in peers:
        cost = len(body) + 8  # the entry's nest header, padding included (bodies are 4-aligned)
        if chunks[-1] and size + cost > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(body)
        size += cost
    return [_set_message(family, ifname, device if i == 0 else (), flags if i == 0 else 0, chunk)
            for i, chunk in enumerate(chunks)]


def encode_link_create(ifname: str, mtu: int) -> RouteMsg:
    """RTM_NEWLINK (exclusive) of a kernel WireGuard device (`ip link add IFNAME type wireguard`), up; the
    kernel loads the module on demand and answers EOPNOTSUPP when it has none."""
    info = _attr(IFLA_INFO_KIND, b"wireguard\0")
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + b"".join(
        (_attr(IFLA_IFNAME, ifname.encode() + b"\0"), _attr(IFLA_MTU, struct.pack("=I", mtu)),
         _attr(IFLA_LINKINFO, info)))
    return RouteMsg(RTM_NEWLINK, CREATE, body)


def link_kind(payload: bytes) -> str | None:
    """The IFLA_INFO_KIND of an RTM_NEWLINK answer ("wireguard", "tun" for wireguard-go's...); None: no kind."""
    info = attrs(payload, _IFINFOMSG.size).get(IFLA_LINKINFO)
    return text(attrs(info, 0).get(IFLA_INFO_KIND)) if info is not None else None


def _list(raw: bytes) -> list[bytes]:
    """The entries of a nested array attribute, in order."""
    out: list[bytes] = []
    a = 0
    while a + 4 <= len(raw):
        alen, _kind = _RTA.unpack_from(raw, a)
        if alen < 4:
            break
        out.append(raw[a + 4 : a + alen])
        a += (alen + 3) & ~3
    return out


def _u(raw: bytes | None, fmt: str) -> int:
    return int(struct.unpack_from(fmt, raw)[0]) if raw is not None and len(raw) >= struct.calcsize(fmt) else 0


def parse_device(payloads: Iterable[bytes]) -> DeviceInfo:
    """WG_CMD_GET_DEVICE answers (each a payload: genl header, then attributes) as one `DeviceInfo`, keys in hex
    as UAPI reports them; a peer split over two messages is merged."""
    private = ""
    port = 0
    peers: dict[str, PeerInfo] = {}
    for payload in payloads:
        top = attrs(payload, _GENL.size)
        if WGDEVICE_A_PRIVATE_KEY in top:
            private = top[WGDEVICE_A_PRIVATE_KEY].hex()
        if WGDEVICE_A_LISTEN_PORT in top:
            port = _u(top[WGDEVICE_A_LISTEN_PORT], "=H")
        for entry in _list(top.get(WGDEVICE_A_PEERS, b"")):
            a = attrs(entry, 0)
            pub = a.get(WGPEER_A_PUBLIC_KEY, b"").hex()
            ips = set()
            for ip in _list(a.get(WGPEER_A_ALLOWEDIPS, b"")):
                ipa = attrs(ip, 0)
                if _u(ipa.get(WGALLOWEDIP_A_FAMILY), "=H") == socket.AF_INET:
                    mask = ipa.get(WGALLOWEDIP_A_CIDR_MASK, b"\x20")[0]
                    ips.add(f"{socket.inet_ntoa(ipa[WGALLOWEDIP_A_IPADDR][:4])}/{mask}")
            endpoint = None
            raw = a.get(WGPEER_A_ENDPOINT)
            if raw is not None and len(raw) >= 8 and _u(raw, "=H") == socket.AF_INET:
                endpoint = f"{socket.inet_ntoa(raw[4:8])}:{struct.unpack_from('!H', raw, 2)[0]}"
            handshake = _u(a.get(WGPEER_A_LAST_HANDSHAKE_TIME), "=q")  # struct __kernel_timespec: tv_sec first
            psk = a.get(WGPEER_A_PRESHARED_KEY)
            old = peers.get(pub)
            if old is not None:  # the rest of a peer begun in the previous message
                peers[pub] = PeerInfo(pub, old.preshared_key, old.endpoint, old.keepalive,
                                      old.allowed_ips | ips, old.last_handshake, old.rx_bytes, old.tx_bytes)
                continue
            peers[pub] = PeerInfo(pub, psk.hex() if psk is not None else "", endpoint,
                                  _u(a.get(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL), "=H"), frozenset(ips),
                                  handshake, _u(a.get(WGPEER_A_RX_BYTES), "=Q"), _u(a.get(WGPEER_A_TX_BYTES), "=Q"))
    zero = "0" * 64
    return DeviceInfo("" if private == zero else private, port, peers)


def ifname_of(payload: bytes) -> str | None:
    return text(attrs(payload, _GENL.size).get(WGDEVICE_A_IFNAME))
