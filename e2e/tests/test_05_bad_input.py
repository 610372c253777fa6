"""Scenario 5: bad input. An invalid Gateway, a node without pod CIDR, wrong credentials on one gateway (a PSK
mismatch, or a certificate from another CA): the rest of the cluster keeps full connectivity and each problem is
visible; the gateway with bad credentials is replaced by health failover."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.cluster import RavenCluster, metric
from raven.kube.client import EVENTS, GATEWAYS, NODES

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _condition(gw: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (gw.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def _events(rc: RavenCluster, reason: str, name: str) -> list[dict[str, Any]]:
    return [e for e in rc.list_objects(EVENTS, "default")
            if e.get("reason") == reason and (e.get("involvedObject") or {}).get("name") == name]


def test_invalid_gateway_is_reported_and_the_rest_keeps_working(rc: RavenCluster) -> None:
    bad = {"apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway", "metadata": {"name": "gw-bad"},
           "spec": {"endpoints": [
               {"nodeName": "edge-pub-2", "type": "tunnel", "port": 4500, "underNAT": False, "publicIP": "not-an-ip"},
               {"nodeName": "edge-pub-2", "type": "tunnel", "port": 4500}]}}
    rc.create(GATEWAYS, bad)
    try:
        rc.wait_for("Valid=False on gw-bad", lambda: (_condition(rc.get(GATEWAYS, "gw-bad"), "Valid") or {}).get(
            "status") == "False", timeout=30)
        cond = _condition(rc.get(GATEWAYS, "gw-bad"), "Valid")
        assert cond is not None and "publicIP" in cond.get("message", ""), cond
        leader = rc.leader()
        assert leader is not None
        assert metric(rc.metrics(f"controller/{leader}"), "raven_controller_invalid_gateways") >= 1
        rc.wait_for("InvalidGateway event", lambda: bool(_events(rc, "InvalidGateway", "gw-bad")), timeout=30)
        assert not rc.active_endpoints().get("gw-bad")
        assert rc.ping_matrix().green
    finally:
        rc.delete(GATEWAYS, "gw-bad")


def test_node_without_pod_cidr_is_reported_and_the_rest_keeps_working(rc: RavenCluster) -> None:
    ghost = {"apiVersion": "v1", "kind": "Node",
             "metadata": {"name": "edge-pub-ghost", "labels": {"raven.openyurt.io/gateway": "gw-edge-pub"}},
             "spec": {},
             "status": {"addresses": [{"type": "InternalIP", "address": "198.18.4.99"}],
                        "conditions": [{"type": "Ready", "status": "True"}]}}
    rc.create(NODES, ghost)
    try:
        rc.wait_for("NodeIncomplete event", lambda: any(
            "edge-pub-ghost" in e.get("message", "") for e in _events(rc, "NodeIncomplete", "gw-edge-pub")),
            timeout=30)
        status_nodes = (rc.get(GATEWAYS, "gw-edge-pub").get("status") or {}).get("nodes") or []
        for n in status_nodes:
            if n.get("nodeName") == "edge-pub-ghost":
                assert not n.get("subnets"), n
        assert rc.ping_matrix().green
    finally:
        rc.delete(NODES, "edge-pub-ghost")


def _break_credentials(rc: RavenCluster, gw: str) -> None:
    """PSK mode: a different key. Certificate mode: a key and certificate from a CA that is not the cluster's
    (self-consistent, so the agent takes it from disk and loads it)."""
    if rc.ipsec_auth == "psk":
        rc.write_psk(gw, "a-different-key-" + "x" * 24)
        return
    from raven.pki import new_ca, new_private_key, node_csr, sign_node

    rogue, key = new_ca(), new_private_key()
    d = rc.identity_dir(gw)
    for name, data in (("key.pem", key), ("cert.pem", sign_node(rogue, node_csr(key, gw), gw, 3600)),
                       ("ca.pem", rogue.cert_pem)):
        (d / name).write_bytes(data)
    (d / "key.pem").chmod(0o600)
    (d / "retired.key").unlink(missing_ok=True)


def _restore_credentials(rc: RavenCluster, gw: str) -> None:
    if rc.ipsec_auth == "psk":
        rc.write_psk(gw, rc.psk)
        return
    for f in rc.identity_dir(gw).iterdir():  # the agent requests a new certificate from the cluster's signer
        f.unlink()


def test_credential_mismatch_on_one_gateway_is_visible_and_the_pool_fails_over(rc: RavenCluster) -> None:
    """Wrong credentials on gw-edge-pub's active node: every peer's IKE fails (AUTH_FAILED, tunnel metrics down).
    That node is Ready but cannot forward, which health failover (the default) replaces: its peers lose it while
    they still reach each other (R3). Before health failover the pool stayed cut off until someone fixed the key;
    the rest of the cluster keeps its connectivity either way.

    The standby first says it is not ready, so the failure is seen for what it is (the bad key in use, the peers'
    tunnels down, nothing better to move to); once the standby is Ready the controller fails over to it."""
    gw = rc.active_gateway_node("gw-edge-pub")
    standby = rc.member_node("edge-pub")
    peers = {g: rc.active_gateway_node(g) for g in ("gw-cloud", "gw-edge-a", "gw-edge-b")}
    leader = rc.leader()
    assert leader is not None
    before = metric(rc.metrics(f"controller/{leader}"), "raven_gateway_failovers_total", reason="not_forwarding")
    rc.set_node_ready(standby, False)
    try:
        _break_credentials(rc, gw)
        rc.agents[gw].restart()
        rc.restart_charon(gw)  # existing SAs were authenticated with the old key: make every peer re-authenticate
        # Visible: peers' agents export the tunnel as down, their charon logs the failed authentication.
        for peer in peers.values():
            def down(peer: str = peer) -> bool:
                m = rc.metrics(f"agent/{peer}")
                up = {n for n, sa in rc.sas(peer).items() if sa["state"] == "ESTABLISHED"}
                return metric(m, "raven_agent_tunnel_ike_established", connection="raven-gw-edge-pub") == 0 \
                    and "raven-gw-edge-pub" not in up
            rc.wait_for(f"{peer}: tunnel to gw-edge-pub reported down", down, timeout=45)

        def logs() -> str:
            return "".join(rc.charon(p).read_log() for p in [gw, *peers.values()])
        # The restarted agent must come up and load its (bad) credentials before any authentication is tried.
        rc.wait_for("a failed authentication in the charon logs", lambda: "AUTH_FAILED" in logs(), timeout=60)
        # The controller saw it: not forwarding, and no candidate can do better while the standby is not ready.
        rc.wait_for("gw-edge-pub NoBetterCandidate", lambda: (_condition(rc.get(GATEWAYS, "gw-edge-pub"),
                    "TunnelsHealthy") or {}).get("reason") == "NoBetterCandidate", timeout=30)
        # Isolated meanwhile: every pod outside edge-pub still reaches every other pod outside edge-pub.
        others = [p for p in rc.pods() if rc.cl.nodes[rc.cl.pods[p[0]].node].pool != "edge-pub"]
        m = rc.ping_matrix(others)
        assert m.green, m.failed
        rc.set_node_ready(standby, True)
        # Replaced: the controller names the evidence, and edge-pub is reachable again through its new gateway.
        rc.wait_for(f"gw-edge-pub to fail over to {standby}",
                    lambda: rc.active_endpoints()["gw-edge-pub"] == [standby], timeout=30)
        def failover_events() -> list[str]:
            return [str(e.get("message", "")) for e in _events(rc, "GatewayNotForwarding", "gw-edge-pub")
                    if str(e.get("message", "")).startswith(f"gateway {gw} is not forwarding")]
        rc.wait_for("the GatewayNotForwarding Event", lambda: bool(failover_events()), timeout=30)
        assert "peers" in failover_events()[-1] and "lost the gateway since" in failover_events()[-1], failover_events()
        m2 = rc.metrics(f"controller/{leader}")
        assert metric(m2, "raven_gateway_failovers_total", reason="not_forwarding") == before + 1
        rc.wait_for("full matrix through the new gateway", lambda: rc.ping_matrix().green, timeout=60)
    finally:
        rc.set_node_ready(standby, True)
        _restore_credentials(rc, gw)
        rc.agents[gw].restart()
        rc.restart_charon(gw)  # forget the bad credentials the agent had loaded
