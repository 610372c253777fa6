"""`health.raven-py.io/v1alpha1` PathReport: what one node's agent measures of the paths it uses.

One cluster-scoped object per node (`metadata.name` = the node name), written only by that node's agent
(the object with `spec.nodeName`, then its `status` through the /status subresource). A group of our own:
no OpenYurt object changes, and an OpenYurt-only client never sees these. The shape is the one fixed in the
path-health contract shared by the agent side (probes) and the controller side (failover):

    spec:   {nodeName}
    status: {gateway, role, heartbeatTime, probeIntervalSeconds, targets: [{kind, gateway, node, address,
             state, since, rttSeconds, lossRatio}], wireguardPublicKey,
             observedEndpoints: [{gateway, node, address, port, since}], paths: [{gateway, via, cost, since}]}

`status.paths` (an active gateway's, with routing by cost): the path it uses to each other pool (`via` the relay,
"" for the direct link; `cost` as raven.routing.graph defines it; `since` when it was chosen), for `raven status`
and `raven graph`. Additive: readers that do not know it ignore it.

`status.wireguardPublicKey` (with --vpn-driver=wireguard; base64, 32 bytes) is where a node publishes its
WireGuard public key: in the one object only that node may write (06-pathreport-policy.yaml), never in a
Gateway (which would need every agent to patch every Gateway). The controller copies it, for each elected
tunnel endpoint, into the Gateway's `status.activeEndpoints[].config.publicKey` (OpenYurt Raven's key), where
peers read it; a report whose spec.nodeName differs from its name is ignored there too.

`status.observedEndpoints` (NAT traversal's rendezvous, written by active gateways): for each peer gateway under
NAT whose tunnel this gateway answers, the address and port the peer's packets arrive from (its NAT's mapping, as
charon's SA list or WireGuard's peer endpoint shows it), since when it is seen there. Readers infer each NAT'd
gateway's NAT behaviour from these (raven/nattraversal/core.py).

Parsing is strict about types (a wrong type raises `PathReportParseError`, so the typed informer keeps no
value for that version and the controller treats the node as having no evidence), lenient about absence (a
missing field reads as its empty value) and skips targets of a kind it does not know (a newer agent's).
`to_dict(from_dict(x))` keeps every known field, and `from_dict(to_dict(r)) == r`.

The agent (raven/pathhealth) keeps epoch seconds internally and converts at its edge with `from_epoch` /
`to_epoch`; it creates its object once with `new_report_body` and then writes `status_patch` merge patches of
`/status`. Readers use `fresh` (the controller) or `stale` / `heartbeat_age` (the agent, tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from raven.api.gateway import JSON, JSONObject, is_array, is_object

GROUP: Final = "health.raven-py.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "PathReport"
PLURAL: Final = "pathreports"

Role = Literal["none", "member", "gateway"]
TargetKind = Literal["gateway", "via", "peer", "underlay"]
State = Literal["up", "degraded", "down", "unknown"]
ROLES: Final[tuple[Role, ...]] = ("none", "member", "gateway")
TARGET_KINDS: Final[tuple[TargetKind, ...]] = ("gateway", "via", "peer", "underlay")
STATES: Final[tuple[State, ...]] = ("up", "degraded", "down", "unknown")

# Target kinds.
KIND_GATEWAY: Final[TargetKind] = "gateway"  # a member probing its own pool's active gateway over raven0
KIND_VIA: Final[TargetKind] = "via"  # a member probing THROUGH its gateway to a remote gateway's inner address
KIND_PEER: Final[TargetKind] = "peer"  # an active gateway probing a peer gateway's inner address (tunnel)
# A standby candidate (in a Gateway's spec.endpoints, not active) probing a peer gateway's tunnel endpoint address
# (the address its IKE would use, public or private as the plan picks) over the underlay, from its node IP: the
# evidence that it could do better than the active endpoint.
KIND_UNDERLAY: Final[TargetKind] = "underlay"

# Target states.
STATE_UP: Final[State] = "up"
STATE_DEGRADED: Final[State] = "degraded"
STATE_DOWN: Final[State] = "down"
STATE_UNKNOWN: Final[State] = "unknown"

# This node's role in its last plan.
ROLE_NONE: Final[Role] = "none"
ROLE_MEMBER: Final[Role] = "member"
ROLE_GATEWAY: Final[Role] = "gateway"

# A report whose heartbeat is older than this many heartbeat periods is stale: "no evidence", never "down".
STALE_AFTER_HEARTBEATS: Final = 3

class PathReportParseError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def _obj(parent: JSONObject, key: str, path: str) -> JSONObject:
    value = parent.get(key)
    if value is None:
        return {}
    if not is_object(value):
        raise PathReportParseError(f"{path}.{key}", f"expected object, got {type(value).__name__}")
    return value


def _str(parent: JSONObject, key: str, path: str) -> str:
    value = parent.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PathReportParseError(f"{path}.{key}", f"expected string, got {type(value).__name__}")
    return value


def _num(parent: JSONObject, key: str, path: str) -> float | None:
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PathReportParseError(f"{path}.{key}", f"expected number, got {type(value).__name__}")
    return float(value)


def _choice(parent: JSONObject, key: str, path: str, choices: Sequence[str], default: str) -> str:
    value = _str(parent, key, path) or default
    if value not in choices:
        raise PathReportParseError(f"{path}.{key}", f"{value!r} is not one of {', '.join(choices)}")
    return value


def parse_time(text: str, path: str = "time") -> datetime | None:
    """RFC 3339 (`...Z` or an offset) as an aware UTC datetime; "" is None."""
    if not text:
        return None
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PathReportParseError(path, f"{text!r} is not an RFC 3339 time") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def format_time(ts: datetime) -> str:
    ts = ts.astimezone(UTC)
    if ts.microsecond:
        return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def from_epoch(epoch: float) -> datetime:
    """The agent's edge: epoch seconds as an aware UTC datetime, whole seconds (as Kubernetes writes times)."""
    return datetime.fromtimestamp(int(epoch), UTC)


