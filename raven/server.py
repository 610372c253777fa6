"""HTTP endpoints for probes and scraping: /healthz, /readyz, /metrics (aiohttp).

The handlers run on the event loop, so an answer from /healthz also proves the loop is not blocked.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from raven.config import ConfigError, ListenAddr
from raven.health import Health
from raven.log import kv

log = logging.getLogger(__name__)


def make_app(health: Health, registry: CollectorRegistry) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        dead = health.dead_tasks
        if dead:
            lines = [f"[-] task {name}: {reason}" for name, reason in sorted(dead.items())]
            return web.Response(status=500, text="\n".join(lines) + "\nhealthz check failed\n")
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        results = health.readiness()
        ok = all(r.ok for r in results.values()) and health.alive
        # ?verbose: a passing check's reason too (which WireGuard data plane and why, ...), as kube-apiserver's.
        verbose = "verbose" in request.query
        lines = [
            (f"[+]{name} ok: {r.reason}" if verbose and r.reason else f"[+]{name} ok") if r.ok
            else f"[-]{name} failed: {r.reason}" for name, r in results.items()
        ]
        lines.append("readyz check passed" if ok else "readyz check failed")
        return web.Response(status=200 if ok else 503, text="\n".join(lines) + "\n")

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


class HttpServer:
    """Serves the app on every distinct listen address (health and metrics may share one)."""

    def __init__(self, app: web.Application, addrs: list[ListenAddr]) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._addrs = sorted(set(addrs))
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        await self._runner.setup()
        for addr in self._addrs:
            site = web.TCPSite(self._runner, addr.host or None, addr.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                # Port taken, address not on this host: the operator's to fix, said in one line (exit 2).
                await self._runner.cleanup()
                raise ConfigError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
            server = site._server  # the only way to learn an ephemeral port
            for sock in getattr(server, "sockets", None) or []:
                host, port = sock.getsockname()[:2]
                self.bound.append((host, port))
            log.info("serving http", extra=kv(addr=str(addr), endpoints="/healthz,/readyz,/metrics"))

    async def stop(self) -> None:
        await self._runner.cleanup()
