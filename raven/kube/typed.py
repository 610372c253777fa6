"""The typed cache over an Informer: API JSON is converted to the project's own objects here, once.

Everything above `raven/kube/` reads these, never JSON:

    gateways = TypedInformer(Informer(client, GATEWAYS, "gateways", registry), Gateway.from_dict)
    gateways.add_handler(on_gateway)      # TypedEvent[Gateway]: type, name, obj, old, error
    gateways.get("gw-a")                  # the Gateway, or None
    gateways.entries()                    # Entry per object: also the ones that did not parse

Each object is parsed once per resourceVersion, when the informer delivers it. A version that does
not parse (`parse` raised) keeps the entry's last good value, with `error` saying why: the caller
decides whether to plan from that value (the agent does) or to report the object (the controller uses a
`parse` that never raises and returns a report-only type instead).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from raven.health import CheckResult
from raven.kube.client import JSON, KubeClient, Resource
from raven.kube.informer import EventType, Informer, InformerEvent, key_of, rv_of
from raven.log import kv

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    key: str
    resource_version: str
    value: T | None  # this version, or the last version of the object that parsed (None: none did)
    error: str | None = None  # why the version at `resource_version` did not parse

    @property
    def current(self) -> T | None:
        """The value only if it is the object's current version."""
        return self.value if self.error is None else None


@dataclass(frozen=True)
class TypedEvent(Generic[T]):
    type: EventType
    key: str
    obj: T | None  # the new version (for DELETED the last known); None when it never parsed
    old: T | None = None  # the cached value before this event
    error: str | None = None  # set when the new version did not parse (`obj` is then the last good one)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


TypedHandler = Callable[[TypedEvent[T]], object]


class TypedInformer(Generic[T]):
    def __init__(self, informer: Informer, parse: Callable[[JSON], T]) -> None:
        self.informer = informer
        self.name = informer.name
        self._parse = parse
        self._entries: dict[str, Entry[T]] = {}
        self._handlers: list[TypedHandler[T]] = []
        # Entries existing before run() (a test that fills the informer's cache by hand) are parsed lazily.
        informer.add_handler(self._on_event)

    def add_handler(self, handler: TypedHandler[T]) -> None:
        self._handlers.append(handler)

    # --- the informer's surface, for wiring ---

    async def run(self) -> None:
        await self.informer.run()

    @property
    def synced(self) -> bool:
        return self.informer.synced

    async def wait_synced(self) -> None:
        await self.informer.wait_synced()

    def check(self) -> CheckResult:
        return self.informer.check()

    # --- reads ---

    def entry(self, name: str, namespace: str | None = None) -> Entry[T] | None:
        return self._entries.get(f"{namespace}/{name}" if namespace else name)

    def get(self, name: str, namespace: str | None = None) -> T | None:
        """The object's value (its last good version when the current one did not parse)."""
        e = self.entry(name, namespace)
        return e.value if e is not None else None

    def entries(self) -> Iterator[Entry[T]]:
        return iter(list(self._entries.values()))

    def values(self) -> Iterator[T]:
        return (e.value for e in self.entries() if e.value is not None)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, obj: JSON) -> T:
        """Convert one object with this cache's `parse` (e.g. a fresh GET after a conflict)."""
        return self._parse(obj)

    # --- the edge ---

    def store(self, obj: JSON) -> Entry[T]:
        """Parse `obj` into the cache (once per resourceVersion) and return its entry."""
        key, rv = key_of(obj), rv_of(obj)
        old = self._entries.get(key)
        if old is not None and old.resource_version == rv and rv:
            return old
        try:
            new = Entry(key, rv, self._parse(obj))
        except Exception as exc:  # a malformed object must not stop anything else
            last_good = old.value if old is not None else None
            error = f"{type(exc).__name__}: {exc}"
            log.warning("malformed object", extra=kv(informer=self.name, object=key, rv=rv, error=error,
                                                     kept="last good version" if last_good is not None
                                                     else "nothing"))
            new = Entry(key, rv, last_good, error)
        self._entries[key] = new
        return new

    def _on_event(self, ev: InformerEvent) -> Awaitable[None] | None:
        # Synchronous unless a handler is async: this runs for every event (10,000 Node heartbeats).
        key = key_of(ev.obj)
        before = self._entries.get(key)
        old = before.value if before is not None else None
        if ev.type == "DELETED":
            self._entries.pop(key, None)
            tev = TypedEvent(ev.type, key, old, old)
        else:
            e = self.store(ev.obj)
            tev = TypedEvent(ev.type, key, e.value, old, e.error)
        pending: list[Awaitable[object]] = []
        for handler in self._handlers:
            try:
                result = handler(tev)
            except Exception:
                self._log_failure(tev)
                continue
            if inspect.isawaitable(result):
                pending.append(result)
        return self._await_all(tev, pending) if pending else None

    async def _await_all(self, tev: TypedEvent[T], pending: list[Awaitable[object]]) -> None:
        for result in pending:
            try:
                await result
            except Exception:
                self._log_failure(tev)

    def _log_failure(self, tev: TypedEvent[T]) -> None:
        log.exception("typed informer handler failed", extra=kv(informer=self.name, type=tev.type, object=tev.key))


class TypedClient:
    """The API calls the controller makes, with typed results: a parsed object, a resourceVersion, nothing.

    Bodies and patches go in as plain JSON-shaped mappings (`dict[str, object]` above `raven/kube/`).
    """

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get(self, res: Resource, name: str, parse: Callable[[JSON], T], namespace: str | None = None) -> T:
        return parse(await self.client.get(res, name, namespace))

    async def list(self, res: Resource, parse: Callable[[JSON], T], namespace: str | None = None, *,
                   field_selector: str | None = None) -> list[T]:
        page = await self.client.list(res, namespace, field_selector=field_selector)
        return [parse(o) for o in page.get("items") or [] if isinstance(o, dict)]

    async def create(self, res: Resource, body: Mapping[str, object], namespace: str | None = None) -> str:
        """Returns the created object's resourceVersion."""
        return rv_of(await self.client.create(res, dict(body), namespace))

    async def merge_patch(self, res: Resource, name: str, patch: Mapping[str, object], namespace: str | None = None,
                          *, subresource: str | None = None) -> str:
        """Returns the patched object's resourceVersion."""
        return rv_of(await self.client.merge_patch(res, name, dict(patch), namespace, subresource=subresource))

    async def delete(self, res: Resource, name: str, namespace: str | None = None) -> None:
        await self.client.delete(res, name, namespace)
