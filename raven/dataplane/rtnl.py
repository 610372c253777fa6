"""Raven's one netlink path: a lean NETLINK_ROUTE socket, the encoders for every kernel object the
agent writes (VXLAN links, IPv4 addresses, routes, rules, neighbours, FDB entries, per-device IPv4
sysctls) and a filtered route dump.

Why not pyroute2 (measured in tests/benchmarks/bench_dataplane.py, see docs/architecture.md, "Netlink:
one path"): its message classes cost ~100 us per route to encode even without a socket, so 10,000 remote
subnets take a second or more; here each route is one join of cached bytes (about 1 us). Many messages
go to the kernel in one `send`, and every message asks for an ACK carrying its sequence number, so a
failure is reported per object (errno and the kernel's extended-ACK text), never swallowed. Dumps ask
the kernel to filter by table and protocol (NETLINK_GET_STRICT_CHK) and parse only the attributes
Raven writes.

The socket is blocking; callers run it off the event loop (`KernelApplier` uses one worker thread).
Everything is IPv4: Raven's pod and inner addresses are IPv4.
"""

from __future__ import annotations

import errno
import functools
import operator
import os
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from raven.dataplane.netns import in_netns

NETLINK_ROUTE: Final = 0
NETLINK_GENERIC: Final = 16
SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_EXT_ACK: Final = 11
NETLINK_GET_STRICT_CHK: Final = 12

NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
RTM_SETLINK: Final = 19
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26

NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_DUMP: Final = 0x300
NLM_F_REPLACE: Final = 0x100
NLM_F_EXCL: Final = 0x200
NLM_F_CREATE: Final = 0x400
NLM_F_ACK_TLVS: Final = 0x200
NLMSGERR_ATTR_MSG: Final = 1

RTA_DST: Final = 1
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PREFSRC: Final = 7
RTA_METRICS: Final = 8
RTA_TABLE: Final = 15
RTM_F_LOOKUP_TABLE: Final = 0x1000
RTM_F_FIB_MATCH: Final = 0x2000
RTAX_MTU: Final = 2
RTN_UNSPEC: Final = 0
RTN_UNICAST: Final = 1
RTN_UNREACHABLE: Final = 7
RT_SCOPE_UNIVERSE: Final = 0
RT_SCOPE_SITE: Final = 253
RT_SCOPE_NOWHERE: Final = 255
RT_TABLE_COMPAT: Final = 252
RTNH_F_ONLINK: Final = 4

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")

# Messages per send: small enough that the ACKs (one skb each) fit the receive buffer.
BATCH: Final = 256

# Add/replace flags.
CREATE: Final = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REPLACE: Final = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
DELETE: Final = NLM_F_REQUEST | NLM_F_ACK


# One IPv4 route as the kernel reports it (only what Raven writes), as a plain tuple (cheapest to
# build): (table, dst "10.0.0.0/24", device name or "#<index>", gateway, mtu, prefsrc). The order is
# `raven.dataplane.state.Route`'s key order, so a diff compares these with tuples taken from
# desired routes, without building objects.
RawRoute = tuple[int, str, str, "str | None", "int | None", "str | None"]


class RouteMsg(NamedTuple):
    """One encoded route request; `body` is everything after the netlink header."""

    msg_type: int
    flags: int
    body: bytes


@dataclass(frozen=True)
class MsgError:
    index: int  # position in the list handed to `RouteSocket.send`
    errno: int
    message: str  # strerror plus the kernel's extended ACK text when it sent one


