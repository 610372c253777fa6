"""Hand-built VXLAN frames, as an attacker on the WAN (or a compromised node) would send them.

    python -m e2e.inject --to 198.18.1.11:4473 --vni 201 --dst-mac 0e:.. --src 10.11.0.2 --dst 10.10.0.2 \
        --dport 18099 --payload TOKEN [--bind 241.0.0.3] [--count 5]

sends `count` UDP datagrams to `--to` whose payload is a VXLAN header (VNI) and an Ethernet frame for
`--dst-mac` carrying an IPv4/UDP packet from `--src` (any address: that is the point) to `--dst:--dport`.
No scapy here: the frame is a few struct.pack calls.
"""

from __future__ import annotations

import argparse
import socket
import struct


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    dst_mac: str,
    src_ip: str,
    dst_ip: str,
    dport: int,
    payload: bytes,
    sport: int = 40000,
    src_mac: str = "02:00:5e:10:00:01",
) -> bytes:
    """Ethernet + IPv4 + UDP (checksum 0: none, allowed over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0x1234,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src_ip),
        socket.inet_aton(dst_ip),
    )
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    return eth + ip + udp


def vxlan(vni: int, frame: bytes) -> bytes:
    """RFC 7348 header: flags with the I bit, reserved, VNI, reserved."""
    return struct.pack("!II", 0x08000000, vni << 8) + frame


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--vni", type=int, required=True)
    ap.add_argument("--dst-mac", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--dport", type=int, required=True)
    ap.add_argument("--payload", required=True)
    ap.add_argument("--bind", default="")
    ap.add_argument("--count", type=int, default=5)
    a = ap.parse_args()
    host, _, port = a.to.rpartition(":")
    datagram = vxlan(a.vni, udp_frame(a.dst_mac, a.src, a.dst, a.dport, a.payload.encode()))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if a.bind:
            s.bind((a.bind, 0))
        for _ in range(a.count):
            s.sendto(datagram, (host, int(port)))


if __name__ == "__main__":
    main()
