"""Scenario 9: the same cluster with --vpn-driver=wireguard (no charon; each agent runs wireguard-go).

Its own cluster (the session cluster's topology: NAT pools edge-a/edge-b relayed through the relay routing by cost
chooses, gw-cloud or gw-edge-pub; the spare node and pool), lab prefix ``<RAVEN_E2E_PREFIX>w`` so it can run beside
the session cluster. What is shown: the pod matrix with direct and relayed pairs; the data plane chosen
(wireguard-go here: no kernel module) and why, in /readyz and the metrics; each gateway's WireGuard peers are its
direct peers only, allowed IPs their inner /32; a killed wireguard-go is restarted and traffic comes back; an agent
restart adopts the running wireguard-go without a lost packet; a gateway failover of a NAT'd pool under a 10 ms
probe (the new endpoint's key was published before it was elected); an operator weight moving the NAT-to-NAT pair
to the other relay; a node whose cluster secret is wrong cannot exchange traffic; a node whose key changed rejoins;
and the driver-neutral scenarios of the IPsec modules, run again on this cluster (bulk TCP without fragments, relay
failover, churn, bad input: `test_ipsec_scenario_over_wireguard`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.cluster import RavenCluster
from e2e.probe import ping
from e2e.tests import test_01_mtu, test_02_failover, test_04_churn, test_05_bad_input
from e2e.tests.conftest import MEASUREMENTS, PREFIX, SPARE_GATEWAY, SPARE_NODE, SPARE_POOL_NODE, e2e_spec
from e2e.tests.test_08_path_health import all_up, reports
from raven.agent.plan import node_source
from raven.api.constants import ANNOTATION_LINK_WEIGHT
from raven.api.pathreport import PathReport
from raven.dataplane.wireguard import DeviceInfo, Uapi, WireGuardUnavailable, pair_psk
from raven.kube.client import GATEWAYS, PATHREPORTS

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def wg(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    if os.geteuid() != 0:
        pytest.skip("end-to-end scenarios need root (network namespaces)")
    # The session cluster's topology (the spare node and pool too), so the churn scenarios run here as well.
    cluster = RavenCluster(e2e_spec(), prefix=f"{PREFIX}w", vpn_driver="wireguard", controllers=1,
                           hold_nodes={SPARE_NODE, SPARE_POOL_NODE}, hold_gateways={SPARE_GATEWAY})
    failed = True
    try:
        cluster.start()
        cluster.wait_converged(timeout=180)
        MEASUREMENTS["wireguard_start_to_green_matrix_s"] = round(cluster.elapsed(), 2)
        failed = False
        yield cluster
    finally:
        cluster.close(keep_logs=failed or request.session.testsfailed > 0 or os.environ.get("RAVEN_E2E_KEEP") == "1")


@pytest.fixture(autouse=True)
def green_after(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "wg" in request.fixturenames:
        request.getfixturevalue("wg").wait_converged(timeout=90)


def device(rc: RavenCluster, node: str) -> DeviceInfo:
    return asyncio.run(Uapi(rc.wireguard_socket(node)).get())


def published_key(rc: RavenCluster, gateway: str, node: str) -> str:
    """The key `node` (an endpoint of `gateway`) published: in its own PathReport, nowhere else."""
    assert node in {ep["nodeName"] for ep in rc.gateways()[gateway]["spec"]["endpoints"]}, (gateway, node)
    for obj in rc.list_objects(PATHREPORTS):
        report = PathReport.from_dict(obj)
        if report.name == node:
            return report.wireguard_public_key
    return ""


def status_keys(rc: RavenCluster, gateway: str) -> dict[str, str]:
    """node -> config.publicKey of the Gateway's active tunnel endpoints (the controller's copy peers read)."""
    return {ep["nodeName"]: str((ep.get("config") or {}).get("publicKey", ""))
            for ep in rc.gateways()[gateway]["status"]["activeEndpoints"] if ep["type"] == "tunnel"}


def hexkey(b64: str) -> str:
    return base64.b64decode(b64).hex()


def test_matrix_direct_and_relayed_over_wireguard(wg: RavenCluster) -> None:
    matrix = wg.ping_matrix(count=2)
    assert matrix.failed == []
    gw_a, gw_b = wg.active_gateway_node("gw-edge-a"), wg.active_gateway_node("gw-edge-b")
    relay, pub = wg.active_gateway_node("gw-cloud"), wg.active_gateway_node("gw-edge-pub")
    # Every node of a Gateway published its key in its PathReport (members too, so a failover finds it there);
    # the controller copied the active endpoints' keys into the status; no agent wrote a Gateway's spec.
    for gateway, nodes in (("gw-cloud", ("cloud-1", "cloud-2")), ("gw-edge-a", ("edge-a-1", "edge-a-2"))):
        for node in nodes:
            assert len(base64.b64decode(published_key(wg, gateway, node))) == 32, (gateway, node)
        assert status_keys(wg, gateway) == {n: published_key(wg, gateway, n) for n in status_keys(wg, gateway)}
        assert all("publicKey" not in (ep.get("config") or {}) for ep in wg.gateways()[gateway]["spec"]["endpoints"])
    # NAT <-> NAT: no peer between edge-a and edge-b; each has the relay and edge-pub, allowed IPs one /32 each.
    dev_a, dev_b = device(wg, gw_a), device(wg, gw_b)
    key = {n: hexkey(published_key(wg, g, n)) for g, n in (("gw-edge-a", gw_a), ("gw-edge-b", gw_b),
                                                            ("gw-cloud", relay), ("gw-edge-pub", pub))}
    assert set(dev_a.peers) == {key[relay], key[pub]}
    assert set(dev_b.peers) == {key[relay], key[pub]}
    assert all(len(p.allowed_ips) == 1 and next(iter(p.allowed_ips)).endswith("/32") for p in dev_a.peers.values())
    assert dev_a.peers[key[relay]].preshared_key == pair_psk(wg.psk, gw_a, relay).hex()
    # The relay answers edge-a under NAT: the endpoint it uses is the one it learnt (edge-a's router).
    relay_dev = device(wg, relay)
    assert relay_dev.peers[key[gw_a]].endpoint is not None
    assert relay_dev.peers[key[gw_a]].endpoint.startswith("198.18.0.")  # r-edge-a's WAN address, not 192.168.11.x
    # Real traffic edge-a -> edge-b crosses a relay: in each direction the one its source gateway chose by cost
    # (routing by measured cost: the cloud or edge-pub, whichever is cheaper; not necessarily the same both ways).
    pod_a, pod_b = wg.cl.nodes[gw_a].pods[0], wg.cl.nodes[gw_b].pods[0]
    node_of = {k: n for n, k in key.items()}
    used = {gw_a: relay_used(wg, gw_a, "gw-edge-b", pod_b.ip, pod_a.ip, node_of),
            gw_b: relay_used(wg, gw_b, "gw-edge-a", pod_a.ip, pod_b.ip, node_of)}
    assert set(used.values()) <= {relay, pub}, used
    before = {n: device(wg, n).peers for n in set(used.values())}
    r = ping(pod_a.netns, pod_b.ip, count=40, interval=0.01, wait=1)
    assert r.received == 40, r
    after = {n: device(wg, n).peers for n in set(used.values())}
    for node, via in used.items():  # echo requests from edge-a, replies from edge-b, each at its relay
        assert after[via][key[node]].rx_bytes - before[via][key[node]].rx_bytes >= 40 * 84, (node, via)
    assert used == {gw_a: relay_used(wg, gw_a, "gw-edge-b", pod_b.ip, pod_a.ip, node_of),
                    gw_b: relay_used(wg, gw_b, "gw-edge-a", pod_a.ip, pod_b.ip, node_of)}  # no move meanwhile


def test_an_operator_weight_moves_nat_to_nat_traffic_to_the_other_relay(wg: RavenCluster) -> None:
    """Both relays carry the pair in turn: the one in use gets a link weight, the pair moves to the other (after the
    hold time) and its bytes cross that relay's peers. (Without the weight the pair stays there: both relays now cost
    about the same, and a move needs a clear gain, hysteresis.)"""
    gw_a, gw_b = wg.active_gateway_node("gw-edge-a"), wg.active_gateway_node("gw-edge-b")
    gateway_of = {wg.active_gateway_node(g): g for g in ("gw-cloud", "gw-edge-pub")}
    key = {n: hexkey(published_key(wg, g, n)) for g, n in [("gw-edge-a", gw_a), ("gw-edge-b", gw_b),
                                                            *((g, n) for n, g in gateway_of.items())]}
    node_of = {k: n for n, k in key.items()}
    pod_a, pod_b = wg.cl.nodes[gw_a].pods[0], wg.cl.nodes[gw_b].pods[0]
    first = relay_used(wg, gw_a, "gw-edge-b", pod_b.ip, pod_a.ip, node_of)
    other = next(n for n in gateway_of if n != first)

    def both_via(node: str) -> bool:
        return (relay_used(wg, gw_a, "gw-edge-b", pod_b.ip, pod_a.ip, node_of, wait=False) == node
                and relay_used(wg, gw_b, "gw-edge-a", pod_a.ip, pod_b.ip, node_of, wait=False) == node)

    wg.patch(GATEWAYS, gateway_of[first], {"metadata": {"annotations": {ANNOTATION_LINK_WEIGHT: "300"}}})
    try:
        wg.wait_for(f"the pair moved to {other}", lambda: both_via(other), timeout=60)
        assert relay_used(wg, gw_a, "gw-edge-b", pod_b.ip, pod_a.ip, node_of) == other
        before = device(wg, other).peers
        r = ping(pod_a.netns, pod_b.ip, count=40, interval=0.01, wait=1)
        assert r.received == 40, r
        after = device(wg, other).peers
        for node in (gw_a, gw_b):
            assert after[key[node]].rx_bytes - before[key[node]].rx_bytes >= 40 * 84, (node, other)
    finally:
        wg.patch(GATEWAYS, gateway_of[first], {"metadata": {"annotations": {ANNOTATION_LINK_WEIGHT: None}}})


def relay_used(rc: RavenCluster, gw: str, dst_gateway: str, dst: str, src: str, node_of: dict[str, str],
               wait: bool = True) -> str:
    """The node relaying `gw`'s traffic from pod `src` to pod `dst` (a pool of `dst_gateway`): the forwarded
    route's next hop on raven1 is one WireGuard peer's inner /32 (`node_of`: peer key -> node), and `gw`'s
    PathReport names that peer's Gateway as `via` of its path to `dst_gateway` (waited for, unless not `wait`)."""
    route = rc.route_get(gw, dst, src=src, iif="vp0")
    found = re.search(r"\bvia (\S+) dev raven1\b", route)
    assert found is not None, route
    peers = [k for k, p in device(rc, gw).peers.items() if p.allowed_ips == {f"{found.group(1)}/32"}]
    assert len(peers) == 1 and peers[0] in node_of, (route, peers)
    node = node_of[peers[0]]

    def reported() -> bool:
        paths = {p.gateway: p.via for p in reports(rc)[gw].status.paths}
        return paths.get(dst_gateway) not in (None, "") and rc.active_gateway_node(paths[dst_gateway]) == node

    if wait:
        rc.wait_for(f"{gw}'s PathReport naming {node}'s Gateway as its relay to {dst_gateway}", reported, timeout=30)
    return node


