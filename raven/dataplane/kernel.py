"""The kernel applier: read the node's Raven-owned kernel state, diff it against a `DesiredState`, apply.

Public surface (what the agent's reconciler calls)::

    applier = KernelApplier(Ownership(), netns=None, on_write=None)
    report = await applier.reconcile(desired)   # read -> diff -> apply; ApplyReport
    observed = await applier.read()              # Observed (owned objects only)
    changes = diff(desired, observed)            # pure
    report = await applier.apply(changes)
    report = await applier.cleanup()             # remove everything owned, nothing else
    await applier.close()

Ownership (`Ownership`, defaults from `raven.dataplane.state`): the links named exactly as planned
(`raven0`, `raven1`; not a prefix) and everything on them (IPv4 addresses, permanent neighbours, permanent FDB
entries); routes with the owned protocol number in the owned tables; rules at the owned priorities
carrying the owned protocol; the MSS chain. Foreign routes and rules in the same tables are never
read as ours, so never deleted: deletes name the protocol, which the kernel matches. A new route
is created with NLM_F_EXCL, so a foreign route with the same destination in our table is reported
as a conflict, not silently replaced.

Writes: links, addresses, rules, neighbours and FDB entries through pyroute2's `AsyncIPRoute`
(few objects); routes through `raven.dataplane.rtnl` (bulk: thousands of routes per second with a
per-route error report). A converged reconcile writes nothing. A gateway failover seen by a
non-gateway node is one neighbour and one FDB replace.

Order: deletions first, in reverse dependency order (FDB, neighbours, rules, routes, addresses,
links), then creations (links, addresses, neighbours, FDB, routes, rules). Objects on a link that
is deleted or recreated are flushed by the kernel and are not deleted one by one.

Also kept by `reconcile`: `net.ipv4.ip_forward=1` and loose reverse-path filtering (rp_filter=2)
on Raven's devices, written only when they differ. `cleanup` removes the devices (and with them
their sysctls) but leaves ip_forward alone: other software on the node relies on it too.

Speed (tests/benchmarks/bench_dataplane.py, 10,000 routes): a cold apply is within 2x of
`ip -batch` and a converged reconcile (read + diff) takes tens of milliseconds: routes are read and
diffed as tuples (`Observed.route_rows`), not as dataclass objects.

`netns` (tests, tools) runs everything inside a named network namespace; the agent passes None.
After `close()` the applier cannot be used again.

Errors never abort a reconcile half way: each failed write is reported in `ApplyReport.errors`
(kind, operation, object, reason) and the rest is applied; the next reconcile retries. A failure to
read (netns gone, netlink socket broken) raises `KernelError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import functools
import logging
import operator
import os
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyrNetlinkError

from raven.dataplane import rtnl
from raven.dataplane.host import MssClamp, MssState, ensure_sysctls, read_sysctls
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
    Route,
    Rule,
    VxlanLink,
)
from raven.log import kv

log = logging.getLogger(__name__)
T = TypeVar("T")

NUD_PERMANENT: Final = 0x80
NTF_SELF: Final = 0x02
IFF_UP: Final = 0x1
ZERO_MAC: Final = "00:00:00:00:00:00"
# Write kinds, as counted in ApplyReport.writes and exported as metrics labels.
KINDS: Final = ("link", "address", "route", "rule", "neighbor", "fdb", "sysctl", "iptables")


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


# A route as a plain tuple in this order; `rtnl.RawRoute` uses the same order.
RouteRow = tuple[int, str, str, "str | None", "int | None", "str | None"]
route_row: Callable[[Route], RouteRow] = operator.attrgetter("table", "dst", "ifname", "gateway", "mtu", "src")


_route_key = operator.attrgetter("table", "dst")


def _route_of(row: RouteRow) -> Route:
    return Route(dst=row[1], table=row[0], ifname=row[2], gateway=row[3], mtu=row[4], src=row[5])


@dataclass(frozen=True)
class Observed:
    """The owned kernel state, plus what the contract's types cannot say.

    Routes are kept as tuples (`route_rows`): with 10,000 routes, building and hashing dataclass
    objects would cost more than the whole converged reconcile may take. `state` builds the full
    `DesiredState` (routes included) on first use.
    """

    base: DesiredState  # everything except routes
    route_rows: frozenset[RouteRow] = frozenset()
    links_down: frozenset[str] = frozenset()
    # The MSS chain holds something other than the canonical rules: rewrite it.
    mss_unexpected: bool = False

    @classmethod
    def of(cls, state: DesiredState, **kwargs: Any) -> Observed:
        rows = frozenset(map(route_row, state.routes))
        return cls(base=dataclasses.replace(state, routes=frozenset()), route_rows=rows, **kwargs)

    @functools.cached_property
    def state(self) -> DesiredState:
        return dataclasses.replace(self.base, routes=frozenset(map(_route_of, self.route_rows)))


@dataclass(frozen=True)
class Changes:
    """The writes that turn the observed state into the desired one (see `diff`)."""

    link_delete: tuple[str, ...] = ()
    link_create: tuple[VxlanLink, ...] = ()
    link_update: tuple[VxlanLink, ...] = ()  # mtu or admin state, in place
    addr_delete: tuple[Address, ...] = ()
    addr_add: tuple[Address, ...] = ()
    route_delete: tuple[Route, ...] = ()
    route_create: tuple[Route, ...] = ()
    route_replace: tuple[Route, ...] = ()
    rule_delete: tuple[Rule, ...] = ()
    rule_add: tuple[Rule, ...] = ()
    neigh_delete: tuple[Neighbor, ...] = ()
    neigh_replace: tuple[Neighbor, ...] = ()
    fdb_delete: tuple[FdbEntry, ...] = ()
    fdb_replace: tuple[FdbEntry, ...] = ()
    fdb_append: tuple[FdbEntry, ...] = ()
    mss: frozenset[str] | None = None  # the devices to clamp from now on; None: unchanged

    def count(self) -> int:
        return sum(len(v) for k, v in self.__dict__.items() if k != "mss") + (self.mss is not None)

    @property
    def empty(self) -> bool:
        return self.count() == 0


@dataclass(frozen=True)
class ApplyError:
    kind: str
    op: str
    obj: str
    reason: str


@dataclass
class ApplyReport:
    writes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    errors: list[ApplyError] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def total_writes(self) -> int:
        return sum(self.writes.values())

    @property
    def ok(self) -> bool:
        return not self.errors


def diff(desired: DesiredState, current: Observed) -> Changes:
    """Pure: the changes that make `current` equal `desired`. Idempotent: diff(d, read-after-apply) is empty."""
    cur = current.base
    cur_links = {link.name: link for link in cur.links}
    want_links = {link.name: link for link in desired.links}
    link_delete: list[str] = []
    link_create: list[VxlanLink] = []
    link_update: list[VxlanLink] = []
    for name in sorted(cur_links.keys() - want_links.keys()):
        link_delete.append(name)
    for name, want in sorted(want_links.items()):
        have = cur_links.get(name)
        if have is None:
            link_create.append(want)
        elif (have.vni, have.port, have.local, have.underlay_ifname, have.mac, have.udp_csum) != (
            want.vni,
            want.port,
            want.local,
            want.underlay_ifname,
            want.mac,
            want.udp_csum,
        ):
            # VXLAN identity cannot change in place; a new MAC would make the kernel flush the
            # link's neighbours anyway: recreate, and the diff below re-adds what lives on it.
            link_delete.append(name)
            link_create.append(want)
        elif have.mtu != want.mtu or name in current.links_down:
            link_update.append(want)
    # The kernel flushes everything on a deleted link.
    gone = frozenset(link_delete)

    cur_addrs = {a for a in cur.addresses if a.ifname not in gone}
    addr_delete = sorted(a for a in cur_addrs - desired.addresses)
    addr_add = sorted(desired.addresses - cur_addrs)

    # Set arithmetic on tuples (C speed); objects only for the few that differ.
    cur_rows = current.route_rows if not gone else frozenset(r for r in current.route_rows if r[2] not in gone)
    want_rows = set(map(route_row, desired.routes))
    missing = want_rows - cur_rows
    extra = cur_rows - want_rows
    route_create: list[Route] = []
    route_replace: list[Route] = []
    route_delete: list[Route] = []
    if missing or extra:
        extra_by_key = {(r[0], r[1]): r for r in extra}
        for row in missing:
            # Same (table, dst) with other attributes: one replace, not a delete and an add.
            if extra_by_key.pop((row[0], row[1]), None) is not None:
                route_replace.append(_route_of(row))
            else:
                route_create.append(_route_of(row))
        route_delete = [_route_of(r) for r in extra_by_key.values()]

    rule_delete = sorted(cur.rules - desired.rules)
    rule_add = sorted(desired.rules - cur.rules)

    cur_neigh = {(n.ifname, n.ip): n for n in cur.neighbors if n.ifname not in gone}
    want_neigh = {(n.ifname, n.ip): n for n in desired.neighbors}
    neigh_delete = sorted(n for k, n in cur_neigh.items() if k not in want_neigh)
    neigh_replace = sorted(n for k, n in want_neigh.items() if cur_neigh.get(k) != n)

    fdb_delete, fdb_replace, fdb_append = _diff_fdb(desired.fdb, {f for f in cur.fdb if f.ifname not in gone})

    mss: frozenset[str] | None = None
    if current.mss_unexpected or desired.mss_clamp_ifnames != cur.mss_clamp_ifnames:
        mss = desired.mss_clamp_ifnames

    return Changes(
        link_delete=tuple(link_delete),
        link_create=tuple(link_create),
        link_update=tuple(link_update),
        addr_delete=tuple(addr_delete),
        addr_add=tuple(addr_add),
        # Sorted by (table, dst) for readable logs; not by full dataclass order, which costs
        # a Python comparison per step (100+ ms for 10,000 routes).
        route_delete=tuple(sorted(route_delete, key=_route_key)),
        route_create=tuple(sorted(route_create, key=_route_key)),
        route_replace=tuple(sorted(route_replace, key=_route_key)),
        rule_delete=tuple(rule_delete),
        rule_add=tuple(rule_add),
        neigh_delete=tuple(neigh_delete),
        neigh_replace=tuple(neigh_replace),
        fdb_delete=tuple(fdb_delete),
        fdb_replace=tuple(fdb_replace),
        fdb_append=tuple(fdb_append),
        mss=mss,
    )


def _diff_fdb(
    want: frozenset[FdbEntry], have: set[FdbEntry]
) -> tuple[list[FdbEntry], list[FdbEntry], list[FdbEntry]]:
    """FDB entries: a unicast MAC has one remote (moved by one replace); the all-zero MAC (flooding) may have many."""
    group_want: dict[tuple[str, str], set[str]] = defaultdict(set)
    group_have: dict[tuple[str, str], set[str]] = defaultdict(set)
    for f in want:
        group_want[(f.ifname, f.mac)].add(f.dst)
    for f in have:
        group_have[(f.ifname, f.mac)].add(f.dst)
    delete: list[FdbEntry] = []
    replace: list[FdbEntry] = []
    append: list[FdbEntry] = []
    for key in sorted(group_want.keys() | group_have.keys()):
        ifname, mac = key
        w = group_want.get(key, set())
        h = group_have.get(key, set())
        if w == h:
            continue
        if mac != ZERO_MAC and len(w) == 1 and len(h) <= 1:
            replace.append(FdbEntry(ifname, mac, next(iter(w))))
            continue
        delete += [FdbEntry(ifname, mac, d) for d in sorted(h - w)]
        append += [FdbEntry(ifname, mac, d) for d in sorted(w - h)]
    return delete, replace, append


def _attrs(msg: Any) -> dict[str, Any]:
    return dict((k, v) for k, v in msg["attrs"])


class KernelApplier:
    """Reads, diffs and applies Raven's kernel objects on one node (or inside `netns`)."""

    def __init__(
        self,
        owner: Ownership | None = None,
        *,
        netns: str | None = None,
        on_write: Callable[[str, int], None] | None = None,
    ) -> None:
        self.owner = owner or Ownership()
        self.netns = netns
        self._on_write = on_write
        self._ipr: AsyncIPRoute | None = None
        self._rt: rtnl.RouteSocket | None = None
        # One worker thread for the blocking parts (bulk route socket, sysctls): the loop stays free.
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="raven-kernel")
        # iptables runs as a subprocess: its own thread, so it overlaps with the route dump.
        self._aux = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="raven-iptables")
        self._mss = MssClamp(self.owner.mss_chain, netns)
        self._ifindex: dict[str, int] = {}

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def _open(self) -> tuple[AsyncIPRoute, rtnl.RouteSocket]:
        if self._ipr is None:
            kwargs: dict[str, Any] = {"netns": self.netns, "flags": 0} if self.netns else {}
            ipr = AsyncIPRoute(**kwargs)
            await ipr.setup_endpoint()
            self._ipr = ipr
        if self._rt is None:
            self._rt = await self._in_worker(rtnl.RouteSocket, self.netns)
        assert self._rt is not None
        return self._ipr, self._rt

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._rt is not None:
            rt, self._rt = self._rt, None
            # In the worker, after whatever still runs there (a cancelled apply leaves its send running):
            # closing the socket under that thread could hand its fd number to another socket meanwhile.
            await self._in_worker(rt.close)
        self._worker.shutdown(wait=False)
        self._aux.shutdown(wait=False)

    async def _in_aux(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._aux, fn, *args)

    async def _reset(self) -> None:
        """Drop the sockets after a failure; the next call reopens them."""
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:  # closing a broken socket
                pass
            self._ipr = None
        if self._rt is not None:
            self._rt.close()
            self._rt = None

    # ---- read ---------------------------------------------------------------------------------

    async def read(self) -> Observed:
        try:
            return await self._read()
        except (OSError, PyrNetlinkError) as exc:
            await self._reset()
            raise KernelError(f"reading kernel state failed: {exc}") from exc

    async def _read(self) -> Observed:
        if self.netns is not None and not await self._in_aux(os.path.exists, f"/run/netns/{self.netns}"):
            # Sockets opened inside it keep a deleted namespace alive: only its name tells it is gone.
            raise FileNotFoundError(errno.ENOENT, f"network namespace {self.netns} is gone")
        ipr, rt = await self._open()
        owner = self.owner
        mss_job = asyncio.ensure_future(self._read_mss())
        route_jobs: list[asyncio.Future[list[rtnl.RawRoute]]] = []
        try:
            links_raw = [m async for m in await ipr.get_links()]
            names: dict[int, str] = {m["index"]: m.get("ifname") for m in links_raw}
            self._ifindex = {v: k for k, v in names.items()}
            # The big part (routes) in the worker thread, iptables in its own, the small dumps meanwhile.
            loop = asyncio.get_running_loop()
            route_jobs = [
                loop.run_in_executor(self._worker, rt.dump_routes, table, owner.rt_proto, names)
                for table in sorted(owner.tables)
            ]
            links, down, addresses, rules, neighbors, fdb = await self._read_small(ipr, links_raw, names)
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
        return Observed(base=base, route_rows=rows, links_down=frozenset(down), mss_unexpected=unexpected)

    async def _read_mss(self) -> MssState:
        """The MSS chain, or "unknown" when iptables cannot run (missing from the image, a broken backend).

        The clamp is an optimisation next to devices and routes: its failure must not stop them from being
        applied. Unknown reads as unexpected content, so `apply` tries to rewrite the chain and reports the
        same failure as an iptables error on every pass.
        """
        try:
            return await self._in_aux(self._mss.read)
        except OSError as exc:
            log.debug("mss chain unreadable", extra=kv(chain=self.owner.mss_chain, error=str(exc)))
            return MssState(jumped=False, ifnames=None)

    async def _read_small(
        self, ipr: AsyncIPRoute, links_raw: list[Any], names: dict[int, str]
    ) -> tuple[list[VxlanLink], set[str], list[Address], list[Rule], list[Neighbor], list[FdbEntry]]:
        owner = self.owner
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

    # ---- apply --------------------------------------------------------------------------------

    async def reconcile(self, desired: DesiredState) -> ApplyReport:
        """Read, diff, apply; also keeps the sysctls Raven's devices need. Zero writes when converged."""
        start = time.perf_counter()
        observed = await self.read()
        changes = diff(desired, observed)
        report = await self.apply(changes, _start=start)
        if desired.links:
            await self._sysctls(desired.links, report)
        report.duration_s = time.perf_counter() - start
        return report

    async def apply(self, changes: Changes, *, _start: float | None = None) -> ApplyReport:
        start = time.perf_counter() if _start is None else _start
        report = ApplyReport()
        if changes.empty:
            report.duration_s = time.perf_counter() - start
            return report
        ipr, rt = await self._open()
        w = _Writer(self, ipr, report)
        try:
            for f in changes.fdb_delete:
                await w.fdb("del", f)
            for n in changes.neigh_delete:
                await w.call("neighbor", "del", n, ipr.neigh, "del", dev=("ifindex", n.ifname), dst=n.ip)
            for r in changes.rule_delete:
                await w.call("rule", "del", r, ipr.rule, "del", **self._rule_args(r))
            await w.routes(rt, rtnl.RTM_DELROUTE, rtnl.DELETE, "del", changes.route_delete)
            for a in changes.addr_delete:
                await w.call("address", "del", a, ipr.addr, "del", dev=("index", a.ifname), **_addr_args(a))
            for name in changes.link_delete:
                await w.call("link", "del", name, ipr.link, "del", dev=("index", name))
            if changes.link_delete:
                await w.refresh_index()
            for link in changes.link_create:
                await w.create_link(link)
            for link in changes.link_update:
                await w.call("link", "set", link, ipr.link, "set", dev=("index", link.name), mtu=link.mtu, state="up")
            for a in changes.addr_add:
                await w.call("address", "add", a, ipr.addr, "add", dev=("index", a.ifname), **_addr_args(a))
            for n in changes.neigh_replace:
                await w.call(
                    "neighbor", "replace", n, ipr.neigh, "replace", dev=("ifindex", n.ifname), dst=n.ip, lladdr=n.mac,
                    state=NUD_PERMANENT,
                )  # fmt: skip
            for f in changes.fdb_replace:
                await w.fdb("replace", f)
            for f in changes.fdb_append:
                await w.fdb("append", f)
            await w.routes(rt, rtnl.RTM_NEWROUTE, rtnl.REPLACE, "replace", changes.route_replace)
            await w.routes(rt, rtnl.RTM_NEWROUTE, rtnl.CREATE, "create", changes.route_create)
            for r in changes.rule_add:
                await w.call("rule", "add", r, ipr.rule, "add", **self._rule_args(r))
            if changes.mss is not None:
                try:
                    current = await self._in_aux(self._mss.read)
                    w.count("iptables", await self._in_aux(self._mss.write, sorted(changes.mss), current))
                except OSError as exc:
                    w.error("iptables", "write", self.owner.mss_chain, str(exc))
        except rtnl.NetlinkError as exc:
            # The bulk socket broke mid-batch: outcome unknown, start afresh next time.
            w.error("route", "send", "batch", str(exc))
            await self._reset()
        report.duration_s = time.perf_counter() - start
        if report.total_writes or report.errors:
            log.info("kernel applied", extra=kv(writes=report.total_writes,
                                                **{k: v for k, v in report.writes.items() if v},
                                                errors=len(report.errors), ms=round(report.duration_s * 1000, 1)))
        return report

    def _rule_args(self, r: Rule) -> dict[str, Any]:
        args: dict[str, Any] = {
            "family": socket.AF_INET,
            "priority": r.priority,
            "table": r.table,
            "protocol": self.owner.rt_proto,
        }
        if r.iif is not None:
            args["iifname"] = r.iif
        return args

    async def _sysctls(self, links: Iterable[VxlanLink], report: ApplyReport) -> None:
        """Loose rp_filter on Raven's devices, and IPv4 forwarding on.

        Per-device settings are written over rtnetlink (RTM_SETLINK), which needs CAP_NET_ADMIN only: in a
        non-privileged container /proc/sys is read-only. The global ip_forward has no netlink setter; a
        Kubernetes node has it on already (the CNI needs it), so it is written only when off.
        """
        # Loose reverse-path filtering: replies from remote pools arrive on Raven's devices while the
        # main table knows another way back to those sources (or none).
        devices = {f"net.ipv4.conf.{link.name}.rp_filter": link.name for link in links if link.name in self._ifindex}
        try:
            current = await self._in_worker(read_sysctls, self.netns, ["net.ipv4.ip_forward", *devices])
        except OSError as exc:
            report.errors.append(ApplyError("sysctl", "read", ",".join(sorted(devices)), str(exc)))
            return
        written: list[str] = []
        todo = [(key, name) for key, name in sorted(devices.items()) if current[key] != "2"]
        if todo:
            _, rt = await self._open()
            msgs = [rtnl.encode_inet_devconf(self._ifindex[name], {rtnl.IPV4_DEVCONF_RP_FILTER: 2}) for _, name in todo]
            errors: list[rtnl.MsgError] = await self._in_worker(rt.send, msgs)
            failed = {e.index for e in errors}
            for e in errors:
                report.errors.append(ApplyError("sysctl", "setlink", todo[e.index][0], e.message))
            written += [key for i, (key, _) in enumerate(todo) if i not in failed]
        if current["net.ipv4.ip_forward"] != "1":
            try:
                written += await self._in_worker(ensure_sysctls, self.netns, {"net.ipv4.ip_forward": "1"})
            except OSError as exc:
                report.errors.append(ApplyError(
                    "sysctl", "write", "net.ipv4.ip_forward",
                    f"forwarding is off and cannot be turned on here ({exc}); enable it on the node",
                ))
        if written:
            report.writes["sysctl"] += len(written)
            if self._on_write is not None:
                self._on_write("sysctl", len(written))
            log.info("sysctl written", extra=kv(keys=",".join(written)))

    async def cleanup(self) -> ApplyReport:
        """Remove every owned object (links, routes, rules, neighbours, FDB, the MSS chain) and nothing else."""
        start = time.perf_counter()
        observed = await self.read()
        changes = diff(DesiredState(), observed)
        report = await self.apply(changes, _start=start)
        if changes.mss is None:
            # Remove a half-installed chain too (no jump or unexpected rules).
            try:
                removed = await self._in_aux(self._mss.remove)
            except OSError as exc:
                report.errors.append(ApplyError("iptables", "remove", self.owner.mss_chain, str(exc)))
            else:
                report.writes["iptables"] += removed
        report.duration_s = time.perf_counter() - start
        log.info("kernel cleanup", extra=kv(writes=report.total_writes, errors=len(report.errors)))
        return report


