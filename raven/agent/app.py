"""Agent mode: wire informers, the pure plan, the kernel applier and the IPsec driver into one loop.

`agent_main(cfg, api)` is what `raven --mode=agent` runs under the supervisor; `agent_cleanup(cfg)` is
`raven --mode=agent --cleanup`: remove every kernel object and VICI connection Raven owns, then exit.

Inputs are cached so a converged resync costs a kernel read and a diff, not a re-plan: Gateways are
parsed once per resourceVersion, and the plan is recomputed only when an informer delivered a change
that can affect it (any Gateway change; a change to this node's own Node facts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from kubernetes_asyncio.client import ApiClient

from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.agent.reconciler import AgentMetrics, Reconciler
from raven.api.gateway import Gateway, GatewayParseError
from raven.api.node import Node
from raven.config import AgentConfig
from raven.dataplane.ipsec import CharonUnavailable, IPsecDriver
from raven.dataplane.kernel import KernelApplier, KernelError, Ownership
from raven.dataplane.metrics import DataplaneMetrics
from raven.dataplane.underlay import Underlay, detect_underlay
from raven.kube.client import GATEWAYS, NODES, KubeClient
from raven.kube.informer import Informer, InformerEvent, rv_of
from raven.log import kv
from raven.runtime import Runtime

log = logging.getLogger(__name__)


def plan_config(cfg: AgentConfig, underlay: Underlay | None) -> PlanConfig:
    base = PlanConfig(
        vxlan_vni=cfg.vxlan_vni,
        vxlan_port=cfg.vxlan_port,
        tunnel_vni=cfg.tunnel_vni,
        tunnel_port=cfg.tunnel_port,
        overlay_cidr=cfg.overlay_cidr,
        tunnel_cidr=cfg.tunnel_cidr,
        ike_proposals=cfg.ike_proposals,
        esp_proposals=cfg.esp_proposals,
        tunnel_device_mtu=cfg.tunnel_device_mtu,
    )
    if cfg.underlay_mtu is not None:
        base = replace(base, underlay_mtu=cfg.underlay_mtu)
    elif underlay is not None:
        base = replace(base, underlay_mtu=underlay.mtu)
    if underlay is not None:
        base = replace(base, underlay_ifname=underlay.ifname)
    return base


def ownership(cfg: PlanConfig) -> Ownership:
    return Ownership(
        rt_proto=cfg.route_protocol,
        tables=frozenset({cfg.table, cfg.return_table}),
        rule_priorities=frozenset({cfg.rule_priority, cfg.return_rule_priority}),
        link_names=frozenset({cfg.intra_pool_link, cfg.inter_gateway_link}),
    )


class ClusterView:
    """The plan's inputs, kept up to date by informer events, and the cached plan built from them."""

    def __init__(self, cfg: AgentConfig, gateways: Informer, nodes: Informer) -> None:
        self._cfg = cfg
        self._gateways = gateways
        self._nodes = nodes
        # name -> (resourceVersion seen, the version to plan with, whether that rv parsed). An unparsable
        # edit keeps the last good version: bad input must not tear down a working pool's tunnels.
        self._parsed: dict[str, tuple[str, Gateway | None, bool]] = {}
        self._generation = 0
        self._planned_generation = -1
        self._last: PlanResult | None = None
        self._node_ip: str | None = None
        self._underlay: Underlay | None = None

    def synced(self) -> bool:
        return self._gateways.synced and self._nodes.synced

    def on_gateway(self, event: InformerEvent) -> bool:
        self._generation += 1
        return True

    def on_node(self, event: InformerEvent) -> bool:
        """Only this node's own facts feed the plan; other nodes' heartbeats must not cause work."""
        if event.name != self._cfg.node_name:
            return False
        old = Node.from_dict(event.old) if event.old is not None else None
        new = Node.from_dict(event.obj) if event.type != "DELETED" else None
        if old is not None and new is not None and _plan_facts(old) == _plan_facts(new):
            return False
        self._generation += 1
        return True

    def _gateway_list(self, problems: list[str]) -> list[Gateway]:
        out: list[Gateway] = []
        seen: set[str] = set()
        for name, obj in self._gateways.cache.items():
            seen.add(name)
            rv = rv_of(obj)
            cached = self._parsed.get(name)
            if cached is None or cached[0] != rv:
                try:
                    cached = (rv, Gateway.from_dict(obj), True)
                except GatewayParseError as exc:
                    last_good = cached[1] if cached is not None else None
                    log.warning("malformed gateway", extra=kv(gateway=name, rv=rv, error=str(exc),
                                                             planned_from="last good version" if last_good
                                                             else "nothing (skipped)"))
                    cached = (rv, last_good, False)
                self._parsed[name] = cached
            _rv, gateway, parsed = cached
            if gateway is None:
                problems.append(f"gateway {name}: malformed object skipped")
                continue
            if not parsed:
                problems.append(f"gateway {name}: malformed object; planned from its last good version")
            out.append(gateway)
        for gone in set(self._parsed) - seen:
            del self._parsed[gone]
        return out

    async def plan(self) -> PlanResult:
        if self._last is not None and self._planned_generation == self._generation:
            return self._last
        generation = self._generation
        me_obj = self._nodes.get(self._cfg.node_name)
        me = Node.from_dict(me_obj) if me_obj is not None else None
        if me is not None and me.internal_ip and me.internal_ip != self._node_ip:
            self._underlay = await detect_underlay(me.internal_ip)
            # Only once the lookup worked: a failed one (raised) is tried again by the next plan.
            self._node_ip = me.internal_ip
            log.info("underlay", extra=kv(node_ip=me.internal_ip, ifname=self._underlay.ifname if self._underlay
                                          else None, mtu=self._underlay.mtu if self._underlay else None))
        problems: list[str] = []
        gateways = self._gateway_list(problems)
        nodes = {me.name: me} if me is not None else {}
        result = plan(gateways, nodes, self._cfg.node_name, plan_config(self._cfg, self._underlay))
        if problems:
            result = replace(result, problems=problems + result.problems)
        self._last, self._planned_generation = result, generation
        return result


