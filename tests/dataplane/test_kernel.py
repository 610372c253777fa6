"""KernelApplier against real network namespaces: exact state, idempotence, ownership, cleanup, failover."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest

from e2e.netlab import Lab, Netns
from raven.dataplane.kernel import KernelApplier, KernelError, Ownership
from raven.dataplane.state import (
    SCOPE_SITE,
    UNREACHABLE,
    Address,
    FdbEntry,
    Neighbor,
    NodeNetwork,
    Route,
    Rule,
    VxlanLink,
)
from tests.controller.conftest import eventually
from tests.dataplane.conftest import ip_json, kernel_snapshot, read_back

pytestmark = pytest.mark.root

GW_MAC = "02:f0:a8:32:02:00"
PEER_MAC = "02:f1:00:00:02:00"
MEMBER_MAC = "02:f0:a8:32:03:00"
SUBNETS = [f"10.{i}.0.0/24" for i in range(1, 201)]


def gateway_state(subnets: list[str] = SUBNETS) -> NodeNetwork:
    """What a gateway node of pool A (node IP 192.168.50.1) wants: raven0, raven1, routes, rules, MSS."""
    return NodeNetwork(
        links=frozenset(
            {
                VxlanLink("raven0", 200, 4472, 1450, "02:f0:a8:32:01:00", "192.168.50.1", "eth0"),
                VxlanLink("raven1", 201, 4473, 1350, "02:f1:00:00:01:00", "241.0.0.1", None),
            }
        ),
        addresses=frozenset({Address("raven0", "240.168.50.1/8"), Address("raven1", "241.0.0.1/32")}),
        routes=frozenset(
            {Route(s, 9027, "raven1", "241.0.0.2", 1350) for s in subnets}
            | {Route("10.240.3.0/24", 9028, "raven0", "240.168.50.3")}
        ),
        rules=frozenset({Rule(9027, 9027), Rule(9026, 9028, "raven1")}),
        neighbors=frozenset(
            {Neighbor("raven0", "240.168.50.3", MEMBER_MAC), Neighbor("raven1", "241.0.0.2", PEER_MAC)}
        ),
        fdb=frozenset({FdbEntry("raven0", MEMBER_MAC, "192.168.50.3"), FdbEntry("raven1", PEER_MAC, "241.0.0.2")}),
        mss_clamp_ifnames=frozenset({"raven0", "raven1"}),
    )


@pytest.fixture
def node(lab: Lab) -> Netns:
    n1, n2 = lab.netns_many(["n1", "n2"])
    lab.veth(n1, "eth0", n2, "eth0")
    n1.add_addr("eth0", "192.168.50.1/24")
    n2.add_addr("eth0", "192.168.50.2/24")
    return n1


@pytest.fixture
async def applier(node: Netns) -> AsyncIterator[KernelApplier]:
    a = KernelApplier(Ownership(), netns=node.name)
    try:
        yield a
    finally:
        await a.close()


def sysctl(ns: Netns, key: str) -> str:
    return ns.run(["sysctl", "-n", key]).stdout.strip()


async def test_apply_creates_exactly_the_desired_state(node: Netns, applier: KernelApplier) -> None:
    desired = gateway_state()
    report = await applier.reconcile(desired)
    assert report.ok, report.errors
    assert read_back(node) == desired
    assert report.writes["route"] == len(desired.routes)
    assert sysctl(node, "net.ipv4.conf.raven0.rp_filter") == "2"
    assert sysctl(node, "net.ipv4.ip_forward") == "1"
    # Our own reader agrees with the independent one.
    observed = await applier.read()
    assert observed.state == desired
    assert not observed.links_down


async def test_second_reconcile_writes_nothing(node: Netns, applier: KernelApplier) -> None:
    desired = gateway_state()
    first = await applier.reconcile(desired)
    assert first.ok and first.total_writes > len(SUBNETS)
    second = await applier.reconcile(desired)
    assert second.ok, second.errors
    assert second.total_writes == 0, second.writes
    # A fresh applier (an agent restart) finds nothing to do either.
    fresh = KernelApplier(Ownership(), netns=node.name)
    try:
        third = await fresh.reconcile(desired)
    finally:
        await fresh.close()
    assert third.total_writes == 0, third.writes


async def test_foreign_routes_and_rules_in_owned_tables_survive(node: Netns, applier: KernelApplier) -> None:
    node.ip_batch(
        [
            "route add 172.31.0.0/16 dev eth0 table 9027 proto static",
            "route add 172.30.0.0/16 via 192.168.50.2 table 9028",
            "rule add priority 100 lookup 9027",
            "rule add priority 9027 lookup 9028 proto static",
        ]
    )
    await applier.reconcile(gateway_state())
    # Shrink the desired state, then clean up: only our objects go.
    await applier.reconcile(gateway_state(SUBNETS[:10]))
    assert len(read_back(node).routes) == 11
    report = await applier.cleanup()
    assert report.ok, report.errors
    foreign_routes = {r["dst"] for t in (9027, 9028) for r in ip_json(node, "-4", "route", "show", "table", str(t))}
    assert foreign_routes == {"172.31.0.0/16", "172.30.0.0/16"}
    rules = {(r["priority"], r["table"]) for r in ip_json(node, "-4", "rule", "show")}
    assert (100, "9027") in rules and (9027, "9028") in rules


async def test_a_conflicting_foreign_route_is_reported_per_route_not_replaced(
    node: Netns, applier: KernelApplier
) -> None:
    node.ip("route", "add", "10.7.0.0/24", "dev", "eth0", "table", "9027", "proto", "static")
    report = await applier.reconcile(gateway_state())
    assert [(e.kind, e.op) for e in report.errors] == [("route", "create")]
    assert "10.7.0.0/24" in report.errors[0].obj and "exists" in report.errors[0].reason
    # The foreign route is intact and every other route was installed.
    got = ip_json(node, "-4", "route", "show", "table", "9027", "10.7.0.0/24")
    assert got[0]["dev"] == "eth0" and got[0]["protocol"] == "static"
    assert len(read_back(node).routes) == len(gateway_state().routes) - 1


async def test_cleanup_leaves_no_trace(node: Netns, applier: KernelApplier) -> None:
    before = kernel_snapshot(node)
    await applier.reconcile(gateway_state())
    assert kernel_snapshot(node) != before
    report = await applier.cleanup()
    assert report.ok, report.errors
    assert kernel_snapshot(node) == before
    assert read_back(node) == NodeNetwork()
    again = await applier.cleanup()
    assert again.total_writes == 0


async def test_gateway_failover_on_a_member_writes_o1_objects(node: Netns, applier: KernelApplier) -> None:
    """A member node routes every remote subnet via the virtual next hop; failover moves neigh + FDB only."""
    base = NodeNetwork(
        links=frozenset({VxlanLink("raven0", 200, 4472, 1450, "02:f0:a8:32:01:00", "192.168.50.1", "eth0")}),
        addresses=frozenset({Address("raven0", "240.168.50.1/8")}),
        routes=frozenset(Route(s, 9027, "raven0", "169.254.240.1", 1350) for s in SUBNETS),
        rules=frozenset({Rule(9027, 9027)}),
        neighbors=frozenset({Neighbor("raven0", "169.254.240.1", GW_MAC)}),
        fdb=frozenset({FdbEntry("raven0", GW_MAC, "192.168.50.2")}),
        mss_clamp_ifnames=frozenset({"raven0"}),
    )
    await applier.reconcile(base)
    new_mac = "02:f0:a8:32:07:00"
    failed_over = dataclasses.replace(
        base,
        neighbors=frozenset({Neighbor("raven0", "169.254.240.1", new_mac)}),
        fdb=frozenset({FdbEntry("raven0", new_mac, "192.168.50.7")}),
    )
    report = await applier.reconcile(failed_over)
    assert report.ok, report.errors
    assert report.writes["route"] == 0
    assert report.total_writes <= 3, report.writes  # neighbour replace, new FDB entry, old FDB entry gone
    assert read_back(node) == failed_over
    # Same gateway MAC on another node (a stable MAC per pool): one FDB replace.
    moved = dataclasses.replace(failed_over, fdb=frozenset({FdbEntry("raven0", new_mac, "192.168.50.9")}))
    report = await applier.reconcile(moved)
    assert report.writes == {**report.writes, "fdb": 1} and report.total_writes == 1
    assert read_back(node) == moved


async def test_changed_attributes_are_replaced_in_place(node: Netns, applier: KernelApplier) -> None:
    desired = gateway_state()
    await applier.reconcile(desired)
    links = {dataclasses.replace(link, mtu=link.mtu - 10) for link in desired.links}
    routes = {dataclasses.replace(r, mtu=1300) if r.dst == "10.1.0.0/24" else r for r in desired.routes}
    changed = dataclasses.replace(desired, links=frozenset(links), routes=frozenset(routes))
    report = await applier.reconcile(changed)
    assert report.ok, report.errors
    assert report.writes["route"] == 1 and report.writes["link"] == 2
    assert report.writes["address"] == 0  # in place: nothing flushed
    assert read_back(node) == changed


async def test_a_recreated_link_gets_its_objects_back(node: Netns, applier: KernelApplier) -> None:
    desired = gateway_state()
    await applier.reconcile(desired)
    links = {dataclasses.replace(link, vni=300) if link.name == "raven1" else link for link in desired.links}
    changed = dataclasses.replace(desired, links=frozenset(links))
    report = await applier.reconcile(changed)
    assert report.ok, report.errors
    assert read_back(node) == changed
    # Someone deletes raven0 by hand: the next reconcile restores it and everything on it.
    node.ip("link", "del", "raven0")
    report = await applier.reconcile(changed)
    assert report.ok, report.errors
    assert read_back(node) == changed
    assert (await applier.reconcile(changed)).total_writes == 0


async def test_missing_underlay_device_is_reported_and_the_rest_applied(
    node: Netns, applier: KernelApplier
) -> None:
    desired = gateway_state()
    links = {dataclasses.replace(link, underlay_ifname="nosuch0") if link.name == "raven0" else link
             for link in desired.links}  # fmt: skip
    report = await applier.reconcile(dataclasses.replace(desired, links=frozenset(links)))
    kinds = {e.kind for e in report.errors}
    assert "link" in kinds and any("nosuch0" in e.reason for e in report.errors)
    got = read_back(node)
    assert {link.name for link in got.links} == {"raven1"}
    assert {r for r in got.routes if r.ifname == "raven1"} == {r for r in desired.routes if r.ifname == "raven1"}


async def test_flood_entries_are_appended_and_pruned(node: Netns, applier: KernelApplier) -> None:
    zero = "00:00:00:00:00:00"
    base = gateway_state(SUBNETS[:5])
    flood = frozenset({FdbEntry("raven0", zero, "192.168.50.3"), FdbEntry("raven0", zero, "192.168.50.4")})
    first = dataclasses.replace(base, fdb=base.fdb | flood)
    assert (await applier.reconcile(first)).ok
    assert read_back(node) == first
    second = dataclasses.replace(base, fdb=base.fdb | {FdbEntry("raven0", zero, "192.168.50.4"),
                                                      FdbEntry("raven0", zero, "192.168.50.5")})  # fmt: skip
    report = await applier.reconcile(second)
    assert report.ok, report.errors
    assert report.writes["fdb"] == 2
    assert read_back(node) == second


async def test_a_vanished_namespace_is_a_clear_read_error(lab: Lab) -> None:
    ns = lab.netns("gone")
    applier = KernelApplier(netns=ns.name)
    try:
        assert (await applier.reconcile(gateway_state(SUBNETS[:1]))).errors  # no eth0: reported, not raised
        ns.run(["true"])
        lab.close()
        with pytest.raises(KernelError):
            await applier.reconcile(gateway_state(SUBNETS[:1]))
    finally:
        await applier.close()


async def test_routes_of_every_shape_round_trip(node: Netns, applier: KernelApplier) -> None:
    base = gateway_state(SUBNETS[:3])
    shapes = {
        Route("0.0.0.0/0", 9027, "raven1", "241.0.0.2"),  # a default route: no RTA_DST in the dump
        Route("10.250.0.0/24", 9027, "raven1"),  # device route, scope link
        Route("10.251.0.0/24", 9027, "raven1", None, 1300, "241.0.0.1"),  # with a preferred source
        Route("10.252.0.7/32", 9028, "raven0", "240.168.50.3", 1400, "240.168.50.1"),
    }
    desired = dataclasses.replace(base, routes=base.routes | shapes)
    report = await applier.reconcile(desired)
    assert report.ok, report.errors
    assert read_back(node) == desired
    assert (await applier.read()).state == desired
    assert (await applier.reconcile(desired)).total_writes == 0


async def test_unreachable_transit_routes_round_trip_and_replace_in_place(node: Netns, applier: KernelApplier) -> None:
    """The transit table's unreachable routes (a relay forwards only on direct links): written, read back equal
    (by `ip -j` too), and a pool turning direct or unreachable is one replace of its route."""
    base = gateway_state(SUBNETS[:3])
    blocked = Route("10.253.0.0/24", 9028, UNREACHABLE)
    desired = dataclasses.replace(base, routes=base.routes | {blocked})
    assert (await applier.reconcile(desired)).ok
    assert read_back(node) == desired
    assert "unreachable 10.253.0.0/24" in node.ip("route", "show", "table", "9028").stdout
    assert (await applier.reconcile(desired)).total_writes == 0
    direct = Route("10.253.0.0/24", 9028, "raven1", "241.0.0.2", 1350)
    moved = dataclasses.replace(base, routes=base.routes | {direct})
    report = await applier.reconcile(moved)
    assert report.ok and report.total_writes == 1, report.writes
    assert read_back(node) == moved
    back = await applier.reconcile(desired)
    assert back.ok and back.total_writes == 1, back.writes
    assert read_back(node) == desired
    gone = await applier.reconcile(base)  # the pool left: its unreachable route deleted
    assert gone.ok and gone.total_writes == 1, (gone.writes, gone.errors)
    assert read_back(node) == base


async def test_link_scope_addresses_and_route_sources_round_trip(node: Netns, applier: KernelApplier) -> None:
    """The plan's node source: a global /32 beside site-scope overlay/inner addresses, used as route `src`;
    an agent upgraded from global overlay/inner addresses rewrites their scope, then writes nothing."""
    old = gateway_state(SUBNETS[:3])
    assert (await applier.reconcile(old)).ok
    src = "10.240.1.1"
    desired = dataclasses.replace(
        old,
        addresses=frozenset({Address("raven0", "240.168.50.1/8", SCOPE_SITE), Address("raven0", f"{src}/32"),
                             Address("raven1", "241.0.0.1/32", SCOPE_SITE), Address("raven1", f"{src}/32")}),
        routes=frozenset(dataclasses.replace(r, src=src) if r.table == 9027 else r for r in old.routes),
    )
    report = await applier.reconcile(desired)
    assert report.ok, report.errors
    assert read_back(node) == desired
    shown = node.ip("-4", "-o", "addr", "show", "dev", "raven1").stdout
    assert "241.0.0.1/32 scope site" in shown and f"{src}/32 scope global" in shown, shown
    assert f"src {src}" in node.ip("route", "get", "10.1.0.9").stdout
    again = await applier.reconcile(desired)
    assert again.ok and again.total_writes == 0, again.writes


async def test_a_path_change_is_one_route_replace_per_moved_prefix_and_touches_nothing_else(
        node: Netns, applier: KernelApplier) -> None:
    """Make-before-break's switch (raven.agent.staging): the moved pool's prefixes change next hop (relay -> direct)
    with one RTM_NEWROUTE/NLM_F_REPLACE each, never a delete then an add (a packet between the two would take
    the main table's route), and no other route is written. Watched with `ip monitor route`, independently of
    our own write counters."""
    moved = [f"10.250.{i}.0/24" for i in range(20)]
    relay, direct = "241.0.0.2", "241.0.0.3"
    peer_mac = "02:f1:00:00:03:00"
    base = gateway_state()
    before = dataclasses.replace(
        base,
        routes=base.routes | {Route(s, 9027, "raven1", relay, 1350) for s in moved},
        neighbors=base.neighbors | {Neighbor("raven1", direct, peer_mac)},
        fdb=base.fdb | {FdbEntry("raven1", peer_mac, direct)},
    )
    after = dataclasses.replace(
        before, routes=base.routes | {Route(s, 9027, "raven1", direct, 1350) for s in moved})
    assert (await applier.reconcile(before)).ok
    monitor = node.popen(["stdbuf", "-oL", "ip", "-4", "monitor", "route"], name="route-monitor")
    try:
        # The monitor is listening once it saw a change made after it started (a marker in another table).
        deadline, k = time.monotonic() + 10, 0
        while "table 9999" not in monitor.logs() and time.monotonic() < deadline:
            node.ip("route", "add", f"10.254.{k}.0/24", "dev", "lo", "table", "9999")
            k += 1
            await asyncio.sleep(0.05)
        assert "table 9999" in monitor.logs()
        report = await applier.reconcile(after)
        assert report.ok, report.errors
        node.ip("route", "add", "10.255.0.0/24", "dev", "lo", "table", "9999")  # the end marker
        await eventually(monitor.logs, lambda text: "10.255.0.0/24" in text, within=10, interval=0.02,
                         what="the end marker in ip monitor's output")
        lines = [line for line in monitor.stdout_path.read_text().splitlines()
                 if "table 9999" not in line and line.strip()]
    finally:
        monitor.stop()
    assert report.writes["route"] == len(moved) and report.total_writes == len(moved), report.writes
    assert not [line for line in lines if line.startswith("Deleted")], lines
    assert sorted(line.split()[0] for line in lines) == sorted(moved), lines
    assert all(f"via {direct} dev raven1" in line for line in lines), lines
    assert read_back(node) == after
