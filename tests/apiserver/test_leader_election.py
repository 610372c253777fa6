"""kubernetes_asyncio's own Lease-based leader election runs unchanged against the test server."""

from __future__ import annotations

import asyncio
import contextlib

from kubernetes_asyncio import client
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from tests.controller.conftest import eventually


async def test_second_candidate_takes_over_after_the_leader_stops_renewing(apiserver, kube_api):
    leading: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}

    def elector(identity: str) -> leaderelection.LeaderElection:
        async def started() -> None:
            leading[identity].set()
            await asyncio.Event().wait()

        async def stopped() -> None:
            pass

        lock = LeaseLock("raven-controller", "kube-system", identity, kube_api)
        cfg = electionconfig.Config(lock, lease_duration=2, renew_deadline=1.5, retry_period=1,
                                    onstarted_leading=started, onstopped_leading=stopped)
        return leaderelection.LeaderElection(cfg)

    def lease_calls() -> tuple[int, int]:
        return apiserver.request_counts[("get", "leases")], apiserver.request_counts[("update", "leases")]

    a = asyncio.create_task(elector("a").run())
    await asyncio.wait_for(leading["a"].wait(), 10)
    lease = await client.CoordinationV1Api(kube_api).read_namespaced_lease("raven-controller", "kube-system")
    assert lease.spec.holder_identity == "a"
    gets0, updates0 = lease_calls()
    b = asyncio.create_task(elector("b").run())
    # The leader reads and writes to renew; b, finding the Lease held, only reads. Two reads more than
    # writes (one renewal may be half done) mean b competed at least once and was refused.
    await eventually(lambda: (lease_calls()[0] - gets0) - (lease_calls()[1] - updates0), lambda n: n >= 2,
                     within=10, what="b refused")
    assert not leading["b"].is_set()
    a.cancel()  # the leader dies without releasing the lease
    with contextlib.suppress(asyncio.CancelledError):
        await a
    try:
        await asyncio.wait_for(leading["b"].wait(), 15)
        lease = await client.CoordinationV1Api(kube_api).read_namespaced_lease("raven-controller", "kube-system")
        assert lease.spec.holder_identity == "b"
    finally:
        b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await b
