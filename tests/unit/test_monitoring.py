"""manifests/monitoring: the alerting rules pass `promtool check rules` and their unit tests (`promtool test
rules`), the dashboard is valid JSON whose queries (and the rules') name only metrics Raven registers. The e2e
lab checks the same names against the live /metrics of running agents and controllers, and fires an alert
through a real Prometheus (e2e/tests/test_09_monitoring.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from e2e.prometheus import (
    DASHBOARD,
    MONITORING,
    RULES,
    dashboard_queries,
    exported_metrics,
    referenced_metrics,
    rule_queries,
)
from raven.agent.reconciler import AgentMetrics
from raven.controller.metrics import ControllerMetrics
from raven.metrics import new_registry, readiness_gauge
from raven.pathhealth.metrics import ProbeMetrics, TunnelByteMetrics

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) not installed")


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_the_rules_pass_their_promtool_unit_tests() -> None:
    out = subprocess.run([str(PROMTOOL), "test", "rules", "raven-alerts.test.yaml"], cwd=MONITORING,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_a_broken_rule_fails_its_promtool_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: the tunnel alert waiting 3 minutes instead of 1 misses its expected firing."""
    broken = RULES.read_text().replace("for: 1m", "for: 3m", 1)
    (tmp_path / "raven-alerts.yaml").write_text(broken)
    shutil.copy(MONITORING / "raven-alerts.test.yaml", tmp_path / "raven-alerts.test.yaml")
    out = subprocess.run([str(PROMTOOL), "test", "rules", "raven-alerts.test.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "RavenTunnelDown" in out.stdout + out.stderr


def registered() -> set[str]:
    """Every metric name the agent's and the controller's metric classes register."""
    registry = new_registry("agent", "test")
    readiness_gauge(registry, lambda: True)
    AgentMetrics(registry)
    TunnelByteMetrics(registry)
    ProbeMetrics(registry)
    controller = CollectorRegistry()
    ControllerMetrics(controller)
    return exported_metrics(generate_latest(registry).decode()) | exported_metrics(generate_latest(controller).decode())


def test_the_dashboard_and_rules_name_only_registered_metrics() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "raven-overview" and doc["panels"]
    assert all(t.get("datasource", {}).get("uid") == "${datasource}" for p in doc["panels"] for t in p["targets"])
    named = referenced_metrics(dashboard_queries() + rule_queries())
    assert {"raven_tunnel_up", "raven_tunnel_rtt_seconds", "raven_tunnel_loss_ratio",
            "raven_gateway_failovers_total", "raven_ready", "raven_gateway_active_tunnel_endpoints"} <= named
    assert named <= registered(), sorted(named - registered())


def test_metric_names_are_read_from_queries_not_from_labels() -> None:
    assert referenced_metrics(['sum by (raven_x) (rate(raven_a_total{l="raven_b"}[5m])) and on(raven_y) raven_c']) \
        == {"raven_a_total", "raven_c"}
    assert exported_metrics("# TYPE raven_a_total counter\n# TYPE raven_h histogram\nraven_g 1\n") >= {
        "raven_a_total", "raven_h_bucket", "raven_h_count", "raven_g"}


def test_raven_ready_is_what_readyz_answers_at_scrape_time() -> None:
    from raven.health import CheckResult, Health

    health = Health()
    state = {"ok": True}
    health.add_readiness_check("x", lambda: CheckResult(state["ok"], "" if state["ok"] else "not yet"))
    registry = CollectorRegistry()
    readiness_gauge(registry, lambda: health.ready)
    assert registry.get_sample_value("raven_ready") == 1
    state["ok"] = False
    assert registry.get_sample_value("raven_ready") == 0
    state["ok"] = True
    health.mark_dead("informer", "boom")  # a dead task: /readyz fails too
    assert registry.get_sample_value("raven_ready") == 0
