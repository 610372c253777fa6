"""certificates.k8s.io/v1 CertificateSigningRequest: the facts the signer and the agent read, and the bodies
they write (approval condition, issued certificate, the request itself). Converted once at the edge."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from raven.api.gateway import JSON, JSONObject, is_array, is_object

# The real API server fills spec.extra with this key from a pod's bound service-account token.
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"


@dataclass(frozen=True)
class CertificateSigningRequest:
    name: str
    signer_name: str
    request_pem: bytes  # spec.request, decoded; b"" when absent or not base64
    usages: tuple[str, ...]
    username: str  # spec.username: filled by the API server from the creator's credentials
    groups: tuple[str, ...]
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    approved: bool = False
    denied: bool = False
    failed: bool = False
    certificate_pem: bytes = b""
    resource_version: str = ""
    uid: str = ""
    message: str = ""  # of the Denied or Failed condition

    @property
    def decided(self) -> bool:
        return self.denied or self.failed or bool(self.certificate_pem)

    @classmethod
    def from_dict(cls, obj: JSONObject) -> CertificateSigningRequest:
        meta, spec, status = _obj(obj.get("metadata")), _obj(obj.get("spec")), _obj(obj.get("status"))
        conds: dict[str, str] = {str(c.get("type")): str(c.get("message", "")) for c in _arr(status.get("conditions"))
                                 if is_object(c) and c.get("status", "True") == "True"}
        extra = {str(k): tuple(str(x) for x in _arr(v)) for k, v in _obj(spec.get("extra")).items()}
        return cls(
            name=str(meta.get("name", "")),
            signer_name=str(spec.get("signerName", "")),
            request_pem=_b64(spec.get("request")),
            usages=tuple(str(u) for u in _arr(spec.get("usages"))),
            username=str(spec.get("username", "")),
            groups=tuple(str(g) for g in _arr(spec.get("groups"))),
            extra=extra,
            approved="Approved" in conds,
            denied="Denied" in conds,
            failed="Failed" in conds,
            certificate_pem=_b64(status.get("certificate")),
            resource_version=str(meta.get("resourceVersion", "")),
            uid=str(meta.get("uid", "")),
            message=conds.get("Denied") or conds.get("Failed") or "",
        )


def request_body(generate_name: str, signer_name: str, request_pem: bytes, usages: Sequence[str],
                 labels: Mapping[str, str]) -> JSON:
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": generate_name, "labels": dict(labels)},
        "spec": {"signerName": signer_name, "request": base64.b64encode(request_pem).decode(),
                 "usages": list(usages)},
    }


def condition_body(csr: CertificateSigningRequest, type_: str, reason: str, message: str, now: str) -> JSON:
    """The /approval (Approved, Denied) or /status (Failed) update: PUT with the resourceVersion read."""
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": csr.name, "resourceVersion": csr.resource_version},
        "status": {"conditions": [{"type": type_, "status": "True", "reason": reason, "message": message,
                                   "lastUpdateTime": now, "lastTransitionTime": now}]},
    }


def _b64(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


_EMPTY: JSONObject = {}


def _obj(value: object) -> JSONObject:
    return value if is_object(value) else _EMPTY


def _arr(value: object) -> Sequence[object]:
    return value if is_array(value) else ()
