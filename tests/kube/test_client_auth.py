"""raven.kube's transport: kubernetes_asyncio without its generated code, with the library's auth intact.

- importing raven.kube.client loads no generated model or API class, yet a program that uses them (the
  tests do) still finds them on `kubernetes_asyncio.client`;
- an IPsec agent loads no cryptography (only certificate mode and the WireGuard driver's key code do);
- in-cluster configuration re-reads a rotated (bound service-account) token file;
- a kubeconfig whose user is an exec credential plugin authenticates with the plugin's token.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from e2e.apiserver import ApiServer
from raven.kube.client import NODES, ApiError, KubeClient, new_api_client


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_raven_kube_imports_no_generated_code() -> None:
    out = _run("""
        import sys
        import raven.agent.app, raven.controller.app  # they import kubernetes_asyncio.client first
        import raven.kube.client
        loaded = [m for m in sys.modules if m.startswith("kubernetes_asyncio.")]
        print(len(loaded), any(".models." in m for m in loaded), any(".client.api." in m for m in loaded),
              any(m.startswith("urllib3.") for m in sys.modules))
    """)
    count, models, apis, urllib3 = out.split()
    assert (models, apis, urllib3) == ("False", "False", "False"), out
    # configuration, api_client, rest, exceptions and the config loaders: a dozen, not ~1,500.
    assert int(count) < 30, out


def test_an_ipsec_agent_loads_no_cryptography() -> None:
    # cryptography is ~7 MiB of an agent's RSS (aim 60 MiB): only certificate mode (raven.agent.identity, imported
    # when used) and the WireGuard driver's key functions load it.
    out = _run("""
        import sys
        import raven.cli, raven.agent.app
        print("cryptography" in sys.modules)
        from raven.dataplane.wireguard import pair_psk
        pair_psk("secret", "a", "b")
        print("cryptography" in sys.modules)
    """)
    assert out.split() == ["False", "True"], out


def test_generated_code_still_there_for_who_asks() -> None:
    out = _run("""
        import raven.kube.client
        import kubernetes_asyncio
        from kubernetes_asyncio import client, config, watch
        from kubernetes_asyncio.client.api_client import ApiClient
        assert client.ApiClient is ApiClient and config.load_kube_config and watch.Watch
        import urllib3
        assert urllib3.PoolManager and urllib3.util.make_headers(basic_auth="a:b")
        print(client.CoreV1Api.__name__, client.V1ObjectMeta.__name__, client.models.V1Node.__name__,
              kubernetes_asyncio.__version__ == client.__version__, "V1Pod" in client.__all__)
    """)
    assert out.split() == ["CoreV1Api", "V1ObjectMeta", "V1Node", "True", "True"]


async def _nodes(kc: KubeClient) -> int:
    return len((await kc.list(NODES))["items"])


async def test_in_cluster_token_rotation_is_read(
    apiserver: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes_asyncio.config import incluster_config

    token = tmp_path / "token"
    token.write_text(apiserver.token)
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", apiserver.cert_file)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", apiserver.advertise)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(apiserver.port))
    # The library re-reads the file when a minute has passed since the last read; here, at every request.
    monkeypatch.setattr(incluster_config, "TOKEN_REFRESH_PERIOD", incluster_config.TOKEN_REFRESH_PERIOD * 0)
    kc = KubeClient(await new_api_client(None))
    try:
        assert await _nodes(kc) == 0
        # The server stops accepting the old token before the kubelet has written the new one...
        old, apiserver.token = apiserver.token, "rotated-" + apiserver.token
        users = getattr(apiserver, "users", None)  # a server that maps tokens to users (main's) revokes this way
        if isinstance(users, dict):
            users[apiserver.token] = users.pop(old)
        with pytest.raises(ApiError) as err:
            await _nodes(kc)
        assert err.value.status == 401
        # ...and once the file holds it, the next request carries it.
        token.write_text(apiserver.token)
        assert await _nodes(kc) == 0
    finally:
        await kc.close()


async def test_exec_credential_plugin(apiserver: ApiServer, tmp_path: Path) -> None:
    cred = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
            "status": {"token": apiserver.token}}
    cfg = apiserver.kubeconfig_dict()
    cfg["users"] = [{"name": "raven-test", "user": {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
        "args": ["-c", f"print({json.dumps(json.dumps(cred))})"], "interactiveMode": "Never"}}}]
    path = tmp_path / "exec-kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    kc = KubeClient(await new_api_client(str(path)))
    try:
        assert await _nodes(kc) == 0
    finally:
        await kc.close()
