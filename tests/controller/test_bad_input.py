"""Bad input is reported and survived: invalid Gateways keep their last good election, incomplete
nodes are listed with what is known, unknown nodes are simply not eligible, garbage never crashes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from raven.kube.client import GATEWAYS, NODES, KubeClient
from tests.controller.conftest import (
    RunningController,
    active,
    eventually,
    gateway_body,
    node_body,
    set_ready,
)
from tests.controller.test_gateway_election import events_for, two_gateways, wait_active

Start = Callable[..., Awaitable[RunningController]]


def valid_condition(gw: dict[str, Any]) -> dict[str, Any] | None:
    for c in (gw.get("status") or {}).get("conditions") or []:
        if c["type"] == "Valid":
            return dict(c)
    return None


async def test_invalid_gateway_gets_condition_and_event_and_keeps_last_good_election(
    kube: KubeClient, start: Start
) -> None:
    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    gw = await kube.get(GATEWAYS, "gw-a")
    eps = gw["spec"]["endpoints"]
    await kube.merge_patch(GATEWAYS, "gw-a", {"spec": {"endpoints": [*eps, dict(eps[1])]}})
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-a"),
                           lambda g: (valid_condition(g) or {}).get("status") == "False", what="Valid=False")
    cond = valid_condition(got)
    assert cond is not None and cond["reason"] == "InvalidSpec"
    assert "spec.endpoints[3]" in cond["message"] and "duplicate endpoint for node 'a-2'" in cond["message"]
    evs = await eventually(lambda: events_for(kube, "gw-a"),
                           lambda e: any(x["reason"] == "InvalidGateway" for x in e), what="InvalidGateway event")
    inv = next(e for e in evs if e["reason"] == "InvalidGateway")
    assert inv["type"] == "Warning" and "duplicate endpoint" in inv["message"]
    assert rc.metric("raven_controller_invalid_gateways") == 1

    # The last good election holds while the spec is invalid, even though its node fails.
    seen, reconciles = rc.delivered("nodes", "MODIFIED"), rc.reconciles()
    await set_ready(kube, "a-1", False)
    await rc.acted_on("nodes", "MODIFIED", seen)
    assert rc.reconciles() > reconciles  # the NotReady was reconciled ...
    assert await active(kube, "gw-a") == ["a-1"]  # ... and the invalid spec kept the last election
    await wait_active(kube, "gw-b", ["b-1"])  # the other gateway is unaffected

    await kube.merge_patch(GATEWAYS, "gw-a", {"spec": {"endpoints": eps}})
    await wait_active(kube, "gw-a", ["a-2"])
    fixed = await kube.get(GATEWAYS, "gw-a")
    assert (valid_condition(fixed) or {}).get("status") == "True"
    assert rc.metric("raven_controller_invalid_gateways") == 0


async def test_unknown_expose_type_and_mixed_nat_are_reported(kube: KubeClient, start: Start) -> None:
    await kube.create(NODES, node_body("x-1", "gw-x"))
    await kube.create(GATEWAYS, gateway_body("gw-x", ["x-1"], exposeType="Magic"))
    body = gateway_body("gw-y", ["y-1", "y-2"])
    body["spec"]["endpoints"][1]["underNAT"] = True
    await kube.create(GATEWAYS, body)
    await start()
    x = await eventually(lambda: kube.get(GATEWAYS, "gw-x"), lambda g: valid_condition(g) is not None, what="gw-x")
    assert "unknown expose type 'Magic'" in (valid_condition(x) or {})["message"]
    assert not (x["status"].get("activeEndpoints"))  # never valid: nothing elected
    y = await eventually(lambda: kube.get(GATEWAYS, "gw-y"), lambda g: valid_condition(g) is not None, what="gw-y")
    assert "mixed underNAT" in (valid_condition(y) or {})["message"]


async def test_incomplete_nodes_are_listed_with_what_is_known_and_reported(kube: KubeClient, start: Start) -> None:
    await kube.create(NODES, node_body("i-1", "gw-i", ip=None))
    await kube.create(NODES, node_body("i-2", "gw-i", cidrs=[]))
    await kube.create(GATEWAYS, gateway_body("gw-i", ["i-1", "i-2"]))
    await start()
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-i"), lambda g: bool((g.get("status") or {}).get("nodes")),
                           what="status.nodes")
    i2 = await kube.get(NODES, "i-2")
    assert got["status"]["nodes"] == [
        {"nodeName": "i-1", "privateIP": "", "subnets": [got["status"]["nodes"][0]["subnets"][0]]},
        {"nodeName": "i-2", "privateIP": i2["status"]["addresses"][0]["address"], "subnets": []},
    ]
    assert [e["nodeName"] for e in got["status"]["activeEndpoints"]] == ["i-1"]  # Ready, so eligible
    evs = await eventually(lambda: events_for(kube, "gw-i"),
                           lambda e: any(x["reason"] == "NodeIncomplete" for x in e), what="NodeIncomplete event")
    msg = next(e for e in evs if e["reason"] == "NodeIncomplete")["message"]
    assert "node i-1: no InternalIP address" in msg and "node i-2: no pod CIDR" in msg


async def test_gateway_naming_a_missing_node_is_fine(kube: KubeClient, start: Start) -> None:
    await kube.create(GATEWAYS, gateway_body("gw-g", ["ghost", "g-2"]))
    await start()
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-g"), lambda g: "status" in g, what="status written")
    assert got["status"]["activeEndpoints"] == [] and got["status"]["nodes"] == []
    await kube.create(NODES, node_body("g-2", "gw-g"))
    await wait_active(kube, "gw-g", ["g-2"])
    await kube.create(NODES, node_body("ghost", "gw-g"))
    # Once the controller has listed the late node in the status, it has decided with it in view ...
    await eventually(lambda: kube.get(GATEWAYS, "gw-g"),
                     lambda g: "ghost" in [n["nodeName"] for n in g["status"]["nodes"]], what="ghost listed")
    assert await active(kube, "gw-g") == ["g-2"]  # ... sticky: the late first candidate does not steal


async def test_garbage_node_and_gateway_fields_never_crash_the_controller(kube: KubeClient, start: Start) -> None:
    weird = node_body("w-1", "gw-w")
    weird["status"]["addresses"] = [{"type": "InternalIP"}, {"address": "10.9.9.9"}]
    weird["status"]["conditions"] = [{"type": "Ready"}]
    weird["spec"] = {"podCIDRs": ["not-a-cidr"]}
    await kube.create(NODES, weird)
    await kube.create(NODES, node_body("w-2", "gw-w"))
    body = gateway_body("gw-w", ["w-1", "w-2"])
    body["status"] = {"activeEndpoints": [{"nodeName": "w-9", "type": "tunnel"}], "nodes": []}
    await kube.create(GATEWAYS, body)
    rc = await start()
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-w"), lambda g: bool(g["status"].get("conditions")),
                           what="status")
    assert [e["nodeName"] for e in got["status"]["activeEndpoints"]] == ["w-2"]
    # The unparsable pod CIDR is never copied into the status: the node is left out, and said so.
    assert [n["nodeName"] for n in got["status"]["nodes"]] == ["w-2"]
    cond = next(c for c in got["status"]["conditions"] if c["type"] == "NodesValid")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidPodCIDR")
    assert "pod CIDR 'not-a-cidr' does not parse" in cond["message"]
    evs = await eventually(lambda: events_for(kube, "gw-w"),
                           lambda e: any(x["reason"] == "InvalidPodCIDR" for x in e), what="InvalidPodCIDR")
    assert "'not-a-cidr' does not parse" in next(e for e in evs if e["reason"] == "InvalidPodCIDR")["message"]
    assert rc.rt.health.alive
