"""Kubernetes API access: client factory (kubeconfig or in-cluster) and a thin JSON REST layer.

`new_api_client()` returns a kubernetes_asyncio `ApiClient` (auth, TLS, token refresh handled by the
library). `KubeClient` uses that client's transport but speaks plain JSON: objects stay `dict`s until
the caller converts them into the project's dataclasses (raven.api), and watches are read by our own
line splitter, so neither the generated models (slow for 10k nodes) nor the library's watch quirks
(ENVIRONMENT.md: stale-resourceVersion retry on 410, no read timeout) get in the way.

Every request has a client-side timeout: a half-open connection must never hang a caller forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from kubernetes_asyncio.client.api_client import ApiClient as ApiClient  # re-exported: the type callers hold
from kubernetes_asyncio.client.configuration import Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

from raven.config import ConfigError

log = logging.getLogger(__name__)

JSON = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Resource:
    """Where a kind of object lives in the API: `/api/v1/nodes`, `/apis/G/V/namespaces/NS/P`."""

    group: str
    version: str
    plural: str
    namespaced: bool = False

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


NODES = Resource("", "v1", "nodes")
SERVICES = Resource("", "v1", "services", namespaced=True)
ENDPOINTS = Resource("", "v1", "endpoints", namespaced=True)
EVENTS = Resource("", "v1", "events", namespaced=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", namespaced=True)
GATEWAYS = Resource("raven.openyurt.io", "v1beta1", "gateways")
SECRETS = Resource("", "v1", "secrets", namespaced=True)
CONFIGMAPS = Resource("", "v1", "configmaps", namespaced=True)
CSRS = Resource("certificates.k8s.io", "v1", "certificatesigningrequests")
PATHREPORTS = Resource("health.raven-py.io", "v1alpha1", "pathreports")  # raven.api.pathreport (tested equal)


class ApiError(Exception):
    """A non-2xx answer from the API server, with the Status reason when the server sent one."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        return self.status == 410


async def new_api_client(kubeconfig: str | None) -> ApiClient:
    """An ApiClient for the kubeconfig file, or the in-cluster service account when `kubeconfig` is None."""
    cfg = Configuration()
    try:
        if kubeconfig is None:
            load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            await load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    except (ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"cannot load Kubernetes client config from {kubeconfig or 'in-cluster'}: {exc}") from exc
    # Many Gateways may be written concurrently; the library's default pool is 100 connections.
    cfg.connection_pool_maxsize = 64
    api = ApiClient(configuration=cfg)
    _resolve_proxy_once(api)
    return api


def _resolve_proxy_once(api: ApiClient) -> None:
    """Honour HTTPS_PROXY/NO_PROXY once at start instead of on every request.

    kubernetes_asyncio opens its aiohttp session with trust_env=True, which makes aiohttp read ~/.netrc
    and the proxy environment in a worker thread for every request: two thread hops per API call, on
    the failover path. We resolve the proxy here (as client-go does) and switch the per-request lookup off.
    """
    rest = api.rest_client
    session = rest.pool_manager
    if not getattr(session, "_trust_env", False):
        return
    host = urlsplit(api.configuration.host)
    if rest.proxy is None and host.hostname:
        proxy = urllib.request.getproxies().get(host.scheme or "https")
        if proxy and not urllib.request.proxy_bypass(host.hostname):
            rest.proxy = proxy
    session._trust_env = False


def _error_from(status: int, body: bytes) -> ApiError:
    reason, message = "", body.decode("utf-8", "replace")[:500]
    try:
        obj = json.loads(body)
        if isinstance(obj, dict) and obj.get("kind") == "Status":
            reason = str(obj.get("reason", ""))
            message = str(obj.get("message", ""))
    except ValueError:
        pass
    return ApiError(status, reason, message)


