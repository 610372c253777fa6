"""The Informer against the test API server: list+watch, resume after dropped watches without loss or
duplicates, re-list with a correct diff after 410, reconnect through 500s and silent connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from e2e.apiserver import ApiServer
from raven.kube.backoff import Backoff
from raven.kube.client import NODES, KubeClient, new_api_client
from raven.kube.informer import Informer, InformerEvent
from tests.controller.conftest import eventually, node_body


class Recorder:
    def __init__(self) -> None:
        self.events: list[InformerEvent] = []

    def __call__(self, ev: InformerEvent) -> None:
        self.events.append(ev)

    def seen(self) -> list[tuple[str, str]]:
        return [(e.type, e.name) for e in self.events]


def fast_backoff() -> Backoff:
    return Backoff(base=0.02, cap=0.2)


@contextlib.asynccontextmanager
async def running(inf: Informer) -> AsyncIterator[Informer]:
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.wait_synced(), 10)
        yield inf
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def restarts(reg: CollectorRegistry, reason: str) -> float:
    return reg.get_sample_value("raven_informer_watch_restarts_total", {"informer": "nodes", "reason": reason}) or 0


async def test_lists_then_delivers_add_update_delete_in_order(kube: KubeClient) -> None:
    await kube.create(NODES, node_body("n-1", "gw"))
    rec = Recorder()
    inf = Informer(kube, NODES, "nodes", CollectorRegistry(), handler=rec)
    assert not inf.check().ok
    async with running(inf):
        assert inf.check().ok
        assert rec.seen() == [("ADDED", "n-1")]
        await kube.create(NODES, node_body("n-2", "gw"))
        await kube.merge_patch(NODES, "n-1", {"metadata": {"labels": {"x": "1"}}})
        await kube.delete(NODES, "n-2")
        await eventually(lambda: rec.seen(), lambda s: len(s) == 4, what="4 events")
        assert rec.seen() == [("ADDED", "n-1"), ("ADDED", "n-2"), ("MODIFIED", "n-1"), ("DELETED", "n-2")]
        modified = rec.events[2]
        assert modified.old is not None and "x" not in modified.old["metadata"]["labels"]
        assert modified.obj["metadata"]["labels"]["x"] == "1"
        assert set(inf.cache) == {"n-1"}


async def test_dropped_watches_lose_nothing_and_deliver_nothing_twice(apiserver: ApiServer, kube: KubeClient) -> None:
    await kube.create(NODES, node_body("n-1", "gw"))
    rec = Recorder()
    reg = CollectorRegistry()
    inf = Informer(kube, NODES, "nodes", reg, handler=rec, backoff=fast_backoff)
    async with running(inf):
        for i in range(20):
            await kube.merge_patch(NODES, "n-1", {"metadata": {"annotations": {"seq": str(i)}}})
            if i % 4 == 3:
                apiserver.drop_watches(abrupt=bool(i % 8 == 7))
                await asyncio.sleep(0.01)
        await eventually(lambda: inf.cache["n-1"],
                         lambda o: o["metadata"].get("annotations", {}).get("seq") == "19", what="last change")
        seqs = [int(e.obj["metadata"]["annotations"]["seq"]) for e in rec.events if e.type == "MODIFIED"]
        assert seqs == list(range(20))
        assert restarts(reg, "closed") + restarts(reg, "error") >= 2  # the watch really was re-established


async def test_410_relists_and_diffs_against_the_cache(apiserver: ApiServer, kube: KubeClient) -> None:
    for n in ("n-1", "n-2", "n-3"):
        await kube.create(NODES, node_body(n, "gw"))
    rec = Recorder()
    reg = CollectorRegistry()
    inf = Informer(kube, NODES, "nodes", reg, handler=rec, backoff=fast_backoff)
    async with running(inf):
        rec.events.clear()
        # While no client can connect, the world changes and the history is compacted away.
        await apiserver.stop_accepting()
        cluster = apiserver.state
        rt = cluster.lookup("", "v1", "nodes")
        assert rt is not None
        changed = await kube_obj(apiserver, "n-1")
        changed["metadata"]["labels"]["changed"] = "yes"
        cluster.update(rt, None, "n-1", changed)
        cluster.delete(rt, None, "n-2", {})
        cluster.create(rt, None, node_body("n-4", "gw"))
        apiserver.compact()
        await apiserver.resume_accepting()
        await eventually(lambda: rec.seen(), lambda s: len(s) >= 3, what="diff events")
        # Nothing more may follow: a change made now is delivered after anything the re-list still had
        # to say (one stream, in order), so once it is in, the diff is complete.
        await kube.create(NODES, node_body("n-5", "gw"))
        await eventually(lambda: rec.seen(), lambda s: ("ADDED", "n-5") in s, what="the marker n-5")
        assert rec.seen()[-1] == ("ADDED", "n-5")
        assert sorted(rec.seen()[:-1]) == [("ADDED", "n-4"), ("DELETED", "n-2"), ("MODIFIED", "n-1")]
        assert set(inf.cache) == {"n-1", "n-3", "n-4", "n-5"}
        assert restarts(reg, "expired") >= 1


async def kube_obj(apiserver: ApiServer, name: str) -> dict[str, Any]:
    rt = apiserver.state.lookup("", "v1", "nodes")
    assert rt is not None
    import copy

    return copy.deepcopy(apiserver.state.get(rt, None, name).obj)


async def test_reconnects_through_injected_500s(apiserver: ApiServer, kube: KubeClient) -> None:
    await kube.create(NODES, node_body("n-1", "gw"))
    rec = Recorder()
    reg = CollectorRegistry()
    inf = Informer(kube, NODES, "nodes", reg, handler=rec, backoff=fast_backoff)
    async with running(inf):
        apiserver.fail_next(4, 500)
        apiserver.drop_watches()
        # The reconnects hit the 500s (polled: on a loaded machine 0.5 s may not see a single one).
        await eventually(lambda: restarts(reg, "error"), lambda n: n >= 1,
                         what="a reconnect that failed with 500")
        apiserver.fail_next(0)
        await kube.create(NODES, node_body("n-2", "gw"))
        await eventually(lambda: rec.seen(), lambda s: ("ADDED", "n-2") in s, what="n-2")
        assert rec.seen() == [("ADDED", "n-1"), ("ADDED", "n-2")]
        assert restarts(reg, "error") >= 1


class FreezingProxy:
    """TCP pass-through that can make its current connections go silent (a half-open connection)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._conns: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze_existing(self) -> None:
        for frozen in self._conns:
            frozen.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        frozen = asyncio.Event()
        self._conns.append(frozen)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    if frozen.is_set():
                        await asyncio.Event().wait()  # swallow everything, close nothing
                    w.write(data)
                    await w.drain()
            with contextlib.suppress(Exception):
                w.close()

        for t in (asyncio.create_task(pump(reader, up_w)), asyncio.create_task(pump(up_r, writer))):
            self._tasks.add(t)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def proxied(apiserver: ApiServer, tmp_path: Any) -> AsyncIterator[tuple[FreezingProxy, KubeClient]]:
    import yaml

    proxy = FreezingProxy(apiserver.port)
    await proxy.start()
    cfg = apiserver.kubeconfig_dict()
    cfg["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = tmp_path / "proxied-kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    client = KubeClient(await new_api_client(str(path)))
    try:
        yield proxy, client
    finally:
        await client.close()
        await proxy.stop()


async def test_silent_connection_is_abandoned_after_the_read_timeout(
    kube: KubeClient, proxied: tuple[FreezingProxy, KubeClient]
) -> None:
    proxy, client = proxied
    await kube.create(NODES, node_body("n-1", "gw"))
    rec = Recorder()
    reg = CollectorRegistry()
    inf = Informer(client, NODES, "nodes", reg, handler=rec, read_timeout_s=0.5, backoff=fast_backoff)
    async with running(inf):
        proxy.freeze_existing()  # the watch's TCP connection now swallows everything, like a dead peer
        await kube.create(NODES, node_body("n-2", "gw"))
        await eventually(lambda: rec.seen(), lambda s: ("ADDED", "n-2") in s, within=10,
                         what="n-2 through a fresh connection")
        assert restarts(reg, "error") >= 1


async def test_bookmarks_keep_an_idle_watch_current_so_resuming_needs_no_relist(tmp_path: Any) -> None:
    server = ApiServer("127.0.0.1", 0, bookmark_interval=0.1)
    await server.start()
    client = KubeClient(await new_api_client(server.write_kubeconfig(tmp_path / "kc")))
    try:
        await client.create(NODES, node_body("n-1", "gw"))
        rec = Recorder()
        reg = CollectorRegistry()
        inf = Informer(client, NODES, "nodes", reg, handler=rec, backoff=fast_backoff)
        async with running(inf):
            listed_rv = int(inf.resource_version)
            # Other kinds move the server's version on; only bookmarks tell the idle node watch about it.
            from raven.kube.client import Resource

            ns = Resource("", "v1", "namespaces")
            for i in range(3):
                await client.create(ns, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"x{i}"}})
            await eventually(lambda: int(inf.resource_version), lambda rv: rv > listed_rv + 2,
                             what="bookmark advanced the version")
            server.compact()
            server.drop_watches()
            await kube_create_after_resume(server, client, reg, rec)
            assert restarts(reg, "expired") == 0  # resumed from the bookmark's version: no 410, no re-list
            assert rec.seen() == [("ADDED", "n-1"), ("ADDED", "n-2")]
    finally:
        await client.close()
        await server.stop()


