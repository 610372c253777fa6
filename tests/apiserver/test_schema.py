"""Structural schema handling (pure): pruning, defaulting and validation messages."""

from __future__ import annotations

from typing import Any

from e2e.apiserver import schema as structural
from e2e.apiserver.errors import FieldError
from e2e.apiserver.patch import strategic_merge_patch

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                         "properties": {"known": {"type": "integer"}}},
                "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                                     "weight": {"type": "integer", "default": 1}}}},
                "mode": {"type": "string", "anyOf": [{"pattern": "^a"}, {"pattern": "^b"}]},
                "cidr": {"type": "string", "format": "cidr"},
                "when": {"type": "string", "format": "date-time"},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2,
                         "x-kubernetes-list-type": "set"},
            },
        },
    },
}


def check(obj: dict[str, Any]) -> list[FieldError]:
    errs: list[FieldError] = []
    structural.validate(SCHEMA, obj, "", errs, root=True)
    return errs


def test_pruning_keeps_declared_maps_and_preserved_subtrees_and_reports_the_rest():
    obj = {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "bogus": 1},
           "spec": {"labels": {"a": "b"}, "free": {"known": 1, "anything": {"deep": True}},
                    "items": [{"name": "x", "extra": 1}], "unknown": 2}, "top": 3}
    unknown: list[str] = []
    structural.prune(SCHEMA, obj, "", unknown, root=True)
    assert sorted(unknown) == ["metadata.bogus", "spec.items[0].extra", "spec.unknown", "top"]
    assert obj["spec"]["free"] == {"known": 1, "anything": {"deep": True}}
    assert obj["spec"]["labels"] == {"a": "b"} and obj["metadata"] == {"name": "n"}


def test_defaults_apply_inside_list_items():
    obj = {"spec": {"items": [{"name": "x"}, {"name": "y", "weight": 5}]}}
    structural.apply_defaults(SCHEMA, obj)
    assert obj["spec"]["items"] == [{"name": "x", "weight": 1}, {"name": "y", "weight": 5}]


def test_int_or_string_any_of_formats_and_list_types():
    assert check({"spec": {"port": 80}}) == [] and check({"spec": {"port": "http"}}) == []
    assert [e.field for e in check({"spec": {"port": 1.5}})] == ["spec.port"]
    assert check({"spec": {"mode": "alpha"}}) == []
    assert [e.field for e in check({"spec": {"mode": "zeta"}})] == ["spec.mode"]
    assert check({"spec": {"cidr": "10.0.0.0/8", "when": "2026-01-01T00:00:00Z"}}) == []
    bad = check({"spec": {"cidr": "10.0.0.0", "when": "yesterday"}})
    assert sorted(e.field for e in bad) == ["spec.cidr", "spec.when"]
    dup = check({"spec": {"items": [{"name": "a"}, {"name": "a"}], "tags": ["x", "x"]}})
    assert sorted((e.kind, e.field) for e in dup) == [("FieldValueDuplicate", "spec.items[1]"),
                                                      ("FieldValueDuplicate", "spec.tags[1]")]
    many = check({"spec": {"tags": ["a", "b", "c"]}})
    assert [(e.kind, e.message()) for e in many] == [("FieldValueTooMany",
                                                      "spec.tags: Too many: 3: must have at most 2 items")]


def test_messages_match_apimachinery_wording():
    [e] = check({"spec": {"labels": {"a": 1}}})
    assert e.message() == 'spec.labels.a: Invalid value: 1: spec.labels.a in body must be of type string: "1"'


def test_strategic_merge_directives():
    current = {"metadata": {"finalizers": ["a", "b"]},
               "spec": {"containers": [{"name": "c1", "image": "1"}, {"name": "c2", "image": "2"}]}}
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
             "spec": {"$setElementOrder/containers": [{"name": "c1"}, {"name": "c2"}],
                      "containers": [{"name": "c2", "$patch": "delete"}, {"name": "c3", "image": "3"}]}}
    out = strategic_merge_patch(current, patch)
    assert out["metadata"]["finalizers"] == ["b"]
    assert out["spec"]["containers"] == [{"name": "c1", "image": "1"}, {"name": "c3", "image": "3"}]
    replaced = strategic_merge_patch(current, {"spec": {"$patch": "replace", "containers": []}})
    assert replaced["spec"] == {"containers": []}
