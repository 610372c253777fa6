"""MTUs of Raven's devices and routes, from the underlay MTU minus every encapsulation (pure).

The numbers (IPv4 underlay, bytes)::

    VXLAN            outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14           = 50
    ESP, tunnel mode outer IPv4 20 + [UDP 8 when NAT-T encapsulated] + ESP header 8 (SPI, seq)
                     + IV + payload + padding + 2 (pad length, next header) + ICV
                     where payload + padding + 2 is a multiple of the cipher's block size

Per ESP transform (RFC 4303/4868/4106/7634; strongSwan proposal keywords):

    aesNNN (CBC)       IV 16, block 16      sha1 / md5 / aesxcbc  ICV 12 (96-bit truncation)
    aesNNNctr          IV 8,  block 4       sha256                ICV 16 (sha256_128)
    3des               IV 8,  block 8       sha384                ICV 24
    aesNNNgcm16/12/8   IV 8,  block 4, ICV 16/12/8 (AEAD)   sha512  ICV 32
    chacha20poly1305   IV 8,  block 4, ICV 16 (AEAD)         sha256_96  ICV 12

So the largest inner packet is ``floor((M - 20 - 8 - 8 - IV - ICV) / block) * block - 2``. Example,
underlay 1500, aes256-sha256 with UDP encapsulation: floor(1432 / 16) * 16 - 2 = 1422; raven1 (VXLAN
inside it) gets 1422 - 50 = 1372; raven0 gets 1500 - 50 = 1450. When several proposals are configured
the peer may pick any of them, so the worst one counts; an unknown transform counts as IV 16, block
16, ICV 32 (no real one is worse).

kernel-libipsec (tests, ENVIRONMENT.md) reads the packets to encrypt from its TUN device `ipsec0`, whose MTU
(1400, fixed in strongSwan 5.9.8) also caps what raven1 may emit: the agent reads it before every plan
(`raven.dataplane.devices`; `--ipsec-device-mtu` overrides) and passes it as `tunnel_device_mtu`. A smaller
path MTU towards the peers caps the ESP packets: pass min(underlay, path) as the underlay of `raven1_mtu`.

Routes to remote subnets carry the path MTU, the smaller of raven0 and raven1 (a packet from a member
node crosses both); `raven.agent.addressing.compute_mtus` takes it, the plan applies it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

IPV4_HEADER: Final = 20
UDP_HEADER: Final = 8
VXLAN_HEADER: Final = 8
ETHERNET_HEADER: Final = 14
VXLAN_OVERHEAD: Final = IPV4_HEADER + UDP_HEADER + VXLAN_HEADER + ETHERNET_HEADER  # 50
ESP_HEADER: Final = 8
ESP_TRAILER: Final = 2
DEFAULT_ESP_PROPOSALS: Final = ("aes256-sha256",)
WIREGUARD_OVERHEAD: Final = IPV4_HEADER + UDP_HEADER + 16 + 16  # 60: header (type, index, counter) + tag


@dataclass(frozen=True)
class EspTransform:
    iv: int
    block: int
    icv: int


WORST: Final = EspTransform(iv=16, block=16, icv=32)

_INTEGRITY_ICV: Final = {
    "md5": 12,
    "sha1": 12,
    "sha": 12,
    "aesxcbc": 12,
    "sha256_96": 12,
    "sha256": 16,
    "sha384": 24,
    "sha512": 32,
}
_AES_CBC = re.compile(r"^aes(128|192|256)?$")
_AES_CTR = re.compile(r"^aes(128|192|256)ctr$")
_AES_GCM = re.compile(r"^aes(128|192|256)gcm(8|12|16|64|96|128)$")
_DH = re.compile(r"^(modp\d+|ecp\d+|curve\d+|x25519|x448|ecp\d+bp|noesn|esn)$")


def esp_transform(proposal: str) -> EspTransform:
    """The ESP overhead parameters of one strongSwan ESP proposal string (e.g. "aes256-sha256-modp2048")."""
    iv = block = icv = None
    aead = False
    for token in proposal.lower().split("-"):
        if _DH.match(token):
            continue
        if _AES_CBC.match(token):
            iv, block = 16, 16
        elif _AES_CTR.match(token):
            iv, block = 8, 4
        elif m := _AES_GCM.match(token):
            bits = int(m.group(2))
            iv, block, icv, aead = 8, 4, bits // 8 if bits > 16 else bits, True
        elif token in ("chacha20poly1305",):
            iv, block, icv, aead = 8, 4, 16, True
        elif token == "3des":
            iv, block = 8, 8
        elif token in _INTEGRITY_ICV and not aead:
            icv = _INTEGRITY_ICV[token]
        else:
            return WORST
    if iv is None or block is None or icv is None:
        return WORST
    return EspTransform(iv=iv, block=block, icv=icv)


def esp_payload_max(underlay_mtu: int, proposal: str = DEFAULT_ESP_PROPOSALS[0], udp_encap: bool = True) -> int:
    """The largest inner IP packet one ESP tunnel-mode packet carries within `underlay_mtu`."""
    t = esp_transform(proposal)
    room = underlay_mtu - IPV4_HEADER - (UDP_HEADER if udp_encap else 0) - ESP_HEADER - t.iv - t.icv
    return (room // t.block) * t.block - ESP_TRAILER


def raven0_mtu(underlay_mtu: int) -> int:
    """The intra-pool VXLAN device: the node's underlay minus VXLAN."""
    return underlay_mtu - VXLAN_OVERHEAD


def wireguard_device_mtu(underlay_mtu: int) -> int:
    """A WireGuard device over an IPv4 underlay: outer IPv4 20 + UDP 8 + the data message's header 16 (type,
    receiver index, counter) + its Poly1305 tag 16 = 60 bytes. The plaintext is padded to a multiple of 16, but
    never beyond the device's MTU, so a packet of exactly the device MTU leaves as underlay MTU bytes."""
    return underlay_mtu - WIREGUARD_OVERHEAD


def raven1_mtu(
    underlay_mtu: int,
    esp_proposals: Iterable[str] = DEFAULT_ESP_PROPOSALS,
    udp_encap: bool = True,
    tunnel_device_mtu: int | None = None,
) -> int:
    """The inter-gateway VXLAN device: VXLAN inside ESP (in UDP), worst case over the proposals."""
    proposals = list(esp_proposals) or list(DEFAULT_ESP_PROPOSALS)
    carried = min(esp_payload_max(underlay_mtu, p, udp_encap) for p in proposals)
    if tunnel_device_mtu is not None:
        carried = min(carried, tunnel_device_mtu)
    return carried - VXLAN_OVERHEAD
