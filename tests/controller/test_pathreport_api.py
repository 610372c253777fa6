"""The PathReport CRD from manifests/ is served: create with spec, write /status by merge patch, read it back typed."""

from __future__ import annotations

from raven.api.pathreport import PathReport, PathReportStatus, Target, new_report_body, parse_time, status_patch
from raven.kube.client import PATHREPORTS, KubeClient


async def test_create_then_status_patch_round_trips(kube: KubeClient) -> None:
    created = await kube.create(PATHREPORTS, new_report_body("edge-1"))
    assert created["spec"] == {"nodeName": "edge-1"}
    status = PathReportStatus("gw-a", "member", parse_time("2026-12-01T12:00:05Z"), 0.2,
                              (Target("gateway", "gw-a", "gw-node", "240.0.1.1", "up",
                                      parse_time("2026-12-01T12:00:01Z"), 0.0004, 0.0),))
    await kube.merge_patch(PATHREPORTS, "edge-1", status_patch(status), subresource="status")
    got = PathReport.from_dict(await kube.get(PATHREPORTS, "edge-1"))
    assert got.well_formed and got.status == status
    # A status patch on the main resource does not change status (the subresource is the only way in).
    await kube.merge_patch(PATHREPORTS, "edge-1", {"status": {"role": "gateway"}})
    assert PathReport.from_dict(await kube.get(PATHREPORTS, "edge-1")).status.role == "member"
