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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from raven.api.constants import API_VERSION, KIND, LABEL_MANAGED_BY, LABEL_OWNER_GATEWAY, MANAGED_BY_VALUE
from raven.api.gateway import Endpoint, Gateway
from raven.api.node import Node
from raven.kube.client import ENDPOINTS, JSON, SERVICES, ApiError, KubeClient, Resource
from raven.kube.informer import Informer, InformerEvent, name_of
from raven.log import kv

log = logging.getLogger(__name__)

LABEL_SLOT = "raven.openyurt.io/lb-slot"
ANNOTATION_NODE = "raven.openyurt.io/endpoint-node"
PORT_NAME = "tunnel"
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"


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


def desired_slots(gw: Gateway, active_tunnels: Sequence[Endpoint], nodes: Mapping[str, Node]) -> list[LoadBalancerSlot]:
    out = []
    for i, ep in enumerate(active_tunnels):
        node = nodes.get(ep.node_name)
        out.append(LoadBalancerSlot(service_name(gw.name, i), i, ep.node_name,
                                    node.internal_ip if node else None, ep.tunnel_port))
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


def _owner_of(obj: JSON) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_OWNER_GATEWAY, ""))


def ingress_ip(service: JSON) -> str | None:
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    if ingress and isinstance(ingress[0], dict):
        ip = ingress[0].get("ip")
        return str(ip) if ip else None
    return None


def _svc_differs(current: JSON, want: JSON) -> bool:
    cur_spec, want_spec = current.get("spec") or {}, want["spec"]
    cur_ports = [{k: p.get(k) for k in ("name", "protocol", "port", "targetPort")} for p in cur_spec.get("ports") or []]
    meta, want_meta = current.get("metadata") or {}, want["metadata"]
    return (
        cur_spec.get("type") != want_spec["type"]
        or cur_ports != want_spec["ports"]
        or any((meta.get("labels") or {}).get(k) != v for k, v in want_meta["labels"].items())
        or (meta.get("annotations") or {}).get(ANNOTATION_NODE) != want_meta["annotations"][ANNOTATION_NODE]
        or [o.get("uid") for o in meta.get("ownerReferences") or []] != [o["uid"] for o in want_meta["ownerReferences"]]
    )


def _ep_differs(current: JSON, want: JSON) -> bool:
    meta = current.get("metadata") or {}
    return (current.get("subsets") or []) != want["subsets"] or any(
        (meta.get("labels") or {}).get(k) != v for k, v in want["metadata"]["labels"].items()
    )


class Exposure:
    """Creates, updates and deletes the Services/Endpoints of exposed gateways, from informer caches."""

    def __init__(self, client: KubeClient, namespace: str, services: Informer, endpoints: Informer,
                 may_write: Callable[[], bool]) -> None:
        self.client = client
        self.namespace = namespace
        self.services = services
        self.endpoints = endpoints
        self._may_write = may_write
        # owner gateway -> names of our objects, per kind: reconciling one gateway must not scan them all.
        self._index: dict[str, dict[str, set[str]]] = {SERVICES.plural: {}, ENDPOINTS.plural: {}}
        services.add_handler(lambda ev: self._reindex(SERVICES.plural, ev))
        endpoints.add_handler(lambda ev: self._reindex(ENDPOINTS.plural, ev))

    def _reindex(self, kind: str, ev: InformerEvent) -> None:
        index = self._index[kind]
        for obj, present in ((ev.old, False), (ev.obj, ev.type != "DELETED")):
            if obj is None:
                continue
            owner = _owner_of(obj)
            if not owner:
                continue
            names = index.setdefault(owner, set())
            if present:
                names.add(name_of(obj))
            else:
                names.discard(name_of(obj))
                if not names:
                    del index[owner]

    def owned(self, gateway: str) -> dict[str, JSON]:
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
            slot = ((svc.get("metadata") or {}).get("labels") or {}).get(LABEL_SLOT, "")
            ip = ingress_ip(svc)
            if ip and slot.isdigit():
                out[int(slot)] = ip
        return out

    async def apply(self, gw_name: str, gw: Gateway | None, slots: Sequence[LoadBalancerSlot]) -> None:
        """Make our objects for `gw_name` exactly `slots` (none when the gateway is gone or not exposed)."""
        wanted = {s.name for s in slots}
        if gw is not None:
            for slot in slots:
                await self._ensure(SERVICES, self.services, service_body(gw, slot, self.namespace), _svc_differs)
                await self._ensure(ENDPOINTS, self.endpoints, endpoints_body(gw, slot, self.namespace), _ep_differs)
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

    async def _ensure(self, res: Resource, informer: Informer, want: JSON,
                      differs: Callable[[JSON, JSON], bool]) -> None:
        name = want["metadata"]["name"]
        current = informer.get(name, self.namespace)
        if current is not None and not differs(current, want):
            return
        if not self._may_write():
            return
        if current is None:
            try:
                await self.client.create(res, want, self.namespace)
                log.info("created load balancer object", extra=kv(kind=res.plural, name=name))
                return
            except ApiError as exc:
                if not exc.already_exists and exc.status != 409:
                    raise
            # Our informer lists only objects labelled as ours, so this one is either ours and not yet
            # in the cache, or someone else's with the same name: never take the latter over.
            # (A list by name, not a GET: the controller's RBAC grants list on these kinds, not get.)
            found = await self.client.list(res, self.namespace, field_selector=f"metadata.name={name}")
            existing = [o for o in found.get("items") or [] if isinstance(o, dict) and name_of(o) == name]
            labels = ((existing[0].get("metadata") or {}).get("labels") or {}) if existing else {}
            if existing and labels.get(LABEL_MANAGED_BY) != MANAGED_BY_VALUE:
                raise ForeignObjectError(
                    f"{res.plural} {self.namespace}/{name} exists and is not managed by {MANAGED_BY_VALUE}; "
                    "rename or remove it to expose the gateway")
        patch = {k: v for k, v in want.items() if k not in ("apiVersion", "kind")}
        await self.client.merge_patch(res, name, patch, self.namespace)
        log.info("updated load balancer object", extra=kv(kind=res.plural, name=name))
