"""`python -m e2e.apiserver`: writes a kubeconfig, serves a real client, exits cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client, config


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
async def test_standalone_server_writes_kubeconfig_serves_and_stops_on_sigterm(tmp_path: Path, host: str):
    kubeconfig = tmp_path / "kc.yaml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "e2e.apiserver", "--listen", f"{host}:0", "--kubeconfig", str(kubeconfig),
        "--token", "s3cret", "-v", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        # Start-up (imports, a fresh certificate from openssl) can take seconds on a loaded machine.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.returncode is None:
            if kubeconfig.exists():
                break
            await asyncio.sleep(0.025)
        kc = yaml.safe_load(kubeconfig.read_text())
        assert [u["user"]["token"] for u in kc["users"]] == ["s3cret"]
        assert [c["cluster"]["server"].rsplit(":", 1)[0] for c in kc["clusters"]] == [f"https://{host}"]
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        async with client.ApiClient(cfg) as api:
            v1 = client.CoreV1Api(api)
            await v1.create_namespaced_config_map("default", {"metadata": {"name": "x"}})
            assert [c.metadata.name for c in (await v1.list_namespaced_config_map("default")).items] == ["x"]
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0
        log = out.decode()
        assert "method=POST path=/api/v1/namespaces/default/configmaps status=201" in log  # debug request log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
