"""The few facts Raven reads from its own LoadBalancer Services and Endpoints, converted once from API JSON.

Lenient like `Node`: a field of the wrong type reads as absent, so a mangled object compares as
different from the one wanted and is rewritten, never crashes the controller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from raven.api.gateway import JSONObject, is_array, is_object


def _obj(value: object) -> JSONObject:
    return value if is_object(value) else {}


def _arr(value: object) -> Sequence[object]:
    return value if is_array(value) else ()


def _str_map(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _obj(value).items()}


def _scalar(value: object) -> str | int | None:
    """A port number or name as written (`targetPort` may be either)."""
    if isinstance(value, bool):
        return None
    return value if isinstance(value, str | int) else None


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str = ""
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    owner_uids: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, obj: JSONObject) -> Meta:
        meta = _obj(obj.get("metadata"))
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            labels=_str_map(meta.get("labels")),
            annotations=_str_map(meta.get("annotations")),
            owner_uids=tuple(str(_obj(o).get("uid")) for o in _arr(meta.get("ownerReferences"))),
        )


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    protocol: str | None
    port: str | int | None
    target_port: str | int | None


@dataclass(frozen=True)
class Service:
    meta: Meta
    type: str | None = None
    ports: tuple[ServicePort, ...] = ()
    ingress_ip: str | None = None  # status.loadBalancer.ingress[0].ip, once the cloud filled it

    @property
    def name(self) -> str:
        return self.meta.name

    @classmethod
    def from_dict(cls, obj: JSONObject) -> Service:
        spec = _obj(obj.get("spec"))
        ports = tuple(
            ServicePort(_opt_str(p.get("name")), _opt_str(p.get("protocol")), _scalar(p.get("port")),
                        _scalar(p.get("targetPort")))
            for p in map(_obj, _arr(spec.get("ports")))
        )
        ingress = _arr(_obj(_obj(obj.get("status")).get("loadBalancer")).get("ingress"))
        ip = _obj(ingress[0]).get("ip") if ingress else None
        return cls(Meta.from_dict(obj), _opt_str(spec.get("type")), ports, str(ip) if ip else None)


@dataclass(frozen=True)
class EndpointAddress:
    ip: str | None
    node_name: str | None


@dataclass(frozen=True)
class EndpointPort:
    name: str | None
    port: str | int | None
    protocol: str | None


@dataclass(frozen=True)
class EndpointSubset:
    addresses: tuple[EndpointAddress, ...] = ()
    ports: tuple[EndpointPort, ...] = ()


@dataclass(frozen=True)
class ServiceEndpoints:
    """A core/v1 Endpoints object (the name `Endpoint` is the Gateway's)."""

    meta: Meta
    subsets: tuple[EndpointSubset, ...] = ()

    @property
    def name(self) -> str:
        return self.meta.name

    @classmethod
    def from_dict(cls, obj: JSONObject) -> ServiceEndpoints:
        subsets = tuple(
            EndpointSubset(
                tuple(EndpointAddress(_opt_str(a.get("ip")), _opt_str(a.get("nodeName")))
                      for a in map(_obj, _arr(s.get("addresses")))),
                tuple(EndpointPort(_opt_str(p.get("name")), _scalar(p.get("port")), _opt_str(p.get("protocol")))
                      for p in map(_obj, _arr(s.get("ports")))),
            )
            for s in map(_obj, _arr(obj.get("subsets")))
        )
        return cls(Meta.from_dict(obj), subsets)
