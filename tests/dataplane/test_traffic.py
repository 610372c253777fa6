"""Real traffic through raven0: a member node reaches a remote subnet via the pool's virtual next hop.

Namespaces on one bridge: n1 (member, 192.168.60.1), g1 and g2 (gateway candidates, .2 and .3). Both
gateways answer for the "remote" address 10.99.0.1 (on lo), so which one carries the traffic shows
in their raven0 packet counters. Failover moves n1's neighbour + FDB entry from g1 to g2: O(1) writes,
no route touched, and the traffic follows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from e2e.netlab import Lab, Netns, Process
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.state import (
    POOL_VIRTUAL_NEXT_HOP,
    Address,
    FdbEntry,
    Neighbor,
    NodeNetwork,
    Route,
    Rule,
    VxlanLink,
)

pytestmark = pytest.mark.root

REMOTE = "10.99.0.1"


def mac(i: int) -> str:
    return f"02:f0:a8:3c:{i:02x}:00"


def raven0(i: int) -> VxlanLink:
    return VxlanLink("raven0", 200, 4472, 1450, mac(i), f"192.168.60.{i}", "eth0")


def member_state(gateway: int) -> NodeNetwork:
    return NodeNetwork(
        links=frozenset({raven0(1)}),
        addresses=frozenset({Address("raven0", "240.168.60.1/8")}),
        routes=frozenset(
            {Route("10.99.0.0/24", 9027, "raven0", POOL_VIRTUAL_NEXT_HOP, 1400)}
            | {Route(f"10.{100 + k}.0.0/24", 9027, "raven0", POOL_VIRTUAL_NEXT_HOP, 1400) for k in range(50)}
        ),
        rules=frozenset({Rule(9027, 9027)}),
        neighbors=frozenset({Neighbor("raven0", POOL_VIRTUAL_NEXT_HOP, mac(gateway))}),
        fdb=frozenset({FdbEntry("raven0", mac(gateway), f"192.168.60.{gateway}")}),
        mss_clamp_ifnames=frozenset({"raven0"}),
    )


def gateway_state(i: int) -> NodeNetwork:
    return NodeNetwork(
        links=frozenset({raven0(i)}),
        addresses=frozenset({Address("raven0", f"240.168.60.{i}/8")}),
        neighbors=frozenset({Neighbor("raven0", "240.168.60.1", mac(1))}),
        fdb=frozenset({FdbEntry("raven0", mac(1), "192.168.60.1")}),
    )


def rx_packets(ns: Netns) -> int:
    out = json.loads(ns.run(["ip", "-j", "-s", "link", "show", "raven0"]).stdout)
    return int(out[0]["stats64"]["rx"]["packets"])


def ping(ns: Netns, dst: str, count: int = 3) -> bool:
    return ns.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", dst], check=False).returncode == 0


async def test_member_reaches_remote_subnet_via_virtual_next_hop_and_follows_failover(lab: Lab) -> None:
    sw = lab.netns("sw")
    sw.add_bridge("br0")
    nodes = {}
    for i, name in ((1, "n1"), (2, "g1"), (3, "g2")):
        ns = lab.netns(name)
        lab.veth(ns, "eth0", sw, f"p{name}")
        sw.ip("link", "set", f"p{name}", "master", "br0")
        ns.add_addr("eth0", f"192.168.60.{i}/24")
        nodes[name] = ns
    for name in ("g1", "g2"):
        nodes[name].add_addr("lo", f"{REMOTE}/32")
    n1, g1, g2 = nodes["n1"], nodes["g1"], nodes["g2"]
    appliers = {name: KernelApplier(netns=ns.name) for name, ns in nodes.items()}
    try:
        assert not ping(n1, REMOTE, count=1)  # no route before Raven
        assert (await appliers["g1"].reconcile(gateway_state(2))).ok
        assert (await appliers["g2"].reconcile(gateway_state(3))).ok
        assert (await appliers["n1"].reconcile(member_state(gateway=2))).ok

        g1_before, g2_before = rx_packets(g1), rx_packets(g2)
        assert ping(n1, REMOTE)
        assert rx_packets(g1) - g1_before >= 3
        assert rx_packets(g2) == g2_before

        report = await appliers["n1"].reconcile(member_state(gateway=3))
        assert report.ok, report.errors
        assert report.writes["route"] == 0 and report.total_writes <= 3, report.writes

        g1_before, g2_before = rx_packets(g1), rx_packets(g2)
        assert ping(n1, REMOTE)
        assert rx_packets(g2) - g2_before >= 3
        assert rx_packets(g1) == g1_before
    finally:
        for a in appliers.values():
            await a.close()


SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.99.0.1", 5001))
s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    print(c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG), flush=True)
    c.close()
"""
CLIENT = "import socket; socket.create_connection(('10.99.0.1', 5001), timeout=5).close()"


