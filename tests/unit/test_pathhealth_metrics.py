"""raven_tunnel_{rx,tx}_bytes_total from charon's CHILD_SA counters (which restart with every new SA), and the
per-target gauges."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from raven.dataplane.ipsec import TunnelState
from raven.pathhealth.core import HealthParams, initial, observe
from raven.pathhealth.metrics import ProbeMetrics, TunnelByteMetrics
from raven.pathhealth.targets import ProbeTarget


def sa(name: str, rx: int, tx: int) -> TunnelState:
    return TunnelState(name, "ESTABLISHED", 1, "198.18.1.11", 4500, "INSTALLED", 1, rx, tx, 0, 0, True)


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_byte_counters_accumulate_across_a_rekey() -> None:
    reg = CollectorRegistry()
    m = TunnelByteMetrics(reg)
    m.set_tunnels([sa("raven-gw-b", 100, 50)])
    m.set_tunnels([sa("raven-gw-b", 300, 80)])
    assert value(reg, "raven_tunnel_rx_bytes_total", connection="raven-gw-b") == 300
    m.set_tunnels([sa("raven-gw-b", 20, 5)])  # a new CHILD_SA: its counters start again
    assert value(reg, "raven_tunnel_rx_bytes_total", connection="raven-gw-b") == 320
    assert value(reg, "raven_tunnel_tx_bytes_total", connection="raven-gw-b") == 85
    # The inherited gauges are still fed.
    assert value(reg, "raven_agent_tunnel_child_bytes", connection="raven-gw-b", direction="in") == 20


def test_target_gauges_follow_the_health() -> None:
    reg = CollectorRegistry()
    m = ProbeMetrics(reg)
    t = ProbeTarget("peer", "gw-b", "b-1", "241.0.0.1", "241.0.0.2")
    h = initial(0.0)
    for i in range(3):
        h = observe(h, 0.002, float(i), HealthParams())
        m.record(t, h, True)
    labels = {"kind": "peer", "gateway": "gw-b", "address": "241.0.0.2"}
    assert value(reg, "raven_tunnel_up", **labels) == 1
    assert value(reg, "raven_tunnel_rtt_seconds", **labels) == h.rtt
    assert value(reg, "raven_probe_replies_total", kind="peer") == 3
    m.forget(t)
    assert value(reg, "raven_tunnel_up", **labels) is None
