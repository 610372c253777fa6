"""Bad input is skipped and reported; the rest of the cluster is still planned."""

from __future__ import annotations

from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.api.node import Node
from tests.unit.plan_cluster import JSON, POOLS, cluster_json, gateway_json, nodes, parse

CFG = PlanConfig()


def run(node: str, objs: dict[str, JSON], node_list: list[Node] | None = None) -> PlanResult:
    return plan(parse(objs), node_list if node_list is not None else nodes(), node, CFG)


def has(problems: list[str], *fragments: str) -> bool:
    return any(all(f in p for f in fragments) for p in problems)


def test_malformed_status_entries_are_skipped_reported_and_the_rest_planned() -> None:
    objs = cluster_json()
    b_nodes = objs["gw-edge-b"]["status"]["nodes"]
    b_nodes[1]["subnets"] = ["10.246.1.0/24", "10.246.9.0/33", "fd00:246:1::/64", "10.246.1.0/24"]
    b_nodes.append({"nodeName": "", "privateIP": "192.168.2.99", "subnets": ["10.246.99.0/24"]})
    b_nodes.append({"nodeName": "edge-b-1", "privateIP": "192.168.2.98", "subnets": ["10.246.98.0/24"]})
    objs["gw-edge-a"]["status"]["nodes"][2]["privateIP"] = "192.168.1.300"
    objs["gw-dc"]["status"]["activeEndpoints"][0]["nodeName"] = "dc-9"
    objs["gw-bad"] = gateway_json(
        "gw-bad", "2026-01-06T00:00:00Z", [("bad-1", "10.8.0.1", ["10.254.0.0/24"])], "bad-1", under_nat=False
    )
    objs["gw-bad"]["spec"]["exposeType"] = "Bogus"

    result = run("edge-a-1", objs)
    p = result.problems
    assert has(p, "gw-edge-b", "edge-b-2", "invalid subnet", "10.246.9.0/33")
    assert has(p, "gw-edge-b", "edge-b-2", "IPv6", "fd00:246:1::/64")
    assert has(p, "gw-edge-b", "empty nodeName")
    assert has(p, "gw-edge-b", "edge-b-1", "duplicate")
    assert has(p, "gw-edge-a", "edge-a-3", "invalid privateIP", "192.168.1.300")
    assert has(p, "gw-dc", "dc-9", "not in status.nodes")
    assert has(p, "gw-bad", "invalid spec", "exposeType")

    # The rest is planned: the valid subnets of gw-edge-b (through the relay), all of gw-cloud, and gw-bad,
    # whose spec problem does not stop its status from being used.
    remote = {r.dst for r in result.state.routes if r.table == 9027}
    assert remote == {"10.244.0.0/24", "10.244.1.0/24", "10.246.0.0/24", "10.246.1.0/24", "10.254.0.0/24"}
    # No return route or FDB entry for the pool node with the broken entry; the good one is served.
    returns = {r.dst for r in result.state.routes if r.table == 9028 and r.ifname == "raven0"}
    assert returns == {"10.245.1.0/24"}
    assert "192.168.1.300" not in {f.dst for f in result.state.fdb}
    # gw-dc (no usable endpoint) gets no connection; gw-bad (reachable, unknown exposeType) gets a direct one.
    assert {c.name for c in result.state.ipsec} == {"raven-gw-cloud", "raven-gw-bad"}
    # The node whose own entry is broken has nothing to plan with.
    assert run("edge-a-3", objs).state.empty


def test_a_spec_typo_does_not_tear_down_a_working_pool() -> None:
    before = run("edge-a-1", cluster_json())
    objs = cluster_json()
    # An operator's typo: the controller reports it and keeps the last good election in the status.
    objs["gw-edge-b"]["spec"]["endpoints"][0]["type"] = "tunel"
    after = run("edge-a-1", objs)
    assert has(after.problems, "gw-edge-b", "invalid spec", "unknown endpoint type")
    assert after.state == before.state
    assert run("edge-b-1", objs).state == run("edge-b-1", cluster_json()).state


def test_unknown_expose_type_counts_as_not_exposed() -> None:
    objs = cluster_json()
    objs["gw-cloud"]["spec"]["exposeType"] = "NodePort"
    result = run("edge-a-1", objs)
    assert has(result.problems, "gw-cloud", "unknown expose type")
    # Still planned: gw-cloud is not under NAT, so it stays directly reachable.
    assert "raven-gw-cloud" in {c.name for c in result.state.ipsec}


