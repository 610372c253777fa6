"""The real `raven status` / `raven graph` processes against the test API server: what they read and print."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import yaml

from e2e.apiserver.server import ApiServer
from raven.kube.client import KubeClient, new_api_client
from tests.benchmarks.bench_status import load

ROOT = Path(__file__).resolve().parents[1]
RAVEN = str(Path(sys.executable).parent / "raven")
SCHEMA = json.loads((ROOT / "docs" / "raven-status.schema.json").read_text())


def dead_kubeconfig(kubeconfig: str, path: Path) -> str:
    """The server's kubeconfig pointed at a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kc = yaml.safe_load(Path(kubeconfig).read_text())
    kc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(kc))
    return str(path)


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(RAVEN, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_makes_one_list_per_kind_and_prints_every_pair(apiserver: ApiServer) -> None:
    assert apiserver.kubeconfig is not None
    client = KubeClient(await new_api_client(apiserver.kubeconfig))
    try:
        await load(client, 6, nodes_per=2, public=2)  # gw-0000, gw-0001 exposed; four gateways under NAT
    finally:
        await client.close()
    before = Counter(apiserver.request_counts)
    rc, out, err = await run("status", "-o", "json", "--kubeconfig", apiserver.kubeconfig)
    assert rc == 0, err
    calls = Counter(apiserver.request_counts)
    calls.subtract(before)
    assert {k: n for k, n in calls.items() if n} == {("list", "gateways"): 1, ("list", "nodes"): 1,
                                                     ("list", "pathreports"): 1, ("get", "configmaps"): 1}
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert [p["gateway"] for p in doc["pools"]] == [f"gw-{g:04d}" for g in range(6)]
    kinds = Counter((p["kind"], p["via"]) for p in doc["pairs"])
    assert kinds == {("direct", None): 1 + 2 * 4, ("relay", "gw-0000"): 6}  # the oldest exposed gateway relays
    assert all(p["health"]["state"] == "up" for p in doc["pairs"])
    assert doc["settingsSource"].startswith("defaults (ConfigMap raven-system/raven-agent-config: 404")

    rc, text, err = await run("status", "--kubeconfig", apiserver.kubeconfig)
    assert rc == 0 and "\033[" not in text, err
    assert text.startswith("6 gateways (6 active), 12 nodes; 15 pairs: 9 direct, 6 relayed, 0 unreachable")
    rc, dot, err = await run("graph", "--kubeconfig", apiserver.kubeconfig)
    assert rc == 0 and dot.count(" -- ") == 15 + 6, err  # every pair, and each pool's member to its gateway


async def test_an_unreachable_api_server_is_one_line_and_exit_1(tmp_path: Path, apiserver: ApiServer) -> None:
    assert apiserver.kubeconfig is not None
    rc, out, err = await run("status", "--kubeconfig", dead_kubeconfig(apiserver.kubeconfig, tmp_path / "dead"))
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("raven: error: "), err
