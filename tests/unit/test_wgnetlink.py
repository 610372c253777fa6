"""The kernel WireGuard's generic-netlink messages (raven.dataplane.wgnetlink) against pyroute2's WireGuard
classes, an independent encoder/decoder of include/uapi/linux/wireguard.h (dev-only dependency)."""

from __future__ import annotations

import base64
import socket
import struct
from typing import Any

from pyroute2.netlink.generic.wireguard import AsyncWireGuard, wgmsg

from raven.dataplane.wgnetlink import (
    GENL_ID_CTRL,
    WG_CMD_GET_DEVICE,
    WG_CMD_SET_DEVICE,
    encode_get_device,
    encode_get_family,
    encode_set_device,
    family_id,
    parse_device,
)
from raven.dataplane.wireguard import DeviceInfo, PeerInfo, set_lines

FAMILY = 27  # whatever id the kernel gave "wireguard"


def b64(byte: int) -> bytes:
    return base64.b64encode(bytes([byte]) * 32)


def decoded(msg_type: int, flags: int, body: bytes) -> Any:
    """Our message as pyroute2 decodes it (with a netlink header in front)."""
    m = wgmsg(struct.pack("=IHHII", 16 + len(body), msg_type, flags, 1, 0) + body)
    m.decode()
    return m


def test_set_device_decodes_as_pyroute2_reads_it() -> None:
    from raven.dataplane.wireguard import WgPeer

    want = {"11" * 32: WgPeer("raven-gw-b", "11" * 32, "22" * 32, "192.0.2.2:4500", 25,
                               frozenset({"241.0.0.2/32", "241.0.0.9/32"}))}
    current = DeviceInfo("", 0, {"44" * 32: PeerInfo("44" * 32)})
    lines = set_lines(current, "aa" * 32, 4500, want, {})
    m = encode_set_device(FAMILY, "raven-wg0", lines)
    d = decoded(m.msg_type, m.flags, m.body)
    assert (d["cmd"], d["version"]) == (WG_CMD_SET_DEVICE, 1)
    assert d.get_attr("WGDEVICE_A_IFNAME") == "raven-wg0"
    assert d.get_attr("WGDEVICE_A_LISTEN_PORT") == 4500
    assert base64.b64decode(d.get_attr("WGDEVICE_A_PRIVATE_KEY")) == bytes([0xAA]) * 32
    removed, added = d.get_attr("WGDEVICE_A_PEERS")
    assert base64.b64decode(removed.get_attr("WGPEER_A_PUBLIC_KEY")) == bytes([0x44]) * 32
    assert removed.get_attr("WGPEER_A_FLAGS") == 1  # WGPEER_F_REMOVE_ME
    assert base64.b64decode(added.get_attr("WGPEER_A_PUBLIC_KEY")) == bytes([0x11]) * 32
    assert base64.b64decode(added.get_attr("WGPEER_A_PRESHARED_KEY")) == bytes([0x22]) * 32
    assert added.get_attr("WGPEER_A_FLAGS") == 2  # WGPEER_F_REPLACE_ALLOWEDIPS
    ep = added.get_attr("WGPEER_A_ENDPOINT")
    assert (ep["family"], ep["addr"], ep["port"]) == (socket.AF_INET, "192.0.2.2", 4500)
    assert added.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") == 25
    assert sorted(ip["addr"] for ip in added.get_attr("WGPEER_A_ALLOWEDIPS")) == ["241.0.0.2/32", "241.0.0.9/32"]


def test_set_device_carries_what_pyroute2_would_send_for_the_same_peer() -> None:
    # pyroute2's own request for the same change (AsyncWireGuard.set's peer encoding, no socket involved).
    ref = wgmsg()
    ref["cmd"], ref["version"] = WG_CMD_SET_DEVICE, 1
    ref["attrs"].append(["WGDEVICE_A_IFNAME", "raven-wg0"])
    helper = object.__new__(AsyncWireGuard)
    helper._wg_set_peer(ref, {"public_key": b64(0x11).decode(), "preshared_key": b64(0x22).decode(),
                              "endpoint_addr": "192.0.2.2", "endpoint_port": 4500, "persistent_keepalive": 25,
                              "replace_allowed_ips": True, "allowed_ips": ["241.0.0.2/32"]})
    ref["header"]["type"] = FAMILY
    ref.encode()
    theirs = decoded(FAMILY, 0, bytes(ref.data[16:]))
    ours_msg = encode_set_device(FAMILY, "raven-wg0", [
        f"public_key={'11' * 32}", f"preshared_key={'22' * 32}", "endpoint=192.0.2.2:4500",
        "persistent_keepalive_interval=25", "replace_allowed_ips=true", "allowed_ip=241.0.0.2/32"])
    ours = decoded(ours_msg.msg_type, ours_msg.flags, ours_msg.body)

    def peer_view(m: Any) -> dict[str, object]:
        (p,) = m.get_attr("WGDEVICE_A_PEERS")
        ep = p.get_attr("WGPEER_A_ENDPOINT")
        return {"pub": p.get_attr("WGPEER_A_PUBLIC_KEY"), "psk": p.get_attr("WGPEER_A_PRESHARED_KEY"),
                "flags": p.get_attr("WGPEER_A_FLAGS"), "endpoint": (ep["addr"], ep["port"]),
                "keepalive": p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"),
                "ips": [ip["addr"] for ip in p.get_attr("WGPEER_A_ALLOWEDIPS")]}

    assert peer_view(ours) == peer_view(theirs)
    assert ours.get_attr("WGDEVICE_A_IFNAME") == theirs.get_attr("WGDEVICE_A_IFNAME")