def _plan_facts(node: Node) -> tuple[object, ...]:
    return (node.internal_ip, node.pod_cidrs, node.labels.get("raven.openyurt.io/gateway"), node.being_deleted)


def agent_main(cfg: AgentConfig, api: ApiClient) -> Callable[[Runtime], Coroutine[Any, Any, None]]:
    """The agent's main coroutine over `api` (from `new_api_client`, loaded before anything starts)."""

    async def main(rt: Runtime) -> None:
        client = KubeClient(api)
        kernel = KernelApplier(ownership(plan_config(cfg, None)))
        vpn = IPsecDriver(cfg.vici_socket, cfg.psk) if cfg.vpn_driver == "ipsec" else None
        log.info("agent starting", extra=kv(node=cfg.node_name, vpn_driver=cfg.vpn_driver, vici=cfg.vici_socket,
                                            psk_source=cfg.psk_source))
        try:
            gateways = Informer(client, GATEWAYS, "gateways", rt.registry)
            # Only this node's facts feed the plan: caching every Node would cost memory on big clusters.
            nodes = Informer(client, NODES, "nodes", rt.registry, field_selector=f"metadata.name={cfg.node_name}")
            view = ClusterView(cfg, gateways, nodes)
            reconciler = Reconciler(
                view.plan, view.synced, kernel, vpn, AgentMetrics(rt.registry), DataplaneMetrics(rt.registry),
                resync_period=cfg.resync_period,
            )

            def on_gateway(ev: InformerEvent) -> None:
                if view.on_gateway(ev):
                    reconciler.trigger(f"gateway/{ev.name}")

            def on_node(ev: InformerEvent) -> None:
                if view.on_node(ev):
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
            await reconciler.run()
        finally:
            # The data plane stays as it is: an agent restart must not drop traffic.
            await kernel.close()
            if vpn is not None:
                await vpn.close()
            await client.close()

    return main


async def agent_cleanup(cfg: AgentConfig) -> int:
    """`--cleanup`: remove everything Raven owns on this node (kernel objects, raven-* VICI connections).

    Returns the exit code: 1 when anything could not be removed (so a script or an operator notices), else 0.
    """
    failed = False
    kernel = KernelApplier(ownership(plan_config(cfg, None)))
    try:
        report = await kernel.cleanup()
    except KernelError as exc:
        failed = True
        log.error("kernel cleanup failed: nothing removed", extra=kv(error=str(exc)))
    else:
        for err in report.errors:
            log.warning("kernel cleanup write failed", extra=kv(kind=err.kind, op=err.op, obj=err.obj,
                                                                reason=err.reason))
        failed = failed or not report.ok
        log.info("kernel state removed", extra=kv(writes=report.total_writes, errors=len(report.errors)))
    finally:
        await kernel.close()
    if cfg.vpn_driver == "ipsec":
        # No PSK is needed to remove connections; the driver insists on one, so give it a throwaway.
        vpn = IPsecDriver(cfg.vici_socket, cfg.psk or "cleanup-only")
        try:
            vici_report = await vpn.cleanup()
            for err in vici_report.errors:
                log.warning("ipsec cleanup operation failed", extra=kv(op=err.op, conn=err.obj, reason=err.reason))
            failed = failed or not vici_report.ok
            log.info("ipsec connections removed", extra=kv(ops=vici_report.total_writes))
        except CharonUnavailable as exc:
            # A charon that is not running holds no connections (it loses them all when it stops).
            log.warning("charon not reachable; nothing to remove there", extra=kv(error=str(exc)))
        except Exception as exc:
            failed = True
            log.error("ipsec cleanup failed", extra=kv(error=f"{type(exc).__name__}: {exc}"))
        finally:
            await vpn.close()
    return 1 if failed else 0
