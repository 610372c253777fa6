"""IPsecDriver with real charons (kernel-libipsec) in namespaces, carrying raven1 VXLAN pod traffic.

Topology: a switch namespace with a bridge; gateways ga, gb, gc on it (192.0.2.1/.2/.3). Each gateway
holds its inner address on raven1 (applied by KernelApplier), a "pod" address on lo (10.N.0.1) and
routes to the other pods via the peers' inner addresses. ga initiates to gb and gc.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

import pytest

from e2e.netlab import Charon, Lab, Netns
from raven.dataplane.ipsec import CharonUnavailable, IPsecDriver, TunnelState
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.state import (
    SCOPE_SITE,
    Address,
    FdbEntry,
    IPsecConnection,
    Neighbor,
    NodeNetwork,
    Route,
    Rule,
    VxlanLink,
)

pytestmark = pytest.mark.root

PSK = "rdp-test-psk-5f0c2a9e"
NAMES = ("ga", "gb", "gc")


@dataclass
class Gw:
    name: str
    idx: int
    ns: Netns
    charon: Charon
    underlay: str

    @property
    def inner(self) -> str:
        return f"241.0.0.{self.idx}"

    @property
    def mac(self) -> str:
        return f"02:f1:00:00:00:{self.idx:02x}"

    @property
    def pod(self) -> str:
        return f"10.{self.idx}.0.1"


def kernel_state(me: Gw, peers: list[Gw]) -> NodeNetwork:
    return NodeNetwork(
        links=frozenset({VxlanLink("raven1", 201, 4473, 1350, me.mac, me.inner, None)}),
        addresses=frozenset({Address("raven1", f"{me.inner}/32", SCOPE_SITE)}),  # as planned: charon must accept it
        routes=frozenset(Route(f"10.{p.idx}.0.0/24", 9027, "raven1", p.inner, 1350) for p in peers),
        rules=frozenset({Rule(9027, 9027)}),
        neighbors=frozenset(Neighbor("raven1", p.inner, p.mac) for p in peers),
        fdb=frozenset(FdbEntry("raven1", p.mac, p.inner) for p in peers),
    )


def conn(me: Gw, peer: Gw, initiator: bool) -> IPsecConnection:
    return IPsecConnection(
        name=f"raven-{peer.name}",
        local_id=f"{me.name}.raven",
        remote_id=f"{peer.name}.raven",
        local_addrs=(me.underlay,),
        remote_addrs=(peer.underlay,) if initiator else ("%any",),
        remote_port=4500,
        local_ts=f"{me.inner}/32",
        remote_ts=f"{peer.inner}/32",
        initiator=initiator,
    )


def ping(ns: Netns, src: str, dst: str, count: int = 2) -> bool:
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-I", src, dst]
    return ns.run(argv, check=False).returncode == 0


async def wait_for(pred: Callable[[], object], deadline_s: float = 20.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = pred()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
def gws(lab: Lab) -> Iterator[dict[str, Gw]]:
    sw = lab.netns("sw")
    sw.add_bridge("br0")
    out: dict[str, Gw] = {}
    for i, name in enumerate(NAMES, start=1):
        ns = lab.netns(name)
        lab.veth(ns, "eth0", sw, f"p{name}")
        sw.ip("link", "set", f"p{name}", "master", "br0")
        ns.add_addr("eth0", f"192.0.2.{i}/24")
        ns.add_addr("lo", f"10.{i}.0.1/32")
        out[name] = Gw(name, i, ns, ns.start_charon(), f"192.0.2.{i}")
    yield out


@pytest.fixture
async def drivers(gws: dict[str, Gw]) -> AsyncIterator[dict[str, tuple[KernelApplier, IPsecDriver]]]:
    made = {n: (KernelApplier(netns=g.ns.name), IPsecDriver(str(g.charon.vici_socket), PSK)) for n, g in gws.items()}
    try:
        yield made
    finally:
        for k, d in made.values():
            await k.close()
            await d.close()


async def installed(driver: IPsecDriver, name: str) -> TunnelState | None:
    for t in await driver.states():
        if t.name == name and t.ike_state == "ESTABLISHED" and t.child_state == "INSTALLED":
            return t
    return None


async def bring_up(
    gws: dict[str, Gw],
    drivers: dict[str, tuple[KernelApplier, IPsecDriver]],
    make_conn: Callable[[Gw, Gw, bool], IPsecConnection] | None = None,
    writes: Mapping[str, int] | None = None,
) -> None:
    """ga initiates to gb and gc; every tunnel installed. `make_conn` builds the connections (default: PSK);
    `writes`: the VICI writes each node's first reconcile must make besides one load_conn per connection."""
    make = make_conn or conn
    expected = {"load_shared": 1} if writes is None else writes
    ga, gb, gc = gws["ga"], gws["gb"], gws["gc"]
    plan = {
        "ga": ([gb, gc], [make(ga, gb, True), make(ga, gc, True)]),
        "gb": ([ga], [make(gb, ga, False)]),
        "gc": ([ga], [make(gc, ga, False)]),
    }
    # Responders first, so the initiator's first IKE_SA (the driver initiates on load) finds them ready.
    for name in ("gb", "gc", "ga"):
        peers, conns = plan[name]
        kernel, driver = drivers[name]
        assert (await kernel.reconcile(kernel_state(gws[name], peers))).ok
        report = await driver.reconcile(conns)
        assert report.ok, report.errors
        assert report.writes["load_conn"] == len(conns)
        assert {k: report.writes[k] for k in expected} == expected, report.writes
    for peer in ("raven-gb", "raven-gc"):
        assert await wait_for(lambda p=peer: installed(drivers["ga"][1], p)), ga.charon.read_log()[-4000:]


