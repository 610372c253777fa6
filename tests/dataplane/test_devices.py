"""The devices on the encrypted path, read from a real namespace: libipsec's TUN device (appearing after the
agent started, as when charon starts later), the underlay's MTU, and the path MTU towards a peer."""

from __future__ import annotations

import json
import sys

from e2e.netlab import Lab

# Runs inside the namespace: one UnderlayFollower across three plans, the namespace changing between them.
_FOLLOW = r"""
import asyncio, json, subprocess, sys
from raven.agent.app import UnderlayFollower, plan_config
from raven.agent.plan import PlanConfig
from raven.api.node import Node
from raven.agent.addressing import compute_mtus

async def main() -> None:
    f = UnderlayFollower(path_refresh_s=float(sys.argv[1]))
    node = Node(name="n", internal_ip="192.0.2.1", pod_cidrs=(), ready=True)
    out = []
    for step in sys.argv[2:]:
        if step != "-":
            subprocess.run(step.split(), check=True)
        d = await f.follow(node)
        f.peers = frozenset({"198.51.100.7"})
        cfg = PlanConfig(detected_underlay_mtu=d.underlay.mtu if d.underlay else 1500,
                         detected_tunnel_device_mtu=d.tunnel_device.mtu if d.tunnel_device else None,
                         detected_path_mtu=d.path_mtu)
        m = cfg._mtus()
        out.append({"underlay": d.underlay.mtu if d.underlay else None,
                    "tun": d.tunnel_device.mtu if d.tunnel_device else None, "path": d.path_mtu,
                    "raven0": m.intra_pool, "raven1": m.inter_gateway})
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_follower_reads_the_tun_device_the_underlay_and_the_path_mtu_before_each_plan(lab: Lab) -> None:
    a, b = lab.netns_many(["a", "b"])
    lab.veth(a, "eth0", b, "eth0", mtu=1500)
    a.add_addr("eth0", "192.0.2.1/24")
    a.add_route("198.51.100.0/24", via="192.0.2.2")
    steps = [
        "-",  # no ipsec0 yet (charon not started): raven1 from the underlay and ESP alone
        "ip tuntap add ipsec0 mode tun",  # charon started: libipsec's TUN, MTU 1500 until charon sets it
        "ip link set ipsec0 mtu 1400",  # charon's default kernel-libipsec.mtu
        "ip route replace 198.51.100.0/24 via 192.0.2.2 mtu 1300",  # a smaller path towards the peer
        "ip link set eth0 mtu 1400",  # the underlay itself shrinks
        "ip route replace 198.51.100.0/24 via 192.0.2.2 mtu 1000",  # not believed (below 1280)
    ]
    out = a.run([sys.executable, "-c", _FOLLOW, "0", *steps])
    got = [(s["underlay"], s["tun"], s["path"], s["raven0"], s["raven1"]) for s in json.loads(out.stdout)]
    assert got == [
        (1500, None, None, 1450, 1372),  # (no peer planned yet)
        (1500, 1500, 1500, 1450, 1372),
        (1500, 1400, 1500, 1450, 1350),  # 1400 of ipsec0 - 50 VXLAN: the outer VXLAN packet fits ipsec0
        # 1300: 1300 - 20 - 8 - 8 - 16 - 16 = 1232 = 77 blocks, - 2 = 1230 carried, - 50 VXLAN
        (1500, 1400, 1300, 1450, 1180),
        (1400, 1400, 1300, 1350, 1180),
        # underlay 1400: 1400 - 68 = 1332 -> 1328 - 2 = 1326 carried (< ipsec0), - 50 VXLAN
        (1400, 1400, None, 1350, 1276),
    ]


def test_a_device_named_ipsec0_that_is_not_a_tun_device_is_not_libipsecs(lab: Lab) -> None:
    a, b = lab.netns_many(["a", "b"])
    lab.veth(a, "ipsec0", b, "eth0", mtu=1300)
    code = "import asyncio; from raven.dataplane.devices import tunnel_device; print(asyncio.run(tunnel_device()))"
    assert a.run([sys.executable, "-c", code]).stdout.strip() == "None"
    b.run(["ip", "tuntap", "add", "ipsec0", "mode", "tun"])
    assert b.run([sys.executable, "-c", code]).stdout.strip() == "TunnelDevice(ifname='ipsec0', mtu=1500)"


def test_path_mtus_are_read_again_only_when_the_peers_change_or_after_the_refresh_period(lab: Lab) -> None:
    a, b = lab.netns_many(["a", "b"])
    lab.veth(a, "eth0", b, "eth0", mtu=1500)
    a.add_addr("eth0", "192.0.2.1/24")
    a.add_route("198.51.100.0/24", via="192.0.2.2")
    steps = ["-", "-", "ip route replace 198.51.100.0/24 via 192.0.2.2 mtu 1300"]
    out = a.run([sys.executable, "-c", _FOLLOW, "3600", *steps])
    # The peer is set after the first plan (read then), unchanged after: the smaller route is not seen yet.
    assert [s["path"] for s in json.loads(out.stdout)] == [None, 1500, 1500]


_NODE_SOURCE = r"""
import asyncio, json, subprocess, sys
from raven.agent.app import UnderlayFollower
from raven.api.node import Node

async def main() -> None:
    f = UnderlayFollower()
    node = Node(name="n", internal_ip="192.0.2.1", pod_cidrs=("10.240.5.0/24",), ready=True)
    out = []
    for step in sys.argv[1:]:
        if step != "-":
            subprocess.run(step.split(), check=True)
        out.append((await f.follow(node)).node_source)
    print(json.dumps(out))

asyncio.run(main())
"""


def test_the_follower_finds_the_address_the_node_already_holds_in_its_pod_cidr(lab: Lab) -> None:
    """The plan's node source prefers the CNI's own address (bridge, cilium_host) over Raven's /32 on raven0."""
    (a,) = lab.netns_many(["a"])
    a.run(["ip", "link", "add", "eth0", "type", "bridge"])
    a.add_addr("eth0", "192.0.2.1/24")
    steps = [
        "ip link add raven0 type bridge",
        "ip addr add 10.240.5.1/32 dev raven0",  # Raven's own: not evidence
        "ip link add cilium_host type bridge",
        "ip addr add 10.240.5.77/32 dev cilium_host",  # the CNI's router address inside the pod CIDR
        "ip addr add 10.240.6.1/24 dev eth0",  # outside the pod CIDR
        "ip addr del 10.240.5.77/32 dev cilium_host",
    ]
    out = a.run([sys.executable, "-c", _NODE_SOURCE, *steps])
    assert json.loads(out.stdout) == [None, None, None, "10.240.5.77", "10.240.5.77", None]
