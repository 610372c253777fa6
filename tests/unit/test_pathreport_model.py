"""The PathReport model (raven/api/pathreport.py): the contract's shape, a lossless round trip, strict types,
the writer check and staleness, the bodies the agent sends, the CRD schema's agreement."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from raven.api.pathreport import (
    STALE_AFTER_HEARTBEATS,
    PathReport,
    PathReportParseError,
    PathReportStatus,
    Target,
    format_time,
    from_epoch,
    new_report_body,
    parse_time,
    status_patch,
    to_epoch,
)
from raven.config import AgentConfig, ControllerConfig

CRD = Path(__file__).resolve().parents[2] / "manifests" / "01-crd-pathreports.yaml"

CONTRACT = {
    "apiVersion": "health.raven-py.io/v1alpha1",
    "kind": "PathReport",
    "metadata": {"name": "edge-a-2", "resourceVersion": "7"},
    "spec": {"nodeName": "edge-a-2"},
    "status": {
        "gateway": "gw-edge-a", "role": "member", "heartbeatTime": "2026-12-01T12:00:05Z",
        "probeIntervalSeconds": 0.2,
        "targets": [{"kind": "gateway", "gateway": "gw-edge-a", "node": "edge-a-1", "address": "240.0.11.11",
                     "state": "up", "since": "2026-12-01T12:00:01Z", "rttSeconds": 0.0004, "lossRatio": 0.0},
                    {"kind": "via", "gateway": "gw-cloud", "node": "cloud-1", "address": "241.0.0.1",
                     "state": "down", "since": "2026-12-01T12:00:02.500000Z", "rttSeconds": None,
                     "lossRatio": 1.0}],
    },
}


def test_the_contract_example_parses_and_round_trips() -> None:
    r = PathReport.from_dict(CONTRACT)
    assert r.well_formed and r.status.role == "member" and r.status.gateway == "gw-edge-a"
    gw, via = r.status.targets
    assert gw.reached and not gw.lost and via.lost and via.rtt_seconds is None
    assert r.to_dict() == CONTRACT
    assert PathReport.from_dict(r.to_dict()) == r


def test_staleness_and_the_writer_check() -> None:
    r = PathReport.from_dict(CONTRACT)
    hb = datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)
    assert r.fresh(hb + timedelta(seconds=180), timedelta(seconds=180))
    assert not r.fresh(hb + timedelta(seconds=181), timedelta(seconds=180))
    other = PathReport.from_dict({**CONTRACT, "spec": {"nodeName": "edge-a-1"}})
    assert not other.well_formed
    no_heartbeat = PathReport.from_dict({**CONTRACT, "status": {"gateway": "gw-edge-a"}})
    assert not no_heartbeat.fresh(hb, timedelta(seconds=180))


@pytest.mark.parametrize("status,where", [
    ({"targets": {}}, "status.targets"),
    ({"targets": [{"kind": "peer", "gateway": "g", "state": "sideways"}]}, "status.targets[0].state"),
    ({"targets": [{"kind": "peer", "gateway": "g", "state": "up", "rttSeconds": "fast"}]},
     "status.targets[0].rttSeconds"),
    ({"heartbeatTime": "yesterday"}, "status.heartbeatTime"),
    ({"role": "boss"}, "status.role"),
])
def test_wrong_types_are_errors_naming_the_field(status: dict[str, object], where: str) -> None:
    with pytest.raises(PathReportParseError) as err:
        PathReport.from_dict({**CONTRACT, "status": status})
    assert err.value.path == where, err.value


def test_targets_of_an_unknown_kind_are_skipped() -> None:
    status = {**CONTRACT["status"], "targets": [{"kind": "uplink", "gateway": "g", "state": "down"},
                                                 *CONTRACT["status"]["targets"]]}  # type: ignore[dict-item]
    r = PathReport.from_dict({**CONTRACT, "status": status})
    assert [t.kind for t in r.status.targets] == ["gateway", "via"]


def _t(text: str) -> datetime:
    ts = parse_time(text)
    assert ts is not None
    return ts


def _report() -> PathReport:
    return PathReport("edge-a-2", "edge-a-2", PathReportStatus(
        gateway="gw-edge-a", role="member", heartbeat_time=_t("2026-12-01T12:00:05Z"), probe_interval_seconds=0.2,
        targets=(Target("gateway", "gw-edge-a", "edge-a-1", "240.0.11.11", "up", _t("2026-12-01T12:00:01Z"),
                        0.0004, 0.0),
                 Target("via", "gw-cloud", "cloud-1", "240.1.0.1", "down", _t("2026-12-01T12:00:03Z"), None, 1.0))))


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


@pytest.mark.parametrize("doc", [_report().to_dict(), CONTRACT])
def test_serialized_report_matches_the_crd_schema(doc: dict[str, Any]) -> None:
    doc = PathReport.from_dict(doc).to_dict()
    # nullable rttSeconds is an OpenAPI extension jsonschema does not know: drop nulls before validating.
    for t in doc["status"]["targets"]:
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


def test_stale_counts_heartbeats_and_the_writer_check() -> None:
    r = _report()
    hb = r.status.heartbeat_time
    assert hb is not None and format_time(hb) == "2026-12-01T12:00:05Z"
    minute = timedelta(seconds=60)
    assert not r.stale(hb + timedelta(seconds=179), minute) and r.stale(hb + timedelta(seconds=181), minute)
    assert r.heartbeat_age(hb + minute) == minute
    forged = PathReport("edge-a-2", "edge-a-1", r.status)
    assert not forged.well_formed and forged.stale(hb, minute)
    never = PathReport("n", "n")
    assert never.stale(hb, minute) and never.heartbeat_age(hb) is None  # never written: no evidence


def test_the_agents_edge_converts_epoch_seconds_in_whole_seconds() -> None:
    ts = from_epoch(1796126405.75)  # 2026-12-01T12:00:05.75Z
    assert ts == datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC) and format_time(ts) == "2026-12-01T12:00:05Z"
    assert to_epoch(ts) == 1796126405.0


def test_bodies_the_agent_sends() -> None:
    assert new_report_body("n1") == {"apiVersion": "health.raven-py.io/v1alpha1", "kind": "PathReport",
                                     "metadata": {"name": "n1"}, "spec": {"nodeName": "n1"}}
    patch = status_patch(_report().status)
    body = patch["status"]
    assert isinstance(body, dict)
    assert PathReportStatus.from_dict(body) == _report().status


def test_the_agents_heartbeat_and_the_controllers_stale_after_agree() -> None:
    """One notion of stale on both sides: 3 agent heartbeats (agent default) == the controller's default."""
    defaults = {f.name: f.default for cls in (AgentConfig, ControllerConfig) for f in dataclasses.fields(cls)}
    assert STALE_AFTER_HEARTBEATS * defaults["health_heartbeat"] == defaults["health_stale_after"]  # type: ignore[operator]


def test_the_kube_resource_names_the_models_group_version_and_plural() -> None:
    # raven/kube does not import raven/api (layering): its resource constant is spelled out and checked here.
    from raven.api import pathreport
    from raven.kube.client import PATHREPORTS

    assert (PATHREPORTS.group, PATHREPORTS.version, PATHREPORTS.plural) == (
        pathreport.GROUP, pathreport.VERSION, pathreport.PLURAL)