async def kube_create_after_resume(server: ApiServer, client: KubeClient, reg: CollectorRegistry,
                                   rec: Recorder) -> None:
    """Create n-2 once the informer has seen its watch end and is watching again."""
    await eventually(lambda: restarts(reg, "closed") + restarts(reg, "error"), lambda n: n >= 1,
                     what="the dropped watch noticed")
    await eventually(lambda: server.open_watches, lambda n: n == 1, what="watching again")
    await client.create(NODES, node_body("n-2", "gw"))
    await eventually(lambda: rec.seen(), lambda s: ("ADDED", "n-2") in s, what="n-2")


async def test_field_selector_caches_and_delivers_only_the_named_object(kube: KubeClient) -> None:
    # The agent's Node informer: its own Node only, however many the cluster has.
    await kube.create(NODES, node_body("me", "gw"))
    await kube.create(NODES, node_body("other", "gw"))
    rec = Recorder()
    inf = Informer(kube, NODES, "nodes", CollectorRegistry(), handler=rec, field_selector="metadata.name=me")
    async with running(inf):
        await kube.create(NODES, node_body("third", "gw"))
        await kube.merge_patch(NODES, "other", {"metadata": {"labels": {"x": "1"}}})
        await kube.merge_patch(NODES, "me", {"metadata": {"labels": {"x": "1"}}})
        async def seen() -> list[tuple[str, str]]:
            return rec.seen()

        await eventually(seen, lambda events: ("MODIFIED", "me") in events, what="the MODIFIED event for me")
    assert set(inf.cache) == {"me"}
    assert {name for _, name in rec.seen()} == {"me"}
