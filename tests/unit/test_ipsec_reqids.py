"""The IPsec driver's fixed reqids (raven.dataplane.ipsec.assign_reqids): one per connection, never shared."""

from __future__ import annotations

import hashlib

import pytest

import raven.dataplane.ipsec as ipsec
from raven.dataplane.ipsec import REQID_BASE, REQID_SPAN, IPsecSettings, assign_reqids, conn_config
from raven.dataplane.state import IPsecConnection


def test_distinct_in_range_and_independent_of_the_other_connections() -> None:
    names = [f"raven-gw-{i}" for i in range(500)]
    got = assign_reqids(names)
    assert len(set(got.values())) == len(names)
    assert all(REQID_BASE <= r < REQID_BASE + REQID_SPAN for r in got.values())
    # An agent restart, or a peer added or removed, gives every other connection the reqid it had (so nothing
    # else is reloaded).
    assert assign_reqids(reversed(names)) == got
    assert assign_reqids(names[:10]) == {n: got[n] for n in names[:10]}


def test_a_hash_collision_moves_the_later_name_to_the_next_free_reqid(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two names whose hashes collide in a small span get distinct, adjacent reqids.
    span = 4
    seen: dict[int, str] = {}
    pair: tuple[str, str] | None = None
    for i in range(100):
        name = f"raven-gw-{i}"
        slot = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % span
        if slot in seen:
            pair = (seen[slot], name)
            break
        seen[slot] = name
    assert pair is not None
    monkeypatch.setattr(ipsec, "REQID_SPAN", span)
    got = assign_reqids(pair)
    first, second = sorted(pair)
    assert got[first] != got[second]
    assert (got[second] - REQID_BASE) == ((got[first] - REQID_BASE) + 1) % span


def test_the_reqid_is_in_the_loaded_child_config() -> None:
    conn = IPsecConnection(name="raven-gw-b", local_id="a", remote_id="b", local_addrs=("192.0.2.1",),
                           remote_addrs=("192.0.2.2",), remote_port=4500, local_ts="241.0.0.1/32",
                           remote_ts="241.0.0.2/32", initiator=True)
    child = conn_config(conn, IPsecSettings(), reqid=REQID_BASE + 7)["children"]["inner"]
    assert child["reqid"] == REQID_BASE + 7
    assert "reqid" not in conn_config(conn, IPsecSettings())["children"]["inner"]
