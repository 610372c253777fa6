"""Protocol details clients depend on: initial-events bookmarks, dry runs, warnings, discovery, errors."""

from __future__ import annotations

import itertools
import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from e2e.apiserver import ApiServer

from .crds import GROUP, VERSION, gateway, gateway_crd
from .test_objects import install_gateway_crd, node


async def raw(server: ApiServer, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None,
              session: aiohttp.ClientSession | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with the server's token; pass `session` to reuse its connections across many requests."""
    h = {"Authorization": f"Bearer {server.token}", **(headers or {})}
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await raw(server, method, path, body, headers, own)
    async with session.request(method, server.url + path, ssl=False, headers=h,
                               data=json.dumps(body) if body is not None else None) as r:
        return r.status, dict(r.headers), await r.read()


async def read_watch(server: ApiServer, path: str, until: str) -> list[dict[str, Any]]:
    """Watch events up to and including the first of type `until` (then hang up)."""
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s:
        async with s.get(server.url + path, ssl=False, timeout=aiohttp.ClientTimeout(total=10),
                         headers={"Authorization": f"Bearer {server.token}"}) as r:
            async for line in r.content:
                events.append(json.loads(line))
                if events[-1]["type"] == until:
                    break
    return events


async def test_send_initial_events_ends_with_the_initial_events_end_bookmark(apiserver: ApiServer, kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_node(node("a"))
    # Read up to the first bookmark and hang up (rather than wait out a timeoutSeconds).
    events = await read_watch(apiserver, "/api/v1/nodes?watch=1&sendInitialEvents=true"
                              "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=30",
                              until="BOOKMARK")
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_request_counts_name_verbs_and_resources(apiserver: ApiServer, kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_node(node("n"))
    await v1.list_node()
    await v1.patch_node_status("n", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    await v1.delete_node("n")
    counts = apiserver.request_counts
    assert counts[("create", "nodes")] == 1 and counts[("list", "nodes")] == 1
    assert counts[("patch", "nodes/status")] == 1 and counts[("delete", "nodes")] == 1


async def test_dry_run_validates_without_storing(kube_api):
    v1 = client.CoreV1Api(kube_api)
    created = await v1.create_node(node("dry"), dry_run="All")
    assert created.metadata.name == "dry"
    with pytest.raises(ApiException) as err:
        await v1.read_node("dry")
    assert err.value.status == 404


async def test_unknown_fields_are_pruned_with_a_warning_header_by_default(apiserver: ApiServer, kube_api):
    await install_gateway_crd(kube_api)
    status, headers, body = await raw(apiserver, "POST", f"/apis/{GROUP}/{VERSION}/gateways",
                                      gateway("g", exposeType="", nope=1), {"Content-Type": "application/json"})
    assert status == 201 and "nope" not in json.loads(body)["spec"]
    assert headers["Warning"] == '299 - "unknown field \\"spec.nope\\""'


async def test_discovery_documents_describe_core_and_group_resources(apiserver: ApiServer):
    _, _, body = await raw(apiserver, "GET", "/api/v1")
    res = {r["name"]: r for r in json.loads(body)["resources"]}
    assert res["nodes"]["namespaced"] is False and res["configmaps"]["shortNames"] == ["cm"]
    assert "nodes/status" in res and res["pods"]["categories"] == ["all"]
    _, _, body = await raw(apiserver, "GET", "/apis")
    groups = {g["name"]: g for g in json.loads(body)["groups"]}
    assert groups["coordination.k8s.io"]["preferredVersion"]["version"] == "v1"
    status, _, body = await raw(apiserver, "GET", "/version")
    assert status == 200 and json.loads(body)["gitVersion"] == "v1.31.0"
    status, _, body = await raw(apiserver, "GET", "/apis/nope.example/v1/things")
    assert status == 404 and json.loads(body)["kind"] == "Status"


async def test_table_output_for_nodes_and_custom_printer_columns(apiserver: ApiServer, kube_api):
    objs = await install_gateway_crd(kube_api)
    await objs.create_cluster_custom_object(GROUP, VERSION, "gateways", gateway("g", exposeType="PublicIP"))
    # Raw: kubernetes_asyncio cannot even deserialize a Node whose nodeInfo lacks fields it requires.
    status, _, _ = await raw(apiserver, "POST", "/api/v1/nodes", {**node("n"), "status": {
        "conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.31.0"}}})
    assert status == 201
    accept = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
    _, _, body = await raw(apiserver, "GET", "/api/v1/nodes", headers=accept)
    t = json.loads(body)
    assert t["kind"] == "Table" and [c["name"] for c in t["columnDefinitions"]][:5] == [
        "Name", "Status", "Roles", "Age", "Version"]
    assert t["rows"][0]["cells"][:3] == ["n", "Ready", "<none>"]
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    _, _, body = await raw(apiserver, "GET", f"/apis/{GROUP}/{VERSION}/gateways/g", headers=accept)
    t = json.loads(body)
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "ExposeType", "Active", "Replicas", "Age"]
    assert t["rows"][0]["cells"][:4] == ["g", "PublicIP", None, None]


async def test_methods_and_subresources_that_do_not_exist_are_rejected(apiserver: ApiServer, kube_api):
    await client.CoreV1Api(kube_api).create_node(node("n"))
    status, _, body = await raw(apiserver, "POST", "/api/v1/nodes/n", node("n"))
    assert status == 405 and json.loads(body)["reason"] == "MethodNotAllowed"
    status, _, _ = await raw(apiserver, "GET", "/api/v1/configmaps/x/status")
    assert status == 404
    status, _, body = await raw(apiserver, "POST", "/api/v1/nodes", {"metadata": {"name": "Bad_Name"}})
    assert status == 422 and json.loads(body)["details"]["causes"][0]["field"] == "metadata.name"


KINDS = [
    ("/api/v1", "nodes", "Node", None, {}),
    ("/api/v1", "namespaces", "Namespace", None, {}),
    ("/api/v1", "services", "Service", "default", {"spec": {"ports": [{"port": 80}]}}),
    ("/api/v1", "endpoints", "Endpoints", "default",
     {"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}]}),
    ("/api/v1", "configmaps", "ConfigMap", "default", {"data": {"a": "b"}}),
    ("/api/v1", "secrets", "Secret", "default", {"data": {"a": "Yg=="}}),
    ("/api/v1", "events", "Event", "default", {"involvedObject": {"kind": "Node", "name": "n"}, "reason": "R"}),
    ("/api/v1", "pods", "Pod", "default", {"spec": {"containers": [{"name": "c", "image": "i"}]}}),
    ("/api/v1", "serviceaccounts", "ServiceAccount", "default", {}),
    ("/apis/coordination.k8s.io/v1", "leases", "Lease", "default", {"spec": {"holderIdentity": "me"}}),
    ("/apis/apps/v1", "deployments", "Deployment", "default", {"spec": {
        "selector": {"matchLabels": {"a": "b"}},
        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
    ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", None, {"rules": []}),
]


@pytest.mark.parametrize(("prefix", "plural", "kind", "ns", "extra"), KINDS, ids=[k[1] for k in KINDS])
async def test_every_built_in_kind_supports_create_get_list_watch_and_delete(
        apiserver: ApiServer, prefix: str, plural: str, kind: str, ns: str | None, extra: dict[str, Any]):
    api_version = prefix.split("/", 2)[2] if prefix.startswith("/apis/") else "v1"
    base = f"{prefix}/namespaces/{ns}/{plural}" if ns else f"{prefix}/{plural}"
    body = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "probe", "labels": {"t": "1"}}, **extra}
    status, _, created = await raw(apiserver, "POST", base, body, {"Content-Type": "application/json"})
    assert status == 201, created
    obj = json.loads(created)
    assert obj["kind"] == kind and obj["apiVersion"] == api_version and obj["metadata"]["uid"]
    status, _, got = await raw(apiserver, "GET", f"{base}/probe")
    assert status == 200 and json.loads(got)["metadata"]["uid"] == obj["metadata"]["uid"]
    status, _, listed = await raw(apiserver, "GET", f"{base}?labelSelector=t%3D1")
    lst = json.loads(listed)
    assert lst["kind"] == f"{kind}List" and [i["metadata"]["name"] for i in lst["items"]] == ["probe"]
    status, _, _ = await raw(apiserver, "DELETE", f"{base}/probe")
    assert status == 200
    watch = (f"{base}?watch=1&fieldSelector=metadata.name%3Dprobe"
             f"&resourceVersion={obj['metadata']['resourceVersion']}")
    types = [e["type"] for e in await read_watch(apiserver, watch, until="DELETED")]
    if plural == "namespaces":
        assert types == ["MODIFIED", "DELETED"]  # Terminating, then gone
    else:
        assert types == ["DELETED"]
    status, _, _ = await raw(apiserver, "GET", f"{base}/probe")
    assert status == 404


NAME = {"name": "a"}
BODIES: list[Any] = [
    [], "x", 1, None, {}, {"metadata": []}, {"metadata": {"name": 5}}, {"metadata": {**NAME, "labels": []}},
    {"metadata": {**NAME, "labels": {"k": 1}}}, {"metadata": {**NAME, "annotations": {"k": 1}}},
    {"metadata": {**NAME, "finalizers": "x"}}, {"metadata": {**NAME, "ownerReferences": "x"}},
    {"metadata": {**NAME, "ownerReferences": [1]}}, {"metadata": NAME, "spec": []},
    {"metadata": NAME, "spec": {"ports": "x"}}, {"metadata": NAME, "spec": {"ports": [1]}},
    {"metadata": NAME, "spec": {"containers": "x"}}, {"metadata": NAME, "data": []},
    {"metadata": NAME, "stringData": {"a": 1}}, {"metadata": NAME, "spec": {"versions": "x"}},
    {"metadata": NAME, "spec": {"selector": "x", "template": []}}, {"metadata": NAME, "spec": {"type": 5}},
    {"metadata": {"name": "a.b"}, "spec": {"group": "b", "names": {"plural": "a", "kind": "A"}, "scope": "Cluster",
                                           "versions": [{"name": "v1", "storage": True,
                                                         "schema": {"openAPIV3Schema": {"type": "object",
                                                                                        "properties": []}}}]}},
]
PATHS = ["/api/v1/nodes", "/api/v1/namespaces/default/services", "/api/v1/namespaces/default/pods",
         "/api/v1/namespaces/default/secrets", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
         "/apis/apps/v1/namespaces/default/deployments", f"/apis/{GROUP}/{VERSION}/gateways",
         "/apis/events.k8s.io/v1/namespaces/default/events", "/api/v1/namespaces"]
PATCH_TYPES = ["application/merge-patch+json", "application/json-patch+json",
               "application/strategic-merge-patch+json", "application/apply-patch+yaml"]
QUERIES = ["labelSelector=%21", "labelSelector=a%20in", "fieldSelector=x", "limit=x", "continue=zzz",
           "watch=1&resourceVersion=abc", "watch=1&timeoutSeconds=x", "labelSelector=a%3E"]


async def test_malformed_bodies_and_queries_get_4xx_status_objects_never_a_crash(apiserver: ApiServer):
    """Bad input is answered like the real server's decoder answers it: a 4xx Status, never a 500."""
    await raw(apiserver, "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", gateway_crd())
    crashes = []
    # ~1500 requests: one keep-alive session instead of a TLS handshake each.
    async with aiohttp.ClientSession() as session:
        for path, body in itertools.product(PATHS, BODIES):
            calls = [("POST", path, None), ("PUT", path + "/a", None), ("PUT", path + "/a/status", None)]
            calls += [("PATCH", path + "/a", ctype) for ctype in PATCH_TYPES]
            for method, p, ctype in calls:
                st, _, out = await raw(apiserver, method, p, body, {"Content-Type": ctype} if ctype else None,
                                       session)
                assert json.loads(out)["kind"] == "Status" or st < 300
                if st >= 500:
                    crashes.append((method, p, ctype, body, out[:200]))
        for q in QUERIES:
            st, _, out = await raw(apiserver, "GET", "/api/v1/nodes?" + q, session=session)
            assert st == 400 and json.loads(out)["reason"] == "BadRequest", (q, out)
    assert not crashes, crashes
