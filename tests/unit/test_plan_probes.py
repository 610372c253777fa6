"""The plan says what each node probes: members their gateway's raven0 address from their own, and through it each
peer gateway's inner address (`via`); active gateways every directly connected peer's inner address from their own
inner address (the addresses the IPsec selectors protect, so the echo and its reply travel inside the SA); standby
candidates each peer's tunnel endpoint address over the underlay (`underlay`)."""

from __future__ import annotations

from raven.agent.plan import PlanConfig, plan
from raven.dataplane.state import SCOPE_SITE, ProbeSnat
from tests.unit.plan_cluster import cluster_json, nodes, parse, set_active

CFG = PlanConfig()


def _plan(node: str, objs: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    return plan(parse(objs or cluster_json()), nodes(), node, CFG)  # type: ignore[arg-type]


def test_a_member_probes_its_gateways_overlay_address_from_its_own() -> None:
    res = _plan("edge-a-2")
    (t,) = [t for t in res.probes if t.kind == "gateway"]
    assert (t.kind, t.gateway, t.node) == ("gateway", "gw-edge-a", "edge-a-1")
    own = {a.cidr.split("/")[0] for a in res.state.addresses if a.ifname == CFG.intra_pool_link}
    assert t.source in own
    gw_own = {a.cidr.split("/")[0] for a in _plan("edge-a-1").state.addresses if a.ifname == CFG.intra_pool_link}
    assert t.address in gw_own  # the gateway's kernel answers on raven0
    # raven0 floods nothing (no ARP): the member resolves the address to the gateway's raven0 MAC, whose FDB
    # entry names the gateway's node IP; the gateway has the same for the member (the reply's way back).
    gw_link = next(link for link in _plan("edge-a-1").state.links if link.name == CFG.intra_pool_link)
    (neigh,) = [n for n in res.state.neighbors if n.ip == t.address]
    assert neigh.ifname == CFG.intra_pool_link and neigh.mac == gw_link.mac
    assert any(f.mac == neigh.mac and f.dst == "192.168.1.11" for f in res.state.fdb)
    me_link = next(link for link in res.state.links if link.name == CFG.intra_pool_link)
    gw_state = _plan("edge-a-1").state
    (back,) = [n for n in gw_state.neighbors if n.ip == t.source]
    assert back.mac == me_link.mac and any(f.mac == back.mac and f.dst == "192.168.1.12" for f in gw_state.fdb)


def test_an_active_gateway_probes_each_direct_peer_inside_the_sa() -> None:
    res = _plan("edge-a-1")
    assert res.role == "gateway" and res.probes
    conns = {(c.local_ts, c.remote_ts) for c in res.state.ipsec}
    for t in res.probes:
        assert t.kind == "peer"
        assert (f"{t.source}/32", f"{t.address}/32") in conns
    assert len(res.probes) == len(conns)
    peers = {t.gateway for t in res.probes}
    assert "gw-edge-a" not in peers
    # The peer's probes of us are the mirror image: our inner address, from theirs.
    cloud_node = next(t.node for t in res.probes if t.gateway == "gw-cloud")
    back = [t for t in _plan(cloud_node).probes if t.gateway == "gw-edge-a"]
    assert len(back) == 1 and back[0].node == "edge-a-1"


def test_a_failover_of_the_peer_keeps_the_targets_key_and_names_the_new_node() -> None:
    objs = cluster_json()
    before = {t.key: t for t in _plan("cloud-1", objs).probes}
    assert [t.node for t in before.values() if t.gateway == "gw-edge-b"] == ["edge-b-1"]
    set_active(objs["gw-edge-b"], "edge-b-2")
    after = {t.key: t for t in _plan("cloud-1", objs).probes}
    assert before.keys() == after.keys()  # the inner address is per Gateway: the health history carries over
    assert [t.node for t in after.values() if t.gateway == "gw-edge-b"] == ["edge-b-2"]


def test_no_role_no_probes() -> None:
    assert _plan("no-such-node").probes == ()


def test_a_member_probes_through_its_gateway_each_peer_the_gateway_has_a_tunnel_to() -> None:
    member, gw = _plan("edge-a-2"), _plan("edge-a-1")
    # raven0 holds the overlay address (site scope) and the node source (global): probes leave from the former.
    own = next(a.cidr.split("/")[0] for a in member.state.addresses
               if a.ifname == CFG.intra_pool_link and a.scope == SCOPE_SITE)
    via = [t for t in member.probes if t.kind == "via"]
    sas = {c.remote_ts.removesuffix("/32"): c.local_ts.removesuffix("/32") for c in gw.state.ipsec}
    assert sorted(t.address for t in via) == sorted(sas)  # each direct peer's inner address, relayed ones not
    assert {t.gateway for t in via} == {t.gateway for t in gw.probes}
    for t in via:
        assert t.source == own
        # Routed over raven0 to the gateway (the virtual next hop), like the pod traffic to that peer ...
        (r,) = [r for r in member.state.routes if r.dst == f"{t.address}/32"]
        assert (r.table, r.ifname, r.gateway) == (CFG.table, CFG.intra_pool_link, CFG.virtual_next_hop)
    # ... where the gateway rewrites the echo's source to its inner address: the SA's selector, and an address
    # the peer routes back into the SA.
    (inner,) = set(sas.values())
    assert gw.state.probe_snat == ProbeSnat(CFG.overlay_cidr, CFG.tunnel_cidr, inner)
    assert member.state.probe_snat is None


def test_a_standby_candidate_probes_each_peers_ike_address_over_the_underlay() -> None:
    member, gw = _plan("edge-a-2"), _plan("edge-a-1")
    under = [t for t in member.probes if t.kind == "underlay"]
    # Where the gateway's IKE goes (the connections it initiates name the peer's address); a peer under NAT
    # (no address: it dials us) cannot be probed.
    ike = {c.name.removeprefix(CFG.vici_conn_prefix): c.remote_addrs[0] for c in gw.state.ipsec
           if c.remote_addrs != ("%any",)}
    assert ike and {t.gateway: t.address for t in under} == ike
    assert all(t.source == "192.168.1.12" for t in under)  # the candidate's node IP: its own uplink
    peer_nodes = {t.gateway: t.node for t in gw.probes}
    assert all(t.node == peer_nodes[t.gateway] for t in under)
    assert not [t for t in gw.probes if t.kind == "underlay"]  # the active gateway has its peer probes


def test_a_member_that_is_no_tunnel_candidate_has_no_underlay_probes() -> None:
    objs = cluster_json()
    eps = objs["gw-edge-a"]["spec"]["endpoints"]  # type: ignore[index]
    objs["gw-edge-a"]["spec"]["endpoints"] = [e for e in eps if e["nodeName"] != "edge-a-3"]  # type: ignore[index]
    kinds = {t.kind for t in _plan("edge-a-3", objs).probes}
    assert kinds == {"gateway", "via"}
    assert "underlay" in {t.kind for t in _plan("edge-a-2", objs).probes}
