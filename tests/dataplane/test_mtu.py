"""MTU arithmetic: worked examples from the RFC layouts (see raven/dataplane/mtu.py)."""

from __future__ import annotations

import pytest

from raven.dataplane.mtu import (
    WORST,
    EspTransform,
    esp_payload_max,
    esp_transform,
    raven0_mtu,
    raven1_mtu,
)


def test_raven0_loses_exactly_the_vxlan_header() -> None:
    assert raven0_mtu(1500) == 1450
    assert raven0_mtu(9000) == 8950


@pytest.mark.parametrize(
    "proposal,transform",
    [
        ("aes256-sha256", EspTransform(16, 16, 16)),
        ("aes128-sha1-modp2048", EspTransform(16, 16, 12)),
        ("aes256gcm16", EspTransform(8, 4, 16)),
        ("aes128gcm128-ecp256", EspTransform(8, 4, 16)),
        ("chacha20poly1305", EspTransform(8, 4, 16)),
        ("aes256ctr-sha512", EspTransform(8, 4, 32)),
        ("3des-md5", EspTransform(8, 8, 12)),
        ("serpent256-whirlpool", WORST),
        ("aes256", WORST),  # no integrity named: assume the worst rather than too little
    ],
)
def test_esp_transforms_are_read_from_proposal_strings(proposal: str, transform: EspTransform) -> None:
    assert esp_transform(proposal) == transform


def test_esp_payload_counts_udp_header_iv_icv_and_block_padding() -> None:
    # 1500 - 20 (IP) - 8 (UDP) - 8 (ESP) - 16 (IV) - 16 (ICV) = 1432 -> 1424 in 16-byte blocks -> minus 2 trailer.
    assert esp_payload_max(1500, "aes256-sha256") == 1422
    assert esp_payload_max(1500, "aes256-sha256", udp_encap=False) == 1438  # 1440 is already aligned
    # Stream-like AEAD pads to 4 bytes: 1500 - 20 - 8 - 8 - 8 - 16 = 1440 -> 1438.
    assert esp_payload_max(1500, "aes256gcm16") == 1438


def test_raven1_is_vxlan_inside_esp_and_takes_the_worst_proposal() -> None:
    assert raven1_mtu(1500) == 1372
    assert raven1_mtu(1500, ["aes256gcm16", "aes256-sha256"]) == 1372
    assert raven1_mtu(1500, ["aes256gcm16"]) == 1388
    # kernel-libipsec's TUN device (1400 by default) caps what raven1 can emit.
    assert raven1_mtu(1500, tunnel_device_mtu=1400) == 1350


def test_every_packet_that_fits_raven1_fits_the_underlay() -> None:
    for underlay in range(600, 1600, 7):
        for proposal in ("aes256-sha256", "aes128-sha1", "aes256gcm16", "3des-sha256"):
            inner = raven1_mtu(underlay, [proposal]) + 50  # the VXLAN packet ESP must carry
            t = esp_transform(proposal)
            padded = -(-(inner + 2) // t.block) * t.block
            assert 20 + 8 + 8 + t.iv + padded + t.icv <= underlay
            # and one more byte would not fit (the MTU is tight, not just safe)
            padded_more = -(-(inner + 3) // t.block) * t.block
            assert 20 + 8 + 8 + t.iv + padded_more + t.icv > underlay
