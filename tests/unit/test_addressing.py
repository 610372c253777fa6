"""Derived addresses: overlay addresses, MACs, per-Gateway inner addresses, MTUs."""

from __future__ import annotations

import ipaddress
import random

import pytest

from raven.agent.addressing import (
    allocate_inner_addresses,
    compute_mtus,
    ike_identity,
    mac_from_ipv4,
    overlay_address,
)


def test_overlay_address_keeps_the_low_24_bits_of_the_node_ip() -> None:
    assert str(overlay_address("192.168.1.12", "240.0.0.0/8")) == "240.168.1.12"
    assert str(overlay_address("10.0.0.11", "240.0.0.0/8")) == "240.0.0.11"
    assert str(overlay_address("10.20.30.40", "100.64.0.0/10")) == "100.84.30.40"
    with pytest.raises(ValueError):
        overlay_address("fd00::1", "240.0.0.0/8")


def test_mac_encodes_the_address_and_is_locally_administered_unicast() -> None:
    mac = mac_from_ipv4("240.168.1.12")
    assert mac == "0e:72:f0:a8:01:0c"
    first = int(mac.split(":")[0], 16)
    assert first & 0x01 == 0 and first & 0x02 == 2
    assert mac_from_ipv4("241.0.0.1") != mac_from_ipv4("241.0.0.2")


def test_ike_identity_never_looks_like_an_ip_address() -> None:
    ident = ike_identity("10.0.0.1")
    with pytest.raises(ValueError):
        ipaddress.ip_address(ident)
    assert ike_identity("gw-a") != ike_identity("gw-b")


