"""The pure gateway election: candidates, eligibility, replicas, stickiness, failover, status shape."""

from __future__ import annotations

from typing import Any

from raven.api.constants import LABEL_GATEWAY
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.controller.election import elect

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def node(name: str, gw: str | None = "gw-a", ready: bool = True, ip: str | None = None,
         cidrs: tuple[str, ...] | None = None, deleting: bool = False) -> Node:
    n = int(name.rsplit("-", 1)[-1]) if name[-1].isdigit() else 9
    return Node(
        name=name,
        internal_ip=ip if ip is not None else f"10.0.0.{n}",
        pod_cidrs=cidrs if cidrs is not None else (f"10.244.{n}.0/24",),
        ready=ready,
        labels={LABEL_GATEWAY: gw} if gw else {},
        being_deleted=deleting,
    )


def gateway(endpoints: list[dict[str, Any]], status: dict[str, Any] | None = None, name: str = "gw-a",
            **spec: Any) -> Gateway:
    obj: dict[str, Any] = {"metadata": {"name": name}, "spec": {"endpoints": endpoints, **spec}}
    if status is not None:
        obj["status"] = status
    return Gateway.from_dict(obj)


def tunnel(name: str, **kw: Any) -> dict[str, Any]:
    return {"nodeName": name, "type": "tunnel", "port": 4500, "underNAT": False, **kw}


def proxy(name: str) -> dict[str, Any]:
    return {"nodeName": name, "type": "proxy", "port": 10262, "underNAT": False}


def active_names(result: Any, ep_type: str = "tunnel") -> list[str]:
    return [ep.node_name for ep in result.status.active_endpoints if ep.type == ep_type]


THREE = [tunnel("n-1"), tunnel("n-2"), tunnel("n-3")]


def test_first_eligible_candidate_in_spec_order_is_elected_and_missing_replicas_means_one() -> None:
    r = elect(gateway(THREE), [node("n-1"), node("n-2"), node("n-3")], NOW)
    assert active_names(r) == ["n-1"]
    assert [e.node_name for e in r.elected] == ["n-1"]
    assert r.lost == ()


def test_active_endpoint_copies_the_spec_endpoint() -> None:
    spec_ep = tunnel("n-2", publicIP="203.0.113.7", publicPort=4501, config={"k": "v"})
    r = elect(gateway([tunnel("n-1"), spec_ep]), [node("n-1", ready=False), node("n-2")], NOW)
    # As OpenYurt writes it: the spec endpoint, plus raven-cfg's switch in its config.
    assert [e.to_dict() for e in r.status.active_endpoints or []] == [
        {**spec_ep, "config": {"k": "v", "enable-l3-tunnel": "true"}}]


def test_nodes_not_labelled_for_the_gateway_are_not_candidates() -> None:
    r = elect(gateway(THREE), [node("n-1", gw="other"), node("n-2", gw=None), node("n-3")], NOW)
    assert active_names(r) == ["n-3"]
    assert [n.node_name for n in r.status.nodes or []] == ["n-3"]


def test_labelled_node_without_an_endpoint_is_listed_but_never_elected() -> None:
    r = elect(gateway([tunnel("n-2")]), [node("n-1"), node("n-2", ready=False)], NOW)
    assert active_names(r) == []
    assert [n.node_name for n in r.status.nodes or []] == ["n-1", "n-2"]


def test_not_ready_and_deleting_nodes_are_not_eligible() -> None:
    r = elect(gateway(THREE), [node("n-1", ready=False), node("n-2", deleting=True), node("n-3")], NOW)
    assert active_names(r) == ["n-3"]


def test_replicas_pick_that_many_proxy_endpoints_and_one_tunnel() -> None:
    eps = [*THREE, proxy("n-1"), proxy("n-2"), proxy("n-3")]
    gw = gateway(eps, tunnelConfig={"Replicas": 2}, proxyConfig={"Replicas": 2})
    r = elect(gw, [node("n-1"), node("n-2"), node("n-3")], NOW)
    # Only one active tunnel endpoint carries a pool's traffic: that one is listed, and the Valid condition says
    # why the second was not elected (OpenYurt's webhook would have rejected Replicas 2).
    assert active_names(r) == ["n-1"]
    assert active_names(r, "proxy") == ["n-1", "n-2"]
    (valid,) = [c for c in r.status.conditions or [] if c.type == "Valid"]
    assert (valid.status, valid.reason) == ("False", "ReplicasNotHonoured")
    assert "spec.tunnelConfig.Replicas is 2" in valid.message


