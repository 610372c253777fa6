"""PathReport (health.raven-py.io/v1alpha1): lossless round trip, strict parse, staleness, CRD schema agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from raven.api.pathreport import (
    PathReport,
    PathReportParseError,
    PathReportStatus,
    TargetReport,
    format_time,
    new_report_body,
    parse_time,
    status_patch,
)

CRD = Path(__file__).resolve().parents[2] / "manifests" / "01-crd-pathreports.yaml"


def _report() -> PathReport:
    return PathReport("edge-a-2", "edge-a-2", PathReportStatus(
        gateway="gw-edge-a", role="member", heartbeat_time="2026-12-01T12:00:05Z", probe_interval_seconds=0.2,
        targets=(TargetReport("gateway", "gw-edge-a", "edge-a-1", "240.0.11.11", "up", "2026-12-01T12:00:01Z",
                              0.0004, 0.0),
                 TargetReport("via", "gw-cloud", "cloud-1", "240.1.0.1", "down", "2026-12-01T12:00:03Z", None, 1.0))))


def _schema() -> dict[str, Any]:
    (crd,) = [d for d in yaml.safe_load_all(CRD.read_text()) if d]
    assert crd["metadata"]["name"] == "pathreports.health.raven-py.io" and crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_round_trip_is_lossless() -> None:
    r = _report()
    assert PathReport.from_dict(r.to_dict()) == r


def test_serialized_report_matches_the_crd_schema() -> None:
    doc = _report().to_dict()
    # nullable rttSeconds is an OpenAPI extension jsonschema does not know: drop nulls before validating.
    for t in doc["status"]["targets"]:  # type: ignore[index]
        if t["rttSeconds"] is None:
            del t["rttSeconds"]
    jsonschema.Draft4Validator(_schema(), format_checker=jsonschema.FormatChecker()).validate(doc)


@pytest.mark.parametrize(("path", "value"), [
    (("status", "targets"), {}), (("status", "targets", 0, "state"), "sideways"),
    (("status", "targets", 0, "rttSeconds"), "fast"), (("status", "role"), "boss"), (("spec", "nodeName"), 3),
])
def test_wrong_shapes_raise_naming_the_field(path: tuple[Any, ...], value: object) -> None:
    doc: Any = _report().to_dict()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(PathReportParseError) as err:
        PathReport.from_dict(doc)
    assert str(path[-1]) in str(err.value)


def test_staleness_and_writer_check() -> None:
    r = _report()
    hb = parse_time(r.status.heartbeat_time)
    assert hb is not None and format_time(hb) == r.status.heartbeat_time
    assert not r.stale(hb + 179, heartbeat_s=60) and r.stale(hb + 181, heartbeat_s=60)
    forged = PathReport("edge-a-2", "edge-a-1", r.status)
    assert not forged.well_formed and forged.stale(hb, heartbeat_s=60)
    assert PathReport("n", "n").stale(hb, heartbeat_s=60)  # never written: no evidence


def test_bodies_the_agent_sends() -> None:
    assert new_report_body("n1") == {"apiVersion": "health.raven-py.io/v1alpha1", "kind": "PathReport",
                                     "metadata": {"name": "n1"}, "spec": {"nodeName": "n1"}}
    patch = status_patch(_report().status)
    assert PathReportStatus.from_dict(patch["status"]) == _report().status  # type: ignore[arg-type]
