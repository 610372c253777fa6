"""Label and field selectors with the grammar and error messages of k8s.io/apimachinery.

Label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k>n`, `k<n`, comma-joined.
Field selectors: `path=v`, `path==v`, `path!=v` over the fields a resource declares selectable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ApiError, bad_request

_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")

Matcher = Callable[[Mapping[str, str]], bool]


def _label_eq(key: str, value: str, negate: bool) -> Matcher:
    if negate:
        return lambda labels: labels.get(key) != value
    return lambda labels: labels.get(key) == value


def _label_in(key: str, values: frozenset[str], negate: bool) -> Matcher:
    if negate:
        return lambda labels: labels.get(key) not in values
    return lambda labels: labels.get(key) in values


def _label_exists(key: str, negate: bool) -> Matcher:
    if negate:
        return lambda labels: key not in labels
    return lambda labels: key in labels


def _label_cmp(key: str, num: int, sign: int) -> Matcher:
    return lambda labels: _int_cmp(labels.get(key), num, sign)


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _check_key(key: str, raw: str) -> None:
    if not key or not _KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise bad_request(f"unable to parse requirement: invalid label key \"{key}\": name part must consist of "
                          "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
                          f"character (in {raw!r})")


def _check_value(value: str) -> None:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise bad_request(f"unable to parse requirement: values[0][value]: Invalid value: \"{value}\": a valid "
                          "label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                          "and must start and end with an alphanumeric character")


_SET_RE = re.compile(r"^\s*(\S+?)\s+(in|notin)\s*\((.*)\)\s*$")


def parse_label_selector(text: str | None) -> Matcher | None:
    """Return a predicate over a label map, or None for the empty selector (matches everything)."""
    if text is None or not text.strip():
        return None
    reqs: list[Matcher] = []
    for raw in _split_top(text):
        part = raw.strip()
        if not part:
            raise bad_request(f"unable to parse requirement: found '', expected: identifier (in {text!r})")
        m = _SET_RE.match(part)
        if m:
            key, op, vals_text = m.group(1), m.group(2), m.group(3)
            _check_key(key, text)
            vals = frozenset(v.strip() for v in vals_text.split(",") if v.strip() != "") if vals_text.strip() else None
            if vals is None:
                raise bad_request(f"unable to parse requirement: for '{op}', 'notin' operators, values set "
                                  "can't be empty")
            for v in vals:
                _check_value(v)
            reqs.append(_label_in(key, vals, negate=(op == "notin")))
            continue
        for op in ("!=", "==", "=", ">", "<"):
            idx = part.find(op)
            if idx > 0:
                key, value = part[:idx].strip(), part[idx + len(op):].strip()
                _check_key(key, text)
                if op in (">", "<"):
                    try:
                        num = int(value)
                    except ValueError as exc:
                        raise bad_request(f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must "
                                          f"be an integer (in {text!r})") from exc
                    reqs.append(_label_cmp(key, num, 1 if op == ">" else -1))
                    break
                _check_value(value)
                reqs.append(_label_eq(key, value, negate=(op == "!=")))
                break
        else:
            if part.startswith("!"):
                key = part[1:].strip()
                _check_key(key, text)
                reqs.append(_label_exists(key, negate=True))
            else:
                if " " in part:
                    raise bad_request(f"unable to parse requirement: found '{part.split()[1]}', expected: "
                                      f"in, notin, =, ==, !=, gt, lt (in {text!r})")
                _check_key(part, text)
                reqs.append(_label_exists(part, negate=False))
    if len(reqs) == 1:
        return reqs[0]
    return lambda labels: all(r(labels) for r in reqs)


def _int_cmp(value: str | None, num: int, sign: int) -> bool:
    if value is None:
        return False
    try:
        v = int(value)
    except ValueError:
        return False
    return v > num if sign > 0 else v < num


ObjMatcher = Callable[[Mapping[str, Any]], bool]

DEFAULT_FIELDS = ("metadata.name", "metadata.namespace")


def field_value(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for seg in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(seg)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def _field_eq(path: str, value: str, negate: bool) -> ObjMatcher:
    if negate:
        return lambda o: field_value(o, path) != value
    return lambda o: field_value(o, path) == value


def parse_field_selector(text: str | None, allowed: tuple[str, ...], resource_desc: str) -> ObjMatcher | None:
    if text is None or not text.strip():
        return None
    reqs: list[ObjMatcher] = []
    for raw in text.split(","):
        part = raw.strip()
        for op in ("!=", "==", "="):
            idx = part.find(op)
            if idx > 0:
                key, value = part[:idx].strip(), part[idx + len(op):].strip()
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        if key not in allowed:
            raise ApiError(400, f'field label not supported: {key}', "BadRequest")
        reqs.append(_field_eq(key, value, negate=(op == "!=")))
    if len(reqs) == 1:
        return reqs[0]
    return lambda o: all(r(o) for r in reqs)
