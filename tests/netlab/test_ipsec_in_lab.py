"""Two namespaces, one charon each: an IKEv2 PSK tunnel with kernel-libipsec carries a ping.

Proves the lab can host the real data plane: the CHILD_SA protects inner /32 <-> inner /32 (as the
route-based design does), and the inner addresses come from the candidate ranges for Raven's inner
tunnel space (class E 241.0.0.0/16 and shared space 100.64.0.0/10).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from e2e.netlab import Charon, Lab, Netns

pytestmark = pytest.mark.root

PSK = "rvl-test-psk-0123456789"


def _load(charon: Charon, me: str, peer: str, inner_me: str, inner_peer: str, port: int) -> None:
    conn: dict[str, Any] = {
        "rvl-tun": {
            "version": 2,
            "remote_port": port,
            "local_addrs": [me],
            "remote_addrs": [peer],
            "proposals": ["aes256-sha256-modp2048"],
            "dpd_delay": "2s",
            "local": {"auth": "psk", "id": me},
            "remote": {"auth": "psk", "id": peer},
            "children": {
                "inner": {
                    "mode": "tunnel",
                    "local_ts": [f"{inner_me}/32"],
                    "remote_ts": [f"{inner_peer}/32"],
                    "esp_proposals": ["aes256-sha256"],
                    "start_action": "none",
                }
            },
        }
    }
    with charon.session() as s:
        s.load_conn(conn)
        s.load_shared({"type": "IKE", "data": PSK, "owners": [me, peer]})


def _child_sas(charon: Charon) -> list[dict[str, Any]]:
    children: list[dict[str, Any]] = []
    with charon.session() as s:
        for ike in s.list_sas():  # lazy generator: iterating sends the request
            for sa in ike.values():
                for child in sa.get("child-sas", {}).values():
                    children.append(child)
    return children


def _ping(ns: Netns, src: str, dst: str, count: int = 3) -> bool:
    return ns.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-I", src, dst],
                  check=False).returncode == 0


def _wait(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    "inner_a,inner_b,port,port_nat_t",
    [
        ("241.0.0.1", "241.0.0.2", 500, 4500),
        ("100.64.0.1", "100.64.0.2", 500, 4500),
        # Non-default IKE ports (charon.port / port_nat_t), the peer told via remote_port.
        ("241.0.0.1", "241.0.0.2", 4510, 4511),
    ],
    ids=["class-e-241", "shared-100.64", "custom-ports"],
)
def test_ikev2_psk_tunnel_with_libipsec_carries_ping_between_inner_addresses(
    lab: Lab, inner_a: str, inner_b: str, port: int, port_nat_t: int
) -> None:
    a, b = lab.netns_many(["ipa", "ipb"])
    lab.veth(a, "eth0", b, "eth0")
    a.ip_batch(["addr add 192.0.2.1/24 dev eth0", f"addr add {inner_a}/32 dev lo"])
    b.ip_batch(["addr add 192.0.2.2/24 dev eth0", f"addr add {inner_b}/32 dev lo"])
    # Without the tunnel the inner addresses are unroutable: the ping below is proof of the SA.
    assert not _ping(a, inner_a, inner_b, count=1)

    ca = a.start_charon(port=port, port_nat_t=port_nat_t)
    cb = b.start_charon(port=port, port_nat_t=port_nat_t)
    _load(ca, "192.0.2.1", "192.0.2.2", inner_a, inner_b, port)
    _load(cb, "192.0.2.2", "192.0.2.1", inner_b, inner_a, port)
    with ca.session() as s:
        replies = list(s.initiate({"ike": "rvl-tun", "child": "inner", "timeout": 10000}))
    assert replies is not None

    assert _wait(lambda: any(c.get("state") == b"INSTALLED" for c in _child_sas(ca))), ca.read_log()
    assert _ping(a, inner_a, inner_b), ca.read_log()[-3000:]

    child = next(c for c in _child_sas(ca) if c.get("state") == b"INSTALLED")
    assert child["local-ts"] == [f"{inner_a}/32".encode()]
    assert child["remote-ts"] == [f"{inner_b}/32".encode()]
    # ESP really carried the pings (userspace libipsec, UDP-encapsulated).
    assert int(child["bytes-out"]) > 0 and int(child["bytes-in"]) > 0
    assert child.get("encap") == b"yes"
    # The IKE SA runs on the configured NAT-T port (libipsec forces UDP encapsulation).
    with ca.session() as s:
        ike = next(iter(next(iter(s.list_sas())).values()))
    assert int(ike["local-port"]) == port_nat_t


def test_charon_restart_comes_back_on_same_vici_socket(lab: Lab) -> None:
    ns = lab.netns("chr")
    charon = ns.start_charon()
    first_pid = charon.process.pid
    charon.restart()
    assert charon.process.pid != first_pid
    with charon.session() as s:
        assert s.version()["daemon"] == b"charon"
    charon.kill()
    assert not charon.process.alive()
