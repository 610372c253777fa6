"""The ingress filter, pure parts: who the plan lets send into raven0/raven1 and with which inner sources, and
the iptables rules rendered from that (parse/restore round trip, convergence, removal)."""

from __future__ import annotations

import dataclasses

import pytest

from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.dataplane.ingress import (
    CHAINS,
    INNER_ACCEPT_CHAIN,
    INNER_CHAIN,
    INNER_POOL_CHAIN,
    INNER_TUNNEL_CHAIN,
    OUTER_CHAIN,
    OUTER_POOL_CHAIN,
    OUTER_SOURCE_CHAIN,
    OUTER_TUNNEL_CHAIN,
    IngressObserved,
    parse,
    render,
    restore_script,
)
from raven.dataplane.state import IngressFilter, IngressPeer
from tests.unit.plan_cluster import POOLS, cluster_json, nodes
from tests.unit.plan_cluster import parse as parse_gateways

CFG = PlanConfig()


def run(node: str, cfg: PlanConfig = CFG) -> PlanResult:
    return plan(parse_gateways(cluster_json()), nodes(), node, cfg)


def inner(node: str) -> str:
    return next(link.local for link in run(node).state.links if link.name == "raven1")  # the inner address


def subnets(pool: str) -> set[str]:
    return {s for _, _, subs in POOLS[pool] for s in subs}


def test_gateway_accepts_its_direct_peers_with_the_subnets_routed_via_each_relayed_pools_included() -> None:
    f = run("edge-a-1").state.ingress
    assert f is not None
    # edge-a and edge-b are both under NAT: edge-b is reached through gw-cloud.
    by_outer = {p.outer: set(p.sources) for p in f.tunnel}
    assert set(by_outer) == {inner("cloud-1"), inner("dc-1")}
    assert by_outer[inner("cloud-1")] == subnets("gw-cloud") | subnets("gw-edge-b") | {f"{inner('cloud-1')}/32"}
    assert by_outer[inner("dc-1")] == subnets("gw-dc") | {f"{inner('dc-1')}/32"}
    # Nobody may send this pool's own subnets in through the tunnel (spoofed sources).
    assert not any(set(p.sources) & subnets("gw-edge-a") for p in f.tunnel)
    # Marks tell the senders apart and fit the mask.
    marks = [p.mark for p in (*f.tunnel, *f.pool)]
    assert all(m & f.mark_mask == m and m for m in marks)
    assert len({p.mark for p in f.tunnel}) == len(f.tunnel) and len({p.mark for p in f.pool}) == len(f.pool)


def test_gateway_accepts_each_member_only_with_its_own_pod_cidrs() -> None:
    f = run("edge-a-1").state.ingress
    assert f is not None
    pool = {p.outer: p for p in f.pool}
    assert set(pool) == {"192.168.1.12", "192.168.1.13"}  # the members' node IPs, not the gateway's own
    own = {s for s in pool["192.168.1.12"].sources if not s.startswith("240.")}
    assert own == {"10.245.1.0/24"}
    assert [s for s in pool["192.168.1.12"].sources if s.startswith("240.")] == ["240.168.1.12/32"]


def test_member_accepts_only_its_gateway_which_vouches_for_the_inner_sources() -> None:
    f = run("edge-a-2").state.ingress
    assert f is not None
    assert f.tunnel == ()
    assert [p.outer for p in f.pool] == ["192.168.1.11"]
    # The gateway's own filter checked the sources against its peers; one rule keeps a failover cheap.
    assert f.pool[0].sources == ("0.0.0.0/0",)
    # As iptables-save prints it (no "-s 0.0.0.0/0"), or the filter would be rewritten on every pass.
    assert render(f)[INNER_POOL_CHAIN] == ("-m mark --mark 0x10000/0xfff0000 -g RAVEN-OVERLAY-A", "-j DROP")


def test_no_overlay_no_filter_and_failover_moves_the_member_filter() -> None:
    from tests.unit.plan_cluster import set_active

    objs = cluster_json()
    set_active(objs["gw-edge-a"], "edge-a-3")
    after = plan(parse_gateways(objs), nodes(), "edge-a-2", CFG).state.ingress
    assert after is not None and [p.outer for p in after.pool] == ["192.168.1.13"]
    assert plan([], nodes(), "edge-a-2", CFG).state.ingress is None