@pytest.mark.parametrize("role", ["gateway", "member"])
def test_the_host_network_reaches_remote_pods_over_wireguard(wg: RavenCluster, role: str) -> None:
    """A process on the node itself (no pod), relayed and direct: the routes' `src` is the node source (the
    node's own address in its pod CIDR, a /32 on raven0/raven1), which the remote pool routes back and whose
    VXLAN frames the ingress filter admits from raven-wg0."""
    node = wg.active_gateway_node("gw-edge-a") if role == "gateway" else wg.member_node("edge-a")
    ns = wg.cl.nodes[node].netns
    src = node_source([wg.cl.nodes[node].pod_cidr])
    assert src is not None
    for remote in (wg.active_gateway_node("gw-edge-b"), wg.member_node("cloud")):  # relayed, direct
        dst = wg.cl.nodes[remote].pods[0]
        route = wg.route_get(node, dst.ip)
        assert f"src {src}" in route, route
        r = ping(ns, dst.ip, count=5, interval=0.05, wait=1)
        assert r.received == 5, (node, remote, r)


def test_killed_wireguard_go_is_restarted_and_traffic_resumes(wg: RavenCluster) -> None:
    gw = wg.active_gateway_node("gw-edge-pub")
    member = wg.member_node("cloud")
    src, dst = wg.cl.nodes[member].pods[0], wg.cl.nodes[gw].pods[0]
    pid = _wg_pid(wg, gw)
    assert pid is not None
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wg.wait_for("a new wireguard-go", lambda: _wg_pid(wg, gw) not in (None, pid), timeout=30)
    resumed = wg.wait_for("traffic through the restarted wireguard-go",
                          lambda: ping(src.netns, dst.ip, count=1, wait=0.3).ok, timeout=60, interval=0.05)
    MEASUREMENTS["wireguard_go_kill_to_traffic_s"] = round(time.monotonic() - t0, 2)
    assert resumed < 60
    assert "wireguard-go is gone" in wg.agents[gw].logs()