async def test_pod_traffic_crosses_the_tunnel_and_a_converged_reconcile_calls_nothing(
    gws: dict[str, Gw], drivers: dict[str, tuple[KernelApplier, IPsecDriver]]
) -> None:
    ga, gb = gws["ga"], gws["gb"]
    # Routes and raven1 alone do not connect the pods: the inner addresses are reachable only through ESP.
    assert (await drivers["ga"][0].reconcile(kernel_state(ga, [gb]))).ok
    assert (await drivers["gb"][0].reconcile(kernel_state(gb, [ga]))).ok
    assert not ping(ga.ns, ga.pod, gb.pod, count=1)
    await bring_up(gws, drivers)
    driver = drivers["ga"][1]
    before = await installed(driver, "raven-gb")
    assert before is not None and before.encap
    assert await wait_for(lambda: ping(ga.ns, ga.pod, gb.pod)), ga.charon.read_log()[-3000:]
    after = await installed(driver, "raven-gb")
    assert after is not None and after.bytes_out > before.bytes_out and after.bytes_in > before.bytes_in
    # The CHILD_SA selectors are inner/32 <-> inner/32, whatever the subnets.
    with ga.charon.session() as s:
        sas = [ike for item in s.list_sas() for ike in item.values()]
    child = next(iter(next(ike for ike in sas if ike["remote-id"] == b"gb.raven")["child-sas"].values()))
    assert child["local-ts"] == [b"241.0.0.1/32"] and child["remote-ts"] == [b"241.0.0.2/32"]
    # Converged: zero VICI writes, on every node.
    for name, peers in (("ga", [gb, gws["gc"]]),):
        again = await drivers[name][1].reconcile([conn(ga, p, True) for p in peers])
        assert again.total_writes == 0, again.writes
    assert (await drivers["gb"][1].reconcile([conn(gb, ga, False)])).total_writes == 0
    # An agent restart (a fresh driver) finds nothing to do either.
    fresh = IPsecDriver(str(ga.charon.vici_socket), PSK)
    try:
        assert (await fresh.reconcile([conn(ga, gb, True), conn(ga, gws["gc"], True)])).total_writes == 0
    finally:
        await fresh.close()


