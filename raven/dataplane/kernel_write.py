"""Apply `Changes` to the kernel over Raven's one netlink path (`raven.dataplane.rtnl`), in dependency order.

Every object (links, addresses, routes, rules, neighbours, FDB entries, per-device rp_filter) is one
encoded rtnetlink message; each group goes out in one batched send and every message is ACKed, so a
failure is recorded per object in the `ApplyReport` (kind, operation, object, reason) and the rest is
applied. Order: deletions first, in reverse dependency order (FDB, neighbours, rules, routes,
addresses, links), then creations (links, addresses, neighbours, FDB, routes, rules); only addresses new to
an existing link are added before the deletions, so a link never loses its last address. The MSS chain is
not netlink: `raven.dataplane.mssclamp`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from raven.dataplane import rtnl
from raven.dataplane.diff import Changes
from raven.dataplane.report import ApplyError, ApplyReport
from raven.dataplane.state import UNREACHABLE
from raven.log import kv

log = logging.getLogger(__name__)

# Runs a blocking call on the applier's worker thread.
InWorker = Callable[..., Awaitable[Any]]


class Dev(str):
    """A device name in an encoder's arguments, resolved to its ifindex when the message is encoded."""


# One write: the object (as reported) and its encoder call, whose `Dev` arguments are resolved at send time.
Item = tuple[object, "functools.partial[rtnl.RouteMsg]"]


_later: Callable[..., functools.partial[rtnl.RouteMsg]] = functools.partial


class NoLink(LookupError):
    pass


