"""Prometheus metrics of the data plane, registered on a registry the caller owns.

    m = DataplaneMetrics(registry)
    m.record_kernel(report)        # after KernelApplier.reconcile/cleanup
    m.record_vici(report)          # after IPsecDriver.reconcile/cleanup
    m.set_tunnels(states)          # after IPsecDriver.states()

Exported (label values are the write kinds of `raven.dataplane.report.KINDS` and the VICI ops of
`raven.dataplane.ipsec.VICI_OPS`):

- raven_agent_kernel_writes_total{kind}, raven_agent_kernel_write_errors_total{kind}
- raven_agent_vici_operations_total{op}, raven_agent_vici_errors_total{op}
- raven_agent_tunnel_ike_established{connection}, raven_agent_tunnel_child_installed{connection} (0/1)
- raven_agent_tunnel_child_bytes{connection,direction}, raven_agent_tunnel_child_packets{connection,direction}
  (gauges: charon's CHILD_SA counters restart with every rekey)
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from raven.dataplane.ipsec import VICI_OPS, TunnelState
from raven.dataplane.report import KINDS, ApplyReport


class DataplaneMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.kernel_writes = Counter(
            "raven_agent_kernel_writes", "Kernel objects written, by kind", ["kind"], registry=registry
        )
        self.kernel_errors = Counter(
            "raven_agent_kernel_write_errors", "Kernel writes that failed, by kind", ["kind"], registry=registry
        )
        self.vici_ops = Counter(
            "raven_agent_vici_operations", "VICI write operations, by op", ["op"], registry=registry
        )
        self.vici_errors = Counter(
            "raven_agent_vici_errors", "VICI operations that failed, by op", ["op"], registry=registry
        )
        self.ike_established = Gauge(
            "raven_agent_tunnel_ike_established", "1 when the IKE_SA is ESTABLISHED", ["connection"], registry=registry
        )
        self.child_installed = Gauge(
            "raven_agent_tunnel_child_installed", "1 when the CHILD_SA is INSTALLED", ["connection"], registry=registry
        )
        self.child_bytes = Gauge(
            "raven_agent_tunnel_child_bytes",
            "Bytes through the CHILD_SA",
            ["connection", "direction"],
            registry=registry,
        )
        self.child_packets = Gauge(
            "raven_agent_tunnel_child_packets",
            "Packets through the CHILD_SA",
            ["connection", "direction"],
            registry=registry,
        )
        # Export every label value from the start (a zero is information too).
        for kind in KINDS:
            self.kernel_writes.labels(kind)
            self.kernel_errors.labels(kind)
        for op in VICI_OPS:
            self.vici_ops.labels(op)
            self.vici_errors.labels(op)
        self._tunnels: set[str] = set()

    def record_kernel(self, report: ApplyReport) -> None:
        for kind, n in report.writes.items():
            if n:
                self.kernel_writes.labels(kind).inc(n)
        for e in report.errors:
            self.kernel_errors.labels(e.kind).inc()

    def record_vici(self, report: ApplyReport) -> None:
        for op, n in report.writes.items():
            if n:
                self.vici_ops.labels(op).inc(n)
        for e in report.errors:
            self.vici_errors.labels(e.op).inc()

    def set_tunnels(self, states: Iterable[TunnelState]) -> None:
        seen: set[str] = set()
        for t in states:
            if t.name in seen:
                continue  # a duplicate IKE_SA during a replace: the first (lowest id) counts
            seen.add(t.name)
            self.ike_established.labels(t.name).set(1 if t.ike_state == "ESTABLISHED" else 0)
            self.child_installed.labels(t.name).set(1 if t.child_state == "INSTALLED" else 0)
            self.child_bytes.labels(t.name, "in").set(t.bytes_in)
            self.child_bytes.labels(t.name, "out").set(t.bytes_out)
            self.child_packets.labels(t.name, "in").set(t.packets_in)
            self.child_packets.labels(t.name, "out").set(t.packets_out)
        for gone in self._tunnels - seen:
            self.ike_established.remove(gone)
            self.child_installed.remove(gone)
            for direction in ("in", "out"):
                self.child_bytes.remove(gone, direction)
                self.child_packets.remove(gone, direction)
        self._tunnels = seen
