"""deploy/wireguard: the install with --vpn-driver=wireguard, rendered by kustomize (kubectl's) and validated."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from raven.cli import build_parser

OVERLAY = Path(__file__).resolve().parents[2] / "deploy" / "wireguard"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, check=True, timeout=60)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_every_rendered_object_validates_strictly(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        kubernetes_validate.validate(doc, "1.33", strict=True)


def test_agent_runs_wireguard_without_charon_and_keeps_its_key_on_the_node(rendered: list[dict[str, Any]]) -> None:
    ds = _one(rendered, "DaemonSet", "raven-agent")
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]  # no charon container
    args = agent["args"]
    ns = build_parser().parse_args(args)  # every flag is one the agent knows
    assert ns.vpn_driver == "wireguard"
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    key_dir = str(Path(ns.wireguard_key_file).parent)
    assert volumes[mounts[key_dir]]["hostPath"]["path"] == key_dir  # survives pod restarts
    assert volumes[mounts["/dev/net/tun"]]["hostPath"]["type"] == "CharDevice"
    assert "NET_ADMIN" in agent["securityContext"]["capabilities"]["add"]
    assert any(a.startswith("--psk-file=") for a in args)  # the cluster secret the pair keys derive from


RBAC_KINDS = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def test_the_overlay_adds_no_rbac_and_agents_cannot_write_gateways(rendered: list[dict[str, Any]]) -> None:
    """The key goes into the agent's own PathReport: the overlay's RBAC is the base install's, exactly, and no
    rule bound to the agent lets it write a Gateway (a node that could would redirect any pool)."""
    base = yaml.safe_load_all((OVERLAY.parents[1] / "manifests" / "02-rbac.yaml").read_text())
    want = sorted((d["kind"], d["metadata"]["name"]) for d in base if d and d["kind"] in RBAC_KINDS)
    got = sorted((d["kind"], d["metadata"]["name"]) for d in rendered if d["kind"] in RBAC_KINDS)
    assert got == want
    bound = {d["roleRef"]["name"] for d in rendered if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and {"kind": "ServiceAccount", "name": "raven-agent", "namespace": "raven-system"} in d["subjects"]}
    writes = {"create", "update", "patch", "delete", "deletecollection", "*"}
    for role in (d for d in rendered if d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"] in bound):
        for rule in role["rules"]:
            if {"raven.openyurt.io", "*"} & set(rule["apiGroups"]):
                assert not writes & set(rule["verbs"]), (role["metadata"]["name"], rule)
