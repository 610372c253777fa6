"""An API server (or a proxy in front of it) that ends every watch at once, with nothing in it.

The informer must not turn that into a hot loop of reconnects (100% CPU on the node and a flood of
requests to the server): a watch that ends quickly without delivering anything backs off like an error.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from raven.kube.client import NODES, KubeClient, new_api_client
from raven.kube.informer import Informer


async def test_watches_that_end_at_once_are_not_retried_in_a_hot_loop(tmp_path: Path) -> None:
    watches = 0

    async def nodes(request: web.Request) -> web.Response:
        nonlocal watches
        if request.query.get("watch") == "true":
            watches += 1
            return web.Response(status=200, content_type="application/json", text="")
        return web.json_response({"kind": "NodeList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": "1"}, "items": []})

    app = web.Application()
    app.router.add_get("/api/v1/nodes", nodes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\n"
    )
    client = KubeClient(await new_api_client(str(kubeconfig)))
    informer = Informer(client, NODES, "nodes", CollectorRegistry())
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.wait_synced(), 5)
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await runner.cleanup()
    # Backoff starts at 0.2 s (jittered down to half) and doubles: a handful of watches per second at most.
    assert 1 <= watches <= 10, watches
