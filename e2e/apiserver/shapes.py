"""JSON shape checks standing in for Go's typed decoding of built-in kinds.

The real server decodes a body into Go structs before anything else, so a wrong JSON type (a list where
an object belongs, a number as a name) is a 400 BadRequest, never a crash. Only the fields this server
reads are described; the rest of a built-in object is stored as sent.
"""

from __future__ import annotations

from typing import Any

from .errors import ApiError

Shape = Any  # a type, {str: Shape} for a map, {"field": Shape, ...} for a struct, [Shape] for a list

STR_MAP: Shape = {str: str}
OWNER_REF: Shape = {"apiVersion": str, "kind": str, "name": str, "uid": str, "controller": bool,
                    "blockOwnerDeletion": bool}
META: Shape = {"name": str, "generateName": str, "namespace": str, "uid": str, "resourceVersion": str,
               "labels": STR_MAP, "annotations": STR_MAP, "finalizers": [str], "ownerReferences": [OWNER_REF],
               "generation": int, "creationTimestamp": str, "deletionTimestamp": str}
CONTAINER: Shape = {"name": str, "image": str, "imagePullPolicy": str, "env": [dict], "ports": [dict]}
POD_SPEC: Shape = {"containers": [CONTAINER], "initContainers": [CONTAINER], "nodeName": str,
                   "nodeSelector": STR_MAP, "restartPolicy": str, "volumes": [dict]}
TEMPLATE: Shape = {"metadata": META, "spec": POD_SPEC}
SELECTOR: Shape = {"matchLabels": STR_MAP, "matchExpressions": [dict]}

KINDS: dict[tuple[str, str], Shape] = {
    ("", "nodes"): {"spec": {"podCIDR": str, "podCIDRs": [str], "unschedulable": bool, "taints": [dict]},
                    "status": {"conditions": [{"type": str, "status": str}], "addresses": [{"type": str,
                                                                                             "address": str}],
                               "nodeInfo": dict}},
    ("", "namespaces"): {"spec": {"finalizers": [str]}, "status": dict},
    ("", "services"): {"spec": {"type": str, "clusterIP": str, "clusterIPs": [str], "selector": STR_MAP,
                                "ports": [{"name": str, "port": int, "protocol": str, "nodePort": int}]},
                       "status": dict},
    ("", "endpoints"): {"subsets": [{"addresses": [dict], "notReadyAddresses": [dict], "ports": [dict]}]},
    ("", "configmaps"): {"data": STR_MAP, "binaryData": STR_MAP, "immutable": bool},
    ("", "secrets"): {"data": STR_MAP, "stringData": STR_MAP, "type": str, "immutable": bool},
    ("", "events"): {"involvedObject": dict, "reason": str, "message": str, "type": str, "count": int,
                     "source": dict, "series": dict, "related": dict},
    ("", "pods"): {"spec": POD_SPEC, "status": dict},
    ("", "serviceaccounts"): {"secrets": [dict], "imagePullSecrets": [dict]},
    ("coordination.k8s.io", "leases"): {"spec": {"holderIdentity": str, "leaseDurationSeconds": int,
                                                 "leaseTransitions": int, "acquireTime": str, "renewTime": str}},
    ("apps", "deployments"): {"spec": {"replicas": int, "selector": SELECTOR, "template": TEMPLATE},
                              "status": dict},
    ("apps", "daemonsets"): {"spec": {"selector": SELECTOR, "template": TEMPLATE}, "status": dict},
    ("rbac.authorization.k8s.io", "clusterroles"): {"rules": [dict], "aggregationRule": dict},
    ("rbac.authorization.k8s.io", "roles"): {"rules": [dict]},
    ("rbac.authorization.k8s.io", "clusterrolebindings"): {"roleRef": dict, "subjects": [dict]},
    ("rbac.authorization.k8s.io", "rolebindings"): {"roleRef": dict, "subjects": [dict]},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"spec": {
        "group": str, "scope": str, "preserveUnknownFields": bool,
        "names": {"plural": str, "singular": str, "kind": str, "listKind": str, "shortNames": [str],
                  "categories": [str]},
        "versions": [{"name": str, "served": bool, "storage": bool, "deprecated": bool,
                      "schema": {"openAPIV3Schema": dict}, "subresources": {"status": dict, "scale": dict},
                      "additionalPrinterColumns": [{"name": str, "type": str, "jsonPath": str, "format": str,
                                                    "description": str, "priority": int}],
                      "selectableFields": [{"jsonPath": str}]}]}, "status": dict},
}

_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "bool"}
_GO_NAMES = {str: "string", int: "int64", bool: "bool", dict: "map[string]interface {}", list: "[]interface {}"}


def _json_type(value: Any) -> str:
    for t, name in _JSON_NAMES.items():
        if isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return name
    return "null"


def _mismatch(value: Any, shape: Shape) -> str | None:
    """The Go type `value` cannot be decoded into, or None when it fits."""
    if value is None:
        return None  # null decodes to the zero value
    if isinstance(shape, list):
        if not isinstance(value, list):
            return "[]" + (_GO_NAMES.get(shape[0], "struct") if isinstance(shape[0], type) else "struct")
        return None
    if isinstance(shape, dict):
        return None if isinstance(value, dict) else ("map[string]string" if str in shape else "struct")
    if shape is int:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float)
                                                                        and value.is_integer())
        return None if ok else "int64"
    if shape is bool:
        return None if isinstance(value, bool) else "bool"
    return None if isinstance(value, shape) else _GO_NAMES.get(shape, "struct")


def _walk(value: Any, shape: Shape, path: str, out: list[tuple[str, Any, str]]) -> None:
    go = _mismatch(value, shape)
    if go is not None:
        out.append((path, value, go))
        return
    if value is None:
        return
    if isinstance(shape, list):
        for item in value:
            _walk(item, shape[0], path, out)
    elif isinstance(shape, dict):
        if str in shape:
            for item in value.values():
                _walk(item, shape[str], path, out)
        else:
            for key, sub in shape.items():
                if key in value:
                    _walk(value[key], sub, f"{path}.{key}" if path else key, out)


def check(kind: str, version: str, store_key: tuple[str, str], obj: dict[str, Any]) -> None:
    """Raise 400 like the real decoder when a field the server understands has the wrong JSON type."""
    problems: list[tuple[str, Any, str]] = []
    _walk(obj.get("metadata"), META, "metadata", problems)
    shape = KINDS.get(store_key)
    if shape is not None:
        for key, sub in shape.items():
            if key in obj:
                _walk(obj[key], sub, key, problems)
    if problems:
        path, value, go = problems[0]
        raise ApiError(400, f'{kind} in version "{version}" cannot be handled as a {kind}: json: cannot '
                       f"unmarshal {_json_type(value)} into Go struct field {kind}.{path} of type {go}",
                       "BadRequest")