def _wg_pid(rc: RavenCluster, node: str) -> int | None:
    """The wireguard-go process in the node's namespace (`ip netns pids`), None when there is none."""
    ns = rc.cl.nodes[node].netns.name
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout.split()
    for pid in out:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "wireguard-go":
                return int(pid)
        except OSError:
            continue
    return None


def test_agent_restart_adopts_wireguard_go_without_loss(wg: RavenCluster) -> None:
    gw = wg.active_gateway_node("gw-edge-a")
    pid = _wg_pid(wg, gw)
    dst = wg.active_gateway_node("gw-cloud")
    result = wg.restart_agent_under_probe(gw, wg.member_node("edge-a"), dst, port=18391)
    MEASUREMENTS["wireguard_agent_restart_lost"] = result.lost
    assert _wg_pid(wg, gw) == pid  # the same wireguard-go, adopted
    assert "wireguard-go adopted" in wg.agents[gw].logs()
    assert result.lost == 0, result


def test_node_with_the_wrong_cluster_secret_cannot_exchange_traffic(wg: RavenCluster) -> None:
    gw = wg.active_gateway_node("gw-edge-pub")
    relay = wg.active_gateway_node("gw-cloud")
    src, dst = wg.cl.nodes[gw].pods[0], wg.cl.nodes[relay].pods[0]
    agent = wg.agents[gw]
    wrong = "wrong-" + wg.psk
    # Health failover (the default) would replace the gateway that cannot exchange traffic, and the pod would then
    # reach the relay through the standby: the standby says it is not ready meanwhile, so the node keeps its role.
    standby = wg.member_node("edge-pub")
    wg.set_node_ready(standby, False)
    try:
        agent.stop()
        wg.write_psk(gw, wrong)
        # Sessions up now would outlive the new keys; a fresh wireguard-go starts with none.
        pid = _wg_pid(wg, gw)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        agent.start()
        relay_key = hexkey(published_key(wg, "gw-cloud", relay))
        # First see the agent applied the wrong-secret key (the event was processed) ...

        def wrong_key_in_place() -> bool:
            try:
                peer = device(wg, gw).peers.get(relay_key)
            except WireGuardUnavailable:  # the new wireguard-go is still starting
                return False
            return peer is not None and peer.preshared_key == pair_psk(wrong, gw, relay).hex()

        wg.wait_for("the wrong preshared key in place", wrong_key_in_place, timeout=60)
        # ... then no packet goes through, and no handshake completes (its initiations are sent and ignored).
        r = ping(src.netns, dst.ip, count=20, interval=0.1, wait=1)
        assert r.received == 0, r
        peer = device(wg, gw).peers[relay_key]
        assert peer.last_handshake == 0 and peer.tx_bytes > 0
    finally:
        agent.stop()
        wg.write_psk(gw, wg.psk)
        agent.start()
        wg.set_node_ready(standby, True)
    wg.wait_for("traffic with the right secret", lambda: ping(src.netns, dst.ip, count=1, wait=0.5).ok, timeout=90)


