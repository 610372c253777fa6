"""`raven diagnose`'s analysis (pure): each kind of evidence gives the finding an operator needs, and a node whose
kernel, charon and probes match its plan gives none. The e2e cases (e2e/tests/test_09_diagnose.py) break each
thing on a real node."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.dataplane.diff import Observed
from raven.dataplane.ipsec import TunnelState
from raven.diagnose import (
    Evidence,
    PathProbe,
    ProbeOutcome,
    RouteLookup,
    SaAttempt,
    agent_flags,
    analyse,
    classify_charon_log,
    esp_packet_size,
    path_probe_targets,
    render_json,
    render_text,
)
from tests.unit.plan_cluster import cluster_json, nodes, parse

CFG = PlanConfig()


def planned(node: str) -> PlanResult:
    return plan(parse(cluster_json()), nodes(), node, CFG)


def tunnel(name: str, ike: str = "ESTABLISHED", child: str | None = "INSTALLED") -> TunnelState:
    return TunnelState(name, ike, 1, "203.0.113.10", 4500, child, 2 if child else None, 0, 0, 0, 0, True)


def healthy(node: str) -> Evidence:
    """The evidence of a node whose kernel, charon and probes are exactly what its plan wants."""
    result = planned(node)
    ev = Evidence(node, result, CFG, observed=Observed.of(result.state))
    ev.lookups = {r.dst: RouteLookup(r.dst, r.table, CFG.route_protocol, r.ifname, r.gateway)
                  for r in result.state.routes if r.table == CFG.table}
    ev.sysctls = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "1",
                  **{f"net.ipv4.conf.{link.name}.rp_filter": "2" for link in result.state.links}}
    ev.loaded = {c.name: {"inner-x"} for c in result.state.ipsec}
    ev.tunnels = [tunnel(c.name) for c in result.state.ipsec]
    ev.probes = [ProbeOutcome(t, 5, 5) for t in result.probes]
    ev.paths = [PathProbe(w, a, s, None) for w, a, s in path_probe_targets(ev)]
    return ev


def checks(ev: Evidence) -> list[tuple[str, str]]:
    return [(f.check, f.subject) for f in analyse(ev)]


def test_a_node_matching_its_plan_has_no_findings() -> None:
    for node in ("edge-a-1", "edge-a-2", "cloud-1"):
        ev = healthy(node)
        assert ev.result.role in ("gateway", "member")
        assert analyse(ev) == [], node
        assert "no problems found" in render_text(ev, [])


def test_a_missing_route_and_a_wrong_mtu_are_kernel_findings() -> None:
    ev = healthy("edge-a-2")
    gone = sorted(ev.result.state.routes)[0]
    state = dataclasses.replace(ev.result.state, routes=ev.result.state.routes - {gone})
    (raven0,) = ev.result.state.links
    state = dataclasses.replace(state, links=frozenset({dataclasses.replace(raven0, mtu=1400)}))
    ev.observed = Observed.of(state)
    ev.lookups[gone.dst] = RouteLookup("0.0.0.0/0", 254, 3, "eth0", "192.168.1.1")  # what the kernel falls back to
    found = analyse(ev)
    assert [(f.check, f.subject) for f in found] == [("kernel", "device raven0"), ("kernel", f"route {gone.dst}")]
    assert "MTU 1400" in found[0].problem and "missing" in found[1].problem


def test_a_foreign_route_that_takes_the_traffic_is_named_with_its_table() -> None:
    ev = healthy("edge-a-2")
    dst = sorted(ev.lookups)[0]
    ev.lookups[dst] = RouteLookup(dst, 190, 3, "eth0", None)
    (f,) = analyse(ev)
    assert (f.check, f.subject) == ("route", f"route {dst}")
    assert "table 190" in f.problem and "ip route del" in f.fix


def test_forwarding_off_and_strict_rp_filter_are_sysctl_findings() -> None:
    ev = healthy("edge-a-1")
    ev.sysctls["net.ipv4.ip_forward"] = "0"
    ev.sysctls["net.ipv4.conf.raven1.rp_filter"] = "1"
    assert checks(ev) == [("sysctl", "net.ipv4.ip_forward"), ("sysctl", "net.ipv4.conf.raven1.rp_filter")]
    # The kernel uses max(all, device): a loose device under a strict "all" is loose.
    ev = healthy("edge-a-1")
    ev.sysctls["net.ipv4.conf.all.rp_filter"] = "1"
    assert analyse(ev) == []
    ev.sysctls["net.ipv4.conf.raven0.rp_filter"] = "0"
    assert checks(ev) == [("sysctl", "net.ipv4.conf.raven0.rp_filter")]


def test_charons_reason_for_a_down_sa_is_classified() -> None:
    def reason(line: str) -> tuple[str, str] | None:
        found = classify_charon_log([line])
        return None if found is None else (found[0], found[1])

    assert reason("received NO_PROPOSAL_CHOSEN notify error") == ("sa", "proposal mismatch")
    assert reason("received proposals unacceptable") == ("sa", "proposal mismatch")  # the responder's words
    assert reason("received AUTHENTICATION_FAILED notify error") == ("sa", "authentication failed")
    assert reason("tried 1 shared key for 'a' - 'b', but MAC mismatched") == ("sa", "authentication failed")
    assert reason("giving up after 4 retransmits") == ("tunnel-port", "no answer from the peer")
    assert reason("establishing CHILD_SA inner{1}") is None


def test_an_sa_that_is_down_names_charons_reason_and_one_that_comes_up_is_fine() -> None:
    ev = healthy("edge-a-1")
    conn = sorted(ev.result.state.ipsec)[0]
    ev.tunnels = [t for t in ev.tunnels if t.name != conn.name] + [tunnel(conn.name, "CONNECTING", None)]
    ev.attempts[conn.name] = SaAttempt(True, False, ("sending packet", "received NO_PROPOSAL_CHOSEN notify error",
                                                     "establishing connection failed"))
    (f,) = analyse(ev)
    assert (f.check, f.subject) == ("sa", conn.name) and "proposal mismatch" in f.problem
    assert "received NO_PROPOSAL_CHOSEN notify error" in f.evidence
    ev.attempts[conn.name] = SaAttempt(True, True, ("CHILD_SA established",))
    assert analyse(ev) == []


def test_a_responder_that_hears_nothing_points_at_the_tunnel_port() -> None:
    ev = healthy("cloud-1")
    conn = sorted(ev.result.state.ipsec)[0]
    ev.tunnels = [t for t in ev.tunnels if t.name != conn.name]
    ev.attempts[conn.name] = SaAttempt(False, False, ())
    assert checks(ev) == [("tunnel-port", conn.name)]


def test_an_unloaded_or_stale_connection_and_an_unreachable_charon() -> None:
    ev = healthy("edge-a-1")
    conn = sorted(ev.result.state.ipsec)[0]
    assert ev.loaded is not None
    del ev.loaded[conn.name]
    ev.loaded["raven-gone"] = {"inner-y"}
    assert checks(ev) == [("sa", conn.name), ("sa", "raven-gone")]
    ev.charon_error = "charon unreachable at /run/charon.vici: No such file or directory"
    assert checks(ev) == [("charon", "VICI")]


def test_an_established_tunnel_that_carries_nothing_is_the_tunnel_port() -> None:
    ev = healthy("edge-a-1")
    target = ev.probes[0].target
    ev.probes[0] = ProbeOutcome(target, 5, 0)
    (f,) = analyse(ev)
    assert (f.check, f.subject) == ("tunnel-port", f"peer {target.gateway}")
    assert "ESTABLISHED but carries nothing" in f.problem


def test_a_member_whose_gateway_does_not_answer() -> None:
    ev = healthy("edge-a-2")
    ev.probes = [ProbeOutcome(p.target, 5, 0) for p in ev.probes]
    assert checks(ev) == [("probe", "gateway gw-edge-a")]


def test_a_path_smaller_than_the_largest_esp_packet_is_an_mtu_finding() -> None:
    ev = healthy("edge-a-1")
    assert ev.paths and all(p.size == esp_packet_size(1372 + 50, CFG.esp_proposals) for p in ev.paths)
    ev.paths[0] = dataclasses.replace(ev.paths[0], path_mtu=1300)
    (f,) = analyse(ev)
    assert f.check == "mtu" and "at most 1300-byte" in f.problem and "--underlay-mtu 1300" in f.fix
    assert '"ok": false' in render_json(ev, [f])


def test_the_largest_esp_packet_fits_the_underlay_the_plan_sized_it_for() -> None:
    # raven1 is sized so that its largest VXLAN packet, encrypted, fills the underlay and never exceeds it.
    for underlay, raven1 in ((1500, 1372), (1400, 1276)):
        size = esp_packet_size(raven1 + 50, ("aes256-sha256",))
        assert underlay - 16 < size <= underlay


def test_a_node_in_no_gateway_is_told_how_to_join() -> None:
    ev = Evidence("lonely", plan(parse(cluster_json()), nodes(), "lonely", CFG), CFG)
    assert checks(ev) == [("plan", "node lonely")]


def test_the_agent_flags_come_from_the_agent_process_command_line(tmp_path: Path) -> None:
    """`--agent-pid`: diagnose plans with the agent's own flags (in its container, `--agent-pid 1`)."""
    import subprocess
    import sys

    argv = [sys.executable, "-c", "import time; time.sleep(30)", "--mode=agent", "--node-name", "n-1",
            "--vici-socket", str(tmp_path / "charon.vici"), "--cleanup"]
    proc = subprocess.Popen(argv)
    try:
        # Under load the new process's command line can read empty for a moment: wait until it is there.
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 10
        while b"--mode=agent" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert agent_flags(proc.pid) == ["--node-name", "n-1", "--vici-socket", str(tmp_path / "charon.vici")]
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(OSError, match="not a Raven agent"):
        agent_flags(os.getpid())
