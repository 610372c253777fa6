"""Read the node's Raven-owned kernel state into an `Observed` (what `raven.dataplane.diff` compares).

Ownership (`Ownership`, defaults from `raven.dataplane.state`): the links named exactly as planned
(`raven0`, `raven1`; not a prefix) and everything on them (IPv4 addresses, permanent neighbours,
permanent FDB entries); routes with the owned protocol number in the owned tables; rules at the owned
priorities carrying the owned protocol; the MSS chain. Foreign routes and rules in the same tables are
never read as ours, so never deleted.

Everything is read over `raven.dataplane.rtnl` on the applier's worker thread: routes (thousands) from a
dump the kernel filters by table and protocol, decoded straight into tuples; the few links, addresses,
rules, neighbours and FDB entries from plain dumps filtered here. The MSS chain (iptables) is read
meanwhile on its own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from raven.dataplane import rtnl
from raven.dataplane.diff import Observed, RouteRow
from raven.dataplane.mssclamp import MssState
from raven.dataplane.state import (
    INTER_GATEWAY_LINK,
    INTRA_POOL_LINK,
    RAVEN_RETURN_RULE_PRIORITY,
    RAVEN_RETURN_TABLE,
    RAVEN_RT_PROTO,
    RAVEN_RULE_PRIORITY,
    RAVEN_TABLE,
    Address,
    FdbEntry,
    Neighbor,
    NodeNetwork,
    Rule,
    VxlanLink,
)


class KernelError(RuntimeError):
    """Reading the kernel state failed: nothing was applied."""


@dataclass(frozen=True)
class Ownership:
    """How the agent recognises its own kernel objects."""

    rt_proto: int = RAVEN_RT_PROTO
    tables: frozenset[int] = frozenset({RAVEN_TABLE, RAVEN_RETURN_TABLE})
    rule_priorities: frozenset[int] = frozenset({RAVEN_RULE_PRIORITY, RAVEN_RETURN_RULE_PRIORITY})
    # Exact names, not a prefix: a user's `ravenbr0` is not ours and must never be deleted.
    link_names: frozenset[str] = frozenset({INTRA_POOL_LINK, INTER_GATEWAY_LINK})
    mss_chain: str = "RAVEN-MSS"

    def owns_link(self, name: str) -> bool:
        return name in self.link_names


async def read_observed(
    rt: rtnl.RouteSocket,
    owner: Ownership,
    worker: concurrent.futures.Executor,
    read_mss: Callable[[], Awaitable[MssState]],
) -> tuple[Observed, dict[str, int]]:
    """The owned state, and every device's ifindex by name (the writer resolves devices with it).

    All netlink reads run on `worker` (the socket is blocking and not thread-safe); iptables meanwhile."""
    mss_job = asyncio.ensure_future(read_mss())
    try:
        loop = asyncio.get_running_loop()
        read = functools.partial(_read_netlink, rt, owner)
        links, down, addresses, rules, neighbors, fdb, rows, ifindex = await loop.run_in_executor(worker, read)
        mss: MssState = await mss_job
    finally:
        # Never leave a call running that the next pass could race.
        if not mss_job.done():
            await asyncio.wait([mss_job])
    base = NodeNetwork(
        links=frozenset(links),
        addresses=frozenset(addresses),
        rules=frozenset(rules),
        neighbors=frozenset(neighbors),
        fdb=frozenset(fdb),
        mss_clamp_ifnames=mss.ifnames if (mss.ifnames is not None and mss.jumped) else frozenset(),
    )
    unexpected = mss.ifnames is None or (bool(mss.ifnames) and not mss.jumped)
    observed = Observed(base=base, route_rows=rows, links_down=frozenset(down), mss_unexpected=unexpected)
    return observed, ifindex


_Read = tuple[
    list[VxlanLink], set[str], list[Address], list[Rule], list[Neighbor], list[FdbEntry], frozenset[RouteRow],
    dict[str, int],
]  # fmt: skip


def _read_netlink(rt: rtnl.RouteSocket, owner: Ownership) -> _Read:
    """Blocking: every dump, on the worker thread."""
    raw_links = [(rtnl.IFINFOMSG.unpack_from(p), rtnl.attrs(p, rtnl.IFINFOMSG.size))
                 for p in rt.dump(rtnl.RTM_GETLINK, rtnl.LINK_DUMP)]  # fmt: skip
    names: dict[int, str] = {hdr[2]: rtnl.text(a.get(rtnl.IFLA_IFNAME)) or "" for hdr, a in raw_links}
    ifindex = {v: k for k, v in names.items()}
    links: list[VxlanLink] = []
    down: set[str] = set()
    owned_idx: dict[int, str] = {}
    for hdr, a in raw_links:
        name = names[hdr[2]]
        if not owner.owns_link(name):
            continue
        owned_idx[hdr[2]] = name
        links.append(_link_from(name, a, names))
        if not hdr[3] & rtnl.IFF_UP:
            down.add(name)
    addresses = []
    for p in rt.dump(rtnl.RTM_GETADDR, rtnl.ADDR_DUMP):
        _family, plen, _flags, scope, index = rtnl.IFADDRMSG.unpack_from(p)
        if index in owned_idx:
            a = rtnl.attrs(p, rtnl.IFADDRMSG.size)
            ip = rtnl.ipv4(a.get(rtnl.IFA_ADDRESS)) or rtnl.ipv4(a.get(rtnl.IFA_LOCAL))
            addresses.append(Address(owned_idx[index], f"{ip}/{plen}", scope))
    rules = []
    for p in rt.dump(rtnl.RTM_GETRULE, rtnl.RULE_DUMP):
        table8 = rtnl.FIB_RULE_HDR.unpack_from(p)[4]
        a = rtnl.attrs(p, rtnl.FIB_RULE_HDR.size)
        priority = rtnl.u32(a.get(rtnl.FRA_PRIORITY), 0)
        proto = a.get(rtnl.FRA_PROTOCOL)
        if priority in owner.rule_priorities and proto is not None and proto[0] == owner.rt_proto:
            rules.append(Rule(priority, rtnl.u32(a.get(rtnl.FRA_TABLE), table8), rtnl.text(a.get(rtnl.FRA_IIFNAME))))
    neighbors: list[Neighbor] = []
    fdb: list[FdbEntry] = []
    for request, out in ((rtnl.NEIGH_DUMP, neighbors), (rtnl.FDB_DUMP, fdb)):
        for p in rt.dump(rtnl.RTM_GETNEIGH, request):
            _family, index, state, _flags, _type = rtnl.NDMSG.unpack_from(p)
            if index not in owned_idx or not state & rtnl.NUD_PERMANENT:
                continue
            a = rtnl.attrs(p, rtnl.NDMSG.size)
            ip, lladdr = rtnl.ipv4(a.get(rtnl.NDA_DST)), a.get(rtnl.NDA_LLADDR)
            if ip is None or not lladdr:
                continue
            if out is neighbors:
                neighbors.append(Neighbor(owned_idx[index], ip, rtnl.mac(lladdr)))
            else:
                fdb.append(FdbEntry(owned_idx[index], rtnl.mac(lladdr), ip))
    rows: frozenset[RouteRow] = frozenset(
        r for table in sorted(owner.tables) for r in rt.dump_routes(table, owner.rt_proto, names)
    )
    return links, down, addresses, rules, neighbors, fdb, rows, ifindex


def _link_from(name: str, a: dict[int, bytes], names: dict[int, str]) -> VxlanLink:
    info = rtnl.attrs(a[rtnl.IFLA_LINKINFO], 0) if rtnl.IFLA_LINKINFO in a else {}
    mtu = rtnl.u32(a.get(rtnl.IFLA_MTU), 0)
    address = rtnl.mac(a.get(rtnl.IFLA_ADDRESS))
    if rtnl.text(info.get(rtnl.IFLA_INFO_KIND)) != "vxlan" or rtnl.IFLA_INFO_DATA not in info:
        # An owned name on something that is not our VXLAN: never matches a desired link.
        return VxlanLink(name, -1, -1, mtu, address, "")
    data = rtnl.attrs(info[rtnl.IFLA_INFO_DATA], 0)
    port = data.get(rtnl.IFLA_VXLAN_PORT)
    underlay = rtnl.u32(data.get(rtnl.IFLA_VXLAN_LINK), 0)
    return VxlanLink(
        name=name,
        vni=rtnl.u32(data.get(rtnl.IFLA_VXLAN_ID), -1),
        port=int.from_bytes(port[:2], "big") if port else -1,
        mtu=mtu,
        mac=address,
        local=rtnl.ipv4(data.get(rtnl.IFLA_VXLAN_LOCAL)) or "",
        underlay_ifname=names.get(underlay) if underlay else None,
        udp_csum=bool(rtnl.u8(data.get(rtnl.IFLA_VXLAN_UDP_CSUM), 1)),
    )
