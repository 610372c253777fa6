"""`raven diagnose`: on one node, what is wrong with Raven here and what to do about it.

Run where the agent runs (its container: same flags, same environment, same VICI socket). It builds the node's
plan exactly as the agent does (the agent's flags, the Gateways and this node's Node from the API, the devices
and path MTUs read from the kernel: `raven.agent.app`, `raven.agent.plan`), then compares that plan with

- the kernel (`raven.dataplane.kernel_read` + the pure `diff`: a device, address, route, rule, neighbour or FDB
  entry missing, different or left over), and where each planned route's traffic really goes (a `fibmatch`
  route lookup over `raven.dataplane.rtnl`: a foreign route or rule that takes the traffic first);
- the sysctls Raven needs (IPv4 forwarding on, reverse-path filtering not strict on Raven's devices);
- charon over VICI (`raven.dataplane.ipsec`): every planned connection loaded and its SA established; for one
  that is not, charon's own words: the log of an initiate (initiator side) or of the peer's attempts heard on
  the log event stream (responder side), read for AUTHENTICATION_FAILED, NO_PROPOSAL_CHOSEN, retransmits;
- live probes: the agent's own path-health targets pinged (`raven.pathhealth.pinger`), and the path towards
  each peer (and, on a member, its gateway) probed with a DF datagram as large as the biggest packet the plan
  makes there (a router on the way answers "fragmentation needed" when it is too large).

Pure analysis (`analyse`) of the collected `Evidence`: unit-tested without a node. Exit code 0 when nothing is
wrong, 1 when something is (every finding says what and what to do), 2 on bad flags. `-o json` for scripts.
Nothing here writes to the kernel; the only VICI write is the initiate of a planned initiator connection
that is down, which the agent's reconciler sends itself too.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import itertools
import json
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.config import SETTINGS, AgentConfig, ConfigError
from raven.dataplane import mtu as mtu_math
from raven.dataplane import rtnl
from raven.dataplane.diff import Changes, Observed, diff
from raven.dataplane.ipsec import CharonUnavailable, TunnelState
from raven.dataplane.state import VICI_CONN_PREFIX, IPsecConnection, NodeNetwork, Route
from raven.nattraversal.core import PunchTarget
from raven.pathhealth.targets import ProbeTarget
from raven.routing.choice import RouteChoice

if TYPE_CHECKING:
    from raven.kube.client import KubeClient

CheckName = Literal["plan", "kernel", "route", "sysctl", "charon", "sa", "probe", "mtu", "tunnel-port"]


@dataclass(frozen=True)
class Finding:
    """One thing wrong: which check saw it, about what, in plain words, and what to do."""

    check: CheckName
    subject: str
    problem: str
    fix: str
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteLookup:
    """The FIB entry a lookup for one planned route's first address matched (`ip route get fibmatch`)."""

    dst: str
    table: int
    protocol: int
    ifname: str | None
    gateway: str | None


@dataclass(frozen=True)
class SaAttempt:
    """Why a planned connection's SA is not up, in charon's words (initiate log or heard on the log stream)."""

    initiated: bool  # True: we initiated and watched; False: we listened for the peer's attempts
    established: bool
    lines: tuple[str, ...]


@dataclass(frozen=True)
class ProbeOutcome:
    target: ProbeTarget
    sent: int
    replies: int


@dataclass(frozen=True)
class PathProbe:
    """A DF probe towards `address` with packets of `size` bytes (the largest the plan sends there)."""

    what: str  # "peer gw-cloud", "gateway edge-a-1"
    address: str
    size: int
    path_mtu: int | None  # what the kernel learned when smaller than size, else None (the packet fit)


@dataclass
class Evidence:
    """Everything `analyse` needs, collected on the node by `collect` (tests build it by hand)."""

    node: str
    result: PlanResult
    cfg: PlanConfig
    observed: Observed | None = None
    kernel_error: str | None = None
    lookups: dict[str, RouteLookup | None] = field(default_factory=dict)  # planned route dst -> what matched
    sysctls: dict[str, str] = field(default_factory=dict)
    charon_error: str | None = None
    loaded: dict[str, set[str]] | None = None  # raven-* connections charon has -> CHILD_SA names
    tunnels: list[TunnelState] = field(default_factory=list)
    attempts: dict[str, SaAttempt] = field(default_factory=dict)
    probes: list[ProbeOutcome] = field(default_factory=list)
    paths: list[PathProbe] = field(default_factory=list)
    api_error: str | None = None
    checked: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# analysis (pure)

