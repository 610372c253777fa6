"""Scenario 8 (issue 10, hole 1): only tunnel traffic enters the overlay.

Hand-built VXLAN frames (e2e/inject.py) are sent at the cloud pool's active gateway:
- A: from the WAN (the control-plane host: on the WAN, no node of the cluster) in plaintext to the raven1
  port (VNI 201), inner source spoofed from another pool, to a pod behind the gateway;
- B: from the WAN to the raven0 port (VNI 200), inner source spoofed from a member of the pool, to a pod of a
  third pool (the gateway would forward it into the IPsec tunnel);
- C: from a member node of the pool (its real node IP) to the raven0 port, inner source from another pool;
- D: from a peer gateway, through its real IPsec SA, to the raven1 port, inner source from a pool that is
  not routed via that peer.
Each is first shown delivered with the filter out of the way (the agent stopped, its jumps removed: the
attack is real and the listeners work), then, with the agent's filter back, dropped: the DROP counter of
the chain meant to stop it has counted the frames, and the victim's listener got none of them.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from e2e.cluster import RavenCluster
from e2e.netlab import Netns, Process

pytestmark = [pytest.mark.root, pytest.mark.slow]

PORT = 18099  # the victims' UDP listeners


@dataclass(frozen=True)
class Attack:
    name: str
    sender: Netns
    to: str  # host:port
    vni: int
    dst_mac: str
    src: str  # the spoofed inner source
    victim: str  # pod name
    bind: str = ""
    drop_chain: str = ""  # the chain whose final DROP must count the frames


def _link_mac(ns: Netns, ifname: str) -> str:
    return str(json.loads(ns.ip("-j", "link", "show", "dev", ifname).stdout)[0]["address"])


def _inner(ns: Netns) -> str:
    info = json.loads(ns.ip("-j", "-4", "addr", "show", "dev", "raven1").stdout)[0]
    return str(info["addr_info"][0]["local"])


def _drops(ns: Netns, chain: str) -> int:
    out = ns.run(["iptables", "-w", "-t", "mangle", "-L", chain, "-v", "-x", "-n"]).stdout.splitlines()
    last = out[-1].split()
    assert last[2] == "DROP", out
    return int(last[0])


def _jumps(ns: Netns) -> bool:
    save = ns.run(["iptables-save", "-t", "mangle"]).stdout
    return "-A INPUT -j RAVEN-INGRESS" in save and "-A PREROUTING -j RAVEN-OVERLAY" in save


_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(4096)
    print(addr[0], data.decode(errors="replace"), flush=True)
"""


class Listener:
    def __init__(self, rc: RavenCluster, pod: str, timeout: float = 10.0) -> None:
        self.proc: Process = rc.cl.pods[pod].netns.popen(
            [sys.executable, "-c", _LISTENER, str(PORT)], name=f"ingress-listener-{secrets.token_hex(2)}"
        )
        rc.wait_for(f"listener in {pod}", lambda: "ready" in self.output(), timeout=timeout)

    def output(self) -> str:
        return self.proc.stdout_path.read_text(errors="replace") if self.proc.stdout_path.exists() else ""

    def got(self, token: str) -> bool:
        return token in self.output()


def _inject(rc: RavenCluster, a: Attack, token: str, count: int = 5) -> None:
    pod = rc.cl.pods[a.victim]
    argv = [
        sys.executable,
        "-m",
        "e2e.inject",
        "--to",
        a.to,
        "--vni",
        str(a.vni),
        "--dst-mac",
        a.dst_mac,
        "--src",
        a.src,
        "--dst",
        pod.ip,
        "--dport",
        str(PORT),
        "--payload",
        token,
        "--count",
        str(count),
    ]
    if a.bind:
        argv += ["--bind", a.bind]
    a.sender.run(argv)


