"""The via probes' source NAT on a real kernel (a netns, real iptables), through the agent's IngressGuard: written
with a gateway's state, converged = zero writes, removed with the state, foreign nat rules untouched; a member's
echo to a peer's inner address really leaves with the gateway's inner address as source."""

from __future__ import annotations

import dataclasses

import pytest

from e2e.netlab import Lab, Netns
from raven.dataplane.ingress import IngressFilterApplier, IngressGuard
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.probenat import CHAIN, ProbeNatApplier, render
from raven.dataplane.state import ProbeSnat
from tests.dataplane.test_ingress import STATE

pytestmark = pytest.mark.root

SNAT = ProbeSnat("240.0.0.0/8", "241.0.0.0/8", "241.0.0.1")
FOREIGN = [["-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE"]]


def _nat(ns: Netns) -> list[str]:
    return [line for line in ns.run(["iptables-save", "-t", "nat"]).stdout.splitlines() if line.startswith("-A")]


async def test_probe_snat_is_reconciled_with_the_gateway_state_and_leaves_foreign_rules(lab: Lab) -> None:
    ns = lab.netns("snat")
    for args in FOREIGN:
        ns.run(["iptables", "-w", *args])
    before = _nat(ns)
    kernel = KernelApplier(netns=ns.name)
    guard = IngressGuard(kernel, IngressFilterApplier(ns.name), ProbeNatApplier(ns.name))
    gateway = dataclasses.replace(STATE, probe_snat=SNAT)
    try:
        first = await guard.reconcile(gateway)
        assert first.ok, first.errors
        assert f"-A {CHAIN} {render(SNAT)[0]}" in _nat(ns) and _nat(ns).count(f"-A POSTROUTING -j {CHAIN}") == 1
        again = await guard.reconcile(gateway)
        assert again.ok and again.total_writes == 0, again.writes
        member = await guard.reconcile(STATE)  # the node became a member: its gateway's NAT goes
        assert member.ok and member.writes["iptables"] == 1
        assert not [r for r in _nat(ns) if CHAIN in r]
        await guard.reconcile(gateway)
        gone = await guard.reconcile(dataclasses.replace(STATE, links=frozenset(), addresses=frozenset(),
                                                         routes=frozenset(), rules=frozenset(), ingress=None,
                                                         mss_clamp_ifnames=frozenset()))
        assert gone.ok
    finally:
        await kernel.close()
    assert _nat(ns) == before


def test_a_forwarded_echo_leaves_with_the_gateways_inner_address(lab: Lab) -> None:
    """member -- gw -- peer, three namespaces: the member's echo from 240.0.0.2 to the peer's 241.0.0.2 arrives
    from 241.0.0.1 (the gateway's inner address), and the reply finds its way back to the member."""
    member, gw, peer = lab.netns("m"), lab.netns("g"), lab.netns("p")
    lab.veth(member, "eth0", gw, "m0")
    lab.veth(gw, "p0", peer, "eth0")
    member.ip("addr", "add", "240.0.0.2/8", "dev", "eth0")
    gw.ip("addr", "add", "240.0.0.1/8", "dev", "m0")
    gw.ip("addr", "add", "241.0.0.1/32", "dev", "lo")
    peer.ip("addr", "add", "241.0.0.2/32", "dev", "lo")
    member.ip("route", "add", "241.0.0.2/32", "via", "240.0.0.1")
    gw.ip("route", "add", "241.0.0.2/32", "dev", "p0")
    peer.ip("route", "add", "241.0.0.1/32", "dev", "eth0")  # the peer knows the gateway's inner address only
    gw.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    assert member.run(["ping", "-c1", "-W1", "241.0.0.2"], check=False).returncode != 0  # no way back
    applier = ProbeNatApplier(gw.name)
    assert applier.write(render(SNAT), applier.read()) == 1
    assert member.run(["ping", "-c2", "-i0.2", "-W1", "241.0.0.2"], check=False).returncode == 0
    applier.remove()
    assert not [r for r in _nat(gw) if CHAIN in r]
