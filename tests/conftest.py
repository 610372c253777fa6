"""Shared fixtures: the in-process test Kubernetes API server (e2e.apiserver).

`apiserver` starts a fresh server on 127.0.0.1 with a free port (TLS, bearer token) and yields the
`ApiServer` handle: `.kubeconfig` (path), `.url`, `.token`, `.state` (the state, for white-box checks)
and the fault-injection methods (`drop_watches`, `compact`, `set_history_window`, `fail_next`,
`set_latency`, `stop_accepting`/`resume_accepting`/`outage`, the `bookmark_interval` attribute) and
introspection (`request_counts`, `open_watches`). `kube_api` is a kubernetes_asyncio ApiClient configured
from that kubeconfig. See e2e/README.md for what the server implements.

Root-only tests skip when not run as root, which is fine on a laptop and never in CI: with `CI=true`
in the environment, a skipped test that needs root (marked `root`, or skipped with a reason that says
it needs root or network namespaces) is reported as a failure, so CI cannot go green without the
data-plane tests. e2e/tests/conftest.py uses the same hook.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import pytest

from e2e.apiserver import ApiServer

ROOT_SKIP = re.compile(r"\bneeds? root\b|network namespace", re.IGNORECASE)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                            pytest.TestReport]:
    report = yield
    if report.skipped and os.environ.get("CI", "").lower() == "true":
        reason = _skip_reason(report)
        marked = item.get_closest_marker("root") is not None and os.geteuid() != 0
        if marked or ROOT_SKIP.search(reason):
            report.outcome = "failed"
            report.longrepr = (f"CI=true but this root-only test was skipped ({reason.removeprefix('Skipped: ')}): "
                               "CI must run as root so the data-plane tests run")
    return report


@pytest.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[ApiServer]:
    server = ApiServer("127.0.0.1", 0)
    await server.start()
    server.write_kubeconfig(tmp_path / "kubeconfig")
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def kube_api(apiserver: ApiServer) -> AsyncIterator[object]:
    from kubernetes_asyncio import client, config

    cfg = client.Configuration()
    await config.load_kube_config(config_file=apiserver.kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)
    try:
        yield api
    finally:
        await api.close()
