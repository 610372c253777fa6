"""The underlay lookup: the device holding the node IP and its MTU, read over Raven's netlink socket."""

from __future__ import annotations

import pytest

from e2e.netlab import Lab
from raven.dataplane.underlay import Underlay, detect_underlay

pytestmark = pytest.mark.root


async def test_the_device_with_the_node_ip_and_its_mtu(lab: Lab) -> None:
    ns, peer = lab.netns_many(["und", "undp"])
    lab.veth(ns, "eth7", peer, "eth0")
    ns.add_addr("eth7", "192.168.77.5/24")
    ns.ip("link", "set", "eth7", "mtu", "1420")
    assert await detect_underlay("192.168.77.5", netns=ns.name) == Underlay("eth7", 1420)
    assert await detect_underlay("192.168.77.6", netns=ns.name) is None