_AGENT_FIXES = ("the agent restores it on its next reconcile (every --resync-period); if it stays so, the "
                "agent is not running or cannot write it: look for 'kernel write failed' in its log")


def analyse(ev: Evidence) -> list[Finding]:
    out: list[Finding] = []
    if ev.api_error is not None:
        out.append(Finding("plan", "API", f"the cluster's Gateways or this Node could not be read: {ev.api_error}",
                           "check --kubeconfig and that the API server is reachable from this node"))
        return out
    for problem in ev.result.problems:
        out.append(Finding("plan", "cluster input", problem,
                           "fix the object named (its Events and the Gateway's status conditions say more)"))
    if ev.result.role == "none" and ev.result.gateway is None:
        out.append(Finding("plan", f"node {ev.node}", "this node is in no Gateway's status.nodes: Raven gives it "
                           "no cross-pool path", "label the node raven.openyurt.io/gateway=<Gateway> and check the "
                           "controller's Events for the node (e.g. a missing or invalid pod CIDR)"))
    out += kernel_findings(ev)
    out += route_findings(ev)
    out += sysctl_findings(ev)
    out += charon_findings(ev)
    out += probe_findings(ev)
    out += mtu_findings(ev)
    return out


def _route_text(r: Route) -> str:
    via = f" via {r.gateway}" if r.gateway else ""
    mtu = f" mtu {r.mtu}" if r.mtu else ""
    return f"{r.dst}{via} dev {r.ifname} table {r.table}{mtu}"


def kernel_findings(ev: Evidence) -> list[Finding]:
    if ev.kernel_error is not None:
        return [Finding("kernel", "netlink", f"the kernel state could not be read: {ev.kernel_error}",
                        "run diagnose as the agent does (CAP_NET_ADMIN, the node's network namespace)")]
    if ev.observed is None:
        return []
    c: Changes = diff(ev.result.state, ev.observed)
    have_links = {link.name: link for link in ev.observed.base.links}
    have_routes = {(r.table, r.dst): r for r in ev.observed.state.routes}
    out: list[Finding] = []

    def add(subject: str, problem: str, fix: str = _AGENT_FIXES) -> None:
        out.append(Finding("kernel", subject, problem, fix))

    recreated = set(c.link_delete) & {link.name for link in c.link_create}
    for name in c.link_delete:
        if name not in recreated:
            add(f"device {name}", f"device {name} exists but the plan (role {ev.result.role}) has none")
    for link in c.link_create:
        if link.name in recreated:
            add(f"device {link.name}", f"device {link.name} differs from the plan (VNI, port, local address, MAC "
                "or underlay device): the agent must recreate it")
        else:
            add(f"device {link.name}", f"device {link.name} is missing")
    for link in c.link_update:
        have = have_links.get(link.name)
        if link.name in ev.observed.links_down:
            add(f"device {link.name}", f"device {link.name} is down")
        if have is not None and have.mtu != link.mtu:
            add(f"device {link.name}", f"device {link.name} has MTU {have.mtu}, the plan wants {link.mtu}")
    for a in c.addr_add:
        add(f"address {a.cidr}", f"address {a.cidr} is missing on {a.ifname}")
    for a in c.addr_delete:
        add(f"address {a.cidr}", f"address {a.cidr} on {a.ifname} is not in the plan")
    for r in c.route_create:
        add(f"route {r.dst}", f"route {_route_text(r)} is missing: traffic to {r.dst} does not enter Raven here")
    for r in c.route_replace:
        old = have_routes.get((r.table, r.dst))
        now = _route_text(old) if old is not None else "another route"
        add(f"route {r.dst}", f"route to {r.dst} is {now}; the plan wants {_route_text(r)}")
    for r in c.route_delete:
        add(f"route {r.dst}", f"route {_route_text(r)} is left over: no pool of the plan has {r.dst}")
    for rule in c.rule_add:
        iif = f" iif {rule.iif}" if rule.iif else ""
        add(f"rule {rule.priority}", f"policy rule {rule.priority}{iif} lookup {rule.table} is missing: nothing "
            "sends traffic into Raven's table")
    for rule in c.rule_delete:
        add(f"rule {rule.priority}", f"policy rule {rule.priority} lookup {rule.table} is not in the plan")
    for n in c.neigh_replace:
        add(f"neighbour {n.ip}", f"neighbour {n.ip} on {n.ifname} is missing or has another MAC (want {n.mac})")
    for n in c.neigh_delete:
        add(f"neighbour {n.ip}", f"neighbour {n.ip} on {n.ifname} is not in the plan")
    for f in (*c.fdb_replace, *c.fdb_append):
        add(f"fdb {f.mac}", f"FDB entry {f.mac} -> {f.dst} on {f.ifname} is missing or points elsewhere")
    for f in c.fdb_delete:
        add(f"fdb {f.mac}", f"FDB entry {f.mac} -> {f.dst} on {f.ifname} is not in the plan")
    if c.mss is not None:
        add("mss clamp", "the TCP MSS clamp chain differs from the plan (devices "
            f"{', '.join(sorted(c.mss)) or 'none'} wanted)")
    return out


