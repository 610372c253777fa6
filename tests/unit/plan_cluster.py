"""Realistic Gateway objects (OpenYurt raven.openyurt.io/v1beta1 JSON, as the controller leaves them) for
the plan tests, and a diff helper that counts changed kernel/VPN objects between two plans.

The reference cluster:
- gw-cloud  exposed by PublicIP 203.0.113.10, nodes cloud-1 (active), cloud-2
- gw-edge-a under NAT, nodes edge-a-1 (active), edge-a-2, edge-a-3
- gw-edge-b under NAT, nodes edge-b-1 (active), edge-b-2
- gw-dc     neither NAT nor exposed (reachable at its node IP), nodes dc-1 (active), dc-2
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import fields
from typing import Any

from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.dataplane.state import NodeNetwork

JSON = dict[str, Any]

POOLS: dict[str, list[tuple[str, str, list[str]]]] = {
    "gw-cloud": [
        ("cloud-1", "10.0.0.11", ["10.244.0.0/24"]),
        ("cloud-2", "10.0.0.12", ["10.244.1.0/24"]),
    ],
    "gw-edge-a": [
        ("edge-a-1", "192.168.1.11", ["10.245.0.0/24"]),
        ("edge-a-2", "192.168.1.12", ["10.245.1.0/24"]),
        ("edge-a-3", "192.168.1.13", ["10.245.2.0/24"]),
    ],
    "gw-edge-b": [
        ("edge-b-1", "192.168.2.11", ["10.246.0.0/24"]),
        ("edge-b-2", "192.168.2.12", ["10.246.1.0/24"]),
    ],
    "gw-dc": [
        ("dc-1", "172.16.0.11", ["10.247.0.0/24"]),
        ("dc-2", "172.16.0.12", ["10.247.1.0/24"]),
    ],
}


def endpoint(node: str, *, under_nat: bool, public_ip: str | None = None, port: int = 4500) -> JSON:
    ep: JSON = {"nodeName": node, "type": "tunnel", "port": port, "underNAT": under_nat, "config": {}}
    if public_ip is not None:
        ep["publicIP"] = public_ip
        ep["publicPort"] = port
    return ep


def gateway_json(
    name: str,
    created: str,
    nodes: list[tuple[str, str, list[str]]],
    active: str | None,
    *,
    under_nat: bool,
    expose_type: str = "",
    public_ip: str | None = None,
    port: int = 4500,
) -> JSON:
    """A Gateway with one tunnel endpoint per node (spec order = node order) and the controller's status."""
    eps = [
        endpoint(n, under_nat=under_nat, public_ip=public_ip if n == active else None, port=port) for n, _, _ in nodes
    ]
    spec: JSON = {
        "proxyConfig": {"Replicas": 1, "proxyHTTPPort": "10255,9445", "proxyHTTPSPort": "10250,9100"},
        "tunnelConfig": {"Replicas": 1},
        "endpoints": eps,
    }
    if expose_type:
        spec["exposeType"] = expose_type
    return {
        "apiVersion": "raven.openyurt.io/v1beta1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "generation": 1,
            "resourceVersion": "1000",
            "uid": f"00000000-0000-0000-0000-{zlib.crc32(name.encode()):012d}",
        },
        "spec": spec,
        "status": {
            "nodes": [{"nodeName": n, "privateIP": ip, "subnets": list(s)} for n, ip, s in nodes],
            "activeEndpoints": [copy.deepcopy(e) for e in eps if e["nodeName"] == active],
        },
    }


def cluster_json() -> dict[str, JSON]:
    return {
        "gw-cloud": gateway_json(
            "gw-cloud",
            "2026-01-01T00:00:00Z",
            POOLS["gw-cloud"],
            "cloud-1",
            under_nat=False,
            expose_type="PublicIP",
            public_ip="203.0.113.10",
        ),
        "gw-edge-a": gateway_json("gw-edge-a", "2026-01-02T00:00:00Z", POOLS["gw-edge-a"], "edge-a-1", under_nat=True),
        "gw-edge-b": gateway_json("gw-edge-b", "2026-01-03T00:00:00Z", POOLS["gw-edge-b"], "edge-b-1", under_nat=True),
        "gw-dc": gateway_json("gw-dc", "2026-01-04T00:00:00Z", POOLS["gw-dc"], "dc-1", under_nat=False),
    }


def parse(objs: dict[str, JSON] | list[JSON]) -> list[Gateway]:
    values = list(objs.values()) if isinstance(objs, dict) else objs
    return [Gateway.from_dict(copy.deepcopy(o)) for o in values]


def set_active(obj: JSON, node: str) -> None:
    """What the controller writes on failover: the spec endpoint of the new winner."""
    obj["status"]["activeEndpoints"] = [copy.deepcopy(e) for e in obj["spec"]["endpoints"] if e["nodeName"] == node]


def nodes() -> list[Node]:
    out = []
    for gw, pool in POOLS.items():
        for name, ip, subnets in pool:
            out.append(
                Node.from_dict(
                    {
                        "metadata": {"name": name, "labels": {"raven.openyurt.io/gateway": gw}},
                        "spec": {"podCIDRs": subnets},
                        "status": {
                            "addresses": [{"type": "InternalIP", "address": ip}],
                            "conditions": [{"type": "Ready", "status": "True"}],
                        },
                    }
                )
            )
    return out


def diff(before: NodeNetwork, after: NodeNetwork) -> dict[str, tuple[set[Any], set[Any]]]:
    """Per object kind, (removed, added); kinds without change are left out."""
    out: dict[str, tuple[set[Any], set[Any]]] = {}
    def objects(state: NodeNetwork, name: str) -> set[Any]:
        value = getattr(state, name)
        if name in ("ingress", "probe_snat"):  # one filter (one chain), rewritten in one iptables-restore
            return set() if value is None else {value}
        return set(value)

    for f in fields(NodeNetwork):
        old, new = objects(before, f.name), objects(after, f.name)
        if old != new:
            out[f.name] = (old - new, new - old)
    return out


def changed_objects(before: NodeNetwork, after: NodeNetwork) -> int:
    """Kernel/VPN writes a diff-based applier needs: a replaced object counts once (same key)."""
    total = 0
    for removed, added in diff(before, after).values():
        total += max(len(removed), len(added))
    return total
