"""Scenario 2: gateway failover under a 10 ms probe; and (issue 5) a peer's address change replaces
only that one connection on remote gateways."""

from __future__ import annotations

import time

import pytest

from e2e.cluster import RavenCluster, metric
from e2e.probe import ContinuousProbe, ping

from .conftest import MEASUREMENTS

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _kernel_writes(rc: RavenCluster) -> dict[str, float]:
    return {n: metric(rc.metrics(f"agent/{n}"), "raven_agent_kernel_writes_total") for n in sorted(rc.agents)}


@pytest.mark.parametrize("how", ["crashed", "drained"])
def test_gateway_failover_of_a_nat_pool_moves_traffic_to_the_new_gateway(rc: RavenCluster, how: str) -> None:
    """crashed: the old gateway also drops off its LAN, so resumed traffic can only use the new one;
    drained: NotReady only (the issue's wording), the old gateway stands down by itself."""
    dst = rc.member_node("cloud")
    writes_before = _kernel_writes(rc)
    r = rc.failover_under_probe("edge-a", dst, port=18100 + (how == "drained"), dead=how == "crashed")
    MEASUREMENTS[f"failover_nat_pool_{how}"] = {
        "elected_s": round(r.elected_s, 3), "write_to_traffic_s": round(r.traffic_s, 3),
        "outage_s": round(r.probe.max_outage_s, 3), "lost": r.probe.lost, "sent": r.probe.sent}
    assert rc.active_endpoints()["gw-edge-a"] == [r.new]
    assert r.resumed, f"traffic did not resume through {r.new}: {r.probe}"
    # The new gateway carries the pool's tunnels and the probe's packets; the old one holds no tunnel.
    sas = rc.sas(r.new)
    assert {"raven-gw-cloud", "raven-gw-edge-pub"} <= {n for n, sa in sas.items() if sa["state"] == "ESTABLISHED"}
    assert any(int(c.get("packets-out", 0)) > 0 for c in sas["raven-gw-cloud"]["child-sas"].values())
    rc.wait_for("old gateway's tunnels to go", lambda: not any(n.startswith("raven-") for n in rc.sas(r.old)),
                timeout=30)
    # Stable next hops: nodes outside the pool changed O(1) kernel objects, whatever the number of subnets.
    writes_after = _kernel_writes(rc)
    outside = {n: writes_after[n] - writes_before[n] for n in writes_after
               if rc.cl.nodes[n].pool != "edge-a" and n in writes_before}
    MEASUREMENTS[f"failover_nat_pool_{how}"]["kernel_writes_outside_pool"] = outside
    assert all(delta <= 4 for delta in outside.values()), outside


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


def test_relay_failover_keeps_nat_to_nat_traffic_flowing(rc: RavenCluster) -> None:
    """The relay itself (gw-cloud) crashes: the NAT-NAT pair edge-a <-> edge-b follows it to its new endpoint."""
    old = rc.active_gateway_node("gw-cloud")
    new = rc.member_node("cloud")
    src = rc.cl.nodes[rc.member_node("edge-a")].pods[0]
    dst = rc.cl.nodes[rc.member_node("edge-b")].pods[0]
    with ContinuousProbe(src.netns, dst.netns, dst.ip, port=18102, name="relay-failover") as probe:
        assert probe.wait_first_reply()
        time.sleep(0.3)
        rc.cl.cut_link(old)
        rc.set_node_ready(old, False)
        try:
            rc.wait_for("gw-cloud to elect its other node", lambda: rc.active_endpoints()["gw-cloud"] == [new],
                        timeout=30)
            took = rc.wait_for("NAT-NAT traffic via the new relay endpoint",
                               lambda: ping(src.netns, dst.ip, count=1, wait=0.3).ok, timeout=60, interval=0.05)
            time.sleep(1.0)
        finally:
            res = probe.stop()
            rc.cl.restore_link(old)
            rc.set_node_ready(old, True)
    MEASUREMENTS["relay_failover"] = {"write_to_traffic_s": round(took, 3), "outage_s": round(res.max_outage_s, 3)}
    assert res.received > 0
    end = res.sent * res.interval_s
    assert all(o.start_s + o.length_s < end - 0.3 for o in res.outages), res
    rc.wait_for("the new relay endpoint's tunnels to both NAT pools",
                lambda: {"raven-gw-edge-a", "raven-gw-edge-b"} <= rc.tunnels_up(new), timeout=15)
