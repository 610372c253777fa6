"""Read the node's Raven-owned kernel state into an `Observed` (what `raven.dataplane.diff` compares).

Ownership (`Ownership`, defaults from `raven.dataplane.state`): the links named exactly as planned
(`raven0`, `raven1`; not a prefix) and everything on them (IPv4 addresses, permanent neighbours,
permanent FDB entries); routes with the owned protocol number in the owned tables; rules at the owned
priorities carrying the owned protocol; the MSS chain. Foreign routes and rules in the same tables are
never read as ours, so never deleted.

Routes (thousands) come from `raven.dataplane.rtnl`'s filtered dump in the worker thread, decoded
straight into tuples; the few links, addresses, rules and neighbours from pyroute2's dumps meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from pyroute2 import AsyncIPRoute

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
    DesiredState,
    FdbEntry,
    Neighbor,
    Rule,
    VxlanLink,
)

NUD_PERMANENT: Final = 0x80
IFF_UP: Final = 0x1


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
    ipr: AsyncIPRoute,
    rt: rtnl.RouteSocket,
    owner: Ownership,
    worker: concurrent.futures.Executor,
    read_mss: Callable[[], Awaitable[MssState]],
) -> tuple[Observed, dict[str, int]]:
    """The owned state, and every device's ifindex by name (the writer resolves devices with it)."""
    mss_job = asyncio.ensure_future(read_mss())
    route_jobs: list[asyncio.Future[list[rtnl.RawRoute]]] = []
    try:
        links_raw = [m async for m in await ipr.get_links()]
        names: dict[int, str] = {m["index"]: m.get("ifname") for m in links_raw}
        ifindex = {v: k for k, v in names.items()}
        # The big part (routes) in the worker thread, iptables in its own, the small dumps meanwhile.
        loop = asyncio.get_running_loop()
        route_jobs = [
            loop.run_in_executor(worker, rt.dump_routes, table, owner.rt_proto, names)
            for table in sorted(owner.tables)
        ]
        links, down, addresses, rules, neighbors, fdb = await _read_small(ipr, owner, links_raw, names)
        raw_routes: list[list[rtnl.RawRoute]] = list(await asyncio.gather(*route_jobs))
        mss: MssState = await mss_job
    finally:
        # Never leave a blocking call running on a socket the next call may reset.
        jobs: list[asyncio.Future[Any]] = [*route_jobs, mss_job]
        pending = [job for job in jobs if not job.done()]
        if pending:
            await asyncio.wait(pending)
    rows: frozenset[RouteRow] = frozenset(r for batch in raw_routes for r in batch)
    base = DesiredState(
        links=frozenset(links),
        addresses=frozenset(addresses),
        rules=frozenset(rules),
        neighbors=frozenset(neighbors),
        fdb=frozenset(fdb),
        mss_clamp_ifnames=mss.ifnames if (mss.ifnames is not None and mss.jumped) else frozenset(),
    )
    unexpected = mss.ifnames is None or (bool(mss.ifnames) and not mss.jumped)
    return Observed(base=base, route_rows=rows, links_down=frozenset(down), mss_unexpected=unexpected), ifindex

async def _read_small(
    ipr: AsyncIPRoute, owner: Ownership, links_raw: list[Any], names: dict[int, str]
) -> tuple[list[VxlanLink], set[str], list[Address], list[Rule], list[Neighbor], list[FdbEntry]]:
    links: list[VxlanLink] = []
    down: set[str] = set()
    owned_idx: dict[int, str] = {}
    for m in links_raw:
        name = m.get("ifname")
        if not owner.owns_link(name):
            continue
        owned_idx[m["index"]] = name
        links.append(_link_from_msg(m, names))
        if not m["flags"] & IFF_UP:
            down.add(name)
    addresses = [
        Address(owned_idx[m["index"]], f"{m.get('address')}/{m['prefixlen']}")
        async for m in await ipr.get_addr(family=socket.AF_INET)
        if m["index"] in owned_idx
    ]
    rules = []
    async for m in await ipr.get_rules(family=socket.AF_INET):
        a = _attrs(m)
        if a.get("FRA_PRIORITY", 0) in owner.rule_priorities and a.get("FRA_PROTOCOL") == owner.rt_proto:
            rules.append(Rule(a["FRA_PRIORITY"], a.get("FRA_TABLE", m["table"]), a.get("FRA_IIFNAME")))
    neighbors: list[Neighbor] = []
    fdb: list[FdbEntry] = []
    for idx, name in owned_idx.items():
        async for m in await ipr.get_neighbours(family=socket.AF_INET, ifindex=idx):
            a = _attrs(m)
            if m["state"] & NUD_PERMANENT and "NDA_LLADDR" in a:
                neighbors.append(Neighbor(name, a["NDA_DST"], a["NDA_LLADDR"].lower()))
        async for m in await ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=idx):
            a = _attrs(m)
            if m["state"] & NUD_PERMANENT and "NDA_DST" in a and "NDA_LLADDR" in a and m["ifindex"] == idx:
                fdb.append(FdbEntry(name, a["NDA_LLADDR"].lower(), a["NDA_DST"]))
    return links, down, addresses, rules, neighbors, fdb


def _attrs(msg: Any) -> dict[str, Any]:
    return dict((k, v) for k, v in msg["attrs"])


def _link_from_msg(m: Any, names: dict[int, str]) -> VxlanLink:
    info = m.get("IFLA_LINKINFO")
    data: dict[str, Any] = {}
    kind = None
    if info is not None:
        kind = info.get("IFLA_INFO_KIND")
        inner = info.get("IFLA_INFO_DATA")
        if inner is not None and kind == "vxlan":
            data = {k: v for k, v in inner["attrs"]}
    if kind != "vxlan":
        # An owned name on something that is not our VXLAN: never matches a desired link.
        return VxlanLink(m.get("ifname"), -1, -1, m.get("IFLA_MTU") or 0, m.get("IFLA_ADDRESS") or "", "")
    underlay = data.get("IFLA_VXLAN_LINK")
    return VxlanLink(
        name=m.get("ifname"),
        vni=data.get("IFLA_VXLAN_ID", -1),
        port=data.get("IFLA_VXLAN_PORT", -1),
        mtu=m.get("IFLA_MTU"),
        mac=(m.get("IFLA_ADDRESS") or "").lower(),
        local=data.get("IFLA_VXLAN_LOCAL") or "",
        underlay_ifname=names.get(underlay) if underlay else None,
    )
