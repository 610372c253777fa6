"""Fault injection: error bursts, latency, dropped connections and an outage with the same data after it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from e2e.apiserver import ApiServer

from .test_objects import node, status_of


async def test_next_requests_fail_with_500_then_the_server_recovers(apiserver: ApiServer, kube_api):
    v1 = client.CoreV1Api(kube_api)
    apiserver.fail_next(2, 500)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            await v1.list_node()
        assert err.value.status == 500 and status_of(err.value)["reason"] == "InternalError"
    assert (await v1.list_node()).items == []


async def test_throttling_answers_429_with_retry_after(apiserver: ApiServer, kube_api):
    v1 = client.CoreV1Api(kube_api)
    apiserver.fail_next(1, 429, retry_after=3)
    with pytest.raises(ApiException) as err:
        await v1.create_node(node("n"))
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "3"
    body = status_of(err.value)
    assert body["reason"] == "TooManyRequests" and body["details"]["retryAfterSeconds"] == 3
    with pytest.raises(ApiException) as err:
        await v1.read_node("n")  # the failed create did not happen
    assert err.value.status == 404


async def test_added_latency_trips_client_timeouts(apiserver: ApiServer, kube_api):
    v1 = client.CoreV1Api(kube_api)
    apiserver.set_latency(2.0)
    with pytest.raises(asyncio.TimeoutError):
        await v1.list_node(_request_timeout=0.2)
    apiserver.set_latency(0)
    assert (await v1.list_node(_request_timeout=5)).items == []


async def test_outage_refuses_connections_then_returns_with_the_same_data(apiserver: ApiServer, kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_node(node("kept"))
    before = await v1.list_node()
    await apiserver.stop_accepting()
    with pytest.raises(aiohttp.ClientConnectionError):
        await v1.list_node(_request_timeout=2)
    await apiserver.resume_accepting()
    after = await v1.list_node()
    assert [n.metadata.uid for n in after.items] == [n.metadata.uid for n in before.items]
    assert after.metadata.resource_version == before.metadata.resource_version


async def test_watch_resumes_without_loss_across_a_timed_outage(apiserver: ApiServer, kube_api):
    v1 = client.CoreV1Api(kube_api)
    rv = (await v1.list_node()).metadata.resource_version
    await v1.create_node(node("before"))
    seen: list[str] = []
    broke = False
    async with watch.Watch() as w:
        try:
            async for ev in w.stream(v1.list_node, resource_version=rv, timeout_seconds=30):
                seen.append(ev["raw_object"]["metadata"]["name"])
                rv = ev["raw_object"]["metadata"]["resourceVersion"]
                outage = apiserver.outage(0.3)
        except (aiohttp.ClientError, asyncio.IncompleteReadError):
            broke = True
    assert broke
    await outage
    # Written after the server came back; the informer resumes from its last resourceVersion.
    await v1.create_node(node("after"))
    async with watch.Watch() as w:
        async for ev in w.stream(v1.list_node, resource_version=rv, timeout_seconds=5):
            seen.append(ev["raw_object"]["metadata"]["name"])
            w.stop()
    assert seen == ["before", "after"]
