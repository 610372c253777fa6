"""A self-signed serving certificate (made with the openssl CLI, cached per process).

TLS is not optional: client-go (kubectl) only sends a bearer token over TLS, so a plain-HTTP server
could never prove authentication works with a real client.
"""

from __future__ import annotations

import ipaddress
import ssl
import subprocess
import tempfile
from pathlib import Path

_cache: dict[tuple[str, ...], tuple[str, str]] = {}
_dir: tempfile.TemporaryDirectory[str] | None = None


def _san(names: tuple[str, ...]) -> str:
    out = []
    for n in names:
        try:
            ipaddress.ip_address(n)
            out.append(f"IP:{n}")
        except ValueError:
            out.append(f"DNS:{n}")
    return ",".join(out)


def certificate(hosts: list[str]) -> tuple[str, str]:
    """(cert_path, key_path) for a certificate valid for `hosts` plus localhost/127.0.0.1."""
    global _dir
    names = tuple(sorted({"127.0.0.1", "localhost", *[h for h in hosts if h and h not in ("0.0.0.0", "::")]}))
    if names in _cache:
        return _cache[names]
    if _dir is None:
        _dir = tempfile.TemporaryDirectory(prefix="raven-apiserver-tls-")
    base = Path(_dir.name) / f"c{len(_cache)}"
    cert, key = f"{base}.crt", f"{base}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "3650", "-subj", "/CN=raven-test-apiserver",
         "-addext", f"subjectAltName={_san(names)}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
         "-addext", "extendedKeyUsage=serverAuth"],
        check=True, capture_output=True)
    _cache[names] = (cert, key)
    return cert, key


def server_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx
