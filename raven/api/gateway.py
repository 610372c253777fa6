"""The `raven.openyurt.io/v1beta1` Gateway: typed model, lossless JSON round trip, validation.

Field names and JSON keys follow OpenYurt's `pkg/apis/raven/v1beta1` exactly (including the
capitalised `Replicas` key), so an OpenYurt user's Gateway objects work unchanged.

Every optional field is `None` when absent from the JSON, so `to_dict(from_dict(x)) == x` for every
known field: we never invent a value the user did not write. Defaults (tunnel port 4500, one tunnel
replica) are applied by the accessors that need them, not stored.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

from raven.api.constants import (
    DEFAULT_TUNNEL_PORT,
    ENDPOINT_TYPE_PROXY,
    ENDPOINT_TYPE_TUNNEL,
    ENDPOINT_TYPES,
    EXPOSE_TYPES,
)

# API JSON as the model sees it: values are `object`, narrowed by isinstance (never `Any`).
JSON = dict[str, object]
JSONObject = Mapping[str, object]


class GatewayParseError(ValueError):
    """A Gateway whose JSON does not have the shape of the API (a wrong type at some path)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def is_object(value: object) -> TypeGuard[JSONObject]:
    """A JSON object (str keys, as JSON decoding gives). `dict`, not the Mapping ABC: this runs for every field
    of every object the informers deliver, and an ABC isinstance check costs several times more."""
    return isinstance(value, dict)


def is_array(value: object) -> TypeGuard[Sequence[object]]:
    return isinstance(value, list)


# --- small typed readers: they turn a wrong JSON type into a GatewayParseError naming the field ---


def _opt_str(obj: JSONObject, key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise GatewayParseError(f"{path}.{key}", f"expected string, got {type(value).__name__}")
    return value


def _opt_int(obj: JSONObject, key: str, path: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise GatewayParseError(f"{path}.{key}", f"expected integer, got {type(value).__name__}")
    return value


def _opt_bool(obj: JSONObject, key: str, path: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise GatewayParseError(f"{path}.{key}", f"expected boolean, got {type(value).__name__}")
    return value


def _opt_obj(obj: JSONObject, key: str, path: str) -> JSONObject | None:
    value = obj.get(key)
    if value is None:
        return None
    if not is_object(value):
        raise GatewayParseError(f"{path}.{key}", f"expected object, got {type(value).__name__}")
    return value


def _opt_list(obj: JSONObject, key: str, path: str) -> Sequence[object] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not is_array(value):
        raise GatewayParseError(f"{path}.{key}", f"expected array, got {type(value).__name__}")
    return value


def _opt_str_map(obj: JSONObject, key: str, path: str) -> dict[str, str] | None:
    value = _opt_obj(obj, key, path)
    if value is None:
        return None
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise GatewayParseError(f"{path}.{key}.{k}", "expected string")
        out[str(k)] = v
    return out


def _opt_str_list(obj: JSONObject, key: str, path: str) -> list[str] | None:
    value = _opt_list(obj, key, path)
    if value is None:
        return None
    out: list[str] = []
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise GatewayParseError(f"{path}.{key}[{i}]", "expected string")
        out.append(v)
    return out


def _put(out: JSON, key: str, value: object) -> None:
    if value is not None:
        out[key] = value


# --- the model ---


@dataclass(frozen=True)
class LabelSelectorRequirement:
    key: str
    operator: str
    values: list[str] | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str) -> LabelSelectorRequirement:
        return cls(
            key=_opt_str(obj, "key", path) or "",
            operator=_opt_str(obj, "operator", path) or "",
            values=_opt_str_list(obj, "values", path),
        )

    def to_dict(self) -> JSON:
        out: JSON = {"key": self.key, "operator": self.operator}
        _put(out, "values", self.values)
        return out


@dataclass(frozen=True)
class LabelSelector:
    match_labels: dict[str, str] | None = None
    match_expressions: list[LabelSelectorRequirement] | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str) -> LabelSelector:
        exprs = _opt_list(obj, "matchExpressions", path)
        return cls(
            match_labels=_opt_str_map(obj, "matchLabels", path),
            match_expressions=None
            if exprs is None
            else [
                LabelSelectorRequirement.from_dict(_as_obj(e, f"{path}.matchExpressions[{i}]"), path)
                for i, e in enumerate(exprs)
            ],
        )

    def to_dict(self) -> JSON:
        out: JSON = {}
        _put(out, "matchLabels", self.match_labels)
        if self.match_expressions is not None:
            out["matchExpressions"] = [e.to_dict() for e in self.match_expressions]
        return out


def _as_obj(value: object, path: str) -> JSONObject:
    if not is_object(value):
        raise GatewayParseError(path, f"expected object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ProxyConfiguration:
    replicas: int | None = None
    proxy_http_port: str | None = None
    proxy_https_port: str | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str) -> ProxyConfiguration:
        return cls(
            replicas=_opt_int(obj, "Replicas", path),
            proxy_http_port=_opt_str(obj, "proxyHTTPPort", path),
            proxy_https_port=_opt_str(obj, "proxyHTTPSPort", path),
        )

    def to_dict(self) -> JSON:
        out: JSON = {}
        _put(out, "Replicas", self.replicas)
        _put(out, "proxyHTTPPort", self.proxy_http_port)
        _put(out, "proxyHTTPSPort", self.proxy_https_port)
        return out


@dataclass(frozen=True)
class TunnelConfiguration:
    replicas: int | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str) -> TunnelConfiguration:
        return cls(replicas=_opt_int(obj, "Replicas", path))

    def to_dict(self) -> JSON:
        out: JSON = {}
        _put(out, "Replicas", self.replicas)
        return out


@dataclass(frozen=True)
class Endpoint:
    """One node's offer to carry a gateway's tunnel or proxy traffic."""

    node_name: str
    type: str
    port: int | None = None
    under_nat: bool | None = None
    nat_type: str | None = None
    public_ip: str | None = None
    public_port: int | None = None
    config: dict[str, str] | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "endpoint") -> Endpoint:
        return cls(
            node_name=_opt_str(obj, "nodeName", path) or "",
            type=_opt_str(obj, "type", path) or "",
            port=_opt_int(obj, "port", path),
            under_nat=_opt_bool(obj, "underNAT", path),
            nat_type=_opt_str(obj, "natType", path),
            public_ip=_opt_str(obj, "publicIP", path),
            public_port=_opt_int(obj, "publicPort", path),
            config=_opt_str_map(obj, "config", path),
        )

    def to_dict(self) -> JSON:
        out: JSON = {"nodeName": self.node_name, "type": self.type}
        _put(out, "port", self.port)
        _put(out, "underNAT", self.under_nat)
        _put(out, "natType", self.nat_type)
        _put(out, "publicIP", self.public_ip)
        _put(out, "publicPort", self.public_port)
        _put(out, "config", self.config)
        return out

    @property
    def is_under_nat(self) -> bool:
        return bool(self.under_nat)

    @property
    def tunnel_port(self) -> int:
        """The UDP port peers send to (OpenYurt's default 4500 when unset or 0)."""
        return self.port or DEFAULT_TUNNEL_PORT

    @property
    def key(self) -> tuple[str, str]:
        return (self.node_name, self.type)


@dataclass(frozen=True)
class GatewaySpec:
    node_selector: LabelSelector | None = None
    proxy_config: ProxyConfiguration | None = None
    tunnel_config: TunnelConfiguration | None = None
    endpoints: list[Endpoint] | None = None
    expose_type: str | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "spec") -> GatewaySpec:
        sel = _opt_obj(obj, "nodeSelector", path)
        proxy = _opt_obj(obj, "proxyConfig", path)
        tunnel = _opt_obj(obj, "tunnelConfig", path)
        eps = _opt_list(obj, "endpoints", path)
        return cls(
            node_selector=None if sel is None else LabelSelector.from_dict(sel, f"{path}.nodeSelector"),
            proxy_config=None if proxy is None else ProxyConfiguration.from_dict(proxy, f"{path}.proxyConfig"),
            tunnel_config=None
            if tunnel is None
            else TunnelConfiguration.from_dict(tunnel, f"{path}.tunnelConfig"),
            endpoints=None
            if eps is None
            else [
                Endpoint.from_dict(_as_obj(e, f"{path}.endpoints[{i}]"), f"{path}.endpoints[{i}]")
                for i, e in enumerate(eps)
            ],
            expose_type=_opt_str(obj, "exposeType", path),
        )

    def to_dict(self) -> JSON:
        out: JSON = {}
        if self.node_selector is not None:
            out["nodeSelector"] = self.node_selector.to_dict()
        if self.proxy_config is not None:
            out["proxyConfig"] = self.proxy_config.to_dict()
        if self.tunnel_config is not None:
            out["tunnelConfig"] = self.tunnel_config.to_dict()
        if self.endpoints is not None:
            out["endpoints"] = [e.to_dict() for e in self.endpoints]
        _put(out, "exposeType", self.expose_type)
        return out

    @property
    def tunnel_replicas(self) -> int:
        """Active tunnel endpoints wanted: a missing Replicas means 1, as OpenYurt's conversion does."""
        if self.tunnel_config is None or self.tunnel_config.replicas is None:
            return 1
        return max(self.tunnel_config.replicas, 0)

    @property
    def proxy_replicas(self) -> int:
        if self.proxy_config is None or self.proxy_config.replicas is None:
            return 0
        return max(self.proxy_config.replicas, 0)

    @property
    def all_endpoints(self) -> list[Endpoint]:
        return list(self.endpoints or [])

    @property
    def is_exposed(self) -> bool:
        return bool(self.expose_type)


