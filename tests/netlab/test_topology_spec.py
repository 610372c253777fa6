"""The topology file format: the default topology's shape and validation of bad input (no root)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from e2e.topology import TOPOLOGY_DIR, TopologyError, load_topology, node_object, parse_topology
from raven.api.constants import LABEL_GATEWAY


def _doc() -> dict[str, Any]:
    data = yaml.safe_load((TOPOLOGY_DIR / "default.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_default_topology_has_cloud_two_nat_edges_and_a_public_edge_with_two_nodes_each() -> None:
    spec = load_topology("default")
    assert [(p.name, p.nat, len(p.nodes)) for p in spec.pools] == [
        ("cloud", False, 2), ("edge-a", True, 2), ("edge-b", True, 2), ("edge-pub", False, 2)]
    assert all(n.pods == 1 for n in spec.nodes)
    # Pool pod CIDRs are aligned blocks containing their nodes' CIDRs.
    for p in spec.pools:
        assert all(n.pod_cidr.subnet_of(p.pod_cidr) for n in p.nodes)
    gws = {g["metadata"]["name"]: g for g in spec.gateways}
    assert set(gws) == {"gw-cloud", "gw-edge-a", "gw-edge-b", "gw-edge-pub"}
    pub = gws["gw-edge-pub"]["spec"]["endpoints"][0]
    assert pub["underNAT"] is False and pub["publicIP"] == str(spec.pool("edge-pub").nodes[0].ip)
    assert all(ep["underNAT"] for ep in gws["gw-edge-a"]["spec"]["endpoints"])


def test_nodes_carry_their_pools_gateway_label_and_node_objects_have_ip_and_cidr() -> None:
    spec = load_topology("default")
    node = spec.pool("edge-a").nodes[1]
    assert node.labels[LABEL_GATEWAY] == "gw-edge-a"
    obj = node_object(node)
    assert obj["spec"]["podCIDR"] == "10.11.1.0/24"
    assert {"type": "InternalIP", "address": "192.168.11.12"} in obj["status"]["addresses"]
    assert obj["status"]["conditions"][0]["status"] == "True"


def _public_lan_reused(d: dict[str, Any]) -> None:
    # A routed (public) LAN must be unique: it is routed on the WAN.
    d["pools"][3]["lan"] = "198.18.1.0/24"
    for i, n in enumerate(d["pools"][3]["nodes"]):
        n["ip"] = f"198.18.1.{21 + i}"


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d["pools"][0]["nodes"][0].update(ip="10.0.0.1"), "pools[0].nodes[0].ip"),
        (lambda d: d["pools"][0]["nodes"][0].update(podCIDR="10.99.0.0/24"), "pools[0].nodes[0].podCIDR"),
        (lambda d: d["pools"][0]["nodes"][1].update(podCIDR="10.10.0.0/24"), "pools[0].nodes[1].podCIDR"),
        (lambda d: d["pools"][0]["nodes"][0].update(podCIDR="10.10.0.0/33"), "pools[0].nodes[0].podCIDR"),
        (lambda d: d["pools"][1]["nodes"][0].update(name="cloud-1"), "pools[1].nodes[0].name"),
        (lambda d: d["pools"][1]["nodes"][0].update(name="Bad_Name"), "pools[1].nodes[0].name"),
        (_public_lan_reused, "pools[3].lan"),
        (lambda d: d["pools"][2].update(gateway="gw-nope"), "pools[2].gateway"),
        (lambda d: d["gateways"][0]["spec"]["endpoints"][0].update(nodeName="ghost"), "gateways[0]"),
        (lambda d: d["gateways"][0]["spec"]["endpoints"][0].update(port="4500"), "gateways[0]"),
        (lambda d: d["controlPlane"].update(address="198.18.0.10"), "controlPlane.address"),
        (lambda d: d.pop("wan"), "wan"),
        (lambda d: d["pools"][0].update(nat="yes"), "pools[0].nat"),
    ],
)
def test_bad_topology_is_refused_naming_the_field(mutate: Any, field: str) -> None:
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(TopologyError) as err:
        parse_topology(doc)
    assert field in str(err.value)


def test_nat_pools_may_share_the_same_private_lan() -> None:
    doc = copy.deepcopy(_doc())
    doc["pools"][2]["lan"] = "192.168.11.0/24"
    for i, n in enumerate(doc["pools"][2]["nodes"]):
        n["ip"] = f"192.168.11.{11 + i}"
    spec = parse_topology(doc)
    assert spec.pool("edge-a").lan == spec.pool("edge-b").lan
