"""The WireGuard driver's pure parts: keys, the per-pair preshared key, the UAPI text it reads and writes."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from raven.dataplane.state import IPsecConnection
from raven.dataplane.wireguard import (
    DeviceInfo,
    PeerInfo,
    b64_to_hex,
    desired_peers,
    load_or_create_private_key,
    pair_psk,
    parse_get,
    public_key,
    set_lines,
)

# RFC 7748 section 6.1: Alice's private key and public key (WireGuard keys are X25519 keys).
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
SECRET = "cluster-secret-0123456789abcdef"


def conn(peer: str = "gb", key: str = "", addrs: tuple[str, ...] = ("192.0.2.2",), port: int = 4500,
         inner: str = "241.0.0.2") -> IPsecConnection:
    return IPsecConnection(name=f"raven-{peer}", local_id="ga", remote_id=peer, local_addrs=("192.0.2.1",),
                           remote_addrs=addrs, remote_port=port, local_ts="241.0.0.1/32", remote_ts=f"{inner}/32",
                           initiator=True, local_port=4500, local_node="node-a", peer_node=f"node-{peer}",
                           peer_public_key=key)


def test_public_key_is_x25519_of_the_private_key() -> None:
    assert public_key(ALICE_PRIV) == base64.b64encode(ALICE_PUB).decode()


def test_key_file_is_created_once_0600_and_read_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "wg" / "private.key"
    caplog.set_level(logging.DEBUG)
    key = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_private_key(path) == key  # kept across restarts
    assert base64.b64decode(path.read_text()) == key
    secret_text = base64.b64encode(key).decode()
    assert all(secret_text not in r.getMessage() and secret_text not in str(r.__dict__) for r in caplog.records)


def test_key_file_readable_by_others_is_made_0600(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text(base64.b64encode(ALICE_PRIV).decode() + "\n")
    os.chmod(path, 0o644)
    assert load_or_create_private_key(path) == ALICE_PRIV
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_with_garbage_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(ValueError, match="no base64 32-byte key"):
        load_or_create_private_key(path)


def test_pair_psk_is_symmetric_and_depends_on_secret_and_pair() -> None:
    k = pair_psk(SECRET, "a", "b")
    assert len(k) == 32
    assert k == pair_psk(SECRET, "b", "a")
    assert k != pair_psk(SECRET + "x", "a", "b")
    assert k != pair_psk(SECRET, "a", "c")
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert pair_psk(SECRET, "ab", "c") != pair_psk(SECRET, "a", "bc")


def test_b64_to_hex_accepts_32_byte_keys_only() -> None:
    assert b64_to_hex(base64.b64encode(ALICE_PUB).decode()) == ALICE_PUB.hex()
    assert b64_to_hex("") is None
    assert b64_to_hex(base64.b64encode(b"short").decode()) is None
    assert b64_to_hex("!!!") is None


GET_ANSWER = """private_key=a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a8a868
listen_port=51820
public_key=1111111111111111111111111111111111111111111111111111111111111111
preshared_key=2222222222222222222222222222222222222222222222222222222222222222
protocol_version=1
endpoint=1.2.3.4:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=0
tx_bytes=10
rx_bytes=20
persistent_keepalive_interval=25
allowed_ip=10.0.0.1/32
public_key=3333333333333333333333333333333333333333333333333333333333333333
preshared_key=0000000000000000000000000000000000000000000000000000000000000000
protocol_version=1
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
allowed_ip=10.0.0.2/32
allowed_ip=10.9.0.0/16"""


def test_parse_get_reads_device_and_peers() -> None:
    # (A real answer of wireguard-go 0.0.20220316, two peers; the second has no endpoint yet.)
    info = parse_get(GET_ANSWER)
    assert info.private_key.startswith("a8a8") and info.listen_port == 51820
    p1 = info.peers["11" * 32]
    assert (p1.endpoint, p1.keepalive, p1.allowed_ips, p1.last_handshake, p1.rx_bytes, p1.tx_bytes) == (
        "1.2.3.4:51820", 25, frozenset({"10.0.0.1/32"}), 1700000000, 20, 10)
    p2 = info.peers["33" * 32]
    assert p2.endpoint is None and p2.allowed_ips == frozenset({"10.0.0.2/32", "10.9.0.0/16"})
    assert parse_get("listen_port=0").private_key == ""


def test_desired_peers_one_per_tunnel_with_a_published_key() -> None:
    kb = base64.b64encode(ALICE_PUB).decode()
    peers, problems = desired_peers([conn("gb", kb), conn("gc", "", inner="241.0.0.3")], SECRET)
    assert list(peers) == [ALICE_PUB.hex()]
    p = peers[ALICE_PUB.hex()]
    assert p.endpoint == "192.0.2.2:4500" and p.keepalive == 25 and p.allowed_ips == frozenset({"241.0.0.2/32"})
    assert p.preshared_key == pair_psk(SECRET, "node-a", "node-gb").hex()
    assert problems == ["raven-gc: node node-gc has published no valid WireGuard key yet"]
    # A peer we only answer (under NAT): no endpoint, no keepalive from us; its handshake tells where it is.
    peers, _ = desired_peers([conn("gb", kb, addrs=("%any",))], SECRET)
    assert peers[ALICE_PUB.hex()].endpoint is None and peers[ALICE_PUB.hex()].keepalive == 0


def test_set_lines_from_empty_device_then_nothing_when_equal() -> None:
    kb = base64.b64encode(ALICE_PUB).decode()
    desired, _ = desired_peers([conn("gb", kb)], SECRET)
    lines = set_lines(DeviceInfo(), "aa" * 32, 4500, desired, {})
    pub = ALICE_PUB.hex()
    psk = pair_psk(SECRET, "node-a", "node-gb").hex()
    assert lines == [f"private_key={'aa' * 32}", "listen_port=4500", f"public_key={pub}", f"preshared_key={psk}",
                     "endpoint=192.0.2.2:4500", "persistent_keepalive_interval=25", "replace_allowed_ips=true",
                     "allowed_ip=241.0.0.2/32"]
    now = DeviceInfo("aa" * 32, 4500, {pub: PeerInfo(pub, psk, "192.0.2.2:4500", 25, frozenset({"241.0.0.2/32"}))})
    assert set_lines(now, "aa" * 32, 4500, desired, {pub: "192.0.2.2:4500"}) == []


def test_set_lines_keeps_a_roamed_endpoint_but_follows_a_planned_change() -> None:
    kb = base64.b64encode(ALICE_PUB).decode()
    pub = ALICE_PUB.hex()
    psk = pair_psk(SECRET, "node-a", "node-gb").hex()
    roamed = DeviceInfo("aa" * 32, 4500, {pub: PeerInfo(pub, psk, "198.51.100.7:61000", 25,
                                                         frozenset({"241.0.0.2/32"}))})
    desired, _ = desired_peers([conn("gb", kb)], SECRET)
    # We set 192.0.2.2:4500 last time; the peer roamed (NAT rebinding): leave WireGuard's choice alone.
    assert set_lines(roamed, "aa" * 32, 4500, desired, {pub: "192.0.2.2:4500"}) == []
    # The plan moved the peer's address: written.
    desired, _ = desired_peers([conn("gb", kb, addrs=("192.0.2.9",))], SECRET)
    assert set_lines(roamed, "aa" * 32, 4500, desired, {pub: "192.0.2.2:4500"}) == [
        f"public_key={pub}", "endpoint=192.0.2.9:4500"]


def test_set_lines_removes_peers_not_planned_and_replaces_a_changed_key() -> None:
    old = "44" * 32
    current = DeviceInfo("aa" * 32, 4500, {old: PeerInfo(old, "55" * 32, "192.0.2.2:4500", 25,
                                                         frozenset({"241.0.0.2/32"}))})
    desired, _ = desired_peers([conn("gb", base64.b64encode(ALICE_PUB).decode())], SECRET)
    lines = set_lines(current, "aa" * 32, 4500, desired, {})
    # The old key goes first, so the inner /32 is free for the new peer.
    assert lines[:2] == [f"public_key={old}", "remove=true"]
    assert lines[2] == f"public_key={ALICE_PUB.hex()}"


async def test_uapi_reads_an_answer_larger_than_the_stream_default(tmp_path: Path) -> None:
    # 1,000 peers make a `get` answer of ~300 kB; asyncio's StreamReader stops at 64 KiB by default.
    import asyncio

    from raven.dataplane.wireguard import Uapi

    peer = GET_ANSWER[GET_ANSWER.index("public_key=1111"):GET_ANSWER.index("public_key=3333")]
    body = "listen_port=4500\n" + "".join(peer.replace("1111111111111111", f"{i:016x}", 1) for i in range(1000))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\n\n")
        writer.write((body + "errno=0\n\n").encode())
        await writer.drain()
        writer.close()

    path = tmp_path / "wg.sock"
    server = await asyncio.start_unix_server(serve, path=str(path))
    async with server:
        info = await Uapi(path).get()
    assert len(body) > 65536 and len(info.peers) == 1000 and info.listen_port == 4500


def test_an_unclamped_key_is_compared_in_the_clamped_form_wireguard_reports() -> None:
    from raven.dataplane.wireguard import WireGuardDriver, clamp

    raw = bytes([0xFF] * 32)
    assert clamp(raw) == bytes([0xF8] + [0xFF] * 30 + [0x7F])
    assert clamp(clamp(raw)) == clamp(raw)
    assert public_key(raw) == public_key(clamp(raw))  # the same key to X25519
    driver = WireGuardDriver(raw, SECRET)
    # What wireguard-go answers after `private_key=<raw>` is the clamped key: nothing left to write.
    assert set_lines(DeviceInfo(clamp(raw).hex(), 4500), driver._private_hex, 4500, {}, {}) == []


def test_readyz_names_the_data_plane_and_why() -> None:
    from raven.agent.app import wireguard_summary
    from raven.dataplane.wgkernel import KernelWireGuard
    from raven.dataplane.wireguard import WireGuardGo

    kernel = KernelWireGuard("raven-wg0")
    kernel.adopted, kernel.restarts = True, 1
    assert wireguard_summary(kernel, "raven-wg0 is a kernel WireGuard device already") == (
        "kernel WireGuard (adopted, recreated 1) for raven-wg0: raven-wg0 is a kernel WireGuard device already")
    go = WireGuardGo("raven-wg0")
    go.pid = 412
    why = "no kernel WireGuard (RTM_NEWLINK raven-wg0 type wireguard: Operation not supported)"
    assert wireguard_summary(go, why) == f"wireguard-go (pid 412, restarts 0) for raven-wg0: {why}"
