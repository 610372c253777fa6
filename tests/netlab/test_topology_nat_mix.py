"""The nat-mix topology: two sites with the same private LAN, a symmetric-like NAT, a 3-node pool."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from e2e.probe import observed_source, ping, ping_many, start_echo_server
from e2e.topology import Cluster, build, load_topology

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with build(load_topology("nat-mix"), "rvl") as cl:
        yield cl


def test_sites_with_the_same_private_lan_each_keep_their_own_pod_routes(cluster: Cluster) -> None:
    x1, y1 = cluster.nodes["site-x-1"], cluster.nodes["site-y-1"]
    assert x1.ip == y1.ip  # same address, different sites
    pairs = [(cluster.pod("site-x-1-p0").netns, cluster.pod(p).ip)
             for p in ("site-x-2-p0", "site-x-3-p0", "site-x-3-p1")]
    pairs.append((cluster.pod("site-y-2-p0").netns, cluster.pod("site-y-1-p0").ip))
    assert [r.dst for r in ping_many(pairs, count=1) if not r.ok] == []
    # site-x's pod never reaches site-y's pod although their nodes share an address.
    assert not ping(cluster.pod("site-x-1-p0").netns, cluster.pod("site-y-2-p0").ip, count=1, wait=0.5).ok


def _two_observations(cluster: Cluster, node: str) -> list[str | None]:
    servers = []
    for name in ("cloud-1", "cloud-2"):
        n = cluster.nodes[name]
        servers.append(start_echo_server(n.netns, n.ip, 18201, "udp", report_peer=True,
                                         name=f"stun-{node}"))
    try:
        return observed_source(cluster.nodes[node].netns,
                               [(cluster.nodes["cloud-1"].ip, 18201), (cluster.nodes["cloud-2"].ip, 18201)],
                               bind_port=4500)
    finally:
        for s in servers:
            s.stop(1.0)


def test_masquerade_nat_keeps_one_public_port_for_every_destination(cluster: Cluster) -> None:
    seen = _two_observations(cluster, "site-x-1")
    wan_ip = cluster.pools["site-x"].router_wan_ip
    assert seen == [f"{wan_ip}:4500", f"{wan_ip}:4500"]


def test_symmetric_nat_picks_a_new_public_port_per_destination(cluster: Cluster) -> None:
    seen = _two_observations(cluster, "site-y-1")
    wan_ip = cluster.pools["site-y"].router_wan_ip
    assert all(s is not None and s.startswith(f"{wan_ip}:") for s in seen), seen
    # --random-fully: two flows from one socket get two (random) ports; equal by chance ~1/28000.
    assert seen[0] != seen[1], seen
