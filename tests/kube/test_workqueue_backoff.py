"""Work queue coalescing and exclusivity; backoff growth, cap and jitter; retry."""

from __future__ import annotations

import asyncio
import random

from raven.kube.backoff import Backoff
from raven.kube.workqueue import WorkQueue


async def test_burst_of_adds_for_one_key_is_processed_once() -> None:
    q = WorkQueue()
    for _ in range(100):
        q.add("gw-a")
    q.add("gw-b")
    assert len(q) == 2
    assert [await q.get(), await q.get()] == ["gw-a", "gw-b"]
    assert len(q) == 0


async def test_key_added_while_processing_is_requeued_after_done_never_handed_out_twice() -> None:
    q = WorkQueue()
    q.add("gw-a")
    key = await q.get()
    q.add("gw-a")  # a new event while a worker holds the key
    q.add("gw-a")
    assert len(q) == 0  # not available to a second worker
    q.done(key)
    assert len(q) == 1
    assert await q.get() == "gw-a"
    q.done("gw-a")
    assert len(q) == 0


async def test_concurrent_workers_never_process_the_same_key_at_once() -> None:
    q = WorkQueue()
    active: set[str] = set()
    overlaps = 0
    processed = 0

    async def worker() -> None:
        nonlocal overlaps, processed
        while True:
            key = await q.get()
            if key in active:
                overlaps += 1
            active.add(key)
            await asyncio.sleep(0)
            active.discard(key)
            processed += 1
            q.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    for i in range(200):
        q.add(f"gw-{i % 3}")
        await asyncio.sleep(0)
    for _ in range(500):
        if not len(q):
            break
        await asyncio.sleep(0.01)
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert overlaps == 0
    assert 3 <= processed < 200  # bursts were coalesced


async def test_add_after_delays_and_keeps_the_earliest_retry() -> None:
    q = WorkQueue()
    q.add_after("gw-a", 0.05)
    q.add_after("gw-a", 5.0)  # a later retry does not postpone the earlier one
    assert len(q) == 0
    assert await asyncio.wait_for(q.get(), 2.0) == "gw-a"
    q.close()


def test_backoff_grows_to_the_cap_with_jitter_and_resets() -> None:
    b = Backoff(base=0.1, cap=1.0, factor=2.0, jitter=0.5, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    raw = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    assert all(r * 0.5 <= d <= r for d, r in zip(delays, raw, strict=True))
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jittered, not lock-step
    b.reset()
    assert b.next() <= 0.1
