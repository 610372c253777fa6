"""Find the node's underlay: the device holding the node IP and its MTU (what every tunnel MTU derives from),
and the default gateways of the main routing table (addresses the agent's routes must never cover)."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute

from raven.log import kv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Underlay:
    ifname: str
    mtu: int


async def detect_underlay(node_ip: str) -> Underlay | None:
    """The device that carries `node_ip` locally, or None when no local device has it."""
    async with AsyncIPRoute() as ipr:
        index: int | None = None
        for msg in await _collect(await ipr.addr("dump")):
            if msg.get("IFA_ADDRESS") == node_ip or msg.get("IFA_LOCAL") == node_ip:
                index = int(msg["index"])
                break
        if index is None:
            log.warning("node IP is on no local device; MTU falls back to the default", extra=kv(node_ip=node_ip))
            return None
        links = await _collect(await ipr.link("get", index=index))
        link = links[0]
        return Underlay(ifname=str(link.get("IFLA_IFNAME")), mtu=int(link.get("IFLA_MTU")))


async def default_gateways() -> tuple[str, ...]:
    """The IPv4 next hops of the main table's default routes (multipath ones included), sorted."""
    out: set[str] = set()
    async with AsyncIPRoute() as ipr:
        for msg in await _collect(await ipr.route("dump", family=socket.AF_INET, table=254)):
            if msg.get("dst_len") != 0:
                continue
            gateway = msg.get("RTA_GATEWAY")
            if gateway:
                out.add(str(gateway))
            for hop in msg.get("RTA_MULTIPATH") or ():
                gateway = hop.get("RTA_GATEWAY")
                if gateway:
                    out.add(str(gateway))
    return tuple(sorted(out))


async def _collect(result: Any) -> list[Any]:
    """pyroute2 0.9 returns either a list or an async iterator depending on the call; accept both."""
    if isinstance(result, list):
        return result
    return [m async for m in result]
