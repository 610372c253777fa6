"""The controller against the test API server: two gateways x three candidates; election, status shape,
Events, failover (NotReady, deleted, unlabelled), recovery without stealing back, stickiness across a
controller restart, and node events touching only their own gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from raven.kube.client import EVENTS, GATEWAYS, NODES, KubeClient, Resource
from tests.controller.conftest import (
    RunningController,
    active,
    eventually,
    gateway_body,
    node_body,
    set_label,
    set_ready,
)

Start = Callable[..., Awaitable[RunningController]]


async def two_gateways(kube: KubeClient, b1_ready: bool = True) -> None:
    for gw in ("a", "b"):
        for i in (1, 2, 3):
            ready = b1_ready or (gw, i) != ("b", 1)
            await kube.create(NODES, node_body(f"{gw}-{i}", f"gw-{gw}", ready=ready))
        await kube.create(GATEWAYS, gateway_body(f"gw-{gw}", [f"{gw}-1", f"{gw}-2", f"{gw}-3"]))
    await kube.create(NODES, node_body("plain", None))  # a node of no gateway


async def wait_active(kube: KubeClient, gw: str, want: list[str], within: float = 15) -> None:
    await eventually(lambda: active(kube, gw), lambda a: a == want, within=within, what=f"{gw} active {want}")


async def events_for(kube: KubeClient, gw: str) -> list[dict[str, Any]]:
    items = (await kube.list(EVENTS, "default"))["items"]
    return [e for e in items if e["involvedObject"]["name"] == gw]


async def rv(kube: KubeClient, gw: str) -> str:
    return str((await kube.get(GATEWAYS, gw))["metadata"]["resourceVersion"])


async def test_two_gateways_elect_first_ready_candidate_and_write_status(kube: KubeClient, start: Start) -> None:
    await two_gateways(kube, b1_ready=False)
    await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await wait_active(kube, "gw-b", ["b-2"])
    gw = await kube.get(GATEWAYS, "gw-a")
    status = gw["status"]
    # The spec endpoint as OpenYurt's controller writes it: raven-cfg's switch in its config.
    assert status["activeEndpoints"] == [{**gw["spec"]["endpoints"][0], "config": {"enable-l3-tunnel": "true"}}]
    assert [n["nodeName"] for n in status["nodes"]] == ["a-1", "a-2", "a-3"]
    a1 = await kube.get(NODES, "a-1")
    assert status["nodes"][0] == {"nodeName": "a-1", "privateIP": a1["status"]["addresses"][0]["address"],
                                  "subnets": a1["spec"]["podCIDRs"]}
    assert [(c["type"], c["status"]) for c in status["conditions"]] == [("NodesValid", "True"), ("Valid", "True")]
    evs = await eventually(lambda: events_for(kube, "gw-b"), lambda e: len(e) >= 1, what="election event")
    assert [(e["reason"], e["type"]) for e in evs] == [("ActiveEndpointElected", "Normal")]
    assert "b-2" in evs[0]["message"]
    assert evs[0]["involvedObject"]["kind"] == "Gateway" and evs[0]["involvedObject"]["uid"]


async def test_failover_on_not_ready_and_recovery_does_not_steal_back(kube: KubeClient, start: Start) -> None:
    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await wait_active(kube, "gw-b", ["b-1"])
    b_rv = await rv(kube, "gw-b")
    await set_ready(kube, "a-1", False)
    await wait_active(kube, "gw-a", ["a-2"])
    seen, reconciles = rc.delivered("nodes", "MODIFIED"), rc.reconciles()
    await set_ready(kube, "a-1", True)
    await set_ready(kube, "a-3", False)  # a non-active candidate changing changes nothing either
    await rc.acted_on("nodes", "MODIFIED", seen, n=2)
    assert rc.reconciles() > reconciles  # the recovery was reconciled and elected nobody new
    assert await active(kube, "gw-a") == ["a-2"]
    assert await rv(kube, "gw-b") == b_rv  # gw-b was never rewritten by gw-a's node events
    evs = await eventually(lambda: events_for(kube, "gw-a"), lambda e: len(e) >= 3, what="failover events")
    lost = [e for e in evs if e["reason"] == "ActiveEndpointLost"]
    assert len(lost) == 1 and lost[0]["type"] == "Warning" and "a-1" in lost[0]["message"]
    assert "not Ready" in lost[0]["message"]
    assert rc.metric("raven_controller_failovers_total", {"gateway": "gw-a"}) == 1
    assert rc.metric("raven_controller_elections_total", {"gateway": "gw-a"}) == 2


async def test_failover_when_active_node_is_deleted_or_unlabelled(kube: KubeClient, start: Start) -> None:
    await two_gateways(kube)
    await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await wait_active(kube, "gw-b", ["b-1"])
    await kube.delete(NODES, "a-1")
    await set_label(kube, "b-1", None)
    await wait_active(kube, "gw-a", ["a-2"])
    await wait_active(kube, "gw-b", ["b-2"])
    gw_b = await kube.get(GATEWAYS, "gw-b")
    assert [n["nodeName"] for n in gw_b["status"]["nodes"]] == ["b-2", "b-3"]
    # Moving a node to another gateway's label makes it that gateway's node, not a candidate of either.
    await set_label(kube, "b-1", "gw-a")
    await eventually(lambda: kube.get(GATEWAYS, "gw-a"),
                     lambda g: "b-1" in [n["nodeName"] for n in g["status"]["nodes"]], what="b-1 listed in gw-a")
    assert await active(kube, "gw-a") == ["a-2"]


async def test_election_is_sticky_across_a_controller_restart(kube: KubeClient, start: Start) -> None:
    await two_gateways(kube)
    first = await start(identity="first")
    await wait_active(kube, "gw-a", ["a-1"])
    await set_ready(kube, "a-1", False)
    await wait_active(kube, "gw-a", ["a-2"])
    seen = first.delivered("nodes", "MODIFIED")
    await set_ready(kube, "a-1", True)
    await first.acted_on("nodes", "MODIFIED", seen)  # a-1's recovery decided before the restart
    await first.stop()
    before = {gw: await rv(kube, gw) for gw in ("gw-a", "gw-b")}

    second = await start(identity="second")
    await eventually(lambda: second.reconciles(), lambda n: n >= 2, what="restart reconciles both gateways")
    await second.drained()  # every pass the start queued (both gateways, their nodes) has finished
    assert second.metric("raven_controller_status_writes_total") == 0
    assert {gw: await rv(kube, gw) for gw in ("gw-a", "gw-b")} == before
    assert await active(kube, "gw-a") == ["a-2"]


async def test_node_heartbeat_writes_nothing(kube: KubeClient, start: Start) -> None:
    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    await wait_active(kube, "gw-b", ["b-1"])
    await rc.drained()  # the first passes are over
    writes = rc.metric("raven_controller_status_writes_total")
    reconciles = rc.reconciles()
    seen = rc.delivered("nodes", "MODIFIED")
    for i in range(5):
        node = await kube.get(NODES, "a-1")
        node["status"]["conditions"][0]["lastHeartbeatTime"] = f"2026-01-01T00:00:0{i}Z"
        await kube.replace(NODES, "a-1", node, subresource="status")
    # The controller did receive every heartbeat (else "nothing written" proves nothing), and any pass
    # it had queued for them has run:
    await rc.acted_on("nodes", "MODIFIED", seen, n=5)
    assert rc.metric("raven_controller_status_writes_total") == writes
    assert rc.metric("raven_controller_reconcile_duration_seconds_count") == reconciles


async def test_replicas_and_proxy_endpoints(kube: KubeClient, start: Start) -> None:
    for i in (1, 2, 3):
        await kube.create(NODES, node_body(f"c-{i}", "gw-c"))
    body = gateway_body("gw-c", ["c-1", "c-2", "c-3"], tunnelConfig={"Replicas": 2}, proxyConfig={"Replicas": 1})
    body["spec"]["endpoints"].append({"nodeName": "c-3", "type": "proxy", "port": 10262})
    await kube.create(GATEWAYS, body)
    await start()
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-c"),
                           lambda g: len((g.get("status") or {}).get("activeEndpoints") or []) == 2, what="2 active")
    # One tunnel endpoint carries a pool's traffic: only that one is listed, and the Valid condition and an Event
    # say Replicas 2 was not honoured.
    assert [(e["nodeName"], e["type"]) for e in got["status"]["activeEndpoints"]] == [
        ("c-1", "tunnel"), ("c-3", "proxy")]
    (valid,) = [c for c in got["status"]["conditions"] if c["type"] == "Valid"]
    assert (valid["status"], valid["reason"]) == ("False", "ReplicasNotHonoured")
    evs = await eventually(lambda: events_for(kube, "gw-c"),
                           lambda e: any(x["reason"] == "ReplicasNotHonoured" for x in e), what="replicas event")
    (ev,) = [x for x in evs if x["reason"] == "ReplicasNotHonoured"]
    assert ev["type"] == "Warning" and "active endpoints listed: c-1, c-3" in ev["message"]


async def test_stale_cache_conflict_is_retried_from_the_server_without_losing_changes(
    kube: KubeClient, start: Start
) -> None:
    import copy

    await two_gateways(kube)
    rc = await start()
    await wait_active(kube, "gw-a", ["a-1"])
    cache = rc.controller.gateways.informer.cache
    stale = copy.deepcopy(cache["gw-a"])
    await kube.merge_patch(GATEWAYS, "gw-a", {"metadata": {"labels": {"team": "net"}}})
    await eventually(lambda: cache["gw-a"]["metadata"].get("labels", {}),
                     lambda labels: labels.get("team") == "net", what="cache caught up")
    rc.controller.gateways.store(stale)  # as if the watch lagged behind the server
    await set_ready(kube, "a-1", False)
    await wait_active(kube, "gw-a", ["a-2"])
    gw = await kube.get(GATEWAYS, "gw-a")
    assert gw["metadata"]["labels"]["team"] == "net"
    assert rc.metric("raven_controller_status_write_errors_total", {"reason": "conflict"}) >= 1


async def test_repeated_identical_events_are_counted_on_one_event(kube: KubeClient, start: Start) -> None:
    for n in ("f-1", "f-2"):
        await kube.create(NODES, node_body(n, "gw-f"))
    await kube.create(GATEWAYS, gateway_body("gw-f", ["f-1", "f-2"]))
    await start()
    await wait_active(kube, "gw-f", ["f-1"])
    for lose, other in (("f-1", "f-2"), ("f-2", "f-1"), ("f-1", "f-2")):
        await set_ready(kube, lose, False)
        await wait_active(kube, "gw-f", [other])
        await set_ready(kube, lose, True)
    evs = await eventually(
        lambda: events_for(kube, "gw-f"),
        lambda e: any(x["reason"] == "ActiveEndpointLost" and "f-1" in x["message"] and x["count"] == 2 for x in e),
        what="second loss of f-1 counted")
    lost_f1 = [e for e in evs if e["reason"] == "ActiveEndpointLost" and "f-1" in e["message"]]
    assert len(lost_f1) == 1


async def test_the_active_tunnel_endpoints_gauge_follows_the_election(kube: KubeClient, start: Start) -> None:
    """raven_gateway_active_tunnel_endpoints{gateway} (the RavenPoolWithoutActiveEndpoint alert): 1 while elected,
    0 when no candidate is left, gone with the Gateway."""
    await two_gateways(kube)
    rc = await start()

    def gauge(gw: str) -> float | None:
        return rc.rt.registry.get_sample_value("raven_gateway_active_tunnel_endpoints", {"gateway": gw})

    await wait_active(kube, "gw-b", ["b-1"])
    await eventually(lambda: gauge("gw-b"), lambda v: v == 1, what="gw-b counted with one endpoint")
    for i in (1, 2, 3):
        await set_ready(kube, f"b-{i}", False)
    await wait_active(kube, "gw-b", [])
    await eventually(lambda: gauge("gw-b"), lambda v: v == 0, what="gw-b counted without endpoint")
    assert gauge("gw-a") == 1
    await kube.delete(GATEWAYS, "gw-a")
    await eventually(lambda: gauge("gw-a"), lambda v: v is None, what="gw-a's sample removed")



async def test_the_controllers_own_status_writes_coming_back_are_not_reconciled_again(
        kube: KubeClient, start: Start) -> None:
    # A write's watch event can arrive before the PATCH's answer (it often does when the API server is another
    # process): it must still be known as our own write, or each Gateway is elected a second time for nothing
    # (a pass that writes nothing but costs a whole election: 1,000 of them at the start of a large cluster).
    # Here every status PATCH answers only once its watch event was delivered.
    gateways = 6
    for g in range(gateways):
        for i in (1, 2):
            await kube.create(NODES, node_body(f"e{g}-{i}", f"gw-e{g}"))
        await kube.create(GATEWAYS, gateway_body(f"gw-e{g}", [f"e{g}-1", f"e{g}-2"]))
    rc = await start(workers=4)
    api = rc.controller.reconciler.client
    real_patch = api.merge_patch

    async def answer_after_the_watch_event(res: Resource, name: str, patch: Mapping[str, object],
                                           namespace: str | None = None, *, subresource: str | None = None) -> str:
        rv = await real_patch(res, name, patch, namespace, subresource=subresource)
        if res == GATEWAYS and subresource == "status":
            await eventually(lambda: rc.controller.gateways.entry(name), lambda e: e is not None and
                             e.resource_version == rv, what=f"the watch event of {name}'s status write")
        return rv

    api.merge_patch = answer_after_the_watch_event  # type: ignore[method-assign]
    await eventually(lambda: rc.metric("raven_controller_status_writes_total"), lambda n: n >= gateways,
                     what="every gateway's status written")
    await rc.drained()
    assert rc.delivered("gateways", "MODIFIED") == gateways  # every write came back before its answer ...
    assert rc.metric("raven_controller_status_writes_total") == gateways
    assert rc.reconciles() == gateways  # ... and none was reconciled again