def _attr(rta_type: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _RTA.pack(length, rta_type) + payload + b"\0" * ((4 - length % 4) % 4)


# IPv4 per-device configuration (net.ipv4.conf.<dev>.*) over rtnetlink.
IFLA_AF_SPEC: Final = 26
IFLA_INET_CONF: Final = 1
IPV4_DEVCONF_RP_FILTER: Final = 8  # index in the kernel's enum (1-based: FORWARDING is 1)
_IFINFOMSG: Final = struct.Struct("=BxHiII")


def encode_inet_devconf(ifindex: int, settings: Mapping[int, int]) -> RouteMsg:
    """RTM_SETLINK that sets IPv4 per-device sysctls (e.g. rp_filter) of one link.

    The same effect as writing /proc/sys/net/ipv4/conf/<dev>/<key>, but it needs only CAP_NET_ADMIN:
    a non-privileged container has /proc/sys mounted read-only, and the agent must work there.
    """
    conf = b"".join(_attr(key, struct.pack("=I", value)) for key, value in sorted(settings.items()))
    af_spec = _attr(IFLA_AF_SPEC, _attr(socket.AF_INET, _attr(IFLA_INET_CONF, conf)))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + af_spec
    return RouteMsg(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, body)


# Links, addresses, rules, neighbours and FDB entries: few per node, so plain packing is enough.
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_NEWNEIGH: Final = 28
RTM_DELNEIGH: Final = 29
RTM_NEWRULE: Final = 32
RTM_DELRULE: Final = 33
NLM_F_APPEND: Final = 0x800
APPEND: Final = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND

IFF_UP: Final = 0x1
IFLA_ADDRESS: Final = 1
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_LINKINFO: Final = 18
IFLA_INFO_KIND: Final = 1
IFLA_INFO_DATA: Final = 2
IFLA_VXLAN_ID: Final = 1
IFLA_VXLAN_LINK: Final = 3
IFLA_VXLAN_LOCAL: Final = 4
IFLA_VXLAN_LEARNING: Final = 7
IFLA_VXLAN_PORT: Final = 15
IFLA_VXLAN_UDP_CSUM: Final = 18
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
_IFADDRMSG: Final = struct.Struct("=BBBBI")
FRA_IIFNAME: Final = 3
FRA_PRIORITY: Final = 6
FRA_TABLE: Final = 15
FRA_PROTOCOL: Final = 21
FR_ACT_TO_TBL: Final = 1
_FIB_RULE_HDR: Final = struct.Struct("=BBBBBBBBI")
NDA_DST: Final = 1
NDA_LLADDR: Final = 2
NUD_PERMANENT: Final = 0x80
NTF_SELF: Final = 0x02
_NDMSG: Final = struct.Struct("=BxxxiHBB")


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _str(text: str) -> bytes:
    return text.encode() + b"\0"


def encode_link_create_vxlan(
    name: str, *, vni: int, port: int, local: str, mac: str, mtu: int, underlay_ifindex: int | None,
    udp_csum: bool = True,
) -> RouteMsg:
    """RTM_NEWLINK (exclusive) of an up VXLAN device without learning: the FDB is Raven's alone."""
    data = [
        _attr(IFLA_VXLAN_ID, _U32.pack(vni)),
        _attr(IFLA_VXLAN_LOCAL, socket.inet_aton(local)),
        _attr(IFLA_VXLAN_PORT, struct.pack("!H", port)),
        _attr(IFLA_VXLAN_LEARNING, b"\0"),
        _attr(IFLA_VXLAN_UDP_CSUM, bytes([udp_csum])),
    ]
    if underlay_ifindex is not None:
        data.append(_attr(IFLA_VXLAN_LINK, _U32.pack(underlay_ifindex)))
    info = _attr(IFLA_INFO_KIND, _str("vxlan")) + _attr(IFLA_INFO_DATA, b"".join(data))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP) + b"".join(
        (_attr(IFLA_IFNAME, _str(name)), _attr(IFLA_ADDRESS, _mac(mac)), _attr(IFLA_MTU, _U32.pack(mtu)),
         _attr(IFLA_LINKINFO, info))
    )  # fmt: skip
    return RouteMsg(RTM_NEWLINK, CREATE, body)


