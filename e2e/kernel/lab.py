"""The kernel tier's two-pool lab: the production data path on Debian's stock kernel, inside the VM of e2e/vm.py.

Run with ``make test-kernel`` (``python -m e2e.vm e2e/kernel/lab.py``); never collected on the host (the file
name is not ``test_*``: the host kernel has no ESP). Topology ``e2e/topologies/kernel.yaml``: pools cloud
(routed) and edge-a (behind a MASQUERADE router), each with two tunnel candidates and one member node, one
controller, one agent per node started exactly as its DaemonSet pod would be (`RavenCluster`), and for the
IPsec driver one charon per node running the strongswan.conf the DaemonSet ships
(`e2e.netlab.production_charon_conf`: kernel-netlink, no libipsec), so ESP is done by the kernel's xfrm states.

Proven here: charon and the kernel hold the SAs (no ipsec0, ESP-in-UDP states whose counters move); the pod
matrix; the overlay ingress filter taking its policy-match form (`-m policy --dir in --pol ipsec`) with
plaintext from the WAN and a peer's spoofed frame through its real SA both dropped; no IP fragments under bulk
TCP; an agent restart on the gateway and on the member under a 10 ms probe with zero loss; a gateway failover
of the NAT'd pool; latency added with tc netem.

`RAVEN_VM_VPN_DRIVER` (e2e/vm.py ``--vpn-driver``) picks the agents' VPN driver; the IPsec-specific checks skip
for another driver, the matrix, restart, failover, MTU and netem scenarios apply to every driver.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster import RavenCluster
from e2e.iperf import FRAGMENT_COUNTERS, delta, iperf3_run, snmp
from e2e.netlab import Netns
from e2e.probe import ping
from e2e.tests.test_08_ingress import Attack, Listener, _drops, _inject, _inner, _link_mac
from tests.conftest import pytest_runtest_makereport  # noqa: F401  (CI=true: a root skip fails the run)

pytestmark = [pytest.mark.root, pytest.mark.slow]

PREFIX = "rvk"
VPN_DRIVER = os.environ.get("RAVEN_VM_VPN_DRIVER", "ipsec")
# Python is ~16x slower under TCG: every wait is generous, the scenarios few.
CONVERGE_S = 900.0
STEP_S = 300.0
# Path health at TCG speed: pings between namespaces take ~1.5 s inside a VM on a loaded machine, and the default
# probes (every 0.2 s, lost after 0.5 s) report every path down and fail healthy gateways over. The failover here
# is driven by Node readiness (a crashed gateway), so the controller's health failover is off.
SLOW_HEALTH = ("--health-interval", "2", "--health-timeout", "5")
PATIENCE = 8.0  # RavenCluster's own waits (HTTP polls, a probe's first answer) x8
MEASUREMENTS: dict[str, Any] = {}
ipsec_only = pytest.mark.skipif(VPN_DRIVER != "ipsec", reason=f"IPsec kernel path; this run's driver is {VPN_DRIVER}")


@pytest.fixture(scope="module")
def rc(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    if os.environ.get("RAVEN_VM_GUEST") != "1":
        pytest.fail("e2e/kernel/lab.py runs inside the kernel tier's VM: make test-kernel (python -m e2e.vm ...)")
    if os.geteuid() != 0:
        pytest.skip("the kernel lab needs root (network namespaces)")
    run_dir = Path(os.environ["RAVEN_VM_RUN_DIR"]) / "lab"
    cluster = RavenCluster("kernel", prefix=PREFIX, run_dir=run_dir, controllers=1, lease_duration=15.0,
                           agent_args=SLOW_HEALTH, controller_args=("--no-health-failover",),
                           renew_deadline=10.0, retry_period=2.0, vpn_driver=VPN_DRIVER,
                           charon_backend="kernel" if VPN_DRIVER == "ipsec" else "libipsec", patience=PATIENCE)
    t0 = time.monotonic()
    try:
        cluster.start()
        cluster.wait_converged(timeout=CONVERGE_S)
        MEASUREMENTS["start_to_green_matrix_s"] = round(time.monotonic() - t0, 1)
        yield cluster
    finally:
        cluster.close(keep_logs=True)
        # A test module's pytest_terminal_summary is no hook: the runner prints this file on the host.
        out = os.environ.get("RAVEN_VM_OUT")
        if out:
            (Path(out) / "measurements.json").write_text(json.dumps(MEASUREMENTS, indent=1, sort_keys=True) + "\n")


@pytest.fixture(autouse=True)
def healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each scenario the cluster is back to a green matrix (a scenario restores what it changed)."""
    yield
    if "rc" in request.fixturenames:
        request.getfixturevalue("rc").wait_converged(timeout=CONVERGE_S)


