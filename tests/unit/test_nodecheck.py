"""The controller's node checks (raven.controller.nodecheck), one rule at a time, pure."""

from __future__ import annotations

from collections.abc import Collection

from raven.api.constants import LABEL_GATEWAY
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.controller.election import elect
from raven.controller.nodecheck import (
    REASON_ENDPOINT_NODE_CONFLICT,
    REASON_ENDPOINT_NODE_NOT_FOUND,
    REASON_ENDPOINT_NODE_NOT_MEMBER,
    REASON_INVALID_POD_CIDR,
    REASON_POD_CIDR_CONFLICT,
    REASON_POD_CIDR_RESERVED,
    Finding,
    NodeIndex,
    Ranges,
    endpoint_findings,
    is_incumbent,
)

RANGES = Ranges.of("240.0.0.0/8", "241.0.0.0/16", ["10.96.0.0/12"])
GATEWAYS = {"gw-a", "gw-b"}


def node(name: str, gw: str | None, cidrs: tuple[str, ...], ip: str | None = None, created: str = "") -> Node:
    return Node(name=name, internal_ip=ip, pod_cidrs=cidrs, ready=True,
                labels={LABEL_GATEWAY: gw} if gw else {}, created=created)


def never(_: Node) -> bool:
    return False


def rejected(nodes: list[Node], incumbent: Collection[str] = (), ranges: Ranges = RANGES) -> dict[str, str]:
    found = NodeIndex(nodes, GATEWAYS, ranges).rejections(lambda n: n.name in incumbent)
    return {name: f.reason for name, f in found.items()}


def test_good_nodes_pass() -> None:
    nodes = [node("a-1", "gw-a", ("10.10.0.0/24",), "198.18.1.11"), node("b-1", "gw-b", ("10.11.0.0/24",), "10.0.0.5"),
             node("d-1", "gw-b", ("10.12.0.0/24", "fd00:10:12::/64"), "10.0.0.6")]
    assert rejected(nodes) == {}


def test_a_pod_cidr_that_does_not_parse_is_rejected() -> None:
    found = NodeIndex([node("a-1", "gw-a", ("banana/99",))], GATEWAYS, RANGES).rejections(never)
    assert found == {"a-1": Finding("a-1", REASON_INVALID_POD_CIDR,
                                    "node a-1: pod CIDR 'banana/99' does not parse; node left out of the network")}


def test_a_pod_cidr_covering_any_nodes_address_is_rejected() -> None:
    # 198.18.0.0/16 covers the WAN, here another node's InternalIP (the API server's network, too).
    nodes = [node("a-1", "gw-a", ("10.10.0.0/24",), "198.18.1.11"), node("wan", "gw-b", ("198.18.0.0/16",), "10.0.0.9"),
             node("cp", None, (), "198.18.0.2")]
    found = NodeIndex(nodes, GATEWAYS, RANGES).rejections(never)
    assert list(found) == ["wan"]
    assert found["wan"].reason == REASON_POD_CIDR_RESERVED
    assert "covers 198.18.0.2, the InternalIP of node cp" in found["wan"].message


def test_a_pod_cidr_covering_its_own_address_is_rejected() -> None:
    found = NodeIndex([node("a-1", "gw-a", ("10.0.0.0/8",), "10.1.2.3")], GATEWAYS, RANGES).rejections(never)
    assert "covers 10.1.2.3, its own InternalIP" in found["a-1"].message


def test_the_cluster_ranges_and_special_ranges_are_reserved() -> None:
    for cidr, what in [("240.1.0.0/16", "--overlay-cidr 240.0.0.0/8"), ("241.0.0.0/24", "--tunnel-cidr"),
                       ("10.100.0.0/16", "--service-cidr 10.96.0.0/12"), ("169.254.169.0/24", "link-local"),
                       ("127.0.0.0/8", "loopback"), ("0.0.0.0/16", "'this network'"), ("224.0.0.0/24", "multicast"),
                       ("fe80::/64", "link-local")]:
        found = NodeIndex([node("a-1", "gw-a", (cidr,))], GATEWAYS, RANGES).rejections(never)
        assert found["a-1"].reason == REASON_POD_CIDR_RESERVED, cidr
        assert what in found["a-1"].message, (cidr, found["a-1"].message)


def test_the_api_servers_address_is_reserved_when_it_is_an_ip() -> None:
    n = [node("a-1", "gw-a", ("198.18.0.0/24",))]
    found = NodeIndex(n, GATEWAYS, Ranges.of("240.0.0.0/8", "241.0.0.0/16", (), "198.18.0.2")).rejections(never)
    assert "overlaps the API server's address 198.18.0.2" in found["a-1"].message
    assert rejected(n, ranges=Ranges.of("240.0.0.0/8", "241.0.0.0/16", (), "api.example")) == {}