def test_senders_beyond_the_mark_capacity_are_refused_and_reported() -> None:
    cfg = dataclasses.replace(CFG, ingress_mark_mask=0x10000)  # one bit: one sender
    result = run("edge-a-1", cfg)
    f = result.state.ingress
    assert f is not None and len(f.tunnel) == 1 and len(f.pool) == 1
    assert sum("ingress filter: more than 1 senders" in p for p in result.problems) == 2


@pytest.mark.parametrize("mask", [0, 0x10100, 1 << 32])
def test_mark_mask_must_be_one_run_of_bits(mask: int) -> None:
    with pytest.raises(ValueError, match="ingress_mark_mask"):
        dataclasses.replace(CFG, ingress_mark_mask=mask)


FILTER = IngressFilter(
    tunnel_port=4473, pool_port=4472, tunnel_ifname="raven1", pool_ifname="raven0", ipsec_ifname="ipsec0",
    mark_mask=0x0FFF0000,
    tunnel=(IngressPeer("241.0.0.2", 0x10000, ("10.2.0.0/24", "241.0.0.2/32")),),
    pool=(IngressPeer("192.168.1.12", 0x10000, ("10.1.1.0/24",)), IngressPeer("192.168.1.13", 0x20000, ())),
)  # fmt: skip


def test_rendered_rules_mark_authenticated_senders_and_drop_the_rest() -> None:
    rules = render(FILTER)
    assert set(rules) == set(CHAINS)
    # The tunnel port: decrypted (libipsec's TUN, or a kernel SA's policy), else plaintext from the wire.
    assert rules[OUTER_TUNNEL_CHAIN] == (
        "-i ipsec0 -g RAVEN-INGRESS-S",
        "-m policy --dir in --pol ipsec --proto esp -g RAVEN-INGRESS-S",
        "-j DROP",
    )
    assert rules[OUTER_SOURCE_CHAIN] == (
        "-j MARK --set-xmark 0x0/0xfff0000",
        "-s 241.0.0.2/32 -j MARK --set-xmark 0x10000/0xfff0000",
        "-m mark --mark 0x0/0xfff0000 -j DROP",
    )
    # Plaintext from a node IP is never accepted on the tunnel port; on the pool port only from members.
    assert not any("192.168.1.12" in r for c in (OUTER_TUNNEL_CHAIN, OUTER_SOURCE_CHAIN) for r in rules[c])
    assert rules[OUTER_POOL_CHAIN][1] == "-s 192.168.1.12/32 -j MARK --set-xmark 0x10000/0xfff0000"
    assert rules[OUTER_POOL_CHAIN][-1] == "-m mark --mark 0x0/0xfff0000 -j DROP"
    assert rules[INNER_TUNNEL_CHAIN] == (
        "-s 10.2.0.0/24 -m mark --mark 0x10000/0xfff0000 -g RAVEN-OVERLAY-A",
        "-s 241.0.0.2/32 -m mark --mark 0x10000/0xfff0000 -g RAVEN-OVERLAY-A",
        "-j DROP",
    )
    # An accepted inner packet leaves with Raven's mark bits cleared.
    assert rules[INNER_ACCEPT_CHAIN] == ("-j MARK --set-xmark 0x0/0xfff0000",)
    assert render(None) == {}


def test_the_hot_path_crosses_few_rules_whatever_the_number_of_peers() -> None:
    """Every packet of the node crosses these chains: dispatch by goto (a packet for one port or device
    never tries the next), the decrypted test once per packet (not per peer), one rule per sender."""
    peers = tuple(IngressPeer(f"241.0.0.{i}", i << 16, (f"10.{i}.0.0/24",)) for i in range(1, 101))
    rules = render(dataclasses.replace(FILTER, tunnel=peers))
    assert all(" -g " in r for c in (OUTER_CHAIN, INNER_CHAIN) for r in rules[c])
    # A packet that is neither for the VXLAN ports nor from Raven's devices: two rules per chain.
    assert len(rules[OUTER_CHAIN]) == 2 and len(rules[INNER_CHAIN]) == 2
    # 100 peers: the policy match once, one marking rule per peer (not two), one accepting rule per source.
    assert sum("-m policy" in r for c in rules.values() for r in c) == 1
    assert len(rules[OUTER_TUNNEL_CHAIN]) == 3 and len(rules[OUTER_SOURCE_CHAIN]) == 100 + 2
    assert len(rules[INNER_TUNNEL_CHAIN]) == 100 + 1
    assert all(r.endswith(f"-g {INNER_ACCEPT_CHAIN}") for r in rules[INNER_TUNNEL_CHAIN][:-1])


