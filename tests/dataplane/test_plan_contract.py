"""The contract with `raven.agent.plan`: its output for a realistic cluster applies exactly and converges.

Uses the plan tests' reference cluster (tests/unit/plan_cluster.py). For a gateway node and a member
node, the plan's DesiredState goes into a fresh namespace whose eth0 holds the node IP; what the
kernel then holds (read with `ip`/`bridge`/iptables, not with our reader) equals the plan, a second
reconcile writes nothing, and a failover in the node's own pool costs O(1) writes.
"""

from __future__ import annotations

import dataclasses

import pytest

from e2e.netlab import Lab
from raven.agent.plan import PlanConfig, plan
from raven.dataplane.kernel import KernelApplier
from tests.dataplane.conftest import read_back
from tests.unit.plan_cluster import cluster_json, nodes, parse, set_active

pytestmark = pytest.mark.root

NODE_IPS = {"edge-a-1": "192.168.1.11", "edge-a-3": "192.168.1.13", "cloud-1": "10.0.0.11"}


@pytest.mark.parametrize("node_name", ["edge-a-1", "edge-a-3", "cloud-1"])
async def test_plan_output_applies_exactly_and_converges(lab: Lab, node_name: str) -> None:
    cfg = PlanConfig(underlay_ifname="eth0")
    result = plan(parse(cluster_json()), nodes(), node_name, cfg)
    assert not result.problems, result.problems
    desired = dataclasses.replace(result.state, ipsec=frozenset())
    assert desired.routes, "the reference cluster gives every node remote subnets"

    ns, peer = lab.netns_many(["node", "peer"])
    lab.veth(ns, "eth0", peer, "eth0")
    ns.add_addr("eth0", f"{NODE_IPS[node_name]}/24")
    applier = KernelApplier(netns=ns.name)
    try:
        report = await applier.reconcile(desired)
        assert report.ok, report.errors
        assert read_back(ns) == desired
        assert (await applier.reconcile(desired)).total_writes == 0

        # The node's own pool fails over to another gateway node.
        objs = cluster_json()
        pool = {"edge-a-1": "gw-edge-a", "edge-a-3": "gw-edge-a", "cloud-1": "gw-cloud"}[node_name]
        new_active = {"gw-edge-a": "edge-a-2", "gw-cloud": "cloud-2"}[pool]
        set_active(objs[pool], new_active)
        after = dataclasses.replace(plan(parse(objs), nodes(), node_name, cfg).state, ipsec=frozenset())
        report = await applier.reconcile(after)
        assert report.ok, report.errors
        assert read_back(ns) == after
        if node_name == "edge-a-3":
            # A member: neighbour + FDB move, no route; plus the neighbour of the gateway's raven0 address the
            # member probes (path health): the old gateway's out, the new one's in.
            assert report.writes["route"] == 0 and report.total_writes <= 5, report.writes
    finally:
        await applier.close()
