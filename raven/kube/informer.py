"""The one Informer: list + watch one kind of object into a local cache, and tell handlers what changed.

Usage (controller and agent alike):

    nodes = Informer(client, NODES, "nodes", registry, handler=on_node)
    supervisor.spawn("informer-nodes", nodes.run())
    health.add_readiness_check("informer-nodes", nodes.check)
    ...
    nodes.cache["node-1"]           # the latest object seen, as API JSON
    await nodes.wait_synced()

`handler(event)` is called for every change, in order, with an `InformerEvent` (ADDED / MODIFIED /
DELETED, the object, and the previous cached object). It may be sync or async; keep it short (enqueue
work, do not write to the API from it). A handler that raises is logged and does not stop the informer.

How nothing is lost or applied twice:
- the watch starts at the list's resourceVersion and every event (and bookmark, which the server
  sends so an idle watch still advances) moves that version forward; after a dropped connection or a
  server-side timeout the watch resumes from the last version seen, so the server replays exactly
  what was missed;
- an event whose object carries the resourceVersion already cached is a duplicate and is dropped;
- when the server has compacted that version away (410 Gone, as HTTP status or ERROR event), the
  informer re-lists and diffs the fresh list against its cache: ADDED for new objects, MODIFIED for
  ones whose resourceVersion changed, and a synthetic DELETED for objects that vanished meanwhile;
- a connection that goes silent (half-open TCP) is abandoned after `read_timeout_s` without a byte;
  reconnects back off with jitter so a restarted API server is not stampeded; so does a watch that
  ends at once without a single event (a proxy closing streams), which would otherwise spin.
Every watch restart is counted in `raven_informer_watch_restarts_total{informer,reason}`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import weakref
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter

from raven.health import CheckResult
from raven.kube.backoff import Backoff
from raven.kube.client import JSON, ApiError, KubeClient, Resource
from raven.log import kv

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
# A watch that ends sooner than this without a single event counts as a failed one (backoff).
QUICK_CLOSE_S = 1.0


@dataclass(frozen=True)
class InformerEvent:
    type: EventType
    obj: JSON  # the new object; for DELETED the last state known
    old: JSON | None = None  # the cached object before this event (None for ADDED)

    @property
    def name(self) -> str:
        return name_of(self.obj)


Handler = Callable[[InformerEvent], Any]


def name_of(obj: JSON) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, dict) else ""


def rv_of(obj: JSON) -> str:
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion", "")) if isinstance(meta, dict) else ""


def key_of(obj: JSON) -> str:
    """`namespace/name` for namespaced objects, `name` for cluster-scoped ones (client-go's key)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ""
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.restarts = Counter(
            "raven_informer_watch_restarts_total",
            "Watches re-established, by informer and reason (closed, expired = 410 re-list, error).",
            ["informer", "reason"],
            registry=registry,
        )
        self.events = Counter(
            "raven_informer_events_total", "Changes delivered to handlers.", ["informer", "type"], registry=registry
        )


_metrics: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    m = _metrics.get(registry)
    if m is None:
        m = _metrics[registry] = _Metrics(registry)
    return m


class Informer:
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        name: str,
        registry: CollectorRegistry,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        handler: Handler | None = None,
        watch_timeout_s: int = 300,
        read_timeout_s: float = 90.0,
        page_size: int = 500,
        backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.name = name
        self.namespace = namespace
        self.label_selector = label_selector
        # e.g. "metadata.name=node-1": the agent caches its own Node only, not the whole cluster's.
        self.field_selector = field_selector
        self.watch_timeout_s = watch_timeout_s
        self.read_timeout_s = read_timeout_s
        self.page_size = page_size
        self.cache: dict[str, JSON] = {}
        self.resource_version = ""
        self._handlers: list[Handler] = [handler] if handler else []
        self._synced = asyncio.Event()
        self._backoff = (backoff or (lambda: Backoff(base=0.2, cap=30.0)))()
        self._m = _metrics_for(registry)

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    @property
    def synced(self) -> bool:
        """True once the first list is in the cache and its events were delivered."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def check(self) -> CheckResult:
        """Readiness check for Health.add_readiness_check."""
        if self.synced:
            return CheckResult(True)
        return CheckResult(False, f"informer {self.name}: initial list not done yet")

    def get(self, name: str, namespace: str | None = None) -> JSON | None:
        return self.cache.get(f"{namespace}/{name}" if namespace else name)

    async def run(self) -> None:
        """List, then watch forever; meant to run as a supervised task. Ends only when cancelled."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                    self._backoff.reset()
                started = time.monotonic()
                received = await self._watch()
                self._m.restarts.labels(informer=self.name, reason="closed").inc()
                log.debug("watch closed, resuming", extra=kv(informer=self.name, rv=self.resource_version))
                if not received and time.monotonic() - started < QUICK_CLOSE_S:
                    # Ended at once with nothing in it (a proxy closing streams, a broken server): back off
                    # as after an error, or this loop would reconnect thousands of times a second.
                    await self._backoff.sleep()
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.gone:
                    # Our version was compacted away: only a fresh list tells what we missed.
                    self._m.restarts.labels(informer=self.name, reason="expired").inc()
                    log.info("watch expired, re-listing", extra=kv(informer=self.name, rv=self.resource_version))
                    need_list = True
                    if self._backoff.attempts:
                        await self._backoff.sleep()
                    else:
                        self._backoff.next()  # the first 410 re-lists at once, repeated ones back off
                    continue
                await self._after_error(exc)
            except Exception as exc:  # network, timeouts, garbage from the server: reconnect
                await self._after_error(exc)

    async def _after_error(self, exc: Exception) -> None:
        self._m.restarts.labels(informer=self.name, reason="error").inc()
        delay = self._backoff.next()
        log.warning(
            "list/watch failed, retrying",
            extra=kv(informer=self.name, error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 2)),
        )
        await asyncio.sleep(delay)

    async def _relist(self) -> None:
        items, rv = await self._list_all()
        fresh: dict[str, JSON] = {}
        for obj in items:
            k = key_of(obj)
            if k:
                fresh[k] = obj
        # Replace the contents in place: whoever holds a reference to `cache` keeps seeing the truth.
        old_cache = dict(self.cache)
        self.cache.clear()
        self.cache.update(fresh)
        self.resource_version = rv
        for k, obj in fresh.items():
            old = old_cache.get(k)
            if old is None:
                await self._emit(InformerEvent("ADDED", obj))
            elif rv_of(old) != rv_of(obj):
                await self._emit(InformerEvent("MODIFIED", obj, old))
        for k, old in old_cache.items():
            if k not in fresh:
                await self._emit(InformerEvent("DELETED", old, old))
        if not self._synced.is_set():
            log.info("informer synced", extra=kv(informer=self.name, objects=len(fresh), rv=rv))
            self._synced.set()

    async def _list_all(self) -> tuple[list[JSON], str]:
        items: list[JSON] = []
        token: str | None = None
        rv = ""
        while True:
            try:
                page = await self.client.list(
                    self.resource, self.namespace, self.label_selector, limit=self.page_size, continue_token=token,
                    field_selector=self.field_selector,
                )
            except ApiError as exc:
                if exc.gone and token:
                    # The continue token expired mid-way: start again without it (a fresh snapshot).
                    items, token, rv = [], None, ""
                    continue
                raise
            meta = page.get("metadata") or {}
            if not rv:
                rv = str(meta.get("resourceVersion", ""))
            kind = str(page.get("kind", ""))
            api_version = page.get("apiVersion")
            for obj in page.get("items") or []:
                if not isinstance(obj, dict):
                    continue
                # List items come without kind/apiVersion; fill them so objects look like GET results.
                if kind.endswith("List"):
                    obj.setdefault("kind", kind[: -len("List")])
                if api_version:
                    obj.setdefault("apiVersion", api_version)
                items.append(obj)
            token = meta.get("continue") or None
            if not token:
                return items, rv

    async def _watch(self) -> int:
        """Follow one watch until it ends; returns how many events (bookmarks included) it carried."""
        received = 0
        stream = self.client.watch(
            self.resource,
            self.resource_version,
            namespace=self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            # Like client-go, spread the server-side watch timeouts (between 1x and 2x) so that
            # informers started together do not all reconnect at the same moment forever after.
            timeout_seconds=int(self.watch_timeout_s * (1 + random.random())),
            read_timeout_s=self.read_timeout_s,
        )
        async with aclosing(stream):
            async for event in stream:
                received += 1
                etype = event.get("type")
                obj = event["object"]
                rv = rv_of(obj)
                if etype == "BOOKMARK":
                    if rv:
                        self.resource_version = rv
                    continue
                k = key_of(obj)
                if not k:
                    log.warning("watch event without a name ignored", extra=kv(informer=self.name, type=etype))
                    continue
                old = self.cache.get(k)
                if etype in ("ADDED", "MODIFIED"):
                    if old is not None and rv and rv_of(old) == rv:
                        pass  # already applied (e.g. seen in a re-list): never deliver twice
                    else:
                        self.cache[k] = obj
                        await self._emit(InformerEvent("ADDED" if old is None else "MODIFIED", obj, old))
                elif etype == "DELETED":
                    if old is not None:
                        del self.cache[k]
                        await self._emit(InformerEvent("DELETED", obj, old))
                else:
                    log.warning("unknown watch event type ignored", extra=kv(informer=self.name, type=etype))
                if rv:
                    self.resource_version = rv
                self._backoff.reset()
        return received

    async def _emit(self, event: InformerEvent) -> None:
        self._m.events.labels(informer=self.name, type=event.type).inc()
        for handler in self._handlers:
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "informer handler failed", extra=kv(informer=self.name, type=event.type, object=event.name)
                )
