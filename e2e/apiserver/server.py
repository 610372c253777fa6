"""HTTP front of the test API server (aiohttp): routing, discovery, auth, watch streaming, fault injection.

`ApiServer` is the lifecycle object: start it in-process (tests) or from `python -m e2e.apiserver`.
Fault injection lives on the same object so a test can break the server the way real clusters break:
dropped watches, compacted history (410 Gone), bursts of 500/429, latency, and an outage after which the
server comes back on the same port with the same data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from multidict import CIMultiDict

from .errors import ApiError, bad_request, status
from .openapi import V2_PROTOBUF, gv_document, root_document, v2_json, v2_protobuf
from .resources import ResourceType
from .selectors import parse_field_selector, parse_label_selector
from .state import ApiState
from .store import Watcher, encode
from .table import table
from .tls import certificate, server_context

log = logging.getLogger("e2e.apiserver")

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})
DEFAULT_WATCH_TIMEOUT = 1800.0
ADMIN_USER = "system:admin"  # the user of the server's own token
# Where a request carries its authenticated user (typed keys exist from aiohttp 3.12 on).
_USER: Any = web.RequestKey("user", str) if hasattr(web, "RequestKey") else "user"


@dataclass(frozen=True)
class ApiRequest:
    """One resource request as a Kubernetes authorizer sees it (apiserver's RequestInfo, plus the user).

    `verb` as RBAC names it (get, list, watch, create, update, patch, delete, deletecollection);
    `namespace` and `name` are "" when absent; a list or watch with the field selector
    `metadata.name=X` has name X, as the real server sets it (so RBAC `resourceNames` can allow it).
    """

    user: str
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str


def _json(body: Any, status_code: int = 200, headers: CIMultiDict[str] | dict[str, str] | None = None) -> web.Response:
    return web.Response(body=encode(body), status=status_code, content_type="application/json",
                        headers=headers)


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


def _table_version(accept: str) -> str | None:
    """The meta.k8s.io Table version requested by an Accept header, if any."""
    for part in accept.split(","):
        params = {kv.split("=", 1)[0].strip(): kv.split("=", 1)[1].strip()
                  for kv in part.split(";")[1:] if "=" in kv}
        if params.get("as") == "Table" and params.get("g", "meta.k8s.io") == "meta.k8s.io":
            return params.get("v", "v1")
    return None


# The authenticated requester of a request (username, uid, groups, extra).
USER = web.RequestKey("user", dict)


class ApiServer:
    """The test Kubernetes API server: an aiohttp app over TLS with one bearer token, serving `state` (an `ApiState`).

    Lifecycle: `await start()` / `await stop()` (port 0 picks a free port: read `.port`/`.url` after
    start), `write_kubeconfig(path)` for clients. Everything else is fault injection for tests
    (`drop_watches`, `compact`, `fail_next`, `set_latency`, `stop_accepting`/`resume_accepting`/`outage`,
    `bookmark_interval`) and introspection (`request_counts`, `open_watches`). e2e/README.md lists what
    the server implements and what it does not.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 history_window: int = 10_000, bookmark_interval: float = 60.0,
                 extra_sans: list[str] | None = None, advertise: str | None = None) -> None:
        self.host = host
        self.port = port
        self.token = token or secrets.token_hex(16)
        self.state = ApiState(history_window)
        self.bookmark_interval = bookmark_interval
        self.latency = 0.0
        self._fail_remaining = 0
        self._fail_code = 500
        self._retry_after = 1
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._watches: set[Watcher] = set()
        self._outage_task: asyncio.Task[None] | None = None
        self.requests_served = 0
        # (verb, resource) -> count, verbs as the real server's audit log names them (get, list, watch,
        # create, update, patch, delete, deletecollection); resource is "plural" or "plural/subresource".
        self.request_counts: Counter[tuple[str, str]] = Counter()
        self.kubeconfig: str | None = None  # path, once write_kubeconfig() ran
        # token -> the user it authenticates as (username, uid, groups, extra); `add_user()` and
        # `add_node_token()` add more (e.g. one per ServiceAccount, to tell clients apart).
        self.users: dict[str, dict[str, Any]] = {self.token: self.ADMIN_INFO}
        # Called with every resource request before it is served (after authentication and fault
        # injection): tests record what clients do, and may refuse a request by raising ApiError (403).
        self.on_request: Callable[[ApiRequest], None] | None = None
        # The address clients are told to use (kubeconfig); a wildcard listener advertises loopback.
        self.advertise = advertise or (host if host not in ("0.0.0.0", "::", "") else "127.0.0.1")
        self.cert_file, self.key_file = certificate([host, self.advertise, *(extra_sans or [])])
        self._ssl = server_context(self.cert_file, self.key_file)

    # ---- lifecycle ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = f"[{self.advertise}]" if ":" in self.advertise else self.advertise
        return f"https://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()
        log.info("apiserver listening url=%s", self.url)

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, ssl_context=self._ssl)
        await self._site.start()
        if self.port == 0:
            server = self._site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._outage_task is not None:
            self._outage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outage_task
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._site = None

    def add_user(self, user: str) -> str:
        """A new bearer token that authenticates as `user` (pass it to `write_kubeconfig`)."""
        token = secrets.token_hex(16)
        self.users[token] = {"username": user, "groups": ["system:authenticated"]}
        return token

    def kubeconfig_dict(self, token: str | None = None) -> dict[str, Any]:
        """A kubeconfig for this server, as the admin or with `token` (e.g. from `add_user`, `add_node_token`)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "raven-test", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(Path(self.cert_file).read_bytes()).decode()}}],
            "users": [{"name": "raven-test", "user": {"token": token or self.token}}],
            "contexts": [{"name": "raven-test",
                          "context": {"cluster": "raven-test", "user": "raven-test", "namespace": "default"}}],
            "current-context": "raven-test",
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, token: str | None = None) -> str:
        """Write a kubeconfig for this server (with `token`, default the server's own; `.kubeconfig` is only
        set for the latter)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: a harness polling for the file never reads half of it.
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(yaml.safe_dump(self.kubeconfig_dict(token), sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(p)
        if token is None or token == self.token:
            self.kubeconfig = str(p)
        return str(p)

    @property
    def open_watches(self) -> int:
        """Watches currently streaming (tests use it to see that a client reconnected or went away)."""
        return len(self._watches)

    # ---- fault injection ------------------------------------------------------------------------------
    def drop_watches(self, abrupt: bool = False) -> int:
        """End every open watch (cleanly, or by resetting the connection when `abrupt`)."""
        n = 0
        for w in list(self._watches):
            w.close(abort=abrupt)
            n += 1
        log.info("fault=drop_watches count=%d abrupt=%s", n, abrupt)
        return n

    def compact(self) -> None:
        """Forget all watch history: any resume from an older resourceVersion gets 410 Gone."""
        self.state.compact()
        log.info("fault=compact rv=%d", self.state.rv)

    def set_history_window(self, events: int) -> None:
        self.state.set_history_window(events)

    def fail_next(self, count: int, status_code: int = 500, retry_after: int = 1) -> None:
        """The next `count` API requests fail with `status_code` (500 or 429 with Retry-After)."""
        self._fail_remaining = count
        self._fail_code = status_code
        self._retry_after = retry_after

    def set_latency(self, seconds: float) -> None:
        self.latency = max(0.0, seconds)

    async def stop_accepting(self) -> None:
        """Close the listener and every open connection; data is kept."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self.drop_watches(abrupt=True)
        if self._runner is not None and self._runner.server is not None:
            for transport in list(self._runner.server._connections.values()):
                transport.abort()
        log.info("fault=outage state=down")

    async def resume_accepting(self) -> None:
        if self._site is None:
            await self._listen()
        log.info("fault=outage state=up")

    def outage(self, seconds: float) -> asyncio.Task[None]:
        """Go down now and come back after `seconds` on the same port with the same data."""
        async def run() -> None:
            await self.stop_accepting()
            await asyncio.sleep(seconds)
            await self.resume_accepting()
        self._outage_task = asyncio.ensure_future(run())
        return self._outage_task

    # ---- authentication ---------------------------------------------------------------------------------
    ADMIN_INFO: dict[str, Any] = {"username": ADMIN_USER, "groups": ["system:masters", "system:authenticated"]}

    def add_node_token(self, node: str, service_account: str = "raven-system:raven-agent") -> str:
        """A bearer token like a pod's bound service-account token on `node`: the requester is
        `system:serviceaccount:<ns>:<name>` with `extra["authentication.kubernetes.io/node-name"] = [node]`
        (what the real server records in a CSR's spec). No authorization is attached (there is none here)."""
        ns, _, name = service_account.partition(":")
        token = secrets.token_hex(16)
        self.users[token] = {
            "username": f"system:serviceaccount:{ns}:{name}",
            "uid": str(uuid.uuid4()),
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/node-name": [node],
                      "authentication.kubernetes.io/pod-name": [f"raven-agent-{node}"]},
        }
        return token

    def _authenticate(self, header: str) -> dict[str, Any]:
        user = self.users.get(header.removeprefix("Bearer ")) if header.startswith("Bearer ") else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    # ---- request pipeline -----------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        started = time.monotonic()
        resp: web.StreamResponse
        try:
            if path not in UNAUTHENTICATED_PATHS:
                user = self._authenticate(request.headers.get("Authorization", ""))
                request[USER] = user
                request[_USER] = str(user["username"])
            if self.latency:
                await asyncio.sleep(self.latency)
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                if self._fail_code == 429:
                    raise ApiError(429, "Too many requests, please try again later.", "TooManyRequests",
                                   {"causes": [{"reason": "TooManyRequests", "message": "injected fault"}],
                                    "retryAfterSeconds": self._retry_after},
                                   {"Retry-After": str(self._retry_after)})
                raise ApiError(self._fail_code, "Internal error occurred: injected fault",
                               "InternalError" if self._fail_code == 500 else None,
                               {"causes": [{"message": "injected fault"}]})
            self.requests_served += 1
            resp = await self._route(request, path)
        except ApiError as exc:
            resp = _json(exc.body, exc.code, exc.headers)
        except Exception as exc:  # any bug becomes a 500 Status, never a dropped connection
            log.exception("request failed method=%s path=%s", request.method, request.path_qs)
            body = status(500, f"Internal error occurred: {exc}", "InternalError")
            resp = _json(body, 500)
        log.debug("request method=%s path=%s status=%d ms=%.1f", request.method, request.path_qs,
                  resp.status, (time.monotonic() - started) * 1000)
        return resp

    async def _route(self, request: web.Request, path: str) -> web.StreamResponse:
        segs = [s for s in path.split("/") if s]
        if path == "/version":
            return _json(SERVER_VERSION)
        if not segs:
            return _json({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"]})
        if path == "/openapi/v2":
            if "protobuf" in request.headers.get("Accept", ""):
                return web.Response(body=v2_protobuf(self.state), content_type=V2_PROTOBUF)
            return _json(v2_json(self.state))
        if segs[0] == "openapi" and len(segs) >= 2 and segs[1] == "v3":
            if len(segs) == 2:
                return _json(root_document(self.state))
            if segs[2] == "api" and len(segs) == 4:
                doc = gv_document(self.state, "", segs[3])
            elif segs[2] == "apis" and len(segs) == 5:
                doc = gv_document(self.state, segs[3], segs[4])
            else:
                doc = None
            if doc is None:
                raise _page_not_found()
            return _json(doc)
        if segs[0] == "api":
            if len(segs) == 1:
                return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}]})
            return await self._resource(request, "", segs[1], segs[2:])
        if segs[0] == "apis":
            if len(segs) == 1:
                return _json(self._group_list())
            if len(segs) == 2:
                group = self._group(segs[1])
                if group is None:
                    raise _page_not_found()
                return _json({"kind": "APIGroup", "apiVersion": "v1", **group})
            return await self._resource(request, segs[1], segs[2], segs[3:])
        raise _page_not_found()

    def _group(self, name: str) -> dict[str, Any] | None:
        versions = self.state.group_versions().get(name)
        if not versions:
            return None
        gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}

    def _group_list(self) -> dict[str, Any]:
        groups = []
        for name in self.state.group_versions():
            if name:
                g = self._group(name)
                if g is not None:
                    groups.append(g)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _resource_list(self, group: str, version: str) -> dict[str, Any] | None:
        types = [rt for (g, v, _), rt in self.state.types.items() if g == group and v == version]
        if not types:
            return None
        resources: list[dict[str, Any]] = []
        for rt in sorted(types, key=lambda t: t.plural):
            resources.extend(rt.discovery())
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": resources}

    async def _resource(self, request: web.Request, group: str, version: str,
                        rest: list[str]) -> web.StreamResponse:
        if not rest:
            body = self._resource_list(group, version)
            if body is None or request.method != "GET":
                raise _page_not_found()
            return _json(body)
        q = request.query
        watch = _truthy(q.get("watch"))
        if rest[0] == "watch":
            watch = True
            rest = rest[1:]
        ns: str | None = None
        if (len(rest) >= 3 and rest[0] == "namespaces"
                and (rt_ns := self.state.lookup(group, version, rest[2])) is not None and rt_ns.namespaced):
            ns, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _page_not_found()
        rt = self.state.lookup(group, version, rest[0])
        if rt is None or (ns is not None and not rt.namespaced):
            raise _page_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and rt.has_status) and sub not in rt.subresources and not (
                sub == "finalize" and rt.plural == "namespaces" and rt.group == ""):
            raise _page_not_found()
        if rt.namespaced and ns is None and name is not None:
            raise _page_not_found()
        method = request.method
        verb = {"GET": "get" if name else ("watch" if watch else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())
        self.request_counts[(verb, f"{rt.plural}/{sub}" if sub else rt.plural)] += 1
        if self.on_request is not None:
            by_name = name or ""
            if verb in ("list", "watch"):
                by_name = _name_selected(q.get("fieldSelector"))
            self.on_request(ApiRequest(request.get(_USER, ""), verb, rt.group, rt.plural, sub or "", ns or "",
                                       by_name))
        dry_run = q.get("dryRun") == "All"
        fv = q.get("fieldValidation") or "Warn"
        if fv not in ("Strict", "Warn", "Ignore"):
            raise bad_request(f"fieldValidation must be one of Strict, Warn, Ignore, got {fv!r}")
        if method == "GET":
            if name is None:
                if watch:
                    return await self._watch(request, rt, ns)
                return self._list(request, rt, ns)
            entry = self.state.get(rt, ns, name)
            obj = self.state.obj_for(rt, entry.obj)
            tv = _table_version(request.headers.get("Accept", ""))
            if tv is not None:
                return _json(table(rt, [obj], q.get("includeObject", "Metadata"),
                                   {"resourceVersion": obj["metadata"]["resourceVersion"]}, f"meta.k8s.io/{tv}"))
            return web.Response(body=self.state.raw_for(rt, entry), content_type="application/json")
        if method == "POST":
            if name is not None:
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed")
            body = await _body(request)
            obj, warnings = self.state.create(rt, ns, body, dry_run, fv, user=request.get(USER))
            return _json(obj, 201, _warning_headers(warnings))
        if name is None:
            if method == "DELETE":
                return await self._delete_collection(request, rt, ns, dry_run)
            raise ApiError(405, "the server does not allow this method on the requested resource",
                           "MethodNotAllowed")
        if method == "PUT":
            body = await _body(request)
            obj, warnings = self.state.update(rt, ns, name, body, sub, dry_run, fv)
            return _json(obj, 200, _warning_headers(warnings))
        if method == "PATCH":
            raw = await request.read()
            obj, warnings, created = self.state.patch(rt, ns, name, request.headers.get("Content-Type", ""),
                                                        raw, sub, dry_run, fv)
            return _json(obj, 201 if created else 200, _warning_headers(warnings))
        if method == "DELETE":
            options = await _delete_options(request)
            body, _ = self.state.delete(rt, ns, name, options, dry_run)
            return _json(body, 200)
        raise ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")

    def _selectors(self, request: web.Request, rt: ResourceType) -> tuple[Any, Any]:
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"), rt.field_selectors, rt.plural)
        return labels, fields

    def _list(self, request: web.Request, rt: ResourceType, ns: str | None) -> web.Response:
        q = request.query
        labels, fields = self._selectors(request, rt)
        try:
            limit = int(q.get("limit") or 0)
        except ValueError as exc:
            raise bad_request(f"invalid limit: {q.get('limit')}") from exc
        entries, list_rv, token, remaining = self.state.list(rt, ns, labels, fields, max(limit, 0),
                                                               q.get("continue"))
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if token:
            meta["continue"] = token
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        tv = _table_version(request.headers.get("Accept", ""))
        if tv is not None:
            objs = [self.state.obj_for(rt, e.obj) for e in entries]
            return _json(table(rt, objs, q.get("includeObject", "Metadata"), meta, f"meta.k8s.io/{tv}"))
        head = encode({"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta})
        raw_for = self.state.raw_for
        body = head[:-1] + b',"items":[' + b",".join(raw_for(rt, e) for e in entries) + b"]}"
        return web.Response(body=body, content_type="application/json")

    async def _delete_collection(self, request: web.Request, rt: ResourceType, ns: str | None,
                                 dry_run: bool) -> web.Response:
        labels, fields = self._selectors(request, rt)
        options = await _delete_options(request)
        entries, _, _, _ = self.state.list(rt, ns, labels, fields)
        items = []
        for e in entries:
            meta = e.obj["metadata"]
            try:
                body, is_obj = self.state.delete(rt, meta.get("namespace"), meta["name"], options, dry_run)
            except ApiError as exc:
                if exc.code == 404:
                    continue
                raise
            items.append(body if is_obj else self.state.obj_for(rt, e.obj))
        return _json({"kind": rt.list_kind, "apiVersion": rt.api_version,
                      "metadata": {"resourceVersion": str(self.state.rv)}, "items": items})

    async def _watch(self, request: web.Request, rt: ResourceType, ns: str | None) -> web.StreamResponse:
        q = request.query
        labels, fields = self._selectors(request, rt)
        bookmarks = _truthy(q.get("allowWatchBookmarks"))
        send_initial = _truthy(q.get("sendInitialEvents")) if "sendInitialEvents" in q else None
        try:
            timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else DEFAULT_WATCH_TIMEOUT
        except ValueError as exc:
            raise bad_request(f"invalid timeoutSeconds: {q.get('timeoutSeconds')}") from exc
        tv = _table_version(request.headers.get("Accept", ""))
        transform = None
        if tv is not None:
            first = [True]
            include = q.get("includeObject", "Metadata")

            def to_table(type_: str, obj: dict[str, Any], raw: bytes) -> bytes:
                t = table(rt, [self.state.obj_for(rt, obj)], include, {}, f"meta.k8s.io/{tv}", first[0])
                first[0] = False
                return encode({"type": type_, "object": t}) + b"\n"
            transform = to_table
        elif rt.to_api is not None or (rt.custom and rt.version != rt.storage_version):
            def convert(type_: str, obj: dict[str, Any], raw: bytes) -> bytes:
                return encode({"type": type_, "object": self.state.obj_for(rt, obj)}) + b"\n"
            transform = convert
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            w = self.state.watch(rt, ns, q.get("resourceVersion"), labels, fields, transform, send_initial,
                                   bookmarks)
        except ApiError as exc:
            if exc.code != 410:
                raise
            # Like the real server: HTTP 200 and a single ERROR event carrying the 410 Status.
            await resp.prepare(request)
            await resp.write(encode({"type": "ERROR", "object": exc.body}) + b"\n")
            await resp.write_eof()
            return resp
        store = self.state.store(rt)
        self._watches.add(w)
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        try:
            while True:
                if w.buffer:
                    chunk = b"".join(w.buffer)
                    w.buffer.clear()
                    await resp.write(chunk)
                    continue
                if w.closed:
                    break
                now = loop.time()
                if now >= deadline:
                    if bookmarks:
                        await resp.write(self.state.bookmark(rt))
                    break
                if bookmarks and now >= next_bookmark:
                    await resp.write(self.state.bookmark(rt))
                    next_bookmark = now + self.bookmark_interval
                    continue
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away; aiohttp does not cancel handlers for that
                w.wake.clear()
                wait_until = min(deadline, next_bookmark, now + 1.0) if bookmarks else min(deadline, now + 1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w.wake.wait(), max(0.0, wait_until - now))
        except ConnectionResetError:
            # The client closed the watch while we wrote (typically the next bookmark): normal, not an error.
            w.close()
            log.debug("watcher went away resource=%s", rt.plural)
            return resp
        except asyncio.CancelledError:
            w.close()
            raise
        finally:
            store.watchers.discard(w)
            self._watches.discard(w)
        if w.abort and request.transport is not None:
            request.transport.abort()
            return resp
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp


def _name_selected(field_selector: str | None) -> str:
    """X when the field selector requires `metadata.name=X` (or `==`), else "" (apiserver's RequestInfo)."""
    for term in (field_selector or "").split(","):
        key, sep, value = term.replace("==", "=").partition("=")
        if sep and key.strip() == "metadata.name":
            return value.strip()
    return ""


def _page_not_found() -> ApiError:
    return ApiError(404, "the server could not find the requested resource", "NotFound",
                    {"causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]})


def _warning_headers(warnings: list[str]) -> CIMultiDict[str] | None:
    if not warnings:
        return None
    h: CIMultiDict[str] = CIMultiDict()
    for w in warnings:
        h.add("Warning", '299 - "' + w.replace('"', '\\"') + '"')
    return h


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
    try:
        if ctype in ("application/yaml", "application/x-yaml"):
            return yaml.safe_load(raw.decode())
        return json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise bad_request(f"the object provided is unrecognized: {exc}") from exc


async def _delete_options(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    opts: dict[str, Any] = {}
    if raw.strip():
        try:
            parsed = json.loads(raw.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"invalid DeleteOptions: {exc}") from exc
        if isinstance(parsed, dict):
            opts = parsed
    q = request.query
    if q.get("propagationPolicy"):
        opts["propagationPolicy"] = q["propagationPolicy"]
    if q.get("orphanDependents"):
        opts["orphanDependents"] = _truthy(q["orphanDependents"])
    if q.get("gracePeriodSeconds"):
        opts["gracePeriodSeconds"] = q["gracePeriodSeconds"]
    return opts