def test_the_service_range_is_checked_only_when_configured() -> None:
    n = [node("a-1", "gw-a", ("10.100.0.0/16",))]
    assert rejected(n) == {"a-1": REASON_POD_CIDR_RESERVED}
    assert rejected(n, ranges=Ranges.of("240.0.0.0/8", "241.0.0.0/16")) == {}


def test_on_overlap_the_node_listed_with_the_subnet_keeps_it_whatever_its_age_or_name() -> None:
    old_pool = node("z-1", "gw-b", ("10.11.0.0/24",), created="2026-01-02T00:00:00Z")
    newcomer = node("a-1", "gw-a", ("10.11.0.0/16",), created="2026-01-01T00:00:00Z")  # older, smaller name
    assert rejected([old_pool, newcomer], incumbent={"z-1"}) == {"a-1": REASON_POD_CIDR_CONFLICT}
    found = NodeIndex([old_pool, newcomer], GATEWAYS, RANGES).rejections(lambda n: n.name == "z-1")
    assert found["a-1"].message == ("node a-1: pod CIDR 10.11.0.0/16 overlaps 10.11.0.0/24 of node z-1 (gateway gw-b), "
                                    "which had it first; node left out of the network")


def test_on_overlap_between_newcomers_the_older_node_then_the_smaller_name_wins() -> None:
    a = node("a-1", "gw-a", ("10.11.0.0/24",), created="2026-01-02T00:00:00Z")
    b = node("b-1", "gw-b", ("10.11.0.0/24",), created="2026-01-01T00:00:00Z")
    assert rejected([a, b]) == {"a-1": REASON_POD_CIDR_CONFLICT}
    same_age = node("b-1", "gw-b", ("10.11.0.0/24",), created="2026-01-02T00:00:00Z")
    assert rejected([a, same_age]) == {"b-1": REASON_POD_CIDR_CONFLICT}
    assert rejected([same_age, a]) == {"b-1": REASON_POD_CIDR_CONFLICT}  # input order does not matter


def test_a_node_pushed_out_frees_its_subnets_for_others() -> None:
    # x overlaps y and z; y and z do not overlap. y is incumbent, so x goes; z must stay.
    y = node("y", "gw-a", ("10.20.0.0/24",))
    z = node("z", "gw-b", ("10.20.1.0/24",))
    x = node("x", "gw-b", ("10.20.0.0/23",))
    assert rejected([x, y, z], incumbent={"y"}) == {"x": REASON_POD_CIDR_CONFLICT}


def test_a_rejected_node_claims_nothing() -> None:
    # The WAN-covering node is out for covering addresses; it must not push a new good node out as well.
    wan = node("aaa", "gw-a", ("198.18.0.0/16",), "10.0.0.9", created="2020-01-01T00:00:00Z")
    good = node("b-1", "gw-b", ("198.18.100.0/24",), "10.0.0.10", created="2026-01-01T00:00:00Z")
    cp = node("cp", None, (), "198.18.0.2")
    assert rejected([wan, good, cp]) == {"aaa": REASON_POD_CIDR_RESERVED}


def test_nodes_of_missing_gateways_do_not_compete() -> None:
    stray = node("s", "gw-gone", ("10.11.0.0/24",), created="2020-01-01T00:00:00Z")
    member = node("m", "gw-a", ("10.11.0.0/24",))
    assert rejected([stray, member]) == {}


def test_incumbency_compares_networks_and_needs_every_cidr() -> None:
    n = node("a", "gw-a", ("10.1.0.5/24", "fd00::/64"))
    assert is_incumbent(n, ["10.1.0.0/24", "fd00::/64"])
    assert not is_incumbent(n, ["10.1.0.0/24"])
    assert not is_incumbent(n, None)


def gw(name: str, *endpoints: str) -> Gateway:
    return Gateway.from_dict({"metadata": {"name": name},
                              "spec": {"endpoints": [{"nodeName": e, "type": "tunnel"} for e in endpoints]}})


def test_endpoint_findings_name_missing_foreign_and_shared_nodes() -> None:
    nodes = {"a-1": node("a-1", "gw-a", ()), "b-1": node("b-1", "gw-b", ()), "c-1": node("c-1", None, ())}
    g = gw("gw-a", "a-1", "ghost", "b-1", "c-1")
    listed_by = {"a-1": {"gw-a", "gw-b"}, "b-1": {"gw-a", "gw-b"}, "ghost": {"gw-a"}, "c-1": {"gw-a"}}
    found = endpoint_findings(g, nodes.get, listed_by)
    assert [(f.node, f.reason) for f in found] == [
        ("a-1", REASON_ENDPOINT_NODE_CONFLICT), ("b-1", REASON_ENDPOINT_NODE_CONFLICT),
        ("b-1", REASON_ENDPOINT_NODE_NOT_MEMBER), ("c-1", REASON_ENDPOINT_NODE_NOT_MEMBER),
        ("ghost", REASON_ENDPOINT_NODE_NOT_FOUND)]
    assert "also an endpoint of gateway(s) gw-b" in found[0].message
    assert "labelled for gateway gw-b" in found[2].message and "not labelled for any gateway" in found[3].message
    assert endpoint_findings(gw("gw-a", "a-1"), nodes.get, {"a-1": {"gw-a"}}) == []