def test_zero_proxy_replicas_by_default() -> None:
    r = elect(gateway([tunnel("n-1"), proxy("n-1")]), [node("n-1")], NOW)
    assert active_names(r, "proxy") == []


def test_eligible_active_endpoint_is_kept_even_when_an_earlier_candidate_recovers() -> None:
    first = elect(gateway(THREE), [node("n-1", ready=False), node("n-2"), node("n-3")], NOW)
    assert active_names(first) == ["n-2"]
    again = elect(gateway(THREE, status=first.status.to_dict()), [node("n-1"), node("n-2"), node("n-3")], LATER)
    assert active_names(again) == ["n-2"]
    assert again.elected == () and again.lost == ()
    assert again.status == first.status  # nothing changed: nothing to write (no flapping)


def test_lost_active_endpoint_fails_over_to_next_eligible_in_spec_order() -> None:
    first = elect(gateway(THREE), [node("n-1"), node("n-2"), node("n-3")], NOW)
    r = elect(gateway(THREE, status=first.status.to_dict()),
              [node("n-1", ready=False), node("n-2", ready=False), node("n-3")], LATER)
    assert active_names(r) == ["n-3"]
    assert [e.node_name for e in r.lost] == ["n-1"]
    assert [e.node_name for e in r.elected] == ["n-3"]
    assert r.lost_reasons == {"n-1": "node is not Ready"}


def test_failover_when_active_node_is_deleted_or_unlabelled() -> None:
    first = elect(gateway(THREE), [node("n-1"), node("n-2"), node("n-3")], NOW)
    gone = elect(gateway(THREE, status=first.status.to_dict()), [node("n-2"), node("n-3")], LATER)
    assert active_names(gone) == ["n-2"]
    unlabelled = elect(gateway(THREE, status=first.status.to_dict()),
                       [node("n-1", gw=None), node("n-2"), node("n-3")], LATER)
    assert active_names(unlabelled) == ["n-2"]
    assert unlabelled.lost_reasons["n-1"] == "node is gone or no longer labelled for this gateway"


PROXIES = [proxy("n-1"), proxy("n-2"), proxy("n-3"), proxy("n-4")]


def test_replacement_takes_the_lost_endpoints_slot() -> None:
    # Slots matter where several endpoints of one type are active: proxies (tunnels elect one, see above).
    gw = gateway(PROXIES, proxyConfig={"Replicas": 2})
    nodes = [node("n-1"), node("n-2"), node("n-3"), node("n-4")]
    first = elect(gw, nodes, NOW)
    assert active_names(first, "proxy") == ["n-1", "n-2"]
    gw2 = gateway(PROXIES, proxyConfig={"Replicas": 2}, status=first.status.to_dict())
    r = elect(gw2, [node("n-1", ready=False), node("n-2"), node("n-3"), node("n-4")], LATER)
    assert active_names(r, "proxy") == ["n-3", "n-2"]


def test_no_eligible_candidate_leaves_no_active_endpoint() -> None:
    first = elect(gateway(THREE), [node("n-1"), node("n-2"), node("n-3")], NOW)
    r = elect(gateway(THREE, status=first.status.to_dict()), [node("n-1", ready=False)], LATER)
    assert active_names(r) == []
    assert [e.node_name for e in r.lost] == ["n-1"]


def test_fewer_replicas_drops_the_extra_and_keeps_the_first() -> None:
    gw = gateway(PROXIES[:3], proxyConfig={"Replicas": 2})
    first = elect(gw, [node("n-1"), node("n-2"), node("n-3")], NOW)
    gw1 = gateway(PROXIES[:3], proxyConfig={"Replicas": 1}, status=first.status.to_dict())
    r = elect(gw1, [node("n-1"), node("n-2"), node("n-3")], LATER)
    assert active_names(r, "proxy") == ["n-1"]
    assert r.lost_reasons == {"n-2": "fewer replicas wanted"}