def encode_link_set(ifindex: int, *, mtu: int) -> RouteMsg:
    """RTM_NEWLINK on an existing device: set its MTU and bring it up."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, IFF_UP, IFF_UP) + _attr(IFLA_MTU, _U32.pack(mtu))
    return RouteMsg(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body)


def encode_route_get(dst: str, fib_match: bool = False) -> RouteMsg:
    """RTM_GETROUTE for one destination (`ip route get DST`): the kernel answers with the route it would use.
    `fib_match` (`ip route get fibmatch DST`): the FIB entry that matched, with its own prefix, table and protocol
    (RTM_F_LOOKUP_TABLE: the table the lookup found it in; without it the kernel answers "main")."""
    flags = RTM_F_FIB_MATCH | RTM_F_LOOKUP_TABLE if fib_match else 0
    body = _RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, flags) + _attr(RTA_DST, socket.inet_aton(dst))
    return RouteMsg(RTM_GETROUTE, NLM_F_REQUEST, body)


def encode_link_delete(ifindex: int) -> RouteMsg:
    return RouteMsg(RTM_DELLINK, DELETE, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0))


def encode_link_get(name: str) -> RouteMsg:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _str(name))
    return RouteMsg(RTM_GETLINK, NLM_F_REQUEST, body)


def encode_link_get_index(ifindex: int) -> RouteMsg:
    return RouteMsg(RTM_GETLINK, NLM_F_REQUEST, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0))


def encode_addr(msg_type: int, ifindex: int, cidr: str, scope: int = RT_SCOPE_UNIVERSE) -> RouteMsg:
    """RTM_NEWADDR (exclusive) or RTM_DELADDR of one IPv4 address ("a.b.c.d/len") with its scope."""
    ip, _, plen = cidr.partition("/")
    raw = socket.inet_aton(ip)
    body = _IFADDRMSG.pack(socket.AF_INET, int(plen or 32), 0, scope, ifindex)
    body += _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
    return RouteMsg(msg_type, CREATE if msg_type == RTM_NEWADDR else DELETE, body)


def encode_rule(msg_type: int, *, priority: int, table: int, protocol: int, iif: str | None) -> RouteMsg:
    """RTM_NEWRULE (exclusive) or RTM_DELRULE: look up `table`, tagged with Raven's protocol (deletes match it)."""
    hdr = _FIB_RULE_HDR.pack(socket.AF_INET, 0, 0, 0, table if table < 256 else RT_TABLE_COMPAT, 0, 0, FR_ACT_TO_TBL, 0)
    attrs = [_attr(FRA_PRIORITY, _U32.pack(priority)), _attr(FRA_TABLE, _U32.pack(table)),
             _attr(FRA_PROTOCOL, bytes([protocol]))]  # fmt: skip
    if iif is not None:
        attrs.append(_attr(FRA_IIFNAME, _str(iif)))
    return RouteMsg(msg_type, CREATE if msg_type == RTM_NEWRULE else DELETE, hdr + b"".join(attrs))


def encode_neigh(msg_type: int, flags: int, ifindex: int, ip: str, mac: str | None, *, fdb: bool = False) -> RouteMsg:
    """A permanent IPv4 neighbour (ip -> mac) or, with `fdb`, a VXLAN FDB entry (mac -> remote ip)."""
    family, ntf = (socket.AF_BRIDGE, NTF_SELF) if fdb else (socket.AF_INET, 0)
    body = _NDMSG.pack(family, ifindex, NUD_PERMANENT, ntf, 0) + _attr(NDA_DST, socket.inet_aton(ip))
    if mac is not None:
        body += _attr(NDA_LLADDR, _mac(mac))
    return RouteMsg(msg_type, flags, body)


def encode_route(
    msg_type: int,
    flags: int,
    *,
    dst: str,
    table: int,
    protocol: int,
    oif: int = 0,
    gateway: str | None = None,
    prefsrc: str | None = None,
    mtu: int | None = None,
    unreachable: bool = False,
) -> RouteMsg:
    """Encode one RTM_NEWROUTE/RTM_DELROUTE request (without the netlink header). `unreachable`: a route of type
    unreachable (no device, no next hop: the packet is dropped with an ICMP unreachable).

    Routes that differ only in their destination share one cached template; encoding patches in
    the destination's length and address (a join instead of a dozen packs per route).
    """
    addr, _, plen = dst.partition("/")
    mid, tail = _route_template(msg_type, table, protocol, oif, gateway, prefsrc, mtu, unreachable)
    dst_len = int(plen) if plen else 32
    if not 0 <= dst_len <= 32:
        raise ValueError(f"invalid prefix length in {dst!r}")
    return RouteMsg(msg_type, flags, b"".join((_FAMILY_INET, _LEN_BYTES[dst_len], mid, socket.inet_aton(addr), tail)))


