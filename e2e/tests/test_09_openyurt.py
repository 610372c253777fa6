"""An OpenYurt Raven cluster swapped for ours: its objects, as its charts render them, work unchanged.

Before anything of ours starts, the API server holds what an OpenYurt install left: `kube-system/raven-cfg`,
`kube-system/raven-agent-config` and `kube-system/raven-agent-secret` (charts/raven-agent/templates/config.yaml
with the chart's values, a generated PSK), Gateways as OpenYurt's webhook leaves them (nodeSelector defaulted,
ports set, a proxy endpoint), and a Node annotated with extra-allowed-source-cidrs. The migration guide's copy
step is done too (raven-system/raven-openyurt-agent-config and raven-agent-secret, mounted into the agents as the
DaemonSet does: a directory of keys and the PSK file). Then: the matrix goes green; the status reads as OpenYurt
clients read it; the annotated range is reachable from other pools; enable-l3-tunnel "false" tears every tunnel
down (no SA, no cross-pool route, agents healthy) and "true" brings the green matrix back.

Its own cluster, prefix ``rvoy`` (the session cluster holds RAVEN_E2E_PREFIX's), removed at the end."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import RavenCluster
from e2e.netlab import Netns, find_leftovers
from e2e.probe import ping
from raven.kube.client import CONFIGMAPS, GATEWAYS, NODES, SECRETS, Resource
from raven.openyurt_config import CHART_DEFAULTS

from .conftest import MEASUREMENTS

pytestmark = [pytest.mark.root, pytest.mark.slow]
PREFIX = "rvoy"
KS = "kube-system"
NAMESPACES = Resource("", "v1", "namespaces")
EXTRA = "raven.openyurt.io/extra-allowed-source-cidrs"
EXTRA_NODE, EXTRA_RANGE, EXTRA_ADDR = "edge-pub-2", "10.13.200.0/24", "10.13.200.1"

AGENT_CONFIG = CHART_DEFAULTS  # raven-agent-config as OpenYurt's chart renders it


def _cm(name: str, ns: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}


def _install_openyurt_objects(rc: RavenCluster, psk: str) -> None:
    def create(res: Resource, obj: dict[str, Any]) -> None:
        ns = obj["metadata"].get("namespace")
        rc.api.api(lambda c: c.create(res, obj, ns))

    # What OpenYurt's charts rendered in kube-system.
    create(CONFIGMAPS, _cm("raven-cfg", KS, {"enable-l3-tunnel": "true", "enable-l7-proxy": "true"}))
    create(CONFIGMAPS, _cm("raven-agent-config", KS, dict(AGENT_CONFIG)))
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "raven-agent-secret", "namespace": KS},
              "data": {"vpn-connection-psk": base64.b64encode(psk.encode()).decode()}}
    create(SECRETS, secret)
    # The migration guide's copy into raven-system (a pod reads only its own namespace's objects).
    create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "raven-system"}})
    src = rc.get(CONFIGMAPS, "raven-agent-config", KS)
    create(CONFIGMAPS, _cm("raven-openyurt-agent-config", "raven-system", dict(src["data"])))
    s = rc.get(SECRETS, "raven-agent-secret", KS)
    create(SECRETS, {**secret, "metadata": {"name": "raven-agent-secret", "namespace": "raven-system"},
                     "data": dict(s["data"])})
    # Gateways as OpenYurt's mutating webhook left them: nodeSelector matchLabels set; gw-cloud with a proxy.
    for name in rc.gateways():
        patch: dict[str, Any] = {"spec": {"nodeSelector": {"matchLabels": {"raven.openyurt.io/gateway": name}},
                                          "proxyConfig": {"Replicas": 1}}}
        if name == "gw-cloud":
            eps = rc.get(GATEWAYS, name)["spec"]["endpoints"]
            patch["spec"]["endpoints"] = [*eps, {"nodeName": "cloud-2", "type": "proxy", "port": 10262,
                                                 "underNAT": False, "publicIP": "198.18.1.12"}]
        rc.patch(GATEWAYS, name, patch)
    # A host-network secondary range on one edge node, routed across pools like its pod CIDR.
    rc.patch(NODES, EXTRA_NODE, {"metadata": {"annotations": {EXTRA: EXTRA_RANGE}}})
    rc.cl.nodes[EXTRA_NODE].netns.ip("addr", "add", f"{EXTRA_ADDR}/32", "dev", "lo")


@pytest.fixture(scope="module")
def oy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RavenCluster]:
    psk = secrets.token_hex(64)  # as the chart's README says: openssl rand -hex 64
    mount: Path = tmp_path_factory.mktemp("openyurt-agent-config")  # the kubelet's view of the copied ConfigMap
    for key, value in AGENT_CONFIG.items():
        (mount / key).write_text(value)
    cluster = RavenCluster("default", prefix=PREFIX, ipsec_auth="psk",
                           agent_args=["--openyurt-agent-config", str(mount)],
                           before_start=lambda rc: _install_openyurt_objects(rc, psk))
    cluster.psk = psk  # every node's PSK file holds the Secret's key, as the DaemonSet mounts it
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close(keep_logs=request.session.testsfailed > 0)
    assert not any(find_leftovers(PREFIX).values()), find_leftovers(PREFIX)


def _cross_pool(rc: RavenCluster, a: str, b: str) -> bool:
    return rc.cl.pool_of(rc.cl.pods[a].node).name != rc.cl.pool_of(rc.cl.pods[b].node).name


def _answers(ns: Netns, addr: str) -> bool:
    return ping(ns, addr, count=1).ok


def _tunnel_actives(rc: RavenCluster) -> dict[str, list[str]]:
    return {name: [e["nodeName"] for e in (g.get("status") or {}).get("activeEndpoints") or []
                   if e.get("type") == "tunnel"] for name, g in rc.gateways().items()}


def test_openyurt_objects_reach_a_green_matrix(oy: RavenCluster) -> None:
    oy.wait_converged(timeout=240)
    MEASUREMENTS["openyurt_objects_green_matrix_s"] = round(oy.elapsed(), 2)
    cloud = oy.get(GATEWAYS, "gw-cloud")["status"]
    assert [(e["type"], e["port"], e["config"]) for e in cloud["activeEndpoints"]] == [
        ("tunnel", 4500, {"enable-l3-tunnel": "true"}), ("proxy", 10262, {"enable-l7-proxy": "true"})]
    assert [c["reason"] for c in cloud["conditions"] if c["type"] == "Valid"] == ["SpecValid"]
    # The agents took OpenYurt's keys and said so (libreswan -> ipsec; the proxy keys unused).
    logs = oy.agents["cloud-1"].logs()
    assert "vpn-driver='libreswan' applied as --vpn-driver ipsec" in logs
    assert "proxy-external-addr: not used" in logs
    # The annotated range is listed for its node and reachable from every other pool.
    edge_pub = oy.get(GATEWAYS, "gw-edge-pub")["status"]["nodes"]
    assert EXTRA_RANGE in next(n["subnets"] for n in edge_pub if n["nodeName"] == EXTRA_NODE)
    for src in ("cloud-1", "edge-a-1", "edge-b-2"):
        ns = next(p for p in oy.cl.pods.values() if p.node == src).netns
        oy.wait_for(f"{src}'s pod reaches {EXTRA_ADDR}", partial(_answers, ns, EXTRA_ADDR), timeout=60)


def test_enable_l3_tunnel_false_tears_tunnels_down_and_true_brings_them_back(oy: RavenCluster) -> None:
    oy.wait_converged(timeout=240)

    def set_tunnel(value: str) -> None:
        oy.api.api(lambda c: c.merge_patch(CONFIGMAPS, "raven-cfg", {"data": {"enable-l3-tunnel": value}}, KS))

    set_tunnel("false")
    try:
        t = oy.wait_for("no active tunnel endpoint anywhere", lambda: not any(_tunnel_actives(oy).values()),
                        timeout=30)
        # The proxy endpoint stays elected (its own switch is still "true").
        assert [e["type"] for e in oy.get(GATEWAYS, "gw-cloud")["status"]["activeEndpoints"]] == ["proxy"]
        # Cleanly: every IKE SA closed, no cross-pool route left, every agent alive and ready.
        oy.wait_for("every IKE SA closed", lambda: all(not oy.sas(n) for n in oy.registered), timeout=60)
        pods = oy.pods()

        def cross_pool_silent() -> bool:
            results = oy.ping_matrix(pods, wait=0.5).results
            return all(not r.ok for (a, b), r in results.items() if _cross_pool(oy, a, b))

        oy.wait_for("no cross-pool pod pair answers", cross_pool_silent, timeout=60)
        m = oy.ping_matrix(pods)
        same_pool = {k: r for k, r in m.results.items() if not _cross_pool(oy, *k)}
        assert same_pool and all(r.ok for r in same_pool.values()), "traffic inside a pool must not be touched"
        for node in sorted(oy.registered):
            ready, why = oy.agent_ready(node)
            assert ready, f"agent on {node} not ready with tunnels off: {why}"
            assert oy.agents[node].alive()
        MEASUREMENTS["openyurt_l3_tunnel_off_withdrawn_s"] = round(t, 2)
    finally:
        set_tunnel("true")
    m = oy.wait_converged(timeout=240)
    assert m.green
    assert all(_tunnel_actives(oy).values())
