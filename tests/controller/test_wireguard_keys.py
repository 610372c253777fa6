"""WireGuard public keys: each agent publishes its own in its PathReport (never in a Gateway), and the controller
copies the elected tunnel endpoints' keys into the Gateway's status.activeEndpoints[].config.publicKey."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

from raven.agent.wgkeys import REPUBLISH_AFTER_S, KeyPublisher
from raven.api.gateway import Gateway
from raven.api.pathreport import PathReport, PathReportStatus, new_report_body, status_patch
from raven.kube.client import GATEWAYS, NODES, PATHREPORTS, KubeClient
from raven.kube.typed import TypedClient
from tests.controller.conftest import RunningController, eventually, gateway_body, node_body, set_ready
from tests.controller.test_gateway_election import wait_active

Start = Callable[..., Awaitable[RunningController]]


def key(name: str) -> str:
    return base64.b64encode(name.encode().ljust(32, b"#")).decode()


async def published(kube: KubeClient, gateway: str) -> dict[str, str]:
    """node -> config.publicKey of the Gateway's active endpoints."""
    gw = await kube.get(GATEWAYS, gateway)
    return {e["nodeName"]: (e.get("config") or {}).get("publicKey", "")
            for e in (gw.get("status") or {}).get("activeEndpoints") or []}


async def report(kube: KubeClient, node: str, public_key: str, spec_node: str | None = None) -> None:
    body: dict[str, Any] = new_report_body(node)  # type: ignore[assignment]
    body["spec"]["nodeName"] = spec_node or node
    await kube.create(PATHREPORTS, body)
    await kube.merge_patch(PATHREPORTS, node, {"status": {"wireguardPublicKey": public_key}}, subresource="status")


async def test_the_agent_publishes_its_key_in_its_own_report_only(kube: KubeClient) -> None:
    await kube.create(GATEWAYS, gateway_body("gw-a", ["a-1"]))
    publisher = KeyPublisher(TypedClient(kube), "a-1", key("a-1"), lambda: [])
    assert not publisher.ready().ok
    await publisher.publish()
    got = PathReport.from_dict(await kube.get(PATHREPORTS, "a-1"))
    assert got.well_formed and got.wireguard_public_key == key("a-1")
    assert publisher.writes == 1
    # Nothing in the Gateway: agents do not write Gateways.
    gw = await kube.get(GATEWAYS, "gw-a")
    assert all("config" not in e for e in gw["spec"]["endpoints"])
    # The path-health writer's status patches leave the key alone ...
    await kube.merge_patch(PATHREPORTS, "a-1", status_patch(PathReportStatus("gw-a", "gateway")),
                           subresource="status")
    assert PathReport.from_dict(await kube.get(PATHREPORTS, "a-1")).wireguard_public_key == key("a-1")
    # ... and an agent restart with the same key writes nothing.
    again = KeyPublisher(TypedClient(kube), "a-1", key("a-1"), lambda: [])
    await again.publish()
    assert again.writes == 0
    # A rotated key replaces it.
    rotated = KeyPublisher(TypedClient(kube), "a-1", key("a-1-new"), lambda: [])
    await rotated.publish()
    assert PathReport.from_dict(await kube.get(PATHREPORTS, "a-1")).wireguard_public_key == key("a-1-new")


async def test_the_controller_copies_each_elected_endpoints_own_key(kube: KubeClient, start: Start) -> None:
    for n in ("a-1", "a-2"):
        await kube.create(NODES, node_body(n, "gw-a"))
    await kube.create(NODES, node_body("b-1", "gw-b"))
    # a-2's key is already published before it is ever elected (a failover finds it in place).
    await report(kube, "a-1", key("a-1"))
    await report(kube, "a-2", key("a-2"))
    # A report that claims another node in its spec publishes nothing (b-1's name, a-1's spec).
    await report(kube, "b-1", key("forged"), spec_node="a-1")
    await kube.create(GATEWAYS, gateway_body("gw-a", ["a-1", "a-2"]))
    await kube.create(GATEWAYS, gateway_body("gw-b", ["b-1"]))
    await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await eventually(lambda: published(kube, "gw-a"), lambda p: p == {"a-1": key("a-1")}, what="a-1's key copied")
    await wait_active(kube, "gw-b", ["b-1"])
    assert await published(kube, "gw-b") == {"b-1": ""}
    # A rotation (the report's key changes) reaches the status.
    await kube.merge_patch(PATHREPORTS, "a-1", {"status": {"wireguardPublicKey": key("a-1-new")}},
                           subresource="status")
    await eventually(lambda: published(kube, "gw-a"), lambda p: p == {"a-1": key("a-1-new")}, what="rotated key")
    # Failover: the new endpoint comes with its own key.
    await set_ready(kube, "a-1", False)
    await wait_active(kube, "gw-a", ["a-2"])
    assert await published(kube, "gw-a") == {"a-2": key("a-2")}
    # b-1's own report, once well-formed, is copied.
    await kube.delete(PATHREPORTS, "b-1")
    await report(kube, "b-1", key("b-1"))
    await eventually(lambda: published(kube, "gw-b"), lambda p: p == {"b-1": key("b-1")}, what="b-1's key")


async def test_a_report_deleted_under_the_agent_gets_its_key_back(kube: KubeClient) -> None:
    """The Gateway shows another key for this elected node (its report was deleted): the publisher writes again."""
    now = [0.0]
    elected = Gateway.from_dict({"metadata": {"name": "gw-a"}, "spec": {"endpoints": [
        {"nodeName": "a-1", "type": "tunnel", "port": 4500}]}, "status": {"activeEndpoints": [
            {"nodeName": "a-1", "type": "tunnel", "port": 4500, "config": {"publicKey": "OLD"}}]}})
    publisher = KeyPublisher(TypedClient(kube), "a-1", key("a-1"), lambda: [elected], clock=lambda: now[0])
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: publisher.ready().ok, bool, what="first write")
        await kube.delete(PATHREPORTS, "a-1")
        publisher.check()  # just written: the controller may still be copying it, nothing is redone
        now[0] += REPUBLISH_AFTER_S + 1
        publisher.check()
        got = await eventually(lambda: kube.get(PATHREPORTS, "a-1"), lambda r: bool(r), what="report back")
        assert PathReport.from_dict(got).wireguard_public_key == key("a-1")
        assert publisher.writes == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
