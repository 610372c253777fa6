"""`raven --mode=controller`: wires informers, leader election, the reconciler and exposure together.

Every replica runs the informers (caches stay warm, so a standby that takes over decides from a full
view at once) and reports ready when they are synced: being leader is not needed to be ready. Only the
leader runs the reconcile workers and writes (status, Services, Events); `--no-leader-elect` makes a
single replica lead unconditionally. On SIGTERM the supervisor cancels the main task: workers stop,
then the Lease is released (kube/leader.py), then the API client is closed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from kubernetes_asyncio.client import ApiClient

from raven.api.csr import CertificateSigningRequest
from raven.api.gateway import parse_gateway
from raven.api.node import Node
from raven.api.openyurt import RAVEN_CFG_NAME, RAVEN_CFG_NAMESPACE, switches_from
from raven.api.pathreport import PathReport
from raven.api.service import Service, ServiceEndpoints
from raven.config import ControllerConfig
from raven.controller.exposure import MANAGED_SELECTOR, Exposure
from raven.controller.health import HealthSettings
from raven.controller.metrics import ControllerMetrics
from raven.controller.nodecheck import Ranges
from raven.controller.reconciler import AnyGateway, GatewayReconciler
from raven.controller.signer import Signer
from raven.kube.client import (
    CONFIGMAPS,
    CSRS,
    ENDPOINTS,
    GATEWAYS,
    NODES,
    PATHREPORTS,
    SERVICES,
    ApiError,
    KubeClient,
)
from raven.kube.events import EventRecorder
from raven.kube.informer import Informer
from raven.kube.leader import LeaderElector
from raven.kube.typed import TypedClient, TypedInformer
from raven.log import kv
from raven.pki import SIGNER_NAME
from raven.runtime import Runtime

log = logging.getLogger(__name__)

COMPONENT = "raven-controller"
RESYNC_PERIOD_S = 300.0
# How long a new leader waits for the PathReport cache before deciding without it (no evidence: Node readiness
# decides, as before). Not a readiness check: a cluster without the PathReport CRD must still work.
PATHREPORT_SYNC_WAIT_S = 10.0


class Controller:
    def __init__(self, cfg: ControllerConfig, rt: Runtime, client: KubeClient, *, workers: int = 8,
                 resync_period_s: float = RESYNC_PERIOD_S) -> None:
        self.cfg = cfg
        self.rt = rt
        self.client = client
        self.resync_period_s = resync_period_s
        self.metrics = ControllerMetrics(rt.registry)
        self.elector: LeaderElector | None = None
        if cfg.leader_elect:
            self.elector = LeaderElector(
                client, cfg.lease_namespace, cfg.lease_name, cfg.identity,
                cfg.lease_duration, cfg.renew_deadline, cfg.retry_period,
                on_change=lambda leading: self.metrics.leader.set(1 if leading else 0),
            )
        # Owned Services/Endpoints live in the controller's own namespace (the Lease's).
        namespace = cfg.lease_namespace
        reg = rt.registry
        # The typed caches: each object is parsed once per resourceVersion, at the edge.
        self.gateways: TypedInformer[AnyGateway] = TypedInformer(
            Informer(client, GATEWAYS, "gateways", reg), parse_gateway)
        self.nodes = TypedInformer(Informer(client, NODES, "nodes", reg), Node.from_dict)
        self.services = TypedInformer(Informer(client, SERVICES, "services", reg, namespace=namespace,
                                               label_selector=MANAGED_SELECTOR), Service.from_dict)
        self.endpoints = TypedInformer(Informer(client, ENDPOINTS, "endpoints", reg, namespace=namespace,
                                                label_selector=MANAGED_SELECTOR), ServiceEndpoints.from_dict)
        # The agents' PathReports: their WireGuard public keys (copied into the elected endpoints' status, always)
        # and their path measurements (failover on data-plane health, raven/controller/health.py, when enabled).
        self.pathreports: TypedInformer[PathReport] | None = TypedInformer(
            Informer(client, PATHREPORTS, "pathreports", reg), PathReport.from_dict)
        health: HealthSettings | None = None
        if cfg.health_failover:
            health = HealthSettings(stale_after=timedelta(seconds=cfg.health_stale_after),
                                    hold_time=timedelta(seconds=cfg.health_hold_time),
                                    settle=timedelta(seconds=cfg.health_settle_time),
                                    establish=timedelta(seconds=cfg.health_establish_time))
        # OpenYurt's kube-system/raven-cfg: which endpoint kinds are elected (raven/api/openyurt.py). Only that one
        # ConfigMap is listed and watched (RBAC allows no other).
        self.ravencfg = TypedInformer(Informer(client, CONFIGMAPS, "ravencfg", reg, namespace=RAVEN_CFG_NAMESPACE,
                                               field_selector=f"metadata.name={RAVEN_CFG_NAME}"), switches_from)
        api = TypedClient(client)
        self.recorder = EventRecorder(client, COMPONENT, instance=cfg.identity, may_write=self.may_write)
        self.exposure = Exposure(api, namespace, self.services, self.endpoints, self.may_write)
        self.reconciler = GatewayReconciler(api, self.gateways, self.nodes, self.exposure, self.recorder,
                                            self.metrics, self.may_write, workers=workers,
                                            reports=self.pathreports, health=health,
                                            ranges=Ranges.of(cfg.overlay_cidr, cfg.tunnel_cidr, cfg.service_cidr,
                                                             client.server_host),
                                            ravencfg=self.ravencfg)
        # The IPsec signer: only requests for our signer are listed (never another signer's).
        self.csrs = TypedInformer(Informer(client, CSRS, "certificatesigningrequests", reg,
                                           field_selector=f"spec.signerName={SIGNER_NAME}"),
                                  CertificateSigningRequest.from_dict)
        self.signer = Signer(api, namespace, cfg.ipsec_ca_secret, self.csrs, self.nodes, self.may_write,
                             agent_username=cfg.agent_service_account, lifetime_s=cfg.ipsec_cert_lifetime)
        self.services.add_handler(self.reconciler.on_service)
        self.endpoints.add_handler(self.reconciler.on_endpoints)

    @property
    def informers(self) -> list[Informer]:
        return [t.informer for t in (self.gateways, self.nodes, self.services, self.endpoints, self.csrs,
                                     self.ravencfg)]

    def may_write(self) -> bool:
        return self.elector.is_leader if self.elector is not None else True

    async def run(self) -> None:
        for inf in self.informers:
            self.rt.supervisor.spawn(f"controller-informer-{inf.name}", inf.run())
            self.rt.health.add_readiness_check(f"informer-{inf.name}", inf.check)
        if self.pathreports is not None:
            self.rt.supervisor.spawn("controller-informer-pathreports", self.pathreports.run())
        self.rt.supervisor.spawn("controller-events", self.recorder.run())
        self.rt.supervisor.spawn("controller-gc", self._gc_after_sync())
        log.info("controller starting", extra=kv(identity=self.cfg.identity, leader_elect=self.cfg.leader_elect,
                                                 lease=f"{self.cfg.lease_namespace}/{self.cfg.lease_name}"))
        if self.elector is None:
            self.metrics.leader.set(1)
            await self.lead()
        else:
            await self.elector.run(self.lead)

    async def _gc_after_sync(self) -> None:
        """The caches are most of the heap (10k nodes: ~1M objects) and live long. The cyclic GC's full
        scans of them cost ~100 ms pauses at start and in the middle of failovers; JSON from the API
        creates no cycles, so collection is paused while the first lists load, then the loaded objects
        are frozen out of future scans. Bounded: the GC comes back after 2 minutes whatever happens."""
        gc.disable()
        try:
            async with asyncio.timeout(120):
                for inf in self.informers:
                    await inf.wait_synced()
            gc.freeze()
        except TimeoutError:
            log.warning("informers not synced after 120 s; garbage collection resumed without freezing")
        finally:
            gc.enable()
        await asyncio.Event().wait()  # supervised tasks live as long as the process

    async def lead(self) -> None:
        """Everything only the leader does; cancelled the moment leadership is lost."""
        for inf in self.informers:
            await inf.wait_synced()  # decide only from a complete view (or a healthy node looks missing)
        if self.pathreports is not None:
            await self._wait_for_reports()
        log.info("leading: reconciling all gateways", extra=kv(gateways=len(self.gateways)))
        self.reconciler.new_term()
        self.reconciler.enqueue_all()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.reconciler.run_workers())
                tg.create_task(self.signer.run())
                tg.create_task(self._resync())
        finally:
            self.reconciler.queue.close()  # no retry scheduled while leading outlives the term
            self.signer.queue.close()

    async def _wait_for_reports(self) -> None:
        """Give the PathReport cache a moment (a NotReady pool the data plane still reaches must not be failed
        over, nor a WireGuard key left out of a status, just because the reports were not read yet), but never
        wait for a CRD that is not installed."""
        assert self.pathreports is not None
        try:
            await self.client.list(PATHREPORTS, limit=1)
        except ApiError as exc:
            if exc.not_found:
                log.warning("the PathReport CRD is not installed: failover follows Node readiness only until it is")
                return
        except Exception:  # the informer reports its own errors; wait as usual
            pass
        try:
            async with asyncio.timeout(PATHREPORT_SYNC_WAIT_S):
                await self.pathreports.wait_synced()
        except TimeoutError:
            log.warning("PathReports not listed yet: deciding on Node readiness until they are",
                        extra=kv(waited_s=PATHREPORT_SYNC_WAIT_S))

    async def _resync(self) -> None:
        # A safety net only: events drive everything, this catches anything a bug let slip.
        while True:
            await asyncio.sleep(self.resync_period_s)
            self.reconciler.enqueue_all()


def controller_main(cfg: ControllerConfig, api: ApiClient) -> Callable[[Runtime], Coroutine[Any, Any, None]]:
    """The controller's main coroutine over `api` (from `new_api_client`, loaded before anything starts)."""

    async def main(rt: Runtime) -> None:
        client = KubeClient(api)
        try:
            await Controller(cfg, rt, client).run()
        finally:
            await client.close()

    return main
