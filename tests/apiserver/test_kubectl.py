"""The real kubectl (an independent client) against the test API server.

kubectl talks to the server exactly as to a cluster: TLS + bearer token from the written kubeconfig,
legacy discovery (it asks for aggregated discovery first and falls back), /openapi/v3 to confirm
server-side field validation before `apply`, Table output for `get`, merge patches for custom resources
and strategic merge patches (computed from its compiled-in types) for built-ins.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from e2e.apiserver import ApiServer

from .crds import gateway, gateway_crd

REPO = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")
# kubectl comes with the machine image (ENVIRONMENT.md), not from `make install`: on a machine without it
# these tests fail and say so, rather than let the suite pass without them. RAVEN_SKIP_KUBECTL=1 opts out.
pytestmark = pytest.mark.skipif(KUBECTL is None and os.environ.get("RAVEN_SKIP_KUBECTL") == "1",
                                reason="kubectl is not installed and RAVEN_SKIP_KUBECTL=1")


@pytest.fixture(autouse=True)
def kubectl_installed() -> None:
    if KUBECTL is None:
        pytest.fail("kubectl is not on PATH (set RAVEN_SKIP_KUBECTL=1 to skip these tests knowingly)")


def versioned(v: str) -> str:
    assert KUBECTL is not None
    return str(Path(os.path.realpath(KUBECTL)).parent / f"kubectl.{v}")


class Kubectl:
    def __init__(self, server: ApiServer, cache: Path, binary: str | None = None) -> None:
        self.server = server
        self.cache = cache
        self.binary = binary or KUBECTL or "kubectl"

    async def run(self, *args: str, stdin: str | None = None, check: bool = True) -> tuple[int, str, str]:
        # Asynchronous on purpose: the server runs in this event loop.
        proc = await asyncio.create_subprocess_exec(
            self.binary, "--kubeconfig", str(self.server.kubeconfig), "--cache-dir", str(self.cache), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
        rc = proc.returncode or 0
        if check and rc != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed rc={rc}\nstdout={out.decode()}\n"
                                 f"stderr={err.decode()}")
        return rc, out.decode(), err.decode()

    async def __call__(self, *args: str, stdin: str | None = None) -> str:
        return (await self.run(*args, stdin=stdin))[1]


@pytest.fixture
def kubectl(apiserver: ApiServer, tmp_path: Path) -> Kubectl:
    return Kubectl(apiserver, tmp_path / "kcache")


def node_yaml(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "nodeInfo": {"kubeletVersion": "v1.31.0"},
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}})


def rows(table: str) -> list[list[str]]:
    """Split kubectl's aligned output by the header's column positions (cells may be empty)."""
    lines = table.rstrip().splitlines()
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return [[line[a:b].strip() for a, b in zip(starts, bounds, strict=True)] for line in lines]


@pytest.mark.parametrize("version", ["dispatcher", "1.27", "1.33"])
async def test_kubectl_crd_then_objects_printer_columns_label_status_patch_and_delete(
        apiserver: ApiServer, tmp_path: Path, version: str):
    k = Kubectl(apiserver, tmp_path / "kcache", None if version == "dispatcher" else versioned(version))
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(gateway_crd()))
    gws = [gateway("gw-cloud", exposeType="PublicIP", tunnelConfig={"Replicas": 2},
                   endpoints=[{"nodeName": "n1", "type": "tunnel", "port": 4500}]),
           gateway("gw-edge", tunnelConfig={}, endpoints=[{"nodeName": "n2", "type": "tunnel"}])]
    (tmp_path / "gws.yaml").write_text(yaml.safe_dump_all(gws))
    assert "created" in await k("apply", "-f", str(tmp_path / "crd.yaml"))
    await k("wait", "--for", "condition=established", "--timeout=10s", "crd/gateways.raven.openyurt.io")
    out = await k("apply", "-f", str(tmp_path / "gws.yaml"))
    assert "gateway.raven.openyurt.io/gw-cloud created" in out and "gateway.raven.openyurt.io/gw-edge created" in out

    table = rows(await k("get", "gw"))
    assert table[0] == ["NAME", "EXPOSETYPE", "ACTIVE", "REPLICAS", "AGE"]
    by_name = {r[0]: r for r in table[1:]}
    assert by_name["gw-cloud"][1:4] == ["PublicIP", "", "2"]
    assert by_name["gw-edge"][1:4] == ["", "", "1"]  # Replicas comes from the schema default

    await k("apply", "-f", "-", stdin=node_yaml("n1"))
    await k("label", "node", "n1", "raven.openyurt.io/gateway=gw-cloud")
    assert (await k("get", "nodes", "-l", "raven.openyurt.io/gateway=gw-cloud", "-o", "name")).split() == [
        "node/n1"]
    assert rows(await k("get", "node", "n1"))[1][1] == "Ready"

    await k("annotate", "gw", "gw-cloud", "raven.openyurt.io/note=primary")
    await k("label", "gw", "gw-cloud", "tier=cloud")
    got = json.loads(await k("get", "gw", "-l", "tier=cloud", "-o", "json"))
    assert [i["metadata"]["annotations"]["raven.openyurt.io/note"] for i in got["items"]] == ["primary"]

    await k("patch", "gw", "gw-cloud", "--subresource=status", "--type=merge", "-p",
            json.dumps({"status": {"activeEndpoints": [{"nodeName": "n1", "type": "tunnel", "port": 4500}]}}))
    assert rows(await k("get", "gw", "gw-cloud"))[1][2] == "n1"
    # Through the main resource, status is ignored.
    await k("patch", "gw", "gw-cloud", "--type=merge", "-p", json.dumps({"status": {"activeEndpoints": []}}))
    got = json.loads(await k("get", "gw", "gw-cloud", "-o", "json"))
    assert got["status"]["activeEndpoints"][0]["nodeName"] == "n1"

    rc, _, err = await k.run("patch", "gw", "gw-cloud", "--type=merge", "-p",
                             json.dumps({"spec": {"exposeType": "Bogus"}}), check=False)
    assert rc != 0 and "Unsupported value" in err and "spec.exposeType" in err

    assert 'gateway.raven.openyurt.io "gw-edge" deleted' in await k("delete", "gw", "gw-edge")
    assert [r[0] for r in rows(await k("get", "gw"))[1:]] == ["gw-cloud"]
    await k("delete", "-f", str(tmp_path / "crd.yaml"))
    rc, _, err = await k.run("get", "gw", check=False)
    assert rc != 0


async def test_kubectl_apply_three_way_merge_removes_fields_dropped_from_the_manifest(kubectl: Kubectl,
                                                                                     tmp_path: Path):
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(gateway_crd()))
    await kubectl("apply", "-f", str(tmp_path / "crd.yaml"))
    await kubectl("apply", "-f", "-", stdin=yaml.safe_dump(gateway("g", exposeType="PublicIP", endpoints=[
        {"nodeName": "n1", "type": "tunnel"}])))
    await kubectl("apply", "-f", "-", stdin=yaml.safe_dump(gateway("g", endpoints=[
        {"nodeName": "n2", "type": "tunnel"}])))
    got = json.loads(await kubectl("get", "gw", "g", "-o", "json"))
    assert "exposeType" not in got["spec"] and got["spec"]["endpoints"][0]["nodeName"] == "n2"
    out = await kubectl("apply", "-f", "-", stdin=yaml.safe_dump(gateway("g", endpoints=[
        {"nodeName": "n2", "type": "tunnel"}])))
    assert "unchanged" in out
    # Built-in kinds: strategic merge patch computed by kubectl from its own types.
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"},
          "data": {"a": "1", "b": "2"}}
    await kubectl("apply", "-f", "-", stdin=yaml.safe_dump(cm))
    cm["data"] = {"a": "3"}
    await kubectl("apply", "-f", "-", stdin=yaml.safe_dump(cm))
    got = json.loads(await kubectl("get", "cm", "c", "-o", "json"))
    assert got["data"] == {"a": "3"}


async def test_kubectl_server_side_apply_strict_validation_and_explain(kubectl: Kubectl, tmp_path: Path):
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(gateway_crd()))
    await kubectl("apply", "--server-side", "-f", str(tmp_path / "crd.yaml"))
    bad = gateway("g", exposeType="PublicIP", mystery=1)
    rc, _, err = await kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert rc != 0 and 'unknown field "spec.mystery"' in err
    explain = await kubectl("explain", "gateway.spec.endpoints")
    assert "nodeName" in explain and "port" in explain


async def test_kubectl_applies_the_project_manifests_then_example_gateways(kubectl: Kubectl):
    manifests = REPO / "manifests"
    assert (manifests / "Kustomization").exists() or (manifests / "kustomization.yaml").exists()
    out = await kubectl("apply", "-f", str(manifests))
    assert "customresourcedefinition.apiextensions.k8s.io/gateways.raven.openyurt.io created" in out
    await kubectl("wait", "--for", "condition=established", "--timeout=10s", "crd/gateways.raven.openyurt.io")
    examples = manifests / "examples"
    out = await kubectl("apply", "-f", str(examples))
    assert out.count("created") == len([p for p in examples.iterdir() if p.suffix in (".yaml", ".yml")])
    names = (await kubectl("get", "gw", "-o", "name")).split()
    assert names and all(n.startswith("gateway.raven.openyurt.io/") for n in names)
    again = await kubectl("apply", "-f", str(manifests))
    assert "created" not in again and "configured" not in again
    via_kustomize = await kubectl("apply", "-k", str(manifests))
    assert "unchanged" in via_kustomize and "created" not in via_kustomize


async def test_kubectl_get_watch_streams_table_rows_as_objects_change(kubectl: Kubectl, tmp_path: Path):
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(gateway_crd()))
    await kubectl("apply", "-f", str(tmp_path / "crd.yaml"))
    await kubectl("apply", "-f", "-", stdin=yaml.safe_dump(gateway("g", exposeType="PublicIP")))
    proc = await asyncio.create_subprocess_exec(
        kubectl.binary, "--kubeconfig", str(kubectl.server.kubeconfig), "--cache-dir", str(kubectl.cache),
        "get", "gw", "-w", "--output-watch-events", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode()]
        lines.append((await asyncio.wait_for(proc.stdout.readline(), 20)).decode())
        await kubectl("patch", "gw", "g", "--type=merge", "-p", json.dumps({"spec": {"exposeType": "LoadBalancer"}}))
        lines.append((await asyncio.wait_for(proc.stdout.readline(), 20)).decode())
        await kubectl("delete", "gw", "g")
        lines.append((await asyncio.wait_for(proc.stdout.readline(), 20)).decode())
    finally:
        proc.terminate()
        await proc.wait()
    assert lines[0].split()[:3] == ["EVENT", "NAME", "EXPOSETYPE"]
    assert lines[1].split()[:3] == ["ADDED", "g", "PublicIP"]
    assert lines[2].split()[:3] == ["MODIFIED", "g", "LoadBalancer"]
    assert lines[3].split()[:2] == ["DELETED", "g"]


async def test_kubectl_apply_strategic_merge_keeps_list_elements_by_merge_key(kubectl: Kubectl):
    def deployment(image: str, env: list[dict[str, str]]) -> str:
        return yaml.safe_dump({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}}, "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "main", "image": image, "env": env},
                                        {"name": "side", "image": "side:1"}]}}}})

    await kubectl("apply", "-f", "-", stdin=deployment("main:1", [{"name": "A", "value": "1"}]))
    # A field added by someone else to a list element must survive the next apply (merge by name).
    await kubectl("patch", "deployment", "d", "-p", json.dumps({"spec": {"template": {"spec": {"containers": [
        {"name": "side", "imagePullPolicy": "Always"}]}}}}))
    await kubectl("apply", "-f", "-", stdin=deployment("main:2", [{"name": "B", "value": "2"}]))
    got = json.loads(await kubectl("get", "deployment", "d", "-o", "json"))
    containers = {c["name"]: c for c in got["spec"]["template"]["spec"]["containers"]}
    assert [c["name"] for c in got["spec"]["template"]["spec"]["containers"]] == ["main", "side"]
    assert containers["main"]["image"] == "main:2" and containers["main"]["env"] == [{"name": "B", "value": "2"}]
    assert containers["side"]["imagePullPolicy"] == "Always"
    assert got["metadata"]["generation"] == 3


async def test_kubectl_get_gw_shows_the_active_endpoint_tunnel_health_and_peers_up(apiserver: ApiServer,
                                                                                    kubectl: Kubectl) -> None:
    """The shipped CRD's printer columns (manifests/01-crd-gateways.yaml), as the real kubectl prints them."""
    await kubectl("apply", "-f", str(REPO / "manifests" / "01-crd-gateways.yaml"))
    await kubectl("wait", "--for", "condition=established", "--timeout=10s", "crd/gateways.raven.openyurt.io")
    await kubectl("apply", "-f", "-", stdin=yaml.safe_dump(gateway(
        "gw-edge", endpoints=[{"nodeName": "e-1", "type": "tunnel", "port": 4500},
                              {"nodeName": "e-2", "type": "tunnel", "port": 4500}])))
    status = {"activeEndpoints": [{"nodeName": "e-2", "type": "tunnel", "port": 4500}],
              "conditions": [{"type": "TunnelsHealthy", "status": "True", "reason": "FailedOver",
                              "message": "e-1 failed over at 12:00:01: 3 of 3 peers lost the gateway since 12:00:01"}],
              "pathHealth": {"peersUp": 2, "peers": 3, "held": [
                  {"nodeName": "e-1", "since": "2026-12-01T12:00:01Z", "evidence": "3 of 3 peers lost the gateway"}]}}
    await kubectl("patch", "gw", "gw-edge", "--subresource=status", "--type=merge", "-p",
                  json.dumps({"status": status}))
    table = rows(await kubectl("get", "gw"))
    assert table[0] == ["NAME", "ACTIVEENDPOINT", "EXPOSETYPE", "TUNNELS", "HEALTH", "PEERSUP", "PEERS", "AGE"]
    assert table[1][:7] == ["gw-edge", "e-2", "", "True", "FailedOver", "2", "3"]
    # The additive status field is kept by the schema (not pruned).
    got = json.loads(await kubectl("get", "gw", "gw-edge", "-o", "json"))
    assert got["status"]["pathHealth"]["held"][0]["nodeName"] == "e-1"
