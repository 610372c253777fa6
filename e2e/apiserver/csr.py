"""certificates.k8s.io/v1 CertificateSigningRequests as the real API server treats them.

- create: `spec.username`, `uid`, `groups` and `extra` are set from the authenticated requester (whatever
  the body says), status is dropped; `spec.request` must be a base64 PEM CERTIFICATE REQUEST, `signerName`
  and `usages` are required, `expirationSeconds` (if set) at least 600.
- update of the object: `spec` is immutable (reset to the stored one), status untouched.
- `/approval`: only `status.conditions` change; Approved and Denied exclude each other and, once set,
  cannot be removed.
- `/status`: `status.certificate` and conditions other than Approved/Denied change; a certificate may
  only be set on an approved, not denied request, must be PEM CERTIFICATE blocks, and is immutable.

There is no authorization here (the test server has none): a signer's `approve`/`sign` permissions are
checked by the RBAC test against the manifests, not by this server.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .errors import FieldError
from .store import clone

GROUP = "certificates.k8s.io"
PLURAL = "certificatesigningrequests"
APPROVAL_TYPES = ("Approved", "Denied")


def is_csr(group: str, plural: str) -> bool:
    return group == GROUP and plural == PLURAL


def _pem_blocks(data: str, kind: str) -> bool:
    try:
        raw = base64.b64decode(data, validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return f"-----BEGIN {kind}-----" in raw and f"-----END {kind}-----" in raw


def prepare_create(obj: dict[str, Any], user: dict[str, Any]) -> list[FieldError]:
    spec = obj.setdefault("spec", {})
    errs: list[FieldError] = []
    if not isinstance(spec.get("request"), str) or not _pem_blocks(spec["request"], "CERTIFICATE REQUEST"):
        errs.append(FieldError("FieldValueInvalid", "spec.request", "<binary>",
                               "PEM block type must be CERTIFICATE REQUEST"))
    if not spec.get("signerName"):
        errs.append(FieldError("FieldValueRequired", "spec.signerName", None, ""))
    if not spec.get("usages"):
        errs.append(FieldError("FieldValueRequired", "spec.usages", None, ""))
    exp = spec.get("expirationSeconds")
    if exp is not None and (not isinstance(exp, int) or exp < 600):
        errs.append(FieldError("FieldValueInvalid", "spec.expirationSeconds", exp, "may not specify a duration "
                               "less than 600 seconds (10 minutes)"))
    for f in ("username", "uid", "groups", "extra"):
        spec.pop(f, None)
    spec["username"] = user.get("username", "")
    if user.get("uid"):
        spec["uid"] = user["uid"]
    spec["groups"] = list(user.get("groups") or [])
    if user.get("extra"):
        spec["extra"] = {k: list(v) for k, v in user["extra"].items()}
    obj.pop("status", None)
    return errs


def prepare_update(old: dict[str, Any], new: dict[str, Any], subresource: str | None) -> tuple[dict[str, Any],
                                                                                                 list[FieldError]]:
    """The object to store for an update of `old` with `new` through `subresource`, and what is invalid."""
    errs: list[FieldError] = []
    old_status = old.get("status") or {}
    new_status = new.get("status") or {}
    old_conds = [c for c in old_status.get("conditions") or [] if isinstance(c, dict)]
    new_conds = [c for c in new_status.get("conditions") or [] if isinstance(c, dict)]
    out = clone(old)  # metadata, spec: as stored (a subresource changes status only)
    status = clone(old_status)
    if subresource == "approval":
        types = {c.get("type") for c in new_conds if c.get("status", "True") == "True"}
        if {"Approved", "Denied"} <= types:
            errs.append(FieldError("FieldValueInvalid", "status.conditions", None,
                                   "Approved and Denied conditions are mutually exclusive"))
        for c in old_conds:
            if c.get("type") in APPROVAL_TYPES and not any(n.get("type") == c.get("type") for n in new_conds):
                errs.append(FieldError("FieldValueForbidden", "status.conditions", None,
                                       f"updates may not remove a condition of type {c.get('type')!r}"))
        status["conditions"] = new_conds
    elif subresource == "status":
        kept = [c for c in old_conds if c.get("type") in APPROVAL_TYPES]
        status["conditions"] = kept + [c for c in new_conds if c.get("type") not in APPROVAL_TYPES]
        cert = new_status.get("certificate")
        if cert != old_status.get("certificate"):
            approved = any(c.get("type") == "Approved" for c in kept)
            denied = any(c.get("type") == "Denied" for c in kept)
            if old_status.get("certificate"):
                errs.append(FieldError("FieldValueForbidden", "status.certificate", None,
                                       "updates may not modify existing certificate content"))
            elif not approved or denied:
                errs.append(FieldError("FieldValueForbidden", "status.certificate", None,
                                       "certificate can only be set once the request is approved and not denied"))
            elif not isinstance(cert, str) or not _pem_blocks(cert, "CERTIFICATE"):
                errs.append(FieldError("FieldValueInvalid", "status.certificate", "<certificate data>",
                                       "must contain at least one CERTIFICATE PEM block"))
            else:
                status["certificate"] = cert
    if not status.get("conditions"):
        status.pop("conditions", None)
    out["status"] = status
    return out, errs
