"""The one backoff helper: exponential delays with jitter (the work queue's and the watches' retries).

Jitter matters here: after an API server restart every watcher and every replica reconnects at once;
without it they would all come back in lock-step and hammer the server together.
"""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays base, base*factor, ... capped at `cap`, each scaled by a random factor in [1-jitter, 1]."""

    def __init__(self, base: float = 0.2, cap: float = 30.0, factor: float = 2.0, jitter: float = 0.5,
                 rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("backoff needs 0 < base <= cap, factor >= 1, 0 <= jitter <= 1")
        self.base, self.cap, self.factor, self.jitter = base, cap, factor, jitter
        self._rng = rng or random.Random()
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (and count the attempt)."""
        raw = min(self.cap, self.base * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return raw * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self.attempts = 0

    async def sleep(self) -> float:
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
