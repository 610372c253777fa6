"""Structural openAPIV3Schema handling for custom resources: pruning, defaulting and validation.

Follows the apiextensions-apiserver order: unknown fields are pruned (reported so that
fieldValidation=Strict/Warn can act on them), defaults are applied, then the object is validated and
every violation becomes a field error named by its path (`spec.endpoints[0].port`).
CEL rules (x-kubernetes-validations) are deliberately not evaluated.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from datetime import datetime
from typing import Any

from .errors import FieldError
from .store import clone

Schema = dict[str, Any]

# ObjectMeta fields a client may set; anything else under a custom resource's metadata is dropped.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def prune(schema: Schema | None, obj: Any, path: str, unknown: list[str], root: bool = False) -> Any:
    """Drop fields not declared by `schema` (in place where possible); record their paths in `unknown`."""
    if schema is None:
        return obj
    if isinstance(obj, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        for key in list(obj.keys()):
            sub_path = _join(path, key)
            if (root or embedded) and key in ("apiVersion", "kind"):
                continue
            if (root or embedded) and key == "metadata":
                if isinstance(obj[key], dict):
                    for mk in list(obj[key].keys()):
                        if mk not in OBJECT_META_FIELDS:
                            unknown.append(_join(sub_path, mk))
                            del obj[key][mk]
                continue
            if props is not None and key in props:
                obj[key] = prune(props[key], obj[key], sub_path, unknown)
            elif isinstance(addl, dict):
                obj[key] = prune(addl, obj[key], sub_path, unknown)
            elif preserve or addl is True:
                continue
            else:
                unknown.append(sub_path)
                del obj[key]
    elif isinstance(obj, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(obj):
                obj[i] = prune(items, item, f"{path}[{i}]", unknown)
    return obj


def apply_defaults(schema: Schema | None, obj: Any) -> Any:
    if schema is None:
        return obj
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if not isinstance(sub, dict):
                continue
            if (key not in obj or (obj[key] is None and not sub.get("nullable"))) and "default" in sub:
                obj[key] = clone(sub["default"])
            if key in obj:
                obj[key] = apply_defaults(sub, obj[key])
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key in obj:
                if key not in props:
                    obj[key] = apply_defaults(addl, obj[key])
    elif isinstance(obj, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(obj):
                obj[i] = apply_defaults(items, item)
    return obj


_TYPE_NAMES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def _type_ok(typ: str, value: Any) -> bool:
    if typ == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if typ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    expected = _TYPE_NAMES.get(typ)
    return expected is None or isinstance(value, expected)


def _go_repr(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return '"' + ("true" if value else "false") + '"'
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return f'"{value}"'


_HOSTNAME = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,62})?(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,62})?)*$")
_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d|w))+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _format_ok(fmt: str, value: str) -> bool:
    try:
        if fmt == "ipv4":
            ipaddress.IPv4Address(value)
        elif fmt == "ipv6":
            ipaddress.IPv6Address(value)
        elif fmt == "cidr":
            ipaddress.ip_network(value, strict=False)
            return "/" in value
        elif fmt == "hostname":
            return bool(_HOSTNAME.match(value)) and len(value) <= 255
        elif fmt == "mac":
            return bool(_MAC.match(value))
        elif fmt in ("uuid", "uuid3", "uuid4", "uuid5"):
            return bool(_UUID.match(value))
        elif fmt == "email":
            return bool(_EMAIL.match(value))
        elif fmt in ("date-time", "datetime"):
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        elif fmt == "date":
            return bool(_DATE.match(value)) and bool(datetime.strptime(value, "%Y-%m-%d"))
        elif fmt == "byte":
            base64.b64decode(value, validate=True)
        elif fmt == "duration":
            return bool(_DURATION.match(value))
    except ValueError:
        return False
    return True


def validate(schema: Schema | None, value: Any, path: str, errors: list[FieldError], root: bool = False) -> None:
    if schema is None:
        return
    if value is None:
        if not schema.get("nullable") and "type" in schema:
            errors.append(FieldError("FieldValueInvalid", path, "null",
                                     f"{path} in body must be of type {schema['type']}: \"null\""))
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))):
            errors.append(FieldError("FieldValueInvalid", path, value,
                                     f"{path} in body must be of type integer,string: {_go_repr(value)}"))
            return
    elif "type" in schema and not _type_ok(schema["type"], value):
        errors.append(FieldError("FieldValueInvalid", path, value,
                                 f"{path} in body must be of type {schema['type']}: {_go_repr(value)}"))
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in schema["enum"])
        errors.append(FieldError("FieldValueNotSupported", path, value, f"supported values: {supported}"))
    if isinstance(value, str):
        fmt = schema.get("format")
        if fmt and not _format_ok(fmt, value):
            errors.append(FieldError("FieldValueInvalid", path, value,
                                     f"{path} in body must be of type {fmt}: {_go_repr(value)}"))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(FieldError("FieldValueTooLong", path, value,
                                     f"may not be more than {schema['maxLength']} bytes"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(FieldError("FieldValueInvalid", path, value,
                                     f"{path} in body should be at least {schema['minLength']} chars long"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(FieldError("FieldValueInvalid", path, value,
                                     f"{path} in body should match '{schema['pattern']}'"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "maximum" in schema:
            mx = schema["maximum"]
            if value > mx or (schema.get("exclusiveMaximum") and value == mx):
                rel = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
                errors.append(FieldError("FieldValueInvalid", path, value, f"{path} in body should be {rel} {mx}"))
        if "minimum" in schema:
            mn = schema["minimum"]
            if value < mn or (schema.get("exclusiveMinimum") and value == mn):
                rel = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
                errors.append(FieldError("FieldValueInvalid", path, value, f"{path} in body should be {rel} {mn}"))
        if "multipleOf" in schema and schema["multipleOf"] and value % schema["multipleOf"] != 0:
            errors.append(FieldError("FieldValueInvalid", path, value,
                                     f"{path} in body should be a multiple of {schema['multipleOf']}"))
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(FieldError("FieldValueTooMany", path, len(value),
                                     f"must have at most {schema['maxItems']} items"))
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(FieldError("FieldValueInvalid", path, len(value),
                                     f"{path} in body should have at least {schema['minItems']} items"))
        if schema.get("uniqueItems") or schema.get("x-kubernetes-list-type") == "set":
            seen: list[Any] = []
            for i, item in enumerate(value):
                if item in seen:
                    errors.append(FieldError("FieldValueDuplicate", f"{path}[{i}]", item))
                seen.append(item)
        items = schema.get("items")
        if isinstance(items, dict):
            keys = schema.get("x-kubernetes-list-map-keys") if schema.get("x-kubernetes-list-type") == "map" else None
            seen_keys: set[str] = set()
            for i, item in enumerate(value):
                validate(items, item, f"{path}[{i}]", errors)
                if keys and isinstance(item, dict):
                    k = repr([item.get(x) for x in keys])
                    if k in seen_keys:
                        errors.append(FieldError("FieldValueDuplicate", f"{path}[{i}]", item))
                    seen_keys.add(k)
    if isinstance(value, dict):
        for req in schema.get("required") or ():
            if req not in value:
                errors.append(FieldError("FieldValueRequired", _join(path, req), None))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(FieldError("FieldValueTooMany", path, len(value),
                                     f"must have at most {schema['maxProperties']} items"))
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append(FieldError("FieldValueInvalid", path, len(value),
                                     f"{path} in body should have at least {schema['minProperties']} properties"))
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        for key, sub_value in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in props:
                validate(props[key], sub_value, _join(path, key), errors)
            elif isinstance(addl, dict):
                validate(addl, sub_value, _join(path, key), errors)
    for sub in schema.get("allOf") or ():
        validate(sub, value, path, errors)
    if "anyOf" in schema:
        if not any(_passes(s, value, path) for s in schema["anyOf"]):
            errors.append(FieldError("FieldValueInvalid", path, value, f"{path} in body must match anyOf"))
    if "oneOf" in schema:
        n = sum(1 for s in schema["oneOf"] if _passes(s, value, path))
        if n != 1:
            errors.append(FieldError("FieldValueInvalid", path, value,
                                     f"{path} in body must validate one and only one schema (oneOf)"))
    if "not" in schema and _passes(schema["not"], value, path):
        errors.append(FieldError("FieldValueInvalid", path, value, f"{path} in body should not match the schema"))


def _passes(schema: Schema, value: Any, path: str) -> bool:
    errs: list[FieldError] = []
    validate(schema, value, path, errs)
    return not errs


def structural_problems(schema: Any, path: str = "spec.validation.openAPIV3Schema") -> list[FieldError]:
    """The subset of structural-schema rules a CRD author is most likely to break."""
    errs: list[FieldError] = []
    if not isinstance(schema, dict):
        return [FieldError("FieldValueRequired", path, None, "must be an object")]
    for key, typ in (("properties", dict), ("required", list), ("enum", list)):
        if key in schema and not isinstance(schema[key], typ):
            return [FieldError("FieldValueInvalid", _join(path, key), schema[key], f"must be a {typ.__name__}")]
    if "items" in schema and not isinstance(schema["items"], dict | list):
        return [FieldError("FieldValueInvalid", _join(path, "items"), schema["items"], "must be a schema")]
    has_type = "type" in schema or schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields")
    if not has_type:
        errs.append(FieldError("FieldValueRequired", _join(path, "type"), None, "must not be empty for specified "
                               "object fields"))
    if "properties" in schema and isinstance(schema.get("additionalProperties"), dict):
        errs.append(FieldError("FieldValueForbidden", _join(path, "additionalProperties"), None,
                               "additionalProperties and properties are mutual exclusive"))
    for key, sub in (schema.get("properties") or {}).items():
        errs.extend(structural_problems(sub, f"{path}.properties[{key}]"))
    if isinstance(schema.get("items"), dict):
        errs.extend(structural_problems(schema["items"], _join(path, "items")))
    if isinstance(schema.get("additionalProperties"), dict):
        errs.extend(structural_problems(schema["additionalProperties"], _join(path, "additionalProperties")))
    return errs
