"""A work queue keyed by object name that coalesces bursts (client-go's workqueue semantics).

- adding a key that is already waiting does nothing: a burst of 100 events for one Gateway costs one
  reconcile;
- a key is never handed to two workers at once: adding a key that is being processed marks it dirty
  and it is queued again when the worker calls `done()`, so the latest state is always reconciled;
- `add_after()` re-queues with a delay (failed reconciles retry with per-key backoff);
- `close()` cancels those delayed re-queues when the workers stop (loss of leadership, shutdown).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from raven.kube.backoff import Backoff


class WorkQueue:
    def __init__(self, backoff_factory: Callable[[], Backoff] | None = None) -> None:
        self._queue: deque[str] = deque()
        self._waiting: set[str] = set()  # in _queue
        self._processing: set[str] = set()
        self._dirty: set[str] = set()  # added while processing
        self._wakeup = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._backoffs: dict[str, Backoff] = {}
        self._backoff_factory = backoff_factory or (lambda: Backoff(base=0.05, cap=30.0))

    def __len__(self) -> int:
        """Keys waiting to be processed (the queue depth metric)."""
        return len(self._queue)

    def add(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._waiting:
            return
        self._waiting.add(key)
        self._queue.append(key)
        self._wakeup.set()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        old = self._timers.get(key)
        loop = asyncio.get_running_loop()
        if old is not None and old.when() <= loop.time() + delay:
            return  # an earlier retry is already scheduled
        if old is not None:
            old.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: str) -> float:
        """Re-queue after this key's next backoff delay; returns the delay."""
        b = self._backoffs.setdefault(key, self._backoff_factory())
        delay = b.next()
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """The key succeeded: its next failure starts from the shortest delay again."""
        self._backoffs.pop(key, None)

    async def get(self) -> str:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._queue.popleft()
        self._waiting.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    @property
    def idle(self) -> bool:
        """No key waiting and none being processed: every pass queued so far has finished."""
        return not self._queue and not self._processing

    @property
    def retries_scheduled(self) -> int:
        """Keys with a delayed re-queue pending (`add_after`)."""
        return len(self._timers)

    def close(self) -> None:
        """Cancel every pending retry and forget the backoffs: called when this process stops working
        the queue (leadership lost, shutdown), so no timer outlives the term that scheduled it. The queue
        stays usable; the next term re-enqueues what it needs."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._backoffs.clear()
