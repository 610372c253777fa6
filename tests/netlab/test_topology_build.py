"""The default topology built in namespaces behaves like the multi-region network it models.

Without Raven: pods reach pods of their own pool (the "CNI" routes), never pods of another pool;
NAT pools reach the public pools' nodes and the control plane, never the reverse. Teardown leaves
nothing behind. The module builds the cluster once (prefix `rvl`); the teardown test builds its own
(prefix `rvlx`) so it can check the machine afterwards.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.netlab import find_leftovers
from e2e.probe import ContinuousProbe, ping, ping_many, ping_matrix, tcp_check, udp_check
from e2e.topology import Cluster, build, load_topology
from tests.netlab.ipsec_helpers import child_sas, ike_sas, initiate, load_inner_tunnel, wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with build(load_topology("default"), "rvl") as cl:
        yield cl


def _pairs(cl: Cluster, same_pool: bool) -> list[tuple[Any, Any]]:
    pods = list(cl.pods.values())
    return [(a, b) for a, b in itertools.permutations(pods, 2)
            if (cl.nodes[a.node].pool == cl.nodes[b.node].pool) == same_pool]


def test_pods_reach_every_pod_of_their_own_pool_through_the_cni_routes(cluster: Cluster) -> None:
    pairs = _pairs(cluster, same_pool=True)
    assert len(pairs) == 8  # 4 pools x 2 pods x 1 peer
    results = ping_many([(a.netns, b.ip) for a, b in pairs], count=1)
    failed = [(r.src, r.dst) for r in results if not r.ok]
    assert failed == []
    # The packet goes node -> other node on the LAN (the CNI route), not via the router.
    a, b = pairs[0]
    route = cluster.nodes[a.node].netns.ip("route", "get", b.ip).stdout
    assert f"via {cluster.nodes[b.node].ip} dev eth0" in route


def test_pods_never_reach_pods_of_another_pool_without_raven(cluster: Cluster) -> None:
    matrix = ping_matrix([(p.name, p.netns, p.ip) for p in cluster.pods.values()], wait=0.5, parallel=24)
    assert len(matrix) == 56
    pool = {p.name: cluster.nodes[p.node].pool for p in cluster.pods.values()}
    reached_cross = [k for k, r in matrix.items() if r.ok and pool[k[0]] != pool[k[1]]]
    assert reached_cross == []
    # ... while the same matrix shows every same-pool pair working: the probe itself is sound.
    assert all(r.ok for k, r in matrix.items() if pool[k[0]] == pool[k[1]])


def test_nat_pools_reach_public_nodes_and_control_plane_but_not_the_reverse(cluster: Cluster) -> None:
    nat_nodes = [n for n in cluster.nodes.values() if cluster.pools[n.pool].nat]
    public_nodes = [n for n in cluster.nodes.values() if not cluster.pools[n.pool].nat]
    out = [(n.netns, p.ip) for n in nat_nodes for p in public_nodes]
    out += [(n.netns, cluster.control_plane_ip) for n in cluster.nodes.values()]
    assert [(r.src, r.dst) for r in ping_many(out, count=1) if not r.ok] == []

    back = [(p.netns, n.ip) for p in public_nodes for n in nat_nodes]
    back += [(cluster.control_plane, n.ip) for n in nat_nodes]
    # NAT pool to NAT pool: neither side is reachable.
    back += [(a.netns, b.ip) for a in nat_nodes for b in nat_nodes if a.pool != b.pool]
    assert [(r.src, r.dst) for r in ping_many(back, count=1, wait=0.5) if r.ok] == []


def test_nat_router_masquerades_the_lan_behind_its_wan_address(cluster: Cluster) -> None:
    router = cluster.pools["edge-a"].router
    node = cluster.nodes["edge-a-1"]
    cloud = cluster.nodes["cloud-1"]
    # The public side sees the router's WAN address: a UDP echo there answers to it, and the
    # router's MASQUERADE rule counted the flow.
    assert udp_check(node.netns, cloud.netns, cloud.ip, port=18101) is not None
    rules = router.run(["iptables", "-w", "5", "-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x"]).stdout
    masq = next(line for line in rules.splitlines() if "MASQUERADE" in line)
    assert int(masq.split()[0]) > 0
    conn = router.run(["cat", "/proc/net/nf_conntrack"], check=False).stdout
    if conn:  # not every kernel exposes it; the counter above is the real assertion
        assert cluster.pools["edge-a"].router_wan_ip in conn


def test_public_pools_are_routed_so_node_addresses_are_seen_unchanged(cluster: Cluster) -> None:
    a, b = cluster.nodes["edge-pub-1"], cluster.nodes["cloud-1"]
    assert ping(a.netns, b.ip, count=1).ok
    # No NAT on routed pools: the route from cloud to edge-pub goes via edge-pub's router.
    route = cluster.pools["cloud"].router.ip("route", "get", a.ip).stdout
    assert f"via {cluster.pools['edge-pub'].router_wan_ip}" in route


def test_tcp_and_udp_checks_between_pods_of_a_pool(cluster: Cluster) -> None:
    a, b = cluster.pod("cloud-1-p0"), cluster.pod("cloud-2-p0")
    assert tcp_check(a.netns, b.netns, b.ip, port=18102) is not None
    assert udp_check(a.netns, b.netns, b.ip, port=18103) is not None
    c = cluster.pod("edge-a-1-p0")
    assert udp_check(c.netns, b.netns, b.ip, port=18104, timeout=0.5) is None


def test_control_plane_address_serves_every_node_and_the_root_namespace(cluster: Cluster) -> None:
    server = cluster.control_plane.popen(
        ["python3", "-m", "http.server", "--bind", cluster.control_plane_ip, "16443"], name="http")
    try:
        root_port = cluster.expose_control_plane(16443)
        for node in cluster.nodes.values():
            out = _retry(lambda n=node: n.netns.run(
                ["python3", "-c", "import urllib.request,sys;"
                 f"urllib.request.urlopen('http://{cluster.control_plane_ip}:16443/', timeout=2);"
                 "print('ok')"], check=False).stdout)
            assert out.strip() == "ok", (node.name, server.logs())
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{root_port}/", timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.stop()


def test_continuous_probe_sees_no_loss_on_a_quiet_path_and_measures_a_cut(cluster: Cluster) -> None:
    a, b = cluster.pod("edge-a-1-p0"), cluster.pod("edge-a-2-p0")
    with ContinuousProbe(a.netns, b.netns, b.ip, port=18105, name="quiet") as probe:
        assert probe.wait_first_reply()
        time.sleep(0.3)
        quiet = probe.stop()
    assert quiet.sent > 10 and quiet.lost == 0, quiet

    with ContinuousProbe(a.netns, b.netns, b.ip, port=18106, name="cut") as probe:
        assert probe.wait_first_reply()
        time.sleep(0.1)
        cluster.cut_link("edge-a-2")
        time.sleep(0.4)
        cluster.restore_link("edge-a-2")
        time.sleep(0.3)
        cut = probe.stop()
    assert cut.lost >= 10, cut
    assert 0.3 <= cut.max_outage_s <= 3.0, cut
    assert len([o for o in cut.outages if o.lost > 5]) == 1, cut


def test_ipsec_from_a_nat_pool_to_the_public_cloud_carries_inner_traffic(cluster: Cluster) -> None:
    """NAT-T through the MASQUERADE router: the NAT side initiates, the cloud side accepts any
    address and authenticates by identity, as the data plane does for underNAT endpoints."""
    edge, cloud = cluster.nodes["edge-a-1"], cluster.nodes["cloud-1"]
    inner_edge, inner_cloud = "241.0.1.1", "241.0.0.1"
    edge.netns.ip("addr", "add", f"{inner_edge}/32", "dev", "lo")
    cloud.netns.ip("addr", "add", f"{inner_cloud}/32", "dev", "lo")
    try:
        ce, cc = edge.netns.start_charon(), cloud.netns.start_charon()
        load_inner_tunnel(ce, local_addrs=[edge.ip], remote_addrs=[cloud.ip], local_id="edge-a-1",
                          remote_id="cloud-1", inner_local=inner_edge, inner_remote=inner_cloud)
        load_inner_tunnel(cc, local_addrs=[cloud.ip], remote_addrs=["%any"], local_id="cloud-1",
                          remote_id="edge-a-1", inner_local=inner_cloud, inner_remote=inner_edge)
        initiate(ce)
        assert wait_for(lambda: any(c.get("state") == b"INSTALLED" for c in child_sas(cc))), cc.read_log()
        assert ping(edge.netns, inner_cloud, src_ip=inner_edge).ok, ce.read_log()[-3000:]
        # The cloud saw the NAT router's WAN address, not the edge node's LAN address.
        ike = ike_sas(cc)[0]
        assert ike["remote-host"] == cluster.pools["edge-a"].router_wan_ip.encode()
        assert ike.get("nat-remote") == b"yes"
    finally:
        for n in (edge, cloud):
            if n.netns.charon is not None:
                n.netns.charon.stop()
        edge.netns.ip("addr", "del", f"{inner_edge}/32", "dev", "lo", check=False)
        cloud.netns.ip("addr", "del", f"{inner_cloud}/32", "dev", "lo", check=False)


def test_latency_on_a_pool_delays_inbound_traffic_and_nat_still_works(cluster: Cluster) -> None:
    cloud, pub, nat = cluster.nodes["cloud-1"], cluster.nodes["edge-pub-1"], cluster.nodes["edge-a-1"]
    try:
        cluster.set_latency("edge-pub", 60)
        cluster.set_latency("edge-a", 40)
        # Lower bounds only: a loaded machine can add delay, never remove it.
        routed = ping(cloud.netns, pub.ip, count=3)
        assert routed.ok and routed.rtt_avg_ms is not None and routed.rtt_avg_ms >= 60, routed
        natted = ping(nat.netns, cloud.ip, count=3)  # replies enter edge-a through its NAT router
        assert natted.ok and natted.rtt_avg_ms is not None and natted.rtt_avg_ms >= 40, natted
        both = ping(nat.netns, pub.ip, count=3)
        assert both.ok and both.rtt_avg_ms is not None and both.rtt_avg_ms >= 100, both
        assert udp_check(nat.netns, cloud.netns, cloud.ip, port=18110) is not None
    finally:
        cluster.set_latency("edge-pub", 0)
        cluster.set_latency("edge-a", 0)
    # Removed: the TUN devices are gone and traffic still flows.
    for pool in ("edge-pub", "edge-a"):
        assert "dly0" not in cluster.pools[pool].router.ip("-o", "link", "show").stdout
    assert ping(cloud.netns, pub.ip, count=1).ok and ping(nat.netns, cloud.ip, count=1).ok


def test_one_charon_per_node_each_on_its_own_vici_socket(cluster: Cluster) -> None:
    charons = cluster.start_charons()
    try:
        assert set(charons) == set(cluster.nodes)
        sockets = {str(c.vici_socket) for c in charons.values()}
        assert len(sockets) == len(charons)
        pids = set()
        for name, charon in charons.items():
            with charon.session() as s:
                assert s.version()["daemon"] == b"charon"
            # Each charon really runs inside its node's namespace.
            assert charon.process.pid in cluster.nodes[name].netns.pids()
            pids.add(charon.process.pid)
        assert len(pids) == len(charons)
    finally:
        for charon in charons.values():
            charon.stop()


def _retry(fn: Any, attempts: int = 20) -> str:
    out = ""
    for _ in range(attempts):
        out = fn()
        if out.strip():
            return str(out)
        time.sleep(0.1)
    return str(out)


def test_a_second_lab_with_the_same_addresses_runs_beside_and_leaves_no_trace(cluster: Cluster) -> None:
    """Other users' labs (other prefixes) reuse every address; building and tearing one down next
    to ours changes nothing for ours and leaves nothing of its own."""
    other = build(load_topology("default"), "rvlx")
    try:
        other.nodes["cloud-1"].netns.start_charon()
        other.pod("edge-a-1-p0").netns.popen(["sleep", "60"], name="sleeper")
        a, b = other.pod("edge-a-1-p0"), other.pod("edge-a-2-p0")
        assert ping(a.netns, b.ip, count=1).ok
        assert find_leftovers("rvlx")["netns"]
    finally:
        other.close()
    left = find_leftovers("rvlx")
    assert not any(left.values()), left
    a, b = cluster.pod("edge-a-1-p0"), cluster.pod("edge-a-2-p0")
    assert ping(a.netns, b.ip, count=1).ok
    assert len(find_leftovers("rvl")["netns"]) == len(cluster.lab.namespaces)
