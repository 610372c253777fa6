"""Manifests validate offline against real Kubernetes schemas; Gateways against the CRD's own schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from raven.api import Gateway, validate

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
BUILTIN_FILES = sorted(MANIFESTS.glob("*.yaml"))
EXAMPLES = sorted((MANIFESTS / "examples").glob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _crd_schema() -> dict[str, Any]:
    crd = _docs(MANIFESTS / "01-crd-gateways.yaml")[0]
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _validator() -> jsonschema.Validator:
    return jsonschema.Draft4Validator(_crd_schema(), format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("path", BUILTIN_FILES, ids=[p.name for p in BUILTIN_FILES])
def test_manifest_validates_strictly(path: Path) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33", strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "Kustomization").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in BUILTIN_FILES]


def test_there_are_manifests_and_examples_to_check() -> None:
    # The parametrized tests run once per file: with no files they would be skipped, not failed.
    assert BUILTIN_FILES and EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_gateway_matches_crd_schema_and_model(path: Path) -> None:
    for doc in _docs(path):
        _validator().validate(doc)
        assert validate(Gateway.from_dict(doc)) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [(("spec", "endpoints", 0, "port"), "4500"), (("spec", "tunnelConfig", "Replicas"), "1"),
     (("spec", "endpoints", 0, "underNAT"), "no"), (("spec", "endpoints"), {"nodeName": "x"})],
)
def test_wrong_field_type_is_rejected_by_crd_schema(path: tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(_docs(EXAMPLES[0])[0])
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(doc)


def test_crd_serves_openyurt_names() -> None:
    crd = _docs(MANIFESTS / "01-crd-gateways.yaml")[0]
    assert crd["spec"]["group"] == "raven.openyurt.io"
    assert crd["spec"]["names"]["shortNames"] == ["gw"]
    assert crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1beta1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {"ActiveEndpoint": ".status.activeEndpoints[*].nodeName", "ExposeType": ".spec.exposeType",
                       "Tunnels": '.status.conditions[?(@.type=="TunnelsHealthy")].status',
                       "Health": '.status.conditions[?(@.type=="TunnelsHealthy")].reason',
                       "PeersUp": ".status.pathHealth.peersUp", "Peers": ".status.pathHealth.peers",
                       "Age": ".metadata.creationTimestamp"}


def test_gateway_printer_columns_show_the_tunnels_condition() -> None:
    """`kubectl get gw`: whether the pool's tunnels are healthy, and why (the test server evaluates the filter)."""
    from e2e.apiserver.table import jsonpath

    crd = _docs(MANIFESTS / "01-crd-gateways.yaml")[0]
    columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    gw = {"status": {"conditions": [{"type": "Valid", "status": "True", "reason": "SpecValid"},
                                    {"type": "TunnelsHealthy", "status": "False", "reason": "NotForwarding"}]}}
    assert jsonpath(gw, columns["Tunnels"]) == ["False"]
    assert jsonpath(gw, columns["Health"]) == ["NotForwarding"]
    assert jsonpath({"status": {}}, columns["Tunnels"]) == []
