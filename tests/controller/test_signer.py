"""The IPsec signer: its checks (pure `review`), and the whole path agent identity -> CSR -> controller -> certificate
through the test API server, whose CSR spec.username/extra come from the requester's token as in a real cluster."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from e2e.apiserver import ApiServer
from raven.agent.identity import NodeIdentity
from raven.api.csr import EXTRA_NODE_NAME, CertificateSigningRequest, request_body
from raven.controller.signer import review
from raven.dataplane.ipsec import Credentials
from raven.kube.client import CSRS, NODES, SECRETS, KubeClient, new_api_client
from raven.kube.typed import TypedClient
from raven.pki import CSR_USAGES, SIGNER_NAME, load_certificate, new_private_key, node_csr, split_pem_chain
from tests.controller.conftest import RunningController, eventually, node_body

AGENT = "system:serviceaccount:raven-system:raven-agent"


def csr(node_in_request: str = "node-a", bound: list[str] | None = None, username: str = AGENT,
        signer: str = SIGNER_NAME, usages: tuple[str, ...] = CSR_USAGES, request: bytes | None = None
        ) -> CertificateSigningRequest:
    return CertificateSigningRequest(
        name="raven-ipsec-x", signer_name=signer,
        request_pem=request if request is not None else node_csr(new_private_key(), node_in_request),
        usages=usages, username=username, groups=("system:serviceaccounts",),
        extra={EXTRA_NODE_NAME: tuple(["node-a"] if bound is None else bound)},
    )


def exists(name: str) -> bool:
    return name in ("node-a", "node-b")


def test_a_node_bound_agent_request_for_itself_is_approved() -> None:
    d = review(csr(), AGENT, exists)
    assert (d.approve, d.node) == (True, "node-a")


@pytest.mark.parametrize(("request_", "reason"), [
    (csr(node_in_request="node-b"), "WrongNodeName"),  # node-a's token asks for node-b's certificate
    (csr(signer="kubernetes.io/kube-apiserver-client"), "WrongSigner"),
    (csr(username="system:serviceaccount:default:builder"), "NotAnAgent"),  # a CSR from a non-agent
    (csr(username="kubernetes-admin", bound=[]), "NotAnAgent"),
    (csr(bound=[]), "NoNodeBinding"),  # an agent token without a node binding (e.g. a legacy token)
    (csr(bound=["node-a", "node-b"]), "NoNodeBinding"),
    (csr(usages=("digital signature", "client auth")), "BadUsages"),
    (csr(node_in_request="node-c", bound=["node-c"]), "UnknownNode"),
    (csr(request=b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"), "BadRequest"),
])
def test_the_signer_denies(request_: CertificateSigningRequest, reason: str) -> None:
    d = review(request_, AGENT, exists)
    assert not d.approve and d.reason == reason, d


def _csr_with(builder: x509.CertificateSigningRequestBuilder) -> bytes:
    from cryptography.hazmat.primitives import serialization
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_a_request_asking_for_sans_or_more_subject_is_denied() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-a")])
    with_san = _csr_with(x509.CertificateSigningRequestBuilder().subject_name(name).add_extension(
        x509.SubjectAlternativeName([x509.DNSName("raven-node-node-b")]), critical=False))
    assert review(csr(request=with_san), AGENT, exists).reason == "BadRequest"
    more = _csr_with(x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "node-a"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])))
    assert review(csr(request=more), AGENT, exists).reason == "WrongNodeName"


# --- through the API server -------------------------------------------------------------------------------


def node_kubeconfig(apiserver: ApiServer, node: str, tmp_path: Path, sa: str = "raven-system:raven-agent") -> str:
    path = tmp_path / f"kubeconfig-{node}"
    path.write_text(yaml.safe_dump(apiserver.kubeconfig_dict(apiserver.add_node_token(node, sa))))
    return str(path)


async def csr_obj(kube: KubeClient, name: str) -> dict[str, Any]:
    return await kube.get(CSRS, name)


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c.get("reason", "") for c in (obj.get("status") or {}).get("conditions") or []}


async def test_an_agent_gets_a_certificate_for_its_node_and_nothing_else(
    apiserver: ApiServer, kube: KubeClient, start: Callable[..., Awaitable[RunningController]], tmp_path: Path
) -> None:
    for n in ("node-a", "node-b"):
        await kube.create(NODES, node_body(n, None))
    ctrl = await start()
    a_client = KubeClient(await new_api_client(node_kubeconfig(apiserver, "node-a", tmp_path)))
    got: list[tuple[Credentials, list[str]]] = []
    try:
        identity = NodeIdentity("node-a", str(tmp_path / "ipsec-a"), TypedClient(a_client),
                                lambda c, r: got.append((c, r)))
        await identity.renew()
        creds = got[-1][0]
        cert = load_certificate(creds.cert_pem)
        assert cert.subject.rfc4514_string() == "CN=node-a"
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["raven-node-node-a"]
        # The key stayed on the node: 0600 file, never in the API.
        key_file = tmp_path / "ipsec-a" / "key.pem"
        assert key_file.stat().st_mode & 0o777 == 0o600 and (tmp_path / "ipsec-a").stat().st_mode & 0o777 == 0o700
        stored = await kube.list(CSRS)
        assert all(creds.key_pem not in base64.b64decode(o["spec"]["request"]) for o in stored["items"])
        # The API server recorded who asked; the signer wrote Approved, then the certificate and the CA.
        obj = stored["items"][0]
        assert obj["spec"]["username"] == AGENT and obj["spec"]["extra"][EXTRA_NODE_NAME] == ["node-a"]
        assert conditions(obj) == {"Approved": "RavenAgentNode"}
        chain = split_pem_chain(base64.b64decode(obj["status"]["certificate"]))
        ca_secret = await kube.get(SECRETS, "raven-ipsec-ca", "kube-system")
        assert chain[-1] == base64.b64decode(ca_secret["data"]["tls.crt"]) == creds.ca_pem

        # node-a's token asking for node-b's certificate: denied.
        evil = request_body("", SIGNER_NAME, node_csr(new_private_key(), "node-b"), CSR_USAGES, {})
        evil["metadata"] = {"name": "evil-node-b"}
        await a_client.create(CSRS, evil)
        denied = await eventually(lambda: csr_obj(kube, "evil-node-b"), lambda o: bool(conditions(o)),
                                  what="the signer's decision")
        assert conditions(denied) == {"Denied": "WrongNodeName"} and not denied["status"].get("certificate")
        # The admin (not an agent) asking for node-a's certificate: denied.
        admin = request_body("", SIGNER_NAME, node_csr(new_private_key(), "node-a"), CSR_USAGES, {})
        admin["metadata"] = {"name": "admin-node-a"}
        await kube.create(CSRS, admin)
        # Another signer's request is never touched.
        other = request_body("", "example.com/other", node_csr(new_private_key(), "node-a"), CSR_USAGES, {})
        other["metadata"] = {"name": "other-signer"}
        await a_client.create(CSRS, other)
        denied = await eventually(lambda: csr_obj(kube, "admin-node-a"), lambda o: bool(conditions(o)),
                                  what="the signer's decision")
        assert conditions(denied) == {"Denied": "NotAnAgent"}
        # Processed in order: the later request was decided, the other signer's is still untouched.
        await a_client.create(CSRS, {**evil, "metadata": {"name": "evil-2"}})
        await eventually(lambda: csr_obj(kube, "evil-2"), lambda o: bool(conditions(o)), what="decision")
        assert not conditions(await csr_obj(kube, "other-signer"))
        assert ctrl.controller.signer.issued == 1 and ctrl.controller.signer.denied == 3

        # Renewal: a new key and certificate; the previous key is handed over for unloading.
        await identity.renew()
        new, retired = got[-1]
        assert new.key_id != creds.key_id and retired == [creds.key_id]
        # An agent restart reads the current certificate from disk and retires the key before it.
        again: list[tuple[Credentials, list[str]]] = []
        restarted = NodeIdentity("node-a", str(tmp_path / "ipsec-a"), TypedClient(a_client),
                                 lambda c, r: again.append((c, r)))
        restarted._from_disk()
        assert again == [(new, [creds.key_id])]
    finally:
        await a_client.close()


async def test_a_short_lifetime_is_renewed_before_it_expires(
    apiserver: ApiServer, kube: KubeClient, start: Callable[..., Awaitable[RunningController]], tmp_path: Path
) -> None:
    import asyncio

    await kube.create(NODES, node_body("node-a", None))
    ctrl = await start()
    ctrl.controller.signer.lifetime_s = 6.0
    client = KubeClient(await new_api_client(node_kubeconfig(apiserver, "node-a", tmp_path)))
    got: list[tuple[float, Credentials]] = []
    identity = NodeIdentity("node-a", str(tmp_path / "ipsec"), TypedClient(client),
                            lambda c, r: got.append((time.time(), c)))
    task = asyncio.create_task(identity.run())
    try:
        await eventually(lambda: len(got), lambda n: n >= 3, within=30, what="three certificates")
        # Each was taken into use before the previous one expired.
        for (_, prev), (used_at, _cur) in itertools.pairwise(got):
            assert used_at < load_certificate(prev.cert_pem).not_valid_after_utc.timestamp()
        assert identity.check().ok
        assert ctrl.controller.signer.issued == len(got)  # each request signed once, no retry
    finally:
        task.cancel()
        await client.close()