def test_a_node_whose_key_changed_rejoins(wg: RavenCluster) -> None:
    gw = wg.active_gateway_node("gw-edge-b")
    old = published_key(wg, "gw-edge-b", gw)
    agent = wg.agents[gw]
    # While the agent is away its tunnels are down: health failover would elect the standby before the node with
    # the new key is back (seen under load), and the relay would then never peer with that key. The standby says
    # it is not ready meanwhile, so the rotated node keeps its role and must rejoin with its new key.
    standby = wg.member_node("edge-b")
    wg.set_node_ready(standby, False)
    try:
        agent.stop()
        pid = _wg_pid(wg, gw)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        wg.wireguard_key_file(gw).unlink()  # rotation: delete the key file, restart the agent
        agent.start()
        wg.wait_for("the new key published", lambda: published_key(wg, "gw-edge-b", gw) not in ("", old),
                    timeout=60)
        new = published_key(wg, "gw-edge-b", gw)
        relay = wg.active_gateway_node("gw-cloud")
        wg.wait_for("the relay peered with the new key", lambda: hexkey(new) in device(wg, relay).peers, timeout=60)
        # (The relay's wireguard-go was not touched: its socket answers throughout.)
        assert hexkey(old) not in device(wg, relay).peers
        assert wg.active_gateway_node("gw-edge-b") == gw
        src, dst = wg.cl.nodes[gw].pods[0], wg.cl.nodes[relay].pods[0]
        took = wg.wait_for("traffic with the new key", lambda: ping(src.netns, dst.ip, count=1, wait=0.5).ok,
                           timeout=60)
    finally:
        wg.set_node_ready(standby, True)
    MEASUREMENTS["wireguard_key_rotation_to_traffic_s"] = round(took, 2)


