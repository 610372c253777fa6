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

from .resources import ResourceType
from .state import ApiState

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


def gv_document(state: ApiState, group: str, version: str) -> dict[str, Any] | None:
    types = [rt for (g, v, _), rt in state.types.items() if g == group and v == version]
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


def root_document(state: ApiState) -> dict[str, Any]:
    paths = {}
    for group, versions in state.group_versions().items():
        for v in versions:
            doc = gv_document(state, group, v)
            digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()[:128]
            paths[_gv_path(group, v)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(group, v)}?hash={digest}"}
    return {"paths": paths}


# ---- /openapi/v2 ---------------------------------------------------------------------------------------
# kubectl 1.27 and 1.28 check server-side field validation support in the OpenAPI v2 document, which
# client-go only accepts as protobuf (gnostic openapi_v2.Document). The few fields it reads are encoded
# by hand below (field numbers from gnostic's OpenAPIv2.proto).
V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"  # what kube-openapi answers
_V2_OP_FIELDS = {"get": 2, "put": 3, "post": 4, "delete": 5, "patch": 8}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _ld(num: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _v2_operation(op: dict[str, Any]) -> bytes:
    out = _ld(5, op["operationId"])
    for p in op["parameters"]:
        query = _ld(2, "query") + _ld(4, p["name"]) + _ld(6, p["schema"]["type"])
        out += _ld(8, _ld(1, _ld(2, _ld(3, query))))
    out += _ld(9, _ld(1, _ld(1, "200") + _ld(2, _ld(1, _ld(1, "OK")))))
    gvk = op["x-kubernetes-group-version-kind"]
    gvk_yaml = f'group: "{gvk["group"]}"\nkind: {gvk["kind"]}\nversion: {gvk["version"]}\n'
    out += _ld(13, _ld(1, "x-kubernetes-group-version-kind") + _ld(2, _ld(2, gvk_yaml)))
    out += _ld(13, _ld(1, "x-kubernetes-action") + _ld(2, _ld(2, op["x-kubernetes-action"] + "\n")))
    return out


def _all_paths(state: ApiState) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for group, versions in state.group_versions().items():
        for v in versions:
            doc = gv_document(state, group, v)
            if doc is not None:
                paths.update(doc["paths"])
    return paths


def v2_protobuf(state: ApiState) -> bytes:
    paths = b""
    for path, item in sorted(_all_paths(state).items()):
        body = b"".join(_ld(_V2_OP_FIELDS[verb], _v2_operation(op)) for verb, op in item.items())
        paths += _ld(2, _ld(1, path) + _ld(2, body))
    return _ld(1, "2.0") + _ld(2, _ld(1, "Kubernetes") + _ld(2, "v1.31.0")) + _ld(8, paths)


def v2_json(state: ApiState) -> dict[str, Any]:
    paths = {}
    for path, item in _all_paths(state).items():
        paths[path] = {verb: {
            "operationId": op["operationId"],
            "parameters": [{"name": p["name"], "in": "query", "type": p["schema"]["type"], "uniqueItems": True}
                           for p in op["parameters"]],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": op["x-kubernetes-action"],
            "x-kubernetes-group-version-kind": op["x-kubernetes-group-version-kind"],
        } for verb, op in item.items()}
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.31.0"}, "paths": paths,
            "definitions": {}}
