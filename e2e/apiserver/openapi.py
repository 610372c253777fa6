"""/openapi/v3: just enough OpenAPI for kubectl.

kubectl (1.27+) refuses `apply` unless it can download OpenAPI: it checks in the v3 group-version
document that the PATCH operation of the kind accepts `fieldValidation`, then relies on server-side
field validation (which this server implements). Custom resource schemas are published too (so
`kubectl explain` works for them). Built-in kinds are published without schemas: kubectl then computes
strategic merge patches from its compiled-in types, as it does against any server. /openapi/v2 is not served.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .cluster import Cluster
from .resources import ResourceType

_QUERY = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(rt: ResourceType) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{rt.version}.{rt.kind}"


def _op(rt: ResourceType, action: str, verb: str, sub: str = "") -> dict[str, Any]:
    params = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}} for n in _QUERY]
    if action == "patch":
        params.append({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": True}})
    ref = {"$ref": f"#/components/schemas/{_schema_name(rt)}"} if rt.custom else {"type": "object"}
    return {
        "operationId": f"{verb}{rt.kind}{sub}",
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    }


def gv_document(cluster: Cluster, group: str, version: str) -> dict[str, Any] | None:
    types = [rt for (g, v, _), rt in cluster.types.items() if g == group and v == version]
    if not types:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    prefix = "/" + _gv_path(group, version)
    for rt in types:
        coll = f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
        item = coll + "/{name}"
        paths[coll] = {"get": _op(rt, "list", "list"), "post": _op(rt, "post", "create"),
                       "delete": _op(rt, "deletecollection", "deleteCollection")}
        paths[item] = {"get": _op(rt, "get", "read"), "put": _op(rt, "put", "replace"),
                       "patch": _op(rt, "patch", "patch"), "delete": _op(rt, "delete", "delete")}
        if rt.has_status:
            paths[item + "/status"] = {"get": _op(rt, "get", "read", "Status"),
                                       "put": _op(rt, "put", "replace", "Status"),
                                       "patch": _op(rt, "patch", "patch", "Status")}
        if rt.custom and rt.schema is not None:
            sch = json.loads(json.dumps(rt.schema))
            props = sch.setdefault("properties", {})
            props.setdefault("apiVersion", {"type": "string", "description": "APIVersion defines the versioned "
                                            "schema of this representation of an object."})
            props.setdefault("kind", {"type": "string", "description": "Kind is a string value representing the "
                                      "REST resource this object represents."})
            props.setdefault("metadata", {"type": "object", "description": "Standard object's metadata."})
            sch["x-kubernetes-group-version-kind"] = [{"group": rt.group, "version": rt.version, "kind": rt.kind}]
            schemas[_schema_name(rt)] = sch
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.31.0"}, "paths": paths,
            "components": {"schemas": schemas}}


def root_document(cluster: Cluster) -> dict[str, Any]:
    paths = {}
    for group, versions in cluster.group_versions().items():
        for v in versions:
            doc = gv_document(cluster, group, v)
            digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()[:128]
            paths[_gv_path(group, v)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(group, v)}?hash={digest}"}
    return {"paths": paths}
