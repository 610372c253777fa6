"""Kubernetes Events (core/v1) about our objects: `recorder.record(ref, "Warning", reason, message)`.

Recording never blocks and never fails the caller: events go into a bounded queue and a background
task (`run()`, supervised) writes them. Like client-go's correlator, a repeat of the same (object,
type, reason, message) bumps `count` and `lastTimestamp` of the existing Event instead of creating a
new one, so a flapping condition cannot flood the API server. Events about cluster-scoped objects
(Gateways) live in the `default` namespace, where `kubectl describe` looks for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from raven.kube.client import EVENTS, JSON, ApiError, KubeClient
from raven.log import kv

log = logging.getLogger(__name__)

EventKind = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class ObjectRef:
    api_version: str
    kind: str
    name: str
    uid: str = ""
    namespace: str | None = None

    def to_dict(self) -> JSON:
        out: JSON = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.uid:
            out["uid"] = self.uid
        if self.namespace:
            out["namespace"] = self.namespace
        return out


@dataclass(frozen=True)
class _Pending:
    ref: ObjectRef
    type: EventKind
    reason: str
    message: str


def _rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class EventRecorder:
    def __init__(
        self,
        client: KubeClient,
        component: str,
        *,
        instance: str = "",
        may_write: Callable[[], bool] = lambda: True,
        max_pending: int = 1000,
        max_remembered: int = 4096,
    ) -> None:
        self.client = client
        self.component = component
        self.instance = instance
        self._may_write = may_write
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(max_pending)
        # (object uid/name, type, reason, message) -> (namespace, event name, count), oldest first.
        self._seen: OrderedDict[tuple[str, str, str, str], tuple[str, str, int]] = OrderedDict()
        self._max_remembered = max_remembered

    def record(self, ref: ObjectRef, type_: EventKind, reason: str, message: str) -> None:
        try:
            self._queue.put_nowait(_Pending(ref, type_, reason, message[:1024]))
        except asyncio.QueueFull:
            log.warning("event dropped: queue full", extra=kv(object=ref.name, reason=reason))

    async def run(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if self._may_write():  # a standby (or ex-leader) does not speak for the controller
                    await self._send(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event not written", extra=kv(object=item.ref.name, reason=item.reason,
                                                          error=f"{type(exc).__name__}: {exc}"))
            finally:
                self._queue.task_done()

    async def _send(self, item: _Pending) -> None:
        ref = item.ref
        namespace = ref.namespace or "default"
        key = (ref.uid or ref.name, item.type, item.reason, item.message)
        now = _rfc3339()
        seen = self._seen.get(key)
        if seen is not None:
            ns, name, count = seen
            try:
                await self.client.merge_patch(EVENTS, name, {"count": count + 1, "lastTimestamp": now}, ns)
                self._remember(key, (ns, name, count + 1))
                return
            except ApiError as exc:
                if not exc.not_found:
                    raise
                # The event expired (TTL) meanwhile: write a new one.
        name = f"{ref.name}.{time.time_ns():x}"
        body: JSON = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": ref.to_dict(),
            "reason": item.reason,
            "message": item.message,
            "type": item.type,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            # Legacy-style (first/lastTimestamp + count, no eventTime) like client-go's core/v1 recorder:
            # a real API server demands more fields (action, ...) once eventTime is set.
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self.client.create(EVENTS, body, namespace)
        self._remember(key, (namespace, name, 1))

    def _remember(self, key: tuple[str, str, str, str], value: tuple[str, str, int]) -> None:
        self._seen[key] = value
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_remembered:
            self._seen.popitem(last=False)