def test_gateway_failover_of_a_nat_pool_under_a_probe(wg: RavenCluster) -> None:
    dst = wg.member_node("cloud")
    r = wg.failover_under_probe("edge-a", dst, port=18392, dead=True)
    MEASUREMENTS["wireguard_failover_nat_pool_crashed"] = {
        "elected_s": round(r.elected_s, 3), "write_to_traffic_s": round(r.traffic_s, 3),
        "outage_s": round(r.probe.max_outage_s, 3), "lost": r.probe.lost, "sent": r.probe.sent}
    assert r.resumed, f"traffic did not resume through {r.new}: {r.probe}"
    # The peers now hold the new endpoint's key, not the old one's: one peer out, one in.
    new_key = hexkey(published_key(wg, "gw-edge-a", r.new))
    old_key = hexkey(published_key(wg, "gw-edge-a", r.old))
    relay = wg.active_gateway_node("gw-cloud")
    wg.wait_for("the relay peered with the new endpoint",
                lambda: new_key in device(wg, relay).peers and old_key not in device(wg, relay).peers, timeout=30)
    # Traffic really goes through the new endpoint's device.
    peer = device(wg, r.new).peers[hexkey(published_key(wg, "gw-cloud", relay))]
    assert peer.tx_bytes > 0 and peer.rx_bytes > 0
    # Restore the original endpoint for the next scenario (sticky election: make the new one go away).
    wg.set_node_ready(r.new, False)
    try:
        wg.wait_for("gw-edge-a back on its first node", lambda: wg.active_endpoints()["gw-edge-a"] == [r.old],
                    timeout=30)
    finally:
        wg.set_node_ready(r.new, True)


def test_cleanup_stops_wireguard_go_and_keeps_the_key(wg: RavenCluster) -> None:
    node = wg.member_node("edge-pub")
    agent = wg.agents[node]
    key = wg.wireguard_key_file(node).read_text()
    assert _wg_pid(wg, node) is not None  # members run it too (a failover needs no start)
    agent.stop()
    assert _wg_pid(wg, node) is not None  # an agent stopping leaves it running
    # Without --vpn-driver=wireguard: cleanup removes what Raven owns whatever the driver flag says.
    wg.cleanup_agent(node, drop=("--vpn-driver=wireguard",))
    assert _wg_pid(wg, node) is None
    assert wg.cl.nodes[node].netns.ip("link", "show", "raven-wg0", check=False).returncode != 0
    assert not wg.wireguard_socket(node).exists()
    assert wg.wireguard_key_file(node).read_text() == key  # the identity stays
    agent.start()
    wg.wait_for("wireguard-go started again", lambda: _wg_pid(wg, node) is not None, timeout=30)
    assert published_key(wg, "gw-edge-pub", node) != ""


def test_path_health_reports_every_wireguard_peer_up(wg: RavenCluster) -> None:
    wg.wait_for("every agent's PathReport with all targets up", lambda: all_up(wg), timeout=60)
    rs = reports(wg)
    for gateway in ("gw-cloud", "gw-edge-a", "gw-edge-b", "gw-edge-pub"):
        node = wg.active_gateway_node(gateway)
        r = rs[node]
        assert r.status.role == "gateway"
        # One peer target per WireGuard peer of the device, each up (probed through raven1 over raven-wg0).
        assert len(r.status.targets) == len(device(wg, node).peers) > 0
        assert all(t.kind == "peer" and t.state == "up" for t in r.status.targets)


