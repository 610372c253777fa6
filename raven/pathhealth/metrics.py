"""Prometheus metrics of path health (agent), registered on a registry the caller owns.

- raven_tunnel_up{kind,gateway,address}: 1 while the target is up or degraded, 0 when down or unknown
- raven_tunnel_rtt_seconds{kind,gateway,address}: the RTT estimate (EWMA)
- raven_tunnel_loss_ratio{kind,gateway,address}: loss over the last window
- raven_probe_replies_total{kind}, raven_probe_lost_total{kind}, raven_probe_state_changes_total{kind,to}
- raven_pathreport_writes_total{result}
- raven_tunnel_rx_bytes_total{connection}, raven_tunnel_tx_bytes_total{connection}: from charon's CHILD_SA
  counters (list-sas), accumulated across rekeys (a counter that went down means a new SA: its value is added).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from raven.api.pathreport import TARGET_KINDS
from raven.dataplane.ipsec import TunnelState
from raven.dataplane.metrics import DataplaneMetrics
from raven.pathhealth.core import TargetHealth
from raven.pathhealth.targets import ProbeTarget

LABELS = ["kind", "gateway", "address"]


class ProbeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge("raven_tunnel_up", "1 while the probed path is up or degraded", LABELS, registry=registry)
        self.rtt = Gauge("raven_tunnel_rtt_seconds", "RTT estimate (EWMA) of the probed path", LABELS,
                         registry=registry)
        self.loss = Gauge("raven_tunnel_loss_ratio", "Probe loss over the last window", LABELS, registry=registry)
        self.replies = Counter("raven_probe_replies", "Probes answered", ["kind"], registry=registry)
        self.lost = Counter("raven_probe_lost", "Probes lost (no reply within the timeout)", ["kind"],
                            registry=registry)
        self.state_changes = Counter("raven_probe_state_changes", "Path state changes", ["kind", "to"],
                                     registry=registry)
        self.report_writes = Counter("raven_pathreport_writes", "PathReport writes, by result", ["result"],
                                     registry=registry)
        for kind in TARGET_KINDS:
            self.replies.labels(kind)
            self.lost.labels(kind)
        for result in ("ok", "error"):
            self.report_writes.labels(result)

    def record(self, t: ProbeTarget, h: TargetHealth, replied: bool) -> None:
        labels = (t.kind, t.gateway, t.address)
        (self.replies if replied else self.lost).labels(t.kind).inc()
        self.up.labels(*labels).set(1 if h.state in ("up", "degraded") else 0)
        if h.rtt is not None:
            self.rtt.labels(*labels).set(h.rtt)
        self.loss.labels(*labels).set(h.loss_ratio)

    def forget(self, t: ProbeTarget) -> None:
        for g in (self.up, self.rtt, self.loss):
            try:
                g.remove(t.kind, t.gateway, t.address)
            except KeyError:
                pass


class TunnelByteMetrics(DataplaneMetrics):
    """DataplaneMetrics plus raven_tunnel_{rx,tx}_bytes_total, fed by the same list-sas reads."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.rx = Counter("raven_tunnel_rx_bytes", "Bytes received through the tunnel (CHILD_SA bytes-in)",
                          ["connection"], registry=registry)
        self.tx = Counter("raven_tunnel_tx_bytes", "Bytes sent through the tunnel (CHILD_SA bytes-out)",
                          ["connection"], registry=registry)
        self._last: dict[str, tuple[int, int]] = {}

    def set_tunnels(self, states: Iterable[TunnelState]) -> None:
        states = list(states)
        super().set_tunnels(states)
        seen: set[str] = set()
        for t in states:
            if t.name in seen:
                continue
            seen.add(t.name)
            last_in, last_out = self._last.get(t.name, (0, 0))
            self.rx.labels(t.name).inc(t.bytes_in - last_in if t.bytes_in >= last_in else t.bytes_in)
            self.tx.labels(t.name).inc(t.bytes_out - last_out if t.bytes_out >= last_out else t.bytes_out)
            self._last[t.name] = (t.bytes_in, t.bytes_out)
        for gone in set(self._last) - seen:
            del self._last[gone]  # the counter stays (a _total never goes backwards); a new SA counts from 0