def save_of(rules: dict[str, tuple[str, ...]], jumps: dict[str, int], foreign: bool = True) -> str:
    lines = ["*mangle", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":KUBE-X - [0:0]"]
    lines += [f":{c} - [0:0]" for c in rules]
    for builtin, chain in (("INPUT", "RAVEN-INGRESS"), ("PREROUTING", "RAVEN-OVERLAY")):
        lines += [f"-A {builtin} -j {chain}"] * jumps.get(builtin, 0)
    if foreign:
        lines += ["-A INPUT -p udp -m udp --dport 53 -j KUBE-X", "-A KUBE-X -j RETURN"]
    lines += [f"-A {c} {r}" for c, rs in rules.items() for r in rs]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def test_parse_reads_only_owned_chains_and_jumps_and_convergence_is_exact() -> None:
    want = render(FILTER)
    observed = parse(save_of(want, {"INPUT": 1, "PREROUTING": 1}))
    assert observed.chains == want and observed.converged(want) and observed.enforcing
    assert not parse(save_of(want, {"INPUT": 1})).converged(want)  # a jump missing
    assert not parse(save_of(want, {"INPUT": 2, "PREROUTING": 1})).converged(want)
    other = render(dataclasses.replace(FILTER, pool=FILTER.pool[:1]))
    assert not parse(save_of(other, {"INPUT": 1, "PREROUTING": 1})).converged(want)
    assert parse(save_of({}, {})).converged({})


def test_restore_script_replaces_owned_chains_adds_missing_jumps_and_removes_everything() -> None:
    want = render(FILTER)
    script = restore_script(want, IngressObserved({}, {"INPUT": 0, "PREROUTING": 2}))
    assert "-I INPUT 1 -j RAVEN-INGRESS" in script and script.count("-D PREROUTING -j RAVEN-OVERLAY") == 1
    assert all(f":{c} - [0:0]" in script for c in CHAINS) and "KUBE" not in script
    removal = restore_script({}, parse(save_of(want, {"INPUT": 1, "PREROUTING": 1})))
    assert removal.splitlines()[1:3] == ["-D INPUT -j RAVEN-INGRESS", "-D PREROUTING -j RAVEN-OVERLAY"]
    assert all(f"-X {c}" in removal for c in CHAINS) and not any(ln.startswith("-A ") for ln in removal.splitlines())


def test_a_filter_without_its_final_drop_is_not_enforcing() -> None:
    want = dict(render(FILTER))
    want[OUTER_TUNNEL_CHAIN] = want[OUTER_TUNNEL_CHAIN][:-1]
    assert not parse(save_of(want, {"INPUT": 1, "PREROUTING": 1})).enforcing


def test_adjacent_sources_become_one_rule() -> None:
    peer = IngressPeer("241.0.0.2", 0x10000, ("10.2.1.0/24", "10.2.0.0/24", "10.2.2.0/24", "241.0.0.2/32"))
    rules = render(dataclasses.replace(FILTER, tunnel=(peer,)))[INNER_TUNNEL_CHAIN]
    assert [r.split()[1] for r in rules[:-1]] == ["10.2.0.0/23", "10.2.2.0/24", "241.0.0.2/32"]


def test_collapsing_covers_exactly_the_same_addresses_as_ipaddress_does() -> None:
    import ipaddress
    import random

    from raven.dataplane.ingress import _collapsed

    rng = random.Random(7)
    for _ in range(300):
        cidrs = tuple(
            str(ipaddress.IPv4Network(f"{ipaddress.IPv4Address(rng.randrange(1 << 32))}/{plen}", strict=False))
            for plen in (rng.choice([0, 1, 8, 16, 22, 23, 24, 24, 25, 31, 32]) for _ in range(rng.randint(0, 12)))
        )
        want = [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in cidrs)]
        assert _collapsed(cidrs) == want, cidrs
    assert _collapsed(tuple(f"10.0.{i}.0/24" for i in range(256))) == ["10.0.0.0/16"]
