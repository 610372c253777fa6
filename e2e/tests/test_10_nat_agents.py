"""NAT traversal by the agents alone (--nat-traversal): two NAT'd edge pools (edge-a, edge-b) relayed through the
cloud at start go direct by themselves, from the mappings the reachable gateways (gw-cloud, gw-edge-pub) observe
and the controller publishes, while a 10 ms UDP probe runs from a pod in edge-a to a pod in edge-b across the
relay -> direct move.

The edge routers are port-preserving MASQUERADE (the lab's `nat: true`) plus the input-drop rule of
`e2e/natlab.py` (`-A INPUT -i wan0 -p udp -m conntrack --ctstate NEW -j DROP`), added to this module's cluster
only: without it the first punch packet is accepted by the peer's router itself and the mappings never meet
(docs/architecture.md, "NAT traversal", findings).

Its own four-pool cluster, one node per pool, removed at the end of the module. Prefix ``<session prefix>a``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from e2e.cluster import RavenCluster
from e2e.netlab import find_leftovers
from e2e.probe import ContinuousProbe
from e2e.topology import TopologySpec, cut_topology

from .conftest import MEASUREMENTS
from .conftest import PREFIX as SESSION_PREFIX

pytestmark = [pytest.mark.root, pytest.mark.slow]
PREFIX = f"{SESSION_PREFIX}a"  # its own cluster (rvea by default)
POOLS = ("cloud", "edge-a", "edge-b", "edge-pub")
NAT_POOLS = ("edge-a", "edge-b")
DIRECT_WITHIN_S = 30.0  # from the relayed pair's first answer to both gateways routing it direct (generous)
AFTER_S = 3.0  # the probe runs on after the move
INPUT_DROP = ["INPUT", "-i", "wan0", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"]
_VIA = re.compile(r"\bvia (\S+)")


def spec() -> TopologySpec:
    """The default topology cut down to one node per pool: two reachable observers, two NAT'd edges."""
    return cut_topology(POOLS)


def drop_unsolicited(rc: RavenCluster) -> None:
    """The NAT'd pools' routers drop unsolicited UDP to themselves, as home and CPE routers do."""
    for pool in NAT_POOLS:
        rc.cl.pools[pool].router.run(["iptables", "-w", "5", "-A", *INPUT_DROP])