def test_active_endpoint_with_bad_public_ip_is_skipped() -> None:
    objs = cluster_json()
    objs["gw-cloud"]["status"]["activeEndpoints"][0]["publicIP"] = "not-an-ip"
    result = run("edge-a-1", objs)
    assert has(result.problems, "gw-cloud", "invalid publicIP")
    assert "raven-gw-cloud" not in {c.name for c in result.state.ipsec}
    assert run("cloud-2", objs).state.empty


def test_subnet_claimed_by_two_gateways_goes_to_the_older_one_on_every_node() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["nodes"][1]["subnets"].append("10.244.0.0/24")
    inner_cloud = next(link.local for link in run("cloud-1", objs).state.links if link.name == "raven1")
    for node in ("edge-a-1", "edge-b-1"):
        result = run(node, objs)
        (route,) = [r for r in result.state.routes if r.dst == "10.244.0.0/24" and r.table == 9027]
        assert route.gateway == inner_cloud
        assert has(result.problems, "gw-dc", "10.244.0.0/24", "older gateway gw-cloud")


def test_remote_subnet_overlapping_the_local_pool_is_not_routed() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["nodes"][1]["subnets"].append("10.245.0.0/16")
    for node in ("edge-a-1", "edge-a-2"):
        result = run(node, objs)
        assert "10.245.0.0/16" not in {r.dst for r in result.state.routes}
        assert has(result.problems, "10.245.0.0/16", "overlaps")
    # Other pools route it (longest-prefix match keeps edge-a's /24s going to edge-a).
    assert "10.245.0.0/16" in {r.dst for r in run("cloud-2", objs).state.routes}


def test_subnet_written_with_host_bits_is_normalised() -> None:
    objs = cluster_json()
    objs["gw-dc"]["status"]["nodes"][0]["subnets"] = ["10.247.0.1/24"]
    assert "10.247.0.0/24" in {r.dst for r in run("edge-a-2", objs).state.routes}


def test_node_listed_by_two_gateways_follows_its_label() -> None:
    objs = cluster_json()
    # edge-a-2 moved to gw-edge-b (label changed) and gw-edge-b's status already lists it; gw-edge-a's not yet.
    objs["gw-edge-b"]["status"]["nodes"].append(
        {"nodeName": "edge-a-2", "privateIP": "192.168.1.12", "subnets": ["10.245.1.0/24"]}
    )
    node_list = [
        Node.from_dict(
            {
                "metadata": {"name": n.name, "labels": {"raven.openyurt.io/gateway": "gw-edge-b"}},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.12"}]},
            }
        )
        if n.name == "edge-a-2"
        else n
        for n in nodes()
    ]
    result = run("edge-a-2", objs, node_list)
    assert result.gateway == "gw-edge-b"
    assert has(result.problems, "edge-a-2", "several gateways")


def test_label_ahead_of_status_is_reported_and_status_followed() -> None:
    node_list = [
        Node.from_dict(
            {
                "metadata": {"name": "edge-a-2", "labels": {"raven.openyurt.io/gateway": "gw-edge-b"}},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.99"}]},
            }
        )
    ]
    result = run("edge-a-2", cluster_json(), node_list)
    assert result.gateway == "gw-edge-a" and result.role == "member"
    assert has(result.problems, "labelled for gateway gw-edge-b")
    assert has(result.problems, "InternalIP 192.168.1.99 differs")


def test_overlay_address_collision_in_a_pool_is_reported() -> None:
    objs = cluster_json()
    # 10.168.1.12 has the same low 24 bits as edge-a-2's 192.168.1.12.
    pool = [*POOLS["gw-edge-a"], ("edge-a-4", "10.168.1.12", ["10.245.4.0/24"])]
    objs["gw-edge-a"] = gateway_json("gw-edge-a", "2026-01-02T00:00:00Z", pool, "edge-a-1", under_nat=True)
    gateway = run("edge-a-1", objs)
    assert has(gateway.problems, "edge-a-4", "overlay address 240.168.1.12", "edge-a-2")
    assert "10.245.4.0/24" not in {r.dst for r in gateway.state.routes}
    assert "10.245.1.0/24" in {r.dst for r in gateway.state.routes}
    assert run("edge-a-4", objs).state.empty
    assert run("edge-a-2", objs).role == "member"