@dataclass(frozen=True)
class NodeInfo:
    """status.nodes[]: a node managed by the gateway, as the controller saw it."""

    node_name: str
    private_ip: str
    subnets: list[str]

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status.nodes[]") -> NodeInfo:
        return cls(
            node_name=_opt_str(obj, "nodeName", path) or "",
            private_ip=_opt_str(obj, "privateIP", path) or "",
            subnets=_opt_str_list(obj, "subnets", path) or [],
        )

    def to_dict(self) -> JSON:
        return {"nodeName": self.node_name, "privateIP": self.private_ip, "subnets": list(self.subnets)}


@dataclass(frozen=True)
class Condition:
    """A standard Kubernetes condition (our additive status field)."""

    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status.conditions[]") -> Condition:
        return cls(
            type=_opt_str(obj, "type", path) or "",
            status=_opt_str(obj, "status", path) or "",
            reason=_opt_str(obj, "reason", path) or "",
            message=_opt_str(obj, "message", path) or "",
            last_transition_time=_opt_str(obj, "lastTransitionTime", path),
            observed_generation=_opt_int(obj, "observedGeneration", path),
        )

    def to_dict(self) -> JSON:
        out: JSON = {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message}
        _put(out, "lastTransitionTime", self.last_transition_time)
        _put(out, "observedGeneration", self.observed_generation)
        return out


@dataclass(frozen=True)
class HeldNode:
    """status.pathHealth.held[]: a node replaced on data-plane evidence, not eligible again until its own reports
    have shown nothing against it for the hold time (times RFC 3339)."""

    node_name: str
    since: str
    clean_since: str | None = None
    evidence: str = ""

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status.pathHealth.held[]") -> HeldNode:
        return cls(node_name=_opt_str(obj, "nodeName", path) or "", since=_opt_str(obj, "since", path) or "",
                   clean_since=_opt_str(obj, "cleanSince", path), evidence=_opt_str(obj, "evidence", path) or "")

    def to_dict(self) -> JSON:
        out: JSON = {"nodeName": self.node_name, "since": self.since}
        _put(out, "cleanSince", self.clean_since)
        out["evidence"] = self.evidence
        return out


@dataclass(frozen=True)
class PathHealth:
    """status.pathHealth (Raven's additive field, written with the TunnelsHealthy condition by health failover):
    how many peer gateways reach the active endpoint through the tunnel (`kubectl get gw` shows it), and what the
    controller must remember across a leader change (the held nodes, the spent trial), so a new leader decides
    exactly as the old one and writes nothing when nothing changed."""

    peers_up: int = 0
    peers: int = 0
    held: tuple[HeldNode, ...] = ()
    trial_spent: bool = False

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status.pathHealth") -> PathHealth:
        held = _opt_list(obj, "held", path) or []
        return cls(peers_up=_opt_int(obj, "peersUp", path) or 0, peers=_opt_int(obj, "peers", path) or 0,
                   held=tuple(HeldNode.from_dict(_as_obj(h, f"{path}.held[{i}]"), f"{path}.held[{i}]")
                              for i, h in enumerate(held)),
                   trial_spent=bool(_opt_bool(obj, "trialSpent", path)))

    def to_dict(self) -> JSON:
        # `held` and `trialSpent` are always written, empty and false too: the controller writes status as a JSON
        # merge patch, where an absent key keeps the server's value (a released hold would stay in the API, and
        # every reconcile would write the status again, finding it different from what it wants).
        return {"peersUp": self.peers_up, "peers": self.peers, "held": [h.to_dict() for h in self.held],
                "trialSpent": self.trial_spent}


