"""The agent's safety net (pure, in the plan): no route covers this node's own underlay address, its API
server's address or its default gateway; such a subnet is a plan problem and everything else is planned."""

from __future__ import annotations

import asyncio
import json
import subprocess

from raven.agent.app import SafetyNet
from raven.agent.plan import PlanConfig, PlanResult, ProtectedAddress, plan
from raven.dataplane.underlay import default_gateways
from tests.unit.plan_cluster import JSON, cluster_json, nodes, parse

CFG = PlanConfig()
API = ProtectedAddress("198.18.0.2", "the API server's address")
DEFAULT_GW = ProtectedAddress("192.168.1.1", "the default gateway")


def run(node: str, objs: dict[str, JSON], *protected: ProtectedAddress) -> PlanResult:
    return plan(parse(objs), nodes(), node, CFG, protected)


def with_subnet(objs: dict[str, JSON], gateway: str, node: str, subnet: str) -> dict[str, JSON]:
    for entry in objs[gateway]["status"]["nodes"]:
        if entry["nodeName"] == node:
            entry["subnets"].append(subnet)
    return objs


def routed(result: PlanResult) -> set[str]:
    return {r.dst for r in result.state.routes}


def test_a_subnet_covering_the_api_server_is_not_routed_and_the_rest_is() -> None:
    # dc-2 (another pool) claims the WAN that holds the API server.
    objs = with_subnet(cluster_json(), "gw-dc", "dc-2", "198.18.0.0/16")
    good = plan(parse(cluster_json()), nodes(), "edge-a-2", CFG)
    for node in ("edge-a-2", "edge-a-1"):  # member and gateway
        result = run(node, objs, API, DEFAULT_GW)
        assert "198.18.0.0/16" not in routed(result)
        assert routed(result) == routed(good if node == "edge-a-2" else plan(parse(cluster_json()), nodes(), node,
                                                                             CFG))
        assert ("gateway gw-dc: subnet 198.18.0.0/16 covers the API server's address (198.18.0.2); not routed"
                in result.problems)
    without = run("edge-a-2", objs)  # the same input without the protected address is routed: the net is real
    assert "198.18.0.0/16" in routed(without)


def test_a_subnet_covering_the_default_gateway_is_not_routed() -> None:
    objs = with_subnet(cluster_json(), "gw-cloud", "cloud-2", "192.168.0.0/16")
    result = run("edge-b-2", objs, DEFAULT_GW)
    assert "192.168.0.0/16" not in routed(result)
    assert any("covers the default gateway (192.168.1.1)" in p for p in result.problems)


def test_a_subnet_covering_this_nodes_own_address_is_never_routed() -> None:
    # No protected address passed: the node's own underlay address (from the status) is always protected.
    objs = with_subnet(cluster_json(), "gw-cloud", "cloud-2", "192.168.1.0/24")  # edge-a's LAN
    for node in ("edge-a-2", "edge-a-3"):
        result = run(node, objs)
        assert "192.168.1.0/24" not in routed(result)
        assert any("covers this node's underlay address" in p for p in result.problems)
    # A node elsewhere (whose own address it does not cover) routes it: the check is per node.
    assert "192.168.1.0/24" in routed(run("edge-b-2", objs))


def test_a_gateway_never_installs_a_return_route_covering_a_protected_address() -> None:
    objs = with_subnet(cluster_json(), "gw-edge-a", "edge-a-3", "198.18.0.0/24")
    result = run("edge-a-1", objs, API)
    assert not any(r.dst == "198.18.0.0/24" for r in result.state.routes)
    assert "gateway gw-edge-a: subnet 198.18.0.0/24 covers the API server's address (198.18.0.2); not routed" \
        in result.problems
    assert any(r.dst == "10.245.2.0/24" and r.table == CFG.return_table for r in result.state.routes)


def test_the_same_protected_input_gives_the_same_plan() -> None:
    objs = with_subnet(cluster_json(), "gw-dc", "dc-2", "198.18.0.0/16")
    assert run("edge-a-2", objs, API, DEFAULT_GW) == run("edge-a-2", objs, DEFAULT_GW, API)


# --- the edge: what the agent passes in ---------------------------------------------------------------

async def test_the_safety_net_protects_the_api_server_and_the_default_gateways() -> None:
    answers: list[tuple[str, ...] | OSError] = [("192.168.1.1",), OSError("netlink down"), ("192.168.1.254",)]

    async def gateways() -> tuple[str, ...]:
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    net = SafetyNet("198.18.0.2", gateways)
    assert await net.protected() == (API, DEFAULT_GW)
    assert await net.protected() == (API, DEFAULT_GW)  # a failed lookup keeps the last answer
    assert await net.protected() == (API, ProtectedAddress("192.168.1.254", "the default gateway"))


async def test_an_api_server_name_is_resolved() -> None:
    async def none() -> tuple[str, ...]:
        return ()

    assert await SafetyNet("localhost", none).protected() == (ProtectedAddress("127.0.0.1", API.what),)


def test_default_gateways_are_read_from_the_main_table() -> None:
    # Checked against an independent reader of this namespace's main table.
    out = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "main", "default"], capture_output=True,
                         text=True, check=True)
    expected = sorted({r["gateway"] for r in json.loads(out.stdout) if "gateway" in r})
    assert list(asyncio.run(default_gateways())) == expected
