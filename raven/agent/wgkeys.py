"""Publishing this node's WireGuard public key (--vpn-driver=wireguard), where peers read it.

Where: in this node's own PathReport, `status.wireguardPublicKey` (base64; `raven.api.pathreport`). That object
is the one thing an agent may write (06-pathreport-policy.yaml admits an agent's write only for the node its pod
runs on), so a node can publish its own key and nobody else's. The controller copies the key of each elected
tunnel endpoint into the Gateway's `status.activeEndpoints[].config.publicKey` (the key OpenYurt Raven's
WireGuard driver uses, so its readers still find it), from which every peer's plan takes it
(`raven.agent.plan`). Every node publishes its key at start, members too, so a failover finds the new
endpoint's key already there. (OpenYurt's agents write the key into the Gateway's spec, which needs every agent
to be allowed to patch every Gateway, that is to redirect any pool; agents here have no write on Gateways.)

How: the report is read (created when missing), then one merge patch of its /status carrying only the key; the
path-health writer's patches never name the key, so they leave it in place. Written again when a Gateway this
node is elected for shows another key (the report was deleted, or lost the key): the informer's events drive it.
Only the public key is ever sent; the private key never leaves the key file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from raven.api.constants import ENDPOINT_CONFIG_PUBLIC_KEY, ENDPOINT_TYPE_TUNNEL
from raven.api.gateway import Gateway
from raven.api.pathreport import PathReport, key_patch, new_report_body
from raven.health import CheckResult
from raven.kube.backoff import Backoff
from raven.kube.client import PATHREPORTS, ApiError
from raven.kube.typed import TypedClient
from raven.log import kv

log = logging.getLogger(__name__)

# After a write, how long a Gateway may still show another key (the controller copying it) before the key is
# written again.
REPUBLISH_AFTER_S = 10.0


def elected_with_other_key(gateways: Iterable[Gateway], node_name: str, public_key: str) -> list[str]:
    """The Gateways whose status lists `node_name` as an active tunnel endpoint with a key other than ours."""
    out: list[str] = []
    for gw in gateways:
        for ep in gw.status.active_tunnel_endpoints():
            if ep.node_name == node_name and ep.type == ENDPOINT_TYPE_TUNNEL:
                if (ep.config or {}).get(ENDPOINT_CONFIG_PUBLIC_KEY) != public_key:
                    out.append(gw.name)
    return sorted(out)


class KeyPublisher:
    """Keeps this node's public key in its own PathReport. `run()` writes it at start (retrying with backoff);
    `check()` (after every Gateway event) wakes it again when a Gateway shows another key for this node;
    `ready()` says whether the key was written."""

    def __init__(self, client: TypedClient, node_name: str, public_key: str,
                 gateways: Callable[[], Iterable[Gateway]], clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._node = node_name
        self.public_key = public_key
        self._gateways = gateways
        self._clock = clock
        self._wake = asyncio.Event()
        self._wake.set()  # the first write
        self.writes = 0
        self._written_at: float | None = None

    def check(self) -> None:
        if self._written_at is None or self._clock() - self._written_at < REPUBLISH_AFTER_S:
            return  # not written yet (run() is on it), or just written (the controller is copying it)
        stale = elected_with_other_key(self._gateways(), self._node, self.public_key)
        if stale:
            log.info("a gateway shows another wireguard key for this node; publishing it again",
                     extra=kv(gateways=",".join(stale)))
            self._wake.set()

    def ready(self) -> CheckResult:
        if self._written_at is None:
            return CheckResult(False, f"wireguard public key not yet published in PathReport {self._node}")
        return CheckResult(True, f"wireguard public key {self.public_key}")

    async def publish(self) -> None:
        """One write of the key into this node's PathReport (created when missing)."""
        try:
            report = await self._client.get(PATHREPORTS, self._node, PathReport.from_dict)
        except ApiError as exc:
            if not exc.not_found:
                raise
            report = None
        if report is None:
            try:
                await self._client.create(PATHREPORTS, new_report_body(self._node))
            except ApiError as exc:
                if not exc.already_exists:
                    raise
        elif report.status.wireguard_public_key == self.public_key and report.well_formed:
            return  # already there (an agent restart with the same key writes nothing)
        await self._client.merge_patch(PATHREPORTS, self._node, key_patch(self.public_key), subresource="status")
        self.writes += 1

    async def run(self) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.publish()
            except (ApiError, OSError) as exc:
                log.warning("wireguard key not published yet", extra=kv(report=self._node, error=str(exc)))
                await asyncio.sleep(backoff.next())
                self._wake.set()
                continue
            backoff.reset()
            self._written_at = self._clock()
            log.info("wireguard public key published", extra=kv(report=self._node, public_key=self.public_key))
