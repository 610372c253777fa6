"""`raven --mode=agent --cleanup`, the real command in a node namespace: Raven's kernel objects and charon
connections are gone afterwards, and everything that was not Raven's is exactly as before."""

from __future__ import annotations

import sys

import pytest

from e2e.netlab import Lab
from raven.dataplane.ipsec import IPsecDriver
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.state import (
    Address,
    FdbEntry,
    IPsecConnection,
    Neighbor,
    NodeNetwork,
    Route,
    Rule,
    VxlanLink,
)
from tests.dataplane.conftest import kernel_snapshot

pytestmark = pytest.mark.root

PSK = "rdp-cleanup-test-psk-8d1e"
STATE = NodeNetwork(
    links=frozenset({VxlanLink("raven1", 201, 4473, 1350, "0e:72:f1:00:00:01", "241.0.0.1", None)}),
    addresses=frozenset({Address("raven1", "241.0.0.1/32")}),
    routes=frozenset(Route(f"10.{i}.0.0/24", 9027, "raven1", "241.0.0.2", 1350) for i in range(2, 40)),
    rules=frozenset({Rule(9027, 9027), Rule(9026, 9028, iif="raven1")}),
    neighbors=frozenset({Neighbor("raven1", "241.0.0.2", "0e:72:f1:00:00:02")}),
    fdb=frozenset({FdbEntry("raven1", "0e:72:f1:00:00:02", "241.0.0.2")}),
    mss_clamp_ifnames=frozenset({"raven1"}),
)
CONN = IPsecConnection(
    name="raven-gw-b", local_id="raven-gw-a", remote_id="raven-gw-b", local_addrs=("%any",),
    remote_addrs=("192.0.2.2",), remote_port=4500, local_ts="241.0.0.1/32", remote_ts="241.0.0.2/32",
    initiator=False,
)


async def test_cleanup_command_removes_ravens_state_and_nothing_else(lab: Lab) -> None:
    ns = lab.netns("cln")
    ns.ip("link", "set", "lo", "up")
    charon = ns.start_charon()
    # Someone else's objects, in the very tables and daemon Raven uses.
    ns.ip("route", "add", "10.99.0.0/24", "dev", "lo", "table", "9027")
    with charon.session() as s:
        s.load_conn({"site-vpn": {"version": 2, "remote_addrs": ["192.0.2.99"], "children": {"c": {}}}})
    before = kernel_snapshot(ns)

    kernel = KernelApplier(netns=ns.name)
    vpn = IPsecDriver(str(charon.vici_socket), PSK)
    try:
        assert (await kernel.reconcile(STATE)).ok
        assert (await vpn.reconcile([CONN])).ok
    finally:
        await kernel.close()
        await vpn.close()
    assert kernel_snapshot(ns) != before

    result = ns.run(
        [sys.executable, "-m", "raven.cli", "--mode=agent", "--cleanup", "--vici-socket", str(charon.vici_socket)],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert kernel_snapshot(ns) == before
    with charon.session() as s:
        conns = [n.decode() if isinstance(n, bytes) else n for n in s.get_conns()["conns"]]
        assert conns == ["site-vpn"]
        assert s.get_shared()["keys"] == []