class Writer:
    """Encodes, sends, counts writes per kind and records each failure with its object."""

    def __init__(
        self,
        rt: rtnl.RouteSocket,
        ifindex: dict[str, int],
        *,
        protocol: int,
        report: ApplyReport,
        in_worker: InWorker,
        on_write: Callable[[str, int], None] | None,
    ) -> None:
        self.rt = rt
        self.ifindex = ifindex
        self.protocol = protocol
        self.report = report
        self._in_worker = in_worker
        self._on_write = on_write

    def count(self, kind: str, n: int = 1) -> None:
        if n:
            self.report.writes[kind] += n
            if self._on_write is not None:
                self._on_write(kind, n)

    def error(self, kind: str, op: str, obj: object, reason: str) -> None:
        self.report.errors.append(ApplyError(kind, op, str(obj), reason))
        # debug: whoever holds the report logs each failure once (the agent's loop, --cleanup).
        log.debug("kernel write failed", extra=kv(kind=kind, op=op, obj=obj, reason=reason))

    def idx(self, name: str) -> int:
        try:
            return self.ifindex[name]
        except KeyError:
            raise NoLink(name) from None

    def _resolve(self, arg: object) -> object:
        return self.idx(arg) if isinstance(arg, Dev) else arg

    async def send(
        self, kind: str, op: str, items: Iterable[Item], *, count_failed: bool = True
    ) -> set[int]:
        """Encode each (object, encoder) and send them in one batch; returns the positions that failed.

        A failed write counts as a write (it was attempted) unless `count_failed` is False."""
        msgs: list[rtnl.RouteMsg] = []
        sent: list[object] = []
        failed: set[int] = set()
        for obj, encode in items:
            try:
                args = [self._resolve(a) for a in encode.args]
                kwargs = {k: self._resolve(v) for k, v in encode.keywords.items()}
                msgs.append(encode.func(*args, **kwargs))
                sent.append(obj)
            except NoLink as exc:
                self.error(kind, op, obj, f"no device {exc.args[0]}")
            except (OSError, ValueError) as exc:
                self.error(kind, op, obj, f"cannot encode: {exc}")
        if not msgs:
            return failed
        errors: list[rtnl.MsgError] = await self._in_worker(self.rt.send, msgs)
        self.count(kind, len(msgs) - (0 if count_failed else len(errors)))
        for e in errors:
            failed.add(e.index)
            self.error(kind, op, sent[e.index], e.message)
        return failed

    async def refresh_index(self, names: Iterable[str]) -> None:
        for name in names:
            index = await self._in_worker(self.rt.link_index, name)
            if index is None:
                self.ifindex.pop(name, None)
            else:
                self.ifindex[name] = index

    async def apply(self, c: Changes) -> None:
        """Everything in `c` except the MSS chain. A broken socket raises `rtnl.NetlinkError`."""
        N, proto = rtnl, self.protocol
        # Untyped on purpose: the `Dev` arguments become the ints the encoders take only at send time.
        P = _later
        DEL, NEW = N.RTM_DELNEIGH, N.RTM_NEWNEIGH
        await self.send("fdb", "del", [(f, P(N.encode_neigh, DEL, N.DELETE, Dev(f.ifname), f.dst, f.mac, fdb=True))
                                       for f in c.fdb_delete])  # fmt: skip
        await self.send("neighbor", "del", [(n, P(N.encode_neigh, DEL, N.DELETE, Dev(n.ifname), n.ip, None))
                                            for n in c.neigh_delete])  # fmt: skip
        await self.send("rule", "del", [(r, P(N.encode_rule, N.RTM_DELRULE, priority=r.priority, table=r.table,
                                              protocol=proto, iif=r.iif)) for r in c.rule_delete])  # fmt: skip
        await self.send("route", "del", [(r, P(N.encode_route, N.RTM_DELROUTE, N.DELETE, dst=r.dst, table=r.table,
                                               protocol=proto)) for r in c.route_delete])  # fmt: skip
        # New addresses on existing links go first: deleting a device's last IPv4 address makes the kernel flush
        # its routes and neighbours (fib_disable_ip), e.g. when an address is re-added with another scope.
        rescoped = {(a.ifname, a.cidr) for a in c.addr_delete}
        new_links = {link.name for link in c.link_create}
        early = {a for a in c.addr_add if (a.ifname, a.cidr) not in rescoped and a.ifname not in new_links}
        await self.send("address", "add", [(a, P(N.encode_addr, N.RTM_NEWADDR, Dev(a.ifname), a.cidr, a.scope))
                                           for a in sorted(early)])  # fmt: skip
        await self.send("address", "del", [(a, P(N.encode_addr, N.RTM_DELADDR, Dev(a.ifname), a.cidr))
                                           for a in c.addr_delete])  # fmt: skip
        await self.send("link", "del", [(name, P(N.encode_link_delete, Dev(name))) for name in c.link_delete])
        if c.link_delete:
            await self.refresh_index(c.link_delete)
        if c.link_create:
            await self.send("link", "add", [(link.name, P(
                N.encode_link_create_vxlan, link.name, vni=link.vni, port=link.port, local=link.local, mac=link.mac,
                mtu=link.mtu, underlay_ifindex=None if link.underlay_ifname is None else Dev(link.underlay_ifname),
                udp_csum=link.udp_csum,
            )) for link in c.link_create])  # fmt: skip
            await self.refresh_index(link.name for link in c.link_create)
        await self.send("link", "set", [(link, P(N.encode_link_set, Dev(link.name), mtu=link.mtu))
                                        for link in c.link_update])  # fmt: skip
        await self.send("address", "add", [(a, P(N.encode_addr, N.RTM_NEWADDR, Dev(a.ifname), a.cidr, a.scope))
                                           for a in c.addr_add if a not in early])  # fmt: skip
        await self.send("neighbor", "replace", [(n, P(N.encode_neigh, NEW, N.REPLACE, Dev(n.ifname), n.ip, n.mac))
                                                for n in c.neigh_replace])  # fmt: skip
        for op, flags, entries in (("replace", N.REPLACE, c.fdb_replace), ("append", N.APPEND, c.fdb_append)):
            await self.send("fdb", op, [(f, P(N.encode_neigh, NEW, flags, Dev(f.ifname), f.dst, f.mac, fdb=True))
                                        for f in entries])  # fmt: skip
        for op, flags, routes in (("replace", N.REPLACE, c.route_replace), ("create", N.CREATE, c.route_create)):
            await self.send("route", op, [(r, P(
                N.encode_route, N.RTM_NEWROUTE, flags, dst=r.dst, table=r.table, protocol=proto,
                oif=0 if r.ifname == UNREACHABLE else Dev(r.ifname), gateway=r.gateway, prefsrc=r.src, mtu=r.mtu,
                unreachable=r.ifname == UNREACHABLE,
            )) for r in routes])  # fmt: skip
        await self.send("rule", "add", [(r, P(N.encode_rule, N.RTM_NEWRULE, priority=r.priority, table=r.table,
                                              protocol=proto, iif=r.iif)) for r in c.rule_add])  # fmt: skip

    async def rp_filter(self, todo: list[tuple[str, str]]) -> list[str]:
        """Loose rp_filter (2) on each (sysctl key, device) over RTM_SETLINK; returns the keys written."""
        failed = await self.send("sysctl", "setlink", [
            (key, _later(rtnl.encode_inet_devconf, Dev(name), {rtnl.IPV4_DEVCONF_RP_FILTER: 2}))
            for key, name in todo], count_failed=False)  # fmt: skip
        return [key for i, (key, _) in enumerate(todo) if i not in failed]