@pytest.fixture(scope="module")
def nat(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    import os

    if os.geteuid() != 0:
        pytest.skip("end-to-end scenarios need root (network namespaces)")
    cluster = RavenCluster(spec(), prefix=PREFIX, controllers=1, agent_args=("--nat-traversal",),
                           before_start=drop_unsolicited)
    failed = True
    try:
        cluster.start()  # not converged here: the test's probe must see the relay first
        failed = False
        yield cluster
    finally:
        cluster.close(keep_logs=failed or request.session.testsfailed > 0 or os.environ.get("RAVEN_E2E_KEEP") == "1")
    assert not any(find_leftovers(PREFIX).values()), find_leftovers(PREFIX)


def next_hop(rc: RavenCluster, node: str, dst: str) -> str | None:
    found = _VIA.search(rc.route_get(node, dst))
    return found.group(1) if found else None


def test_nat_pair_goes_direct_by_itself_without_loss(nat: RavenCluster) -> None:
    rc = nat
    started = rc.elapsed()  # seconds since the build began
    started = time.monotonic() - started + rc.timings["started_s"]
    src, dst = rc.cl.nodes["edge-a-1"].pods[0], rc.cl.nodes["edge-b-1"].pods[0]
    cloud_pod = rc.cl.nodes["cloud-1"].pods[0]
    with ContinuousProbe(src.netns, dst.netns, dst.ip, port=18520, name="nat-agents") as probe:
        assert probe.wait_first_reply(timeout=120), "the relayed pair never answered"
        relayed_at = time.monotonic()
        relay = next_hop(rc, "edge-a-1", cloud_pod.ip)
        assert relay is not None
        # The other reachable gateway (a relay too, were it cheaper): "direct" is neither.
        others = {relay, next_hop(rc, "edge-a-1", rc.cl.nodes["edge-pub-1"].pods[0].ip),
                  next_hop(rc, "edge-b-1", rc.cl.nodes["edge-pub-1"].pods[0].ip)}
        hops = (next_hop(rc, "edge-a-1", dst.ip), next_hop(rc, "edge-b-1", src.ip))
        relayed_first = all(h == relay for h in hops)  # False: already direct (a fast machine) before the probe
        moved: dict[str, float] = {}

        def direct() -> bool:
            for node, ip in (("edge-a-1", dst.ip), ("edge-b-1", src.ip)):
                h = next_hop(rc, node, ip)
                if node not in moved and h is not None and h not in others:
                    moved[node] = time.monotonic()
            return len(moved) == 2

        rc.wait_for("the NAT'd pair routed direct by both gateways", direct, timeout=DIRECT_WITHIN_S + 60,
                    interval=0.02)
        time.sleep(AFTER_S)
        result = probe.stop()
    direct_at = max(moved.values())
    logs = {n: rc.agents[n].logs() for n in ("edge-a-1", "edge-b-1")}
    lost_in_move = 0
    if result.start_monotonic is not None:
        t0 = min(moved.values()) - result.start_monotonic - 1.0
        lost_in_move = sum(o.lost for o in result.outages if o.start_s + o.length_s >= t0)
    MEASUREMENTS["nat_agents_ipsec"] = {
        "agents_started_to_direct_s": round(direct_at - started, 2),
        "relay_first_answer_to_direct_s": round(direct_at - relayed_at, 2),
        "relayed_when_probe_started": relayed_first,
        "probe_sent": result.sent, "probe_lost": result.lost, "lost_from_1s_before_move": lost_in_move,
        "outages_s": [(round(o.start_s, 3), round(o.length_s, 3)) for o in result.outages],
    }
    assert all("nat direct verified" in text for text in logs.values()), MEASUREMENTS["nat_agents_ipsec"]
    assert direct_at - relayed_at <= DIRECT_WITHIN_S, MEASUREMENTS["nat_agents_ipsec"]
    assert relayed_first, MEASUREMENTS["nat_agents_ipsec"]  # the probe saw the move
    assert lost_in_move == 0, MEASUREMENTS["nat_agents_ipsec"]
    # The relay's tunnels were never touched: both edges still hold their SA to the cloud.
    for node in ("edge-a-1", "edge-b-1"):
        assert "raven-gw-cloud" in rc.tunnels_up(node), rc.tunnels_up(node)
    rc.wait_converged(timeout=60)


def test_a_direct_path_that_breaks_falls_back_to_the_relay_within_3s(nat: RavenCluster) -> None:
    """The two NAT routers stop passing each other's packets (the relay's path stays): the probe through the direct
    tunnel goes down, the pair leaves direct_links and routing moves it back to the relay, with the direct
    connection still loaded (charon alone would wait for DPD: ~10 s)."""
    rc = nat
    src, dst = rc.cl.nodes["edge-a-1"].pods[0], rc.cl.nodes["edge-b-1"].pods[0]
    relays = {next_hop(rc, n, rc.cl.nodes[r].pods[0].ip) for n in ("edge-a-1", "edge-b-1")
              for r in ("cloud-1", "edge-pub-1")}

    def hops() -> tuple[str | None, str | None]:
        return next_hop(rc, "edge-a-1", dst.ip), next_hop(rc, "edge-b-1", src.ip)

    rc.wait_for("the NAT'd pair direct", lambda: not relays & set(hops()), timeout=DIRECT_WITHIN_S + 60,
                interval=0.05)
    direct = hops()

    def both_relayed() -> bool:  # through whichever reachable gateway is the cheaper relay now
        return all(h is not None and h != d and h in relays for h, d in zip(hops(), direct, strict=True))
    router = rc.cl.pools["edge-a"].router
    peer_wan = rc.cl.pools["edge-b"].router_wan_ip
    rules = [["FORWARD", "-s", peer_wan, "-j", "DROP"], ["FORWARD", "-d", peer_wan, "-j", "DROP"]]
    with ContinuousProbe(src.netns, dst.netns, dst.ip, port=18521, name="nat-agents-break") as probe:
        assert probe.wait_first_reply(), "the direct pair never answered"
        time.sleep(1.0)
        broken_at = time.monotonic()
        for rule in rules:
            router.run(["iptables", "-w", "5", "-I", *rule])
        try:
            back = rc.wait_for("the pair relayed again", both_relayed, timeout=30, interval=0.02)
            time.sleep(2.0)
        finally:
            for rule in rules:
                router.run(["iptables", "-w", "5", "-D", *rule], check=False)
        result = probe.stop()
    outage = result.outage_from(broken_at)
    MEASUREMENTS["nat_agents_direct_breaks"] = {
        "routes_back_on_relay_s": round(back, 3), "probe_outage_s": round(outage, 3), "probe_lost": result.lost,
        "probe_sent": result.sent}
    logs = {n: rc.agents[n].logs() for n in ("edge-a-1", "edge-b-1")}
    assert any("nat direct lost" in text for text in logs.values()), MEASUREMENTS["nat_agents_direct_breaks"]
    assert outage <= 3.0, MEASUREMENTS["nat_agents_direct_breaks"]
    rc.wait_converged(timeout=60)