async def test_forwarded_tcp_syns_are_clamped_to_the_path_mtu(lab: Lab) -> None:
    """A pod behind the member node opens TCP to the remote side: with the RAVEN-MSS chain the server
    sees an MSS that fits the route MTU (1400 - 40), without it the pod's 1460."""
    sw = lab.netns("sw")
    sw.add_bridge("br0")
    n1, g1, pod = lab.netns("n1"), lab.netns("g1"), lab.netns("pod")
    for i, ns in ((1, n1), (2, g1)):
        lab.veth(ns, "eth0", sw, f"p{ns.short}")
        sw.ip("link", "set", f"p{ns.short}", "master", "br0")
        ns.add_addr("eth0", f"192.168.60.{i}/24")
    lab.veth(pod, "eth0", n1, "vpod")
    pod.add_addr("eth0", "10.98.0.2/24")
    pod.ip("route", "add", "default", "via", "10.98.0.1")
    n1.add_addr("vpod", "10.98.0.1/24")
    g1.add_addr("lo", f"{REMOTE}/32")
    # The gateway's way back to the pod subnet behind the member (the plan's return route).
    g1_state = dataclasses.replace(
        gateway_state(2),
        routes=frozenset({Route("10.98.0.0/24", 9028, "raven0", "240.168.60.1")}),
        rules=frozenset({Rule(9026, 9028)}),
    )
    member = member_state(gateway=2)
    server = g1.popen(["python3", "-c", SERVER], name="mss-server")
    appliers = [KernelApplier(netns=n1.name), KernelApplier(netns=g1.name)]
    try:
        assert (await appliers[1].reconcile(g1_state)).ok
        unclamped = dataclasses.replace(member, mss_clamp_ifnames=frozenset())
        assert (await appliers[0].reconcile(unclamped)).ok  # also turns on forwarding on n1
        await _server_lines(server, 0)  # listening (python starts slowly on a loaded machine)
        pod.run(["python3", "-c", CLIENT])
        report = await appliers[0].reconcile(member)
        assert report.writes["iptables"] == 1, report.writes
        pod.run(["python3", "-c", CLIENT])
        seen = await _server_lines(server, 2)
        # Timestamps take 12 bytes of each segment, so MAXSEG is the advertised MSS minus 12.
        assert seen[0] > 1400 - 40 - 12 >= seen[1], seen
        assert seen[1] >= 1400 - 40 - 12 - 12, seen
    finally:
        for a in appliers:
            await a.close()


async def _server_lines(server: Process, count: int) -> list[int]:
    """The first `count` MSS values the server printed, once it is listening and has printed them."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = server.stdout_path.read_text().split()
        if lines[:1] == ["listening"] and len(lines) > count:
            return [int(x) for x in lines[1:count + 1]]
        await asyncio.sleep(0.05)
    raise AssertionError(f"server printed {server.stdout_path.read_text()!r}\n{server.logs()}")
