"""The Gateway model: lossless round trip of OpenYurt v1beta1 JSON and each validation rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from raven.api import Gateway, GatewayParseError, validate

# As an OpenYurt cluster stores it (raven-controller-manager wrote the status).
REAL_GATEWAY: dict[str, Any] = {
    "apiVersion": "raven.openyurt.io/v1beta1",
    "kind": "Gateway",
    "metadata": {
        "name": "gw-hangzhou",
        "uid": "5d1f0a4e-0c0b-4c43-9a55-1f4f5f0c1a2b",
        "resourceVersion": "48213",
        "generation": 3,
        "creationTimestamp": "2026-10-01T08:00:00Z",
        "labels": {"team": "edge"},
        "annotations": {"note": "factory 7"},
    },
    "spec": {
        "nodeSelector": {
            "matchLabels": {"raven.openyurt.io/gateway": "gw-hangzhou"},
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
        },
        "proxyConfig": {"Replicas": 1, "proxyHTTPPort": "10255,9445", "proxyHTTPSPort": "10250,9100"},
        "tunnelConfig": {"Replicas": 1},
        "endpoints": [
            {"nodeName": "hz-1", "type": "tunnel", "port": 4500, "underNAT": True, "natType": "Cone",
             "publicPort": 61234, "config": {"cost": "10"}},
            {"nodeName": "hz-2", "type": "tunnel", "port": 4500, "underNAT": True},
            {"nodeName": "hz-1", "type": "proxy", "port": 10262, "underNAT": True},
        ],
        "exposeType": "",
    },
    "status": {
        "nodes": [
            {"nodeName": "hz-1", "privateIP": "192.168.1.10", "subnets": ["10.244.1.0/24"]},
            {"nodeName": "hz-2", "privateIP": "192.168.1.11", "subnets": ["10.244.2.0/24", "fd00::/64"]},
        ],
        "activeEndpoints": [
            {"nodeName": "hz-1", "type": "tunnel", "port": 4500, "underNAT": True, "natType": "Cone",
             "publicPort": 61234, "config": {"cost": "10"}},
        ],
    },
}


def test_round_trip_is_identical() -> None:
    original = copy.deepcopy(REAL_GATEWAY)
    assert Gateway.from_dict(REAL_GATEWAY).to_dict() == original


def test_round_trip_keeps_capitalised_replicas_key() -> None:
    out = Gateway.from_dict(REAL_GATEWAY).to_dict()
    assert out["spec"]["tunnelConfig"] == {"Replicas": 1}
    assert "replicas" not in out["spec"]["proxyConfig"]


def test_absent_fields_stay_absent() -> None:
    minimal = {"metadata": {"name": "g"}, "spec": {"endpoints": [{"nodeName": "n", "type": "tunnel"}]}}
    assert Gateway.from_dict(minimal).to_dict() == minimal


def test_defaults_are_computed_not_stored() -> None:
    gw = Gateway.from_dict({"metadata": {"name": "g"}, "spec": {"endpoints": [{"nodeName": "n", "type": "tunnel"}]}})
    assert gw.spec.tunnel_replicas == 1  # OpenYurt's conversion: missing Replicas means one tunnel endpoint
    assert gw.spec.proxy_replicas == 0
    assert gw.spec.all_endpoints[0].tunnel_port == 4500


def test_status_conditions_round_trip() -> None:
    obj = copy.deepcopy(REAL_GATEWAY)
    obj["status"]["conditions"] = [
        {"type": "Valid", "status": "False", "reason": "InvalidSpec", "message": "x",
         "lastTransitionTime": "2026-10-01T08:00:00Z", "observedGeneration": 3}
    ]
    assert Gateway.from_dict(obj).to_dict() == obj


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("spec", "endpoints", 0, "port"), "4500", "spec.endpoints[0].port"),
        (("spec", "endpoints", 0, "underNAT"), "yes", "spec.endpoints[0].underNAT"),
        (("spec", "tunnelConfig", "Replicas"), "one", "spec.tunnelConfig.Replicas"),
        (("status", "nodes", 1, "subnets"), "10.0.0.0/8", "status.nodes[1].subnets"),
        (("spec", "endpoints"), {"nodeName": "x"}, "spec.endpoints"),
    ],
)
def test_wrong_types_name_the_field(path: tuple[Any, ...], value: Any, where: str) -> None:
    obj = copy.deepcopy(REAL_GATEWAY)
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(GatewayParseError) as err:
        Gateway.from_dict(obj)
    assert err.value.path == where


def _gw(spec: dict[str, Any]) -> Gateway:
    return Gateway.from_dict({"metadata": {"name": "g"}, "spec": spec})


def _ep(**kw: Any) -> dict[str, Any]:
    return {"nodeName": "n1", "type": "tunnel", "port": 4500, **kw}


# Each rule: a spec that breaks it (with a phrase the problem must contain) and a close spec that passes.
RULES: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("invalid publicIP", {"endpoints": [_ep(publicIP="1.2.3.999")]}, "not a valid IP address",
     {"endpoints": [_ep(publicIP="1.2.3.4")]}),
    ("unknown endpoint type", {"endpoints": [_ep(type="tunel")]}, "unknown endpoint type",
     {"endpoints": [_ep(type="proxy")]}),
    ("unknown exposeType", {"exposeType": "NodePort", "endpoints": [_ep()]}, "unknown expose type",
     {"exposeType": "LoadBalancer", "endpoints": [_ep()]}),
    ("empty nodeName", {"endpoints": [_ep(nodeName="")]}, "nodeName: must not be empty",
     {"endpoints": [_ep(nodeName="n9")]}),
    ("duplicate endpoint", {"endpoints": [_ep(), _ep(port=4501)]}, "duplicate endpoint",
     {"endpoints": [_ep(), _ep(type="proxy")]}),
    ("mixed underNAT", {"endpoints": [_ep(underNAT=True), _ep(nodeName="n2", underNAT=False)]}, "mixed underNAT",
     {"endpoints": [_ep(underNAT=True), _ep(nodeName="n2", underNAT=True)]}),
    ("exposed with underNAT", {"exposeType": "PublicIP", "endpoints": [_ep(underNAT=True, publicIP="1.2.3.4")]},
     "cannot have underNAT endpoints",
     {"exposeType": "PublicIP", "endpoints": [_ep(underNAT=False, publicIP="1.2.3.4")]}),
    ("invalid port", {"endpoints": [_ep(port=70000)]}, "out of range", {"endpoints": [_ep(port=65535)]}),
    ("invalid publicPort", {"endpoints": [_ep(publicPort=-1)]}, "out of range", {"endpoints": [_ep(publicPort=1)]}),
    ("negative replicas", {"tunnelConfig": {"Replicas": -1}, "endpoints": [_ep()]}, "must not be negative",
     {"tunnelConfig": {"Replicas": 0}, "endpoints": [_ep()]}),
]


@pytest.mark.parametrize(("rule", "bad", "phrase", "good"), RULES, ids=[r[0] for r in RULES])
def test_validation_rule(rule: str, bad: dict[str, Any], phrase: str, good: dict[str, Any]) -> None:
    problems = validate(_gw(bad))
    assert len(problems) == 1, problems
    assert phrase in problems[0]
    assert validate(_gw(good)) == []


def test_real_gateway_is_valid() -> None:
    assert validate(Gateway.from_dict(REAL_GATEWAY)) == []
