"""Agent mode, the wiring: informers, the plan inputs, the underlay lookup, the kernel applier and the
IPsec driver joined into one reconcile loop.

`agent_main(cfg, api)` is what `raven --mode=agent` runs under the supervisor. `plan_config()` maps the
agent's configuration to the plan's parameters. The plan's inputs are cached in `inputs.PlanInputs`
(pure); the one piece of I/O the plan depends on, finding the underlay interface and its MTU from this
node's InternalIP (netlink), is done here, before each plan, by `UnderlayFollower`. `--cleanup` is
`cleanup.agent_cleanup`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

from kubernetes_asyncio.client import ApiClient

from raven.agent.inputs import PlanInputs
from raven.agent.plan import PlanConfig, PlanResult
from raven.agent.reconciler import AgentMetrics, Reconciler
from raven.agent.underlay import Underlay, detect_underlay
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.config import AgentConfig, carry_plan_settings
from raven.dataplane.ipsec import IPsecDriver
from raven.dataplane.kernel import KernelApplier, Ownership
from raven.kube.client import GATEWAYS, NODES, KubeClient
from raven.kube.informer import Informer
from raven.kube.typed import TypedClient, TypedEvent, TypedInformer
from raven.log import kv
from raven.pathhealth.core import HealthParams
from raven.pathhealth.metrics import ProbeMetrics, TunnelByteMetrics
from raven.pathhealth.monitor import PathMonitor
from raven.pathhealth.report import KubeReportStore, ReportWriter, WritePolicy
from raven.runtime import Runtime

log = logging.getLogger(__name__)


def plan_config(cfg: AgentConfig, underlay: Underlay | None) -> PlanConfig:
    """The plan's parameters: the agent's (validated) plan settings plus what was detected on the node."""
    base = carry_plan_settings(cfg, PlanConfig())
    if underlay is None:
        return base
    return replace(base, detected_underlay_mtu=underlay.mtu, underlay_ifname=underlay.ifname)


def ownership(cfg: PlanConfig) -> Ownership:
    return Ownership(
        rt_proto=cfg.route_protocol,
        tables=frozenset({cfg.table, cfg.return_table}),
        rule_priorities=frozenset({cfg.rule_priority, cfg.return_rule_priority}),
        link_names=frozenset({cfg.intra_pool_link, cfg.inter_gateway_link}),
    )


class UnderlayFollower:
    """The underlay (interface, MTU) of this node's InternalIP, looked up again only when that IP changes."""

    def __init__(self) -> None:
        self._node_ip: str | None = None
        self.underlay: Underlay | None = None

    async def follow(self, node: Node | None) -> Underlay | None:
        if node is not None and node.internal_ip and node.internal_ip != self._node_ip:
            self.underlay = await detect_underlay(node.internal_ip)
            # Only once the lookup worked: a failed one (raised) is tried again by the next plan.
            self._node_ip = node.internal_ip
            u = self.underlay
            log.info("underlay", extra=kv(node_ip=node.internal_ip, ifname=u.ifname if u else None,
                                          mtu=u.mtu if u else None))
        return self.underlay


def plan_with_underlay(
    cfg: AgentConfig, inputs: PlanInputs, underlay: UnderlayFollower
) -> Callable[[], Awaitable[PlanResult]]:
    """The reconciler's plan step: follow the underlay (I/O), then plan from the cached inputs (pure)."""

    async def plan_fn() -> PlanResult:
        return inputs.plan(plan_config(cfg, await underlay.follow(inputs.node())))

    return plan_fn


def health_params(cfg: AgentConfig) -> HealthParams:
    return HealthParams(down_after=cfg.health_down_after, up_after=cfg.health_up_after, window=cfg.health_window,
                        degraded_loss=cfg.health_degraded_loss, degraded_rtt=cfg.health_degraded_rtt,
                        rtt_change=cfg.health_rtt_change, rtt_change_min=cfg.health_rtt_change_min)


