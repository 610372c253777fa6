"""Kubernetes Status objects and the exception that carries them to the HTTP layer.

Every failure the server reports is a real `metav1.Status` with the reason and code a real
kube-apiserver would use, because clients (kubernetes_asyncio, kubectl) branch on them.
"""

from __future__ import annotations

from typing import Any

REASON_BY_CODE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status(
    code: int,
    message: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 300 else "Failure",
        "message": message,
        "reason": reason if reason is not None else REASON_BY_CODE.get(code, ""),
        "code": code,
    }
    if details is not None:
        body["details"] = details
    if not body["message"]:
        del body["message"]
    return body


class ApiError(Exception):
    """Raised anywhere below the handlers; rendered as a Status with `code`."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.body = status(code, message, reason, details)
        self.headers = headers or {}


def qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        f'{qualified(resource, group)} "{name}" not found',
        details={"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


def already_exists(resource: str, group: str, name: str) -> ApiError:
    det = {"name": name, "kind": resource}
    if group:
        det["group"] = group
    return ApiError(409, f'{qualified(resource, group)} "{name}" already exists', "AlreadyExists", det)


def conflict(resource: str, group: str, name: str, why: str) -> ApiError:
    det = {"name": name, "kind": resource}
    if group:
        det["group"] = group
    return ApiError(
        409, f'Operation cannot be fulfilled on {qualified(resource, group)} "{name}": {why}', "Conflict", det
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequest")


class FieldError:
    """One entry of a field.ErrorList: rendered like k8s.io/apimachinery/pkg/util/validation/field."""

    __slots__ = ("detail", "field", "kind", "value")

    def __init__(self, kind: str, field: str, value: Any = None, detail: str = "") -> None:
        self.kind = kind  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, FieldValueForbidden...
        self.field = field
        self.value = value
        self.detail = detail

    def message(self) -> str:
        if self.kind == "FieldValueRequired":
            text = "Required value"
        elif self.kind == "FieldValueForbidden":
            text = "Forbidden"
        elif self.kind == "FieldValueNotSupported":
            text = f"Unsupported value: {_go_value(self.value)}"
        elif self.kind == "FieldValueTooLong":
            text = "Too long"
        elif self.kind == "FieldValueTooMany":
            text = "Too many" if self.value is None else f"Too many: {_go_value(self.value)}"
        elif self.kind == "FieldValueDuplicate":
            text = f"Duplicate value: {_go_value(self.value)}"
        else:
            text = f"Invalid value: {_go_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return f"{self.field}: {text}" if self.field else text


def _go_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_value(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, list):
        return "[" + " ".join(_go_value(v) for v in value) + "]"
    return str(value)


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid, message and causes formatted as apierrors.NewInvalid does."""
    gk = f"{kind}.{group}" if group else kind
    msgs = [e.message() for e in errors]
    if len(msgs) == 1:
        summary = msgs[0]
    else:
        summary = "[" + ", ".join(msgs) + "]"
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [
            {"reason": e.kind, "message": e.message()[len(e.field) + 2 :] if e.field else e.message(),
             "field": e.field}
            for e in errors
        ],
    }
    if group:
        details["group"] = group
    return ApiError(422, f'{gk} "{name}" is invalid: {summary}', "Invalid", details)