@dataclass(frozen=True)
class GatewayStatus:
    nodes: list[NodeInfo] | None = None
    active_endpoints: list[Endpoint] | None = None
    conditions: list[Condition] | None = None
    path_health: PathHealth | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status") -> GatewayStatus:
        nodes = _opt_list(obj, "nodes", path)
        active = _opt_list(obj, "activeEndpoints", path)
        conds = _opt_list(obj, "conditions", path)
        health = _opt_obj(obj, "pathHealth", path)
        return cls(
            nodes=None
            if nodes is None
            else [
                NodeInfo.from_dict(_as_obj(n, f"{path}.nodes[{i}]"), f"{path}.nodes[{i}]")
                for i, n in enumerate(nodes)
            ],
            active_endpoints=None
            if active is None
            else [
                Endpoint.from_dict(
                    _as_obj(e, f"{path}.activeEndpoints[{i}]"), f"{path}.activeEndpoints[{i}]"
                )
                for i, e in enumerate(active)
            ],
            conditions=None
            if conds is None
            else [
                Condition.from_dict(_as_obj(c, f"{path}.conditions[{i}]"), f"{path}.conditions[{i}]")
                for i, c in enumerate(conds)
            ],
            path_health=None if health is None else PathHealth.from_dict(health, f"{path}.pathHealth"),
        )

    def to_dict(self) -> JSON:
        out: JSON = {}
        if self.nodes is not None:
            out["nodes"] = [n.to_dict() for n in self.nodes]
        if self.active_endpoints is not None:
            out["activeEndpoints"] = [e.to_dict() for e in self.active_endpoints]
        if self.conditions is not None:
            out["conditions"] = [c.to_dict() for c in self.conditions]
        if self.path_health is not None:
            out["pathHealth"] = self.path_health.to_dict()
        return out

    def active_tunnel_endpoints(self) -> list[Endpoint]:
        return [e for e in self.active_endpoints or [] if e.type == ENDPOINT_TYPE_TUNNEL]


@dataclass(frozen=True)
class Gateway:
    """A Gateway object. `metadata` is kept as the server sent it (the model owns spec and status)."""

    name: str
    spec: GatewaySpec = field(default_factory=GatewaySpec)
    status: GatewayStatus = field(default_factory=GatewayStatus)
    metadata: JSON = field(default_factory=dict)
    api_version: str | None = None
    kind: str | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject) -> Gateway:
        meta = _opt_obj(obj, "metadata", "") or {}
        name = _opt_str(meta, "name", "metadata") or ""
        spec = _opt_obj(obj, "spec", "")
        status = _opt_obj(obj, "status", "")
        return cls(
            name=name,
            spec=GatewaySpec() if spec is None else GatewaySpec.from_dict(spec),
            status=GatewayStatus() if status is None else GatewayStatus.from_dict(status),
            metadata=dict(meta),
            api_version=_opt_str(obj, "apiVersion", ""),
            kind=_opt_str(obj, "kind", ""),
        )

    def to_dict(self) -> JSON:
        out: JSON = {}
        _put(out, "apiVersion", self.api_version)
        _put(out, "kind", self.kind)
        meta = dict(self.metadata)
        meta["name"] = self.name
        out["metadata"] = meta
        spec = self.spec.to_dict()
        if spec:
            out["spec"] = spec
        status = self.status.to_dict()
        if status:
            out["status"] = status
        return out

    @property
    def resource_version(self) -> str:
        return str(self.metadata.get("resourceVersion", ""))

    @property
    def uid(self) -> str:
        return str(self.metadata.get("uid", ""))

    @property
    def generation(self) -> int:
        gen = self.metadata.get("generation")
        return gen if isinstance(gen, int) else 0

    @property
    def being_deleted(self) -> bool:
        return bool(self.metadata.get("deletionTimestamp"))

    @functools.cached_property
    def problems(self) -> tuple[str, ...]:
        """`validate()`'s findings, computed once per parsed object (that is, once per resourceVersion)."""
        return tuple(_problems(self))


