"""The lab's kube-proxy stand-in (e2e.services.render_nat): the rules kube-proxy's iptables mode writes."""

from __future__ import annotations

from typing import Any

from e2e.services import render_nat, service_views


def _svc(name: str, kind: str, ingress: list[dict[str, str]] | None = None) -> dict[str, Any]:
    port = {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}
    if kind != "ClusterIP":
        port["nodePort"] = 30080
    return {"metadata": {"name": name, "namespace": "shop"},
            "spec": {"type": kind, "clusterIP": "10.96.0.9", "ports": [port]},
            "status": {"loadBalancer": {"ingress": ingress or []}}}


def _eps(name: str, ips: list[str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "shop"},
            "subsets": [{"addresses": [{"ip": ip} for ip in ips], "ports": [{"name": "http", "port": 8080}]}]}


def test_endpoints_are_picked_with_kube_proxys_probabilities_and_marked_outside_the_cluster_cidr() -> None:
    text = render_nat(service_views([_svc("web", "ClusterIP")], [_eps("web", ["10.12.0.10", "10.12.1.10",
                                                                            "10.13.0.10"])]), "10.8.0.0/13")
    svc_rules = [line for line in text.splitlines() if line.startswith("-A KUBE-SVC-")]
    assert "! -s 10.8.0.0/13 -d 10.96.0.9/32" in svc_rules[0] and svc_rules[0].endswith("-j KUBE-MARK-MASQ")
    picks = svc_rules[1:]
    assert ["--probability 0.3333333333" in picks[0], "--probability 0.5000000000" in picks[1],
            "statistic" not in picks[2]] == [True, True, True]
    assert text.count("-j DNAT --to-destination") == 3
    assert "-A KUBE-POSTROUTING -m comment" in text and "MASQUERADE --random-fully" in text
    # The NodePort jump is the last rule of KUBE-SERVICES.
    services = [line for line in text.splitlines() if line.startswith("-A KUBE-SERVICES")]
    assert "--dst-type LOCAL -j KUBE-NODEPORTS" in services[-1]


def test_node_ports_and_load_balancer_addresses_unless_the_cloud_proxies() -> None:
    eps = [_eps("lb", ["10.12.0.10"])]
    vip = render_nat(service_views([_svc("lb", "LoadBalancer", [{"ip": "198.18.0.200"}])], eps), "10.8.0.0/13")
    assert "-d 198.18.0.200/32" in vip and "--dport 30080 -j KUBE-EXT-" in vip
    proxied = render_nat(service_views([_svc("lb", "LoadBalancer", [{"ip": "198.18.0.200", "ipMode": "Proxy"}])],
                                       eps), "10.8.0.0/13")
    assert "198.18.0.200" not in proxied and "--dport 30080 -j KUBE-EXT-" in proxied


def test_a_service_without_endpoints_gets_no_chain_and_stale_chains_are_deleted() -> None:
    text = render_nat(service_views([_svc("web", "ClusterIP")], [_eps("web", [])]), "10.8.0.0/13",
                      stale=["KUBE-SVC-GONE", "KUBE-SEP-GONE", "KUBE-SERVICES", "RAVEN-MSS"])
    assert "KUBE-SVC-" not in text.replace("KUBE-SVC-GONE", "")
    assert "-X KUBE-SVC-GONE" in text and "-X KUBE-SEP-GONE" in text
    assert "-X KUBE-SERVICES" not in text and "RAVEN-MSS" not in text