def test_the_chosen_data_plane_and_its_reason_are_in_readyz_and_the_metrics(wg: RavenCluster) -> None:
    """What each start chose and why is in its log line; /readyz shows the current start's choice and reason (an
    agent restarted earlier in this module adopted the wireguard-go it had left running) and the process now."""
    node = wg.active_gateway_node("gw-edge-a")
    starts = data_plane_starts(wg, node)
    # The agent's first start: no wireguard-go ran yet and this kernel has no WireGuard; the kernel's refusal is why.
    assert not starts[0][0] and starts[0][1].startswith(KERNEL_REFUSAL), starts
    assert all(reason == ADOPTED for adopted, reason in starts[1:] if adopted), starts
    check_data_plane(wg, node, starts[-1])
    # An agent of the module never restarted (the gateway's too, when this test runs alone) shows the first form.
    fresh = sorted(n for n in wg.agents if len(data_plane_starts(wg, n)) == 1 and wg.agent_ready(n)[0])
    assert fresh, "every agent was restarted"
    first = data_plane_starts(wg, fresh[0])[0]
    assert not first[0] and first[1].startswith(KERNEL_REFUSAL), (fresh[0], first)
    check_data_plane(wg, fresh[0], first)


KERNEL_REFUSAL = "no kernel WireGuard (RTM_NEWLINK raven-wg0 type wireguard: "  # then the kernel's error
ADOPTED = "a running wireguard-go answers on /run/wireguard/raven-wg0.sock (adopted)"
_START = re.compile(r'"wireguard data plane" .*\bimplementation=(\S+) reason="([^"]*)" adopted=(True|False) ')


def data_plane_starts(rc: RavenCluster, node: str) -> list[tuple[bool, str]]:
    """(adopted, reason) of each start of the node's agent, oldest first, from its `wireguard data plane` lines."""
    starts = []
    for ln in rc.agents[node].logs().splitlines():
        if '"wireguard data plane"' in ln:
            found = _START.search(ln)
            assert found is not None and found.group(1) == "wireguard-go", ln
            starts.append((found.group(3) == "True", found.group(2)))
    assert starts, f"no wireguard data plane line in {node}'s log"
    return starts


def check_data_plane(rc: RavenCluster, node: str, start: tuple[bool, str]) -> None:
    """/readyz names wireguard-go with the reason of the agent's last start, adopted or the running process's pid
    (a wireguard-go the agent restarted is its own); the metric says wireguard-go, not the kernel."""
    ok, body = rc.agent_ready(node, verbose=True)
    assert ok, body
    line = next((ln for ln in body.splitlines() if ln.startswith("[+]wireguard ok: ")), "")
    found = re.fullmatch(r"\[\+\]wireguard ok: wireguard-go \((adopted|pid \d+), restarts (\d+)\) for raven-wg0: (.*)",
                         line)
    assert found is not None, body
    adopted, reason = start
    how = "adopted" if adopted and found.group(2) == "0" else f"pid {_wg_pid(rc, node)}"
    assert (found.group(1), found.group(3)) == (how, reason), (node, line, start)
    m = rc.metrics(f"agent/{node}")
    assert m.get('raven_agent_wireguard_implementation{implementation="wireguard-go"}') == 1.0
    assert 'raven_agent_wireguard_implementation{implementation="kernel"}' not in m


# The IPsec modules' scenarios that hold for any driver, run on this cluster (each module's `rc` is this one).
IPSEC_SCENARIOS = {
    "bulk-tcp-relayed": lambda rc: test_01_mtu.test_bulk_tcp_is_never_fragmented_with_default_flags(rc, "relayed"),
    "relay-failover": test_02_failover.test_relay_failover_keeps_nat_to_nat_traffic_flowing,
    "node-joins-and-leaves": test_04_churn.test_node_joining_a_pool_becomes_reachable_and_leaving_removes_its_routes,
    "pool-joins-and-leaves": test_04_churn.test_new_pool_joins_the_matrix_and_leaves_it_cleanly,
    "invalid-gateway": test_05_bad_input.test_invalid_gateway_is_reported_and_the_rest_keeps_working,
    "node-without-pod-cidr": test_05_bad_input.test_node_without_pod_cidr_is_reported_and_the_rest_keeps_working,
}


@pytest.mark.parametrize("scenario", sorted(IPSEC_SCENARIOS))
def test_ipsec_scenario_over_wireguard(wg: RavenCluster, scenario: str) -> None:
    t0 = time.monotonic()
    IPSEC_SCENARIOS[scenario](wg)
    MEASUREMENTS[f"wireguard_scenario_{scenario}_s"] = round(time.monotonic() - t0, 1)
