"""Scenario 9 (issue 17): Services across pools, by IP and by name, from pods and from the host network;
a NodePort reached from another pool's node; a cloud gateway exposed by LoadBalancer, failed over.

One set-up for the module, on the shared cluster: kube-proxy's iptables rules on every node (`KubeProxy`,
generated from the Service/Endpoints objects), an HTTP server in every pod, dnsmasq in a cloud pod behind the
DNS Service, and two Services whose endpoints are all outside the client's pool, spread over two pools each:
``shop/east`` (edge-b and edge-pub pods, NodePort) for clients in cloud and edge-a, ``shop/west`` (cloud and
edge-a pods) for clients in edge-b and edge-pub. Everything is removed again at the end of the module.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from e2e.cluster import RavenCluster
from e2e.netlab import Netns, Process
from e2e.services import (
    CloudLoadBalancer,
    ClusterDns,
    KubeProxy,
    create_service,
    delete_service,
    ensure_namespace,
    http_many,
    new_clients,
    resolve,
    start_web,
    web_clients,
)
from e2e.tests.conftest import MEASUREMENTS
from raven.agent.plan import node_source
from raven.kube.client import GATEWAYS, SERVICES

pytestmark = [pytest.mark.root, pytest.mark.slow]

NS = "shop"
WEB_PORT = 8080
CLUSTER_CIDR = "10.8.0.0/13"  # kube-proxy's --cluster-cidr: every pool's pod CIDR (10.10-10.14/16)
EAST_POOLS, WEST_POOLS = ("edge-b", "edge-pub"), ("cloud", "edge-a")
REQUESTS = 16


@dataclass
class Services:
    rc: RavenCluster
    proxy: KubeProxy
    dns: ClusterDns
    web: list[Process]
    ips: dict[str, str]  # service name -> ClusterIP
    node_port: int
    pool_of_pod: dict[str, str]

    def pools_answering(self, answers: list[tuple[int, str]]) -> Counter[str]:
        return Counter(self.pool_of_pod.get(body, f"?{code}:{body[:60]}") for code, body in answers)


def _pods_in(rc: RavenCluster, pools: tuple[str, ...]) -> list[str]:
    return sorted(p.name for p in rc.cl.pods.values()
                  if p.node in rc.registered and rc.cl.nodes[p.node].pool in pools)


@pytest.fixture(scope="module")
def svc(rc: RavenCluster) -> Iterator[Services]:
    pods = sorted(p.name for p in rc.cl.pods.values() if p.node in rc.registered)
    web = start_web(rc, pods, WEB_PORT)
    ensure_namespace(rc, NS)
    port = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": WEB_PORT}]
    ips = {}
    for name, pools, kind in (("east", EAST_POOLS, "NodePort"), ("west", WEST_POOLS, "ClusterIP")):
        eps = [(rc.cl.pods[p].ip, rc.cl.pods[p].node) for p in _pods_in(rc, pools)]
        ips[name] = create_service(rc, NS, name, port, eps, type=kind)["spec"]["clusterIP"]
    node_port = int(rc.api.api(lambda c: c.get(SERVICES, "east", NS))["spec"]["ports"][0]["nodePort"])
    dns = ClusterDns(rc, "cloud-2-p0")
    proxy = KubeProxy(rc, CLUSTER_CIDR)
    try:
        dns.start()
        proxy.install()  # after the DNS Service exists: one sync programs everything
        dns.update()
        dns.configure_clients([rc.cl.pods[p].netns for p in pods], NS)
        dns.configure_clients([rc.cl.nodes[n].netns for n in sorted(rc.registered)], NS)
        yield Services(rc, proxy, dns, web, ips, node_port,
                       {p.name: rc.cl.nodes[p.node].pool for p in rc.cl.pods.values()})
    finally:
        proxy.uninstall()
        dns.stop()
        for name in ("east", "west"):
            delete_service(rc, NS, name)
        for proc in web:
            proc.stop(1.0)


def _other_service(pool: str) -> str:
    return "east" if pool in WEST_POOLS else "west"


def _check_spread(s: Services, answers: list[tuple[int, str]], service: str, what: str) -> None:
    assert len(answers) and all(code == 200 for code, _ in answers), (what, answers)
    pools = s.pools_answering(answers)
    want = set(EAST_POOLS if service == "east" else WEST_POOLS)
    # Every answer from an endpoint in another pool, and the load spread over both of the Service's pools.
    assert set(pools) == want, (what, pools)


def test_a_pod_in_every_pool_reaches_a_service_in_other_pools_by_ip_and_by_name(svc: Services) -> None:
    rc = svc.rc
    fqdn = {name: f"{name}.{NS}.svc.cluster.local" for name in svc.ips}
    pools = [p for p in rc.cl.pools.values() if any(n.name in rc.registered for n in p.nodes)]
    assert {p.name for p in pools} == {*EAST_POOLS, *WEST_POOLS}  # (the spare pool edge-c is not registered)
    for pool in pools:
        client = next(n.pods[0] for n in pool.nodes if n.name in rc.registered)
        name = _other_service(pool.name)
        # The DNS server is a cloud pod: edge pods resolve across pools through the DNS Service IP.
        assert resolve(client.netns, fqdn[name]) == svc.ips[name], (client.name, fqdn[name])
        assert resolve(client.netns, name) == svc.ips[name]  # the search path of a pod in namespace shop
        by_ip = http_many(client.netns, [f"http://{svc.ips[name]}/"] * REQUESTS)
        _check_spread(svc, by_ip, name, f"{client.name} -> {name} by IP")
        by_name = http_many(client.netns, [f"http://{fqdn[name]}/"] * (REQUESTS // 2) + [f"http://{name}/"] * 4)
        _check_spread(svc, by_name, name, f"{client.name} -> {name} by name")
    # The rules were kube-proxy's: the client nodes' KUBE-SVC chains picked the endpoints.
    assert "-m statistic --mode random --probability 0.5000000000" in svc.proxy.last


def _node_sources(rc: RavenCluster, node: str) -> str:
    src = node_source([rc.cl.nodes[node].pod_cidr])
    assert src is not None
    return src


@pytest.mark.parametrize("role", ["gateway", "member"])
@pytest.mark.parametrize("pool", ["cloud", "edge-a"])
def test_a_host_network_client_reaches_pods_and_services_in_other_pools(svc: Services, pool: str,
                                                                       role: str) -> None:
    """A process on the node itself (no pod): to a remote pod the route's `src` is the node source; to a
    ClusterIP kube-proxy marks it (source outside --cluster-cidr) and MASQUERADE out raven0/raven1 takes the
    node source too. Either way the remote endpoint sees the node's own pod-CIDR address."""
    rc = svc.rc
    gateway = rc.cl.pools[pool].spec.gateway
    assert gateway is not None
    node = rc.active_gateway_node(gateway) if role == "gateway" else rc.member_node(pool)
    ns: Netns = rc.cl.nodes[node].netns
    name = _other_service(pool)
    before = web_clients(svc.web)
    remote_pod = rc.cl.pods[_pods_in(rc, EAST_POOLS if name == "east" else WEST_POOLS)[0]]
    direct = http_many(ns, [f"http://{remote_pod.ip}:{WEB_PORT}/"])
    assert direct == [(200, remote_pod.name)], (node, direct)
    by_ip = http_many(ns, [f"http://{svc.ips[name]}/"] * REQUESTS)
    _check_spread(svc, by_ip, name, f"host network of {node} -> {name}")
    by_name = http_many(ns, [f"http://{name}.{NS}.svc.cluster.local/"] * 4)
    _check_spread(svc, by_name + by_ip, name, f"host network of {node} -> {name} by name")
    assert all(code == 200 for code, _ in by_name), by_name
    seen = new_clients(before, web_clients(svc.web))
    assert seen == {_node_sources(rc, node)}, (node, seen)


