"""Fixtures for controller tests: a test API server with the project's Gateway CRD, a JSON client,
object builders, and in-process controllers with their own Runtime (identity, registry, health)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import yaml
from prometheus_client import CollectorRegistry

from e2e.apiserver import ApiServer
from raven.api.constants import LABEL_GATEWAY
from raven.config import CommonConfig, ControllerConfig, ListenAddr
from raven.controller.app import Controller
from raven.health import Health
from raven.kube.client import GATEWAYS, NODES, PATHREPORTS, KubeClient, Resource, new_api_client
from raven.runtime import Runtime
from raven.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
T = TypeVar("T")


async def install_crd(client: KubeClient) -> None:
    """The project's CRDs: Gateways and PathReports."""
    for manifest, res in (("01-crd-gateways.yaml", GATEWAYS), ("01-crd-pathreports.yaml", PATHREPORTS)):
        crd = yaml.safe_load((ROOT / "manifests" / manifest).read_text())
        await client.create(CRDS, crd)
        last: Exception | None = None
        for _ in range(100):  # served at once by the test server; a real one takes a moment
            try:
                await client.list(res)
                break
            except Exception as exc:
                last = exc
                await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"the {res} CRD was never served: {last!r}")


@pytest.fixture
async def kube(apiserver: ApiServer) -> AsyncIterator[KubeClient]:
    assert apiserver.kubeconfig
    client = KubeClient(await new_api_client(apiserver.kubeconfig))
    await install_crd(client)
    try:
        yield client
    finally:
        await client.close()


async def eventually(fn: Callable[[], Awaitable[T] | T], check: Callable[[T], bool], within: float = 15.0,
                     interval: float = 0.05, what: str = "condition") -> T:
    """Poll `fn()` (a coroutine function, or a plain one reading local state such as a metric) until
    `check(result)`; fail with the last result after `within` seconds. The one polling helper of the
    asyncio tests: never a fixed sleep where something is expected to happen."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            got = fn()
            value = cast(T, await got if inspect.isawaitable(got) else got)
            last = value
            if check(value):
                return value
        except AssertionError:
            raise
        except Exception as exc:  # the server may be injecting faults: keep polling
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


def node_body(name: str, gateway: str | None, ready: bool = True, ip: str | None = "auto",
              cidrs: list[str] | None = None) -> dict[str, Any]:
    # Distinct per name (the controller leaves a node whose pod CIDR overlaps another's out of the status):
    # node IPs in 10.0.0.0/16, pod CIDRs /24s in 10.128.0.0/9, both from a hash of the name.
    n = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 32768
    auto_ip = f"10.0.{n // 254 % 256}.{n % 254 + 1}"
    addresses = [] if ip is None else [{"type": "InternalIP", "address": auto_ip if ip == "auto" else ip}]
    spec: dict[str, Any] = {}
    pod_cidrs = [f"10.{128 + n // 256}.{n % 256}.0/24"] if cidrs is None else cidrs
    if pod_cidrs:
        spec = {"podCIDR": pod_cidrs[0], "podCIDRs": pod_cidrs}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {LABEL_GATEWAY: gateway} if gateway else {}},
        "spec": spec,
        "status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}],
        },
    }


def gateway_body(name: str, nodes: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "raven.openyurt.io/v1beta1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {"endpoints": [{"nodeName": n, "type": "tunnel", "port": 4500, "underNAT": False} for n in nodes],
                 **spec},
    }


async def set_ready(kube: KubeClient, node: str, ready: bool, unreachable: bool = False) -> None:
    """`unreachable`: Ready Unknown, as the node lifecycle controller writes when the kubelet stops posting status."""
    obj = await kube.get(NODES, node)
    status, reason = ("True", "KubeletReady") if ready else (
        ("Unknown", "NodeStatusUnknown") if unreachable else ("False", "KubeletNotReady"))
    obj["status"]["conditions"] = [{"type": "Ready", "status": status, "reason": reason}]
    await kube.replace(NODES, node, obj, subresource="status")


async def set_label(kube: KubeClient, node: str, gateway: str | None) -> None:
    await kube.merge_patch(NODES, node, {"metadata": {"labels": {LABEL_GATEWAY: gateway}}})


async def active(kube: KubeClient, gateway: str) -> list[str]:
    gw = await kube.get(GATEWAYS, gateway)
    return [e["nodeName"] for e in (gw.get("status") or {}).get("activeEndpoints") or []]


@dataclass
class RunningController:
    controller: Controller
    rt: Runtime
    identity: str
    task: asyncio.Task[Any] | None = None
    stopped: bool = field(default=False)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.rt.registry.get_sample_value(name, labels or {})
        return value or 0.0

    def reconciles(self) -> float:
        """Gateway reconciles completed so far (wait for it to grow to know a change was acted on)."""
        return self.metric("raven_controller_reconcile_duration_seconds_count")

    def delivered(self, informer: str, type_: str) -> float:
        """Watch events of `type_` the `informer` delivered to the controller's handlers so far."""
        return self.metric("raven_informer_events_total", {"informer": informer, "type": type_})

    async def acted_on(self, informer: str, type_: str, seen: float, n: int = 1, within: float = 15.0) -> None:
        """Wait until the controller has processed `n` more `type_` events of `informer` than `seen`:
        they were delivered (the handlers run synchronously on delivery, so whatever they queued is in
        the work queue by then) and every reconcile queued so far has finished. Only after this does
        "nothing changed" mean the controller saw the change and decided to change nothing."""
        await eventually(lambda: self.delivered(informer, type_), lambda v: v >= seen + n, within=within,
                         what=f"{n} {type_} event(s) of {informer} delivered to {self.identity}")
        await self.drained(within)

    async def drained(self, within: float = 15.0) -> None:
        """Wait until no Gateway is waiting in the work queue or being reconciled."""
        queue = self.controller.reconciler.queue
        await eventually(lambda: queue.idle, bool, within=within, what=f"{self.identity}'s work queue drained")

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.rt.supervisor.stop(8.0)


@pytest.fixture
async def start(apiserver: ApiServer) -> AsyncIterator[Callable[..., Awaitable[RunningController]]]:
    running: list[RunningController] = []
    clients: list[KubeClient] = []

    async def start(identity: str = "ctrl-a", leader_elect: bool = False, lease: tuple[float, float, float] =
                    (3.0, 2.0, 0.5), workers: int = 4, namespace: str = "kube-system",
                    **settings: Any) -> RunningController:
        assert apiserver.kubeconfig
        common = CommonConfig(apiserver.kubeconfig, ListenAddr("127.0.0.1", 0), ListenAddr("127.0.0.1", 0))
        cfg = ControllerConfig(common=common, leader_elect=leader_elect, lease_duration=lease[0],
                               renew_deadline=lease[1], retry_period=lease[2], identity=identity,
                               lease_namespace=namespace, **settings)
        health = Health()
        registry = CollectorRegistry()
        rt = Runtime(health, Supervisor(health, registry), registry, asyncio.Event())
        client = KubeClient(await new_api_client(apiserver.kubeconfig))
        clients.append(client)
        ctrl = Controller(cfg, rt, client, workers=workers)
        rc = RunningController(ctrl, rt, identity)
        rc.task = rt.supervisor.spawn("controller", ctrl.run())
        running.append(rc)
        return rc

    try:
        yield start
    finally:
        for rc in running:
            await rc.stop()
            assert rc.rt.health.alive, f"controller {rc.identity} had a task die: {rc.rt.health.dead_tasks}"
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