def _gateways(n: int, start: int = 0) -> list[tuple[str, str | None]]:
    return [
        (f"gw-{i:05d}", f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z") for i in range(start, n)
    ]


def test_inner_addresses_are_unique_usable_hosts_of_the_cidr() -> None:
    addrs, unallocated = allocate_inner_addresses(_gateways(3000), "241.0.0.0/16")
    net = ipaddress.IPv4Network("241.0.0.0/16")
    assert unallocated == [] and len(addrs) == 3000
    assert len(set(addrs.values())) == 3000
    assert all(a in net and a not in (net.network_address, net.broadcast_address) for a in addrs.values())


def test_inner_addresses_do_not_depend_on_input_order() -> None:
    gws = _gateways(500)
    first, _ = allocate_inner_addresses(gws, "241.0.0.0/16")
    shuffled = list(gws)
    random.Random(3).shuffle(shuffled)
    assert allocate_inner_addresses(shuffled, "241.0.0.0/16")[0] == first


def test_new_gateways_never_move_existing_inner_addresses() -> None:
    # A tiny CIDR makes collisions certain: 14 usable addresses for 6, then 14, gateways.
    old, _ = allocate_inner_addresses(_gateways(6), "241.0.0.0/28")
    grown, unallocated = allocate_inner_addresses(_gateways(14), "241.0.0.0/28")
    assert unallocated == []
    assert {k: grown[k] for k in old} == old
    big_old, _ = allocate_inner_addresses(_gateways(2000), "241.0.0.0/16")
    big_new, _ = allocate_inner_addresses(_gateways(2500), "241.0.0.0/16")
    assert {k: big_new[k] for k in big_old} == big_old


def test_removing_a_gateway_moves_at_most_younger_gateways_that_had_collided() -> None:
    gws = _gateways(14)
    full, _ = allocate_inner_addresses(gws, "241.0.0.0/28")
    for removed in range(14):
        rest = [g for i, g in enumerate(gws) if i != removed]
        after, _ = allocate_inner_addresses(rest, "241.0.0.0/28")
        moved = {k for k in after if after[k] != full[k]}
        # Only gateways younger than the removed one can move.
        assert all(k > gws[removed][0] for k in moved), (removed, moved)
    # In a realistic CIDR, removing one of 300 gateways moves nobody.
    gws = _gateways(300)
    full, _ = allocate_inner_addresses(gws, "241.0.0.0/16")
    after, _ = allocate_inner_addresses(gws[:100] + gws[101:], "241.0.0.0/16")
    assert all(after[k] == full[k] for k in after)


def test_full_cidr_reports_the_youngest_gateways() -> None:
    addrs, unallocated = allocate_inner_addresses(_gateways(16), "241.0.0.0/28")
    assert len(addrs) == 14 and unallocated == ["gw-00014", "gw-00015"]


def test_gateway_without_timestamp_sorts_after_timestamped_ones() -> None:
    addrs, unallocated = allocate_inner_addresses([("late", None), *_gateways(14)], "241.0.0.0/28")
    assert unallocated == ["late"] and len(addrs) == 14


def test_mtus_subtract_every_encapsulation() -> None:
    m = compute_mtus(1500)
    assert m.intra_pool == 1450
    # aes256-sha256 in UDP: 1500 - IP 20 - UDP 8 - ESP 8 - IV 16 - ICV 16 = 1432 = 89 blocks of 16, - 2 trailer
    # bytes = 1422 carried; VXLAN inside takes 50 more.
    assert m.inter_gateway == 1372 and m.cross_pool_path == 1372


def test_the_worst_proposal_counts() -> None:
    # sha512 has a 32-byte ICV: 1500 - 20 - 8 - 8 - 16 - 32 = 1416 -> 1408 - 2 = 1406 carried.
    assert compute_mtus(1500, ("aes256-sha256", "aes256-sha512")).inter_gateway == 1406 - 50


def test_a_userspace_esp_device_caps_raven1() -> None:
    # kernel-libipsec's ipsec0 (MTU 1400) carries the VXLAN packets of raven1.
    m = compute_mtus(1500, ("aes256-sha256",), tunnel_device_mtu=1400)
    assert m.inter_gateway == 1350 and m.cross_pool_path == 1350


@pytest.mark.parametrize("underlay", range(1280, 1600, 7))
def test_a_full_size_tunnel_packet_fits_the_underlay(underlay: int) -> None:
    inner = compute_mtus(underlay, ("aes256-sha512",)).inter_gateway + 50  # VXLAN packet leaving raven1
    padded = -(-(inner + 2) // 16) * 16  # ESP payload + trailer, padded to the block size
    assert 20 + 8 + 8 + 16 + padded + 32 <= underlay


def test_a_smaller_path_towards_the_peers_caps_raven1_but_not_raven0() -> None:
    # 1300 - 20 - 8 - 8 - 16 - 16 = 1232 = 77 blocks of 16, - 2 = 1230 carried; raven0 stays on the underlay.
    m = compute_mtus(1500, ("aes256-sha256",), path_mtu=1300)
    assert (m.intra_pool, m.inter_gateway, m.cross_pool_path) == (1450, 1180, 1180)
    # A path MTU larger than the underlay changes nothing: the ESP packets still leave by the underlay.
    assert compute_mtus(1500, path_mtu=9000) == compute_mtus(1500)


@pytest.mark.parametrize("underlay", [1400, 1450, 1500, 9000])
@pytest.mark.parametrize("tun", [None, 1280, 1400, 1500])
@pytest.mark.parametrize("path", [None, 1300, 1500])
def test_no_device_on_the_encrypted_path_fragments(underlay: int, tun: int | None, path: int | None) -> None:
    m = compute_mtus(underlay, ("aes256-sha256",), tunnel_device_mtu=tun, path_mtu=path)
    vxlan_packet = m.inter_gateway + 50  # what leaves raven1, the plaintext of one ESP packet
    if tun is not None:
        assert vxlan_packet <= tun  # libipsec's TUN device takes it whole
    esp = 20 + 8 + 8 + 16 + -(-(vxlan_packet + 2) // 16) * 16 + 16  # IP, UDP, ESP hdr, IV, padded, ICV
    assert esp <= min(underlay, path or underlay)
    assert m.intra_pool + 50 <= underlay and m.cross_pool_path <= min(m.intra_pool, m.inter_gateway)
