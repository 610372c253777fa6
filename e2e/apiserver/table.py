"""meta.k8s.io Table output, which `kubectl get` asks for (Accept: ...;as=Table;g=meta.k8s.io).

Custom resources get the CRD's additionalPrinterColumns (evaluated with a small JSONPath subset:
fields, escaped dots, [n], [*] and [?(@.field=="value")]), or Age when none are declared; built-in kinds get
their kubectl columns.
"""

from __future__ import annotations

import json
from typing import Any

from .resources import ResourceType, human_age

NAME_COL = {"name": "Name", "type": "string", "format": "name",
            "description": "Name must be unique within a namespace. Is required when creating resources, although "
                           "some resources may allow a client to request the generation of an appropriate name "
                           "automatically. Name is primarily intended for creation idempotence and configuration "
                           "definition. Cannot be updated. More info: "
                           "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
            "priority": 0}

_DEFAULT_CR_COLUMNS = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]


def _segments(path: str) -> list[str]:
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    segs: list[str] = []
    cur = ""
    i = 0
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path):
            cur += path[i + 1]
            i += 2
            continue
        if ch == ".":
            if cur:
                segs.append(cur)
            cur = ""
        elif ch == "[":
            if cur:
                segs.append(cur)
            end = path.index("]", i)
            segs.append(path[i:end + 1])
            cur = ""
            i = end
        else:
            cur += ch
        i += 1
    if cur:
        segs.append(cur)
    return segs


def jsonpath(obj: Any, path: str) -> list[Any]:
    values = [obj]
    for seg in _segments(path):
        nxt: list[Any] = []
        for v in values:
            if seg.startswith("["):
                inner = seg[1:-1]
                if not isinstance(v, list):
                    continue
                if inner == "*":
                    nxt.extend(v)
                elif inner.startswith("?(@.") and inner.endswith(")") and "==" in inner:
                    # A filter on one field, as printer columns use it: [?(@.type=="Ready")].
                    key, _, want = inner[4:-1].partition("==")
                    want = want.strip().strip("'\"")
                    nxt.extend(x for x in v if isinstance(x, dict) and str(x.get(key.strip())) == want)
                else:
                    try:
                        idx = int(inner)
                    except ValueError:
                        continue
                    if -len(v) <= idx < len(v):
                        nxt.append(v[idx])
            elif isinstance(v, dict) and seg in v:
                nxt.append(v[seg])
        values = nxt
    return values


def _cell(typ: str, values: list[Any]) -> Any:
    if not values:
        return None
    if len(values) > 1:
        return ",".join(_text(v) for v in values)
    value = values[0]
    if typ == "date":
        return human_age(value) if isinstance(value, str) else None
    if typ == "integer":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if typ == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if typ == "boolean":
        return value if isinstance(value, bool) else None
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def column_definitions(rt: ResourceType) -> list[dict[str, Any]]:
    if rt.custom:
        cols = rt.printer_columns or _DEFAULT_CR_COLUMNS
        return [NAME_COL, *[{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                              "description": c.get("description", ""), "priority": c.get("priority", 0)}
                             for c in cols]]
    return [NAME_COL, *(rt.columns or [{"name": "Created At", "type": "date", "format": "",
                                             "description": "", "priority": 0}])]


def cells(rt: ResourceType, obj: dict[str, Any]) -> list[Any]:
    name = obj.get("metadata", {}).get("name", "")
    if rt.custom:
        cols = rt.printer_columns or _DEFAULT_CR_COLUMNS
        return [name] + [_cell(c.get("type", "string"), jsonpath(obj, c.get("jsonPath", ""))) for c in cols]
    if rt.cells is not None:
        return [name, *rt.cells(obj)]
    return [name, obj.get("metadata", {}).get("creationTimestamp", "")]


def row(rt: ResourceType, obj: dict[str, Any], include_object: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cells": cells(rt, obj)}
    if include_object == "Object":
        out["object"] = obj
    elif include_object != "None":
        out["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                         "metadata": obj.get("metadata", {})}
    return out


def table(rt: ResourceType, objs: list[dict[str, Any]], include_object: str, list_meta: dict[str, Any],
          api_version: str = "meta.k8s.io/v1", with_columns: bool = True) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": list_meta,
        "columnDefinitions": column_definitions(rt) if with_columns else [],
        "rows": [row(rt, o, include_object) for o in objs],
    }
