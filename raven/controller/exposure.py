"""`spec.exposeType: LoadBalancer`: one LoadBalancer Service (+ Endpoints) per active tunnel slot.

A slot is a position in the Gateway's active tunnel endpoints (election.py keeps a replacement in the
lost endpoint's slot). Each slot gets a selector-less Service of type LoadBalancer (UDP, the endpoint's
port) and an Endpoints object with the same name pointing at the active node's InternalIP. On failover
only the Endpoints (and the port, if the new endpoint's differs) change, so the cloud load balancer
and its address stay: remote gateways keep talking to the same public IP.

The objects carry our labels (managed-by, owner-gateway, slot) and a controller owner reference to
the Gateway; the reconciler deletes those no longer needed (slot gone, exposeType cleared, Gateway
deleted) instead of relying on a garbage collector. Once the cloud fills
`status.loadBalancer.ingress[0].ip`, `addresses()` hands it to the election, which writes it as the
active endpoint's publicIP: that is where agents read the address to dial.

The desired objects are computed by pure functions; `Exposure` only compares and writes.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from raven.api.constants import API_VERSION, KIND, LABEL_MANAGED_BY, LABEL_OWNER_GATEWAY, MANAGED_BY_VALUE
from raven.api.gateway import JSON, Endpoint, Gateway
from raven.api.node import Node
from raven.api.service import Meta, Service, ServiceEndpoints
from raven.kube.client import ENDPOINTS, SERVICES, ApiError, Resource
from raven.kube.typed import TypedClient, TypedEvent, TypedInformer
from raven.log import kv

log = logging.getLogger(__name__)

LABEL_SLOT = "raven.openyurt.io/lb-slot"
ANNOTATION_NODE = "raven.openyurt.io/endpoint-node"
PORT_NAME = "tunnel"
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"

S = TypeVar("S", Service, ServiceEndpoints)


class ForeignObjectError(RuntimeError):
    """An object with the name we need exists and is not ours: reported, retried, never overwritten."""


@dataclass(frozen=True)
class LoadBalancerSlot:
    name: str
    slot: int
    node_name: str
    node_ip: str | None
    port: int


def service_name(gateway: str, slot: int) -> str:
    """A DNS-1035 label (Service names are) unique per (gateway, slot), at most 63 characters."""
    clean = re.sub(r"[^a-z0-9-]", "-", gateway.lower()).strip("-")
    name = f"raven-lb-{clean}-{slot}"
    if clean != gateway or len(name) > 63:
        digest = hashlib.sha256(gateway.encode()).hexdigest()[:8]
        name = f"raven-lb-{clean[:40].strip('-')}-{digest}-{slot}"
    return name


def desired_slots(
    gw: Gateway, active_tunnels: Sequence[Endpoint], node: Callable[[str], Node | None]
) -> list[LoadBalancerSlot]:
    """`node(name)` looks a Node up (the typed node cache's `get`)."""
    out = []
    for i, ep in enumerate(active_tunnels):
        node_obj = node(ep.node_name)
        out.append(LoadBalancerSlot(service_name(gw.name, i), i, ep.node_name,
                                    node_obj.internal_ip if node_obj else None, ep.tunnel_port))
    return out


def _labels(gw: Gateway, slot: LoadBalancerSlot) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_OWNER_GATEWAY: gw.name, LABEL_SLOT: str(slot.slot)}


def _owner(gw: Gateway) -> list[JSON]:
    return [{"apiVersion": API_VERSION, "kind": KIND, "name": gw.name, "uid": gw.uid,
             "controller": True, "blockOwnerDeletion": True}]


def service_body(gw: Gateway, slot: LoadBalancerSlot, namespace: str) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": slot.name, "namespace": namespace, "labels": _labels(gw, slot),
                     "annotations": {ANNOTATION_NODE: slot.node_name}, "ownerReferences": _owner(gw)},
        "spec": {"type": "LoadBalancer",
                 "ports": [{"name": PORT_NAME, "protocol": "UDP", "port": slot.port, "targetPort": slot.port}]},
    }


def endpoints_body(gw: Gateway, slot: LoadBalancerSlot, namespace: str) -> JSON:
    subsets: list[JSON] = []
    if slot.node_ip:
        subsets.append({"addresses": [{"ip": slot.node_ip, "nodeName": slot.node_name}],
                        "ports": [{"name": PORT_NAME, "port": slot.port, "protocol": "UDP"}]})
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": slot.name, "namespace": namespace, "labels": _labels(gw, slot),
                     "ownerReferences": _owner(gw)},
        "subsets": subsets,
    }


def _svc_differs(current: Service, want: Service) -> bool:
    return (
        current.type != want.type
        or current.ports != want.ports
        or any(current.meta.labels.get(k) != v for k, v in want.meta.labels.items())
        or current.meta.annotations.get(ANNOTATION_NODE) != want.meta.annotations.get(ANNOTATION_NODE)
        or current.meta.owner_uids != want.meta.owner_uids
    )


def _ep_differs(current: ServiceEndpoints, want: ServiceEndpoints) -> bool:
    return current.subsets != want.subsets or any(
        current.meta.labels.get(k) != v for k, v in want.meta.labels.items()
    )