def route_findings(ev: Evidence) -> list[Finding]:
    """A planned route that exists but whose traffic a foreign route (or rule) takes first."""
    out: list[Finding] = []
    by_dst = {r.dst: r for r in ev.result.state.routes if r.table == ev.cfg.table}
    # A route the kernel lacks (or has otherwise) is a kernel finding; its lookup then finds whatever comes next
    # (the default route), which is not a foreign route taking the traffic.
    present = {(row[0], row[1]) for row in ev.observed.route_rows} if ev.observed is not None else set()
    for dst, got in sorted(ev.lookups.items()):
        want = by_dst.get(dst)
        if want is None or (want.table, want.dst) not in present:
            continue
        if got is None:
            out.append(Finding("route", f"route {dst}", f"the kernel has no route at all for {dst}",
                               "see the kernel findings; the agent re-creates Raven's route"))
            continue
        ours = got.table == want.table and got.protocol == ev.cfg.route_protocol and got.dst == want.dst
        if ours:
            continue
        via = f" via {got.gateway}" if got.gateway else ""
        out.append(Finding(
            "route", f"route {dst}",
            f"traffic to {dst} is taken by a foreign route {got.dst}{via} dev {got.ifname or '?'} "
            f"(table {got.table}, protocol {got.protocol}) before Raven's {_route_text(want)}",
            f"remove that route (`ip route del {got.dst} table {got.table}`) or the rule sending traffic to table "
            f"{got.table} ahead of priority {ev.cfg.rule_priority}; if it is meant to be there, {dst} overlaps a "
            "network of this node and the remote pool's pod CIDR must change",
        ))
    return out


def sysctl_findings(ev: Evidence) -> list[Finding]:
    out: list[Finding] = []
    if not ev.result.state.links:
        return out
    if ev.sysctls.get("net.ipv4.ip_forward", "1") != "1":
        out.append(Finding("sysctl", "net.ipv4.ip_forward",
                           "IPv4 forwarding is off: this node drops every pod packet it should route to or from "
                           "other pools", "sysctl -w net.ipv4.ip_forward=1 (and find what turned it off: the CNI "
                           "needs it too)"))
    all_rp = int(ev.sysctls.get("net.ipv4.conf.all.rp_filter", "0") or 0)
    for link in sorted(ev.result.state.links):
        key = f"net.ipv4.conf.{link.name}.rp_filter"
        if key not in ev.sysctls:
            continue
        dev_rp = int(ev.sysctls[key] or 0)
        if max(all_rp, dev_rp) == 1:  # the kernel uses the larger of "all" and the device's
            out.append(Finding(
                "sysctl", key,
                f"reverse-path filtering is strict on {link.name} (all={all_rp}, {link.name}={dev_rp}): packets "
                f"from remote pools arriving on {link.name} are dropped when the main table would answer them "
                "another way",
                f"sysctl -w {key}=2 (loose; the agent writes 2 on each reconcile: something else set it back)"))
    return out


_REASONS: tuple[tuple[tuple[str, ...], CheckName, str, str], ...] = (
    (("no_proposal_chosen", "no acceptable proposal", "proposals unacceptable", "no matching proposal"), "sa",
     "proposal mismatch",
     "the two gateways offer no common proposal: give every agent the same --ike-proposals and --esp-proposals"),
    (("authentication_failed", "mac mismatched", "authentication of", "no trusted", "constraint check failed",
      "no shared key found", "no private key found"), "sa", "authentication failed",
     "with --ipsec-auth=psk every agent needs the same pre-shared key (--psk-file / VPN_CONNECTION_PSK); with "
     "certificates both nodes' certificates must come from this cluster's signer (the agents' "
     "raven_agent_ipsec_certificate_* metrics, the controller's CSR log)"),
    (("giving up after", "retransmit", "peer not responding"), "tunnel-port", "no answer from the peer",
     "UDP 500/4500 is filtered somewhere between the gateways, or charon is not running on the peer: check "
     "firewalls and security groups on the path and the peer gateway's charon"),
)


