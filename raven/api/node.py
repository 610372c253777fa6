"""The few facts Raven needs about a Kubernetes Node, converted once at the edge from API JSON."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from raven.api.constants import LABEL_GATEWAY
from raven.api.gateway import JSONObject, is_array, is_object
from raven.api.openyurt import ANNOTATION_EXTRA_CIDRS, extra_cidrs


@functools.lru_cache(maxsize=1 << 16)  # type: ignore[misc]  # (its type says Callable[..., T])
def _parses(cidr: str) -> bool:
    """Whether a pod CIDR parses (cached: every election asks it of every node of its gateway)."""
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Node:
    name: str
    internal_ip: str | None
    pod_cidrs: tuple[str, ...]
    ready: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    being_deleted: bool = False
    resource_version: str = ""
    uid: str = ""
    created: str = ""  # metadata.creationTimestamp (RFC 3339, so strings compare in time order); "" if unknown
    # OpenYurt's raven.openyurt.io/extra-allowed-source-cidrs annotation, as written (checked by nodecheck).
    extra_cidrs: tuple[str, ...] = ()
    # Ready is Unknown: the control plane cannot hear the node (the node lifecycle controller's NodeStatusUnknown,
    # "Kubelet stopped posting node status"), as opposed to Ready=False, which the node itself reports.
    unreachable: bool = False

    @property
    def gateway(self) -> str | None:
        """The Gateway this node belongs to (its `raven.openyurt.io/gateway` label), if any."""
        value = self.labels.get(LABEL_GATEWAY)
        return value or None

    @property
    def eligible(self) -> bool:
        """May carry a gateway's traffic: Ready and not being deleted."""
        return self.ready and not self.being_deleted

    def problems(self) -> list[str]:
        """What is missing or malformed for Raven's purposes (reported, never fatal)."""
        out: list[str] = []
        if not self.internal_ip:
            out.append(f"node {self.name}: no InternalIP address")
        if not self.pod_cidrs:
            out.append(f"node {self.name}: no pod CIDR (spec.podCIDRs/spec.podCIDR)")
        for cidr in self.pod_cidrs:
            if not _parses(cidr):
                out.append(f"node {self.name}: invalid pod CIDR {cidr!r}")
        return out

    @classmethod
    def from_dict(cls, obj: JSONObject) -> Node:
        """Lenient: a field of the wrong type reads as absent (what is missing is then in `problems()`)."""
        meta, spec, status = _obj(obj.get("metadata")), _obj(obj.get("spec")), _obj(obj.get("status"))
        internal_ip: str | None = None
        for addr in _arr(status.get("addresses")):
            if is_object(addr) and addr.get("type") == "InternalIP" and addr.get("address"):
                internal_ip = str(addr.get("address"))
                break
        cidrs = _arr(spec.get("podCIDRs")) or ([spec.get("podCIDR")] if spec.get("podCIDR") else [])
        ready = unreachable = False
        for cond in _arr(status.get("conditions")):
            if is_object(cond) and cond.get("type") == "Ready":
                ready = cond.get("status") == "True"
                unreachable = cond.get("status") == "Unknown"
        labels = _obj(meta.get("labels"))
        annotations = _obj(meta.get("annotations"))
        extra = annotations.get(ANNOTATION_EXTRA_CIDRS)
        return cls(
            name=str(meta.get("name", "")),
            internal_ip=internal_ip,
            pod_cidrs=tuple(str(c) for c in cidrs),
            ready=ready,
            labels={str(k): str(v) for k, v in labels.items()},
            being_deleted=bool(meta.get("deletionTimestamp")),
            resource_version=str(meta.get("resourceVersion", "")),
            uid=str(meta.get("uid", "")),
            created=str(meta.get("creationTimestamp", "")),
            extra_cidrs=extra_cidrs({ANNOTATION_EXTRA_CIDRS: extra}) if isinstance(extra, str) else (),
            unreachable=unreachable,
        )


_EMPTY: JSONObject = {}


def _obj(value: object) -> JSONObject:
    return value if is_object(value) else _EMPTY


def _arr(value: object) -> Sequence[object]:
    return value if is_array(value) else ()
