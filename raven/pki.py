"""The cluster's IPsec PKI: one CA the controller keeps, one certificate per node naming that node.

    ca = new_ca()                                   # CA (key + self-signed certificate), PEM
    key = new_private_key()                         # on the node; never leaves it
    csr = node_csr(key, "node-a")                   # PEM: subject CN=node-a, nothing else
    cert = sign_node(ca, csr, "node-a", lifetime_s=86400)  # after the signer's checks (controller.signer)
    verify_node_certificate(cert, ca.cert_pem, key, "node-a")   # what the agent checks before using it

The certificate carries the node name twice: subject CN=<node> (for people) and the SAN dNSName
`raven-node-<node>` (`raven.agent.addressing.node_ike_identity`), which is what a peer's `remote.id`
names: strongSwan matches an FQDN identity against the certificate's dNSName SANs. A node can only get a
certificate for itself (the signer's checks, raven.controller.signer), and a peer only accepts an IKE_SA
for Gateway G from the node that is G's active endpoint, so a member node cannot impersonate a gateway.

Keys are ECDSA P-256: small, fast to generate on the node, supported by charon's openssl plugin.
Everything here is pure (no I/O besides the clock in `sign_node`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from raven.agent.addressing import node_ike_identity

# The CSR signerName of Raven's IPsec node certificates.
SIGNER_NAME = "raven.openyurt.io/ipsec"
# The key usages an agent requests (certificates.k8s.io/v1 KeyUsage strings); the signer accepts exactly these.
CSR_USAGES = ("digital signature", "ipsec tunnel")
CA_COMMON_NAME = "raven-ipsec-ca"
# Issued certificates start this long before "now" so a peer whose clock is a little behind accepts them.
CLOCK_SKEW = datetime.timedelta(seconds=60)


class PkiError(ValueError):
    """A key, request or certificate that is malformed or does not match what it must."""


@dataclass(frozen=True)
class CertificateAuthority:
    key_pem: bytes
    cert_pem: bytes


def new_private_key() -> bytes:
    """A fresh ECDSA P-256 private key, PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the private key is not an ECDSA key")
    return key


def key_id(key_pem: bytes) -> str:
    """The key's id as charon's VICI reports it (`load-key`, `get-keys`): SHA-1 of the public key (hex)."""
    pub = _load_key(key_pem).public_key()
    return x509.SubjectKeyIdentifier.from_public_key(pub).digest.hex()


def new_ca(lifetime_days: int = 3650) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=lifetime_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    )


def check_ca(ca: CertificateAuthority) -> None:
    """Raises PkiError unless `ca` is a CA certificate with its matching key."""
    key = _load_key(ca.key_pem)
    cert = load_certificate(ca.cert_pem)
    if cert.public_key() != key.public_key():
        raise PkiError("the CA key does not match the CA certificate")


def node_csr(key_pem: bytes, node_name: str) -> bytes:
    """A PKCS#10 request (PEM) for `node_name`: subject CN=<node>, no extensions (the signer decides them)."""
    key = _load_key(key_pem)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class ParsedRequest:
    common_names: tuple[str, ...]
    other_subject: bool  # subject attributes besides one CN
    extensions: int  # requested extensions (SANs, ...): the signer accepts none
    public_key_pem: bytes


def parse_csr(csr_pem: bytes) -> ParsedRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise PkiError("the request's signature is invalid (no proof of the private key)")
    pub = csr.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise PkiError("the request's key is not an ECDSA key")
    cns = tuple(str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return ParsedRequest(
        common_names=cns,
        other_subject=len(list(csr.subject)) != len(cns),
        extensions=len(list(csr.extensions)),
        public_key_pem=pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


def sign_node(ca: CertificateAuthority, csr_pem: bytes, node_name: str, lifetime_s: float) -> bytes:
    """The node certificate (PEM) for the request's key: the content is decided here, not by the request."""
    ca_key = _load_key(ca.key_pem)
    ca_cert = load_certificate(ca.cert_pem)
    csr = x509.load_pem_x509_csr(csr_pem)
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(seconds=lifetime_s), ca_cert.not_valid_after_utc)
    pub = csr.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise PkiError("the request's key is not an ECDSA key")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.IPSEC_IKE]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_ike_identity(node_name))]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from None


def split_pem_chain(pem: bytes) -> list[bytes]:
    """The PEM CERTIFICATE blocks of a chain (status.certificate: the node's, then the CA's)."""
    marker = b"-----END CERTIFICATE-----"
    out: list[bytes] = []
    for part in pem.split(marker):
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(part[start:] + marker + b"\n")
    return out


@dataclass(frozen=True)
class NodeCertificate:
    cert_pem: bytes
    ca_pem: bytes
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int


def verify_node_certificate(cert_pem: bytes, ca_pem: bytes, key_pem: bytes, node_name: str) -> NodeCertificate:
    """Raises PkiError unless `cert_pem` is signed by `ca_pem`, for `key_pem`'s key, naming `node_name`."""
    cert = load_certificate(cert_pem)
    ca = load_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"the certificate is not issued by the cluster CA: {exc}") from None
    except Exception as exc:  # cryptography.exceptions.InvalidSignature
        raise PkiError(f"the certificate's signature does not verify: {exc!r}") from None
    if cert.public_key() != _load_key(key_pem).public_key():
        raise PkiError("the certificate is not for this node's private key")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PkiError("the certificate has no subjectAltName") from None
    names = sans.get_values_for_type(x509.DNSName)
    if names != [node_ike_identity(node_name)]:
        raise PkiError(f"the certificate names {names}, not {node_ike_identity(node_name)}")
    return NodeCertificate(cert_pem, ca_pem, cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
