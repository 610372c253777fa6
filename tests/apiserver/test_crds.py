"""CustomResourceDefinitions: serving, openAPIV3Schema validation, pruning, defaulting, versions, removal."""

from __future__ import annotations

import json

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from .crds import GROUP, VERSION, gateway, gateway_crd, widget_crd
from .test_objects import install_gateway_crd, status_of

MERGE = "application/merge-patch+json"


async def test_creating_a_crd_serves_it_in_discovery_with_scope_short_names_and_status(kube_api):
    crd = await client.ApiextensionsV1Api(kube_api).create_custom_resource_definition(gateway_crd())
    conds = {c.type: c.status for c in crd.status.conditions}
    assert conds == {"NamesAccepted": "True", "Established": "True"}
    resources = await client.CustomObjectsApi(kube_api).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in resources.resources}
    assert by_name["gateways"].namespaced is False and by_name["gateways"].short_names == ["gw"]
    assert by_name["gateways"].kind == "Gateway" and "watch" in by_name["gateways"].verbs
    assert set(by_name["gateways/status"].verbs) == {"get", "patch", "update"}
    groups = await client.ApisApi(kube_api).get_api_versions()
    assert GROUP in [g.name for g in groups.groups]


async def test_objects_violating_the_schema_are_rejected_with_422_naming_the_field(kube_api):
    objs = await install_gateway_crd(kube_api)

    async def rejected(spec: dict) -> dict:
        with pytest.raises(ApiException) as err:
            await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", gateway("bad", **spec))
        assert err.value.status == 422
        body = status_of(err.value)
        assert body["reason"] == "Invalid" and body["details"]["kind"] == "Gateway"
        assert body["details"]["group"] == GROUP and body["details"]["name"] == "bad"
        return body

    body = await rejected({"endpoints": [{"nodeName": "n", "type": "tunnel", "port": "4500"}]})
    assert body["details"]["causes"][0]["field"] == "spec.endpoints[0].port"
    assert "spec.endpoints[0].port in body must be of type integer" in body["message"]
    body = await rejected({"endpoints": [{"type": "tunnel"}]})
    assert body["details"]["causes"] == [{"reason": "FieldValueRequired", "message": "Required value",
                                          "field": "spec.endpoints[0].nodeName"}]
    body = await rejected({"exposeType": "NodePort"})
    assert body["details"]["causes"][0]["reason"] == "FieldValueNotSupported"
    assert 'supported values: "", "PublicIP", "LoadBalancer"' in body["message"]
    body = await rejected({"endpoints": [{"nodeName": "n", "type": "tunnel", "publicIP": "1.2.3"}]})
    assert body["details"]["causes"][0]["field"] == "spec.endpoints[0].publicIP"
    body = await rejected({"endpoints": [{"nodeName": "n", "type": "tunnel", "port": 70000}]})
    assert "should be less than or equal to 65535" in body["message"]
    body = await rejected({"exposeType": None})
    assert body["details"]["causes"][0]["field"] == "spec.exposeType"
    # nullable fields accept null
    ok = await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", gateway("ok", nodeSelector=None))
    assert ok["spec"]["nodeSelector"] is None


async def test_unknown_fields_are_pruned_or_refused_per_field_validation(kube_api):
    objs = await install_gateway_crd(kube_api)
    body = gateway("g", exposeType="PublicIP", bogus=1, nodeSelector={"matchLabels": {"a": "b"}, "keep": 1})
    body["extra"] = True
    body["metadata"]["junk"] = "x"
    created = await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", body)
    assert "bogus" not in created["spec"] and "extra" not in created and "junk" not in created["metadata"]
    assert created["spec"]["nodeSelector"] == {"matchLabels": {"a": "b"}, "keep": 1}  # preserve-unknown-fields
    with pytest.raises(ApiException) as err:
        await objs.patch_cluster_custom_object(GROUP, VERSION, "gateways", "g", {"spec": {"oops": 1}},
                                               _content_type=MERGE, field_validation="Strict")
    assert err.value.status == 400
    assert 'unknown field "spec.oops"' in status_of(err.value)["message"]


async def test_schema_defaults_are_applied(kube_api):
    objs = await install_gateway_crd(kube_api)
    g = await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", gateway("g", tunnelConfig={}))
    assert g["spec"]["tunnelConfig"] == {"Replicas": 1}


async def test_namespaced_crd_with_two_served_versions_converts_api_version(kube_api):
    await client.ApiextensionsV1Api(kube_api).create_custom_resource_definition(widget_crd())
    objs = client.CustomObjectsApi(kube_api)
    w = await objs.create_namespaced_custom_object("example.test", "v1alpha1", "default", "widgets", {
        "apiVersion": "example.test/v1alpha1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}})
    assert w["apiVersion"] == "example.test/v1alpha1" and w["spec"] == {"size": 3, "color": "blue"}
    v1 = await objs.get_namespaced_custom_object("example.test", "v1", "default", "widgets", "w")
    assert v1["apiVersion"] == "example.test/v1" and v1["metadata"]["namespace"] == "default"
    # No status subresource: status is written through the main resource and bumps generation.
    v1["status"] = {"anything": {"goes": True}}
    v2 = await objs.replace_namespaced_custom_object("example.test", "v1", "default", "widgets", "w", v1)
    assert v2["status"] == {"anything": {"goes": True}} and v2["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as err:
        await objs.get_cluster_custom_object("example.test", "v1", "widgets", "w")
    assert err.value.status == 404
    listed = await objs.list_cluster_custom_object("example.test", "v1", "widgets")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["w"]


async def test_deleting_a_crd_deletes_its_objects_and_stops_serving_it(kube_api):
    objs = await install_gateway_crd(kube_api)
    await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", gateway("g"))
    await client.ApiextensionsV1Api(kube_api).delete_custom_resource_definition(f"gateways.{GROUP}")
    with pytest.raises(ApiException) as err:
        await objs.list_cluster_custom_object(GROUP, VERSION, "gateways")
    assert err.value.status == 404
    await client.ApiextensionsV1Api(kube_api).create_custom_resource_definition(gateway_crd())
    assert (await objs.list_cluster_custom_object(GROUP, VERSION, "gateways"))["items"] == []


async def test_invalid_crds_are_rejected(kube_api):
    ext = client.ApiextensionsV1Api(kube_api)
    crd = gateway_crd()
    crd["metadata"]["name"] = "wrong.name"
    with pytest.raises(ApiException) as err:
        await ext.create_custom_resource_definition(crd)
    assert err.value.status == 422 and status_of(err.value)["details"]["causes"][0]["field"] == "metadata.name"
    crd = gateway_crd()
    del crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["type"]
    with pytest.raises(ApiException) as err:
        await ext.create_custom_resource_definition(crd)
    assert err.value.status == 422
    assert "openAPIV3Schema.properties[spec].type" in json.loads(err.value.body)["message"]


async def test_kind_and_api_version_must_match_the_url(kube_api):
    objs = await install_gateway_crd(kube_api)
    body = gateway("g")
    body["kind"] = "Other"
    with pytest.raises(ApiException) as err:
        await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", body)
    assert err.value.status == 400
    body = gateway("g")
    del body["kind"]
    with pytest.raises(ApiException) as err:
        await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", body)
    assert err.value.status == 400 and "Kind' is missing" in status_of(err.value)["message"]
