"""The IPsec signer: approves and signs the agents' CertificateSigningRequests for `raven.openyurt.io/ipsec`.

Only the leader writes. For each request of our signer that is not decided yet, `review` checks:

- the requester is the agent's service account (`spec.username`, filled by the API server from the
  creator's token; default `system:serviceaccount:raven-system:raven-agent`);
- the token is bound to a node (`spec.extra["authentication.kubernetes.io/node-name"]`, one value N:
  what a pod's bound service-account token carries in a real cluster);
- the request asks for N and nothing else (subject exactly CN=N, no requested extensions such as SANs),
  with the key usages agents ask for, and is signed by its key (proof of possession);
- Node N exists.

Then it sets Approved (`/approval`) and issues the certificate (`/status`: the node certificate followed by
the CA certificate); otherwise it sets Denied with the reason, which `kubectl get csr` shows, and logs a
warning. The certificate's content (CN=N, SAN `raven-node-N`, lifetime) is decided here, never copied
from the request. Requests of other signers are never touched (the informer only lists ours).

The CA (ECDSA P-256, 10 years) lives in the Secret `--ipsec-ca-secret` of the controller's namespace
(`tls.crt`, `tls.key`); the first leader that finds none creates it (a concurrent creation loses the race
with 409 and reads the winner's).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from raven.api.csr import EXTRA_NODE_NAME, CertificateSigningRequest, condition_body
from raven.api.gateway import JSON, JSONObject, is_object
from raven.api.node import Node
from raven.kube.client import CSRS, SECRETS, ApiError
from raven.kube.typed import TypedClient, TypedEvent, TypedInformer
from raven.kube.workqueue import WorkQueue
from raven.log import kv
from raven.pki import CSR_USAGES, SIGNER_NAME, CertificateAuthority, PkiError, check_ca, new_ca, parse_csr, sign_node

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    approve: bool
    node: str
    reason: str  # CamelCase condition reason
    message: str


def review(csr: CertificateSigningRequest, agent_username: str, node_exists: Callable[[str], bool]) -> Decision:
    """Whether `csr` may get a certificate, and for which node (pure: the unit tests call it directly)."""

    def deny(reason: str, message: str, node: str = "") -> Decision:
        return Decision(False, node, reason, message)

    if csr.signer_name != SIGNER_NAME:
        return deny("WrongSigner", f"signerName {csr.signer_name!r} is not {SIGNER_NAME}")
    if csr.username != agent_username:
        return deny("NotAnAgent", f"requester {csr.username!r} is not the Raven agent ({agent_username})")
    bound = csr.extra.get(EXTRA_NODE_NAME, ())
    if len(bound) != 1 or not bound[0]:
        return deny("NoNodeBinding", "the requester's token is not bound to a node "
                    f"(spec.extra[{EXTRA_NODE_NAME!r}] = {list(bound)})")
    node = bound[0]
    try:
        parsed = parse_csr(csr.request_pem)
    except PkiError as exc:
        return deny("BadRequest", str(exc), node)
    if parsed.common_names != (node,) or parsed.other_subject:
        return deny("WrongNodeName", f"the request names {list(parsed.common_names)}, but the requester is node "
                    f"{node!r}: a node may only ask for its own certificate", node)
    if parsed.extensions:
        return deny("BadRequest", "the request asks for extensions (e.g. SANs); the signer decides them", node)
    if sorted(csr.usages) != sorted(CSR_USAGES):
        return deny("BadUsages", f"usages {list(csr.usages)} are not {list(CSR_USAGES)}", node)
    if not node_exists(node):
        return deny("UnknownNode", f"node {node!r} does not exist", node)
    return Decision(True, node, "RavenAgentNode", f"node {node} proved by its bound service-account token")


def ca_from_secret(obj: JSONObject) -> CertificateAuthority:
    data = obj.get("data")
    if not is_object(data):
        raise PkiError("the CA Secret has no data")
    crt, key = data.get("tls.crt"), data.get("tls.key")
    if not isinstance(crt, str) or not isinstance(key, str):
        raise PkiError("the CA Secret lacks tls.crt or tls.key")
    ca = CertificateAuthority(base64.b64decode(key), base64.b64decode(crt))
    check_ca(ca)
    return ca


def secret_body(name: str, ca: CertificateAuthority) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "raven-controller"}},
        "data": {"tls.crt": base64.b64encode(ca.cert_pem).decode(), "tls.key": base64.b64encode(ca.key_pem).decode()},
    }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Signer:
    def __init__(self, api: TypedClient, namespace: str, secret_name: str,
                 csrs: TypedInformer[CertificateSigningRequest], nodes: TypedInformer[Node],
                 may_write: Callable[[], bool], *, agent_username: str, lifetime_s: float) -> None:
        self.api = api
        self.namespace = namespace
        self.secret_name = secret_name
        self.csrs = csrs
        self.nodes = nodes
        self.may_write = may_write
        self.agent_username = agent_username
        self.lifetime_s = lifetime_s
        self.queue = WorkQueue()
        self._ca: CertificateAuthority | None = None
        # Requests (uid) this process decided: the informer may deliver our own approval before our certificate.
        self._done: set[str] = set()
        self.issued = 0
        self.denied = 0
        csrs.add_handler(self.on_csr)

    def on_csr(self, ev: TypedEvent[CertificateSigningRequest]) -> None:
        if ev.type == "DELETED":
            if ev.obj is not None:
                self._done.discard(ev.obj.uid)
        elif ev.obj is not None and not ev.obj.decided:
            self.queue.add(ev.name)

    def enqueue_all(self) -> None:
        for csr in self.csrs.values():
            if not csr.decided:
                self.queue.add(csr.name)

    async def ca(self) -> CertificateAuthority:
        """The cluster CA from its Secret, created by the first leader that finds none."""
        if self._ca is not None:
            return self._ca
        try:
            self._ca = await self.api.get(SECRETS, self.secret_name, ca_from_secret, self.namespace)
        except ApiError as exc:
            if not exc.not_found:
                raise
            ca = new_ca()
            try:
                await self.api.create(SECRETS, secret_body(self.secret_name, ca), self.namespace)
                log.info("ipsec CA created", extra=kv(secret=f"{self.namespace}/{self.secret_name}"))
                self._ca = ca
            except ApiError as exc2:
                if not exc2.already_exists:
                    raise
                self._ca = await self.api.get(SECRETS, self.secret_name, ca_from_secret, self.namespace)
        return self._ca

    async def run(self) -> None:
        """Sign queued requests until cancelled (runs only while leading). The CA is read (or created) first,
        retried with backoff: a failing API must not end the term's other work."""
        delay = 0.5
        while True:
            try:
                await self.ca()
                break
            except Exception as exc:  # the API failing or a broken Secret: said, and tried again
                log.warning("ipsec CA not available, retrying", extra=kv(
                    secret=f"{self.namespace}/{self.secret_name}", reason=str(exc), retry_s=delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.enqueue_all()
        while True:
            name = await self.queue.get()
            try:
                await self.handle(name)
                self.queue.forget(name)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                delay = self.queue.add_rate_limited(name)
                # A conflict: the request changed since the cache saw it (e.g. our own approval): read again.
                (log.debug if exc.conflict else log.warning)(
                    "csr signing failed, retrying", extra=kv(csr=name, reason=str(exc), retry_s=round(delay, 2)))
            except Exception as exc:
                delay = self.queue.add_rate_limited(name)
                log.warning("csr signing failed, retrying",
                            extra=kv(csr=name, reason=f"{type(exc).__name__}: {exc}", retry_s=round(delay, 2)))
            finally:
                self.queue.done(name)

    async def handle(self, name: str) -> None:
        csr = self.csrs.get(name)
        if csr is None or csr.decided or csr.uid in self._done or not self.may_write():
            return
        if not csr.approved:
            decision = review(csr, self.agent_username, lambda n: self.nodes.get(n) is not None)
            if not decision.approve:
                self.denied += 1
                log.warning("csr denied", extra=kv(csr=name, requester=csr.username, node=decision.node,
                                                   reason=decision.reason, message=decision.message))
                await self.api.merge_patch(CSRS, name, condition_body(csr, "Denied", decision.reason,
                                                                      decision.message, _now()),
                                           subresource="approval")
                self._done.add(csr.uid)
                return
            rv = await self.api.merge_patch(CSRS, name, condition_body(csr, "Approved", decision.reason,
                                                                       decision.message, _now()),
                                            subresource="approval")
            csr = replace(csr, approved=True, resource_version=rv)
        else:
            # Approved earlier (by us before a crash, or by an operator): the checks still decide.
            decision = review(csr, self.agent_username, lambda n: self.nodes.get(n) is not None)
            if not decision.approve:
                await self._fail(csr, decision.message)
                return
        ca = await self.ca()
        try:
            cert = sign_node(ca, csr.request_pem, decision.node, self.lifetime_s)
        except PkiError as exc:
            await self._fail(csr, str(exc))
            return
        chain = cert + ca.cert_pem
        await self.api.merge_patch(CSRS, name, {"metadata": {"resourceVersion": csr.resource_version},
                                                "status": {"certificate": base64.b64encode(chain).decode()}},
                                   subresource="status")
        self.issued += 1
        self._done.add(csr.uid)
        log.info("csr signed", extra=kv(csr=name, node=decision.node, lifetime_s=self.lifetime_s))

    async def _fail(self, csr: CertificateSigningRequest, message: str) -> None:
        self.denied += 1
        log.warning("csr failed", extra=kv(csr=csr.name, requester=csr.username, message=message))
        body = condition_body(csr, "Failed", "SignerRefused", message, _now())
        await self.api.merge_patch(CSRS, csr.name, body, subresource="status")
        self._done.add(csr.uid)