def test_election_leaves_rejected_nodes_out_and_reports_them_in_nodes_valid() -> None:
    nodes = [node("a-1", "gw-a", ("banana/99",), "10.0.0.1"), node("a-2", "gw-a", ("10.10.1.0/24",), "10.0.0.2")]
    found = NodeIndex(nodes, GATEWAYS, RANGES).rejections(never)
    r = elect(gw("gw-a", "a-1", "a-2", "ghost"), nodes, "2026-01-01T00:00:00Z", rejected=found,
              endpoint_findings=[Finding("ghost", REASON_ENDPOINT_NODE_NOT_FOUND, "endpoint ghost: no such node")])
    assert [n.node_name for n in r.status.nodes or []] == ["a-2"]
    assert [e.node_name for e in r.status.active_endpoints or []] == ["a-2"]  # a-1 is not eligible either
    (cond,) = [c for c in r.status.conditions or [] if c.type == "NodesValid"]
    assert (cond.status, cond.reason) == ("False", REASON_INVALID_POD_CIDR)  # the first finding's reason
    assert "'banana/99' does not parse" in cond.message and "endpoint ghost: no such node" in cond.message
    assert [f.reason for f in r.findings] == [REASON_INVALID_POD_CIDR, REASON_ENDPOINT_NODE_NOT_FOUND]


def test_an_active_endpoint_that_is_rejected_fails_over_and_says_why() -> None:
    good = [node("a-1", "gw-a", ("10.10.0.0/24",), "10.0.0.1"), node("a-2", "gw-a", ("10.10.1.0/24",), "10.0.0.2")]
    first = elect(gw("gw-a", "a-1", "a-2"), good, "2026-01-01T00:00:00Z")
    bad = [node("a-1", "gw-a", ("0.0.0.0/0",), "10.0.0.1"), good[1]]
    found = NodeIndex(bad, GATEWAYS, RANGES).rejections(never)
    g = Gateway.from_dict({**gw("gw-a", "a-1", "a-2").to_dict(), "status": first.status.to_dict()})
    r = elect(g, bad, "2026-01-01T00:01:00Z", rejected=found)
    assert [e.node_name for e in r.status.active_endpoints or []] == ["a-2"]
    assert "pod CIDR 0.0.0.0/0 covers" in r.lost_reasons["a-1"]


def test_the_fast_ipv4_parse_reads_exactly_what_ipaddress_reads() -> None:
    # NodeIndex reads addresses and pod CIDRs with inet_pton (a tenth of the cost); whatever ipaddress accepts or
    # refuses, and the range it gives, must be the same, or a node would be checked against other numbers.
    import ipaddress

    from raven.controller import nodecheck

    cidrs = ["10.0.0.0/24", "10.0.0.5/24", " 10.0.0.0/24 ", "10.0.0.0", "10.0.0.0/32", "10.0.0.0/0", "10.0.0.0/33",
             "10.0.0.0/-1", "010.0.0.0/8", "10.0.0.0/024", "10.0.0.0/255.255.255.0", "10.0.0.0/ 24", "10.0.0.0 /24",
             "1.2.3", "1.2.3.4.5", "256.0.0.0/8", "fd00::/64", "::ffff:10.0.0.0/120", "banana/99", "", "/24",
             "10.0.0.0/", "10.0.0.0/\uff12\uff14", "255.255.255.255/32", "1.2.3.4/31", "10.0.0.1/8", "1.2.3.4/+8"]
    for text in cidrs:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
            want: tuple[int, int, int] | None = (net.version, int(net.network_address),
                                                 int(net.network_address) + net.num_addresses - 1)
        except ValueError:
            want = None
        assert nodecheck._cidr_span(text) == want, text
    for text in ["10.0.0.1", "010.0.0.1", "1.2.3", "fd00::1", "::ffff:1.2.3.4", "1.2.3.4 ", " 1.2.3.4", "256.1.1.1",
                 "0.0.0.0", "fe80::1%eth0", "1.2.3.4%x", "0x1.2.3.4", "1.2.3.4/32"]:
        try:
            ip = ipaddress.ip_address(text)
            want_ip: tuple[int, int] | None = (ip.version, int(ip))
        except ValueError:
            want_ip = None
        assert nodecheck._ip_value(text) == want_ip, text