async def test_a_changed_peer_replaces_only_that_connection(
    gws: dict[str, Gw], drivers: dict[str, tuple[KernelApplier, IPsecDriver]]
) -> None:
    ga, gb, gc = gws["ga"], gws["gb"], gws["gc"]
    await bring_up(gws, drivers)
    gb_sa = await installed(drivers["ga"][1], "raven-gb")
    assert gb_sa is not None
    # gc gets a new underlay address (a failover to another node of gc's pool looks the same to ga).
    gc.ns.ip("addr", "del", "192.0.2.3/24", "dev", "eth0")
    gc.ns.ip("addr", "add", "192.0.2.13/24", "dev", "eth0")
    gc_moved = dataclasses.replace(gc, underlay="192.0.2.13")
    assert (await drivers["gc"][1].reconcile([conn(gc_moved, ga, False)])).ok
    report = await drivers["ga"][1].reconcile([conn(ga, gb, True), conn(ga, gc_moved, True)])
    assert report.ok, report.errors
    assert report.writes["load_conn"] == 1 and report.writes["unload_conn"] == 0
    assert report.writes["terminate"] == 1 and report.writes["load_shared"] == 0
    new_gc = await wait_for(lambda: installed(drivers["ga"][1], "raven-gc"))
    assert new_gc, ga.charon.read_log()[-3000:]
    gc_sa = await installed(drivers["ga"][1], "raven-gc")
    assert gc_sa is not None and gc_sa.remote_host == "192.0.2.13"
    assert await wait_for(lambda: ping(ga.ns, ga.pod, gc.pod))
    # The other peer's SA was not touched.
    gb_after = await installed(drivers["ga"][1], "raven-gb")
    assert gb_after is not None and gb_after.ike_unique_id == gb_sa.ike_unique_id
    assert gb_after.child_unique_id == gb_sa.child_unique_id
    # A removed peer is terminated and unloaded, the PSK re-owned.
    report = await drivers["ga"][1].reconcile([conn(ga, gb, True)])
    assert report.writes["unload_conn"] == 1 and report.writes["terminate"] == 1
    assert [t.name for t in await drivers["ga"][1].states()] == ["raven-gb"]


async def test_a_role_change_on_an_established_pair_keeps_its_sa(
    gws: dict[str, Gw], drivers: dict[str, tuple[KernelApplier, IPsecDriver]]
) -> None:
    """A pool exposed flips who initiates between it and the relay and narrows the relay's remote addresses: both
    ends load the changed connection, and the established IKE_SA and CHILD_SA carry on (no terminate, by us or by
    charon undoing an old start action)."""
    ga, gb = gws["ga"], gws["gb"]
    await bring_up(gws, drivers)
    assert await wait_for(lambda: installed(drivers["gb"][1], "raven-ga"))
    before = {n: await installed(drivers[n][1], f"raven-{p}") for n, p in (("ga", "gb"), ("gb", "ga"))}

    def children(name: str, peer: str) -> set[str]:
        with gws[name].charon.session() as s:
            return {c for item in s.list_conns() for n, body in item.items() if n == f"raven-{peer}"
                    for c in body.get("children", {})}
    children0 = {n: children(n, p) for n, p in (("ga", "gb"), ("gb", "ga"))}
    # gb initiates now (to ga's address); ga answers anyone.
    flipped = {"gb": [conn(gb, ga, True)], "ga": [conn(ga, gb, False), conn(ga, gws["gc"], True)]}
    for name in ("ga", "gb"):
        report = await drivers[name][1].reconcile(flipped[name])
        assert report.ok, report.errors
        assert report.writes["load_conn"] == 1, report.writes  # the change is applied...
        assert report.writes["terminate"] == 0 and report.writes["initiate"] == 0, report.writes  # ...in place
    for name, peer in (("ga", "gb"), ("gb", "ga")):
        # Seen: charon holds the new config (another child name) and replaced the old one, which is when it
        # would queue its own terminate of the old start action's SAs.
        now_children = children(name, peer)
        assert now_children and now_children != children0[name], (children0[name], now_children)
        assert f"replaced vici connection: raven-{peer}" in gws[name].charon.read_log()
    assert await wait_for(lambda: ping(ga.ns, ga.pod, gb.pod))
    await asyncio.sleep(1.0)  # those terminate jobs (asynchronous) would have run by now
    for name, peer in (("ga", "gb"), ("gb", "ga")):
        now = await installed(drivers[name][1], f"raven-{peer}")
        was = before[name]
        assert was is not None and now is not None
        assert (now.ike_unique_id, now.child_unique_id) == (was.ike_unique_id, was.child_unique_id), name
    # Converged in the new roles.
    for name in ("ga", "gb"):
        assert (await drivers[name][1].reconcile(flipped[name])).total_writes == 0


