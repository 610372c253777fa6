"""KernelApplier.close() and the worker thread: the bulk route socket is closed only once nothing uses it.

An agent stopping (SIGTERM) cancels its reconcile while the worker thread may still be inside a blocking
send/receive on the route socket; closing the socket under it from the event loop would let the fd
number be reused by another socket while the thread still writes route messages into it.
"""

from __future__ import annotations

import asyncio
import threading

from raven.dataplane.kernel import KernelApplier


async def test_close_waits_for_the_worker_before_closing_the_route_socket() -> None:
    applier = KernelApplier()
    await applier._open()  # root namespace: opening sockets writes nothing
    rt = applier._rt
    assert rt is not None
    in_job, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def blocking_job() -> None:  # stands in for RouteSocket.send still running after a cancellation
        in_job.set()
        release.wait(5)
        seen.append(rt._sock.fileno())  # -1 once the socket was closed under the job

    job = asyncio.get_running_loop().run_in_executor(applier._worker, blocking_job)
    await asyncio.to_thread(in_job.wait, 5)
    closing = asyncio.create_task(applier.close())
    await asyncio.sleep(0.05)
    release.set()
    await job
    await closing
    assert seen and seen[0] >= 0
    assert rt._sock.fileno() == -1  # and closed afterwards
