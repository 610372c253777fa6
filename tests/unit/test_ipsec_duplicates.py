"""The duplicate IKE_SAs of a simultaneous initiation (raven.dataplane.ipsec.duplicates_to_end): which one both ends
keep, which end deletes the other, and when not to touch anything."""

from __future__ import annotations

import dataclasses

from raven.dataplane.ipsec import DUPLICATE_GRACE_S, IPsecSettings, TunnelState, conn_config, duplicates_to_end
from raven.dataplane.state import IPsecConnection

# Two IKE_SAs of one connection, as both ends see them: same SPIs; who initiated each is mirrored.
SA_A = ("1bf12991dba96744", "34d08b2b0d7a9ae7")  # initiated by end A (the smaller initiator SPI: kept)
SA_B = ("8f35994a7fd52343", "5c8049a1a920d3e4")  # initiated by end B


def sa(spis: tuple[str, str], *, ours: bool, uid: int, name: str = "raven-gw-b", ike: str = "ESTABLISHED",
       child: str | None = "INSTALLED", age: int = DUPLICATE_GRACE_S) -> TunnelState:
    return TunnelState(name=name, ike_state=ike, ike_unique_id=uid, remote_host="192.0.2.2", remote_port=4500,
                       child_state=child, child_unique_id=uid, bytes_in=0, bytes_out=0, packets_in=0, packets_out=0,
                       encap=True, initiator=ours, initiator_spi=spis[0], responder_spi=spis[1], established_s=age)


def test_both_ends_keep_the_smaller_initiator_spi_and_only_the_end_that_answered_the_other_deletes_it() -> None:
    # The kept SA is the smaller initiator SPI: SA_A. The duplicate SA_B was initiated by B and answered by A: B
    # sends on it (its last installed CHILD_SA), so A deletes it, and B does nothing.
    a = [sa(SA_A, ours=True, uid=1), sa(SA_B, ours=False, uid=2)]
    b = [sa(SA_A, ours=False, uid=2), sa(SA_B, ours=True, uid=1)]
    assert [(d.end.initiator_spi, d.end.ike_unique_id) for d in duplicates_to_end(a)] == [(SA_B[0], 2)]
    assert duplicates_to_end(b) == []
    # Mirrored (the kept SA initiated by the other end): the deleting end is mirrored too.
    a2 = [sa(SA_A, ours=False, uid=1), sa(SA_B, ours=True, uid=2)]
    b2 = [sa(SA_A, ours=True, uid=2), sa(SA_B, ours=False, uid=1)]
    assert duplicates_to_end(a2) == []
    assert [(d.end.initiator_spi, d.keep.initiator_spi) for d in duplicates_to_end(b2)] == [(SA_B[0], SA_A[0])]


def test_spis_compare_as_numbers_and_equal_initiator_spis_fall_back_to_the_responder_spi() -> None:
    low, high = ("0fffffffffffffff", "0000000000000001"), ("f000000000000000", "0000000000000002")
    got = duplicates_to_end([sa(high, ours=False, uid=1), sa(low, ours=True, uid=2)])
    assert [d.end.initiator_spi for d in got] == [high[0]]
    same = "aaaaaaaaaaaaaaaa"
    got = duplicates_to_end([sa((same, "02"), ours=False, uid=1), sa((same, "01"), ours=True, uid=2)])
    assert [d.end.responder_spi for d in got] == ["02"]


def test_nothing_is_deleted_before_both_are_up_for_the_grace_period() -> None:
    # Young: charon's own uniqueness check may still delete the older one (10 s after the newer came up).
    a = [sa(SA_A, ours=True, uid=1), sa(SA_B, ours=False, uid=2, age=DUPLICATE_GRACE_S - 1)]
    assert duplicates_to_end(a) == []
    assert duplicates_to_end(a, grace_s=0) != []
    # Not up (the kept one's CHILD_SA not installed, or an SA still connecting or being deleted): never the only
    # working SA torn down.
    for kept in (sa(SA_A, ours=True, uid=1, child=None), sa(SA_A, ours=True, uid=1, child="REKEYING"),
                 sa(SA_A, ours=True, uid=1, ike="CONNECTING"), sa(SA_A, ours=True, uid=1, ike="DELETING")):
        assert duplicates_to_end([kept, sa(SA_B, ours=False, uid=2)]) == []
    assert duplicates_to_end([sa(SA_B, ours=False, uid=2)]) == []


def test_per_connection_three_sas_and_states_without_spis() -> None:
    third = ("ffffffffffffffff", "1111111111111111")
    states = [
        sa(SA_A, ours=True, uid=1), sa(SA_B, ours=False, uid=2), sa(third, ours=True, uid=3),  # raven-gw-b
        sa(SA_B, ours=False, uid=4, name="raven-gw-c"),  # another connection, one SA: left alone
        # WireGuard's states (no IKE, no SPIs) are never duplicates.
        dataclasses.replace(sa(SA_A, ours=False, uid=0, name="raven-gw-d"), initiator_spi="", responder_spi=""),
        dataclasses.replace(sa(SA_B, ours=False, uid=0, name="raven-gw-d"), initiator_spi="", responder_spi=""),
    ]
    got = duplicates_to_end(states)
    # SA_A kept; SA_B (answered here) deleted here; the third (initiated here) is for the peer to delete.
    assert [(d.end.name, d.end.ike_unique_id, d.keep.ike_unique_id) for d in got] == [("raven-gw-b", 2, 1)]


def test_a_mutual_connection_is_not_re_established_by_charon_when_the_peer_deletes_it() -> None:
    conn = IPsecConnection(name="raven-gw-b", local_id="a", remote_id="b", local_addrs=("192.0.2.1",),
                           remote_addrs=("192.0.2.2",), remote_port=4500, local_ts="241.0.0.1/32",
                           remote_ts="241.0.0.2/32", initiator=True)
    child = conn_config(conn, IPsecSettings())["children"]["inner"]
    assert (child["close_action"], child["dpd_action"]) == ("start", "restart")
    child = conn_config(dataclasses.replace(conn, mutual=True), IPsecSettings())["children"]["inner"]
    assert (child["close_action"], child["dpd_action"]) == ("none", "restart")