async def test_charon_restart_is_survived_without_restarting_the_driver(
    gws: dict[str, Gw], drivers: dict[str, tuple[KernelApplier, IPsecDriver]]
) -> None:
    ga, gb = gws["ga"], gws["gb"]
    await bring_up(gws, drivers)
    driver = drivers["ga"][1]
    conns = [conn(ga, gb, True), conn(ga, gws["gc"], True)]
    assert await wait_for(lambda: ping(ga.ns, ga.pod, gb.pod))
    ga.charon.kill()  # SIGKILL: no goodbye on the VICI socket, the driver's session is just dead
    # charon absent: a clear error, the driver keeps no broken state.
    with pytest.raises(CharonUnavailable, match="unreachable"):
        await driver.reconcile(conns)
    assert not await driver.available()  # what the reconciler polls while charon is away
    ga.charon.process.start()
    ga.charon.wait_ready()
    assert await driver.available()
    report = await driver.reconcile(conns)  # reconnects; the new charon has nothing: reload all
    assert report.ok, report.errors
    assert report.writes["load_conn"] == 2 and report.writes["load_shared"] == 1
    assert await wait_for(lambda: installed(driver, "raven-gb")), ga.charon.read_log()[-3000:]
    assert await wait_for(lambda: ping(ga.ns, ga.pod, gb.pod)), ga.charon.read_log()[-3000:]
    assert (await driver.reconcile(conns)).total_writes == 0


async def test_cleanup_removes_only_raven_connections(
    gws: dict[str, Gw], drivers: dict[str, tuple[KernelApplier, IPsecDriver]]
) -> None:
    ga, gb = gws["ga"], gws["gb"]
    driver = drivers["ga"][1]
    assert (await driver.reconcile([conn(ga, gb, True)])).ok
    with ga.charon.session() as s:
        s.load_conn({"other-conn": {"version": 2, "remote_addrs": ["192.0.2.99"], "children": {"c": {}}}})
    report = await driver.cleanup()
    assert report.ok and report.writes["unload_conn"] == 1 and report.writes["unload_shared"] == 1
    with ga.charon.session() as s:
        assert [name.decode() if isinstance(name, bytes) else name for name in s.get_conns()["conns"]] == [
            "other-conn"
        ]
        assert s.get_shared()["keys"] == []


@pytest.mark.parametrize(
    "ike,esp",
    [
        ("aes256gcm16-prfsha256-curve25519", "aes256gcm16"),
        ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
    ],
)
async def test_aead_proposals_work_with_userspace_esp(
    gws: dict[str, Gw], drivers: dict[str, tuple[KernelApplier, IPsecDriver]], ike: str, esp: str
) -> None:
    """The kernel here has no AES-GCM/ChaCha, but kernel-libipsec does ESP in userspace: both work."""
    ga, gb = gws["ga"], gws["gb"]

    def with_props(c: IPsecConnection) -> IPsecConnection:
        return dataclasses.replace(c, proposals=(ike,), esp_proposals=(esp,))

    assert (await drivers["ga"][0].reconcile(kernel_state(ga, [gb]))).ok
    assert (await drivers["gb"][0].reconcile(kernel_state(gb, [ga]))).ok
    assert (await drivers["gb"][1].reconcile([with_props(conn(gb, ga, False))])).ok
    assert (await drivers["ga"][1].reconcile([with_props(conn(ga, gb, True))])).ok
    assert await wait_for(lambda: installed(drivers["ga"][1], "raven-gb")), ga.charon.read_log()[-3000:]
    with ga.charon.session() as s:
        sas = [ike_sa for item in s.list_sas() for ike_sa in item.values()]
    child = next(iter(sas[0]["child-sas"].values()))
    assert child["encr-alg"].decode().upper() in ("AES_GCM_16", "CHACHA20_POLY1305")
    # Pod traffic inside raven1 (VXLAN between the inner addresses) through the AEAD SA.
    assert await wait_for(lambda: ping(ga.ns, ga.pod, gb.pod)), ga.charon.read_log()[-2000:]


