"""Simultaneous initiation with real charons (kernel-libipsec): both ends of a mutual connection (a NAT-punched pair,
`IPsecConnection.mutual`) initiate at once and each ends up with two IKE_SAs.

Topology: ga (192.0.1.1) - rt - gb (192.0.2.1); rt delays every forwarded packet by 0.2 s each way (a userspace
delay element, no netem here), which makes the two cases deterministic:
- initiations less than the delay apart cross: each end answers the other's IKE_AUTH before its own answer is back,
  charon's uniqueness check sees no established duplicate, both SAs stay, and the driver deletes one (once, at one
  end, without losing a packet);
- initiations further apart than the delay do not: the earlier initiator's SA is up when it answers the other, and
  charon itself deletes its own SA 10 s later; the driver leaves that to charon, and the peer must not re-establish
  what was deleted (it did with close_action = start: a new duplicate every 10 s).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from e2e.netlab import Lab
from e2e.probe import ContinuousProbe
from raven.dataplane.ipsec import IPsecDriver
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.state import IPsecConnection
from tests.dataplane.test_ipsec import PSK, Gw, conn, kernel_state

pytestmark = pytest.mark.root

DELAY_MS = 200.0


@pytest.fixture
def pair(lab: Lab) -> Iterator[dict[str, Gw]]:
    rt = lab.netns("rt")
    rt.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    out: dict[str, Gw] = {}
    for i, name in enumerate(("ga", "gb"), start=1):
        ns = lab.netns(name)
        lab.veth(ns, "eth0", rt, f"r{name}")
        rt.add_addr(f"r{name}", f"192.0.{i}.254/24")
        ns.add_addr("eth0", f"192.0.{i}.1/24")
        ns.add_addr("lo", f"10.{i}.0.1/32")
        ns.ip("route", "add", "default", "via", f"192.0.{i}.254")
        out[name] = Gw(name, i, ns, ns.start_charon(), f"192.0.{i}.1")
    delays = [rt.add_delay(f"r{name}", DELAY_MS, dev=f"dly{i}", table=100 + i) for i, name in enumerate(out)]
    yield out
    for d in delays:
        d.stop(1.0)


def sas(g: Gw, name: str) -> list[dict[str, Any]]:
    """charon's IKE_SAs of connection `name` at `g`, read independently of the driver."""
    with g.charon.session() as s:
        return [ike for item in s.list_sas() for n, ike in item.items() if n == name]


def up(ike: dict[str, Any]) -> bool:
    children = list(ike.get("child-sas", {}).values())
    return ike["state"] == b"ESTABLISHED" and any(c["state"] == b"INSTALLED" for c in children)


def spis(ike: dict[str, Any]) -> tuple[str, str]:
    return ike["initiator-spi"].decode(), ike["responder-spi"].decode()


def packets_out(ike: dict[str, Any]) -> int:
    return sum(int(c.get("packets-out", 0)) for c in ike.get("child-sas", {}).values())


@dataclass
class Ends:
    """Both ends' mutual connection, driver and what its passes deleted."""

    pair: dict[str, Gw]
    conns: dict[str, IPsecConnection]
    drivers: dict[str, IPsecDriver]
    names: dict[str, str] = field(default_factory=lambda: {"ga": "raven-gb", "gb": "raven-ga"})
    ended: dict[str, int] = field(default_factory=lambda: {"ga": 0, "gb": 0})

    def spis(self) -> dict[str, list[tuple[str, str]]]:
        return {n: sorted(spis(i) for i in sas(g, self.names[n])) for n, g in self.pair.items()}

    def logs(self) -> tuple[str, str]:
        return self.pair["ga"].charon.read_log()[-3000:], self.pair["gb"].charon.read_log()[-3000:]

    async def both_hold_two(self) -> None:
        """Until both ends hold two ESTABLISHED IKE_SAs, each with its CHILD_SA INSTALLED."""
        deadline = time.monotonic() + 30
        while not all(len([i for i in sas(g, self.names[n]) if up(i)]) == 2 for n, g in self.pair.items()):
            assert time.monotonic() < deadline, self.logs()
            await asyncio.sleep(0.1)

    async def passes_until(self, done: Callable[[], bool], within_s: float) -> None:
        """The agent's passes (its tunnel check reconciles when it sees a duplicate to delete), until `done`."""
        deadline = time.monotonic() + within_s
        while not done():
            assert time.monotonic() < deadline, (self.spis(), self.ended, self.logs())
            for n in self.pair:
                report = await self.drivers[n].reconcile([self.conns[n]])
                assert report.ok, report.errors
                self.ended[n] += report.writes.get("terminate_duplicate", 0)
            await asyncio.sleep(0.2)


@pytest.fixture(name="e")
async def ends(pair: dict[str, Gw]) -> AsyncIterator[Ends]:
    ga, gb = pair["ga"], pair["gb"]
    conns = {"ga": dataclasses.replace(conn(ga, gb, True), mutual=True),
             "gb": dataclasses.replace(conn(gb, ga, True), mutual=True)}
    kernels = {n: KernelApplier(netns=g.ns.name) for n, g in pair.items()}
    drivers = {n: IPsecDriver(str(g.charon.vici_socket), PSK) for n, g in pair.items()}
    try:
        for n, g in pair.items():
            assert (await kernels[n].reconcile(kernel_state(g, [gb if n == "ga" else ga]))).ok
        yield Ends(pair, conns, drivers)
    finally:
        for k in kernels.values():
            await k.close()
        for d in drivers.values():
            await d.close()


