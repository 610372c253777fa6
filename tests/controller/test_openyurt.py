"""OpenYurt's objects against the real controller and the test API server: the raven-cfg handler cases
(gateway_pickup_enqueue_handlers_test.go: create / update of either switch / delete re-elect every Gateway),
the node handler cases (a node of no gateway enqueues nothing; create, delete, relabel and Ready changes enqueue
the gateways involved), and the extra-allowed-source-cidrs annotation on Nodes and Gateways.

"Re-elects every Gateway" is observed as what OpenYurt's handler causes: every Gateway's status follows the new
switches. "Enqueues nothing" is observed after the event was delivered and the queue drained (no status write)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from raven.kube.client import CONFIGMAPS, EVENTS, GATEWAYS, NODES, KubeClient
from tests.controller.conftest import RunningController, active, eventually, gateway_body, node_body, set_ready
from tests.controller.test_gateway_election import two_gateways, wait_active

Start = Callable[..., Awaitable[RunningController]]
NS, CFG = "kube-system", "raven-cfg"
EXTRA = "raven.openyurt.io/extra-allowed-source-cidrs"


def raven_cfg(tunnel: str | None = "true", proxy: str | None = "true", **more: str) -> dict[str, Any]:
    data = {k: v for k, v in (("enable-l3-tunnel", tunnel), ("enable-l7-proxy", proxy)) if v is not None}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CFG, "namespace": NS},
            "data": {**data, **more}}


async def typed_active(kube: KubeClient, gw: str) -> list[tuple[str, str]]:
    got = await kube.get(GATEWAYS, gw)
    return [(e["nodeName"], e["type"]) for e in (got.get("status") or {}).get("activeEndpoints") or []]


async def valid(kube: KubeClient, gw: str) -> dict[str, Any]:
    got = await kube.get(GATEWAYS, gw)
    return next(c for c in got["status"]["conditions"] if c["type"] == "Valid")


async def with_proxies(kube: KubeClient) -> None:
    """gw-a and gw-b (three tunnel candidates each), each with a proxy endpoint on its second node."""
    await two_gateways(kube)
    for gw in ("a", "b"):
        await kube.merge_patch(GATEWAYS, f"gw-{gw}", {"spec": {
            "proxyConfig": {"Replicas": 1},
            "endpoints": [*gateway_body(f"gw-{gw}", [f"{gw}-1", f"{gw}-2", f"{gw}-3"])["spec"]["endpoints"],
                          {"nodeName": f"{gw}-2", "type": "proxy", "port": 10262}]}})


async def test_raven_cfg_absent_elects_both_and_status_carries_openyurts_config(kube: KubeClient,
                                                                                 start: Start) -> None:
    """No raven-cfg (a fresh install without it, or deleted with OpenYurt's chart): everything is elected
    (OpenYurt would elect nothing: a documented difference). Each active endpoint carries its switch."""
    await with_proxies(kube)
    await start()
    for gw in ("a", "b"):
        await eventually(lambda g=gw: typed_active(kube, f"gw-{g}"),
                         lambda a, g=gw: a == [(f"{g}-1", "tunnel"), (f"{g}-2", "proxy")], what=f"gw-{gw} active")
    got = await kube.get(GATEWAYS, "gw-a")
    assert [e.get("config") for e in got["status"]["activeEndpoints"]] == [
        {"enable-l3-tunnel": "true"}, {"enable-l7-proxy": "true"}]
    assert [e["port"] for e in got["status"]["activeEndpoints"]] == [4500, 10262]


async def test_raven_cfg_create_update_delete_reelect_every_gateway(kube: KubeClient, start: Start) -> None:
    await with_proxies(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1", "a-2"])
    await wait_active(kube, "gw-b", ["b-1", "b-2"])

    # Created with the tunnel switched off: every Gateway loses its tunnel endpoint, keeps its proxy.
    await kube.create(CONFIGMAPS, raven_cfg(tunnel="false"), NS)
    for gw in ("a", "b"):
        await eventually(lambda g=gw: typed_active(kube, f"gw-{g}"), lambda a, g=gw: a == [(f"{g}-2", "proxy")],
                         what=f"gw-{gw} without tunnel")
    cond = await valid(kube, "gw-a")
    assert (cond["status"], cond["message"]) == ("True", 'tunnel endpoints not elected: kube-system/raven-cfg '
                                                         'enable-l3-tunnel is "false"')
    evs = (await kube.list(EVENTS, "default"))["items"]
    lost = [e for e in evs if e["reason"] == "ActiveEndpointLost" and e["involvedObject"]["name"] == "gw-b"]
    assert lost and "enable-l3-tunnel" in lost[0]["message"]

    # enable-l7-proxy changes: proxies go, and the tunnel switched back on returns the first candidate.
    await kube.merge_patch(CONFIGMAPS, CFG, {"data": {"enable-l3-tunnel": "true", "enable-l7-proxy": "false"}}, NS)
    for gw in ("a", "b"):
        await eventually(lambda g=gw: typed_active(kube, f"gw-{g}"), lambda a, g=gw: a == [(f"{g}-1", "tunnel")],
                         what=f"gw-{gw} tunnel only")

    # A change of another key re-elects nothing (the event was seen, nothing was written).
    writes = rc.metric("raven_controller_status_writes_total")
    seen = rc.delivered("ravencfg", "MODIFIED")
    await kube.merge_patch(CONFIGMAPS, CFG, {"data": {"unrelated": "x"}}, NS)
    await rc.acted_on("ravencfg", "MODIFIED", seen)
    assert rc.metric("raven_controller_status_writes_total") == writes

    # Deleted: both kinds are elected again (OpenYurt would elect nothing).
    await kube.delete(CONFIGMAPS, CFG, NS)
    for gw in ("a", "b"):
        await eventually(lambda g=gw: typed_active(kube, f"gw-{g}"),
                         lambda a, g=gw: a == [(f"{g}-1", "tunnel"), (f"{g}-2", "proxy")], what=f"gw-{gw} both")
    assert (await valid(kube, "gw-a"))["message"] == ""


async def test_raven_cfg_value_neither_true_nor_false_is_reported_and_counts_as_on(kube: KubeClient,
                                                                                    start: Start) -> None:
    await kube.create(CONFIGMAPS, raven_cfg(tunnel="yes"), NS)
    await two_gateways(kube)
    await start()
    await wait_active(kube, "gw-a", ["a-1"])
    cond = await eventually(lambda: valid(kube, "gw-a"), lambda c: "neither" in c["message"], what="reported")
    assert cond["status"] == "True"
    assert "enable-l3-tunnel is 'yes'" in cond["message"]


async def test_upstream_node_handler_cases(kube: KubeClient, start: Start) -> None:
    """EnqueueGatewayForNode: create/delete of a node without the gateway label enqueue nothing; with it, its
    gateway; a label change enqueues the old and the new gateway; a Ready change enqueues its gateway."""
    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await wait_active(kube, "gw-b", ["b-1"])
    reconciles = rc.reconciles()
    seen = rc.delivered("nodes", "ADDED")
    await kube.create(NODES, node_body("loner", None))
    await rc.acted_on("nodes", "ADDED", seen)
    seen = rc.delivered("nodes", "DELETED")
    await kube.delete(NODES, "loner")
    await rc.acted_on("nodes", "DELETED", seen)
    assert rc.reconciles() == reconciles  # a node of no gateway enqueued nothing

    await kube.create(NODES, node_body("a-4", "gw-a"))
    await eventually(lambda: kube.get(GATEWAYS, "gw-a"),
                     lambda g: "a-4" in [n["nodeName"] for n in g["status"]["nodes"]], what="a-4 listed")
    await kube.merge_patch(NODES, "a-4", {"metadata": {"labels": {"raven.openyurt.io/gateway": "gw-b"}}})
    await eventually(lambda: kube.get(GATEWAYS, "gw-a"),
                     lambda g: "a-4" not in [n["nodeName"] for n in g["status"]["nodes"]], what="a-4 left gw-a")
    await eventually(lambda: kube.get(GATEWAYS, "gw-b"),
                     lambda g: "a-4" in [n["nodeName"] for n in g["status"]["nodes"]], what="a-4 joined gw-b")
    await kube.delete(NODES, "a-4")
    await eventually(lambda: kube.get(GATEWAYS, "gw-b"),
                     lambda g: "a-4" not in [n["nodeName"] for n in g["status"]["nodes"]], what="a-4 deleted")
    await set_ready(kube, "b-1", False)
    await wait_active(kube, "gw-b", ["b-2"])
    assert await active(kube, "gw-a") == ["a-1"]


async def test_extra_cidrs_on_a_node_and_on_a_gateway(kube: KubeClient, start: Start) -> None:
    """A Node's annotation: its CIDRs join that node's subnets. A Gateway's (OpenYurt's place): they join the active
    tunnel endpoint's node and move with it on failover. A bad CIDR is a NodesValid finding and an Event, and is
    dropped alone: the node and its other subnets stay listed."""
    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    b2_cidr = (await kube.get(NODES, "b-2"))["spec"]["podCIDRs"][0]
    await kube.merge_patch(NODES, "a-2", {"metadata": {"annotations": {EXTRA: f"192.168.50.0/24,{b2_cidr}"}}})
    await kube.merge_patch(GATEWAYS, "gw-a", {"metadata": {"annotations": {EXTRA: "1.1.1.1/32"}}})

    def subnets(g: dict[str, Any]) -> dict[str, list[str]]:
        return {n["nodeName"]: n["subnets"] for n in g["status"]["nodes"]}

    got = await eventually(lambda: kube.get(GATEWAYS, "gw-a"),
                           lambda g: "192.168.50.0/24" in subnets(g)["a-2"] and "1.1.1.1/32" in subnets(g)["a-1"],
                           what="extra CIDRs listed")
    a2_pod = (await kube.get(NODES, "a-2"))["spec"]["podCIDRs"][0]
    assert subnets(got)["a-2"] == [a2_pod, "192.168.50.0/24"]
    nodes_valid = next(c for c in got["status"]["conditions"] if c["type"] == "NodesValid")
    assert (nodes_valid["status"], nodes_valid["reason"]) == ("False", "ExtraCIDRConflict")
    assert f"overlaps pod CIDR {b2_cidr} of node b-2" in nodes_valid["message"]
    evs = await eventually(lambda: kube.list(EVENTS, "default"),
                           lambda e: any(x["reason"] == "ExtraCIDRConflict" for x in e["items"]), what="event")
    assert any(x["involvedObject"]["name"] == "gw-a" for x in evs["items"] if x["reason"] == "ExtraCIDRConflict")
    assert subnets(await kube.get(GATEWAYS, "gw-b"))["b-2"] == [b2_cidr]  # the pod CIDR it overlapped is untouched

    await set_ready(kube, "a-1", False)
    await wait_active(kube, "gw-a", ["a-2"])
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-a"), lambda g: "1.1.1.1/32" in subnets(g)["a-2"],
                           what="the Gateway's extra CIDR moved with the tunnel endpoint")
    assert "1.1.1.1/32" not in subnets(got)["a-1"]
    assert rc.rt.health.alive
