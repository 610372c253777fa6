"""Scenario 9b: monitoring (issue 18). A real Prometheus scrapes every agent and controller of the session
cluster; the Grafana dashboard's and the alerting rules' queries name only metrics those processes export, and
Prometheus accepts each of them; a tunnel broken on a NAT router fires RavenTunnelDown through Prometheus's
HTTP API (rules loaded with `for:` shortened), and the alert clears once the tunnel is back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.cluster import AGENT_HTTP, RavenCluster
from e2e.prometheus import PrometheusServer, dashboard_queries, exported_metrics, referenced_metrics, rule_queries

from .conftest import MEASUREMENTS

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def prom(rc: RavenCluster) -> Iterator[PrometheusServer]:
    with PrometheusServer(rc, rule_for="3s") as server:
        server.wait_targets_up()
        yield server


def test_prometheus_scrapes_every_agent_and_controller(rc: RavenCluster, prom: PrometheusServer) -> None:
    up = {r["metric"].get("node") or r["metric"]["instance"]: r["value"][1] for r in prom.query("up")}
    assert {n for n in rc.agents} <= set(up) and all(v == "1" for v in up.values()), up
    ready = prom.query('raven_ready and on(instance) raven_build_info{mode="agent"}')
    assert len(ready) == len(rc.agents) and all(r["value"][1] == "1" for r in ready), ready


def test_dashboard_and_rules_name_only_metrics_the_processes_export(rc: RavenCluster, prom: PrometheusServer) -> None:
    exported: set[str] = set()
    for node in rc.agents:
        code, body = rc.http_get(rc.cl.nodes[node].netns, AGENT_HTTP, "/metrics")
        assert code == 200
        exported |= exported_metrics(body)
    for i in range(len(rc.controllers)):
        code, body = rc.http_get(rc.cl.control_plane, rc.controller_http(i), "/metrics")
        assert code == 200
        exported |= exported_metrics(body)
    queries = dashboard_queries() + rule_queries()
    named = referenced_metrics(queries)
    assert len(named) >= 15, named
    assert named <= exported, f"not exported by any agent or controller: {sorted(named - exported)}"
    for q in dashboard_queries():  # Prometheus parses and runs each one (400 on a syntax error)
        prom.query(q.replace("$__rate_interval", "1m"))


def _block_ike(rc: RavenCluster, pool: str, add: bool) -> None:
    router = rc.cl.pools[pool].router
    for direction in ("--dports", "--sports"):
        router.run(["iptables", "-I" if add else "-D", "FORWARD", "-p", "udp", "-m", "multiport", direction,
                    "500,4500", "-j", "DROP"])


def test_a_broken_tunnel_fires_its_alert_through_prometheus(rc: RavenCluster, prom: PrometheusServer) -> None:
    assert not prom.alerts("RavenTunnelDown", state="firing"), "a healthy cluster fires no tunnel alert"
    _block_ike(rc, "edge-b", add=True)  # gw-edge-b's IKE and ESP-in-UDP dropped on its WAN uplink
    try:
        took = prom.wait_alert("RavenTunnelDown", timeout=60, gateway="gw-edge-b")
        firing = prom.alerts("RavenTunnelDown", gateway="gw-edge-b")
        assert all(a["labels"]["severity"] == "critical" for a in firing)
        assert "gw-edge-b" in firing[0]["annotations"]["summary"]
    finally:
        _block_ike(rc, "edge-b", add=False)
    MEASUREMENTS["prometheus_tunnel_down_alert_s"] = round(took, 2)
    rc.wait_for("the alert resolved", lambda: not prom.alerts("RavenTunnelDown", state="firing")
                and not prom.alerts("RavenTunnelDown", state="pending"), timeout=120, interval=0.5)
