"""Make-before-break (raven.agent.staging) with real traffic: a NAT-NAT pair (edge-a, edge-b) relayed through the
cloud becomes direct when edge-a is made reachable (exposeType PublicIP, its router's WAN address as publicIP and a
DNAT of the tunnel ports on that router), and relayed again when the exposure is removed. A 10 ms UDP probe and a
long-lived TCP transfer (iperf3) run from a pod in edge-a to a pod in edge-b across both changes.

Planned changes: the new path's tunnel comes up beside the old one, the routes move once it is verified (SA or
handshake up and the path-health probe through it `up`), the old path's leftovers go after --path-change-grace.

Its own three-pool cluster per VPN driver (prefix ``<session prefix>k``), removed at the end of the module."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from e2e.cluster import RavenCluster, metric
from e2e.iperf import iperf3_run
from e2e.netlab import find_leftovers
from e2e.probe import ContinuousProbe, ProbeResult
from e2e.topology import TopologySpec, cut_topology
from raven.kube.client import GATEWAYS

from .conftest import MEASUREMENTS, own_cluster
from .conftest import PREFIX as SESSION_PREFIX

pytestmark = [pytest.mark.root, pytest.mark.slow]
PREFIX = f"{SESSION_PREFIX}k"
POOLS = ("cloud", "edge-a", "edge-b")
GRACE = 3.0
TCP_S = 30.0  # the transfer outlasts both changes (checked; they take about 15 s)
HELD_S = 5.0  # how long the test keeps the direct path blocked
BEFORE = 3.0  # seconds each probe runs before its change: the lab's loss without any change, for comparison
_VIA = re.compile(r"\bvia (\S+)")


def spec() -> TopologySpec:
    """The default topology cut down to its cloud and two NAT'd edge pools, one node each."""
    return cut_topology(POOLS)


