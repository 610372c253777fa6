"""Pure: the writes (`Changes`) that turn the observed kernel state (`Observed`) into a `NodeNetwork`.

No I/O here. `diff(desired, observed)` is idempotent: diffing against what an apply produced is empty.
Routes are compared as tuples (`RouteRow`, the order `raven.dataplane.rtnl` decodes them in), so a
converged pass over 10,000 routes is set arithmetic at C speed; objects are built only for the few
that differ. Objects on a link that is deleted or recreated are flushed by the kernel, so they are
not deleted one by one.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from raven.dataplane.state import Address, FdbEntry, Neighbor, NodeNetwork, Route, Rule, VxlanLink

ZERO_MAC: Final = "00:00:00:00:00:00"

# A route as a plain tuple in this order; `rtnl.RawRoute` uses the same order.
RouteRow = tuple[int, str, str, "str | None", "int | None", "str | None"]
route_row: Callable[[Route], RouteRow] = operator.attrgetter("table", "dst", "ifname", "gateway", "mtu", "src")


_route_key = operator.attrgetter("table", "dst")


def route_of(row: RouteRow) -> Route:
    return Route(dst=row[1], table=row[0], ifname=row[2], gateway=row[3], mtu=row[4], src=row[5])


@dataclass(frozen=True)
class Observed:
    """The owned kernel state, plus what the contract's types cannot say.

    Routes are kept as tuples (`route_rows`): with 10,000 routes, building and hashing dataclass
    objects would cost more than the whole converged reconcile may take. `state` builds the full
    `NodeNetwork` (routes included) on first use.
    """

    base: NodeNetwork  # everything except routes
    route_rows: frozenset[RouteRow] = frozenset()
    links_down: frozenset[str] = frozenset()
    # The MSS chain holds something other than the canonical rules: rewrite it.
    mss_unexpected: bool = False

    @classmethod
    def of(cls, state: NodeNetwork, **kwargs: Any) -> Observed:
        rows = frozenset(map(route_row, state.routes))
        return cls(base=dataclasses.replace(state, routes=frozenset()), route_rows=rows, **kwargs)

    @functools.cached_property
    def state(self) -> NodeNetwork:
        return dataclasses.replace(self.base, routes=frozenset(map(route_of, self.route_rows)))


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


def diff(desired: NodeNetwork, current: Observed) -> Changes:
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
                route_replace.append(route_of(row))
            else:
                route_create.append(route_of(row))
        route_delete = [route_of(r) for r in extra_by_key.values()]

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
