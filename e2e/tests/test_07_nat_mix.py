"""The harder NAT topology (e2e/topologies/nat-mix.yaml): two sites with the SAME private LAN, one behind a
symmetric-like NAT, a three-node pool. Full matrix, NAT-NAT via the relay, and a failover at the
symmetric-NAT site under a 10 ms probe.

Its own cluster, prefix ``rvem`` (the session cluster holds ``rve``), removed at the end of the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.cluster import RavenCluster
from e2e.netlab import find_leftovers

from .conftest import MEASUREMENTS, own_cluster
from .conftest import PREFIX as SESSION_PREFIX

pytestmark = [pytest.mark.root, pytest.mark.slow]
PREFIX = f"{SESSION_PREFIX}m"  # its own cluster, named after the session's prefix (rvem by default)


@pytest.fixture(scope="module")
def mix(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    yield from own_cluster(request, RavenCluster("nat-mix", prefix=PREFIX))
    assert not any(find_leftovers(PREFIX).values()), find_leftovers(PREFIX)


def test_same_private_lan_at_two_sites_full_matrix_and_relay(mix: RavenCluster) -> None:
    m = mix.ping_matrix(count=2)
    assert m.green, m.failed
    x, y = mix.active_gateway_node("gw-site-x"), mix.active_gateway_node("gw-site-y")
    assert mix.cl.nodes[x].ip == mix.cl.nodes[y].ip  # the two gateways share a private address
    assert "raven-gw-site-y" not in mix.sas(x) and "raven-gw-site-x" not in mix.sas(y)


def test_failover_behind_a_symmetric_nat(mix: RavenCluster) -> None:
    r = mix.failover_under_probe("site-y", mix.member_node("site-x"), port=18130)
    MEASUREMENTS["failover_symmetric_nat"] = {"outage_s": round(r.probe.max_outage_s, 3),
                                              "write_to_traffic_s": round(r.traffic_s, 3)}
    assert mix.active_endpoints()["gw-site-y"] == [r.new]
    assert r.resumed, r.probe
    mix.wait_converged(timeout=60)