# ----------------------------------------------------------------------------------------------
# what the kernel holds


_XFRM_COUNTERS = re.compile(r"(\d+)\(bytes\), (\d+)\(packets\)")


def esp_states(ns: Netns) -> list[dict[str, Any]]:
    """The namespace's xfrm states (`ip -s xfrm state`): proto, whether UDP-encapsulated, bytes and packets."""
    out = ns.ip("-s", "xfrm", "state").stdout
    states: list[dict[str, Any]] = []
    for block in re.split(r"\n(?=src )", out.strip()):
        if not block.startswith("src "):
            continue
        counters = _XFRM_COUNTERS.search(block.split("lifetime current:", 1)[-1])
        states.append({
            "esp": re.search(r"\bproto esp\b", block) is not None,
            "encap": re.search(r"\bencap type espinudp\b", block) is not None,
            "bytes": int(counters.group(1)) if counters else 0,
            "packets": int(counters.group(2)) if counters else 0,
        })
    return states


def esp_packets(rc: RavenCluster, node: str) -> int:
    return sum(s["packets"] for s in esp_states(rc.cl.nodes[node].netns) if s["esp"])


def active_gateways(rc: RavenCluster) -> list[str]:
    return [rc.active_gateway_node(g) for g in ("gw-cloud", "gw-edge-a")]


def members(rc: RavenCluster) -> list[str]:
    """The nodes that are no Gateway endpoint (cloud-3, edge-a-3)."""
    endpoints = {ep["nodeName"] for g in rc.gateways().values() for ep in g["spec"]["endpoints"]}
    return sorted(n for n in rc.registered if n not in endpoints)


def ingress_tunnel_counters(ns: Netns) -> dict[str, int]:
    """Packets of RAVEN-INGRESS-T's rules: ``libipsec`` (-i ipsec0), ``policy`` (--pol ipsec), ``drop``."""
    lines = ns.run(["iptables", "-w", "-t", "mangle", "-L", "RAVEN-INGRESS-T", "-v", "-x", "-n"]).stdout.splitlines()
    out: dict[str, int] = {}
    for line in lines[2:]:
        fields = line.split()
        if "policy match dir in pol ipsec" in line:
            out["policy"] = int(fields[0])
        elif "ipsec0" in fields:
            out["libipsec"] = int(fields[0])
        elif len(fields) > 2 and fields[2] == "DROP":
            out["drop"] = int(fields[0])
    return out


# ----------------------------------------------------------------------------------------------
# scenarios


@ipsec_only
def test_charon_runs_the_shipped_conf_and_the_kernel_holds_the_esp_sas(rc: RavenCluster) -> None:
    conf = (Path("/etc/netns") / f"{PREFIX}-cloud-1" / "strongswan.conf").read_text()
    assert "kernel-libipsec {\n      load = no" in conf and "load =" not in conf.split("plugins", 1)[0], conf
    for node in sorted(rc.registered):
        with rc.charon(node).session() as s:
            plugins = [p.decode() if isinstance(p, bytes) else str(p) for p in s.stats()["plugins"]]
        assert "kernel-netlink" in plugins and "kernel-libipsec" not in plugins, (node, plugins)
        assert rc.link_packets(node, "ipsec0") is None, f"{node} has libipsec's ipsec0"
    for gw in active_gateways(rc):
        states = esp_states(rc.cl.nodes[gw].netns)
        # One CHILD_SA: an inbound and an outbound ESP state, UDP-encapsulated (edge-a is behind NAT).
        assert sum(s["esp"] and s["encap"] for s in states) >= 2, (gw, states)
        assert rc.sas(gw), f"charon on {gw} holds no IKE_SA"


