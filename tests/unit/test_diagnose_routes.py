"""`raven diagnose` plans with the next hops the node's agent published (routing by cost), so a detour is no drift."""

from __future__ import annotations

import asyncio
from typing import Any

from raven.diagnose import _published_routes
from raven.kube.client import ApiError


class ReportReader:
    """Answers `get` with one PathReport body (or a 404), as the API server would for the node's own report."""

    def __init__(self, body: dict[str, Any] | None) -> None:
        self.body = body

    async def get(self, res: object, name: str, namespace: str | None = None) -> dict[str, Any]:
        if self.body is None:
            raise ApiError(404, "NotFound", "pathreports edge-a-1 not found")
        return self.body


def report(paths: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "edge-a-1"}, "spec": {"nodeName": "edge-a-1"},
            "status": {"gateway": "gw-edge-a", "role": "gateway", "targets": [], "paths": paths}}


def test_published_paths_become_the_plans_next_hops() -> None:
    paths = [{"gateway": "gw-dc", "via": "gw-cloud", "cost": 6.0}, {"gateway": "gw-cloud", "via": "", "cost": 3.0}]
    choice = asyncio.run(_published_routes(ReportReader(report(paths)), "edge-a-1"))  # type: ignore[arg-type]
    assert choice is not None and choice.next_hop_map() == {"gw-dc": "gw-cloud", "gw-cloud": "gw-cloud"}


def test_no_report_or_no_paths_plans_the_default() -> None:
    assert asyncio.run(_published_routes(ReportReader(None), "edge-a-1")) is None  # type: ignore[arg-type]
    assert asyncio.run(_published_routes(ReportReader(report([])), "edge-a-1")) is None  # type: ignore[arg-type]
