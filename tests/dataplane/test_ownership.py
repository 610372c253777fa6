"""Raven's devices are exactly raven0 and raven1: a user's device that merely starts with "raven" is not
Raven's, and neither a reconcile nor a cleanup may touch it."""

from __future__ import annotations

import pytest

from e2e.netlab import Lab
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.state import Address, NodeNetwork, VxlanLink
from tests.dataplane.conftest import ip_json

pytestmark = pytest.mark.root

STATE = NodeNetwork(
    links=frozenset({VxlanLink("raven1", 201, 4473, 1350, "0e:72:f1:00:00:01", "241.0.0.1", None)}),
    addresses=frozenset({Address("raven1", "241.0.0.1/32")}),
)


async def test_a_foreign_device_named_like_ravens_survives_reconcile_and_cleanup(lab: Lab) -> None:
    ns = lab.netns("own")
    ns.ip("link", "add", "ravenbr0", "type", "bridge")
    ns.ip("addr", "add", "10.77.0.1/24", "dev", "ravenbr0")
    kernel = KernelApplier(netns=ns.name)
    try:
        assert (await kernel.reconcile(STATE)).ok
        assert (await kernel.reconcile(STATE)).total_writes == 0
        assert (await kernel.cleanup()).ok
    finally:
        await kernel.close()
    names = {link["ifname"] for link in ip_json(ns, "link", "show")}
    assert "ravenbr0" in names and "raven1" not in names
    addrs = [a["local"] for e in ip_json(ns, "-4", "addr", "show", "dev", "ravenbr0") for a in e["addr_info"]]
    assert addrs == ["10.77.0.1"]