def test_a_node_port_is_reached_from_another_pools_node(svc: Services) -> None:
    """edge-a's node -> a cloud node's NodePort over the WAN -> DNAT to an endpoint in edge-b/edge-pub,
    masqueraded by kube-proxy to the cloud node's node source (the only address its pods' pools route)."""
    rc = svc.rc
    client = rc.cl.nodes[rc.member_node("edge-a")].netns
    for node in (rc.active_gateway_node("gw-cloud"), rc.member_node("cloud")):
        before = web_clients(svc.web)
        answers = http_many(client, [f"http://{rc.cl.nodes[node].ip}:{svc.node_port}/"] * REQUESTS)
        _check_spread(svc, answers, "east", f"edge-a -> NodePort of {node}")
        assert new_clients(before, web_clients(svc.web)) == {_node_sources(rc, node)}


def test_a_cloud_gateway_exposed_by_a_load_balancer_carries_traffic_and_fails_over(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """exposeType LoadBalancer on gw-cloud: the controller's Service gets a WAN address from the cloud stand-in,
    the NAT'd pools' gateways dial it, the LB forwards to the active node; a crash of that node moves the
    Endpoints, the LB target and the tunnels, and traffic follows."""
    rc = svc.rc
    lb = CloudLoadBalancer(rc)
    lb.start()
    original = rc.get(GATEWAYS, "gw-cloud")["spec"].get("exposeType", "")
    try:
        rc.patch(GATEWAYS, "gw-cloud", {"spec": {"exposeType": "LoadBalancer"}})
        rc.wait_for("an LB address for gw-cloud", lambda: bool(lb.assigned), timeout=30)
        (lb_ip,) = lb.assigned.values()

        def published() -> bool:
            status = rc.get(GATEWAYS, "gw-cloud").get("status", {})
            return any(ep.get("publicIP") == lb_ip for ep in status.get("activeEndpoints", []))
        rc.wait_for("gw-cloud's active endpoint to carry the LB address", published, timeout=30)
        # kube-proxy programs the controller's Service too (ClusterIP, NodePort) but leaves the LB address
        # alone: the cloud marked it ipMode Proxy. With ipMode VIP every node would DNAT its own IKE packets
        # for that address straight to the gateway's InternalIP, which NAT'd pools cannot reach.
        assert lb_ip not in svc.proxy.sync()
        edge_gw = rc.active_gateway_node("gw-edge-a")
        rc.wait_for("edge-a's tunnel to gw-cloud through the LB", lambda: rc.sas(edge_gw).get(
            "raven-gw-cloud", {}).get("remote-host") == lb_ip and rc.sas(edge_gw)["raven-gw-cloud"].get(
            "state") == "ESTABLISHED", timeout=60, interval=0.2)
        matrix = rc.wait_converged(timeout=90)
        assert matrix.green
        # Real traffic through the LB: pods in edge-a -> cloud ride the SA whose peer is the LB address.
        before = lb.packets()
        edge_pod = rc.cl.nodes[rc.member_node("edge-a")].pods[0]
        cloud_pod = rc.cl.nodes[rc.active_gateway_node("gw-cloud")].pods[0]
        answers = http_many(edge_pod.netns, [f"http://{cloud_pod.ip}:{WEB_PORT}/"] * 4)
        assert answers == [(200, cloud_pod.name)] * 4
        # IKE and ESP-in-UDP of the NAT'd pools both go through the LB (its DNAT counters see new flows only,
        # so the conntrack table is the place to look for established ones).
        flows = lb.ns.run(["conntrack", "-L", "-p", "udp", "--orig-dst", lb_ip], check=False).stdout if lb.ns else ""
        assert flows.count("dport=4500") >= 2 and before >= 2, (before, flows)

        old = rc.active_gateway_node("gw-cloud")
        t0 = time.monotonic()
        not_ready_at: list[float] = []
        set_ready = rc.set_node_ready

        def record(node: str, ready: bool) -> None:  # when failover_under_probe writes NotReady
            if not ready:
                not_ready_at.append(time.monotonic())
            set_ready(node, ready)
        monkeypatch.setattr(rc, "set_node_ready", record)
        result = rc.failover_under_probe("cloud", rc.member_node("edge-a"), port=19109)
        monkeypatch.undo()
        new = result.new
        moves = [e for e in lb.events if e.at >= t0]
        assert moves and moves[-1].old == rc.cl.nodes[old].ip and moves[-1].new == rc.cl.nodes[new].ip, lb.events
        assert result.resumed, result.probe
        rc.wait_for("edge-a's tunnel to the new cloud gateway, still through the LB", lambda: rc.sas(edge_gw).get(
            "raven-gw-cloud", {}).get("remote-host") == lb_ip and rc.sas(edge_gw)["raven-gw-cloud"].get(
            "state") == "ESTABLISHED", timeout=60, interval=0.2)
        outages = [round(o.length_s, 3) for o in result.probe.outages]
        MEASUREMENTS["lb_failover"] = {
            # seconds from the NotReady write (and the crashed node's link cut) to: the new election, a ping
            # through the new gateway, the LB's poll seeing the new Endpoints, its new DNAT in place (after
            # iptables-restore and conntrack -D); and the 10 ms probe's outages
            "old": old, "new": new, "elected_s": round(result.elected_s, 3), "traffic_s": round(result.traffic_s, 3),
            "lb_saw_endpoints_s": round(moves[-1].seen - not_ready_at[0], 3),
            "lb_retarget_s": round(moves[-1].at - not_ready_at[0], 3), "probe_outages_s": outages,
            "probe_loss": f"{result.probe.sent - result.probe.received}/{result.probe.sent}",
        }
        assert outages and max(outages) < 10, MEASUREMENTS["lb_failover"]
        assert rc.wait_converged(timeout=90).green
    finally:
        rc.patch(GATEWAYS, "gw-cloud", {"spec": {"exposeType": original or None}})
        rc.wait_for("the LB Service of gw-cloud to be gone", lambda: not any(
            s.get("spec", {}).get("type") == "LoadBalancer" for s in rc.api.api(lambda c: c.list(SERVICES))["items"]),
            timeout=30)
        rc.wait_for("the LB to release its address", lambda: not lb.assigned, timeout=10)
        lb.stop()
        assert not lb.errors or all("Connect" in e or "closed" in e for e in lb.errors), lb.errors