def classify_charon_log(lines: Sequence[str]) -> tuple[CheckName, str, str] | None:
    """(check, reason, fix) for what charon logged about a failed SA; None when nothing is recognised."""
    text = "\n".join(lines).lower()
    for needles, check, reason, fix in _REASONS:
        if any(n in text for n in needles):
            return check, reason, fix
    return None


def _peer_of(conn: IPsecConnection) -> str:
    return conn.name.removeprefix(VICI_CONN_PREFIX)


def charon_findings(ev: Evidence) -> list[Finding]:
    conns = sorted(ev.result.state.ipsec)
    if not conns:
        return []
    if ev.charon_error is not None:
        return [Finding("charon", "VICI", f"charon cannot be reached: {ev.charon_error}; no tunnel of this gateway "
                        "can work", "start charon (the DaemonSet's second container) and check that --vici-socket "
                        "names its socket")]
    out: list[Finding] = []
    loaded = ev.loaded or {}
    by_name: dict[str, TunnelState] = {}
    for tunnel in ev.tunnels:
        by_name.setdefault(tunnel.name, tunnel)
    for conn in conns:
        peer = _peer_of(conn)
        if conn.name not in loaded:
            out.append(Finding("sa", conn.name, f"the tunnel to {peer} is planned but charon has not loaded "
                               f"connection {conn.name}", "the agent loads it on its next reconcile; if it stays "
                               "missing, look for 'vici operation failed' in the agent's log (in certificate mode: "
                               "has the node got its certificate?)"))
            continue
        t = by_name.get(conn.name)
        if t is not None and t.ike_state == "ESTABLISHED" and t.child_state == "INSTALLED":
            continue
        state = "no IKE_SA" if t is None else f"IKE_SA {t.ike_state}, CHILD_SA {t.child_state or 'none'}"
        attempt = ev.attempts.get(conn.name)
        if attempt is not None and attempt.established:
            continue  # it came up when we initiated it: charon had given up earlier, nothing wrong now
        lines = attempt.lines if attempt is not None else ()
        why = classify_charon_log(lines)
        remote = conn.remote_addrs[0] if conn.remote_addrs and conn.remote_addrs[0] != "%any" else "the peer"
        if why is not None:
            check, reason, fix = why
            problem = f"the tunnel to {peer} ({remote}:{conn.remote_port}) is not established ({state}): {reason}"
        elif attempt is not None and not attempt.initiated and not lines:
            check, fix = "tunnel-port", ("the peer initiates this tunnel: check the peer gateway's agent and charon, "
                                         "and that UDP 500/4500 reaches this node")
            problem = (f"the tunnel to {peer} is not established ({state}) and no IKE message from it was heard "
                       "while listening")
        else:
            check, fix = "sa", "read charon's log on both gateways for this connection"
            problem = f"the tunnel to {peer} ({remote}:{conn.remote_port}) is not established ({state})"
        out.append(Finding(check, conn.name, problem, fix, tuple(_relevant(lines))))
    for name in sorted(set(loaded) - {c.name for c in conns}):
        out.append(Finding("sa", name, f"charon holds connection {name}, which the plan does not have",
                           "the agent unloads it on its next reconcile; if it stays, the agent is not running"))
    return out


def _relevant(lines: Sequence[str], limit: int = 6) -> list[str]:
    keys = ("error", "fail", "mismatch", "proposal", "retransmit", "giving up", "no ", "received")
    picked = [line for line in lines if any(k in line.lower() for k in keys)]
    return (picked or list(lines))[-limit:]


def probe_findings(ev: Evidence) -> list[Finding]:
    out: list[Finding] = []
    tunnels = {t.name: t for t in ev.tunnels}
    for p in ev.probes:
        if p.replies:
            continue
        t = p.target
        if t.kind == "gateway":
            out.append(Finding("probe", f"gateway {t.gateway}",
                               f"this node's gateway {t.node} ({t.address} over {ev.cfg.intra_pool_link}) answered "
                               f"none of {p.sent} pings: pods here cannot reach other pools",
                               "check the pool LAN between the two nodes (UDP "
                               f"{ev.cfg.vxlan_port} for VXLAN) and the gateway's agent"))
            continue
        sa = tunnels.get(f"{ev.cfg.vici_conn_prefix}{t.gateway}")
        if sa is not None and sa.ike_state == "ESTABLISHED":
            out.append(Finding(
                "tunnel-port", f"peer {t.gateway}",
                f"the tunnel to {t.gateway} is ESTABLISHED but carries nothing: {p.sent} pings from {t.source} to "
                f"{t.address} through it got no reply (ESP in UDP towards {sa.remote_host}:{sa.remote_port} is "
                "dropped on the way)",
                f"UDP {sa.remote_port} (ESP-in-UDP, and IKE after NAT-T) is filtered or lost between the gateways: "
                "open it in both directions in the firewalls and security groups on the path"))
        # A probe through a tunnel that is not up is explained by the SA finding already.
    return out


