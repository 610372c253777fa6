"""The controller's Prometheus metrics (informer watch restarts live with the Informer)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconcile_duration = Histogram(
            "raven_controller_reconcile_duration_seconds",
            "Time to reconcile one Gateway (election, exposure, status write).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "raven_controller_reconcile_errors_total",
            "Reconciles that failed and were retried, by kind (api, network, unexpected).", ["kind"],
            registry=registry,
        )
        self.elections = Counter(
            "raven_controller_elections_total", "Endpoints that became active, per gateway.", ["gateway"],
            registry=registry,
        )
        self.failovers = Counter(
            "raven_controller_failovers_total", "Active endpoints lost (each starts a failover), per gateway.",
            ["gateway"], registry=registry,
        )
        self.gateway_failovers = Counter(
            "raven_gateway_failovers_total",
            "Active tunnel/proxy endpoints replaced, by reason (not_forwarding: the data plane's PathReports; "
            "not_ready: the Node's Ready condition; node_deleted, node_gone, spec_changed).", ["reason"],
            registry=registry,
        )
        self.active_tunnel_endpoints = Gauge(
            "raven_gateway_active_tunnel_endpoints",
            "Active tunnel endpoints of each Gateway, as the leader last decided (0: the pool is cut off).",
            ["gateway"], registry=registry,
        )
        self.queue_depth = Gauge(
            "raven_controller_queue_depth", "Gateways waiting to be reconciled.", registry=registry
        )
        self.status_writes = Counter(
            "raven_controller_status_writes_total", "Gateway status writes that succeeded.", registry=registry
        )
        self.status_write_errors = Counter(
            "raven_controller_status_write_errors_total", "Gateway status writes that failed, by reason.",
            ["reason"], registry=registry,
        )
        self.leader = Gauge(
            "raven_controller_leader", "1 while this replica holds the leader Lease (or runs alone).",
            registry=registry,
        )
        self.invalid_gateways = Gauge(
            "raven_controller_invalid_gateways", "Gateways whose spec fails validation.", registry=registry
        )
        self.rejected_nodes = Gauge(
            "raven_controller_rejected_nodes",
            "Nodes labelled for a Gateway but left out of every status (bad pod CIDR, see the Events).",
            registry=registry,
        )
