"""NAT traversal by the agents alone (--nat-traversal): two NAT'd edge pools (edge-a, edge-b) relayed through the
cloud at start go direct by themselves, from the mappings the reachable gateways (gw-cloud, gw-edge-pub) observe
and the controller publishes, while a 10 ms UDP probe runs from a pod in edge-a to a pod in edge-b across the
relay -> direct move.

The edge routers are port-preserving MASQUERADE (the lab's `nat: true`) plus the input-drop rule of
`e2e/natlab.py` (`-A INPUT -i wan0 -p udp -m conntrack --ctstate NEW -j DROP`), added to this module's cluster
only: without it the first punch packet is accepted by the peer's router itself and the mappings never meet
(docs/architecture.md, "NAT traversal", findings). Until the probe has answered through the relay, the routers also
drop what they would forward to each other's WAN address (the gate, `before_agents`): the direct path cannot win the
race against the relay's first answer, so the probe always runs across the move.

Run once per tunnel driver (the module's cluster is parametrised: `ipsec`, then `wireguard`, one cluster each,
the second built after the first is removed), each check in the driver's own terms: with IPsec the relays' SAs stay
up and the kernel routes the pair via the peer's inner address; with WireGuard the relay peers (key, endpoint,
allowed IPs) are the same before and after the move, and the probe's traffic arrives on the direct peer (its
endpoint the peer's NAT mapping, its received bytes growing with the probe while the relay peers' barely move).

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
from raven.dataplane.wireguard import PeerInfo

from .conftest import MEASUREMENTS
from .conftest import PREFIX as SESSION_PREFIX
from .test_09_wireguard import device, hexkey, published_key

pytestmark = [pytest.mark.root, pytest.mark.slow]
PREFIX = f"{SESSION_PREFIX}a"  # its own cluster (rvea by default)
POOLS = ("cloud", "edge-a", "edge-b", "edge-pub")
NAT_POOLS = ("edge-a", "edge-b")
NAT_POOL_NODES = ("edge-a-1", "edge-b-1")
# From the relayed pair's first answer to both gateways routing it direct: a generous bound (timings are noisy here);
# #15's target, 10 s, is reported with the figure (MEASUREMENTS), not asserted. Measured 4.2-5.8 s; 13.5-17.9 s while
# the move waited out --route-hold-time, before a verified punched link was taken at once. That the hold was skipped
# is asserted by the `verified` route changes.
DIRECT_WITHIN_S = 30.0
AIM_S = 10.0
VERIFIED_MOVES = 'raven_path_changes_total{reason="verified"}'  # routing took the punched link without the hold
AFTER_S = 3.0  # the probe runs on after the move
# A direct path that breaks: #15's target (3 s outage) is reported; the bound only tells the fallback from charon's
# own DPD (~10 s) or none. Measured 1.5-2.2 s.
FALLBACK_AIM_S = 3.0
FALLBACK_WITHIN_S = 6.0
GATE_AFTER_S = 1.0  # the relayed probe answers this long before the direct path may open
INPUT_DROP = ["INPUT", "-i", "wan0", "-p", "udp", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"]
_VIA = re.compile(r"\bvia (\S+)")


def spec() -> TopologySpec:
    """The default topology cut down to one node per pool: two reachable observers, two NAT'd edges."""
    return cut_topology(POOLS)


def gate_rules(rc: RavenCluster) -> list[tuple[str, list[str]]]:
    """(pool, FORWARD rule) that keep each NAT'd router from passing packets to the other one's WAN address: the
    direct path cannot open while they stand, the relay's paths (to the reachable gateways) are untouched."""
    other = {"edge-a": "edge-b", "edge-b": "edge-a"}
    return [(pool, ["FORWARD", "-d", rc.cl.pools[other[pool]].router_wan_ip, "-j", "DROP"]) for pool in NAT_POOLS]


def before_agents(rc: RavenCluster) -> None:
    """The NAT'd pools' routers drop unsolicited UDP to themselves, as home and CPE routers do; and the direct path
    is gated shut until the test has seen the pair answer through the relay (`open_gate`): without the gate a fast
    punch (a verified punched link skips the routing hold) can win the race against the relayed pair's first answer,
    and the probe would never see the move it is there to watch."""
    for pool in NAT_POOLS:
        rc.cl.pools[pool].router.run(["iptables", "-w", "5", "-A", *INPUT_DROP])
    for pool, rule in gate_rules(rc):
        rc.cl.pools[pool].router.run(["iptables", "-w", "5", "-I", *rule])


def open_gate(rc: RavenCluster) -> None:
    for pool, rule in gate_rules(rc):
        rc.cl.pools[pool].router.run(["iptables", "-w", "5", "-D", *rule])