class KubeClient:
    """JSON requests over a kubernetes_asyncio ApiClient. Raises ApiError for non-2xx answers."""

    def __init__(self, api: ApiClient, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.api = api
        self.timeout_s = timeout_s

    async def close(self) -> None:
        await self.api.close()

    @property
    def server_host(self) -> str | None:
        """The API server's host name or address, as the kubeconfig (or the in-cluster config) gives it."""
        host = urlsplit(str(self.api.configuration.host)).hostname
        return host or None

    async def _open(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | int] | None = None,
        body: JSON | list[Any] | None = None,
        content_type: str = "application/json",
        client_timeout: aiohttp.ClientTimeout | float | None = None,
    ) -> aiohttp.ClientResponse:
        resp: aiohttp.ClientResponse = await self.api.call_api(
            path,
            method,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=client_timeout if client_timeout is not None else self.timeout_s,
        )
        return resp

    async def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | int] | None = None,
        body: JSON | list[Any] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        resp = await self._open(method, path, query, body, content_type)
        async with resp:
            data = await resp.read()
            if not 200 <= resp.status <= 299:
                raise _error_from(resp.status, data)
        if not data:
            return {}
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ApiError(resp.status, "BadResponse", f"expected a JSON object from {method} {path}")
        return obj

    # --- verbs ---

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> JSON:
        return await self.request("GET", res.path(namespace, name))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        resource_version: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        query: dict[str, str | int] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        if resource_version is not None:
            query["resourceVersion"] = resource_version
        if limit:
            query["limit"] = limit
        if continue_token:
            query["continue"] = continue_token
        return await self.request("GET", res.path(namespace), query)

    async def create(self, res: Resource, body: JSON, namespace: str | None = None) -> JSON:
        return await self.request("POST", res.path(namespace), body=body)

    async def replace(
        self, res: Resource, name: str, body: JSON, namespace: str | None = None, subresource: str | None = None
    ) -> JSON:
        """PUT: carries metadata.resourceVersion, so a concurrent change is a 409 Conflict, not lost."""
        return await self.request("PUT", res.path(namespace, name, subresource), body=body)

    async def merge_patch(
        self, res: Resource, name: str, patch: JSON, namespace: str | None = None, subresource: str | None = None
    ) -> JSON:
        return await self.request("PATCH", res.path(namespace, name, subresource), body=patch, content_type=MERGE_PATCH)

    async def delete(self, res: Resource, name: str, namespace: str | None = None) -> JSON:
        return await self.request("DELETE", res.path(namespace, name))

    async def watch(
        self,
        res: Resource,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
        read_timeout_s: float = 60.0,
        field_selector: str | None = None,
    ) -> AsyncGenerator[JSON, None]:
        """Watch events (`{"type", "object"}`) from `resource_version`, bookmarks included.

        The server ends the watch after `timeout_seconds`; a silent connection is abandoned after
        `read_timeout_s` without a byte (asyncio.TimeoutError), which is how a half-open TCP connection
        is noticed. A 410 Gone comes either as an HTTP status or as an ERROR event; both raise
        ApiError(410) so the caller re-lists.
        """
        query: dict[str, str | int] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=read_timeout_s)
        # The response headers must come as promptly as for any request; only the stream may idle.
        resp = await asyncio.wait_for(self._open("GET", res.path(namespace), query, client_timeout=timeout),
                                      self.timeout_s)
        async with resp:
            if not 200 <= resp.status <= 299:
                raise _error_from(resp.status, await resp.read())
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line, buf = buf[:nl], buf[nl + 1:]
                    if line.strip():
                        yield _watch_event(line)
            if buf.strip():
                yield _watch_event(buf)


def _watch_event(line: bytes) -> JSON:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise ApiError(0, "BadWatchEvent", f"undecodable watch line: {line[:200]!r}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise ApiError(0, "BadWatchEvent", f"watch event without an object: {line[:200]!r}")
    if event.get("type") == "ERROR":
        obj = event["object"]
        code = obj.get("code")
        raise ApiError(code if isinstance(code, int) else 500, str(obj.get("reason", "")), str(obj.get("message", "")))
    return event
