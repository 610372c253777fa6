"""Read the MTUs of the devices an encrypted packet crosses on this node (netlink, cheap: a few requests,
over a minimal NETLINK_ROUTE client of its own: no pyroute2, no dependency on another module's socket).

What caps raven1 besides the underlay and ESP's own overhead:

- a userspace ESP device: strongSwan's kernel-libipsec reads the packets to encrypt from a TUN device
  (`ipsec0`, MTU `charon.plugins.kernel-libipsec.mtu`, 1400 by default); a packet larger than its MTU is
  fragmented by the kernel before charon sees it. Charon may start after the agent, so this is read again
  before every plan (one RTM_GETLINK by name);
- the path MTU towards each peer's outer address: the kernel's route for it (`ip route get ADDR`), whose
  MTU is a PMTU exception learnt from ICMP, a route `mtu` metric, or else its device's MTU.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

# The TUN device of strongSwan's kernel-libipsec (its name is fixed in libipsec: "ipsec%d", first free).
LIBIPSEC_DEVICES = ("ipsec0",)


@dataclass(frozen=True)
class TunnelDevice:
    ifname: str
    mtu: int


async def tunnel_device(names: Iterable[str] = LIBIPSEC_DEVICES) -> TunnelDevice | None:
    """The first of `names` that exists here (a TUN device, up or not), with its MTU; None when none does."""
    return (await read_links(None, names))[1]


async def link_mtu(ifname: str) -> int | None:
    """The MTU of `ifname`, None when it does not exist."""
    return (await read_links(ifname, ()))[0]


async def read_links(
    ifname: str | None, tunnel_names: Iterable[str] = LIBIPSEC_DEVICES
) -> tuple[int | None, TunnelDevice | None]:
    """The MTU of `ifname` (None: absent or not asked) and the TUN device among `tunnel_names`, over one socket."""
    names = tuple(tunnel_names)
    if ifname is None and not names:
        return None, None
    return await asyncio.to_thread(_read_links, ifname, names)


async def path_mtus(addresses: Iterable[str]) -> dict[str, int]:
    """The kernel's path MTU towards each address (`ip route get`): a cached PMTU or route `mtu` metric,
    else the MTU of the device the route leaves by. Unroutable addresses are left out."""
    return await asyncio.to_thread(_path_mtus, tuple(addresses))


# --- a minimal NETLINK_ROUTE client: one request, one answer (no dumps); blocking, run in a thread ---

_NLMSG: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTMSG: Final = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTA: Final = struct.Struct("=HH")
_NLMSG_ERROR: Final = 2
_NLM_F_REQUEST: Final = 1
_RTM_GETLINK: Final = 18
_RTM_GETROUTE: Final = 26
_IFLA_IFNAME: Final = 3
_IFLA_MTU: Final = 4
_IFLA_LINKINFO: Final = 18
_IFLA_INFO_KIND: Final = 1
_RTA_DST: Final = 1
_RTA_OIF: Final = 4
_RTA_METRICS: Final = 8
_RTAX_MTU: Final = 2


class _Rtnl:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.settimeout(5.0)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, msg_type: int, body: bytes) -> bytes | None:
        """The answer's payload (after the netlink header); None for ENODEV/ENOENT/ENETUNREACH-like errors."""
        self.seq += 1
        self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), msg_type, _NLM_F_REQUEST, self.seq, 0) + body)
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _NLMSG.size <= len(data):
                length, mtype, _flags, seq, _pid = _NLMSG.unpack_from(data, off)
                if length < _NLMSG.size:
                    break
                payload = data[off + _NLMSG.size : off + length]
                off += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if mtype == _NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", payload)
                    if err == 0:
                        continue
                    if -err in (errno.ENODEV, errno.ENOENT, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                        return None
                    raise OSError(-err, f"netlink request {msg_type}: {errno.errorcode.get(-err, -err)}")
                return payload


def _attrs(payload: bytes, start: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = start
    while off + _RTA.size <= len(payload):
        length, rtype = _RTA.unpack_from(payload, off)
        if length < _RTA.size:
            break
        out.setdefault(rtype & 0x3FFF, payload[off + _RTA.size : off + length])
        off += (length + 3) & ~3
    return out


def _attr(rtype: int, value: bytes) -> bytes:
    raw = _RTA.pack(_RTA.size + len(value), rtype) + value
    return raw + b"\0" * (-len(raw) % 4)


def _u32(raw: bytes | None) -> int | None:
    return struct.unpack_from("=I", raw)[0] if raw is not None and len(raw) >= 4 else None


def _link(rt: _Rtnl, name: str) -> tuple[str | None, int] | None:
    """(kind, mtu) of the device `name`, None when there is none."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(_IFLA_IFNAME, name.encode() + b"\0")
    payload = rt.request(_RTM_GETLINK, body)
    if payload is None:
        return None
    a = _attrs(payload, _IFINFOMSG.size)
    kind = None
    if (info := a.get(_IFLA_LINKINFO)) is not None and (raw := _attrs(info, 0).get(_IFLA_INFO_KIND)) is not None:
        kind = raw.rstrip(b"\0").decode(errors="replace")
    return kind, _u32(a.get(_IFLA_MTU)) or 0


def _link_mtu_by_index(rt: _Rtnl, index: int) -> int | None:
    payload = rt.request(_RTM_GETLINK, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0))
    return None if payload is None else _u32(_attrs(payload, _IFINFOMSG.size).get(_IFLA_MTU))


def _read_links(ifname: str | None, names: tuple[str, ...]) -> tuple[int | None, TunnelDevice | None]:
    rt = _Rtnl()
    try:
        mtu = None
        if ifname is not None and (found := _link(rt, ifname)) is not None:
            mtu = found[1]
        for name in names:
            found = _link(rt, name)
            # A device of another kind that happens to share the name is not libipsec's.
            if found is not None and found[0] in (None, "tun"):
                return mtu, TunnelDevice(ifname=name, mtu=found[1])
        return mtu, None
    finally:
        rt.close()


def _path_mtus(addresses: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    if not addresses:
        return out
    by_oif: dict[int, int | None] = {}  # device MTUs, read once per call
    rt = _Rtnl()
    try:
        for addr in addresses:
            try:
                dst = socket.inet_aton(addr)
            except OSError:
                continue
            body = _RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + _attr(_RTA_DST, dst)
            payload = rt.request(_RTM_GETROUTE, body)
            if payload is None:
                continue
            a = _attrs(payload, _RTMSG.size)
            metrics = a.get(_RTA_METRICS)
            mtu = _u32(_attrs(metrics, 0).get(_RTAX_MTU)) if metrics is not None else None
            if not mtu and (oif := _u32(a.get(_RTA_OIF))) is not None:
                if oif not in by_oif:
                    by_oif[oif] = _link_mtu_by_index(rt, oif)
                mtu = by_oif[oif]
            if mtu:
                out[addr] = mtu
        return out
    finally:
        rt.close()
