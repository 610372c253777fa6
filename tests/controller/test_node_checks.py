"""Cluster input validated where it enters: a Node whose pod CIDR would hijack routing is left out of every
status and reported (Event on the Node and the Gateway, NodesValid=False); endpoint and label mistakes are
reported too. Against the in-process test API server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from raven.kube.client import GATEWAYS, NODES, KubeClient
from tests.controller.conftest import RunningController, active, eventually, gateway_body, node_body, set_label
from tests.controller.test_gateway_election import events_for, wait_active

Start = Callable[..., Awaitable[RunningController]]


def nodes_valid(gw: dict[str, Any]) -> dict[str, Any]:
    for c in (gw.get("status") or {}).get("conditions") or []:
        if c["type"] == "NodesValid":
            return dict(c)
    return {}


def listed(gw: dict[str, Any]) -> dict[str, list[str]]:
    return {n["nodeName"]: n["subnets"] for n in (gw.get("status") or {}).get("nodes") or []}


async def condition_is(kube: KubeClient, gw: str, status: str, reason: str) -> dict[str, Any]:
    got = await eventually(lambda: kube.get(GATEWAYS, gw),
                           lambda g: (nodes_valid(g).get("status"), nodes_valid(g).get("reason")) == (status, reason),
                           what=f"{gw} NodesValid={status} {reason}")
    return got


async def event(kube: KubeClient, name: str, reason: str) -> dict[str, Any]:
    evs = await eventually(lambda: events_for(kube, name), lambda e: any(x["reason"] == reason for x in e),
                           what=f"{reason} event on {name}")
    return next(e for e in evs if e["reason"] == reason)


async def two_pools(kube: KubeClient) -> None:
    for n in ("a-1", "a-2"):
        await kube.create(NODES, node_body(n, "gw-a", cidrs=[f"10.11.{n[-1]}.0/24"]))
    await kube.create(NODES, node_body("b-1", "gw-b", cidrs=["10.12.1.0/24"]))
    await kube.create(GATEWAYS, gateway_body("gw-a", ["a-1", "a-2"]))
    await kube.create(GATEWAYS, gateway_body("gw-b", ["b-1"]))


async def test_a_pod_cidr_overlapping_another_pools_subnet_takes_nothing_over(kube: KubeClient, start: Start) -> None:
    await two_pools(kube)
    await kube.create(NODES, node_body("b-2", "gw-b", cidrs=["10.12.2.0/24"]))
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await condition_is(kube, "gw-b", "True", "NodesValid")
    # b-2's pod CIDR is edited to cover gw-a's subnets: the node that had them keeps them.
    await kube.merge_patch(NODES, "b-2", {"spec": {"podCIDR": "10.11.0.0/16", "podCIDRs": ["10.11.0.0/16"]}})
    got = await condition_is(kube, "gw-b", "False", "PodCIDRConflict")
    assert "node b-2: pod CIDR 10.11.0.0/16 overlaps 10.11.1.0/24 of node a-1 (gateway gw-a)" in \
        nodes_valid(got)["message"]
    assert list(listed(got)) == ["b-1"]
    a = await kube.get(GATEWAYS, "gw-a")
    assert listed(a) == {"a-1": ["10.11.1.0/24"], "a-2": ["10.11.2.0/24"]}
    assert nodes_valid(a)["status"] == "True"
    on_gw = await event(kube, "gw-b", "PodCIDRConflict")
    on_node = await event(kube, "b-2", "PodCIDRConflict")
    assert on_gw["type"] == on_node["type"] == "Warning"
    assert on_node["involvedObject"]["kind"] == "Node" and "gateway gw-b" in on_node["message"]
    assert rc.metric("raven_controller_rejected_nodes") == 1

    # Fixed: listed again, the condition clears.
    await kube.merge_patch(NODES, "b-2", {"spec": {"podCIDR": "10.12.2.0/24", "podCIDRs": ["10.12.2.0/24"]}})
    got = await condition_is(kube, "gw-b", "True", "NodesValid")
    assert listed(got)["b-2"] == ["10.12.2.0/24"]
    assert rc.metric("raven_controller_rejected_nodes") == 0


async def test_a_newcomer_never_pushes_a_listed_node_out(kube: KubeClient, start: Start) -> None:
    await two_pools(kube)
    rc = await start()
    await wait_active(kube, "gw-b", ["b-1"])
    seen = rc.delivered("nodes", "ADDED")
    # An older-looking, smaller-named node of the other pool claims b-1's exact subnet.
    await kube.create(NODES, node_body("a-0", "gw-a", cidrs=["10.12.1.0/24"]))
    await rc.acted_on("nodes", "ADDED", seen)
    got = await condition_is(kube, "gw-a", "False", "PodCIDRConflict")
    assert "a-0" not in listed(got)
    b = await kube.get(GATEWAYS, "gw-b")
    assert listed(b) == {"b-1": ["10.12.1.0/24"]} and nodes_valid(b)["status"] == "True"
    # The rejected newcomer is gone: its Gateway's condition clears; the other pool's status is untouched.
    b_rv = b["metadata"]["resourceVersion"]
    await kube.delete(NODES, "a-0")
    await condition_is(kube, "gw-a", "True", "NodesValid")
    await rc.drained()
    assert (await kube.get(GATEWAYS, "gw-b"))["metadata"]["resourceVersion"] == b_rv


async def test_a_pod_cidr_covering_the_wan_or_a_reserved_range_is_left_out(kube: KubeClient, start: Start) -> None:
    await two_pools(kube)
    await kube.create(NODES, node_body("cp", None, ip="198.18.0.2", cidrs=[]))  # the API server's node
    await kube.create(NODES, node_body("b-2", "gw-b", cidrs=["198.18.0.0/16"]))
    await kube.create(NODES, node_body("b-3", "gw-b", cidrs=["10.96.0.0/24"]))
    await kube.create(NODES, node_body("b-4", "gw-b", cidrs=["240.0.0.0/24"]))
    rc = await start(service_cidr=("10.96.0.0/12",))
    got = await condition_is(kube, "gw-b", "False", "PodCIDRReserved")
    assert list(listed(got)) == ["b-1"]
    message = nodes_valid(got)["message"]
    assert "node b-2: pod CIDR 198.18.0.0/16 covers 198.18.0.2, the InternalIP of node cp" in message
    assert "node b-3: pod CIDR 10.96.0.0/24 overlaps the Service range (--service-cidr 10.96.0.0/12)" in message
    assert "node b-4: pod CIDR 240.0.0.0/24 overlaps the overlay range (--overlay-cidr 240.0.0.0/8)" in message
    for n in ("b-2", "b-3", "b-4"):
        assert (await event(kube, n, "PodCIDRReserved"))["involvedObject"]["kind"] == "Node"
    assert rc.metric("raven_controller_rejected_nodes") == 3
    assert (await kube.get(GATEWAYS, "gw-a"))["status"]["activeEndpoints"]  # the rest is elected as usual


async def test_a_rejected_active_endpoint_fails_over(kube: KubeClient, start: Start) -> None:
    await two_pools(kube)
    await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await kube.merge_patch(NODES, "a-1", {"spec": {"podCIDR": "banana/99", "podCIDRs": ["banana/99"]}})
    await wait_active(kube, "gw-a", ["a-2"])
    lost = await event(kube, "gw-a", "ActiveEndpointLost")
    assert "'banana/99' does not parse" in lost["message"]
    got = await condition_is(kube, "gw-a", "False", "InvalidPodCIDR")
    assert list(listed(got)) == ["a-2"]


async def test_endpoint_mistakes_are_reported(kube: KubeClient, start: Start) -> None:
    await two_pools(kube)
    rc = await start()
    await condition_is(kube, "gw-b", "True", "NodesValid")
    # gw-b names b-2, which does not exist.
    await kube.merge_patch(GATEWAYS, "gw-b", {"spec": {"endpoints": gateway_body("gw-b", ["b-1", "b-2"])["spec"][
        "endpoints"]}})
    got = await condition_is(kube, "gw-b", "False", "EndpointNodeNotFound")
    assert "endpoint b-2 (tunnel): no such node" in nodes_valid(got)["message"]
    await event(kube, "gw-b", "EndpointNodeNotFound")
    await kube.create(NODES, node_body("b-2", "gw-b", cidrs=["10.12.2.0/24"]))
    await condition_is(kube, "gw-b", "True", "NodesValid")

    # gw-a's endpoints name b-1 too: both Gateways say so.
    gw = await kube.get(GATEWAYS, "gw-a")
    await kube.merge_patch(GATEWAYS, "gw-a", {"spec": {"endpoints": [*gw["spec"]["endpoints"],
                                                                     {"nodeName": "b-1", "type": "tunnel"}]}})
    await condition_is(kube, "gw-b", "False", "EndpointNodeConflict")
    a = await condition_is(kube, "gw-a", "False", "EndpointNodeConflict")
    assert "the node is labelled for gateway gw-b" in nodes_valid(a)["message"]
    assert "endpoint b-1 (tunnel): the node is also an endpoint of gateway(s) gw-a" in \
        (await event(kube, "gw-b", "EndpointNodeConflict"))["message"]
    assert await active(kube, "gw-b") == ["b-1"]  # reported, not acted on: b-1 is labelled for gw-b

    await kube.merge_patch(GATEWAYS, "gw-a", {"spec": {"endpoints": gw["spec"]["endpoints"]}})
    await condition_is(kube, "gw-b", "True", "NodesValid")
    await condition_is(kube, "gw-a", "True", "NodesValid")
    assert rc.rt.health.alive


async def test_a_node_labelled_for_a_missing_gateway_is_reported_on_the_node(kube: KubeClient, start: Start) -> None:
    await two_pools(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await set_label(kube, "a-2", "gw-typo")
    ev = await event(kube, "a-2", "GatewayNotFound")
    assert ev["type"] == "Warning" and ev["involvedObject"]["kind"] == "Node"
    assert "raven.openyurt.io/gateway=gw-typo but no Gateway gw-typo exists" in ev["message"]
    # Reported once: another change to the node (a new label value elsewhere) does not repeat it.
    seen = rc.delivered("nodes", "MODIFIED")
    await kube.merge_patch(NODES, "a-2", {"spec": {"podCIDR": "10.11.7.0/24", "podCIDRs": ["10.11.7.0/24"]}})
    await rc.acted_on("nodes", "MODIFIED", seen)
    evs = [e for e in await events_for(kube, "a-2") if e["reason"] == "GatewayNotFound"]
    assert len(evs) == 1 and evs[0].get("count", 1) == 1


async def test_when_the_holder_goes_the_node_it_kept_out_of_another_pool_is_listed(kube: KubeClient,
                                                                                   start: Start) -> None:
    await two_pools(kube)
    await start()
    await wait_active(kube, "gw-b", ["b-1"])
    await kube.create(NODES, node_body("a-0", "gw-a", cidrs=["10.12.1.0/24"]))
    await condition_is(kube, "gw-a", "False", "PodCIDRConflict")
    # Deleting b-1 touches only gw-b; gw-a must learn that its node's verdict changed.
    await kube.delete(NODES, "b-1")
    got = await condition_is(kube, "gw-a", "True", "NodesValid")
    assert listed(got)["a-0"] == ["10.12.1.0/24"]