def esp_packet_size(inner: int, proposals: Sequence[str]) -> int:
    """The largest outer packet of ESP-in-UDP (tunnel mode) carrying an inner packet of `inner` bytes."""
    worst = 0
    for p in proposals or mtu_math.DEFAULT_ESP_PROPOSALS:
        t = mtu_math.esp_transform(p)
        padded = -(-(inner + mtu_math.ESP_TRAILER) // t.block) * t.block
        worst = max(worst, mtu_math.IPV4_HEADER + mtu_math.UDP_HEADER + mtu_math.ESP_HEADER + t.iv + padded + t.icv)
    return worst


def path_probe_targets(ev: Evidence) -> list[tuple[str, str, int]]:
    """(what, address, size): where the plan sends its largest packets, and how large they are."""
    state = ev.result.state
    links = {link.name: link for link in state.links}
    out: list[tuple[str, str, int]] = []
    inter = links.get(ev.cfg.inter_gateway_link)
    if inter is not None:
        size = esp_packet_size(inter.mtu + mtu_math.VXLAN_OVERHEAD, ev.cfg.esp_proposals)
        tunnels = {t.name: t for t in ev.tunnels}
        for conn in sorted(state.ipsec):
            t = tunnels.get(conn.name)
            addr = t.remote_host if t is not None and t.remote_host else (
                conn.remote_addrs[0] if conn.remote_addrs and conn.remote_addrs[0] != "%any" else "")
            if addr:
                out.append((f"peer {_peer_of(conn)}", addr, size))
    intra = links.get(ev.cfg.intra_pool_link)
    if intra is not None and ev.result.role == "member":
        for f in sorted(state.fdb):
            if f.ifname == intra.name:
                out.append((f"gateway node {f.dst}", f.dst, intra.mtu + mtu_math.VXLAN_OVERHEAD))
    return out


def mtu_findings(ev: Evidence) -> list[Finding]:
    out: list[Finding] = []
    for p in ev.paths:
        if p.path_mtu is None or p.path_mtu >= p.size:
            continue
        out.append(Finding(
            "mtu", p.what,
            f"the path to {p.what} ({p.address}) carries at most {p.path_mtu}-byte packets, but Raven sends "
            f"{p.size}-byte ones there (the plan's MTUs assume a {ev.cfg.effective_underlay_mtu}-byte path): "
            "full-size packets are dropped or fragmented",
            f"the agent re-reads path MTUs every minute and shrinks its devices; if the path MTU is not learned "
            f"(ICMP filtered), set --underlay-mtu {p.path_mtu} on the agents"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# collection (I/O)


async def _published_routes(client: KubeClient, node_name: str) -> RouteChoice | None:
    """The next hops this node's agent routes by (routing by cost), as its own PathReport publishes them: the plan
    is compared with the kernel, and a detoured pool must not read as drift. None when there are none."""
    from raven.api.pathreport import PathReport, PathReportParseError
    from raven.kube.client import PATHREPORTS, ApiError

    try:
        report = PathReport.from_dict(await client.get(PATHREPORTS, node_name))
    except (ApiError, OSError, PathReportParseError):
        return None
    if not report.well_formed or not report.status.paths:
        return None
    return RouteChoice.of({p.gateway: p.via or p.gateway for p in report.status.paths})


async def collect(cfg: AgentConfig, *, probes: bool = True, log_wait: float = 12.0,
                  initiate_timeout: float = 9.0) -> Evidence:
    from raven.agent.app import SafetyNet, UnderlayFollower, ownership, plan_config
    from raven.dataplane.ipsec import IPsecDriver
    from raven.dataplane.kernel import KernelApplier, KernelError
    from raven.kube.client import GATEWAYS, NODES, ApiError, KubeClient, new_api_client

    api = await new_api_client(cfg.common.kubeconfig)
    client = KubeClient(api)
    try:
        try:
            gw_items = (await client.list(GATEWAYS)).get("items") or []
            node_obj = await client.get(NODES, cfg.node_name)
        except (ApiError, OSError) as exc:
            return Evidence(cfg.node_name, PlanResult(NodeNetwork()), plan_config(cfg, None), api_error=str(exc))
        gateways: list[Gateway] = []
        bad: list[str] = []
        for item in gw_items:
            try:
                gateways.append(Gateway.from_dict(item))
            except ValueError as exc:
                bad.append(f"gateway {(item.get('metadata') or {}).get('name', '?')}: malformed object skipped "
                           f"({exc})")
        node = Node.from_dict(node_obj)
        routing = await _published_routes(client, cfg.node_name)
        # The agent's own plan step: devices and path MTUs read, the safety net, then the pure plan. Twice, as the
        # agent converges: the second plan has the path MTU towards the peers the first one found.
        follower, safety = UnderlayFollower(), SafetyNet(client.server_host)
        protected = await safety.protected()
        result = pcfg = None
        punch: tuple[PunchTarget, ...] = ()
        if cfg.nat_traversal:  # the punched pairs routed direct keep their connection (raven.agent.natpunch)
            from raven.agent.natpunch import held_targets

            punch = held_targets(node.gateway, gateways, routing, cfg.tunnel_cidr)
        for _ in range(2):
            pcfg = plan_config(cfg, await follower.follow(node))
            result = plan(gateways, {node.name: node}, cfg.node_name, pcfg, protected, routing, punch)
            follower.planned(result)
        assert result is not None and pcfg is not None
        if bad:
            result = PlanResult(result.state, bad + result.problems, result.paths, result.role, result.gateway,
                                result.probes)
    finally:
        await client.close()
    ev = Evidence(cfg.node_name, result, pcfg, checked=["plan"])

    kernel = KernelApplier(ownership(pcfg))
    try:
        ev.observed = await kernel.read()
        ev.checked.append("kernel")
    except KernelError as exc:
        ev.kernel_error = str(exc)
    finally:
        await kernel.close()
    if ev.observed is not None:
        ev.lookups = await asyncio.to_thread(_lookups, [r for r in result.state.routes if r.table == pcfg.table])
        ev.checked.append(f"routes ({len(ev.lookups)} lookups)")
    ev.sysctls = await asyncio.to_thread(_sysctls, [link.name for link in result.state.links])
    ev.checked.append("sysctls")

    if result.state.ipsec and cfg.vpn_driver == "ipsec":
        vpn = IPsecDriver(cfg.vici_socket, cfg.psk)
        try:
            await _charon(ev, vpn, log_wait, initiate_timeout)
        finally:
            await vpn.close()
    if probes:
        ev.probes = await _ping(result.probes)
        ev.checked.append(f"probes ({len(ev.probes)})")
        ev.paths = await asyncio.to_thread(
            lambda: [PathProbe(w, a, s, _df_probe(a, s)) for w, a, s in path_probe_targets(ev)])
        ev.checked.append(f"path MTU ({len(ev.paths)})")
    return ev


async def _charon(ev: Evidence, vpn: Any, log_wait: float, initiate_timeout: float) -> None:
    try:
        await _charon_checks(ev, vpn, log_wait, initiate_timeout)
    except CharonUnavailable as exc:
        ev.charon_error = str(exc)


async def _charon_checks(ev: Evidence, vpn: Any, log_wait: float, initiate_timeout: float) -> None:
    ev.loaded = await vpn.connections()
    ev.tunnels = await vpn.states()
    ev.checked.append(f"charon ({len(ev.loaded or {})} connections)")
    up = {t.name for t in ev.tunnels if t.ike_state == "ESTABLISHED" and t.child_state == "INSTALLED"}
    down = [c for c in sorted(ev.result.state.ipsec) if c.name in (ev.loaded or {}) and c.name not in up]
    listen: list[IPsecConnection] = []
    for conn in down:
        children = sorted((ev.loaded or {}).get(conn.name, ()))
        if conn.initiator and children:
            ok, lines = await vpn.initiate_logged(conn.name, children[0], initiate_timeout)
            ev.attempts[conn.name] = SaAttempt(True, ok, tuple(lines))
        else:
            listen.append(conn)
    if listen:
        # One listening window for every responder connection. A half-open IKE_SA carries the name of whichever
        # %any config charon tried first, so lines are told apart by the peer's address where the plan knows it;
        # a peer under NAT (remote %any) gets every raven-* line heard.
        peers = {c.name: [a for a in c.remote_addrs if a != "%any"] for c in listen}
        known = [a for addrs in peers.values() for a in addrs]

        def keep(ike: str, msg: str) -> bool:
            # "(unnamed)": an IKE_SA_INIT no config matched yet (a proposal mismatch never gets further).
            return ike in ("", "(unnamed)") or ike.startswith(ev.cfg.vici_conn_prefix) or any(a in msg for a in known)

        heard = await vpn.listen_log(log_wait, keep)
        for conn in listen:
            mine = [m for m in heard if any(a in m for a in peers[conn.name])] if peers[conn.name] else heard
            ev.attempts[conn.name] = SaAttempt(False, False, tuple(mine))
        ev.tunnels = await vpn.states()


def _lookups(routes: Sequence[Route]) -> dict[str, RouteLookup | None]:
    rt = rtnl.RouteSocket()
    try:
        names = {}
        for p in rt.dump(rtnl.RTM_GETLINK, rtnl.LINK_DUMP):
            a = rtnl.attrs(p, rtnl.IFINFOMSG.size)
            names[rtnl.IFINFOMSG.unpack_from(p)[2]] = rtnl.text(a.get(rtnl.IFLA_IFNAME)) or ""
        out: dict[str, RouteLookup | None] = {}
        for r in routes:
            net = ipaddress.IPv4Network(r.dst)
            probe = str(net.network_address + 1) if net.num_addresses > 1 else str(net.network_address)
            payload = rt.get(rtnl.encode_route_get(probe, fib_match=True),
                             absent=(errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENOENT))
            if payload is None:
                out[r.dst] = None
                continue
            _fam, dst_len, _sl, _tos, table8, proto, _scope, _type, _flags = rtnl.RTMSG.unpack_from(payload)
            a = rtnl.attrs(payload, rtnl.RTMSG.size)
            dst = rtnl.ipv4(a.get(rtnl.RTA_DST)) or "0.0.0.0"
            oif = rtnl.u32(a.get(rtnl.RTA_OIF), 0)
            out[r.dst] = RouteLookup(f"{dst}/{dst_len}", rtnl.u32(a.get(rtnl.RTA_TABLE), table8), proto,
                                     names.get(oif) if oif else None, rtnl.ipv4(a.get(rtnl.RTA_GATEWAY)))
        return out
    finally:
        rt.close()


def _sysctls(links: Sequence[str]) -> dict[str, str]:
    from raven.dataplane.sysctl import read_sysctls

    out: dict[str, str] = {}
    for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
                *(f"net.ipv4.conf.{name}.rp_filter" for name in links)):
        try:
            out.update(read_sysctls(None, [key]))
        except OSError:
            continue  # a device that does not exist (the kernel findings say so)
    return out


async def _ping(targets: Sequence[ProbeTarget], count: int = 5, interval: float = 0.2,
                reply_wait: float = 1.0) -> list[ProbeOutcome]:
    from raven.pathhealth.pinger import Pinger

    if not targets:
        return []
    replies = dict.fromkeys(targets, 0)
    sent = dict.fromkeys(targets, 0)

    done = asyncio.Event()

    def on_outcome(t: ProbeTarget, rtt: float | None, _now: float) -> None:
        sent[t] += 1
        if rtt is not None:
            replies[t] += 1
        if min(sent.values()) >= count:
            done.set()

    pinger: Pinger[ProbeTarget] = Pinger(interval, reply_wait, on_outcome)
    pinger.set_targets({t: (t.source, t.address) for t in targets})
    task = asyncio.ensure_future(pinger.run())
    try:
        await asyncio.wait_for(done.wait(), count * interval + reply_wait + 2.0)
    except TimeoutError:
        pass  # a source address that is missing never sends: counted as what was sent
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return [ProbeOutcome(t, sent[t], replies[t]) for t in sorted(targets)]


_IP_MTU_DISCOVER, _IP_PMTUDISC_DO, _IP_MTU = 10, 2, 14
_DISCARD_PORT = 9


def _df_probe(address: str, size: int, tries: int = 3, wait: float = 0.3) -> int | None:
    """Send `size`-byte UDP datagrams with DF towards `address` (discard port); the path MTU the kernel learned
    from a "fragmentation needed" answer when it is smaller than `size`, else None (the datagram fit, or the path
    says nothing). No answer from the peer is needed: the router that cannot forward it answers."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        sock.connect((address, _DISCARD_PORT))
        payload = bytes(max(0, size - mtu_math.IPV4_HEADER - mtu_math.UDP_HEADER))
        for _ in range(tries):
            try:
                sock.send(payload)
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:
                    continue  # ECONNREFUSED: the peer said "port unreachable" to a datagram that arrived whole
                break
            time.sleep(wait)
        learned = int(sock.getsockopt(socket.IPPROTO_IP, _IP_MTU))
        return learned if learned < size else None
    except OSError:
        return None
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    from raven.cli import _add

    p = argparse.ArgumentParser(
        prog="raven diagnose",
        description="Compare this node's Raven plan with the kernel, charon and live probes; say what is wrong and "
        "what to do. Takes the agent's flags and environment (run it in the agent's container). Exit code 1 when "
        "something is wrong.")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")
    p.add_argument("--agent-pid", type=int, metavar="PID",
                   help="take the agent settings from the command line of the agent process PID (in the agent's "
                   "container: 1); flags given here win")
    p.add_argument("--no-probes", dest="probes", action="store_false",
                   help="skip the live probes (pings through the tunnels, DF path probes)")
    p.add_argument("--log-wait", type=float, default=12.0,
                   help="seconds to listen to charon's log for a tunnel the peer initiates (default 12)")
    p.add_argument("--initiate-timeout", type=float, default=9.0,
                   help="seconds to watch the initiate of a tunnel this node starts (default 9)")
    group = p.add_argument_group("agent settings (as the agent has them)")
    for s in SETTINGS:
        if s.mode in ("common", "network", "agent") and s.name != "cleanup":
            _add(group, s)
    return p


def agent_flags(pid: int) -> list[str]:
    """The agent settings on process `pid`'s command line (`raven --mode=agent ...`), without the mode and the
    agent-only switches diagnose does not take: what `raven diagnose --agent-pid` plans with."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    if "--mode=agent" not in args and not any(a == "--mode" and b == "agent" for a, b in itertools.pairwise(args)):
        raise OSError(errno.EINVAL, f"process {pid} is not a Raven agent ({' '.join(args[:3])} ...)")
    start = next(i for i, a in enumerate(args) if a.startswith("--"))
    out: list[str] = []
    skip = False
    for a in args[start:]:
        if skip:
            skip = False
        elif a == "--mode":
            skip = True
        elif a not in ("--mode=agent", "--cleanup"):
            out.append(a)
    return out


def render_text(ev: Evidence, findings: Sequence[Finding]) -> str:
    head = f"raven diagnose: node {ev.node}, role {ev.result.role}"
    if ev.result.gateway:
        head += f", gateway {ev.result.gateway}"
    lines = [head, f"checked: {', '.join(ev.checked) or 'nothing'}"]
    if not findings:
        lines.append("no problems found")
    for f in findings:
        lines.append(f"PROBLEM [{f.check}] {f.problem}")
        lines.append(f"  fix: {f.fix}")
        lines += [f"  charon: {e}" for e in f.evidence]
    lines.append(f"{len(findings)} problem(s)" if findings else "")
    return "\n".join(line for line in lines if line) + "\n"


def render_json(ev: Evidence, findings: Sequence[Finding]) -> str:
    return json.dumps({"node": ev.node, "role": ev.result.role, "gateway": ev.result.gateway, "ok": not findings,
                       "checked": ev.checked, "findings": [asdict(f) for f in findings]}, indent=2) + "\n"


def main(argv: Sequence[str], env: Mapping[str, str]) -> int:
    from raven.cli import build_config

    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.agent_pid is not None:
        try:
            ns = parser.parse_args([*agent_flags(ns.agent_pid), *argv])
        except OSError as exc:
            print(f"raven diagnose: error: --agent-pid {ns.agent_pid}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    opts = {k: vars(ns).pop(k) for k in ("output", "probes", "log_wait", "initiate_timeout", "agent_pid")}
    ns.mode = "agent"
    try:
        cfg = cast(AgentConfig, build_config(ns, env))
        ev = asyncio.run(collect(cfg, probes=bool(opts["probes"]), log_wait=float(opts["log_wait"]),
                                 initiate_timeout=float(opts["initiate_timeout"])))
    except ConfigError as exc:
        print(f"raven diagnose: error: {exc}", file=sys.stderr)
        return 2
    findings = analyse(ev)
    sys.stdout.write(render_json(ev, findings) if opts["output"] == "json" else render_text(ev, findings))
    return 1 if findings else 0
