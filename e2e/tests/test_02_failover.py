"""Scenario 2: gateway failover under a 10 ms probe; and (issue 5) a peer's address change replaces
only that one connection on remote gateways."""

from __future__ import annotations

import pytest

from e2e.cluster import RavenCluster

from .conftest import MEASUREMENTS

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_gateway_failover_of_a_nat_pool_moves_traffic_to_the_new_gateway(rc: RavenCluster) -> None:
    dst = rc.member_node("cloud")
    r = rc.failover_under_probe("edge-a", dst, port=18100)
    MEASUREMENTS["failover_nat_pool"] = {"elected_s": round(r.elected_s, 3), "write_to_traffic_s":
                                         round(r.traffic_s, 3), "outage_s": round(r.probe.max_outage_s, 3),
                                         "lost": r.probe.lost, "sent": r.probe.sent}
    assert rc.active_endpoints()["gw-edge-a"] == [r.new]
    assert r.resumed, f"traffic did not resume through {r.new}: {r.probe}"
    # The new gateway carries the pool's tunnels; the old one (a member now) holds none any more.
    assert {"raven-gw-cloud", "raven-gw-edge-pub"} <= {n for n, sa in rc.sas(r.new).items()
                                                       if sa["state"] == "ESTABLISHED"}
    rc.wait_for("old gateway's tunnels to go", lambda: not any(n.startswith("raven-") for n in rc.sas(r.old)),
                timeout=30)


def _unique_ids(rc: RavenCluster, node: str) -> dict[str, tuple[str, str]]:
    return {name: (sa["uniqueid"], sa["remote-host"]) for name, sa in rc.sas(node).items()
            if sa["state"] == "ESTABLISHED"}


def test_peer_address_change_replaces_only_that_connection_on_remote_gateways(rc: RavenCluster) -> None:
    old = rc.active_gateway_node("gw-edge-pub")
    new = rc.member_node("edge-pub")
    new_ip = rc.cl.nodes[new].ip
    remotes = [rc.active_gateway_node(g) for g in ("gw-cloud", "gw-edge-a", "gw-edge-b")]
    before = {r: _unique_ids(rc, r) for r in remotes}
    for r in remotes:
        assert "raven-gw-edge-pub" in before[r], before[r]
    rc.set_node_ready(old, False)
    try:
        rc.wait_for("gw-edge-pub failover", lambda: rc.active_endpoints()["gw-edge-pub"] == [new], timeout=30)
        for r in remotes:
            def moved(r: str = r) -> bool:
                return _unique_ids(rc, r).get("raven-gw-edge-pub", ("", ""))[1] == new_ip
            rc.wait_for(f"{r}: tunnel to the new gw-edge-pub endpoint", moved, timeout=45)
        after = {r: _unique_ids(rc, r) for r in remotes}
    finally:
        rc.set_node_ready(old, True)
    for r in remotes:
        assert after[r]["raven-gw-edge-pub"][0] != before[r]["raven-gw-edge-pub"][0]
        others_before = {k: v for k, v in before[r].items() if k != "raven-gw-edge-pub"}
        others_after = {k: v for k, v in after[r].items() if k != "raven-gw-edge-pub"}
        assert others_after == others_before, f"{r}: other SAs were replaced too"
