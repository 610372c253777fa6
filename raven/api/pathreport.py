"""`health.raven-py.io/v1alpha1` PathReport: what one node's agent measures of its data-plane paths.

A group of our own, so no OpenYurt object changes: one cluster-scoped object per node (`metadata.name` = the node
name), created once by that node's agent with `spec.nodeName`, then written through the `/status` subresource
(merge patches). Shape and meaning: HEALTH-CONTRACT.md and docs/architecture.md ("Path health").

`PathReport.from_dict` is strict (a wrong type raises `PathReportParseError` naming the field), `to_dict` is its
inverse for every field the model knows: `from_dict(to_dict(r)) == r`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from raven.api.gateway import JSON, JSONObject, is_array, is_object

GROUP: Final = "health.raven-py.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "PathReport"
PLURAL: Final = "pathreports"

# Target kinds.
KIND_GATEWAY: Final = "gateway"  # a member probing its own pool's active gateway over raven0
KIND_VIA: Final = "via"  # a member probing THROUGH its gateway to a remote gateway's inner address
KIND_PEER: Final = "peer"  # an active gateway probing a peer gateway's inner address through the tunnel
TARGET_KINDS: Final = (KIND_GATEWAY, KIND_VIA, KIND_PEER)

# Target states.
STATE_UP: Final = "up"
STATE_DEGRADED: Final = "degraded"
STATE_DOWN: Final = "down"
STATE_UNKNOWN: Final = "unknown"
STATES: Final = (STATE_UP, STATE_DEGRADED, STATE_DOWN, STATE_UNKNOWN)

# This node's role in its last plan.
ROLE_NONE: Final = "none"
ROLE_MEMBER: Final = "member"
ROLE_GATEWAY: Final = "gateway"
ROLES: Final = (ROLE_NONE, ROLE_MEMBER, ROLE_GATEWAY)

# A report whose heartbeat is older than this many heartbeat periods is stale: "no evidence", never "down".
STALE_AFTER_HEARTBEATS: Final = 3


class PathReportParseError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


def format_time(epoch: float) -> str:
    """RFC 3339 UTC with whole seconds, as Kubernetes writes timestamps."""
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp; None when it does not parse."""
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _str(obj: JSONObject, key: str, path: str, *, choices: Sequence[str] | None = None) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PathReportParseError(f"{path}.{key}", f"expected string, got {type(value).__name__}")
    if choices is not None and value not in choices:
        raise PathReportParseError(f"{path}.{key}", f"{value!r} is not one of {', '.join(choices)}")
    return value


def _num(obj: JSONObject, key: str, path: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PathReportParseError(f"{path}.{key}", f"expected number, got {type(value).__name__}")
    return float(value)


def _obj(obj: JSONObject, key: str, path: str) -> JSONObject:
    value = obj.get(key)
    if value is None:
        return {}
    if not is_object(value):
        raise PathReportParseError(f"{path}.{key}", f"expected object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class TargetReport:
    kind: str  # gateway | via | peer
    gateway: str  # the Gateway the target belongs to
    node: str  # the target's active endpoint when probed ("" when unknown)
    address: str  # what was pinged
    state: str = STATE_UNKNOWN
    since: str = ""  # RFC 3339: when `state` last changed
    rtt_seconds: float | None = None  # EWMA; None before the first reply
    loss_ratio: float = 0.0  # over the last window

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status.targets[]") -> TargetReport:
        return cls(
            kind=_str(obj, "kind", path, choices=TARGET_KINDS),
            gateway=_str(obj, "gateway", path),
            node=_str(obj, "node", path),
            address=_str(obj, "address", path),
            state=_str(obj, "state", path, choices=STATES) or STATE_UNKNOWN,
            since=_str(obj, "since", path),
            rtt_seconds=_num(obj, "rttSeconds", path),
            loss_ratio=_num(obj, "lossRatio", path) or 0.0,
        )

    def to_dict(self) -> JSON:
        return {"kind": self.kind, "gateway": self.gateway, "node": self.node, "address": self.address,
                "state": self.state, "since": self.since, "rttSeconds": self.rtt_seconds,
                "lossRatio": self.loss_ratio}

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.address


@dataclass(frozen=True)
class PathReportStatus:
    gateway: str = ""  # the Gateway whose status.nodes lists this node ("" when none)
    role: str = ROLE_NONE
    heartbeat_time: str = ""  # RFC 3339
    probe_interval_seconds: float = 0.0
    targets: tuple[TargetReport, ...] = ()

    @classmethod
    def from_dict(cls, obj: JSONObject, path: str = "status") -> PathReportStatus:
        raw = obj.get("targets")
        if raw is not None and not is_array(raw):
            raise PathReportParseError(f"{path}.targets", f"expected array, got {type(raw).__name__}")
        targets: list[TargetReport] = []
        for i, t in enumerate(raw or ()):
            if not is_object(t):
                raise PathReportParseError(f"{path}.targets[{i}]", f"expected object, got {type(t).__name__}")
            targets.append(TargetReport.from_dict(t, f"{path}.targets[{i}]"))
        return cls(
            gateway=_str(obj, "gateway", path),
            role=_str(obj, "role", path, choices=ROLES) or ROLE_NONE,
            heartbeat_time=_str(obj, "heartbeatTime", path),
            probe_interval_seconds=_num(obj, "probeIntervalSeconds", path) or 0.0,
            targets=tuple(targets),
        )

    def to_dict(self) -> JSON:
        return {"gateway": self.gateway, "role": self.role, "heartbeatTime": self.heartbeat_time,
                "probeIntervalSeconds": self.probe_interval_seconds,
                "targets": [t.to_dict() for t in self.targets]}


@dataclass(frozen=True)
class PathReport:
    name: str  # metadata.name: the node name
    node_name: str  # spec.nodeName: must equal `name` (a report where it does not is ignored by readers)
    status: PathReportStatus = field(default_factory=PathReportStatus)
    resource_version: str = ""

    @classmethod
    def from_dict(cls, obj: JSONObject) -> PathReport:
        meta = _obj(obj, "metadata", "")
        return cls(
            name=_str(meta, "name", "metadata"),
            node_name=_str(_obj(obj, "spec", ""), "nodeName", "spec"),
            status=PathReportStatus.from_dict(_obj(obj, "status", "")),
            resource_version=_str(meta, "resourceVersion", "metadata"),
        )

    def to_dict(self) -> JSON:
        meta: JSON = {"name": self.name}
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": {"nodeName": self.node_name},
                "status": self.status.to_dict()}

    @property
    def well_formed(self) -> bool:
        """Written by the node it names (`spec.nodeName` == `metadata.name`)."""
        return bool(self.name) and self.name == self.node_name

    def heartbeat_age(self, now: float) -> float | None:
        """Seconds since the last heartbeat (None when there is none or it does not parse)."""
        t = parse_time(self.status.heartbeat_time) if self.status.heartbeat_time else None
        return None if t is None else now - t

    def stale(self, now: float, heartbeat_s: float) -> bool:
        """No evidence: never written, ill-formed, or not refreshed within STALE_AFTER_HEARTBEATS heartbeats."""
        age = self.heartbeat_age(now)
        return not self.well_formed or age is None or age > STALE_AFTER_HEARTBEATS * heartbeat_s


def new_report_body(node_name: str) -> JSON:
    """What an agent creates once: the object with its spec and no status (status goes via /status)."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": node_name}, "spec": {"nodeName": node_name}}


def status_patch(status: PathReportStatus) -> JSON:
    """The merge patch of /status that makes the object's status `status` (targets is a list: replaced whole)."""
    return {"status": status.to_dict()}
