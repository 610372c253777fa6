"""The contract with `raven.agent.plan`: its output for a realistic cluster applies exactly and converges.

Uses the plan tests' reference cluster (tests/unit/plan_cluster.py). For a gateway node and a member
node, the plan's NodeNetwork goes into a fresh namespace whose eth0 holds the node IP; what the
kernel then holds (read with `ip`/`bridge`/iptables, not with our reader) equals the plan, a second
reconcile writes nothing, and a failover in the node's own pool costs O(1) writes.
"""

from __future__ import annotations

import dataclasses

import pytest

from e2e.netlab import Lab, Netns
from raven.agent.plan import PlanConfig, plan
from raven.dataplane import probenat
from raven.dataplane.ingress import CHAINS, IngressFilterApplier, IngressGuard, render
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.probenat import ProbeNatApplier
from raven.dataplane.state import NodeNetwork
from tests.dataplane.conftest import read_back
from tests.unit.plan_cluster import cluster_json, nodes, parse, set_active


def _ingress_rules(ns: Netns) -> dict[str, tuple[str, ...]]:
    """The owned chains as iptables-save prints them (not our reader)."""
    out: dict[str, list[str]] = {}
    for line in ns.run(["iptables-save", "-t", "mangle"]).stdout.splitlines():
        words = line.split(" ", 2)
        if words[0] == "-A" and words[1] in CHAINS:
            out.setdefault(words[1], []).append(words[2])
    return {k: tuple(v) for k, v in out.items()}


def _snat_rules(ns: Netns) -> tuple[str, ...]:
    return tuple(line.split(" ", 2)[2] for line in ns.run(["iptables-save", "-t", "nat"]).stdout.splitlines()
                 if line.startswith(f"-A {probenat.CHAIN} "))


def _applied(ns: Netns, desired: NodeNetwork) -> bool:
    want = {c: r for c, r in render(desired.ingress).items() if r}
    return (read_back(ns) == dataclasses.replace(desired, ingress=None, probe_snat=None)
            and _ingress_rules(ns) == want and _snat_rules(ns) == probenat.render(desired.probe_snat))

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
    guard = IngressGuard(applier, IngressFilterApplier(ns.name), ProbeNatApplier(ns.name))  # what the agent drives
    try:
        report = await guard.reconcile(desired)
        assert report.ok, report.errors
        assert _applied(ns, desired)
        assert (await guard.reconcile(desired)).total_writes == 0

        # The node's own pool fails over to another gateway node.
        objs = cluster_json()
        pool = {"edge-a-1": "gw-edge-a", "edge-a-3": "gw-edge-a", "cloud-1": "gw-cloud"}[node_name]
        new_active = {"gw-edge-a": "edge-a-2", "gw-cloud": "cloud-2"}[pool]
        set_active(objs[pool], new_active)
        after = dataclasses.replace(plan(parse(objs), nodes(), node_name, cfg).state, ipsec=frozenset())
        report = await guard.reconcile(after)
        assert report.ok, report.errors
        assert _applied(ns, after)
        if node_name == "edge-a-3":
            # A member: neighbour + FDB move, the ingress filter accepts the new gateway, no route; plus the
            # neighbour of the gateway's raven0 address the member probes (path health): the old gateway's out,
            # the new one's in.
            # Measured: 3 neighbour writes (the virtual next hop replaced, the probed address out and in), 2 FDB
            # (the old gateway's MAC out, the new one's in), 1 iptables-restore.
            assert report.writes["route"] == 0 and report.writes["iptables"] == 1, report.writes
            assert report.writes["neighbor"] == 3 and report.writes["fdb"] == 2, report.writes
            assert report.total_writes == 6, report.writes
    finally:
        await applier.close()
