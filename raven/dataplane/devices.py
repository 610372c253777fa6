"""Read the MTUs of the devices an encrypted packet crosses on this node (netlink, cheap: a few requests).

What caps raven1 besides the underlay and ESP's own overhead:

- a userspace ESP device: strongSwan's kernel-libipsec reads the packets to encrypt from a TUN device
  (`ipsec0`, MTU `charon.plugins.kernel-libipsec.mtu`, 1400 by default); a packet larger than its MTU is
  fragmented by the kernel before charon sees it. Charon may start after the agent, so this is read again
  before every plan (one RTM_GETLINK by name);
- the path MTU towards each peer's outer address: the kernel's route for it (`ip route get ADDR`), whose
  MTU is a PMTU exception learnt from ICMP, a route `mtu` metric, or else its device's MTU.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

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
    tunnel_names = tuple(tunnel_names)
    if ifname is None and not tunnel_names:
        return None, None
    async with AsyncIPRoute() as ipr:
        mtu: int | None = None
        if ifname is not None:
            link = await _link_by_name(ipr, ifname)
            mtu = None if link is None else int(link.get("IFLA_MTU"))
        for name in tunnel_names:
            link = await _link_by_name(ipr, name)
            if link is None:
                continue
            info = link.get("IFLA_LINKINFO")
            kind = info.get("IFLA_INFO_KIND") if info is not None else None
            if kind not in (None, "tun"):  # a device of another kind that happens to share the name
                continue
            return mtu, TunnelDevice(ifname=name, mtu=int(link.get("IFLA_MTU")))
    return mtu, None


async def path_mtus(addresses: Iterable[str]) -> dict[str, int]:
    """The kernel's path MTU towards each address (`ip route get`): a cached PMTU or route `mtu` metric,
    else the MTU of the device the route leaves by. Unroutable addresses are left out."""
    out: dict[str, int] = {}
    by_oif: dict[Any, Any] = {}  # device MTUs, read once per call
    async with AsyncIPRoute() as ipr:
        for addr in addresses:
            try:
                msgs = await _collect(await ipr.route("get", dst=addr))
            except NetlinkError as e:
                if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                    continue
                raise
            if not msgs:
                continue
            msg = msgs[0]
            metrics = msg.get("RTA_METRICS")
            mtu = metrics.get("RTAX_MTU") if metrics is not None else None
            if not mtu:
                oif = msg.get("RTA_OIF")
                if oif is not None and oif not in by_oif:
                    links = await _collect(await ipr.link("get", index=int(oif)))
                    by_oif[oif] = links[0].get("IFLA_MTU") if links else None
                mtu = by_oif.get(oif)
            if mtu:
                out[addr] = int(mtu)
    return out


async def _link_by_name(ipr: AsyncIPRoute, name: str) -> Any:
    try:
        links = await _collect(await ipr.link("get", ifname=name))
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return links[0] if links else None


async def _collect(result: Any) -> list[Any]:
    """pyroute2 0.9 returns either a list or an async iterator depending on the call; accept both."""
    if isinstance(result, list):
        return result
    return [m async for m in result]