def _addr_args(a: Address) -> dict[str, Any]:
    ip, _, plen = a.cidr.partition("/")
    return {"address": ip, "prefixlen": int(plen or 32)}


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
        udp_csum=bool(data.get("IFLA_VXLAN_UDP_CSUM", 1)),
    )


class _Writer:
    """Performs writes, counts them per kind and records each failure with its object."""

    def __init__(self, applier: KernelApplier, ipr: AsyncIPRoute, report: ApplyReport) -> None:
        self.applier = applier
        self.ipr = ipr
        self.report = report

    def count(self, kind: str, n: int = 1) -> None:
        if n:
            self.report.writes[kind] += n
            if self.applier._on_write is not None:
                self.applier._on_write(kind, n)

    def error(self, kind: str, op: str, obj: object, reason: str) -> None:
        self.report.errors.append(ApplyError(kind, op, str(obj), reason))
        # debug: whoever holds the report logs each failure once (the agent's loop, --cleanup).
        log.debug("kernel write failed", extra=kv(kind=kind, op=op, obj=obj, reason=reason))

    def idx(self, name: str) -> int:
        try:
            return self.applier._ifindex[name]
        except KeyError:
            raise _NoLink(name) from None

    async def refresh_index(self) -> None:
        self.applier._ifindex = {m.get("ifname"): m["index"] async for m in await self.ipr.get_links()}

    async def call(
        self,
        kind: str,
        op: str,
        obj: object,
        fn: Callable[..., Awaitable[Any]],
        /,
        *args: Any,
        dev: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> bool:
        """One write. `dev=(keyword, ifname)` is resolved to an index here, so a missing device is reported."""
        try:
            if dev is not None:
                kwargs[dev[0]] = self.idx(dev[1])
            await fn(*args, **kwargs)
        except _NoLink as exc:
            self.error(kind, op, obj, f"no device {exc.args[0]}")
            return False
        except (PyrNetlinkError, OSError, ValueError) as exc:
            self.count(kind)
            self.error(kind, op, obj, str(exc))
            return False
        self.count(kind)
        return True

    async def fdb(self, op: str, f: FdbEntry) -> None:
        # pyroute2 0.9's fdb("replace") is broken: bridge-family neigh requests do the same.
        await self.call(
            "fdb", op, f, self.ipr.neigh, op, family=socket.AF_BRIDGE, dev=("ifindex", f.ifname), lladdr=f.mac,
            dst=f.dst, state=NUD_PERMANENT, flags=NTF_SELF,
        )  # fmt: skip

    async def create_link(self, link: VxlanLink) -> None:
        kwargs: dict[str, Any] = {
            "ifname": link.name,
            "kind": "vxlan",
            "vxlan_id": link.vni,
            "vxlan_port": link.port,
            "vxlan_local": link.local,
            # The FDB is ours: no learning, so the kernel adds no entries behind our back.
            "vxlan_learning": 0,
            "vxlan_udp_csum": int(link.udp_csum),
            "address": link.mac,
            "mtu": link.mtu,
        }
        if link.underlay_ifname is not None:
            try:
                kwargs["vxlan_link"] = self.idx(link.underlay_ifname)
            except _NoLink:
                self.error("link", "add", link.name, f"no underlay device {link.underlay_ifname}")
                return
        if not await self.call("link", "add", link.name, self.ipr.link, "add", **kwargs):
            return
        await self.refresh_index()
        await self.call("link", "set", link.name, self.ipr.link, "set", dev=("index", link.name), state="up")

    async def routes(self, rt: rtnl.RouteSocket, msg_type: int, flags: int, op: str, routes: Iterable[Route]) -> None:
        proto = self.applier.owner.rt_proto
        msgs: list[rtnl.RouteMsg] = []
        sent: list[Route] = []
        for r in routes:
            try:
                oif = self.idx(r.ifname) if msg_type != rtnl.RTM_DELROUTE else 0
                msg = rtnl.encode_route(
                    msg_type, flags, dst=r.dst, table=r.table, protocol=proto, oif=oif, gateway=r.gateway,
                    prefsrc=r.src, mtu=r.mtu,
                )  # fmt: skip
                msgs.append(msg)
                sent.append(r)
            except _NoLink:
                self.error("route", op, r, f"no device {r.ifname}")
            except (OSError, ValueError) as exc:
                self.error("route", op, r, f"cannot encode: {exc}")
        if not msgs:
            return
        errors: list[rtnl.MsgError] = await self.applier._in_worker(rt.send, msgs)
        self.count("route", len(msgs))
        for e in errors:
            self.error("route", op, sent[e.index], e.message)


class _NoLink(LookupError):
    pass
