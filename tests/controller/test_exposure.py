"""exposeType LoadBalancer: the controller owns one UDP LoadBalancer Service + Endpoints per active tunnel
slot, moves the Endpoints on failover (same Service, same address), publishes the ingress IP as the
active endpoint's publicIP, and deletes its objects when exposure is no longer wanted.
The test plays the cloud's load-balancer controller by writing the Service's status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from raven.api.constants import LABEL_MANAGED_BY, LABEL_OWNER_GATEWAY, MANAGED_BY_VALUE
from raven.kube.client import ENDPOINTS, GATEWAYS, NODES, SERVICES, ApiError, KubeClient
from tests.controller.conftest import RunningController, eventually, gateway_body, node_body, set_ready
from tests.controller.test_gateway_election import wait_active

Start = Callable[..., Awaitable[RunningController]]
NS = "kube-system"  # the controller's namespace (its Lease namespace)
SVC = "raven-lb-gw-l-0"


async def exists(kube: KubeClient, res: Any, name: str) -> bool:
    try:
        await kube.get(res, name, NS)
        return True
    except ApiError as exc:
        if exc.not_found:
            return False
        raise


async def node_ip(kube: KubeClient, name: str) -> str:
    return str((await kube.get(NODES, name))["status"]["addresses"][0]["address"])


async def test_load_balancer_lifecycle(kube: KubeClient, start: Start) -> None:
    for i in (1, 2, 3):
        await kube.create(NODES, node_body(f"l-{i}", "gw-l"))
    body = gateway_body("gw-l", ["l-1", "l-2", "l-3"], exposeType="LoadBalancer")
    body["spec"]["endpoints"][1]["port"] = 4600
    await kube.create(GATEWAYS, body)
    await start()
    await wait_active(kube, "gw-l", ["l-1"])
    gw = await kube.get(GATEWAYS, "gw-l")

    svc = await eventually(lambda: kube.get(SERVICES, SVC, NS), lambda s: True, what="Service created")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert [(p["protocol"], p["port"]) for p in svc["spec"]["ports"]] == [("UDP", 4500)]
    labels = svc["metadata"]["labels"]
    assert labels[LABEL_MANAGED_BY] == MANAGED_BY_VALUE and labels[LABEL_OWNER_GATEWAY] == "gw-l"
    (owner,) = svc["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Gateway", "gw-l", gw["metadata"]["uid"], True)
    eps = await eventually(lambda: kube.get(ENDPOINTS, SVC, NS), lambda e: bool(e.get("subsets")), what="Endpoints")
    assert eps["subsets"][0]["addresses"][0]["ip"] == await node_ip(kube, "l-1")
    assert eps["subsets"][0]["ports"][0]["port"] == 4500
    assert eps["metadata"]["ownerReferences"][0]["uid"] == gw["metadata"]["uid"]

    # The cloud assigns an address: it becomes the active endpoint's public address.
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}]}}
    await kube.replace(SERVICES, SVC, svc, NS, subresource="status")
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-l"),
                           lambda g: g["status"]["activeEndpoints"][0].get("publicIP") == "198.51.100.7",
                           what="publicIP from the load balancer")
    assert got["status"]["activeEndpoints"][0]["publicPort"] == 4500

    # Failover: same Service (and address), Endpoints and port follow the new active node.
    await set_ready(kube, "l-1", False)
    await wait_active(kube, "gw-l", ["l-2"])
    l2_ip = await node_ip(kube, "l-2")
    eps = await eventually(lambda: kube.get(ENDPOINTS, SVC, NS),
                           lambda e: e["subsets"][0]["addresses"][0]["ip"] == l2_ip, what="Endpoints moved")
    assert eps["subsets"][0]["ports"][0]["port"] == 4600
    svc2 = await eventually(lambda: kube.get(SERVICES, SVC, NS), lambda s: s["spec"]["ports"][0]["port"] == 4600,
                            what="Service port follows the endpoint")
    assert svc2["metadata"]["uid"] == svc["metadata"]["uid"]
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-l"),
                           lambda g: g["status"]["activeEndpoints"][0].get("publicPort") == 4600, what="publicPort")
    assert got["status"]["activeEndpoints"][0]["publicIP"] == "198.51.100.7"

    # Exposure cleared: our objects go, and the status no longer claims the load balancer's address.
    await kube.merge_patch(GATEWAYS, "gw-l", {"spec": {"exposeType": None}})
    await eventually(lambda: exists(kube, SERVICES, SVC), lambda e: not e, what="Service deleted")
    await eventually(lambda: exists(kube, ENDPOINTS, SVC), lambda e: not e, what="Endpoints deleted")
    got = await eventually(lambda: kube.get(GATEWAYS, "gw-l"),
                           lambda g: "publicIP" not in g["status"]["activeEndpoints"][0], what="publicIP dropped")
    assert got["status"]["activeEndpoints"][0]["nodeName"] == "l-2"


async def test_tunnel_replicas_beyond_one_get_one_slot(kube: KubeClient, start: Start) -> None:
    """Only one active tunnel endpoint carries a pool's traffic, so Replicas 2 exposes one LoadBalancer slot (the
    Valid condition says why); back to Replicas 1, the condition clears and slot 0 is untouched."""
    for i in (1, 2):
        await kube.create(NODES, node_body(f"m-{i}", "gw-m"))
    await kube.create(GATEWAYS, gateway_body("gw-m", ["m-1", "m-2"], exposeType="LoadBalancer",
                                             tunnelConfig={"Replicas": 2}))
    rc = await start()
    await eventually(lambda: exists(kube, SERVICES, "raven-lb-gw-m-0"), bool, what="slot 0")
    got = await kube.get(GATEWAYS, "gw-m")
    assert [e["nodeName"] for e in got["status"]["activeEndpoints"]] == ["m-1"]
    assert [c["reason"] for c in got["status"]["conditions"] if c["type"] == "Valid"] == ["ReplicasNotHonoured"]
    assert not await exists(kube, SERVICES, "raven-lb-gw-m-1")
    seen = rc.delivered("gateways", "MODIFIED")
    await kube.merge_patch(GATEWAYS, "gw-m", {"spec": {"tunnelConfig": {"Replicas": 1}}})
    await eventually(lambda: kube.get(GATEWAYS, "gw-m"),
                     lambda g: [c["reason"] for c in g["status"]["conditions"] if c["type"] == "Valid"]
                     == ["SpecValid"],
                     what="Valid again")
    await rc.acted_on("gateways", "MODIFIED", seen)
    assert await exists(kube, SERVICES, "raven-lb-gw-m-0")
    assert not await exists(kube, SERVICES, "raven-lb-gw-m-1")
    await kube.delete(GATEWAYS, "gw-m")
    await eventually(lambda: exists(kube, SERVICES, "raven-lb-gw-m-0"), lambda e: not e, what="gateway gone")
    await eventually(lambda: exists(kube, ENDPOINTS, "raven-lb-gw-m-0"), lambda e: not e, what="endpoints gone")


async def test_objects_orphaned_while_no_controller_ran_are_collected(kube: KubeClient, start: Start) -> None:
    await kube.create(NODES, node_body("o-1", "gw-o"))
    await kube.create(GATEWAYS, gateway_body("gw-o", ["o-1"], exposeType="LoadBalancer"))
    first = await start(identity="first")
    await eventually(lambda: exists(kube, SERVICES, "raven-lb-gw-o-0"), bool, what="Service created")
    await first.stop()
    # Deleted with orphaning, so no garbage collector helps: only the controller knows these are stale.
    await kube.request("DELETE", GATEWAYS.path(name="gw-o"), body={"propagationPolicy": "Orphan"})
    assert await exists(kube, SERVICES, "raven-lb-gw-o-0")
    await start(identity="second")
    await eventually(lambda: exists(kube, SERVICES, "raven-lb-gw-o-0"), lambda e: not e, what="orphan collected")
    await eventually(lambda: exists(kube, ENDPOINTS, "raven-lb-gw-o-0"), lambda e: not e, what="endpoints collected")


async def test_failing_service_writes_never_hold_back_the_status(kube: KubeClient, start: Start) -> None:
    for i in (1, 2):
        await kube.create(NODES, node_body(f"z-{i}", "gw-z"))
    await kube.create(GATEWAYS, gateway_body("gw-z", ["z-1", "z-2"], exposeType="LoadBalancer"))
    # The controller's namespace does not exist: every Service create fails (404), again and again.
    rc = await start(namespace="raven-absent")
    await wait_active(kube, "gw-z", ["z-1"])
    await set_ready(kube, "z-1", False)
    await wait_active(kube, "gw-z", ["z-2"])
    await eventually(lambda: rc.metric("raven_controller_reconcile_errors_total", {"kind": "api"}), lambda n: n >= 1,
                     what="the Service failure is counted and retried")


async def test_a_foreign_service_with_our_name_is_never_taken_over(kube: KubeClient, start: Start) -> None:
    # Someone else's Service that happens to carry the name of a load-balancer slot is not Raven's:
    # the reconcile reports the clash (and retries) but never rewrites the object.
    name = "raven-lb-gw-f-0"
    foreign = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": NS, "labels": {"app": "theirs"}},
               "spec": {"type": "ClusterIP", "ports": [{"name": "web", "protocol": "TCP", "port": 80}]}}
    await kube.create(SERVICES, foreign, NS)
    await kube.create(NODES, node_body("f-1", "gw-f"))
    await kube.create(GATEWAYS, gateway_body("gw-f", ["f-1"], exposeType="LoadBalancer"))
    rc = await start()
    await wait_active(kube, "gw-f", ["f-1"])
    await eventually(lambda: rc.metric("raven_controller_reconcile_errors_total", {"kind": "api"}),
                     lambda n: n >= 1, what="the clash reported as a failed reconcile")
    svc = await kube.get(SERVICES, name, NS)
    assert svc["spec"]["type"] == "ClusterIP"
    assert [(p["protocol"], p["port"]) for p in svc["spec"]["ports"]] == [("TCP", 80)]
    assert svc["metadata"]["labels"] == {"app": "theirs"} and not svc["metadata"].get("ownerReferences")
    assert not await exists(kube, ENDPOINTS, name)