@pytest.fixture
def attacks(rc: RavenCluster) -> Iterator[tuple[str, list[Attack]]]:
    nodes = rc.cl.nodes
    gw = rc.active_gateway_node("gw-cloud")
    member = rc.member_node("cloud")
    gw_ns = nodes[gw].netns
    gw_ip = nodes[gw].ip
    peer = rc.active_gateway_node("gw-edge-pub")  # public like the cloud: a direct SA between them
    edge_a_pod = nodes[rc.active_gateway_node("gw-edge-a")].pods[0]
    edge_b_pod = nodes[rc.active_gateway_node("gw-edge-b")].pods[0]
    mac0, mac1 = _link_mac(gw_ns, "raven0"), _link_mac(gw_ns, "raven1")
    victim = nodes[gw].pods[0].name
    wan = rc.cl.control_plane
    yield (
        gw,
        [
            Attack(
                "A wan->raven1", wan, f"{gw_ip}:4473", 201, mac1, edge_a_pod.ip, victim, drop_chain="RAVEN-INGRESS-T"
            ),
            Attack(
                "B wan->raven0->tunnel",
                wan,
                f"{gw_ip}:4472",
                200,
                mac0,
                nodes[member].pods[0].ip,
                nodes[peer].pods[0].name,
                drop_chain="RAVEN-INGRESS-P",
            ),
            Attack(
                "C member->raven0 spoofed",
                nodes[member].netns,
                f"{gw_ip}:4472",
                200,
                mac0,
                edge_b_pod.ip,
                victim,
                drop_chain="RAVEN-OVERLAY-P",
            ),
            Attack(
                "D peer SA->raven1 spoofed",
                nodes[peer].netns,
                f"{_inner(gw_ns)}:4473",
                201,
                mac1,
                edge_a_pod.ip,
                victim,
                bind=_inner(nodes[peer].netns),
                drop_chain="RAVEN-OVERLAY-T",
            ),
        ],
    )


def test_injected_vxlan_frames_are_delivered_without_the_filter_and_dropped_with_it(
    rc: RavenCluster, attacks: tuple[str, list[Attack]]
) -> None:
    gw, cases = attacks
    gw_ns = rc.cl.nodes[gw].netns
    listeners = {v: Listener(rc, v) for v in sorted({a.victim for a in cases})}
    agent = rc.process(f"agent/{gw}")
    try:
        assert _jumps(gw_ns), "the agent's filter is not installed on the gateway"
        # 1. Without the filter (agent stopped so it cannot put it back; its data plane stays): delivered.
        agent.stop()
        gw_ns.run(["iptables", "-w", "-t", "mangle", "-D", "INPUT", "-j", "RAVEN-INGRESS"])
        gw_ns.run(["iptables", "-w", "-t", "mangle", "-D", "PREROUTING", "-j", "RAVEN-OVERLAY"])
        for a in cases:
            token = f"open-{a.name[0]}-{secrets.token_hex(4)}"
            _inject(rc, a, token)
            rc.wait_for(
                f"{a.name} delivered without the filter", lambda t=token, v=a.victim: listeners[v].got(t), timeout=10
            )
    finally:
        agent.start()
    rc.wait_for("agent put its filter back", lambda: _jumps(gw_ns), timeout=30)
    rc.wait_for(f"agent on {gw} ready", lambda: rc.agent_ready(gw)[0], timeout=30)

    # 2. With the filter: every frame reaches the chain's DROP, none reaches a pod.
    for a in cases:
        token = f"shut-{a.name[0]}-{secrets.token_hex(4)}"
        before = _drops(gw_ns, a.drop_chain)
        _inject(rc, a, token, count=5)
        rc.wait_for(
            f"{a.name} dropped by {a.drop_chain}",
            lambda a=a, b=before: _drops(gw_ns, a.drop_chain) >= b + 5,
            timeout=10,
        )
        time.sleep(0.2)  # the drops are counted; give a (wrongly) delivered copy time to show anyway
        assert not listeners[a.victim].got(token), f"{a.name}: delivered through the filter"
    for lst in listeners.values():
        lst.proc.stop()


def test_overlay_traffic_still_flows_through_the_filter(rc: RavenCluster) -> None:
    # Direct, relayed and member pairs: the whole matrix (also checked after every scenario).
    gw_ns = rc.cl.nodes[rc.active_gateway_node("gw-cloud")].netns
    before = _drops(gw_ns, "RAVEN-OVERLAY-T")
    matrix = rc.ping_matrix(count=2)
    assert matrix.failed == []
    # No legitimate packet of the matrix was taken for a spoofed one.
    assert _drops(gw_ns, "RAVEN-OVERLAY-T") == before
