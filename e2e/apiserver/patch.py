"""The three PATCH flavours a real server accepts for JSON bodies.

- RFC 7386 JSON merge patch (any resource).
- RFC 6902 JSON patch (any resource); a body that is not a list is a 400, like the real decoder.
- Strategic merge patch for built-in kinds only (custom resources answer 415, as the real server does):
  lists with a merge key are merged element-wise; directives `$patch`, `$retainKeys`,
  `$deleteFromPrimitiveList/<f>` and `$setElementOrder/<f>` are understood (the last one only for ordering).
"""

from __future__ import annotations

from typing import Any

from .errors import ApiError, bad_request
from .store import clone


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f'the server rejected our request due to an error in our request: invalid path "{path}"',
                       "Invalid")
    return [_unescape(t) for t in path[1:].split("/")]


def _fail(message: str) -> ApiError:
    return ApiError(422, message, "Invalid")


def _container(doc: Any, tokens: list[str], path: str) -> Any:
    cur = doc
    for tok in tokens:
        if isinstance(cur, dict):
            if tok not in cur:
                raise _fail(f"doc is missing path: \"{path}\": missing value")
            cur = cur[tok]
        elif isinstance(cur, list):
            try:
                idx = int(tok)
            except ValueError as exc:
                raise _fail(f"doc is missing path: \"{path}\": missing value") from exc
            if not 0 <= idx < len(cur):
                raise _fail(f"doc is missing path: \"{path}\": missing value")
            cur = cur[idx]
        else:
            raise _fail(f"doc is missing path: \"{path}\": missing value")
    return cur


def _get(doc: Any, path: str) -> Any:
    return _container(doc, _split_pointer(path), path)


def _remove(doc: Any, path: str) -> Any:
    tokens = _split_pointer(path)
    if not tokens:
        raise _fail("unable to remove the whole document")
    parent = _container(doc, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _fail(f"unable to remove nonexistent key: {last}: missing value")
        return parent.pop(last)
    if isinstance(parent, list):
        try:
            idx = int(last)
        except ValueError as exc:
            raise _fail(f"unable to access invalid index: {last}: invalid index referenced") from exc
        if not 0 <= idx < len(parent):
            raise _fail(f"Unable to remove invalid index: {idx}: invalid index referenced")
        return parent.pop(idx)
    raise _fail(f"doc is missing path: \"{path}\": missing value")


def _add(doc: Any, path: str, value: Any, replace: bool) -> Any:
    tokens = _split_pointer(path)
    if not tokens:
        return value
    parent = _container(doc, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _fail(f"replace operation does not apply: doc is missing key: {path}: missing value")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        else:
            try:
                idx = int(last)
            except ValueError as exc:
                raise _fail(f"unable to access invalid index: {last}: invalid index referenced") from exc
            if replace:
                if not 0 <= idx < len(parent):
                    raise _fail(f"replace operation does not apply: doc is missing key: {path}: missing value")
                parent[idx] = value
            else:
                if not 0 <= idx <= len(parent):
                    raise _fail(f"Unable to access invalid index: {idx}: invalid index referenced")
                parent.insert(idx, value)
    else:
        raise _fail(f"doc is missing path: \"{path}\": missing value")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        what = "object" if isinstance(ops, dict) else type(ops).__name__
        raise bad_request(f"json: cannot unmarshal {what} into Go value of type jsonpatch.Patch")
    if len(ops) > 10000:
        raise ApiError(413, f"The allowed maximum operations in a JSON patch is 10000, got {len(ops)}",
                       "RequestEntityTooLarge")
    doc = clone(doc)
    for op in ops:
        if not isinstance(op, dict):
            raise bad_request("json: cannot unmarshal into Go value of type jsonpatch.Operation")
        kind = op.get("op")
        path: Any = op.get("path")
        if not isinstance(path, str):
            raise _fail(f"the server rejected our request due to an error in our request: "
                        f"operation missing path field: {op}")
        if kind in ("add", "replace"):
            if "value" not in op:
                raise _fail(f"Unexpected kind: {kind}: missing value")
            doc = _add(doc, path, clone(op["value"]), replace=(kind == "replace"))
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise _fail(f"{kind} operation missing from field")
            value = _remove(doc, src) if kind == "move" else clone(_get(doc, src))
            doc = _add(doc, path, value, replace=False)
        elif kind == "test":
            try:
                current = _get(doc, path)
            except ApiError:
                current = None
            if current != op.get("value"):
                raise _fail(f"testing value {path} failed: test failed")
        else:
            raise _fail(f"Unexpected kind: {kind}")
    return doc


# Merge keys of built-in list fields (patchMergeKey/patchStrategy tags of k8s.io/api), by field name and,
# where the same name means different things, by the parent field.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "addresses": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "containerStatuses": "name",
}
# Primitive lists merged as sets.
_MERGE_PRIMITIVES = {"finalizers", "podCIDRs"}


def _merge_key(parent: str, field: str) -> str | None:
    if field == "ports":
        return "port" if parent == "spec" else "containerPort"
    if field == "addresses" and parent != "status":
        return None
    return _MERGE_KEYS.get(field)


def strategic_merge_patch(target: Any, patch: Any, parent: str = "") -> Any:
    if not isinstance(patch, dict):
        return clone(patch)
    if patch.get("$patch") == "replace":
        return {k: clone(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = clone(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, list):
            mk = _merge_key(parent, key)
            if mk is not None and isinstance(current, list):
                result[key] = _merge_list(current, value, mk, key)
            elif key in _MERGE_PRIMITIVES and isinstance(current, list):
                merged = list(current)
                for v in value:
                    if v not in merged:
                        merged.append(v)
                result[key] = merged
            elif mk is not None:
                result[key] = [
                    {k: v for k, v in item.items() if k != "$patch"} if isinstance(item, dict) else item
                    for item in value
                    if not (isinstance(item, dict) and item.get("$patch") == "delete")
                ]
            else:
                result[key] = clone(value)
        elif isinstance(value, dict):
            merged_val = strategic_merge_patch(current, value, key)
            if merged_val is None:
                result.pop(key, None)
            else:
                result[key] = merged_val
        else:
            result[key] = clone(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(current: list[Any], patch: list[Any], mk: str, field: str) -> list[Any]:
    out = [clone(x) for x in current]
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [x for x in patch if not (isinstance(x, dict) and x.get("$patch") == "replace")]
    for item in patch:
        if not isinstance(item, dict) or mk not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {mk}")
        idx = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(mk) == item[mk]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            out[idx] = strategic_merge_patch(out[idx], item, field)
    return out
