"""OpenYurt's gateway-pickup test cases, their facts replayed against our pure election and validation.

Upstream (openyurtio/openyurt): pkg/yurtmanager/controller/raven/gatewaypickup/gateway_pickup_controller_test.go
(electActiveEndpoint, getPodCIDRs, addExtraAllowedSubnet), pkg/yurtmanager/webhook/gateway/v1beta1/
gateway_validation_test.go and pkg/apis/raven/v1beta1/default_test.go. Each test names its upstream case; where
we differ on purpose the test pins our behaviour and says so (the list is in docs/migrating-from-openyurt.md).
The raven-cfg and node event handler cases run against the real controller: tests/controller/test_openyurt.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from raven.api.constants import LABEL_GATEWAY
from raven.api.gateway import Gateway, validate
from raven.api.node import Node
from raven.api.openyurt import ALL_ON, Switches, switches_from
from raven.controller.election import ElectionResult, elect
from raven.controller.nodecheck import NodeIndex, Ranges

NOW = "2026-01-01T00:00:00Z"
RANGES = Ranges.of("240.0.0.0/8", "241.0.0.0/16")


def node(name: str, ready: bool = True, gw: str = "gateway-1", cidr: str | None = None) -> Node:
    n = int(name.rsplit("-", 1)[-1])
    return Node(name, f"10.10.10.{n}", (cidr or f"10.244.{n}.0/24",), ready, {LABEL_GATEWAY: gw})


def ep(name: str, type_: str, **kw: Any) -> dict[str, Any]:
    return {"nodeName": name, "type": type_, **kw}


def gateway(endpoints: list[dict[str, Any]], active: list[dict[str, Any]] | None = None, proxy: int = 1,
            tunnel: int = 1, name: str = "gateway-1", annotations: dict[str, str] | None = None) -> Gateway:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    obj: dict[str, Any] = {"metadata": meta, "spec": {"proxyConfig": {"Replicas": proxy},
                                                      "tunnelConfig": {"Replicas": tunnel}, "endpoints": endpoints}}
    if active is not None:
        obj["status"] = {"activeEndpoints": active}
    return Gateway.from_dict(obj)


def actives(r: ElectionResult) -> list[tuple[str, str]]:
    return sorted((e.node_name, e.type) for e in r.status.active_endpoints or [])


# --- TestReconcileGateway_electActiveEndpoint (raven-cfg with both switches "true") ---------------------------

BOTH_ON = switches_from({"data": {"enable-l7-proxy": "true", "enable-l3-tunnel": "true"}})


def test_upstream_lost_active_endpoint() -> None:
    """The only node, hosting both active endpoints, becomes NotReady: no active endpoint is left."""
    both = [ep("node-1", "tunnel"), ep("node-1", "proxy")]
    gw = gateway(both, active=both)
    r = elect(gw, [node("node-1", ready=False)], NOW, switches=BOTH_ON)
    assert actives(r) == []
    assert sorted((e.node_name, e.type) for e in r.lost) == [("node-1", "proxy"), ("node-1", "tunnel")]


def test_upstream_switch_active_endpoint() -> None:
    """The active node becomes NotReady and another is Ready: it takes over both roles."""
    eps = [ep("node-1", "tunnel"), ep("node-1", "proxy"), ep("node-2", "tunnel"), ep("node-2", "proxy")]
    gw = gateway(eps, active=[ep("node-1", "tunnel"), ep("node-1", "proxy")], proxy=2)
    r = elect(gw, [node("node-1", ready=False), node("node-2")], NOW, switches=BOTH_ON)
    assert actives(r) == [("node-2", "proxy"), ("node-2", "tunnel")]


def test_upstream_elect_new_active_endpoint() -> None:
    """The tunnel node is NotReady and has no replacement; two proxy replicas come from the two Ready nodes."""
    eps = [ep("node-1", "tunnel"), ep("node-2", "proxy"), ep("node-3", "proxy")]
    gw = gateway(eps, active=[ep("node-1", "tunnel"), ep("node-2", "proxy")], proxy=2)
    r = elect(gw, [node("node-1", ready=False), node("node-2"), node("node-3")], NOW, switches=BOTH_ON)
    assert actives(r) == [("node-2", "proxy"), ("node-3", "proxy")]


def test_upstream_no_available_active_endpoint() -> None:
    eps = [ep("node-1", "tunnel"), ep("node-2", "tunnel"), ep("node-3", "proxy"), ep("node-4", "proxy")]
    gw = gateway(eps, active=[ep("node-1", "tunnel"), ep("node-3", "proxy"), ep("node-4", "proxy")], proxy=2)
    r = elect(gw, [node(f"node-{i}", ready=False) for i in (1, 2, 3, 4)], NOW, switches=BOTH_ON)
    assert actives(r) == []


@pytest.mark.parametrize("node1_ready", [False, True])
def test_upstream_dont_switch_active_endpoint(node1_ready: bool) -> None:
    """node-2 stays active. Upstream's case has node-1 NotReady; with node-1 Ready (earlier in spec order) the
    active endpoint must not move either: both elections are sticky."""
    eps = [ep("node-1", "tunnel"), ep("node-2", "tunnel"), ep("node-2", "proxy")]
    gw = gateway(eps, active=[ep("node-2", "tunnel"), ep("node-2", "proxy")])
    r = elect(gw, [node("node-1", ready=node1_ready), node("node-2")], NOW, switches=BOTH_ON)
    assert actives(r) == [("node-2", "proxy"), ("node-2", "tunnel")]
    assert r.elected == () and r.lost == ()


def test_upstream_check_server_switches() -> None:
    """util.CheckServer: each switch on only for "true" (case-insensitive). Difference: a missing ConfigMap or key
    is on here (OpenYurt: off), and a value neither true nor false is reported and counts as on."""
    assert switches_from({"data": {"enable-l7-proxy": "TRUE", "enable-l3-tunnel": "false"}}) == Switches(
        tunnel=False, proxy=True, present=True)
    assert switches_from(None) == ALL_ON
    assert (switches_from({"data": {}}).tunnel, switches_from({"data": {}}).proxy) == (True, True)
    odd = switches_from({"data": {"enable-l3-tunnel": "yes"}})
    assert odd.tunnel and odd.problems == (
        "kube-system/raven-cfg: enable-l3-tunnel is 'yes', neither \"true\" nor \"false\"; treated as \"true\"",)


def test_switches_off_elect_nothing_of_that_kind_and_say_why() -> None:
    eps = [ep("node-1", "tunnel"), ep("node-1", "proxy")]
    prev = elect(gateway(eps), [node("node-1")], NOW, switches=BOTH_ON)
    gw = Gateway.from_dict({**gateway(eps).to_dict(), "status": prev.status.to_dict()})
    off = switches_from({"data": {"enable-l3-tunnel": "false", "enable-l7-proxy": "true"}})
    r = elect(gw, [node("node-1")], NOW, switches=off)
    assert actives(r) == [("node-1", "proxy")]
    assert r.lost_kinds == {"node-1": "disabled"}
    (valid,) = [c for c in r.status.conditions or [] if c.type == "Valid"]
    assert (valid.status, valid.message) == ("True", 'tunnel endpoints not elected: kube-system/raven-cfg '
                                                     'enable-l3-tunnel is "false"')


# --- configEndpoints: the config map on each active endpoint ----------------------------------------------------


def test_upstream_config_endpoints_map() -> None:
    r = elect(gateway([ep("node-1", "tunnel", config={"k": "v"}), ep("node-1", "proxy")]), [node("node-1")], NOW,
              switches=BOTH_ON)
    configs = {e.type: e.config for e in r.status.active_endpoints or []}
    assert configs == {"tunnel": {"k": "v", "enable-l3-tunnel": "true"}, "proxy": {"enable-l7-proxy": "true"}}


# --- TestReconcileGateway_getPodCIDRs ---------------------------------------------------------------------------


def test_upstream_node_has_pod_cidr() -> None:
    r = elect(gateway([ep("node-1", "tunnel")]), [node("node-1", cidr="10.0.0.1/24")], NOW)
    assert [(n.node_name, n.subnets) for n in r.status.nodes or []] == [("node-1", ["10.0.0.1/24"])]


def test_upstream_node_has_no_pod_cidr_documented_difference() -> None:
    """Upstream lists [""] (an empty subnet); we list no subnet and report the node as incomplete."""
    bare = Node("node-1", "10.10.10.1", (), True, {LABEL_GATEWAY: "gateway-1"})
    r = elect(gateway([ep("node-1", "tunnel")]), [bare], NOW)
    assert [(n.node_name, n.subnets) for n in r.status.nodes or []] == [("node-1", [])]
    assert r.node_problems == ("node node-1: no pod CIDR (spec.podCIDRs/spec.podCIDR)",)


# --- TestReconcileGateway_addExtraAllowedSubnet ---------------------------------------------------------------


def test_upstream_add_extra_allowed_subnet_from_the_gateway_annotation() -> None:
    """The Gateway's annotation goes to the subnets of its active tunnel endpoint's node, after its pod CIDR."""
    gw = gateway([ep("node-1", "tunnel")], active=[ep("node-1", "tunnel")],
                 annotations={"raven.openyurt.io/extra-allowed-source-cidrs": "1.1.1.1/32,2.2.2.2/32"})
    n1 = Node("node-1", "10.10.10.10", ("10.244.10.0/24",), True, {LABEL_GATEWAY: "gateway-1"})
    extras = NodeIndex([n1], {"gateway-1"}, RANGES, {"gateway-1": ("1.1.1.1/32", "2.2.2.2/32")}).extras(
        lambda _owner: [])
    assert extras.findings == []
    r = elect(gw, [n1], NOW, gateway_extras=extras.by_gateway["gateway-1"])
    assert [(n.node_name, n.private_ip, n.subnets) for n in r.status.nodes or []] == [
        ("node-1", "10.10.10.10", ["10.244.10.0/24", "1.1.1.1/32", "2.2.2.2/32"])]


# --- TestGatewayHandler_ValidateCreate / ValidateUpdate / ReplicasBadValue --------------------------------------
# Upstream's webhook rejects; we accept the object and report the problem in the Valid condition (and an Event),
# keeping the last good election (an invalid spec) or electing what can be honoured (Replicas).


def _valid_gateway(**spec: Any) -> Gateway:
    base: dict[str, Any] = {"exposeType": "LoadBalancer", "tunnelConfig": {"Replicas": 1},
                            "proxyConfig": {"Replicas": 1},
                            "endpoints": [{"underNAT": False, "publicIP": "192.168.1.1", "nodeName": "node1",
                                           "type": "proxy"}]}
    base.update(spec)
    return Gateway.from_dict({"metadata": {"name": "gw"}, "spec": base})


def _endpoint(**kw: Any) -> list[dict[str, Any]]:
    return [{"underNAT": False, "publicIP": "192.168.1.1", "nodeName": "node1", "type": "proxy", **kw}]


@pytest.mark.parametrize(("case", "spec", "expected"), [
    ("invalid ExposeType", {"exposeType": "InvalidExposeType"}, "spec.exposeType: unknown expose type"),
    ("valid ExposeType but underNAT", {"endpoints": _endpoint(underNAT=True)},
     "gateway exposed by LoadBalancer cannot have underNAT endpoints"),
    ("invalid publicIP", {"endpoints": _endpoint(publicIP="invalid-ip")}, "is not a valid IP address"),
    ("empty nodeName", {"endpoints": _endpoint(nodeName="")}, "nodeName: must not be empty"),
    ("inconsistent underNAT", {"exposeType": None, "endpoints": [{"underNAT": True, "nodeName": "node1"},
                                                                  {"underNAT": False, "nodeName": "node2"}]},
     "mixed underNAT values"),
    ("unknown endpoint type", {"endpoints": _endpoint(type="other")}, "unknown endpoint type"),
])
def test_upstream_validate_create_rejections_are_conditions(case: str, spec: dict[str, Any], expected: str) -> None:
    problems = validate(_valid_gateway(**spec))
    assert any(expected in p for p in problems), (case, problems)
    r = elect(_valid_gateway(**spec), [], NOW)
    (valid,) = [c for c in r.status.conditions or [] if c.type == "Valid"]
    assert (valid.status, valid.reason) == ("False", "InvalidSpec") and expected in valid.message


def test_upstream_valid_gateway_passes() -> None:
    assert validate(_valid_gateway()) == []
    (valid,) = [c for c in elect(_valid_gateway(), [], NOW).status.conditions or [] if c.type == "Valid"]
    assert (valid.status, valid.reason, valid.message) == ("True", "SpecValid", "")


def test_upstream_replicas_bad_value_documented_difference() -> None:
    """Upstream rejects tunnel Replicas 2 and proxy Replicas 2 with one proxy endpoint, naming both and not the
    (valid) exposeType. We accept it, elect one tunnel and the one proxy, and say both in Valid=False."""
    gw = _valid_gateway(tunnelConfig={"Replicas": 2}, proxyConfig={"Replicas": 2})
    assert validate(gw) == []
    r = elect(gw, [Node("node1", "10.1.1.1", ("10.2.0.0/24",), True, {LABEL_GATEWAY: "gw"})], NOW)
    (valid,) = [c for c in r.status.conditions or [] if c.type == "Valid"]
    assert (valid.status, valid.reason) == ("False", "ReplicasNotHonoured")
    assert "spec.tunnelConfig.Replicas is 2" in valid.message
    assert "spec.proxyConfig.Replicas is 2 but spec.endpoints lists 1 proxy endpoint(s)" in valid.message
    assert "LoadBalancer" not in valid.message
    assert actives(r) == [("node1", "proxy")]


# --- TestSetDefaultsGateway (the mutating webhook) --------------------------------------------------------------


def test_upstream_default_endpoint_ports_in_status() -> None:
    """Upstream defaults port 0 to 10262 (proxy) / 4500 (tunnel) in spec. We never rewrite spec (no webhook): the
    active endpoints in status carry the defaulted port, and spec keeps what the user wrote."""
    gw = gateway([ep("node-1", "proxy", port=0), ep("node-1", "tunnel", port=0)])
    r = elect(gw, [node("node-1")], NOW)
    assert {e.type: e.port for e in r.status.active_endpoints or []} == {"proxy": 10262, "tunnel": 4500}
    assert [e.port for e in gw.spec.all_endpoints] == [0, 0]


def test_upstream_default_node_selector_documented_difference() -> None:
    """Upstream sets spec.nodeSelector.matchLabels[raven.openyurt.io/gateway] = name (merged into existing labels).
    We leave spec.nodeSelector as written: membership is the node's label, which is what OpenYurt's controller
    lists too, so the election is the same with or without that default."""
    with_selector = Gateway.from_dict({"metadata": {"name": "gateway-1"}, "spec": {
        "nodeSelector": {"matchLabels": {"custom-label": "custom-value"}}, "endpoints": [ep("node-1", "tunnel")]}})
    without = gateway([ep("node-1", "tunnel")])
    a, b = elect(with_selector, [node("node-1")], NOW), elect(without, [node("node-1")], NOW)
    assert actives(a) == actives(b) == [("node-1", "tunnel")]
    assert with_selector.to_dict()["spec"]["nodeSelector"] == {"matchLabels": {"custom-label": "custom-value"}}


# --- extra-allowed-source-cidrs: the same checks as pod CIDRs, but a bad one is dropped alone -------------------


def _annotated(name: str, extra: str, cidr: str | None = None) -> Node:
    n = node(name, cidr=cidr)
    return Node.from_dict({"metadata": {"name": n.name, "labels": dict(n.labels),
                                        "annotations": {"raven.openyurt.io/extra-allowed-source-cidrs": extra}},
                           "spec": {"podCIDRs": list(n.pod_cidrs)},
                           "status": {"addresses": [{"type": "InternalIP", "address": n.internal_ip}],
                                      "conditions": [{"type": "Ready", "status": "True"}]}})


def test_node_annotation_adds_its_cidrs_to_that_nodes_subnets() -> None:
    n1, n2 = _annotated("node-1", "192.168.50.0/24, 192.168.51.0/24"), node("node-2")
    assert n1.extra_cidrs == ("192.168.50.0/24", "192.168.51.0/24")
    index = NodeIndex([n1, n2], {"gateway-1"}, RANGES)
    extras = index.extras(lambda _owner: [])
    assert (extras.by_node, extras.findings) == ({"node-1": ["192.168.50.0/24", "192.168.51.0/24"]}, [])
    r = elect(gateway([ep("node-1", "tunnel")]), [n1, n2], NOW, extras=extras.by_node)
    assert {n.node_name: n.subnets for n in r.status.nodes or []} == {
        "node-1": ["10.244.1.0/24", "192.168.50.0/24", "192.168.51.0/24"], "node-2": ["10.244.2.0/24"]}


@pytest.mark.parametrize(("extra", "reason", "says"), [
    ("not-a-cidr", "ExtraCIDRInvalid", "does not parse"),
    ("10.10.10.0/24", "ExtraCIDRReserved", "covers 10.10.10.1, the InternalIP of node node-1"),
    ("240.1.0.0/16", "ExtraCIDRReserved", "overlaps the overlay range"),
    ("169.254.169.254/32", "ExtraCIDRReserved", "link-local"),
    ("10.244.2.128/25", "ExtraCIDRConflict", "overlaps pod CIDR 10.244.2.0/24 of node node-2"),
])
def test_a_bad_extra_cidr_is_dropped_alone(extra: str, reason: str, says: str) -> None:
    """The node keeps its pod CIDRs and its good extra CIDR; only the bad one is left out, with a finding."""
    n1, n2 = _annotated("node-1", f"192.168.50.0/24,{extra}"), node("node-2")
    extras = NodeIndex([n1, n2], {"gateway-1"}, RANGES).extras(lambda _owner: [])
    assert extras.by_node == {"node-1": ["192.168.50.0/24"]}
    (finding,) = extras.findings
    assert (finding.node, finding.reason) == ("node-1", reason) and says in finding.message
    assert finding.message.endswith("that CIDR is ignored (nothing else changes)")
    index = NodeIndex([n1, n2], {"gateway-1"}, RANGES)
    assert index.rejections(lambda _n: False) == {}  # neither node is left out


def test_overlapping_extra_cidrs_the_listed_one_keeps_it() -> None:
    """Two nodes claim overlapping extra CIDRs: the one a current status already lists keeps it (what works stays),
    whatever the names; without a status, name order decides."""
    a, b = _annotated("node-1", "192.168.50.0/24"), _annotated("node-2", "192.168.50.128/25")
    fresh = NodeIndex([a, b], {"gateway-1"}, RANGES).extras(lambda _owner: [])
    assert fresh.by_node == {"node-1": ["192.168.50.0/24"]}
    assert [(f.node, f.reason) for f in fresh.findings] == [("node-2", "ExtraCIDRConflict")]
    listed = {"node-2": ["10.244.2.0/24", "192.168.50.128/25"]}
    working = NodeIndex([a, b], {"gateway-1"}, RANGES).extras(lambda owner: listed.get(owner, []))
    assert working.by_node == {"node-2": ["192.168.50.128/25"]}
    assert [(f.node, f.reason) for f in working.findings] == [("node-1", "ExtraCIDRConflict")]


def test_an_extra_cidr_never_pushes_out_a_pod_cidr() -> None:
    """A Gateway annotation overlapping a node's pod CIDR is dropped; the pod CIDR stays (the node is not rejected)."""
    n1 = node("node-1")
    index = NodeIndex([n1], {"gateway-1"}, RANGES, {"gateway-1": ("10.244.1.0/25", "1.1.1.1/32")})
    extras = index.extras(lambda _owner: [])
    assert extras.by_gateway == {"gateway-1": ["1.1.1.1/32"]}
    assert [(f.node, f.reason) for f in extras.findings] == [("gateway-1", "ExtraCIDRConflict")]
    assert index.rejections(lambda _n: False) == {}