@dataclass(frozen=True)
class UnparsableGateway:
    """What can still be read from a Gateway whose JSON does not parse: enough to report it on its status.

    `conditions` are the status conditions that do parse (others' conditions are kept when we write ours).
    """

    name: str
    error: str
    uid: str = ""
    resource_version: str = ""
    conditions: tuple[Condition, ...] = ()

    @classmethod
    def from_dict(cls, obj: JSONObject, error: str) -> UnparsableGateway:
        meta = obj.get("metadata")
        meta = meta if is_object(meta) else {}
        status = obj.get("status")
        raw_conds = status.get("conditions") if is_object(status) else None
        conds: list[Condition] = []
        for c in raw_conds if is_array(raw_conds) else ():
            if not is_object(c):
                continue
            try:
                conds.append(Condition.from_dict(c))
            except GatewayParseError:
                continue
        name, uid, rv = (meta.get(k) for k in ("name", "uid", "resourceVersion"))
        return cls(name=name if isinstance(name, str) else "", error=error, uid=uid if isinstance(uid, str) else "",
                   resource_version=rv if isinstance(rv, str) else "", conditions=tuple(conds))


def parse_gateway(obj: JSONObject) -> Gateway | UnparsableGateway:
    """The controller's edge conversion: never raises; an unparsable object is kept for reporting."""
    try:
        return Gateway.from_dict(obj)
    except GatewayParseError as exc:
        return UnparsableGateway.from_dict(obj, str(exc))


# --- validation ---


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _port_ok(value: int | None) -> bool:
    # 0 is Go's zero value for "unset" (the field is omitempty), so it is accepted as "default".
    return value is None or 0 <= value <= 65535


def validate(gw: Gateway) -> list[str]:
    """Human-readable problems with a Gateway's spec; an empty list means it is valid.

    Computed once per parsed Gateway (`Gateway.problems`): the controller's election and the agent's plan
    both ask, on every event, and a Gateway from the typed informer cache is parsed once per resourceVersion.
    """
    return list(gw.problems)


def _problems(gw: Gateway) -> list[str]:
    problems: list[str] = []
    spec = gw.spec
    if spec.expose_type not in EXPOSE_TYPES:
        problems.append(
            f"spec.exposeType: unknown expose type {spec.expose_type!r} "
            f"(expected one of: \"\", PublicIP, LoadBalancer)"
        )
    for cfg_name, replicas in (
        ("tunnelConfig", spec.tunnel_config.replicas if spec.tunnel_config else None),
        ("proxyConfig", spec.proxy_config.replicas if spec.proxy_config else None),
    ):
        if replicas is not None and replicas < 0:
            problems.append(f"spec.{cfg_name}.Replicas: must not be negative, got {replicas}")

    seen: set[tuple[str, str]] = set()
    for i, ep in enumerate(spec.all_endpoints):
        # Build strings only for problems actually found.
        if ep.key not in seen and ep.node_name.strip() and ep.type in ENDPOINT_TYPES and not ep.public_ip \
                and _port_ok(ep.port) and _port_ok(ep.public_port):
            seen.add(ep.key)
            continue
        where = f"spec.endpoints[{i}]"
        if not ep.node_name.strip():
            problems.append(f"{where}.nodeName: must not be empty")
        if ep.type not in ENDPOINT_TYPES:
            problems.append(
                f"{where}.type: unknown endpoint type {ep.type!r} "
                f"(expected {ENDPOINT_TYPE_TUNNEL!r} or {ENDPOINT_TYPE_PROXY!r})"
            )
        if ep.public_ip and not _valid_ip(ep.public_ip):
            problems.append(f"{where}.publicIP: {ep.public_ip!r} is not a valid IP address")
        for port_name, port in (("port", ep.port), ("publicPort", ep.public_port)):
            if not _port_ok(port):
                problems.append(f"{where}.{port_name}: port {port} is out of range 1-65535")
        if ep.key in seen:
            problems.append(f"{where}: duplicate endpoint for node {ep.node_name!r} and type {ep.type!r}")
        seen.add(ep.key)

    nat_flags = {ep.is_under_nat for ep in spec.all_endpoints}
    if len(nat_flags) > 1:
        problems.append("spec.endpoints: mixed underNAT values; all endpoints of one gateway share one network")
    if spec.is_exposed and True in nat_flags:
        problems.append(f"spec.exposeType: gateway exposed by {spec.expose_type} cannot have underNAT endpoints")
    return problems