def with_probes(plan_fn: Callable[[], Awaitable[PlanResult]], monitor: PathMonitor
                ) -> Callable[[], Awaitable[PlanResult]]:
    """The plan step, also telling the path-health monitor what this plan probes."""

    async def plan_and_probe() -> PlanResult:
        result = await plan_fn()
        monitor.update_plan(result.role, result.gateway, result.probes)
        return result

    return plan_and_probe


def path_health(cfg: AgentConfig, client: KubeClient, rt: Runtime) -> tuple[PathMonitor, ReportWriter] | None:
    """The path-health monitor and its PathReport writer (None with --no-health-probes)."""
    if not cfg.health_probes:
        return None
    metrics = ProbeMetrics(rt.registry)
    monitor = PathMonitor(cfg.node_name, health_params(cfg), cfg.health_interval, cfg.health_timeout,
                          metrics=metrics)

    def on_write(result: str) -> None:
        metrics.report_writes.labels(result).inc()

    writer = ReportWriter(cfg.node_name, KubeReportStore(TypedClient(client)),
                          WritePolicy(cfg.health_min_write_interval, cfg.health_heartbeat,
                                      cfg.health_rtt_write_interval), monitor.status, on_write)
    return monitor, writer


def agent_main(cfg: AgentConfig, api: ApiClient) -> Callable[[Runtime], Coroutine[Any, Any, None]]:
    """The agent's main coroutine over `api` (from `new_api_client`, loaded before anything starts)."""

    async def main(rt: Runtime) -> None:
        client = KubeClient(api)
        kernel = KernelApplier(ownership(plan_config(cfg, None)))
        vpn = IPsecDriver(cfg.vici_socket, cfg.psk) if cfg.vpn_driver == "ipsec" else None
        log.info("agent starting", extra=kv(node=cfg.node_name, vpn_driver=cfg.vpn_driver, vici=cfg.vici_socket,
                                            psk_source=cfg.psk_source))
        try:
            gateways = TypedInformer(Informer(client, GATEWAYS, "gateways", rt.registry), Gateway.from_dict)
            # Only this node's facts feed the plan: caching every Node would cost memory on big clusters.
            nodes = TypedInformer(
                Informer(client, NODES, "nodes", rt.registry, field_selector=f"metadata.name={cfg.node_name}"),
                Node.from_dict,
            )
            inputs = PlanInputs(cfg.node_name, gateways, nodes)
            plan_fn = plan_with_underlay(cfg, inputs, UnderlayFollower())
            health = path_health(cfg, client, rt)
            if health is not None:
                plan_fn = with_probes(plan_fn, health[0])
            reconciler = Reconciler(
                plan_fn, inputs.synced, kernel, vpn,
                AgentMetrics(rt.registry), TunnelByteMetrics(rt.registry), resync_period=cfg.resync_period,
            )

            def on_gateway(ev: TypedEvent[Gateway]) -> None:
                if inputs.on_gateway(ev):
                    reconciler.trigger(f"gateway/{ev.name}")

            def on_node(ev: TypedEvent[Node]) -> None:
                if inputs.on_node(ev):
                    reconciler.trigger(f"node/{ev.name}")

            gateways.add_handler(on_gateway)
            nodes.add_handler(on_node)
            rt.supervisor.spawn("informer-gateways", gateways.run())
            rt.supervisor.spawn("informer-nodes", nodes.run())
            rt.health.add_readiness_check("informer-gateways", gateways.check)
            rt.health.add_readiness_check("informer-nodes", nodes.check)
            rt.health.add_readiness_check("reconciled", reconciler.ready)
            await gateways.wait_synced()
            await nodes.wait_synced()
            reconciler.trigger("synced")
            if health is not None:
                # Probe results are data (logged, metered, published), never readiness: no check registered.
                rt.supervisor.spawn("path-health", health[0].run(health[1]))
            await reconciler.run()
        finally:
            # The data plane stays as it is: an agent restart must not drop traffic.
            await kernel.close()
            if vpn is not None:
                await vpn.close()
            await client.close()

    return main
