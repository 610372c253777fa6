"""Shared fixtures: the in-process test Kubernetes API server (e2e.apiserver).

`apiserver` starts a fresh server on 127.0.0.1 with a free port (TLS, bearer token) and yields the
`ApiServer` handle: `.kubeconfig` (path), `.url`, `.token`, `.cluster` (the state, for white-box checks)
and the fault-injection methods (`drop_watches`, `compact`, `set_history_window`, `fail_next`,
`set_latency`, `stop_accepting`/`resume_accepting`/`outage`, the `bookmark_interval` attribute) and
introspection (`request_counts`, `open_watches`). `kube_api` is a kubernetes_asyncio ApiClient configured
from that kubeconfig. See e2e/README.md for what the server implements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from e2e.apiserver import ApiServer


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
