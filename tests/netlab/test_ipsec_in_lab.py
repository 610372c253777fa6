"""Two namespaces, one charon each: an IKEv2 PSK tunnel with kernel-libipsec carries a ping.

Proves the lab can host the real data plane: the CHILD_SA protects inner /32 <-> inner /32 (as the
route-based design does), and the inner addresses come from the candidate ranges for Raven's inner
tunnel space (class E 241.0.0.0/16 and shared space 100.64.0.0/10).
"""

from __future__ import annotations

import pytest

from e2e.netlab import Lab, Netns
from tests.netlab.ipsec_helpers import child_sas, ike_sas, initiate, load_inner_tunnel, wait_for

pytestmark = pytest.mark.root


def _ping(ns: Netns, src: str, dst: str, count: int = 3) -> bool:
    return ns.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-I", src, dst],
                  check=False).returncode == 0


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
    load_inner_tunnel(ca, local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"], local_id="192.0.2.1",
                      remote_id="192.0.2.2", inner_local=inner_a, inner_remote=inner_b, port=port)
    load_inner_tunnel(cb, local_addrs=["192.0.2.2"], remote_addrs=["192.0.2.1"], local_id="192.0.2.2",
                      remote_id="192.0.2.1", inner_local=inner_b, inner_remote=inner_a, port=port)
    initiate(ca)

    assert wait_for(lambda: any(c.get("state") == b"INSTALLED" for c in child_sas(ca))), ca.read_log()
    assert _ping(a, inner_a, inner_b), ca.read_log()[-3000:]

    child = next(c for c in child_sas(ca) if c.get("state") == b"INSTALLED")
    assert child["local-ts"] == [f"{inner_a}/32".encode()]
    assert child["remote-ts"] == [f"{inner_b}/32".encode()]
    # ESP really carried the pings (userspace libipsec, UDP-encapsulated).
    assert int(child["bytes-out"]) > 0 and int(child["bytes-in"]) > 0
    assert child.get("encap") == b"yes"
    # The IKE SA runs on the configured NAT-T port (libipsec forces UDP encapsulation).
    assert int(ike_sas(ca)[0]["local-port"]) == port_nat_t


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
