"""Object semantics of the test API server, driven through kubernetes_asyncio (the product's client)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from e2e.apiserver import ApiServer

from .crds import GROUP, VERSION, gateway, gateway_crd


def node(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}


def status_of(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


async def install_gateway_crd(api: client.ApiClient) -> client.CustomObjectsApi:
    await client.ApiextensionsV1Api(api).create_custom_resource_definition(gateway_crd())
    return client.CustomObjectsApi(api)


async def test_create_assigns_uid_timestamp_and_cluster_wide_increasing_resource_versions(kube_api):
    v1 = client.CoreV1Api(kube_api)
    a = await v1.create_node(node("a"))
    cm = await v1.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"k": "v"}})
    b = await v1.create_node(node("b"))
    assert a.metadata.uid and b.metadata.uid and a.metadata.uid != b.metadata.uid
    assert a.metadata.creation_timestamp is not None
    rvs = [int(a.metadata.resource_version), int(cm.metadata.resource_version), int(b.metadata.resource_version)]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3
    listed = await v1.list_node()
    assert int(listed.metadata.resource_version) >= rvs[-1]


async def test_creating_an_existing_name_is_409_already_exists(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_node(node("dup"))
    with pytest.raises(ApiException) as err:
        await v1.create_node(node("dup"))
    body = status_of(err.value)
    assert err.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "dup", "kind": "nodes"}
    assert body["message"] == 'nodes "dup" already exists'


async def test_update_with_stale_resource_version_is_409_conflict(kube_api):
    v1 = client.CoreV1Api(kube_api)
    first = await v1.create_namespaced_config_map("default", {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    first.data = {"a": "2"}
    await v1.replace_namespaced_config_map("cm", "default", first)
    first.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as err:
        await v1.replace_namespaced_config_map("cm", "default", first)
    body = status_of(err.value)
    assert err.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    assert (await v1.read_namespaced_config_map("cm", "default")).data == {"a": "2"}


async def test_missing_object_is_404_not_found_status(kube_api):
    with pytest.raises(ApiException) as err:
        await client.CoreV1Api(kube_api).read_node("ghost")
    body = status_of(err.value)
    assert body["reason"] == "NotFound" and body["details"]["name"] == "ghost"
    assert body["message"] == 'nodes "ghost" not found'


async def test_requests_without_the_bearer_token_get_401(apiserver: ApiServer):
    async with aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with s.get(f"{apiserver.url}/api/v1/nodes", headers=headers, ssl=False) as r:
                body = await r.json()
                assert r.status == 401
                assert body["kind"] == "Status" and body["reason"] == "Unauthorized" and body["code"] == 401
        async with s.get(f"{apiserver.url}/api/v1/nodes", ssl=False,
                         headers={"Authorization": f"Bearer {apiserver.token}"}) as r:
            assert r.status == 200


async def test_label_selectors_equality_and_set_based(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_node(node("n1", {"pool": "a", "tier": "edge"}))
    await v1.create_node(node("n2", {"pool": "b", "tier": "edge"}))
    await v1.create_node(node("n3", {"pool": "c"}))

    async def names(selector: str) -> list[str]:
        return [n.metadata.name for n in (await v1.list_node(label_selector=selector)).items]

    assert await names("pool=a") == ["n1"]
    assert await names("pool==b") == ["n2"]
    assert await names("pool!=a") == ["n2", "n3"]
    assert await names("pool in (a, c)") == ["n1", "n3"]
    assert await names("pool notin (a)") == ["n2", "n3"]
    assert await names("tier") == ["n1", "n2"]
    assert await names("!tier") == ["n3"]
    assert await names("tier=edge,pool in (b,c)") == ["n2"]
    with pytest.raises(ApiException) as err:
        await v1.list_node(label_selector="pool in (a")
    assert err.value.status == 400 and status_of(err.value)["reason"] == "BadRequest"


async def test_field_selectors_on_name_and_namespace(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_namespace({"metadata": {"name": "other"}})
    for ns in ("default", "other"):
        for name in ("x", "y"):
            await v1.create_namespaced_config_map(ns, {"metadata": {"name": name}})
    got = await v1.list_config_map_for_all_namespaces(field_selector="metadata.name=x")
    assert sorted((c.metadata.namespace, c.metadata.name) for c in got.items) == [("default", "x"), ("other", "x")]
    got = await v1.list_config_map_for_all_namespaces(field_selector="metadata.namespace=other,metadata.name!=x")
    assert [(c.metadata.namespace, c.metadata.name) for c in got.items] == [("other", "y")]
    with pytest.raises(ApiException) as err:
        await v1.list_config_map_for_all_namespaces(field_selector="data.k=v")
    assert err.value.status == 400 and "field label not supported" in status_of(err.value)["message"]


async def test_limit_and_continue_page_through_every_object_exactly_once(kube_api):
    v1 = client.CoreV1Api(kube_api)
    for i in range(23):
        await v1.create_node(node(f"n{i:02d}"))
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = await v1.list_node(limit=5, _continue=token)
        pages += 1
        seen.extend(n.metadata.name for n in page.items)
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count == 23 - len(seen)
    assert pages == 5 and seen == [f"n{i:02d}" for i in range(23)]


async def test_continue_token_after_compaction_is_410_expired(apiserver, kube_api):
    v1 = client.CoreV1Api(kube_api)
    for i in range(4):
        await v1.create_node(node(f"n{i}"))
    page = await v1.list_node(limit=2)
    await v1.create_node(node("later"))
    apiserver.compact()
    with pytest.raises(ApiException) as err:
        await v1.list_node(limit=2, _continue=page.metadata._continue)
    assert err.value.status == 410 and status_of(err.value)["reason"] == "Expired"


async def test_merge_patch_null_removes_a_label_and_strategic_patch_merges_conditions_by_type(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_node({**node("n", {"a": "1", "b": "2"}), "status": {"conditions": [
        {"type": "Ready", "status": "False"}, {"type": "MemoryPressure", "status": "False"}]}})
    await v1.patch_node("n", {"metadata": {"labels": {"a": None, "c": "3"}}},
                        _content_type="application/merge-patch+json")
    # kubernetes_asyncio sends a dict PATCH to a built-in kind as strategic merge patch.
    got = await v1.patch_node_status("n", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert got.metadata.labels == {"b": "2", "c": "3"}
    assert {c.type: c.status for c in got.status.conditions} == {"Ready": "True", "MemoryPressure": "False"}


async def test_json_patch_operations_and_a_dict_sent_as_json_patch_is_400(kube_api):
    objs = await install_gateway_crd(kube_api)
    await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", gateway("g", exposeType="PublicIP"))
    patched = await objs.patch_cluster_custom_object(GROUP, VERSION, "gateways", "g", [
        {"op": "replace", "path": "/spec/exposeType", "value": "LoadBalancer"},
        {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}])
    assert patched["spec"]["exposeType"] == "LoadBalancer" and patched["metadata"]["labels"] == {"k": "v"}
    # The ENVIRONMENT.md pitfall: without _content_type a dict is sent as json-patch; a real server refuses it.
    with pytest.raises(ApiException) as err:
        await objs.patch_cluster_custom_object(GROUP, VERSION, "gateways", "g", {"spec": {"exposeType": ""}})
    assert err.value.status == 400 and "cannot unmarshal object" in status_of(err.value)["message"]
    with pytest.raises(ApiException) as err:
        await objs.patch_cluster_custom_object(GROUP, VERSION, "gateways", "g", [
            {"op": "test", "path": "/spec/exposeType", "value": "PublicIP"}])
    assert err.value.status == 422
    # Custom resources do not accept strategic merge patch (415), like the real server.
    with pytest.raises(ApiException) as err:
        await objs.patch_cluster_custom_object(GROUP, VERSION, "gateways", "g", {"spec": {}},
                                               _content_type="application/strategic-merge-patch+json")
    assert err.value.status == 415


async def test_generation_is_bumped_by_spec_changes_only(kube_api):
    objs = await install_gateway_crd(kube_api)
    created = await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", gateway("g", exposeType=""))
    assert created["metadata"]["generation"] == 1
    merge = "application/merge-patch+json"
    g = await objs.patch_cluster_custom_object(GROUP, VERSION, "gateways", "g",
                                               {"metadata": {"labels": {"x": "y"}}}, _content_type=merge)
    assert g["metadata"]["generation"] == 1
    g = await objs.patch_cluster_custom_object_status(
        GROUP, VERSION, "gateways", "g", {"status": {"nodes": [{"nodeName": "n1"}]}}, _content_type=merge)
    assert g["metadata"]["generation"] == 1
    g = await objs.patch_cluster_custom_object(GROUP, VERSION, "gateways", "g",
                                               {"spec": {"exposeType": "PublicIP"}}, _content_type=merge)
    assert g["metadata"]["generation"] == 2
    assert int(g["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


async def test_status_subresource_ignores_spec_and_main_resource_ignores_status(kube_api):
    objs = await install_gateway_crd(kube_api)
    await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", {
        **gateway("g", exposeType="PublicIP"), "status": {"nodes": [{"nodeName": "dropped-on-create"}]}})
    g = await objs.get_cluster_custom_object(GROUP, VERSION, "gateways", "g")
    assert "status" not in g
    g["spec"]["exposeType"] = "LoadBalancer"
    g["status"] = {"nodes": [{"nodeName": "n1"}]}
    after_status = await objs.replace_cluster_custom_object_status(GROUP, VERSION, "gateways", "g", g)
    assert after_status["spec"]["exposeType"] == "PublicIP" and after_status["status"]["nodes"][0]["nodeName"] == "n1"
    after_status["spec"]["exposeType"] = "LoadBalancer"
    after_status["status"] = {"nodes": []}
    after_main = await objs.replace_cluster_custom_object(GROUP, VERSION, "gateways", "g", after_status)
    assert after_main["spec"]["exposeType"] == "LoadBalancer" and after_main["status"]["nodes"][0]["nodeName"] == "n1"


async def test_a_write_that_changes_nothing_keeps_the_resource_version(kube_api):
    v1 = client.CoreV1Api(kube_api)
    n = await v1.create_node(node("n", {"a": "1"}))
    again = await v1.patch_node("n", {"metadata": {"labels": {"a": "1"}}})
    assert again.metadata.resource_version == n.metadata.resource_version


async def test_finalizers_hold_deletion_until_removed(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_namespaced_config_map("default", {"metadata": {"name": "f", "finalizers": ["raven.io/x"]}})
    await v1.delete_namespaced_config_map("f", "default")
    held = await v1.read_namespaced_config_map("f", "default")
    assert held.metadata.deletion_timestamp is not None and held.metadata.finalizers == ["raven.io/x"]
    with pytest.raises(ApiException) as err:
        await v1.patch_namespaced_config_map("f", "default", {"metadata": {"finalizers": ["raven.io/x", "new"]}},
                                             _content_type="application/merge-patch+json")
    assert err.value.status == 422 and "no new finalizers" in status_of(err.value)["message"]
    await v1.patch_namespaced_config_map("f", "default", {"metadata": {"finalizers": None}},
                                         _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as err:
        await v1.read_namespaced_config_map("f", "default")
    assert err.value.status == 404


async def test_deleting_a_namespace_removes_its_objects_and_refuses_new_ones_meanwhile(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_namespace({"metadata": {"name": "gone"}})
    await v1.create_namespaced_config_map("gone", {"metadata": {"name": "a"}})
    await v1.create_namespaced_config_map("gone", {"metadata": {"name": "held", "finalizers": ["x/y"]}})
    await v1.delete_namespace("gone")
    ns = await v1.read_namespace("gone")
    assert ns.status.phase == "Terminating"
    assert [c.metadata.name for c in (await v1.list_namespaced_config_map("gone")).items] == ["held"]
    with pytest.raises(ApiException) as err:
        await v1.create_namespaced_config_map("gone", {"metadata": {"name": "new"}})
    assert err.value.status == 403
    await v1.patch_namespaced_config_map("held", "gone", {"metadata": {"finalizers": None}},
                                         _content_type="application/merge-patch+json")
    with pytest.raises(ApiException) as err:
        await v1.read_namespace("gone")
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        await v1.create_namespaced_config_map("missing", {"metadata": {"name": "x"}})
    assert err.value.status == 404 and status_of(err.value)["message"] == 'namespaces "missing" not found'


async def test_dependents_are_garbage_collected_with_their_owner(kube_api):
    objs = await install_gateway_crd(kube_api)
    v1 = client.CoreV1Api(kube_api)
    owner = await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", gateway("g"))
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gateway", "name": "g", "uid": owner["metadata"]["uid"]}
    await v1.create_namespaced_service("default", {"metadata": {"name": "owned", "ownerReferences": [ref]},
                                                   "spec": {"type": "LoadBalancer", "ports": [{"port": 4500}]}})
    await v1.create_namespaced_service("default", {"metadata": {"name": "free"}, "spec": {"ports": [{"port": 1}]}})
    await objs.delete_cluster_custom_object(GROUP, VERSION, "gateways", "g")
    assert [s.metadata.name for s in (await v1.list_namespaced_service("default")).items] == ["free"]


async def test_services_get_cluster_ips_and_node_ports_that_survive_updates(kube_api):
    v1 = client.CoreV1Api(kube_api)
    svc = await v1.create_namespaced_service("default", {"metadata": {"name": "lb"}, "spec": {
        "type": "LoadBalancer", "ports": [{"port": 4500, "protocol": "UDP"}]}})
    ip, port = svc.spec.cluster_ip, svc.spec.ports[0].node_port
    assert ip and port and svc.spec.ports[0].target_port == 4500
    other = await v1.create_namespaced_service("default", {"metadata": {"name": "o"}, "spec": {"ports": [{"port": 1}]}})
    assert other.spec.cluster_ip != ip
    svc.spec.cluster_ip = None
    svc.spec.cluster_i_ps = None
    svc.spec.ports[0].node_port = None
    again = await v1.replace_namespaced_service("lb", "default", svc)
    assert again.spec.cluster_ip == ip and again.spec.ports[0].node_port == port


async def test_generate_name_and_secret_string_data(kube_api):
    v1 = client.CoreV1Api(kube_api)
    s = await v1.create_namespaced_secret("default", {"metadata": {"generateName": "psk-"},
                                                      "stringData": {"psk": "hello"}})
    assert s.metadata.name.startswith("psk-") and len(s.metadata.name) == 9
    assert s.data == {"psk": "aGVsbG8="} and s.type == "Opaque"


async def test_delete_collection_with_a_label_selector(kube_api):
    v1 = client.CoreV1Api(kube_api)
    for i in range(3):
        await v1.create_namespaced_pod("default", {"metadata": {"name": f"p{i}", "labels": {"i": str(i % 2)}},
                                                   "spec": {"containers": [{"name": "c", "image": "x"}]}})
    await v1.delete_collection_namespaced_pod("default", label_selector="i=0")
    assert [p.metadata.name for p in (await v1.list_namespaced_pod("default")).items] == ["p1"]


async def test_leases_support_the_leader_election_read_modify_write_cycle(kube_api):
    coord = client.CoordinationV1Api(kube_api)
    lease = await coord.create_namespaced_lease("kube-system", {"metadata": {"name": "raven"}, "spec": {
        "holderIdentity": "a", "leaseDurationSeconds": 15}})
    lease.spec.holder_identity = "b"
    updated = await coord.replace_namespaced_lease("raven", "kube-system", lease)
    assert updated.spec.holder_identity == "b"
    with pytest.raises(ApiException) as err:
        await coord.replace_namespaced_lease("raven", "kube-system", lease)  # stale: someone else won
    assert err.value.status == 409


async def test_core_and_events_k8s_io_events_can_be_recorded(kube_api):
    v1 = client.CoreV1Api(kube_api)
    ev = await v1.create_namespaced_event("default", {
        "metadata": {"generateName": "g."}, "involvedObject": {"kind": "Gateway", "name": "g"},
        "reason": "ActiveEndpointElected", "message": "n1", "type": "Normal"})
    listed = await v1.list_namespaced_event("default", field_selector="involvedObject.name=g")
    assert [e.metadata.name for e in listed.items] == [ev.metadata.name]
    ev2 = await client.EventsV1Api(kube_api).create_namespaced_event("default", {
        "metadata": {"name": "e2"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "raven",
        "reportingInstance": "r", "action": "Elect", "reason": "ActiveEndpointElected", "type": "Normal",
        "regarding": {"kind": "Gateway", "name": "g2"}, "note": "elected n2"})
    assert ev2.reason == "ActiveEndpointElected" and ev2.regarding.name == "g2"
    # One storage, two shapes: each API shows the other's events converted, as the real server does.
    core = await v1.read_namespaced_event("e2", "default")
    assert core.involved_object.name == "g2" and core.message == "elected n2"
    assert core.reporting_component == "raven"
    # Raw: a core event has no eventTime, which the generated events.k8s.io model refuses (as against a
    # real cluster).
    resp = await client.EventsV1Api(kube_api).read_namespaced_event(ev.metadata.name, "default",
                                                                      _preload_content=False)
    as_new = json.loads(await resp.read())
    assert as_new["regarding"]["name"] == "g" and as_new["note"] == "n1" and "eventTime" not in as_new


async def test_paginated_list_is_a_consistent_snapshot_of_its_first_page(kube_api):
    v1 = client.CoreV1Api(kube_api)
    for i in range(6):
        await v1.create_node(node(f"n{i}"))
    first = await v1.list_node(limit=3)
    await v1.delete_node("n4")
    await v1.create_node(node("n9"))
    await v1.patch_node("n5", {"metadata": {"labels": {"changed": "yes"}}})
    rest = await v1.list_node(limit=3, _continue=first.metadata._continue)
    assert rest.metadata.resource_version == first.metadata.resource_version
    assert [n.metadata.name for n in first.items + rest.items] == [f"n{i}" for i in range(6)]
    assert rest.items[-1].metadata.labels == {}
    assert [n.metadata.name for n in (await v1.list_node()).items] == ["n0", "n1", "n2", "n3", "n5", "n9"]


async def test_foreground_deletion_keeps_the_owner_until_its_dependents_are_gone(kube_api):
    v1 = client.CoreV1Api(kube_api)
    owner = await v1.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
           "blockOwnerDeletion": True}
    await v1.create_namespaced_config_map("default", {"metadata": {"name": "dep", "ownerReferences": [ref],
                                                                   "finalizers": ["x/hold"]}})
    await v1.delete_namespaced_config_map("owner", "default", propagation_policy="Foreground")
    held = await v1.read_namespaced_config_map("owner", "default")
    assert held.metadata.deletion_timestamp and held.metadata.finalizers == ["foregroundDeletion"]
    assert (await v1.read_namespaced_config_map("dep", "default")).metadata.deletion_timestamp
    await v1.patch_namespaced_config_map("dep", "default", {"metadata": {"finalizers": None}},
                                         _content_type="application/merge-patch+json")
    assert [c.metadata.name for c in (await v1.list_namespaced_config_map("default")).items] == []


async def test_orphan_deletion_keeps_dependents_and_drops_their_owner_reference(kube_api):
    v1 = client.CoreV1Api(kube_api)
    owner = await v1.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    await v1.create_namespaced_config_map("default", {"metadata": {"name": "dep", "ownerReferences": [ref]}})
    await v1.delete_namespaced_config_map("owner", "default", propagation_policy="Orphan")
    dep = await v1.read_namespaced_config_map("dep", "default")
    assert dep.metadata.owner_references is None


async def test_immutable_config_maps_refuse_data_changes_but_accept_metadata(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_namespaced_config_map("default", {"metadata": {"name": "frozen"}, "data": {"a": "1"},
                                                      "immutable": True})
    with pytest.raises(ApiException) as err:
        await v1.patch_namespaced_config_map("frozen", "default", {"data": {"a": "2"}})
    assert err.value.status == 422 and "field is immutable" in status_of(err.value)["message"]
    labelled = await v1.patch_namespaced_config_map("frozen", "default", {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.labels == {"x": "y"} and labelled.data == {"a": "1"}
