"""Find the node's underlay (kernel reads): the device holding the node IP and its MTU, whence every MTU; and the
main table's default gateways, which no Raven route may cover (the plan's safety net)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass

from raven.dataplane import rtnl
from raven.log import kv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Underlay:
    ifname: str
    mtu: int


def _find(node_ip: str, netns: str | None) -> Underlay | None:
    """Blocking: two dumps over Raven's netlink socket in the node's (or `netns`'s) namespace."""
    rt = rtnl.RouteSocket(netns)
    try:
        index = None
        for p in rt.dump(rtnl.RTM_GETADDR, rtnl.ADDR_DUMP):
            a = rtnl.attrs(p, rtnl.IFADDRMSG.size)
            if node_ip in (rtnl.ipv4(a.get(rtnl.IFA_ADDRESS)), rtnl.ipv4(a.get(rtnl.IFA_LOCAL))):
                index = rtnl.IFADDRMSG.unpack_from(p)[4]
                break
        if index is None:
            return None
        for p in rt.dump(rtnl.RTM_GETLINK, rtnl.LINK_DUMP):
            if rtnl.IFINFOMSG.unpack_from(p)[2] == index:
                a = rtnl.attrs(p, rtnl.IFINFOMSG.size)
                return Underlay(ifname=rtnl.text(a.get(rtnl.IFLA_IFNAME)) or "", mtu=rtnl.u32(a.get(rtnl.IFLA_MTU), 0))
        return None
    finally:
        rt.close()


async def detect_underlay(node_ip: str, netns: str | None = None) -> Underlay | None:
    """The device that carries `node_ip` locally, or None when no local device has it (`netns`: tests)."""
    found = await asyncio.to_thread(_find, node_ip, netns)
    if found is None:
        log.warning("node IP is on no local device; MTU falls back to the default", extra=kv(node_ip=node_ip))
    return found


# RTA_MULTIPATH: a list of rtnexthop (len u16, flags u8, hops u8, ifindex i32) each followed by its attributes.
_RTA_MULTIPATH = 9
_RTNEXTHOP = struct.Struct("=HBBi")
_MAIN_TABLE = 254


def _default_gateways(netns: str | None) -> tuple[str, ...]:
    """Blocking: one route dump of the main table over Raven's netlink socket."""
    out: set[str] = set()
    rt = rtnl.RouteSocket(netns)
    try:
        body = rtnl.RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        for p in rt.dump(rtnl.RTM_GETROUTE, body):
            family, dst_len, _src_len, _tos, table = rtnl.RTMSG.unpack_from(p)[:5]
            a = rtnl.attrs(p, rtnl.RTMSG.size)
            if family != socket.AF_INET or dst_len != 0 or rtnl.u32(a.get(rtnl.RTA_TABLE), table) != _MAIN_TABLE:
                continue
            if (gw := rtnl.ipv4(a.get(rtnl.RTA_GATEWAY))) is not None:
                out.add(gw)
            hops = a.get(_RTA_MULTIPATH) or b""
            off = 0
            while off + _RTNEXTHOP.size <= len(hops):
                length = _RTNEXTHOP.unpack_from(hops, off)[0]
                if length < _RTNEXTHOP.size:
                    break
                hop = rtnl.attrs(hops[off : off + length], _RTNEXTHOP.size)
                if (gw := rtnl.ipv4(hop.get(rtnl.RTA_GATEWAY))) is not None:
                    out.add(gw)
                off += (length + 3) & ~3
    finally:
        rt.close()
    return tuple(sorted(out))


async def default_gateways(netns: str | None = None) -> tuple[str, ...]:
    """The IPv4 next hops of the main table's default routes (multipath ones included), sorted."""
    return await asyncio.to_thread(_default_gateways, netns)