def test_two_tunnels_listed_by_an_earlier_version_shrink_to_the_first() -> None:
    """A status with two active tunnel endpoints (an earlier version honoured Replicas 2) keeps the first."""
    old = gateway(THREE, tunnelConfig={"Replicas": 2}, status={"activeEndpoints": [tunnel("n-2"), tunnel("n-1")]})
    r = elect(old, [node("n-1"), node("n-2"), node("n-3")], LATER)
    assert active_names(r) == ["n-2"]
    assert [e.node_name for e in r.lost] == ["n-1"]


def test_endpoint_removed_from_spec_is_replaced() -> None:
    first = elect(gateway(THREE), [node("n-1"), node("n-2"), node("n-3")], NOW)
    r = elect(gateway(THREE[1:], status=first.status.to_dict()), [node("n-1"), node("n-2"), node("n-3")], LATER)
    assert active_names(r) == ["n-2"]
    assert r.lost_reasons == {"n-1": "endpoint removed from spec"}


def test_status_nodes_are_sorted_with_internal_ip_and_pod_cidrs() -> None:
    nodes = [node("n-3", cidrs=("10.244.3.0/24", "fd00:3::/64")), node("n-1"), node("n-2")]
    r = elect(gateway(THREE), nodes, NOW)
    assert [n.to_dict() for n in r.status.nodes or []] == [
        {"nodeName": "n-1", "privateIP": "10.0.0.1", "subnets": ["10.244.1.0/24"]},
        {"nodeName": "n-2", "privateIP": "10.0.0.2", "subnets": ["10.244.2.0/24"]},
        {"nodeName": "n-3", "privateIP": "10.0.0.3", "subnets": ["10.244.3.0/24", "fd00:3::/64"]},
    ]


def test_node_without_internal_ip_or_pod_cidr_is_listed_with_what_is_known_and_reported() -> None:
    r = elect(gateway(THREE), [node("n-1", ip=""), node("n-2", cidrs=())], NOW)
    assert [n.to_dict() for n in r.status.nodes or []] == [
        {"nodeName": "n-1", "privateIP": "", "subnets": ["10.244.1.0/24"]},
        {"nodeName": "n-2", "privateIP": "10.0.0.2", "subnets": []},
    ]
    assert r.node_problems == ("node n-1: no InternalIP address", "node n-2: no pod CIDR (spec.podCIDRs/spec.podCIDR)")


def test_endpoint_naming_a_missing_node_is_simply_not_eligible() -> None:
    r = elect(gateway([tunnel("ghost"), tunnel("n-2")]), [node("n-2")], NOW)
    assert active_names(r) == ["n-2"]
    assert r.valid


def test_valid_condition_is_true_and_keeps_its_transition_time() -> None:
    first = elect(gateway(THREE), [node("n-1")], NOW)
    conds = [c.to_dict() for c in first.status.conditions or []]
    assert conds == [{"type": "NodesValid", "status": "True", "reason": "NodesValid", "message": "",
                      "lastTransitionTime": NOW},
                     {"type": "Valid", "status": "True", "reason": "SpecValid", "message": "",
                      "lastTransitionTime": NOW}]
    again = elect(gateway(THREE, status=first.status.to_dict()), [node("n-1")], LATER)
    assert again.status.conditions == first.status.conditions


def test_invalid_gateway_keeps_last_good_election_and_names_the_problem() -> None:
    first = elect(gateway(THREE), [node("n-1"), node("n-2"), node("n-3")], NOW)
    bad = gateway([*THREE, {"nodeName": "n-1", "type": "bogus"}], status=first.status.to_dict())
    r = elect(bad, [node("n-1", ready=False), node("n-2"), node("n-3")], LATER)
    assert not r.valid
    assert r.status.active_endpoints == first.status.active_endpoints
    assert r.status.nodes == first.status.nodes
    (cond,) = [c for c in r.status.conditions or [] if c.type == "Valid"]
    assert (cond.type, cond.status, cond.reason) == ("Valid", "False", "InvalidSpec")
    assert "spec.endpoints[3].type" in cond.message and "bogus" in cond.message
    assert cond.last_transition_time == LATER
    fixed = elect(gateway(THREE, status=r.status.to_dict()), [node("n-1", ready=False), node("n-2")], LATER)
    assert fixed.valid and active_names(fixed) == ["n-2"]


