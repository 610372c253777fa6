"""Per-resource storage, the bounded watch history and watcher fan-out.

One `Store` per group/resource (shared by every served version). Objects are kept as dicts together
with their JSON encoding, produced once per write and shared by list responses and by every watcher's
event line, so a 10,000-object list or a 20-watcher fan-out never re-encodes objects.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from .selectors import Matcher, ObjMatcher

Key = tuple[str, str]  # (namespace or "", name)
Transform = Callable[[str, dict[str, Any], bytes], bytes]


def clone(obj: Any) -> Any:
    """Deep copy of a JSON tree (dicts, lists, scalars): several times faster than copy.deepcopy."""
    if type(obj) is dict:
        return {k: clone(v) for k, v in obj.items()}
    if type(obj) is list:
        return [clone(v) for v in obj]
    return obj


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Entry:
    """A stored object and its serialised bytes (encoded once at commit, served as-is)."""

    __slots__ = ("obj", "raw")

    def __init__(self, obj: dict[str, Any], raw: bytes) -> None:
        self.obj = obj
        self.raw = raw


class Event:
    """A committed change. `old` is the previous state for MODIFIED (selector transitions need it)."""

    __slots__ = ("_lines", "key", "obj", "old", "raw", "rv", "type")

    def __init__(self, type_: str, rv: int, key: Key, obj: dict[str, Any], raw: bytes,
                 old: dict[str, Any] | None) -> None:
        self.type = type_
        self.rv = rv
        self.key = key
        self.obj = obj
        self.raw = raw
        self.old = old
        self._lines: dict[str, bytes] = {}

    def line(self, type_: str) -> bytes:
        cached = self._lines.get(type_)
        if cached is None:
            cached = b'{"type":"' + type_.encode() + b'","object":' + self.raw + b"}\n"
            self._lines[type_] = cached
        return cached


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


class Watcher:
    """One open watch: a filter plus a buffer of encoded lines drained by the HTTP writer."""

    MAX_BUFFERED = 250_000  # a watcher this far behind is terminated, as the real server drops slow watchers

    def __init__(self, namespace: str | None, labels: Matcher | None, fields: ObjMatcher | None,
                 transform: Transform | None = None) -> None:
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.transform = transform
        self.buffer: list[bytes] = []
        self.wake = asyncio.Event()
        self.closed = False
        self.abort = False
        self.trivial = namespace is None and labels is None and fields is None

    def matches(self, key: Key, obj: Mapping[str, Any]) -> bool:
        if self.namespace is not None and key[0] != self.namespace:
            return False
        if self.labels is not None and not self.labels(_labels(obj)):
            return False
        return not (self.fields is not None and not self.fields(obj))

    def offer(self, ev: Event) -> None:
        if self.closed:
            return
        if self.trivial:
            type_ = ev.type
        else:
            now = self.matches(ev.key, ev.obj)
            if ev.type == "MODIFIED":
                before = ev.old is not None and self.matches(ev.key, ev.old)
                if now and before:
                    type_ = "MODIFIED"
                elif now:
                    type_ = "ADDED"
                elif before:
                    type_ = "DELETED"
                else:
                    return
            elif not now:
                return
            else:
                type_ = ev.type
        self.push(ev.line(type_) if self.transform is None else self.transform(type_, ev.obj, ev.raw))

    def push(self, line: bytes) -> None:
        self.buffer.append(line)
        if len(self.buffer) > self.MAX_BUFFERED:
            self.close(abort=False)
        self.wake.set()

    def close(self, abort: bool = False) -> None:
        self.closed = True
        self.abort = self.abort or abort
        self.wake.set()


class Store:
    """The objects of one resource (group + plural), their recent history (for watches that resume from a
    resourceVersion) and the open watchers; versions older than `floor` are gone (410)."""

    def __init__(self, group: str, resource: str, namespaced: bool, floor: int, window: int) -> None:
        self.group = group
        self.resource = resource
        self.namespaced = namespaced
        self.objects: dict[Key, Entry] = {}
        self.history: deque[Event] = deque()
        # A watch or continue token at a resourceVersion below `floor` is answered with 410 Gone.
        self.floor = floor
        self.window = window
        self.watchers: set[Watcher] = set()
        self._sorted: list[Key] | None = None
        # Paginated lists read a snapshot taken at their first page, like etcd's MVCC read at the list's
        # revision. Entries are never mutated after commit, so a snapshot is two shallow copies.
        self.snapshots: OrderedDict[int, tuple[list[Key], dict[Key, Entry]]] = OrderedDict()

    SNAPSHOTS = 16

    def snapshot(self, rv: int) -> tuple[list[Key], dict[Key, Entry]]:
        snap = self.snapshots.get(rv)
        if snap is None:
            snap = (list(self.sorted_keys()), dict(self.objects))
            self.snapshots[rv] = snap
            while len(self.snapshots) > self.SNAPSHOTS:
                self.snapshots.popitem(last=False)
        else:
            self.snapshots.move_to_end(rv)
        return snap

    def sorted_keys(self) -> list[Key]:
        if self._sorted is None:
            self._sorted = sorted(self.objects)
        return self._sorted

    def put(self, key: Key, entry: Entry) -> None:
        if key not in self.objects and self._sorted is not None:
            bisect.insort(self._sorted, key)
        self.objects[key] = entry

    def remove(self, key: Key) -> None:
        if self.objects.pop(key, None) is not None and self._sorted is not None:
            idx = bisect.bisect_left(self._sorted, key)
            if idx < len(self._sorted) and self._sorted[idx] == key:
                del self._sorted[idx]

    def record(self, ev: Event) -> None:
        self.history.append(ev)
        while len(self.history) > self.window:
            self.floor = self.history.popleft().rv
        for w in tuple(self.watchers):
            w.offer(ev)

    def events_since(self, rv: int) -> list[Event]:
        out: list[Event] = []
        for ev in reversed(self.history):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out

    def compact(self, rv: int) -> None:
        self.history.clear()
        self.snapshots.clear()
        self.floor = rv

    def set_window(self, window: int) -> None:
        self.window = max(0, window)
        while len(self.history) > self.window:
            self.floor = self.history.popleft().rv
