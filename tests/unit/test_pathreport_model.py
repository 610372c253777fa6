"""The PathReport model (raven/api/pathreport.py): the contract's shape, a lossless round trip, strict types,
the writer check and staleness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from raven.api.pathreport import PathReport, PathReportParseError

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