class Exposure:
    """Creates, updates and deletes the Services/Endpoints of exposed gateways, from informer caches."""

    def __init__(self, client: TypedClient, namespace: str, services: TypedInformer[Service],
                 endpoints: TypedInformer[ServiceEndpoints], may_write: Callable[[], bool]) -> None:
        self.client = client
        self.namespace = namespace
        self.services = services
        self.endpoints = endpoints
        self._may_write = may_write
        # owner gateway -> names of our objects, per kind: reconciling one gateway must not scan them all.
        self._index: dict[str, dict[str, set[str]]] = {SERVICES.plural: {}, ENDPOINTS.plural: {}}
        services.add_handler(self._on_service)
        endpoints.add_handler(self._on_endpoints)

    def _on_service(self, ev: TypedEvent[Service]) -> None:
        self._reindex(SERVICES.plural, ev.old.meta if ev.old else None, ev.obj.meta if ev.obj else None,
                      ev.type != "DELETED")

    def _on_endpoints(self, ev: TypedEvent[ServiceEndpoints]) -> None:
        self._reindex(ENDPOINTS.plural, ev.old.meta if ev.old else None, ev.obj.meta if ev.obj else None,
                      ev.type != "DELETED")

    def _reindex(self, kind: str, old: Meta | None, new: Meta | None, present: bool) -> None:
        index = self._index[kind]
        for meta, here in ((old, False), (new, present)):
            if meta is None:
                continue
            owner = meta.labels.get(LABEL_OWNER_GATEWAY)
            if not owner:
                continue
            names = index.setdefault(owner, set())
            if here:
                names.add(meta.name)
            else:
                names.discard(meta.name)
                if not names:
                    del index[owner]

    def owned(self, gateway: str) -> dict[str, Service]:
        """Our Services for this gateway, by name (from the cache)."""
        out = {}
        for name in self._index[SERVICES.plural].get(gateway, ()):
            svc = self.services.get(name, self.namespace)
            if svc is not None:
                out[name] = svc
        return out

    def owner_gateways(self) -> set[str]:
        return set(self._index[SERVICES.plural]) | set(self._index[ENDPOINTS.plural])

    def addresses(self, gateway: str) -> dict[int, str]:
        """slot -> LoadBalancer ingress IP, for the slots whose Service has one."""
        out: dict[int, str] = {}
        for svc in self.owned(gateway).values():
            slot = svc.meta.labels.get(LABEL_SLOT, "")
            ip = svc.ingress_ip
            if ip and slot.isdigit():
                out[int(slot)] = ip
        return out

    async def apply(self, gw_name: str, gw: Gateway | None, slots: Sequence[LoadBalancerSlot]) -> None:
        """Make our objects for `gw_name` exactly `slots` (none when the gateway is gone or not exposed)."""
        wanted = {s.name for s in slots}
        if gw is not None:
            for slot in slots:
                await self._ensure(SERVICES, self.services, service_body(gw, slot, self.namespace), _svc_differs)
                await self._ensure(ENDPOINTS, self.endpoints, endpoints_body(gw, slot, self.namespace),
                                   _ep_differs)
        stale = set(self._index[SERVICES.plural].get(gw_name, ())) | set(
            self._index[ENDPOINTS.plural].get(gw_name, ()))
        for name in sorted(stale - wanted):
            for res in (SERVICES, ENDPOINTS):
                if not self._may_write():
                    return
                try:
                    await self.client.delete(res, name, self.namespace)
                    log.info("deleted load balancer object", extra=kv(gateway=gw_name, kind=res.plural, name=name))
                except ApiError as exc:
                    if not exc.not_found:
                        raise

    async def _ensure(self, res: Resource, informer: TypedInformer[S], body: JSON,
                      differs: Callable[[S, S], bool]) -> None:
        # Our own body read back with the cache's parser: the comparison is between two typed objects.
        want = informer.parse(body)
        name = want.meta.name
        current = informer.get(name, self.namespace)
        if current is not None and not differs(current, want):
            return
        if not self._may_write():
            return
        if current is None:
            try:
                await self.client.create(res, body, self.namespace)
                log.info("created load balancer object", extra=kv(kind=res.plural, name=name))
                return
            except ApiError as exc:
                if not exc.already_exists and exc.status != 409:
                    raise
            # Our informer lists only objects labelled as ours, so this one is either ours and not yet
            # in the cache, or someone else's with the same name: never take the latter over.
            # (A list by name, not a GET: the controller's RBAC grants list on these kinds, not get.)
            found = await self.client.list(res, Meta.from_dict, self.namespace, field_selector=f"metadata.name={name}")
            existing = [m for m in found if m.name == name]
            if existing and existing[0].labels.get(LABEL_MANAGED_BY) != MANAGED_BY_VALUE:
                raise ForeignObjectError(
                    f"{res.plural} {self.namespace}/{name} exists and is not managed by {MANAGED_BY_VALUE}; "
                    "rename or remove it to expose the gateway")
        patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
        await self.client.merge_patch(res, name, patch, self.namespace)
        log.info("updated load balancer object", extra=kv(kind=res.plural, name=name))
