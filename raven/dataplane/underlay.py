"""Find the node's underlay (a kernel read): the device holding the node IP and its MTU, whence every MTU."""

from __future__ import annotations

import asyncio
import logging
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
