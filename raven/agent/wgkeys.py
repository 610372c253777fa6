"""Publishing this node's WireGuard public key (--vpn-driver=wireguard), where peers read it.

Where: in this node's tunnel endpoint of its Gateway, `spec.endpoints[].config.publicKey` (base64), the key
OpenYurt Raven's WireGuard driver writes; the controller copies the endpoint, config included, into
`status.activeEndpoints`, from which every peer's plan takes it (`raven.agent.plan`). OpenYurt writes it only
once its node is the active endpoint; here every node listed as a tunnel endpoint publishes its key as soon
as it sees itself there, so a failover finds the new endpoint's key already in place.

How: one merge patch of `spec.endpoints` (the whole list: a merge patch replaces lists) carrying the
`metadata.resourceVersion` it was computed from, so a concurrent edit of the Gateway is a 409 and the patch is
recomputed from the newer object (never an overwrite of someone else's change). Only the public key is ever
sent; the private key never leaves the key file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

from raven.api.constants import ENDPOINT_CONFIG_PUBLIC_KEY, ENDPOINT_TYPE_TUNNEL
from raven.api.gateway import Gateway
from raven.health import CheckResult
from raven.kube.backoff import Backoff
from raven.kube.client import GATEWAYS, ApiError
from raven.kube.typed import TypedClient
from raven.log import kv

log = logging.getLogger(__name__)


def key_patch(gw: Gateway, node_name: str, public_key: str) -> dict[str, object] | None:
    """The merge patch that puts `public_key` into `node_name`'s tunnel endpoints of `gw`; None when every one
    of them already carries it (or the node has none)."""
    endpoints = gw.spec.endpoints or []
    changed = False
    out: list[object] = []
    for ep in endpoints:
        if ep.node_name == node_name and ep.type == ENDPOINT_TYPE_TUNNEL:
            config = dict(ep.config or {})
            if config.get(ENDPOINT_CONFIG_PUBLIC_KEY) != public_key:
                config[ENDPOINT_CONFIG_PUBLIC_KEY] = public_key
                ep = replace(ep, config=config)
                changed = True
        out.append(ep.to_dict())
    if not changed:
        return None
    rv = gw.metadata.get("resourceVersion")
    meta: dict[str, object] = {"resourceVersion": rv} if isinstance(rv, str) else {}
    return {"metadata": meta, "spec": {"endpoints": out}}


def _name(gw: Gateway) -> str:
    return gw.name


class KeyPublisher:
    """Keeps this node's public key in its tunnel endpoints. `check()` (after every Gateway event) wakes
    `run()` when a Gateway lacks it; `ready()` says whether the key is published where this node is listed."""

    def __init__(self, client: TypedClient, node_name: str, public_key: str,
                 gateways: Callable[[], Iterable[Gateway]]) -> None:
        self._client = client
        self._node = node_name
        self.public_key = public_key
        self._gateways = gateways
        self._wake = asyncio.Event()
        self.writes = 0
        self._missing: list[str] = []

    def _pending(self) -> list[tuple[str, dict[str, object]]]:
        out: list[tuple[str, dict[str, object]]] = []
        for gw in sorted(self._gateways(), key=_name):
            patch = key_patch(gw, self._node, self.public_key)
            if patch is not None:
                out.append((gw.name, patch))
        return out

    def check(self) -> None:
        self._missing = [name for name, _ in self._pending()]
        if self._missing:
            self._wake.set()

    def ready(self) -> CheckResult:
        if self._missing:
            return CheckResult(False, f"wireguard public key not yet published in gateway {', '.join(self._missing)}")
        return CheckResult(True, f"wireguard public key {self.public_key}")

    async def run(self) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        self.check()
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for name, patch in self._pending():
                try:
                    await self._client.merge_patch(GATEWAYS, name, patch)
                except ApiError as exc:
                    # 409: the Gateway changed meanwhile; the informer brings the new one, the patch is redone.
                    failed = True
                    level = logging.INFO if exc.status == 409 else logging.WARNING
                    log.log(level, "wireguard key not published yet", extra=kv(gateway=name, error=str(exc)))
                    continue
                self.writes += 1
                log.info("wireguard public key published", extra=kv(gateway=name, public_key=self.public_key))
            if failed:
                await asyncio.sleep(backoff.next())
                self._wake.set()
            else:
                backoff.reset()