@pytest.fixture(scope="module", params=["ipsec", "wireguard"])
def nat(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    import os

    if os.geteuid() != 0:
        pytest.skip("end-to-end scenarios need root (network namespaces)")
    cluster = RavenCluster(spec(), prefix=PREFIX, controllers=1, agent_args=("--nat-traversal",),
                           before_start=before_agents, vpn_driver=str(request.param))
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


def wg_peers(rc: RavenCluster, node: str) -> dict[str, PeerInfo]:
    """The node's WireGuard peers by the gateway node each belongs to (from the keys the nodes published)."""
    gateways = rc.gateways()
    gateway = {ep["nodeName"]: g for g, obj in gateways.items() for ep in obj["spec"]["endpoints"]}
    node_of = {hexkey(published_key(rc, gateway[n], n)): n for n in ("cloud-1", "edge-a-1", "edge-b-1", "edge-pub-1")}
    return {node_of.get(k, k): p for k, p in device(rc, node).peers.items()}


def relay_peers(peers: dict[str, PeerInfo]) -> dict[str, tuple[str, str | None, frozenset[str]]]:
    """What the move must leave alone on a NAT'd edge: its peers towards the reachable gateways."""
    return {n: (p.public_key, p.endpoint, p.allowed_ips) for n, p in peers.items() if n in ("cloud-1", "edge-pub-1")}


def test_nat_pair_goes_direct_by_itself_without_loss(nat: RavenCluster) -> None:
    rc = nat
    driver = rc.vpn_driver
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
        relayed_first = all(h == relay for h in hops)  # the gate keeps the direct path shut: relayed, always
        relays_before = {n: relay_peers(wg_peers(rc, n)) for n in NAT_POOL_NODES} if driver == "wireguard" else {}
        moved: dict[str, float] = {}
        time.sleep(GATE_AFTER_S)  # the probe answered through the relay for a while before the move
        gate_opened_at = time.monotonic()
        open_gate(rc)

        def direct() -> bool:
            for node, ip in (("edge-a-1", dst.ip), ("edge-b-1", src.ip)):
                h = next_hop(rc, node, ip)
                if node not in moved and h is not None and h not in others:
                    moved[node] = time.monotonic()
            return len(moved) == 2

        rc.wait_for("the NAT'd pair routed direct by both gateways", direct, timeout=DIRECT_WITHIN_S + 60,
                    interval=0.02)
        peers_at_move = wg_peers(rc, "edge-b-1") if driver == "wireguard" else {}
        time.sleep(AFTER_S)
        peers_after = wg_peers(rc, "edge-b-1") if driver == "wireguard" else {}
        result = probe.stop()
    direct_at = max(moved.values())
    logs = {n: rc.agents[n].logs() for n in ("edge-a-1", "edge-b-1")}
    lost_in_move = 0
    if result.start_monotonic is not None:
        t0 = min(moved.values()) - result.start_monotonic - 1.0
        lost_in_move = sum(o.lost for o in result.outages if o.start_s + o.length_s >= t0)
    key = f"nat_agents_{driver}"
    verified = {n: rc.metrics(f"agent/{n}").get(VERIFIED_MOVES, 0.0) for n in NAT_POOL_NODES}
    MEASUREMENTS[key] = m = {
        "agents_started_to_direct_s": round(direct_at - started, 2),
        "relay_first_answer_to_direct_s": round(direct_at - relayed_at, 2),
        "gate_opened_to_direct_s": round(direct_at - gate_opened_at, 2),
        "gate_opened_after_start_s": round(gate_opened_at - started, 2),
        "relayed_when_probe_started": relayed_first,
        "probe_sent": result.sent, "probe_lost": result.lost, "lost_from_1s_before_move": lost_in_move,
        "outages_s": [(round(o.start_s, 3), round(o.length_s, 3)) for o in result.outages],
        "verified_moves": verified, "aim_s": AIM_S,
    }
    if driver == "wireguard":
        # The probe's packets (edge-a -> edge-b, 100/s) arrive at edge-b on its direct peer, edge-a-1, from
        # edge-a's NAT mapping; the relay peers carry only their own probes and keepalives meanwhile.
        rx = {n: peers_after[n].rx_bytes - peers_at_move[n].rx_bytes for n in peers_after if n in peers_at_move}
        m["edge_b_rx_bytes_after_move"] = rx
        m["edge_b_direct_peer_endpoint"] = peers_after["edge-a-1"].endpoint if "edge-a-1" in peers_after else None
    assert all("nat direct verified" in text for text in logs.values()), m
    assert direct_at - relayed_at <= DIRECT_WITHIN_S, m
    assert all(v >= 1 for v in verified.values()), m
    assert relayed_first, m  # the probe saw the move
    assert lost_in_move == 0, m
    # The relay's tunnels were never touched: both edges still hold their tunnel to the cloud.
    for node in NAT_POOL_NODES:
        assert "raven-gw-cloud" in rc.tunnels_up(node), rc.tunnels_up(node)
    if driver == "wireguard":
        assert {n: relay_peers(wg_peers(rc, n)) for n in NAT_POOL_NODES} == relays_before, m
        wan_a = rc.cl.pools["edge-a"].router_wan_ip
        assert str(m["edge_b_direct_peer_endpoint"]).startswith(f"{wan_a}:"), m
        probe_bytes = AFTER_S * 0.5 / 0.01 * 64  # half the probe's packets at the smallest size they could have
        assert rx["edge-a-1"] >= probe_bytes, m
        assert all(rx[n] < rx["edge-a-1"] / 4 for n in ("cloud-1", "edge-pub-1")), m
    rc.wait_converged(timeout=60)


def test_a_direct_path_that_breaks_falls_back_to_the_relay(nat: RavenCluster) -> None:
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
    MEASUREMENTS[f"nat_agents_direct_breaks_{rc.vpn_driver}"] = m = {
        "routes_back_on_relay_s": round(back, 3), "probe_outage_s": round(outage, 3), "probe_lost": result.lost,
        "probe_sent": result.sent, "aim_s": FALLBACK_AIM_S}
    logs = {n: rc.agents[n].logs() for n in NAT_POOL_NODES}
    assert any("nat direct lost" in text for text in logs.values()), m
    assert outage <= FALLBACK_WITHIN_S, m
    rc.wait_converged(timeout=60)