_FAMILY_INET: Final = bytes([socket.AF_INET])
_PLEN_SUFFIX: Final = [f"/{n}" for n in range(256)]
_LEN_BYTES: Final = [bytes([n]) for n in range(33)]


@functools.lru_cache(maxsize=4096)
def _route_template(
    msg_type: int, table: int, protocol: int, oif: int, gateway: str | None, prefsrc: str | None, mtu: int | None,
    unreachable: bool = False,
) -> tuple[bytes, bytes]:
    """(rtmsg after dst_len + RTA_TABLE + RTA_DST header, attributes after the destination)."""
    rtm_type = RTN_UNICAST
    if msg_type == RTM_DELROUTE:
        # Any type (RTN_UNSPEC): the kernel matches a delete's type when one is given, and an unreachable route
        # is deleted by (table, dst, protocol) like the others.
        scope, rtm_flags, rtm_type = RT_SCOPE_NOWHERE, 0, RTN_UNSPEC
    elif unreachable:
        scope, rtm_flags, rtm_type = RT_SCOPE_UNIVERSE, 0, RTN_UNREACHABLE
    elif gateway is not None:
        # Next hops sit on VXLAN devices without a connected prefix for them: onlink.
        scope, rtm_flags = RT_SCOPE_UNIVERSE, RTNH_F_ONLINK
    else:
        scope, rtm_flags = RT_SCOPE_SITE, 0
    rtmsg = _RTMSG.pack(
        socket.AF_INET, 0, 0, 0, table if table < 256 else RT_TABLE_COMPAT, protocol, scope, rtm_type, rtm_flags
    )
    mid = rtmsg[2:] + _attr(RTA_TABLE, _U32.pack(table)) + _RTA.pack(8, RTA_DST)
    tail: list[bytes] = []
    if msg_type != RTM_DELROUTE:
        if oif:
            tail.append(_attr(RTA_OIF, _U32.pack(oif)))
        if gateway is not None:
            tail.append(_attr(RTA_GATEWAY, socket.inet_aton(gateway)))
        if prefsrc is not None:
            tail.append(_attr(RTA_PREFSRC, socket.inet_aton(prefsrc)))
        if mtu is not None:
            tail.append(_attr(RTA_METRICS, _attr(RTAX_MTU, _U32.pack(mtu))))
    return mid, b"".join(tail)


class NetlinkError(OSError):
    """The socket itself failed (not one message): the outcome of a batch is unknown."""