def _answer(peers: list[dict[str, Any]], device: bool = True) -> bytes:
    m = wgmsg()
    m["cmd"], m["version"] = WG_CMD_GET_DEVICE, 1
    attrs: list[list[Any]] = [["WGDEVICE_A_IFNAME", "raven-wg0"]]
    if device:
        attrs += [["WGDEVICE_A_PRIVATE_KEY", b64(0xAA)], ["WGDEVICE_A_LISTEN_PORT", 4500]]
    attrs.append(["WGDEVICE_A_PEERS", peers])
    m["attrs"] = attrs
    m["header"]["type"] = FAMILY
    m.encode()
    return bytes(m.data[16:])


def _ip(cidr: str) -> dict[str, Any]:
    addr, mask = cidr.split("/")
    return {"attrs": [["WGALLOWEDIP_A_FAMILY", socket.AF_INET],
                      ["WGALLOWEDIP_A_IPADDR", socket.inet_aton(addr)], ["WGALLOWEDIP_A_CIDR_MASK", int(mask)]]}


def test_get_device_answer_parses_to_the_uapi_view() -> None:
    peer = {"attrs": [["WGPEER_A_PUBLIC_KEY", b64(0x11)], ["WGPEER_A_PRESHARED_KEY", b64(0x22)],
                      ["WGPEER_A_ENDPOINT", {"addr": "198.51.100.7", "port": 61000}],
                      ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
                      ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 5}],
                      ["WGPEER_A_RX_BYTES", 20], ["WGPEER_A_TX_BYTES", 10],
                      ["WGPEER_A_ALLOWEDIPS", [_ip("241.0.0.2/32")]]]}
    info = parse_device([_answer([peer])])
    assert info == DeviceInfo("aa" * 32, 4500, {"11" * 32: PeerInfo(
        "11" * 32, "22" * 32, "198.51.100.7:61000", 25, frozenset({"241.0.0.2/32"}), 1700000000, 20, 10)})


def test_a_peer_split_over_two_answers_is_merged() -> None:
    first = {"attrs": [["WGPEER_A_PUBLIC_KEY", b64(0x11)], ["WGPEER_A_ALLOWEDIPS", [_ip("241.0.0.2/32")]]]}
    rest = {"attrs": [["WGPEER_A_PUBLIC_KEY", b64(0x11)], ["WGPEER_A_ALLOWEDIPS", [_ip("10.9.0.0/16")]]]}
    info = parse_device([_answer([first]), _answer([rest], device=False)])
    assert info.private_key == "aa" * 32
    assert info.peers["11" * 32].allowed_ips == frozenset({"241.0.0.2/32", "10.9.0.0/16"})


def test_family_lookup_and_dump_request() -> None:
    m = encode_get_family()
    assert m.msg_type == GENL_ID_CTRL and m.body[0] == 3  # CTRL_CMD_GETFAMILY
    assert b"wireguard\0" in m.body
    answer = struct.pack("=BBH", 1, 2, 0) + struct.pack("=HHH2x", 6, 1, FAMILY)  # CTRL_ATTR_FAMILY_ID (u16)
    assert family_id(answer) == FAMILY
    dump = encode_get_device(FAMILY, "raven-wg0")
    d = decoded(dump.msg_type, dump.flags, dump.body)
    assert d["cmd"] == WG_CMD_GET_DEVICE and d.get_attr("WGDEVICE_A_IFNAME") == "raven-wg0"
    assert dump.flags & 0x300 == 0x300  # NLM_F_DUMP


def test_a_thousand_peers_are_split_into_messages_that_each_fit_a_nested_attribute() -> None:
    # A nested attribute's length is 16 bits: 1,000 peers (~150 bytes each) in one WGDEVICE_A_PEERS would wrap it.
    from raven.dataplane.wgnetlink import encode_set_messages
    from raven.dataplane.wireguard import WgPeer

    want = {f"{i:064x}": WgPeer(f"raven-gw-{i}", f"{i:064x}", "22" * 32, f"192.0.{i // 250}.{i % 250 + 1}:4500",
                                25, frozenset({f"241.0.{i // 250}.{i % 250 + 1}/32"})) for i in range(1, 1001)}
    lines = set_lines(DeviceInfo("", 0, {}), "aa" * 32, 4500, want, {})
    msgs = encode_set_messages(FAMILY, "raven-wg0", lines)
    assert len(msgs) > 1
    seen: list[str] = []
    for i, m in enumerate(msgs):
        assert len(m.body) < 0xFFFF
        d = decoded(m.msg_type, m.flags, m.body)
        assert d.get_attr("WGDEVICE_A_IFNAME") == "raven-wg0"
        # The device's own attributes once, in the first message.
        assert (d.get_attr("WGDEVICE_A_LISTEN_PORT") is not None) == (i == 0)
        for peer in d.get_attr("WGDEVICE_A_PEERS"):
            seen.append(base64.b64decode(peer.get_attr("WGPEER_A_PUBLIC_KEY")).hex())
            (ip,) = peer.get_attr("WGPEER_A_ALLOWEDIPS")
            assert ip.get_attr("WGALLOWEDIP_A_CIDR_MASK") == 32
    assert seen == sorted(want)  # every peer once, in order
    assert encode_set_messages(FAMILY, "raven-wg0", []) == []
