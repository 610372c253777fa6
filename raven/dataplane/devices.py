"""Read the MTUs of the devices an encrypted packet crosses on this node (a few netlink requests over Raven's
one netlink path, `raven.dataplane.rtnl`).

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
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from raven.dataplane import rtnl

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


async def address_within(cidrs: Iterable[str], skip_ifnames: Iterable[str] = ()) -> str | None:
    """An IPv4 address this node holds inside one of `cidrs` (its network and broadcast addresses excluded) on
    a device not in `skip_ifnames`, lowest first; None when there is none (one RTM_GETADDR dump)."""
    nets = []
    for cidr in cidrs:
        try:
            nets.append(ipaddress.IPv4Network(cidr))
        except ValueError:
            continue
    if not nets:
        return None
    return await asyncio.to_thread(_address_within, tuple(nets), frozenset(skip_ifnames))


# --- blocking reads, run in a worker thread -----------------------------------------------------------------

_ABSENT = (errno.ENODEV, errno.ENOENT, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL)


def _link(rt: rtnl.RouteSocket, name: str) -> tuple[str | None, int] | None:
    """(kind, mtu) of the device `name`, None when there is none."""
    payload = rt.get(rtnl.encode_link_get(name), absent=_ABSENT)
    if payload is None:
        return None
    a = rtnl.attrs(payload, rtnl.IFINFOMSG.size)
    kind = None
    if (info := a.get(rtnl.IFLA_LINKINFO)) is not None:
        kind = rtnl.text(rtnl.attrs(info, 0).get(rtnl.IFLA_INFO_KIND))
    return kind, rtnl.u32(a.get(rtnl.IFLA_MTU), 0)


def _read_links(ifname: str | None, names: tuple[str, ...]) -> tuple[int | None, TunnelDevice | None]:
    rt = rtnl.RouteSocket()
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
    by_oif: dict[int, int] = {}  # device MTUs, read once per call
    rt = rtnl.RouteSocket()
    try:
        for addr in addresses:
            try:
                msg = rtnl.encode_route_get(addr)
            except OSError:  # not an IPv4 address
                continue
            payload = rt.get(msg, absent=_ABSENT)
            if payload is None:
                continue
            a = rtnl.attrs(payload, rtnl.RTMSG.size)
            metrics = a.get(rtnl.RTA_METRICS)
            mtu = rtnl.metric_mtu(metrics) if metrics is not None else None
            if not mtu and (oif := rtnl.u32(a.get(rtnl.RTA_OIF), 0)):
                if oif not in by_oif:
                    link = rt.get(rtnl.encode_link_get_index(oif), absent=_ABSENT)
                    by_oif[oif] = 0 if link is None else rtnl.u32(
                        rtnl.attrs(link, rtnl.IFINFOMSG.size).get(rtnl.IFLA_MTU), 0)
                mtu = by_oif[oif]
            if mtu:
                out[addr] = mtu
        return out
    finally:
        rt.close()


def _address_within(nets: tuple[ipaddress.IPv4Network, ...], skip: frozenset[str]) -> str | None:
    rt = rtnl.RouteSocket()
    try:
        names = {hdr[2]: rtnl.text(rtnl.attrs(p, rtnl.IFINFOMSG.size).get(rtnl.IFLA_IFNAME)) or ""
                 for p in rt.dump(rtnl.RTM_GETLINK, rtnl.LINK_DUMP) for hdr in (rtnl.IFINFOMSG.unpack_from(p),)}
        found = []
        for p in rt.dump(rtnl.RTM_GETADDR, rtnl.ADDR_DUMP):
            index = rtnl.IFADDRMSG.unpack_from(p)[4]
            if names.get(index, "") in skip:
                continue
            ip = rtnl.ipv4(rtnl.attrs(p, rtnl.IFADDRMSG.size).get(rtnl.IFA_LOCAL))
            if ip is None:
                continue
            addr = ipaddress.IPv4Address(ip)
            if any(addr in n and addr not in (n.network_address, n.broadcast_address) for n in nets):
                found.append(addr)
        return str(min(found)) if found else None
    finally:
        rt.close()
