"""Watch semantics: resume by resourceVersion, bookmarks, timeouts, 410 Gone, dropped watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from e2e.apiserver import ApiServer
from tests.controller.conftest import eventually

from .test_objects import node


async def collect(w: watch.Watch, gen: Any, n: int, out: list[tuple[str, str, str]]) -> None:
    async for ev in gen:
        obj = ev["raw_object"]
        out.append((ev["type"], obj["metadata"].get("name", ""), obj["metadata"]["resourceVersion"]))
        if len(out) >= n:
            w.stop()
            break


async def test_watch_from_a_resource_version_streams_added_modified_deleted_in_order(kube_api):
    v1 = client.CoreV1Api(kube_api)
    start = (await v1.list_node()).metadata.resource_version
    await v1.create_node(node("a"))
    await v1.patch_node("a", {"metadata": {"labels": {"x": "1"}}})
    await v1.delete_node("a")
    w = watch.Watch()
    events: list[tuple[str, str, str]] = []
    await asyncio.wait_for(collect(w, w.stream(v1.list_node, resource_version=start, timeout_seconds=5), 3,
                                   events), 10)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    rvs = [int(rv) for _, _, rv in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


async def test_watch_without_resource_version_starts_with_the_current_objects(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_node(node("a"))
    await v1.create_node(node("b"))
    w = watch.Watch()
    events: list[tuple[str, str, str]] = []
    await asyncio.wait_for(collect(w, w.stream(v1.list_node, timeout_seconds=5), 2, events), 10)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "a"), ("ADDED", "b")]


async def test_bookmarks_are_sent_when_allowed_in_any_case_and_timeout_ends_the_stream(apiserver, kube_api):
    apiserver.bookmark_interval = 0.1
    v1 = client.CoreV1Api(kube_api)
    rv = (await v1.list_node()).metadata.resource_version
    await v1.create_node(node("a"))
    types: list[str] = []
    bookmark_rvs: list[int] = []
    async with watch.Watch() as w:
        # kubernetes_asyncio sends allowWatchBookmarks=True (capitalised); timeoutSeconds ends the stream.
        async for ev in w.stream(v1.list_node, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=1):
            types.append(ev["type"])
            if ev["type"] == "BOOKMARK":
                bookmark_rvs.append(int(ev["raw_object"]["metadata"]["resourceVersion"]))
    assert types[0] == "ADDED" and "BOOKMARK" in types
    assert min(bookmark_rvs) >= int(rv) + 1
    no_bookmarks: list[str] = []
    async with watch.Watch() as w:
        async for ev in w.stream(v1.list_node, resource_version=rv, timeout_seconds=1):
            no_bookmarks.append(ev["type"])
    assert no_bookmarks == ["ADDED"]


async def test_too_old_resource_version_gets_410_error_event_and_relisting_recovers(apiserver, kube_api):
    v1 = client.CoreV1Api(kube_api)
    old_rv = (await v1.list_node()).metadata.resource_version
    await v1.create_node(node("a"))
    apiserver.compact()
    await v1.create_node(node("b"))
    # Raw protocol: HTTP 200 and a single ERROR event carrying a 410 Status.
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{apiserver.url}/api/v1/nodes?watch=1&timeoutSeconds=2&resourceVersion={old_rv}", ssl=False,
                         headers={"Authorization": f"Bearer {apiserver.token}"}) as r:
            assert r.status == 200
            lines = (await r.read()).decode().splitlines()
    import json
    ev = json.loads(lines[0])
    assert len(lines) == 1 and ev["type"] == "ERROR"
    assert ev["object"]["kind"] == "Status" and ev["object"]["code"] == 410 and ev["object"]["reason"] == "Expired"
    # The client raises ApiException(410); an informer re-lists and watches from the new list.
    with pytest.raises(ApiException) as err:
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_node, resource_version=old_rv, timeout_seconds=2):
                pass
    assert err.value.status == 410
    listed = await v1.list_node()
    assert [n.metadata.name for n in listed.items] == ["a", "b"]
    await v1.create_node(node("c"))
    events: list[tuple[str, str, str]] = []
    w = watch.Watch()
    await asyncio.wait_for(collect(w, w.stream(v1.list_node, resource_version=listed.metadata.resource_version,
                                               timeout_seconds=5), 1, events), 10)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "c")]


async def test_a_small_history_window_expires_old_resource_versions(apiserver, kube_api):
    apiserver.set_history_window(3)
    v1 = client.CoreV1Api(kube_api)
    rv = (await v1.list_node()).metadata.resource_version
    for i in range(5):
        await v1.create_node(node(f"n{i}"))
    with pytest.raises(ApiException) as err:
        async with watch.Watch() as w:
            async for _ in w.stream(v1.list_node, resource_version=rv, timeout_seconds=2):
                pass
    assert err.value.status == 410
    recent = (await v1.read_node("n1")).metadata.resource_version
    events: list[tuple[str, str, str]] = []
    w = watch.Watch()
    await asyncio.wait_for(collect(w, w.stream(v1.list_node, resource_version=recent, timeout_seconds=5), 3,
                                   events), 10)
    assert [n for _, n, _ in events] == ["n2", "n3", "n4"]


@pytest.mark.parametrize("abrupt", [False, True], ids=["clean-close", "connection-reset"])
async def test_resuming_after_dropped_watches_loses_and_duplicates_nothing(apiserver: ApiServer, kube_api,
                                                                            abrupt: bool):
    v1 = client.CoreV1Api(kube_api)
    rv = (await v1.list_namespaced_config_map("default")).metadata.resource_version
    total = 60
    seen: list[tuple[str, str, str]] = []
    reconnects = 0

    async def informer() -> None:
        nonlocal rv, reconnects
        while len(seen) < total:
            try:
                async with watch.Watch() as w:
                    async for ev in w.stream(v1.list_namespaced_config_map, "default", resource_version=rv,
                                             timeout_seconds=30):
                        obj = ev["raw_object"]
                        seen.append((ev["type"], obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
                        rv = obj["metadata"]["resourceVersion"]
                        if len(seen) >= total:
                            return
            except (aiohttp.ClientError, asyncio.IncompleteReadError):
                pass
            reconnects += 1

    task = asyncio.create_task(informer())
    written: list[tuple[str, str, str]] = []
    for i in range(total // 2):
        cm = await v1.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        written.append(("ADDED", f"c{i}", cm.metadata.resource_version))
        cm = await v1.patch_namespaced_config_map(f"c{i}", "default", {"data": {"i": str(i)}})
        written.append(("MODIFIED", f"c{i}", cm.metadata.resource_version))
        if i % 7 == 3:
            await asyncio.sleep(0.02)
            apiserver.drop_watches(abrupt=abrupt)
    try:
        await asyncio.wait_for(task, 20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert seen == written
    assert reconnects >= 2


async def test_selector_watch_reports_objects_entering_and_leaving_the_selection(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_node(node("n", {"role": "edge"}))
    rv = (await v1.list_node()).metadata.resource_version
    await v1.patch_node("n", {"metadata": {"labels": {"gw": "a"}}})       # enters the selection
    await v1.patch_node("n", {"metadata": {"labels": {"role": "x"}}})     # still matches gw=a
    await v1.patch_node("n", {"metadata": {"labels": {"gw": "b"}}})       # leaves it
    await v1.create_node(node("m", {"gw": "b"}))                          # never matches
    events: list[tuple[str, str, str]] = []
    w = watch.Watch()
    await asyncio.wait_for(collect(w, w.stream(v1.list_node, resource_version=rv, label_selector="gw=a",
                                               timeout_seconds=3), 3, events), 10)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "n"), ("MODIFIED", "n"), ("DELETED", "n")]


async def test_namespaced_watch_sees_only_its_namespace(kube_api):
    v1 = client.CoreV1Api(kube_api)
    await v1.create_namespace({"metadata": {"name": "other"}})
    rv = (await v1.list_namespaced_config_map("default")).metadata.resource_version
    await v1.create_namespaced_config_map("other", {"metadata": {"name": "o"}})
    await v1.create_namespaced_config_map("default", {"metadata": {"name": "d"}})
    events: list[tuple[str, str, str]] = []
    w = watch.Watch()
    await asyncio.wait_for(collect(w, w.stream(v1.list_namespaced_config_map, "default", resource_version=rv,
                                               timeout_seconds=3), 1, events), 10)
    assert [(t, n) for t, n, _ in events] == [("ADDED", "d")]


async def test_a_watch_whose_client_went_away_is_released(apiserver: ApiServer):
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{apiserver.url}/api/v1/nodes?watch=1", ssl=False,
                        headers={"Authorization": f"Bearer {apiserver.token}"})
        assert r.status == 200
        for _ in range(100):
            if apiserver.open_watches == 1:
                break
            await asyncio.sleep(0.02)
        assert apiserver.open_watches == 1
        r.close()
    for _ in range(200):
        if apiserver.open_watches == 0:
            break
        await asyncio.sleep(0.02)
    assert apiserver.open_watches == 0


async def test_a_watcher_that_went_away_before_a_bookmark_costs_one_debug_line(apiserver, caplog):
    # A client closing its watch is normal: the server's next bookmark write finds the connection gone and
    # says so in one debug line, with no traceback (aiohttp logs one for any exception a handler raises).
    caplog.set_level(logging.DEBUG)
    apiserver.bookmark_interval = 0.2
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{apiserver.url}/api/v1/nodes?watch=1&allowWatchBookmarks=true&timeoutSeconds=30",
                        ssl=False, headers={"Authorization": f"Bearer {apiserver.token}"})
        assert r.status == 200
        assert b'"BOOKMARK"' in await asyncio.wait_for(r.content.readline(), 5)
        r.close()  # drop the connection while the server waits to send the next bookmark
    await eventually(lambda: apiserver.open_watches, lambda n: n == 0, within=5, what="the watcher gone")
    gone = [r for r in caplog.records if r.name == "e2e.apiserver" and "watcher went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.DEBUG, [r.getMessage() for r in caplog.records]
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
