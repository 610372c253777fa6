"""iptables failing (missing from the image, a broken backend) costs the MSS clamp only: devices, addresses
and routes are still applied, and the clamp failure is reported as an iptables error every pass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from e2e.netlab import Lab
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.mssclamp import MssClamp
from raven.dataplane.state import Address, NodeNetwork, Route, Rule, VxlanLink
from tests.dataplane.conftest import ip_json

pytestmark = pytest.mark.root

STATE = NodeNetwork(
    links=frozenset({VxlanLink("raven1", 201, 4473, 1350, "0e:72:f1:00:00:01", "241.0.0.1", None)}),
    addresses=frozenset({Address("raven1", "241.0.0.1/32")}),
    routes=frozenset({Route("10.2.0.0/24", 9027, "raven1", "241.0.0.2", 1350)}),
    rules=frozenset({Rule(9027, 9027)}),
    mss_clamp_ifnames=frozenset({"raven1"}),
)


async def test_routes_are_applied_when_iptables_cannot_run(lab: Lab) -> None:
    ns = lab.netns("nip")
    applier = KernelApplier(netns=ns.name)
    applier._mss = MssClamp(applier.owner.mss_chain, ns.name, iptables="iptables-not-installed")
    try:
        report = await applier.reconcile(STATE)
    finally:
        await applier.close()
    routes = ip_json(ns, "-4", "route", "show", "table", "9027")
    assert [r["dst"] for r in routes] == ["10.2.0.0/24"]
    assert report.errors and {e.kind for e in report.errors} == {"iptables"}


async def test_a_hung_iptables_costs_the_clamp_only(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """iptables that never returns (a stuck xtables lock) is killed after the clamp's timeout and reported;
    the rest of the pass is applied. Without the timeout turned into an error, the pass itself would fail."""
    for name in ("iptables", "iptables-save", "iptables-restore"):
        script = tmp_path / name
        script.write_text("#!/bin/sh\nexec sleep 60\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    ns = lab.netns("nhung")
    applier = KernelApplier(netns=ns.name)
    applier._mss = MssClamp(applier.owner.mss_chain, ns.name, timeout=0.3)
    try:
        report = await applier.reconcile(STATE)
    finally:
        await applier.close()
    routes = ip_json(ns, "-4", "route", "show", "table", "9027")
    assert [r["dst"] for r in routes] == ["10.2.0.0/24"]
    assert report.errors and {e.kind for e in report.errors} == {"iptables"}
    assert all("did not finish within 0.3 s" in e.reason for e in report.errors), report.errors
