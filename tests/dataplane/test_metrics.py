"""Data-plane metrics: what the reports and tunnel states turn into on a Prometheus registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from raven.dataplane.ipsec import TunnelState
from raven.dataplane.metrics import DataplaneMetrics
from raven.dataplane.report import ApplyError, ApplyReport


def tunnel(name: str, child: str | None = "INSTALLED", bytes_in: int = 10) -> TunnelState:
    return TunnelState(name, "ESTABLISHED", 1, "192.0.2.2", 4500, child, 2, bytes_in, 20, 1, 2, True)


def test_reports_and_tunnel_states_are_exported() -> None:
    reg = CollectorRegistry()
    m = DataplaneMetrics(reg)
    report = ApplyReport()
    report.writes["route"] = 7
    report.errors.append(ApplyError("route", "create", "10.0.0.0/24", "File exists"))
    m.record_kernel(report)
    m.record_kernel(ApplyReport())  # converged: nothing added
    m.set_tunnels([tunnel("raven-gb"), tunnel("raven-gc", child=None)])
    text = generate_latest(reg).decode()
    assert 'raven_agent_kernel_writes_total{kind="route"} 7.0' in text
    assert 'raven_agent_kernel_writes_total{kind="fdb"} 0.0' in text
    assert 'raven_agent_kernel_write_errors_total{kind="route"} 1.0' in text
    assert 'raven_agent_tunnel_child_installed{connection="raven-gc"} 0.0' in text
    assert 'raven_agent_tunnel_child_bytes{connection="raven-gb",direction="in"} 10.0' in text
    # A tunnel that disappears stops being exported.
    m.set_tunnels([tunnel("raven-gb", bytes_in=99)])
    text = generate_latest(reg).decode()
    assert 'connection="raven-gc"' not in text
    assert 'raven_agent_tunnel_child_bytes{connection="raven-gb",direction="in"} 99.0' in text