@pytest.fixture(scope="module", params=["wireguard", "ipsec"])
def mbb(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    driver: str = request.param
    cluster = RavenCluster(spec(), prefix=PREFIX, vpn_driver=driver, controllers=1,
                           # Routing by cost never picks an unmeasured direct link (test_10_routing covers its
                           # moves); without it the plan moves the pair the moment a pool is exposed, which is the
                           # change the staging guard must hold until the new tunnel is verified.
                           agent_args=("--path-change-grace", str(GRACE), "--no-routing-by-cost"))
    yield from own_cluster(request, cluster)
    assert not any(find_leftovers(PREFIX).values()), find_leftovers(PREFIX)


def next_hop(rc: RavenCluster, node: str, dst: str) -> str | None:
    found = _VIA.search(rc.route_get(node, dst))
    return found.group(1) if found else None


def expose(rc: RavenCluster, on: bool) -> None:
    """gw-edge-a reachable at its router's WAN address (on), or under NAT again (off)."""
    gw = rc.get(GATEWAYS, "gw-edge-a")
    eps = copy.deepcopy(gw["spec"]["endpoints"])
    wan = rc.cl.pools["edge-a"].router_wan_ip
    for ep in eps:
        ep["underNAT"] = not on  # an exposed Gateway has no endpoint under NAT (its public address is forwarded)
        if on:
            ep["publicIP"] = wan
        else:
            ep.pop("publicIP", None)
    rc.patch(GATEWAYS, "gw-edge-a", {"spec": {"exposeType": "PublicIP" if on else None, "endpoints": eps}})


def dnat(rc: RavenCluster, on: bool) -> None:
    """The router of edge-a forwards the tunnel ports (IKE 500, NAT-T / WireGuard 4500) to its gateway node."""
    router = rc.cl.pools["edge-a"].router
    node_ip = rc.cl.nodes["edge-a-1"].ip
    rule = ["PREROUTING", "-i", "wan0", "-d", rc.cl.pools["edge-a"].router_wan_ip, "-p", "udp", "-m", "multiport",
            "--dports", "500,4500", "-j", "DNAT", "--to-destination", node_ip]
    router.run(["iptables", "-t", "nat", "-A" if on else "-D", *rule])


def switch(rc: RavenCluster, relay: str, direct: bool, pod_a: str, pod_b: str) -> float:
    """Seconds until both gateways route the pair off the relay (direct) or through it again."""
    def done() -> bool:
        hops = (next_hop(rc, "edge-a-1", pod_b), next_hop(rc, "edge-b-1", pod_a))
        return all((h != relay) if direct else (h == relay) for h in hops)

    return rc.wait_for("the pair " + ("direct" if direct else "relayed"), done, timeout=60, interval=0.02)


def after(r: ProbeResult, changed_at: float) -> tuple[int, list[tuple[float, float]]]:
    """Packets lost from the Gateway change on, and those outages as (start, length) in seconds from the change."""
    t0 = changed_at - (r.start_monotonic or changed_at)
    outs = [o for o in r.outages if o.start_s + o.length_s > t0]
    return sum(o.lost for o in outs), [(round(o.start_s - t0, 3), round(o.length_s, 3)) for o in outs]


def summary(r: ProbeResult, switch_s: float, changed_at: float) -> dict[str, Any]:
    """The probe's loss before the change (the lab's own noise) and from it on, the outages after the change and how
    long the routes took to move."""
    lost, outages = after(r, changed_at)
    return {"lost_after_change": lost, "lost_before_change": r.lost - lost, "sent": r.sent,
            "outages_after_change_s": outages, "switch_s": round(switch_s, 3)}


def test_relay_to_direct_and_back_under_a_10ms_probe_and_a_long_tcp_transfer(mbb: RavenCluster) -> None:
    rc = mbb
    driver = rc.vpn_driver
    src, dst = rc.cl.nodes["edge-a-1"].pods[0], rc.cl.nodes["edge-b-1"].pods[0]
    cloud_pod = rc.cl.nodes["cloud-1"].pods[0]
    relay = next_hop(rc, "edge-a-1", dst.ip)
    assert relay is not None and relay == next_hop(rc, "edge-a-1", cloud_pod.ip)  # relayed via the cloud
    assert relay == next_hop(rc, "edge-b-1", src.ip)

    with ThreadPoolExecutor(1) as pool:
        tcp = pool.submit(iperf3_run, src.netns, dst.netns, dst.ip, 18500, TCP_S, f"mbb-{driver}", ("-b", "2M"))
        with ContinuousProbe(src.netns, dst.netns, dst.ip, port=18510, name=f"mbb-up-{driver}") as up:
            assert up.wait_first_reply(), "the relayed pair never answered"
            time.sleep(BEFORE)
            dnat(rc, True)
            exposed_at = time.monotonic()
            expose(rc, True)
            to_direct = switch(rc, relay, True, src.ip, dst.ip)
            time.sleep(GRACE + 1.0)  # the relay's leftovers go meanwhile
            direct_result = up.stop()
        with ContinuousProbe(src.netns, dst.netns, dst.ip, port=18511, name=f"mbb-down-{driver}") as down:
            assert down.wait_first_reply(), "the direct pair stopped answering"
            time.sleep(BEFORE)
            hidden_at = time.monotonic()
            expose(rc, False)
            to_relay = switch(rc, relay, False, src.ip, dst.ip)
            time.sleep(GRACE + 1.0)  # the direct tunnel goes after the grace
            relay_result = down.stop()
        assert not tcp.done(), "the TCP transfer ended before both changes were over"
        dnat(rc, False)
        transfer = tcp.result(timeout=TCP_S + 60)  # raises on a reset or any other failure of the transfer

    switches = {n: metric(rc.metrics(f"agent/{n}"), "raven_path_switch_total", kind="planned")
                for n in ("edge-a-1", "edge-b-1")}
    MEASUREMENTS[f"make_before_break_{driver}"] = {
        "relay_to_direct": summary(direct_result, to_direct, exposed_at),
        "direct_to_relay": summary(relay_result, to_relay, hidden_at),
        "tcp_bytes": transfer.bytes, "tcp_retransmits": transfer.retransmits,
        "planned_switches": switches,
    }
    logs = {n: rc.agents[n].logs() for n in ("edge-a-1", "edge-b-1")}
    assert all("path switched" in text for text in logs.values())
    assert all(v >= 2 for v in switches.values()), switches
    lost_up, _ = after(direct_result, exposed_at)
    lost_down, _ = after(relay_result, hidden_at)
    # The planned change to direct loses nothing from the change on, with either driver (IPsec: exposing edge-a
    # also changes its connection to the relay, initiator and addresses; the driver loads it in place and the
    # established SA carries on, docs/architecture.md "Path changes").
    assert lost_up == 0, MEASUREMENTS[f"make_before_break_{driver}"]
    # Back to the relay: planned too (the relay's tunnels exist); aimed at zero loss, bounded here, reported above.
    assert lost_down == 0 or relay_result.max_outage_s < 1.0, MEASUREMENTS
    assert transfer.bytes > 0  # the TCP transfer lived through both changes (iperf3 fails on a reset)
    rc.wait_converged(timeout=60)


def test_a_direct_path_that_never_verifies_keeps_the_pair_on_the_relay(mbb: RavenCluster) -> None:
    """edge-a exposed, but edge-a's router drops everything from edge-b's site: the direct tunnel never comes up.
    Both gateways hold the pair on the relay (`raven_path_staged`), the probe keeps flowing; once the block is
    lifted the tunnel comes up and the pair moves (planned)."""
    rc = mbb
    driver = rc.vpn_driver
    src, dst = rc.cl.nodes["edge-a-1"].pods[0], rc.cl.nodes["edge-b-1"].pods[0]
    relay = next_hop(rc, "edge-a-1", dst.ip)
    router = rc.cl.pools["edge-a"].router
    block = ["FORWARD", "-i", "wan0", "-s", rc.cl.pools["edge-b"].router_wan_ip, "-j", "DROP"]
    router.run(["iptables", "-I", *block])
    blocked = True
    dnat(rc, True)
    try:
        with ContinuousProbe(src.netns, dst.netns, dst.ip, port=18512, name=f"mbb-held-{driver}") as probe:
            assert probe.wait_first_reply(), "the relayed pair never answered"
            time.sleep(BEFORE)
            exposed_at = time.monotonic()
            expose(rc, True)

            def staged() -> bool:
                return metric(rc.metrics("agent/edge-b-1"), "raven_path_staged", via="gw-edge-a") >= 1

            rc.wait_for("edge-b holding the pair on the relay", staged, timeout=30)
            time.sleep(HELD_S)  # far longer than the tunnel takes when it can come up
            assert staged()
            assert next_hop(rc, "edge-a-1", dst.ip) == relay and next_hop(rc, "edge-b-1", src.ip) == relay
            router.run(["iptables", "-D", *block])
            blocked = False
            unblocked_at = time.monotonic()
            to_direct = switch(rc, relay, True, src.ip, dst.ip)
            time.sleep(GRACE + 1.0)
            result = probe.stop()
        lost, outages = after(result, exposed_at)
        MEASUREMENTS[f"make_before_break_held_{driver}"] = {
            "lost_after_change": lost, "lost_before_change": result.lost - lost, "sent": result.sent,
            "outages_after_change_s": outages, "held_s": round(unblocked_at - exposed_at, 2),
            "unblock_to_direct_s": round(to_direct, 3)}
        assert lost == 0, MEASUREMENTS[f"make_before_break_held_{driver}"]  # either driver (see the first test)
        assert metric(rc.metrics("agent/edge-b-1"), "raven_path_staged", via="gw-edge-a") == 0
    finally:
        if blocked:
            router.run(["iptables", "-D", *block])
        expose(rc, False)
        switch(rc, relay, False, src.ip, dst.ip)
        time.sleep(GRACE + 1.0)
        dnat(rc, False)
    rc.wait_converged(timeout=60)
