"""Scenario 2: gateway failover under a 10 ms probe; and (issue 5) a peer's address change replaces
only that one connection on remote gateways."""

from __future__ import annotations

import time

import pytest

from e2e.cluster import RavenCluster
from e2e.probe import ContinuousProbe, ProbeResult, ping

from .conftest import MEASUREMENTS

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _member(rc: RavenCluster, pool: str, gateway: str) -> str:
    active = rc.active_gateway_node(gateway)
    return next(n.name for n in rc.cl.pools[pool].nodes if n.name != active and n.name in rc.registered)


def _trailing_ok(res: ProbeResult) -> bool:
    """No outage runs to the end of the probe: traffic was flowing when it stopped."""
    end = res.sent * res.interval_s
    return all(o.start_s + o.length_s < end - 0.3 for o in res.outages)


def failover_once(rc: RavenCluster, gateway: str, pool: str, dst_pool: str, port: int) -> dict[str, float]:
    """Mark the active endpoint of `gateway` NotReady while a pod behind the pool's other node probes a pod
    behind a non-gateway node of `dst_pool` every 10 ms. Returns measurements; restores the node to Ready."""
    old = rc.active_gateway_node(gateway)
    new = _member(rc, pool, gateway)
    src = rc.cl.nodes[new].pods[0]
    dst = rc.cl.nodes[_member(rc, dst_pool, f"gw-{dst_pool}")].pods[0]
    with ContinuousProbe(src.netns, dst.netns, dst.ip, port=port, name=f"failover-{port}") as probe:
        assert probe.wait_first_reply(), "probe never answered before the failover"
        time.sleep(0.3)
        rc.set_node_ready(old, False)
        try:
            elected = rc.wait_for(f"{gateway} to elect {new}",
                                  lambda: rc.active_endpoints()[gateway] == [new], timeout=30, interval=0.05)
            resumed = rc.wait_for("traffic through the new gateway",
                                  lambda: ping(src.netns, dst.ip, count=1, wait=0.3).ok, timeout=30, interval=0.05)
            time.sleep(1.0)
        finally:
            res = probe.stop()
            rc.set_node_ready(old, True)
    assert res.received > 0 and _trailing_ok(res), f"traffic did not resume through {new}: {res}"
    sas = rc.sas(new)
    assert any(sa["state"] == "ESTABLISHED" for sa in sas.values()), sas
    return {"elected_s": elected, "write_to_traffic_s": resumed + elected, "outage_s": res.max_outage_s,
            "lost": res.lost, "sent": res.sent}


def test_gateway_failover_of_a_nat_pool_moves_traffic_to_the_new_gateway(rc: RavenCluster) -> None:
    m = failover_once(rc, "gw-edge-a", "edge-a", "cloud", port=18100)
    MEASUREMENTS["failover_nat_pool"] = {k: round(v, 3) for k, v in m.items()}
    # The pool's traffic now leaves through the new gateway: the old one holds no tunnel any more.
    new = rc.active_gateway_node("gw-edge-a")
    rc.wait_for("old gateway's tunnels to go", lambda: not any(
        n.startswith("raven-") for n in rc.sas(next(x.name for x in rc.cl.pools["edge-a"].nodes
                                                        if x.name != new and x.name in rc.registered))),
        timeout=30)


def _unique_ids(rc: RavenCluster, node: str) -> dict[str, tuple[str, str]]:
    return {name: (sa["uniqueid"], sa["remote-host"]) for name, sa in rc.sas(node).items()
            if sa["state"] == "ESTABLISHED"}


def test_peer_address_change_replaces_only_that_connection_on_remote_gateways(rc: RavenCluster) -> None:
    old = rc.active_gateway_node("gw-edge-pub")
    new = _member(rc, "edge-pub", "gw-edge-pub")
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