def test_pod_matrix(rc: RavenCluster) -> None:
    before = {gw: esp_packets(rc, gw) for gw in active_gateways(rc)} if VPN_DRIVER == "ipsec" else {}
    matrix = rc.ping_matrix(count=2)
    assert matrix.failed == [], matrix.failed
    MEASUREMENTS["matrix_pairs"] = len(matrix.results)
    for gw, n in before.items():
        moved = esp_packets(rc, gw) - n
        # 6 pods, 3 per pool: 18 cross-pool pairs x 2 pings x (request + reply) pass each active gateway.
        assert moved >= 18 * 2 * 2, f"{gw}: only {moved} ESP packets for the cross-pool pairs"
    MEASUREMENTS["matrix_esp_packets"] = {gw: esp_packets(rc, gw) - n for gw, n in before.items()}


@ipsec_only
def test_ingress_filter_takes_the_policy_match_form_with_kernel_esp(rc: RavenCluster) -> None:
    gw = rc.active_gateway_node("gw-cloud")
    peer = rc.active_gateway_node("gw-edge-a")
    nodes = rc.cl.nodes
    gw_ns = nodes[gw].netns
    before = ingress_tunnel_counters(gw_ns)
    assert set(before) == {"libipsec", "policy", "drop"}, before
    # Legitimate traffic from the other pool: decrypted by a kernel SA, accepted by the policy rule.
    assert ping(nodes[peer].pods[0].netns, nodes[gw].pods[0].ip, count=5, interval=0.05).ok
    mid = ingress_tunnel_counters(gw_ns)
    assert mid["policy"] >= before["policy"] + 5 and mid["libipsec"] == before["libipsec"] == 0, (before, mid)
    victim = nodes[gw].pods[0].name
    spoofed = nodes[members(rc)[0] if rc.cl.pool_of(members(rc)[0]).name == "cloud" else members(rc)[1]].pods[0].ip
    mac1 = _link_mac(gw_ns, "raven1")
    wan = Attack("A wan->raven1", rc.cl.control_plane, f"{nodes[gw].ip}:4473", 201, mac1,
                 nodes[peer].pods[0].ip, victim, drop_chain="RAVEN-INGRESS-T")
    # Through the peer's real SA (ESP, decrypted by the kernel: passes the policy rule), with an inner source of
    # the gateway's own pool, which that peer cannot speak for.
    via_sa = Attack("D peer SA->raven1 spoofed", nodes[peer].netns, f"{_inner(gw_ns)}:4473", 201, mac1,
                    spoofed, victim, bind=_inner(nodes[peer].netns), drop_chain="RAVEN-OVERLAY-T")
    listener = Listener(rc, victim, timeout=STEP_S)
    try:
        for a in (wan, via_sa):
            token = f"shut-{a.name[0]}-{secrets.token_hex(4)}"
            drops, counters = _drops(gw_ns, a.drop_chain), ingress_tunnel_counters(gw_ns)
            _inject(rc, a, token, count=5)
            rc.wait_for(f"{a.name} dropped by {a.drop_chain}",
                        lambda a=a, d=drops: _drops(gw_ns, a.drop_chain) >= d + 5, timeout=60)
            after = ingress_tunnel_counters(gw_ns)
            if a is via_sa:  # decrypted by the kernel: the policy match took it, never the libipsec rule
                assert after["policy"] >= counters["policy"] + 5 and after["libipsec"] == 0, (counters, after)
            time.sleep(0.5)  # the drops are counted; give a (wrongly) delivered copy time to show anyway
            assert not listener.got(token), f"{a.name}: delivered through the filter"
    finally:
        listener.proc.stop()


def test_bulk_tcp_is_never_fragmented(rc: RavenCluster) -> None:
    """Member to member across the pools (raven0 VXLAN, the gateways' raven1 over kernel ESP in UDP, the NAT):
    no fragment created, reassembled or refused anywhere, with no MTU flag given to any agent."""
    assert not any("mtu" in a for a in rc.agent_args), rc.agent_args
    src_node, dst_node = sorted(members(rc), key=lambda n: rc.cl.pool_of(n).name != "edge-a")
    src, dst = rc.cl.nodes[src_node].pods[0], rc.cl.nodes[dst_node].pods[0]
    namespaces = {name: rc.cl.nodes[name].netns for name in sorted(rc.registered)}
    namespaces.update({f"router-{p}": pool.router for p, pool in rc.cl.pools.items()})
    before = {name: snmp(ns) for name, ns in namespaces.items()}
    transfer = iperf3_run(src.netns, dst.netns, dst.ip, 18130, seconds=5.0, name="frag")
    moved = {name: d for name, ns in namespaces.items()
             if any((d := delta(before[name], snmp(ns), FRAGMENT_COUNTERS)).values())}
    MEASUREMENTS["bulk_tcp_mbit_s"] = round(transfer.bits_per_second / 1e6, 1)
    assert transfer.bytes > 1_000_000, transfer.raw["end"]
    assert moved == {}, f"{src_node} -> {dst_node}: fragments {moved} ({transfer.bytes} bytes carried)"


