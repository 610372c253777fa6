"""`diff` is pure: the writes it asks for, without a kernel."""

from __future__ import annotations

import dataclasses

from raven.dataplane.diff import Changes, Observed, diff
from raven.dataplane.state import Address, FdbEntry, Neighbor, NodeNetwork, Route, Rule, VxlanLink

R0 = VxlanLink("raven0", 200, 4472, 1450, "02:f0:00:00:01:00", "192.168.1.1", "eth0")
ZERO = "00:00:00:00:00:00"


def state(**kw: object) -> NodeNetwork:
    base: dict[str, object] = {
        "links": frozenset({R0}),
        "addresses": frozenset({Address("raven0", "240.0.1.1/8")}),
        "routes": frozenset({Route("10.1.0.0/24", 9027, "raven0", "169.254.240.1", 1400)}),
        "rules": frozenset({Rule(9027, 9027)}),
        "neighbors": frozenset({Neighbor("raven0", "169.254.240.1", "02:f0:00:00:02:00")}),
        "fdb": frozenset({FdbEntry("raven0", "02:f0:00:00:02:00", "192.168.1.2")}),
    }
    base.update(kw)
    return NodeNetwork(**base)  # type: ignore[arg-type]


def test_equal_states_need_no_change() -> None:
    assert diff(state(), Observed.of(state())).empty


def test_everything_is_created_on_an_empty_node_and_removed_from_a_full_one() -> None:
    create = diff(state(), Observed.of(NodeNetwork()))
    assert create.link_create == (R0,) and len(create.route_create) == 1 and create.fdb_replace
    remove = diff(NodeNetwork(), Observed.of(state()))
    # Deleting the link flushes what lives on it: only the link and the rule need a write.
    assert remove.link_delete == ("raven0",) and remove.rule_delete == (Rule(9027, 9027),)
    assert not (remove.route_delete or remove.addr_delete or remove.neigh_delete or remove.fdb_delete)
    assert remove.count() == 2


def test_changed_route_attributes_are_one_replace() -> None:
    want = state(routes=frozenset({Route("10.1.0.0/24", 9027, "raven0", "169.254.240.1", 1300)}))
    c = diff(want, Observed.of(state()))
    assert c == Changes(route_replace=(Route("10.1.0.0/24", 9027, "raven0", "169.254.240.1", 1300),))


def test_a_new_vni_mac_or_checksum_flag_recreates_the_link_and_everything_on_it() -> None:
    for change in ({"vni": 300}, {"mac": "02:f0:00:00:09:00"}, {"local": "192.168.1.9"}, {"udp_csum": False}):
        link = dataclasses.replace(R0, **change)
        want = state(links=frozenset({link}))
        c = diff(want, Observed.of(state()))
        assert c.link_delete == ("raven0",) and c.link_create == (link,)
        assert c.addr_add and c.route_create and c.neigh_replace and c.fdb_replace
        assert not c.route_delete


def test_mtu_change_or_a_down_link_is_set_in_place() -> None:
    link = dataclasses.replace(R0, mtu=1400)
    assert diff(state(links=frozenset({link})), Observed.of(state())) == Changes(link_update=(link,))
    assert diff(state(), Observed.of(state(), links_down=frozenset({"raven0"}))) == Changes(link_update=(R0,))


def test_a_moved_unicast_fdb_entry_is_one_replace_and_flood_entries_are_appended() -> None:
    moved = state(fdb=frozenset({FdbEntry("raven0", "02:f0:00:00:02:00", "192.168.1.7")}))
    assert diff(moved, Observed.of(state())) == Changes(fdb_replace=tuple(moved.fdb))
    flood_have = frozenset({FdbEntry("raven0", ZERO, "192.168.1.2"), FdbEntry("raven0", ZERO, "192.168.1.3")})
    flood_want = frozenset({FdbEntry("raven0", ZERO, "192.168.1.3"), FdbEntry("raven0", ZERO, "192.168.1.4")})
    c = diff(state(fdb=flood_want), Observed.of(state(fdb=flood_have)))
    assert c == Changes(
        fdb_delete=(FdbEntry("raven0", ZERO, "192.168.1.2"),), fdb_append=(FdbEntry("raven0", ZERO, "192.168.1.4"),)
    )


def test_neighbour_failover_is_one_replace() -> None:
    want = state(neighbors=frozenset({Neighbor("raven0", "169.254.240.1", "02:f0:00:00:07:00")}))
    assert diff(want, Observed.of(state())) == Changes(
        neigh_replace=(Neighbor("raven0", "169.254.240.1", "02:f0:00:00:07:00"),)
    )


def test_mss_chain_is_rewritten_when_it_differs_or_holds_something_unexpected() -> None:
    want = state(mss_clamp_ifnames=frozenset({"raven0"}))
    assert diff(want, Observed.of(state())).mss == frozenset({"raven0"})
    assert diff(want, Observed.of(want)).mss is None
    assert diff(want, Observed.of(want, mss_unexpected=True)).mss == frozenset({"raven0"})
    assert diff(state(), Observed.of(want)).mss == frozenset()
