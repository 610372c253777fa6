"""Failovers change O(1) objects (counted by diffing two plans), and the plan is deterministic."""

from __future__ import annotations

import random

from raven.agent.plan import PlanConfig, plan
from raven.dataplane.state import NodeNetwork
from tests.unit.plan_cluster import JSON, changed_objects, cluster_json, diff, gateway_json, nodes, parse, set_active

CFG = PlanConfig()


def state(node: str, objs: dict[str, JSON]) -> NodeNetwork:
    return plan(parse(objs), nodes(), node, CFG).state


def big_cluster(subnets_per_pool: int) -> dict[str, JSON]:
    """The reference cluster plus a reachable pool with many nodes (one /24 each)."""
    objs = cluster_json()
    pool = [
        (f"big-{i}", f"172.20.{i // 250}.{i % 250 + 1}", [f"10.{100 + i // 256}.{i % 256}.0/24"])
        for i in range(subnets_per_pool)
    ]
    objs["gw-big"] = gateway_json("gw-big", "2026-01-05T00:00:00Z", pool, "big-0", under_nat=False)
    return objs


def test_local_failover_moves_one_neighbour_and_one_fdb_entry_on_a_member_and_no_route() -> None:
    before = big_cluster(500)
    after = big_cluster(500)
    set_active(after["gw-edge-a"], "edge-a-3")
    old, new = state("edge-a-2", before), state("edge-a-2", after)
    assert len(old.routes) > 500  # many remote subnets ...
    changes = diff(old, new)
    # ... yet not one route changes. The virtual next hop's neighbour and the FDB entry move; the probed gateway
    # address (path health) is the new gateway's: one neighbour out, one in; the ingress filter now accepts the
    # new gateway (one iptables-restore). Traffic depends only on the neighbour, the FDB and the filter.
    assert set(changes) == {"neighbors", "fdb", "ingress"}
    assert changed_objects(old, new) == 4  # 2 neighbours, 1 FDB entry, 1 ingress filter
    (removed,), (added,) = changes["fdb"]
    assert (removed.dst, added.dst) == ("192.168.1.11", "192.168.1.13")
    n_removed, n_added = changes["neighbors"]
    vnh_old, vnh_new = (next(n for n in ns if n.ip == "169.254.240.1") for ns in (n_removed, n_added))
    assert vnh_old.mac != vnh_new.mac
    assert {n.ip for n in n_removed} - {"169.254.240.1"} == {"240.168.1.11"}
    assert {n.ip for n in n_added} - {"169.254.240.1"} == {"240.168.1.13"}


def test_remote_failover_replaces_only_that_peers_ipsec_connection() -> None:
    before = big_cluster(500)
    after = big_cluster(500)
    set_active(after["gw-big"], "big-1")
    for gateway_node in ("edge-a-1", "cloud-1", "dc-1"):
        old, new = state(gateway_node, before), state(gateway_node, after)
        changes = diff(old, new)
        assert set(changes) == {"ipsec"}, gateway_node
        (removed,), (added,) = changes["ipsec"]
        assert removed.name == added.name == "raven-gw-big"
        assert (removed.remote_ts, removed.local_ts) == (added.remote_ts, added.local_ts)
        assert changed_objects(old, new) == 1
    # Members of other pools do not see a remote failover at all.
    for member in ("edge-a-2", "cloud-2"):
        assert state(member, before) == state(member, after)


def test_failover_of_a_nat_gateway_changes_nothing_on_the_public_side_that_only_responds_with_psk() -> None:
    before, after = cluster_json(), cluster_json()
    set_active(after["gw-edge-a"], "edge-a-3")
    psk = PlanConfig(ipsec_auth="psk")
    # gw-cloud accepts gw-edge-a from %any; gw-edge-b reaches it through gw-cloud.
    for node in ("cloud-1", "edge-b-1", "dc-1"):
        assert plan(parse(before), nodes(), node, psk).state == plan(parse(after), nodes(), node, psk).state, node


def test_failover_with_certificates_rebinds_the_peers_to_the_new_endpoint_only() -> None:
    before, after = cluster_json(), cluster_json()
    set_active(after["gw-edge-a"], "edge-a-3")
    # Peers now accept gw-edge-a only from edge-a-3 (and no longer from edge-a-1): the one change.
    for node in ("cloud-1", "dc-1"):
        old, new = state(node, before), state(node, after)
        assert {c.name: c.remote_id for c in old.ipsec}["raven-gw-edge-a"] == "raven-node-edge-a-1"
        changed = {c.name: c.remote_id for c in new.ipsec}.items() - {c.name: c.remote_id for c in old.ipsec}.items()
        assert changed == {("raven-gw-edge-a", "raven-node-edge-a-3")}, node
        assert old.routes == new.routes and old.links == new.links, node
    assert state("edge-b-1", before) == state("edge-b-1", after)  # reaches edge-a through gw-cloud
    # The new endpoint initiates from its own address.
    conn = next(c for c in state("edge-a-3", after).ipsec if c.name == "raven-gw-cloud")
    assert conn.initiator and conn.local_addrs == ("192.168.1.13",)
    # The new endpoint initiates from its own address.
    conn = next(c for c in state("edge-a-3", after).ipsec if c.name == "raven-gw-cloud")
    assert conn.initiator and conn.local_addrs == ("192.168.1.13",)


def test_same_inputs_give_equal_state_whatever_their_order() -> None:
    objs = big_cluster(50)
    reference = {n: plan(parse(objs), nodes(), n, CFG) for n in ("edge-a-1", "edge-a-2", "cloud-1", "big-7")}
    rng = random.Random(5)
    for _ in range(5):
        shuffled = [dict(o) for o in objs.values()]
        rng.shuffle(shuffled)
        for o in shuffled:
            status = dict(o["status"])
            status_nodes = [dict(n, subnets=list(reversed(n["subnets"]))) for n in status["nodes"]]
            rng.shuffle(status_nodes)
            status["nodes"] = status_nodes
            o["status"] = status
        node_list = nodes()
        rng.shuffle(node_list)
        for name, ref in reference.items():
            result = plan(parse(shuffled), node_list, name, CFG)
            assert result.state == ref.state
            assert result.paths == ref.paths
            assert (result.role, result.gateway) == (ref.role, ref.gateway)


def test_repeated_planning_is_equal_including_problems() -> None:
    objs = cluster_json()
    objs["gw-edge-b"]["status"]["nodes"][1]["subnets"].append("not-a-cidr")
    first = plan(parse(objs), nodes(), "cloud-1", CFG)
    second = plan(parse(objs), {n.name: n for n in nodes()}, "cloud-1", CFG)
    assert first == second and first.problems
