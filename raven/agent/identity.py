"""This node's IPsec identity (--ipsec-auth=cert): a private key made here and a certificate from the cluster CA.

    identity = NodeIdentity(node_name, directory, api, on_change)
    await identity.run()   # the key and certificate on disk if still good, else a new one; then renewal
                           # at two thirds of the certificate's life, forever

The private key is generated on the node and written only to `<dir>/key.pem` (0600; the directory 0700):
it never goes to the API, to charon other than over its local socket, or to a log. The agent asks for a
certificate with a CertificateSigningRequest (signerName `raven.openyurt.io/ipsec`, subject CN=<node>,
named `raven-ipsec-<node>-<key id>` so a retry after a lost answer finds its own request); the controller
checks that the requester's token is bound to this node and signs (raven.controller.signer). The answer
(the certificate, then the CA) is verified here before use: signed by the CA, for our key, naming us.

Renewal happens before expiry: a new key and request at two thirds of the certificate's life, while the
old one keeps working; `on_change(credentials, retired_key_ids)` gives the driver the new key and
certificate (loaded before the old key is unloaded; established SAs are kept). A failed or denied
request is retried with backoff while the current certificate is still valid. `check()` is the readiness
check: not ready while there is no valid certificate.

Files: key.pem, cert.pem, ca.pem (current); next.key (a key whose request is pending: reused after a
restart so the same request is found); retired.key (the previous key, unloaded from charon after a
restart if it is still there).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from raven.api.csr import CertificateSigningRequest, request_body
from raven.dataplane.ipsec import Credentials
from raven.health import CheckResult
from raven.kube.client import CSRS, ApiError
from raven.kube.typed import TypedClient
from raven.log import kv
from raven.pki import (
    CSR_USAGES,
    SIGNER_NAME,
    NodeCertificate,
    PkiError,
    key_id,
    new_private_key,
    node_csr,
    split_pem_chain,
    verify_node_certificate,
)

log = logging.getLogger(__name__)

RENEW_FRACTION = 2 / 3
POLL_INITIAL_S = 0.2
POLL_MAX_S = 5.0
RETRY_MAX_S = 60.0


class CertificateDenied(RuntimeError):
    """The signer denied or failed our request (its reason is the message)."""


def csr_name(node_name: str, kid: str) -> str:
    return f"raven-ipsec-{node_name[:200]}-{kid[:16]}"


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with `mode` from the start (a key is never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def identity_key_ids(directory: str) -> list[str]:
    """The VICI ids of every key of ours in `directory` (what --cleanup unloads from charon)."""
    out: list[str] = []
    for name in ("key.pem", "next.key", "retired.key"):
        try:
            out.append(key_id((Path(directory) / name).read_bytes()))
        except (OSError, PkiError):
            continue
    return out


class NodeIdentity:
    def __init__(self, node_name: str, directory: str, api: TypedClient,
                 on_change: Callable[[Credentials, list[str]], None],
                 registry: CollectorRegistry | None = None) -> None:
        self.node_name = node_name
        self.dir = Path(directory)
        self.api = api
        self.on_change = on_change
        self.current: NodeCertificate | None = None
        self.credentials: Credentials | None = None
        self.renew_at = 0.0  # time.time()
        self.renewals = 0  # certificates obtained by this process
        self.last_error = ""
        reg = registry or CollectorRegistry()
        self._m_obtained = Counter("raven_agent_ipsec_certificates_obtained_total",
                                   "IPsec node certificates obtained from the signer (first and renewals).",
                                   registry=reg)
        self._m_expiry = Gauge("raven_agent_ipsec_certificate_expiry_timestamp_seconds",
                               "When the IPsec node certificate in use expires (Unix time).", registry=reg)
        self._m_failures = Counter("raven_agent_ipsec_certificate_request_failures_total",
                                   "Failed or denied IPsec certificate requests.", registry=reg)

    # --- files

    @property
    def key_file(self) -> Path:
        return self.dir / "key.pem"

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def _load_current(self) -> tuple[Credentials, NodeCertificate, float] | None:
        try:
            key = self.key_file.read_bytes()
            cert = (self.dir / "cert.pem").read_bytes()
            ca = (self.dir / "ca.pem").read_bytes()
            received = (self.dir / "cert.pem").stat().st_mtime
        except OSError:
            return None
        try:
            nc = verify_node_certificate(cert, ca, key, self.node_name)
        except PkiError as exc:
            log.warning("ipsec certificate on disk not usable, requesting a new one", extra=kv(reason=str(exc)))
            return None
        return Credentials(key, cert, ca, key_id(key)), nc, received

    def _retired_ids(self, current: str) -> list[str]:
        out: list[str] = []
        for name in ("retired.key",):
            try:
                kid = key_id((self.dir / name).read_bytes())
            except (OSError, PkiError):
                continue
            if kid != current:
                out.append(kid)
        return out

    # --- lifecycle

    def _from_disk(self) -> None:
        self._prepare_dir()
        loaded = self._load_current()
        if loaded is None or loaded[1].not_after.timestamp() <= time.time():
            return
        creds, nc, received = loaded
        log.info("ipsec certificate loaded from disk", extra=kv(serial=f"{nc.serial:x}",
                                                                not_after=nc.not_after.isoformat()))
        self._use(creds, nc, received, self._retired_ids(creds.key_id))

    async def run(self) -> None:
        """The certificate on disk if still valid, else a new one; then renewal before expiry, forever.

        A failed request is retried with backoff (while the current certificate, if any, is still valid)."""
        await asyncio.to_thread(self._from_disk)
        delay = 1.0
        while True:
            wait = self.renew_at - time.time() if self.current is not None else 0.0
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.renew()
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._m_failures.inc()
                log.warning("ipsec certificate request failed, retrying",
                            extra=kv(error=self.last_error, retry_s=delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def check(self) -> CheckResult:
        if self.current is None:
            return CheckResult(False, f"no IPsec certificate yet{': ' + self.last_error if self.last_error else ''}")
        if self.current.not_after.timestamp() <= time.time():
            return CheckResult(False, f"the IPsec certificate expired at {self.current.not_after.isoformat()}")
        return CheckResult(True)

    # --- renewal

    async def renew(self) -> None:
        """A new key (or the pending one), its request, the signed certificate; then switch to it."""
        await asyncio.to_thread(self._prepare_dir)
        next_key_file = self.dir / "next.key"
        try:
            key = await asyncio.to_thread(next_key_file.read_bytes)
            kid = key_id(key)
        except (OSError, PkiError):
            key = new_private_key()
            kid = key_id(key)
            await asyncio.to_thread(_write, next_key_file, key, 0o600)
        name = csr_name(self.node_name, kid)
        try:
            chain = await self._request(name, key)
        except CertificateDenied:
            next_key_file.unlink(missing_ok=True)  # the next attempt is a new key and a new request
            raise
        parts = split_pem_chain(chain)
        if len(parts) < 2:
            raise PkiError(f"csr {name}: the issued certificate has no CA certificate after it")
        nc = verify_node_certificate(parts[0], parts[-1], key, self.node_name)
        await asyncio.to_thread(self._commit, key, nc)
        previous = self.credentials
        if previous is not None and previous.ca_pem != nc.ca_pem:
            # Every peer must trust the new CA too, or this node's tunnels fail (README: CA rotation).
            log.warning("ipsec certificate issued by a different cluster CA than the previous one", extra=kv(csr=name))
        retired = [previous.key_id] if previous is not None and previous.key_id != kid else []
        self.renewals += 1
        self._m_obtained.inc()
        self.last_error = ""
        self._use(Credentials(key, nc.cert_pem, nc.ca_pem, kid), nc, time.time(), retired)
        log.info("ipsec certificate obtained", extra=kv(csr=name, serial=f"{nc.serial:x}",
                                                        not_after=nc.not_after.isoformat(), renewals=self.renewals))

    def _commit(self, key: bytes, nc: NodeCertificate) -> None:
        if self.key_file.exists():
            os.replace(self.key_file, self.dir / "retired.key")
        _write(self.dir / "ca.pem", nc.ca_pem, 0o644)
        _write(self.dir / "cert.pem", nc.cert_pem, 0o644)
        os.replace(self.dir / "next.key", self.key_file)

    def _use(self, creds: Credentials, nc: NodeCertificate, received: float, retired: list[str]) -> None:
        self.credentials, self.current = creds, nc
        self._m_expiry.set(nc.not_after.timestamp())
        start = min(max(received, nc.not_before.timestamp()), nc.not_after.timestamp())
        self.renew_at = start + (nc.not_after.timestamp() - start) * RENEW_FRACTION
        log.info("ipsec certificate in use", extra=kv(
            serial=f"{nc.serial:x}", renew_at=datetime.datetime.fromtimestamp(self.renew_at, datetime.UTC).isoformat()))
        self.on_change(creds, retired)

    async def _request(self, name: str, key: bytes) -> bytes:
        """Create the request (or find it after a lost answer) and wait for its certificate."""
        body = request_body("", SIGNER_NAME, node_csr(key, self.node_name), CSR_USAGES,
                            {"app.kubernetes.io/managed-by": "raven-agent"})
        body["metadata"] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "raven-agent"}}
        try:
            await self.api.create(CSRS, body)
            log.info("ipsec certificate requested", extra=kv(csr=name, signer=SIGNER_NAME))
        except ApiError as exc:
            if not exc.already_exists:
                raise
        poll = POLL_INITIAL_S
        while True:
            csr = await self.api.get(CSRS, name, CertificateSigningRequest.from_dict)
            if csr.denied or csr.failed:
                raise CertificateDenied(f"csr {name} was {'denied' if csr.denied else 'failed'} by the signer: "
                                        f"{csr.message}")
            if csr.certificate_pem:
                return csr.certificate_pem
            await asyncio.sleep(poll)
            poll = min(poll * 1.5, POLL_MAX_S)