def test_other_controllers_conditions_are_kept() -> None:
    status = {"conditions": [{"type": "Zeta", "status": "True", "reason": "X", "message": ""}]}
    r = elect(gateway(THREE, status=status), [node("n-1")], NOW)
    assert [c.type for c in r.status.conditions or []] == ["NodesValid", "Valid", "Zeta"]


def test_malformed_previous_status_with_duplicate_active_endpoints_is_repaired() -> None:
    status = {"activeEndpoints": [tunnel("n-1"), tunnel("n-1")]}
    r = elect(gateway(THREE, status=status), [node("n-1"), node("n-2")], NOW)
    assert active_names(r) == ["n-1"]


def test_load_balancer_address_becomes_the_active_endpoints_public_address() -> None:
    gw = gateway(THREE, exposeType="LoadBalancer")
    waiting = elect(gw, [node("n-1")], NOW)
    assert (waiting.status.active_endpoints or [])[0].public_ip is None
    r = elect(gw, [node("n-1")], NOW, {0: "198.51.100.9"})
    ep = (r.status.active_endpoints or [])[0]
    assert (ep.node_name, ep.public_ip, ep.public_port) == ("n-1", "198.51.100.9", 4500)


def test_same_inputs_give_the_same_status() -> None:
    nodes = [node("n-2"), node("n-1"), node("n-3", ready=False)]
    a = elect(gateway(THREE), nodes, NOW)
    b = elect(gateway(THREE), list(reversed(nodes)), NOW)
    assert a.status.to_dict() == b.status.to_dict()


def _keys(result: Any) -> dict[str, str | None]:
    return {ep.node_name: (ep.config or {}).get("publicKey") for ep in result.status.active_endpoints}


def test_an_elected_tunnel_endpoint_carries_the_key_its_node_published() -> None:
    nodes = [node("n-1"), node("n-2")]
    eps = [tunnel("n-1", config={"k": "v"}), tunnel("n-2"), proxy("n-1")]
    # The node's own report wins over a key in the spec (an OpenYurt agent's, or a stale one); config kept.
    r = elect(gateway([{**eps[0], "config": {"k": "v", "publicKey": "SPEC"}}, *eps[1:]]), nodes, NOW,
              keys={"n-1": "OWN", "n-2": "OTHER"})
    (t,) = [ep for ep in r.status.active_endpoints if ep.type == "tunnel"]
    assert t.config is not None and (t.config["k"], t.config["publicKey"]) == ("v", "OWN")
    # No report: the spec's key (OpenYurt agents publish there); a proxy endpoint never gets one.
    r = elect(gateway([{**eps[0], "config": {"publicKey": "SPEC"}}, *eps[1:]]), nodes, NOW, keys={})
    got = [(ep.type, (ep.config or {}).get("publicKey")) for ep in r.status.active_endpoints]
    assert ("tunnel", "SPEC") in got and all(k is None for t, k in got if t == "proxy")
    # Neither (reports not read yet, or deleted): the key the previous status had for that node stays.
    prev = {"activeEndpoints": [{**tunnel("n-1"), "config": {"publicKey": "BEFORE"}}]}
    r = elect(gateway([tunnel("n-1"), tunnel("n-2")], status=prev), nodes, NOW, keys={})
    assert _keys(r) == {"n-1": "BEFORE"}
    # ... but never another node's: a failover to n-2 without its key carries none.
    r = elect(gateway([tunnel("n-1"), tunnel("n-2")], status=prev), [node("n-1", ready=False), node("n-2")], NOW)
    assert _keys(r) == {"n-2": None}