def to_epoch(ts: datetime) -> float:
    return ts.timestamp()


@dataclass(frozen=True)
class Target:
    """One probed target, as the agent's state machine sees it (`state` uses its hysteresis: `down` only after
    N consecutive losses, so one lost probe in ten is at most `degraded`)."""

    kind: TargetKind
    gateway: str  # the Gateway the target belongs to
    node: str  # the target gateway's active endpoint when probed ("" when unknown)
    address: str
    state: State
    since: datetime | None = None
    rtt_seconds: float | None = None
    loss_ratio: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a target across plans and reports (the agent's probe key)."""
        return self.kind, self.address

    @property
    def reached(self) -> bool:
        return self.state in ("up", "degraded")

    @property
    def lost(self) -> bool:
        return self.state == "down"

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status.targets[]") -> Target:
        kind = _choice(obj, "kind", path, TARGET_KINDS, "")
        state = _choice(obj, "state", path, STATES, "unknown")
        return cls(
            kind=_as_kind(kind), gateway=_str(obj, "gateway", path), node=_str(obj, "node", path),
            address=_str(obj, "address", path), state=_as_state(state),
            since=parse_time(_str(obj, "since", path), f"{path}.since"),
            rtt_seconds=_num(obj, "rttSeconds", path), loss_ratio=_num(obj, "lossRatio", path),
        )

    def to_dict(self) -> JSON:
        out: JSON = {"kind": self.kind, "gateway": self.gateway, "node": self.node, "address": self.address,
                     "state": self.state}
        if self.since is not None:
            out["since"] = format_time(self.since)
        out["rttSeconds"] = self.rtt_seconds
        if self.loss_ratio is not None:
            out["lossRatio"] = self.loss_ratio
        return out


@dataclass(frozen=True, order=True)
class ObservedEndpoint:
    """A NAT'd peer gateway's tunnel as this gateway sees it arrive: its NAT's mapped address and port."""

    gateway: str  # the peer Gateway
    node: str  # its active endpoint node ("" when unknown)
    address: str
    port: int
    since: datetime | None = None  # first seen at this address:port

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status.observedEndpoints[]") -> ObservedEndpoint:
        port = _num(obj, "port", path)
        if port is not None and (port != int(port) or not 0 <= port <= 65535):
            raise PathReportParseError(f"{path}.port", f"{port!r} is not a port")
        return cls(gateway=_str(obj, "gateway", path), node=_str(obj, "node", path),
                   address=_str(obj, "address", path), port=int(port) if port is not None else 0,
                   since=parse_time(_str(obj, "since", path), f"{path}.since"))

    def to_dict(self) -> JSON:
        out: JSON = {"gateway": self.gateway, "node": self.node, "address": self.address, "port": self.port}
        if self.since is not None:
            out["since"] = format_time(self.since)
        return out


@dataclass(frozen=True)
class RoutedPath:
    """The path an active gateway uses to another pool (routing by cost)."""

    gateway: str  # the remote pool's Gateway
    via: str  # the relay; "" for the direct link
    cost: float
    since: datetime | None = None

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status.paths[]") -> RoutedPath:
        return cls(gateway=_str(obj, "gateway", path), via=_str(obj, "via", path), cost=_num(obj, "cost", path) or 0.0,
                   since=parse_time(_str(obj, "since", path), f"{path}.since"))

    def to_dict(self) -> JSON:
        out: JSON = {"gateway": self.gateway, "via": self.via, "cost": self.cost}
        if self.since is not None:
            out["since"] = format_time(self.since)
        return out


def _as_kind(value: str) -> TargetKind:
    for k in TARGET_KINDS:
        if k == value:
            return k
    raise PathReportParseError("kind", f"{value!r} is not one of {', '.join(TARGET_KINDS)}")


def _as_state(value: str) -> State:
    for s in STATES:
        if s == value:
            return s
    return "unknown"


def _as_role(value: str) -> Role:
    for r in ROLES:
        if r == value:
            return r
    return "none"


@dataclass(frozen=True)
class PathReportStatus:
    gateway: str = ""
    role: Role = "none"
    heartbeat_time: datetime | None = None
    probe_interval_seconds: float | None = None
    targets: tuple[Target, ...] = ()
    wireguard_public_key: str = ""  # base64; "" when the node runs no WireGuard (or has not published it yet)
    observed_endpoints: tuple[ObservedEndpoint, ...] = ()  # NAT'd peers' mappings (active gateways only)
    paths: tuple[RoutedPath, ...] = ()  # an active gateway's chosen paths (routing by cost), by gateway

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status") -> PathReportStatus:
        raw = obj.get("targets")
        if raw is not None and not is_array(raw):
            raise PathReportParseError(f"{path}.targets", f"expected array, got {type(raw).__name__}")
        targets: list[Target] = []
        for i, t in enumerate(raw if is_array(raw) else ()):
            if not is_object(t):
                raise PathReportParseError(f"{path}.targets[{i}]", f"expected object, got {type(t).__name__}")
            if t.get("kind") not in TARGET_KINDS:
                continue  # a kind a newer agent measures: not evidence this controller knows how to read
            targets.append(Target.from_dict(t, f"{path}.targets[{i}]"))
        raw_seen = obj.get("observedEndpoints")
        if raw_seen is not None and not is_array(raw_seen):
            raise PathReportParseError(f"{path}.observedEndpoints", f"expected array, got {type(raw_seen).__name__}")
        seen: list[ObservedEndpoint] = []
        for i, e in enumerate(raw_seen if is_array(raw_seen) else ()):
            if not is_object(e):
                raise PathReportParseError(f"{path}.observedEndpoints[{i}]", f"expected object, got {type(e).__name__}")
            seen.append(ObservedEndpoint.from_dict(e, f"{path}.observedEndpoints[{i}]"))
        raw_paths = obj.get("paths")
        if raw_paths is not None and not is_array(raw_paths):
            raise PathReportParseError(f"{path}.paths", f"expected array, got {type(raw_paths).__name__}")
        paths: list[RoutedPath] = []
        for i, p in enumerate(raw_paths if is_array(raw_paths) else ()):
            if not is_object(p):
                raise PathReportParseError(f"{path}.paths[{i}]", f"expected object, got {type(p).__name__}")
            paths.append(RoutedPath.from_dict(p, f"{path}.paths[{i}]"))
        return cls(
            gateway=_str(obj, "gateway", path),
            role=_as_role(_choice(obj, "role", path, ROLES, "none")),
            heartbeat_time=parse_time(_str(obj, "heartbeatTime", path), f"{path}.heartbeatTime"),
            probe_interval_seconds=_num(obj, "probeIntervalSeconds", path),
            targets=tuple(targets),
            wireguard_public_key=_str(obj, "wireguardPublicKey", path),
            observed_endpoints=tuple(seen),
            paths=tuple(paths),
        )

    def to_dict(self) -> JSON:
        out: JSON = {"gateway": self.gateway, "role": self.role}
        if self.wireguard_public_key:
            out["wireguardPublicKey"] = self.wireguard_public_key
        if self.heartbeat_time is not None:
            out["heartbeatTime"] = format_time(self.heartbeat_time)
        if self.probe_interval_seconds is not None:
            out["probeIntervalSeconds"] = self.probe_interval_seconds
        out["targets"] = [t.to_dict() for t in self.targets]
        if self.observed_endpoints:
            out["observedEndpoints"] = [e.to_dict() for e in self.observed_endpoints]
        if self.paths:
            out["paths"] = [p.to_dict() for p in self.paths]
        return out


@dataclass(frozen=True)
class PathReport:
    name: str  # metadata.name: the node the report is about
    node_name: str  # spec.nodeName: must equal `name` (else the controller ignores the report)
    status: PathReportStatus = PathReportStatus()
    resource_version: str = ""

    @classmethod
    def from_dict(cls, obj: JSONObject) -> PathReport:
        meta = _obj(obj, "metadata", "")
        rv = meta.get("resourceVersion")
        return cls(
            name=_str(meta, "name", "metadata"),
            node_name=_str(_obj(obj, "spec", ""), "nodeName", "spec"),
            status=PathReportStatus.from_dict(_obj(obj, "status", "")),
            resource_version=rv if isinstance(rv, str) else "",
        )

    def to_dict(self) -> JSON:
        meta: JSON = {"name": self.name}
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": {"nodeName": self.node_name},
                "status": self.status.to_dict()}

    @property
    def well_formed(self) -> bool:
        """Written by the node it names (the contract's writer check; RBAC cannot narrow agents' writes)."""
        return bool(self.name) and self.node_name == self.name

    @property
    def wireguard_public_key(self) -> str:
        """The WireGuard public key this node published ("" when none, or when the report is ill-formed: a key
        is taken only from the node's own report)."""
        return self.status.wireguard_public_key if self.well_formed else ""

    def fresh(self, now: datetime, stale_after: timedelta) -> bool:
        """A report whose heartbeat is older than `stale_after` (3 x the agents' heartbeat) is no evidence."""
        hb = self.status.heartbeat_time
        return hb is not None and now - hb <= stale_after

    def heartbeat_age(self, now: datetime) -> timedelta | None:
        """Time since the last heartbeat (None when there is none)."""
        hb = self.status.heartbeat_time
        return None if hb is None else now - hb

    def stale(self, now: datetime, heartbeat: timedelta) -> bool:
        """No evidence: ill-formed, never written, or not refreshed within STALE_AFTER_HEARTBEATS heartbeats."""
        return not self.well_formed or not self.fresh(now, STALE_AFTER_HEARTBEATS * heartbeat)


def new_report_body(node_name: str) -> JSON:
    """What an agent creates once: the object with its spec and no status (status goes via /status)."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": node_name},
            "spec": {"nodeName": node_name}}


def key_patch(public_key: str) -> JSON:
    """The merge patch of /status that publishes a WireGuard public key (and touches nothing else)."""
    return {"status": {"wireguardPublicKey": public_key}}


def status_patch(status: PathReportStatus) -> JSON:
    """The merge patch of /status that makes the object's status `status` (targets is a list: replaced whole)."""
    return {"status": status.to_dict()}