def test_agent_restart_on_the_gateway_and_the_member_loses_no_packet(rc: RavenCluster) -> None:
    gw = rc.active_gateway_node("gw-edge-a")
    member = next(n for n in members(rc) if rc.cl.pool_of(n).name == "edge-a")
    dst = next(n for n in members(rc) if rc.cl.pool_of(n).name == "cloud")
    r_gw = rc.restart_agent_under_probe(gw, member, dst, port=18110, timeout=STEP_S)
    r_member = rc.restart_agent_under_probe(member, member, dst, port=18111, timeout=STEP_S)
    MEASUREMENTS["agent_restart_probe_loss"] = {"gateway": f"{r_gw.lost}/{r_gw.sent}",
                                                "member": f"{r_member.lost}/{r_member.sent}"}
    # The probe is counted to the end of its window (an outage still open when it stops is a loss).
    assert (r_gw.lost, r_member.lost) == (0, 0), (r_gw, r_member)
    assert r_gw.sent > 100 and r_member.sent > 100, (r_gw.sent, r_member.sent)


def test_gateway_failover_of_the_nat_pool(rc: RavenCluster) -> None:
    """The edge-a gateway crashes (NotReady and off its LAN): its standby takes over, traffic from a pod of the
    standby to the cloud member resumes through the new gateway's own SA."""
    dst = next(n for n in members(rc) if rc.cl.pool_of(n).name == "cloud")
    # settle: the probe runs 5 s past the first answered ping through the new gateway (1 s on the host; a UDP
    # probe whose packets take a slow VM's scheduling needs longer to show it resumed).
    r = rc.failover_under_probe("edge-a", dst, port=18100, dead=True, timeout=STEP_S, settle=5.0)
    MEASUREMENTS["failover_nat_pool"] = {"elected_s": round(r.elected_s, 2),
                                         "write_to_traffic_s": round(r.traffic_s, 2),
                                         "outage_s": round(r.probe.max_outage_s, 2), "lost": r.probe.lost,
                                         "sent": r.probe.sent}
    assert rc.active_endpoints()["gw-edge-a"] == [r.new]
    assert r.resumed, f"traffic did not resume through {r.new}: {r.probe}"
    if VPN_DRIVER == "ipsec":
        assert esp_packets(rc, r.new) > 0, f"{r.new} carries the pool's traffic but holds no used ESP state"


def test_netem_delay_on_the_nat_router_shows_in_the_pod_rtt(rc: RavenCluster) -> None:
    """tc netem (absent on the host kernel, where a userspace delay element stands in) on edge-a's WAN uplink."""
    router = rc.cl.pools["edge-a"].router
    src = rc.cl.nodes[next(n for n in members(rc) if rc.cl.pool_of(n).name == "edge-a")].pods[0]
    dst = rc.cl.nodes[next(n for n in members(rc) if rc.cl.pool_of(n).name == "cloud")].pods[0]
    base = ping(src.netns, dst.ip, count=5, interval=0.2)
    assert base.ok and base.rtt_avg_ms is not None, base
    router.run(["tc", "qdisc", "add", "dev", "wan0", "root", "netem", "delay", "100ms"])
    try:
        delayed = ping(src.netns, dst.ip, count=5, interval=0.2)
    finally:
        router.run(["tc", "qdisc", "del", "dev", "wan0", "root"])
    MEASUREMENTS["netem_rtt_ms"] = {"base": base.rtt_avg_ms, "delayed": delayed.rtt_avg_ms}
    assert delayed.ok and delayed.rtt_avg_ms is not None, delayed
    # One way only (egress of the router's WAN side): +100 ms on each round trip.
    assert delayed.rtt_avg_ms >= base.rtt_avg_ms + 90, (base, delayed)