class RouteSocket:
    """A blocking NETLINK_ROUTE socket, optionally opened inside a named network namespace (`protocol`
    NETLINK_GENERIC: the same request/ACK/dump handling for generic netlink, `raven.dataplane.wgkernel`)."""

    def __init__(self, netns: str | None = None, protocol: int = NETLINK_ROUTE) -> None:
        # A socket belongs to the namespace it was created in; in_netns never creates one (a typo fails).
        with in_netns(netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self._sock = sock
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
            sock.setsockopt(SOL_NETLINK, opt, 1)
        try:
            # root: a receive buffer large enough for a dump burst and a batch of ACKs.
            sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((0, 0))
        self._pid: int = sock.getsockname()[0]
        self._seq = 0
        self._buf = bytearray(1 << 20)
        self._layouts: dict[int, _Layout] = {}

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self, count: int) -> int:
        start = self._seq + 1
        self._seq = (self._seq + count) & 0x7FFFFFFF
        return start

    def _recv(self) -> memoryview:
        try:
            n = self._sock.recv_into(self._buf)
        except OSError as exc:
            raise NetlinkError(exc.errno, f"netlink receive failed: {os.strerror(exc.errno or 0)}") from exc
        return memoryview(self._buf)[:n]

    def send(self, msgs: Sequence[RouteMsg]) -> list[MsgError]:
        """Send every message (in batches), wait for each one's ACK; return the failures."""
        errors: list[MsgError] = []
        for start in range(0, len(msgs), BATCH):
            chunk = msgs[start : start + BATCH]
            seq0 = self._next_seq(len(chunk))
            out = bytearray()
            for i, m in enumerate(chunk):
                out += _NLMSGHDR.pack(16 + len(m.body), m.msg_type, m.flags, (seq0 + i) & 0x7FFFFFFF, 0)
                out += m.body
            try:
                self._sock.send(out)
            except OSError as exc:
                raise NetlinkError(exc.errno, f"netlink send failed: {os.strerror(exc.errno or 0)}") from exc
            pending = len(chunk)
            while pending:
                view = self._recv()
                off = 0
                while off + 16 <= len(view):
                    length, mtype, mflags, seq, _pid = _NLMSGHDR.unpack_from(view, off)
                    if mtype == NLMSG_ERROR:
                        index = (seq - seq0) & 0x7FFFFFFF
                        if index < len(chunk):
                            pending -= 1
                            (err,) = _ERR.unpack_from(view, off + 16)
                            if err:
                                text = _error_text(view, off, length, mflags, -err)
                                errors.append(MsgError(start + index, -err, text))
                    off += (length + 3) & ~3
                    if length == 0:
                        break
        return errors

    def link_index(self, name: str) -> int | None:
        """The ifindex of the device named `name`, None when there is none."""
        payload = self.get(encode_link_get(name), absent=(errno.ENODEV,))
        return None if payload is None else int(_IFINFOMSG.unpack_from(payload)[2])

    def get(self, m: RouteMsg, absent: tuple[int, ...] = ()) -> bytes | None:
        """One request with one answer (an RTM_GET* without NLM_F_DUMP): the answer's payload, or None when the
        kernel answered with one of the `absent` errors (no such device, no route...)."""
        seq = self._next_seq(1)
        self._sock.send(_NLMSGHDR.pack(16 + len(m.body), m.msg_type, m.flags, seq, 0) + m.body)
        while True:
            view = self._recv()
            off = 0
            while off + 16 <= len(view):
                length, mtype, _mflags, mseq, _pid = _NLMSGHDR.unpack_from(view, off)
                if length < 16:
                    break
                if mseq == seq:
                    if mtype == NLMSG_ERROR:
                        (err,) = _ERR.unpack_from(view, off + 16)
                        if err == 0:
                            off += (length + 3) & ~3
                            continue
                        if -err in absent:
                            return None
                        raise NetlinkError(-err, f"request {m.msg_type}: {os.strerror(-err)}")
                    return bytes(view[off + 16 : off + length])
                off += (length + 3) & ~3

    def dump(self, msg_type: int, body: bytes) -> list[bytes]:
        """A whole dump (`msg_type` a RTM_GET*, `body` its filter header): each reply's payload, retried when
        the kernel reports the dump was interrupted by a change."""
        for _attempt in range(5):
            seq = self._next_seq(1)
            self._sock.send(_NLMSGHDR.pack(16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            out: list[bytes] = []
            interrupted = False
            done = False
            while not done:
                data = bytes(self._recv())
                off = 0
                while off + 16 <= len(data):
                    length, mtype, mflags, mseq, _pid = _NLMSGHDR.unpack_from(data, off)
                    if length < 16:
                        break
                    if mseq == seq:
                        interrupted = interrupted or bool(mflags & NLM_F_DUMP_INTR)
                        if mtype == NLMSG_DONE:
                            done = True
                        elif mtype == NLMSG_ERROR:
                            (err,) = _ERR.unpack_from(data, off + 16)
                            if err:
                                raise NetlinkError(-err, f"dump {msg_type}: {os.strerror(-err)}")
                            done = True
                        else:
                            out.append(data[off + 16 : off + length])
                    off += (length + 3) & ~3
            if not interrupted:
                return out
        raise NetlinkError(errno.EINTR, f"dump {msg_type} kept being interrupted")

    def dump_routes(self, table: int, protocol: int, ifnames: Mapping[int, str]) -> list[RawRoute]:
        """All IPv4 routes of `table` with `protocol` (the kernel filters: strict dump checking)."""
        for _attempt in range(5):
            routes, interrupted = self._dump_once(table, protocol, ifnames)
            if not interrupted:
                return routes
        raise NetlinkError(errno.EINTR, f"route dump of table {table} kept being interrupted")

    def _dump_once(self, table: int, protocol: int, ifnames: Mapping[int, str]) -> tuple[list[RawRoute], bool]:
        seq = self._next_seq(1)
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, protocol, 0, 0, 0) + _attr(RTA_TABLE, _U32.pack(table))
        self._sock.send(_NLMSGHDR.pack(16 + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        out: list[RawRoute] = []
        interrupted = False
        unpack_hdr = _NLMSGHDR.unpack_from
        layouts = self._layouts
        while True:
            data = bytes(self._recv())
            off = 0
            end = len(data)
            while off + 16 <= end:
                length, mtype, mflags, mseq, _pid = unpack_hdr(data, off)
                if length < 16:
                    break
                if mseq == seq:
                    if mflags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if mtype == NLMSG_DONE:
                        return out, interrupted
                    if mtype == NLMSG_ERROR:
                        (err,) = _ERR.unpack_from(data, off + 16)
                        if err:
                            raise NetlinkError(-err, f"route dump of table {table}: {os.strerror(-err)}")
                        return out, interrupted
                    # Routes of one shape share one attribute layout: decode it with a single
                    # cached struct, checked against the attribute headers it expects.
                    layout = layouts.get(length)
                    route = layout.decode(data, off, ifnames) if layout is not None else None
                    if route is None:
                        layout = _Layout.learn(data, off, length)
                        layouts[length] = layout
                        route = layout.decode(data, off, ifnames)
                    if route is not None and route[0] == table:
                        out.append(route)
                off += (length + 3) & ~3


def attrs(payload: bytes, start: int) -> dict[int, bytes]:
    """The attributes from `start` on, by type (the first of each type; nested ones stay raw)."""
    out: dict[int, bytes] = {}
    a = start
    while a + 4 <= len(payload):
        alen, atype = _RTA.unpack_from(payload, a)
        if alen < 4:
            break
        out.setdefault(atype & 0x3FFF, payload[a + 4 : a + alen])  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        a += (alen + 3) & ~3
    return out


def u32(raw: bytes | None, default: int) -> int:
    return int(_U32.unpack_from(raw)[0]) if raw is not None and len(raw) >= 4 else default


def u8(raw: bytes | None, default: int) -> int:
    return raw[0] if raw else default


def text(raw: bytes | None) -> str | None:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw is not None else None


def mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else ""


def ipv4(raw: bytes | None) -> str | None:
    return socket.inet_ntoa(raw) if raw is not None and len(raw) == 4 else None


# Dump requests (the kernel's strict checking wants the header zero but for the family).
RTM_GETADDR: Final = 22
RTM_GETRULE: Final = 34
RTM_GETNEIGH: Final = 30
LINK_DUMP: Final = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
ADDR_DUMP: Final = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
RULE_DUMP: Final = _FIB_RULE_HDR.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
NEIGH_DUMP: Final = _NDMSG.pack(socket.AF_INET, 0, 0, 0, 0)
FDB_DUMP: Final = _NDMSG.pack(socket.AF_BRIDGE, 0, 0, 0, 0)
IFINFOMSG: Final = _IFINFOMSG
RTMSG: Final = _RTMSG
IFADDRMSG: Final = _IFADDRMSG
FIB_RULE_HDR: Final = _FIB_RULE_HDR
NDMSG: Final = _NDMSG


_ADDR_ATTRS: Final = frozenset({RTA_DST, RTA_GATEWAY, RTA_PREFSRC})


class _Layout:
    """The attribute layout of one route message shape, decoded by one generated function.

    Messages of one shape (same attributes, same sizes) differ only in values, so the decoder is
    a single `struct` unpack plus a check that every attribute header is the expected one; a
    message that does not match falls back to learning its own layout. The generated source is
    built from integers only (offsets, attribute types), never from message contents.
    """

    __slots__ = ("decode",)

    def __init__(self, decode: Callable[[bytes, int, Mapping[int, str]], RawRoute | None]) -> None:
        self.decode = decode

    @classmethod
    def learn(cls, data: bytes, off: int, length: int) -> _Layout:
        fmt = ["=16x", "x", "B", "2x", "B", "3x", "4x"]  # nlmsghdr; rtmsg: dst_len -> v[0], table -> v[1]
        idx = 2
        header_at: list[int] = []
        expected: list[int] = []
        fields: dict[int, int] = {}
        metric_mtu_at: int | None = None
        a = off + 28
        msg_end = off + length
        while a + 4 <= msg_end:
            alen, atype = _RTA.unpack_from(data, a)
            if alen < 4 or a + alen > msg_end:
                break
            pad = ((alen + 3) & ~3) - alen
            fmt.append("HH")
            header_at += [idx, idx + 1]
            expected += [int(alen), int(atype)]
            idx += 2
            if atype in _ADDR_ATTRS and alen == 8:
                fmt.append("4s")
            elif atype in (RTA_OIF, RTA_TABLE) and alen == 8:
                fmt.append("I")
            elif atype == RTA_METRICS and alen == 12 and _RTA.unpack_from(data, a + 4) == (8, RTAX_MTU):
                fmt.append("HHI")  # the usual single metric: mtu
                header_at += [idx, idx + 1]
                expected += [8, RTAX_MTU]
                metric_mtu_at = idx + 2
                idx += 2
            else:
                fmt.append(f"{alen - 4}s")
            fields[atype] = idx
            idx += 1
            if pad:
                fmt.append(f"{pad}x")
            a += alen + pad
        if msg_end > a:
            fmt.append(f"{msg_end - a}x")

        def at(atype: int, conv: str, default: str) -> str:
            return conv.format(f"v[{fields[atype]}]") if atype in fields else default

        if RTA_METRICS in fields:
            mtu = f"v[{metric_mtu_at}]" if metric_mtu_at is not None else f"mtu_of(v[{fields[RTA_METRICS]}])"
        else:
            mtu = "None"
        src = (
            "def decode(data, off, names):\n"
            "    try:\n"
            "        v = unpack(data, off)\n"
            "    except struct_error:\n"
            "        return None\n"
            "    if headers(v) != expected:\n"
            "        return None\n"
            f"    oif = {at(RTA_OIF, '{}', '0')}\n"
            "    return (\n"
            f"        {at(RTA_TABLE, '{}', 'v[1]')},\n"
            f"        {at(RTA_DST, 'ntoa({})', repr('0.0.0.0'))} + suffix[v[0]],\n"
            "        names.get(oif) or '#' + str(oif),\n"
            f"        {at(RTA_GATEWAY, 'ntoa({})', 'None')},\n"
            f"        {mtu},\n"
            f"        {at(RTA_PREFSRC, 'ntoa({})', 'None')},\n"
            "    )\n"
        )
        scope: dict[str, object] = {
            "unpack": struct.Struct("".join(fmt)).unpack_from,
            "struct_error": struct.error,
            "ntoa": socket.inet_ntoa,
            # Headers come in (length, type) pairs, so itemgetter always returns a tuple here.
            "headers": operator.itemgetter(*header_at) if header_at else (lambda v: ()),
            "expected": tuple(expected),
            "suffix": _PLEN_SUFFIX,
            "mtu_of": metric_mtu,
        }
        exec(compile(src, "<rtnl route layout>", "exec"), scope)
        decode = scope["decode"]
        assert callable(decode)
        return cls(decode)


def metric_mtu(raw: bytes) -> int | None:
    m = 0
    while m + 4 <= len(raw):
        mlen, mt = _RTA.unpack_from(raw, m)
        if mlen < 4:
            break
        if mt == RTAX_MTU and mlen >= 8:
            return int(_U32.unpack_from(raw, m + 4)[0])
        m += (mlen + 3) & ~3
    return None


def _error_text(view: memoryview, off: int, length: int, mflags: int, err: int) -> str:
    text = os.strerror(err)
    if mflags & NLM_F_ACK_TLVS:
        # nlmsgerr = error(4) + the request's header (16, CAP_ACK trims the payload), then TLVs.
        a = off + 16 + 4 + 16
        end = off + length
        while a + 4 <= end:
            alen, atype = _RTA.unpack_from(view, a)
            if alen < 4:
                break
            if atype == NLMSGERR_ATTR_MSG:
                text += ": " + bytes(view[a + 4 : a + alen]).rstrip(b"\0").decode(errors="replace")
            a += (alen + 3) & ~3
    return text
