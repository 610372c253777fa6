"""LeaderElector against the test API server: one leader, release on cancel, loss on a stolen Lease or
an unreachable server (lead() cancelled, competing again), lead() failures propagated."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from e2e.apiserver import ApiServer
from raven.kube.client import LEASES, KubeClient
from raven.kube.leader import LeaderElector, micro_time
from tests.controller.conftest import eventually

NS, NAME = "kube-system", "raven-test"


class Candidate:
    def __init__(self, kube: KubeClient, identity: str) -> None:
        self.leading = False
        self.terms = 0
        self.elector = LeaderElector(kube, NS, NAME, identity, lease_duration=2.0, renew_deadline=1.5,
                                     retry_period=0.1)
        self.task: asyncio.Task[None] | None = None

    async def lead(self) -> None:
        self.leading = True
        self.terms += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.leading = False

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self.lead))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def candidates(kube: KubeClient) -> AsyncIterator[list[Candidate]]:
    made: list[Candidate] = []
    yield made
    for c in made:
        if c.task is not None and not c.task.done():
            await c.stop()


async def holder(kube: KubeClient) -> str:
    lease = await kube.get(LEASES, NAME, NS)
    return str(lease["spec"].get("holderIdentity") or "")


def refusals(apiserver: ApiServer, since: tuple[int, int]) -> int:
    """Lease reads not followed by a write since `since` (from `lease_calls`): the leader reads and
    then writes to renew, a standby that finds the Lease held only reads."""
    gets, updates = lease_calls(apiserver)
    return (gets - since[0]) - (updates - since[1])


def lease_calls(apiserver: ApiServer) -> tuple[int, int]:
    return apiserver.request_counts[("get", "leases")], apiserver.request_counts[("update", "leases")]


async def test_one_leader_and_release_on_cancel_hands_over_at_once(
    apiserver: ApiServer, kube: KubeClient, candidates: list[Candidate]
) -> None:
    a, b = Candidate(kube, "a"), Candidate(kube, "b")
    candidates += [a, b]
    a.start()
    await eventually(lambda: a.leading, bool, what="a leading")
    before = lease_calls(apiserver)
    b.start()
    # b has competed and been refused several times (one of a's renewals may be half done: >= 4 means
    # at least 3 refusals) before we look at who leads.
    await eventually(lambda: refusals(apiserver, before), lambda n: n >= 4, what="b refused three times")
    assert a.elector.is_leader and not b.elector.is_leader and not b.leading
    assert await holder(kube) == "a"
    await a.stop()
    lease = await kube.get(LEASES, NAME, NS)
    # Released: either nobody holds it yet or b already took it; a's record is gone either way.
    assert lease["spec"].get("holderIdentity") in (None, "", "b")
    assert not a.leading and not a.elector.is_leader
    await eventually(lambda: b.leading, bool, within=1.9, what="b leading before a's lease could expire")
    assert await holder(kube) == "b"
    assert lease["spec"].get("leaseDurationSeconds") in (1, 2)


async def test_stolen_lease_cancels_lead_and_the_elector_competes_again(
    kube: KubeClient, candidates: list[Candidate]
) -> None:
    a = Candidate(kube, "a")
    candidates.append(a)
    a.start()
    await eventually(lambda: a.leading, bool, what="a leading")
    lease = await kube.get(LEASES, NAME, NS)
    lease["spec"].update(holderIdentity="thief", renewTime=micro_time(), leaseDurationSeconds=30)
    await kube.replace(LEASES, NAME, lease, NS)
    await eventually(lambda: a.leading, lambda v: not v, what="a stops leading")
    assert not a.elector.is_leader
    lease = await kube.get(LEASES, NAME, NS)
    del lease["spec"]["holderIdentity"]
    await kube.replace(LEASES, NAME, lease, NS)
    await eventually(lambda: a.leading, bool, what="a leads again")
    assert a.terms == 2


async def test_unreachable_server_ends_leadership_after_renew_deadline(
    apiserver: ApiServer, kube: KubeClient, candidates: list[Candidate]
) -> None:
    a = Candidate(kube, "a")
    candidates.append(a)
    a.start()
    await eventually(lambda: a.leading, bool, what="a leading")
    await apiserver.stop_accepting()
    try:
        await eventually(lambda: a.leading, lambda v: not v, within=5, what="a gives up")
        assert not a.elector.is_leader
    finally:
        await apiserver.resume_accepting()
    await eventually(lambda: a.leading, bool, what="a leads again")


async def test_lead_failure_releases_the_lease_and_propagates(kube: KubeClient) -> None:
    elector = LeaderElector(kube, NS, NAME, "a", lease_duration=2.0, renew_deadline=1.5, retry_period=0.1)

    async def lead() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(elector.run(lead), 5)
    assert await holder(kube) == ""