def lossless(probe: ContinuousProbe, what: str) -> None:
    result = probe.stop()
    print(f"{what}; probe sent {result.sent}, lost {result.sent - result.received}, outages {result.outages}")
    assert result.sent > 500
    assert result.received == result.sent, result.outages


def one_initiation_each(e: Ends) -> None:
    """No end started a second IKE_SA (the peer of a delete does not re-establish: close_action none when mutual)."""
    for n, g in e.pair.items():
        assert g.charon.read_log().count("initiating IKE_SA") == 1, (n, g.charon.read_log()[-3000:])


async def test_both_ends_initiate_at_once_and_one_end_deletes_the_duplicate_without_loss(e: Ends) -> None:
    ga, gb = e.pair["ga"], e.pair["gb"]
    # Both load and initiate at once (the driver initiates an initiator on load).
    first = await asyncio.gather(*(e.drivers[n].reconcile([e.conns[n]]) for n in e.pair))
    assert all(r.ok and r.writes["initiate"] == 1 for r in first), first
    await e.both_hold_two()
    both_up = time.monotonic()
    pairs = {n: {spis(i): i for i in sas(g, e.names[n])} for n, g in e.pair.items()}
    assert set(pairs["ga"]) == set(pairs["gb"]) and len(pairs["ga"]) == 2  # the same two at both ends
    keep = min(pairs["ga"], key=lambda p: int(p[0], 16))

    with ContinuousProbe(ga.ns, gb.ns, gb.pod, name="dup-probe") as probe:
        assert probe.wait_first_reply(), e.logs()
        # What the zero loss rests on: each end encrypts with the CHILD_SA it installed last, the one of the IKE_SA
        # it initiated (it answered the peer's IKE_AUTH first); the one it answered carries only inbound.
        deadline = time.monotonic() + 5
        while not all(packets_out(i) > 0 for n, g in e.pair.items() for i in sas(g, e.names[n])
                      if i.get("initiator") == b"yes"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        for n, g in e.pair.items():
            for ike in sas(g, e.names[n]):
                if ike.get("initiator") != b"yes":
                    assert packets_out(ike) == 0, (n, ike)

        await e.passes_until(lambda: all(len(v) == 1 for v in e.spis().values()), within_s=40)
        cleaned = time.monotonic()
        # Exactly one DELETE, sent by the end that answered the duplicate, and the same SA kept at both ends: the
        # one with the smaller initiator SPI.
        assert sorted(e.ended.values()) == [0, 1], e.ended
        actor = next(n for n, c in e.ended.items() if c)
        other = "gb" if actor == "ga" else "ga"
        dropped = next(p for p in pairs[actor] if p != keep)
        assert pairs[actor][dropped].get("initiator") != b"yes"
        assert e.spis() == {"ga": [keep], "gb": [keep]}
        # The peer removed its side on the DELETE and started no new IKE_SA.
        peer = e.pair[other]
        deadline = time.monotonic() + 5
        while "received DELETE for IKE_SA" not in peer.charon.read_log():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        one_initiation_each(e)
        assert (await e.drivers[other].reconcile([e.conns[other]])).total_writes == 0
        assert [spis(i) for i in sas(peer, e.names[other]) if up(i)] == [keep]
        await asyncio.sleep(1.0)  # the probe runs on over the one SA left, then stops
    lossless(probe, f"both up -> duplicate deleted: {cleaned - both_up:.2f} s")


async def test_a_duplicate_charon_deletes_itself_is_not_re_established_and_the_driver_leaves_it(
    lab: Lab, e: Ends,
) -> None:
    ga, gb = e.pair["ga"], e.pair["gb"]
    # ga initiates 0.4 s before gb (twice the one-way delay). IKE is held back at rt until both have initiated (as
    # the NATs of a punched pair drop the first attempts): otherwise ga's IKE_SA_INIT would reach gb before gb loaded
    # its connection. charon retransmits 1 s after each initiation: 0.4 s apart still.
    drop = ["FORWARD", "-p", "udp", "-j", "DROP"]
    lab["rt"].run(["iptables", "-w", "5", "-I", *drop])
    assert (await e.drivers["ga"].reconcile([e.conns["ga"]])).writes["initiate"] == 1
    await asyncio.sleep(0.4)
    assert (await e.drivers["gb"].reconcile([e.conns["gb"]])).writes["initiate"] == 1
    lab["rt"].run(["iptables", "-w", "5", "-D", *drop])
    await e.both_hold_two()
    before = e.spis()
    assert before["ga"] == before["gb"] and len(before["ga"]) == 2
    # Not crossed: ga's SA was up when ga answered gb's, and charon scheduled the delete of ga's own.
    assert "schedule delete of duplicate IKE_SA" in ga.charon.read_log(), e.logs()
    mine = next(spis(i) for i in sas(ga, e.names["ga"]) if i.get("initiator") == b"yes")

    with ContinuousProbe(ga.ns, gb.ns, gb.pod, name="dup-probe") as probe:
        assert probe.wait_first_reply()
        # The agent's passes go on while charon deletes its duplicate (ga's, 10 s after gb's came up) and gb
        # processes the DELETE.
        await e.passes_until(lambda: "received DELETE for IKE_SA" in gb.charon.read_log()
                             and all(len(v) == 1 for v in e.spis().values()), within_s=30)
        assert e.ended == {"ga": 0, "gb": 0}  # charon's own cleanup: the driver waited it out
        left = [p for p in before["ga"] if p != mine]
        assert e.spis() == {"ga": left, "gb": left}
        one_initiation_each(e)
        await asyncio.sleep(1.0)
    lossless(probe, "charon's own duplicate delete")