def cut(ns: Netns, peer: str, on: bool) -> None:
    """Drop everything between this namespace and `peer` (both ways), or stop dropping it."""
    op = "-I" if on else "-D"
    for chain, match in (("OUTPUT", "-d"), ("INPUT", "-s")):
        ns.run(["iptables", "-w", op, chain, match, peer, "-j", "DROP"])


def reqids(ns_charon: Charon) -> dict[str, list[int]]:
    """raven-* IKE_SA name -> the reqids of its CHILD_SAs (as charon reports them)."""
    with ns_charon.session() as s:
        sas = list(s.list_sas())
    return {(n.decode() if isinstance(n, bytes) else n): [int(c["reqid"]) for c in ike.get("child-sas", {}).values()]
            for item in sas for n, ike in item.items()}


async def test_tunnels_restarted_after_an_outage_past_dpd_keep_their_own_reqids(
    gws: dict[str, Gw], drivers: dict[str, tuple[KernelApplier, IPsecDriver]]
) -> None:
    """Issue 11 (g), a pool's uplink cut past charon's DPD give-up: ga restarts both its tunnels (dpd_action=restart),
    each asking for the reqid it had, both released by then. charon hands a released reqid to the first new
    CHILD_SA and lets a later explicit request join an existing reqid whatever its selectors: with dynamic
    reqids, the tunnel healed first took the other's old reqid, the second joined it, and libipsec (outbound SA
    by reqid) sent one peer's packets into the other peer's SA: IKE up, pods cut for good. The order is forced
    here: gb cut (so released) first, gc healed (so installed) first."""
    ga, gb, gc = gws["ga"], gws["gb"], gws["gc"]
    await bring_up(gws, drivers)
    driver = drivers["ga"][1]
    assert await wait_for(lambda: ping(ga.ns, ga.pod, gb.pod) and ping(ga.ns, ga.pod, gc.pod))
    before = reqids(ga.charon)
    cut(ga.ns, gb.underlay, True)
    await asyncio.sleep(5)  # ga's DPD on gb gives up (~10 s of silence here) well before the one on gc
    cut(ga.ns, gc.underlay, True)

    async def restarting() -> bool:  # both IKE_SAs given up and being re-established (no CHILD_SA)
        states = {t.name: t for t in await driver.states()}
        return all(states.get(n) is not None and states[n].child_state is None for n in ("raven-gb", "raven-gc"))

    assert await wait_for(restarting, 40), ga.charon.read_log()[-3000:]
    cut(ga.ns, gc.underlay, False)
    assert await wait_for(lambda: installed(driver, "raven-gc"), 20), ga.charon.read_log()[-3000:]
    cut(ga.ns, gb.underlay, False)
    assert await wait_for(lambda: installed(driver, "raven-gb"), 20), ga.charon.read_log()[-3000:]
    after = reqids(ga.charon)
    # Traffic to both peers (without fixed reqids one of them stayed a black hole), each tunnel back on its own
    # reqid, none shared.
    reached = {p.name: await wait_for(lambda p=p: ping(ga.ns, ga.pod, p.pod, count=1), 5) for p in (gb, gc)}
    assert reached == {"gb": True, "gc": True}, (reached, before, after)
    assert after == before and len({r for rs in after.values() for r in rs}) == 2, (before, after)
