"""Agent mode, the wiring: informers, the plan inputs, the underlay lookup, the kernel applier and the
IPsec driver joined into one reconcile loop.

`agent_main(cfg, api)` is what `raven --mode=agent` runs under the supervisor. `plan_config()` maps the
agent's configuration to the plan's parameters. The plan's inputs are cached in `inputs.PlanInputs`
(pure); the I/O the plan depends on is done here, before each plan: the MTUs of the devices an encrypted
packet crosses (the underlay interface of this node's InternalIP, libipsec's TUN device, the path towards
each peer; netlink) by `UnderlayFollower`, and the addresses the plan's safety net protects (`SafetyNet`: the
API server's, the default gateways). `--cleanup` is `cleanup.agent_cleanup`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from kubernetes_asyncio.client import ApiClient
from prometheus_client import Gauge

from raven.agent.inputs import PlanInputs
from raven.agent.kubeproxy import findings as kube_proxy_findings
from raven.agent.kubeproxy import read_policy
from raven.agent.membership import Membership, membership
from raven.agent.natpunch import SA_UP, NatLoop, NatPuncher
from raven.agent.plan import PlanConfig, PlanResult, ProtectedAddress, node_source
from raven.agent.reconciler import AgentMetrics, Reconciler, VpnDriver
from raven.agent.routes import Router, RouterSettings, RoutingMetrics
from raven.agent.staging import Evidence, Stager, StagingMetrics, Verify
from raven.agent.wgkeys import KeyPublisher
from raven.api.constants import ENDPOINT_TYPE_TUNNEL
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.api.pathreport import STALE_AFTER_HEARTBEATS, PathReport, PathReportStatus, RoutedPath
from raven.config import AgentConfig, carry_plan_settings
from raven.dataplane import devices, mtu
from raven.dataplane.ingress import IngressFilterApplier, IngressGuard
from raven.dataplane.ipsec import Credentials, IPsecDriver, TunnelState
from raven.dataplane.kernel import KernelApplier, Ownership
from raven.dataplane.natrules import read_nat_rules
from raven.dataplane.probenat import ProbeNatApplier
from raven.dataplane.state import INTER_GATEWAY_LINK, INTRA_POOL_LINK, WIREGUARD_LINK, IPsecConnection
from raven.dataplane.tunnel import DriverUnavailable
from raven.dataplane.underlay import Underlay, default_gateways, detect_underlay
from raven.dataplane.wgkernel import choose_data_plane
from raven.dataplane.wireguard import WgDataPlane, WireGuardDriver, load_or_create_private_key
from raven.health import CheckResult
from raven.kube.client import GATEWAYS, NODES, PATHREPORTS, KubeClient
from raven.kube.informer import Informer
from raven.kube.typed import TypedClient, TypedEvent, TypedInformer
from raven.log import kv
from raven.nattraversal.core import PunchTarget
from raven.nattraversal.observer import EndpointObserver
from raven.pathhealth.core import HealthParams
from raven.pathhealth.metrics import ProbeMetrics, TunnelByteMetrics
from raven.pathhealth.monitor import PathMonitor
from raven.pathhealth.report import KubeReportStore, ReportWriter, WritePolicy
from raven.pathhealth.targets import ProbeTarget
from raven.routing.choice import RouteChoice
from raven.routing.selector import Hysteresis
from raven.runtime import Runtime

log = logging.getLogger(__name__)

MIN_BELIEVED_PATH_MTU = 1280
# Path MTUs are read again when the peers change, else at most this often: a lookup is cheap (~10 us per peer),
# but a PMTU exception changes rarely (they expire after 10 min), and a plan's cost stays flat with many peers.
PATH_MTU_REFRESH_S = 60.0
# kube-proxy's nat rules are read this often (one iptables-save fork) and findings logged when they change.
KUBE_PROXY_CHECK_S = 300.0
# A tunnel candidate's first plan waits this long at most for the PathReports (routing by cost's input).
REPORTS_SYNC_WAIT_S = 10.0
RAVEN_LINKS = (INTRA_POOL_LINK, INTER_GATEWAY_LINK)


@dataclass(frozen=True)
class Detected:
    """What the plan needs to know about this node's devices (see `raven.dataplane.devices`)."""

    underlay: Underlay | None = None
    tunnel_device: devices.TunnelDevice | None = None  # libipsec's TUN, when charon uses it
    path_mtu: int | None = None  # the smallest path MTU towards a peer's outer address, when known
    # An address this node already holds inside its pod CIDR (the CNI bridge's, cilium_host's): the plan's
    # node source prefers it (`raven.agent.plan.node_source`).
    node_source: str | None = None


def plan_config(cfg: AgentConfig, detected: Detected | Underlay | None) -> PlanConfig:
    """The plan's parameters: the agent's (validated) plan settings plus what was detected on the node."""
    base = with_driver(cfg, carry_plan_settings(cfg, PlanConfig()))
    if detected is None:
        return base
    if isinstance(detected, Underlay):
        detected = Detected(underlay=detected)
    if detected.underlay is not None:
        base = replace(base, detected_underlay_mtu=detected.underlay.mtu, underlay_ifname=detected.underlay.ifname)
    tun = detected.tunnel_device
    return replace(base, detected_tunnel_device_mtu=tun.mtu if tun is not None else None,
                   detected_path_mtu=detected.path_mtu, detected_node_source=detected.node_source)


async def check_kube_proxy(inputs: PlanInputs, interval: float = KUBE_PROXY_CHECK_S) -> None:
    """Log what kube-proxy's masquerade policy means for this node's cross-pool Service traffic
    (`raven.agent.kubeproxy`), once per change of the findings."""
    last: list[str] | None = None
    while True:
        node = inputs.node()
        text = await asyncio.to_thread(read_nat_rules)
        if node is not None and text is not None:
            found = kube_proxy_findings(read_policy(text), node.pod_cidrs, node_source(node.pod_cidrs))
            if found != last:
                for line in found:
                    log.warning("kube-proxy", extra=kv(node=node.name, finding=line))
                if not found and last:
                    log.info("kube-proxy", extra=kv(node=node.name, finding="no problem found"))
                last = found
        await asyncio.sleep(interval)


def with_driver(cfg: AgentConfig, base: PlanConfig) -> PlanConfig:
    """The plan's view of the tunnel driver: with WireGuard, raven1 rides raven-wg0 (its MTU, the device the
    peers' inner addresses are routed into, the device decrypted packets arrive from)."""
    if cfg.vpn_driver != "wireguard":
        return base
    return replace(base, tunnel_encapsulation="wireguard", ipsec_tun_ifname=WIREGUARD_LINK)


def ownership(cfg: PlanConfig) -> Ownership:
    return Ownership(
        rt_proto=cfg.route_protocol,
        tables=frozenset({cfg.table, cfg.return_table}),
        rule_priorities=frozenset({cfg.rule_priority, cfg.return_rule_priority}),
        link_names=frozenset({cfg.intra_pool_link, cfg.inter_gateway_link}),
    )


class UnderlayFollower:
    """The devices on the encrypted path: the underlay (interface of this node's InternalIP, looked up again
    when that IP changes; its MTU read before every plan), libipsec's TUN device (read before every plan:
    charon may start, or restart with another MTU, after the agent), and the path MTU towards the peers of
    the last plan (again when they change, else every `path_refresh_s`). Two netlink requests per plan in
    the steady state; logged when something changes."""

    def __init__(self, tunnel_and_paths: bool = True, path_refresh_s: float = PATH_MTU_REFRESH_S) -> None:
        self._path_refresh_s = path_refresh_s
        # False: only the underlay is looked up (tests planning for a node that is not this host).
        self._tunnel_and_paths = tunnel_and_paths
        self._node_ip: str | None = None
        self.underlay: Underlay | None = None
        self.detected = Detected()
        self.peers: frozenset[str] = frozenset()  # outer addresses of the peers of the last plan
        self._paths: dict[str, int] = {}
        self._paths_of: frozenset[str] = frozenset()
        self._paths_at = 0.0

    async def follow(self, node: Node | None) -> Detected:
        if node is not None and node.internal_ip and node.internal_ip != self._node_ip:
            self.underlay = await detect_underlay(node.internal_ip)
            # Only once the lookup worked: a failed one (raised) is tried again by the next plan.
            self._node_ip = node.internal_ip
            checked = True
        else:
            checked = False
        # One netlink socket for the underlay's MTU and libipsec's TUN device.
        names = devices.LIBIPSEC_DEVICES if self._tunnel_and_paths else ()
        underlay_mtu, tun = await devices.read_links(
            self.underlay.ifname if self.underlay is not None and not checked else None, names
        )
        if self.underlay is not None and not checked:
            if underlay_mtu is None:  # the device went away: look for the node IP again
                self._node_ip = None
                self.underlay = await detect_underlay(node.internal_ip) if node and node.internal_ip else None
            elif underlay_mtu != self.underlay.mtu:
                self.underlay = replace(self.underlay, mtu=underlay_mtu)
        detected = Detected(self.underlay)
        if self._tunnel_and_paths:
            now = time.monotonic()
            if self.peers != self._paths_of or now - self._paths_at >= self._path_refresh_s:
                self._paths = await devices.path_mtus(self.peers) if self.peers else {}
                self._paths_of, self._paths_at = self.peers, now
            # A path MTU below IPv6's minimum is not believed (a forged ICMP could otherwise shrink every tunnel).
            sane = [m for m in self._paths.values() if m >= MIN_BELIEVED_PATH_MTU]
            # Raven's own /32 on raven0/raven1 is not evidence of the CNI's address: skip its devices.
            src = await devices.address_within(node.pod_cidrs, RAVEN_LINKS) if node is not None else None
            detected = Detected(self.underlay, tun, min(sane) if sane else None, src)
        if detected != self.detected:
            u, t = detected.underlay, detected.tunnel_device
            log.info("underlay", extra=kv(node_ip=self._node_ip, ifname=u.ifname if u else None,
                                          mtu=u.mtu if u else None, tunnel_device=t.ifname if t else None,
                                          tunnel_device_mtu=t.mtu if t else None, path_mtu=detected.path_mtu,
                                          node_source=detected.node_source))
            self.detected = detected
        return detected

    def planned(self, result: PlanResult) -> None:
        """Remember the peers' outer addresses of `result`: the next plan reads the path MTU towards them."""
        self.peers = frozenset(a for c in result.state.ipsec for a in c.remote_addrs if _is_ipv4(a))


def _is_ipv4(addr: str) -> bool:
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        return False
    return True


class SafetyNet:
    """The addresses no Raven route may cover, for the plan's safety net: the API server's (the kubeconfig's or
    in-cluster host; a name is resolved until that works) and the main table's default gateways (read before
    every plan: DHCP may move them). A failed lookup keeps the last answer and says so once."""

    def __init__(self, api_host: str | None,
                 gateways: Callable[[], Awaitable[tuple[str, ...]]] = default_gateways) -> None:
        self._api_host = api_host
        self._api: tuple[str, ...] | None = None if api_host else ()
        self._gateways = gateways
        self._default: tuple[str, ...] = ()
        self._failed: set[str] = set()

    async def protected(self) -> tuple[ProtectedAddress, ...]:
        if self._api is None and self._api_host:
            self._api = await self._lookup("api-server", self._resolve(self._api_host))
        default = await self._lookup("default-gateway", self._gateways())
        if default is not None:
            self._default = default
        api = [ProtectedAddress(a, "the API server's address") for a in self._api or ()]
        return (*api, *(ProtectedAddress(a, "the default gateway") for a in self._default))

    async def _lookup(self, what: str, step: Awaitable[tuple[str, ...]]) -> tuple[str, ...] | None:
        try:
            found = await step
        except OSError as exc:
            if what not in self._failed:
                self._failed.add(what)
                log.warning("safety net lookup failed; retried before each plan", extra=kv(what=what, error=str(exc)))
            return None
        self._failed.discard(what)
        return found

    @staticmethod
    async def _resolve(host: str) -> tuple[str, ...]:
        try:
            return (str(ipaddress.ip_address(host)),)
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET)
        return tuple(sorted({str(info[4][0]) for info in infos}))


class MembershipReport:
    """Whether this node is in the network (see raven.agent.membership): one warning when it falls out (and
    one info line when it is back), and the `membership` readiness check naming the reason."""

    def __init__(self, inputs: PlanInputs) -> None:
        self._inputs = inputs
        self.current = Membership()

    def update(self, result: PlanResult) -> None:
        now = membership(self._inputs.node_name, self._inputs.node(), self._inputs.gateway_names(), result)
        if now == self.current:
            return
        if now.problem is not None:
            log.warning("node is out of the network", extra=kv(node=self._inputs.node_name, reason=now.problem,
                                                                ready=now.ready))
        else:
            log.info("node is in the network", extra=kv(node=self._inputs.node_name, gateway=result.gateway))
        self.current = now

    def check(self) -> CheckResult:
        return CheckResult(self.current.ready, self.current.problem or "")


def plan_with_underlay(
    cfg: AgentConfig, inputs: PlanInputs, underlay: UnderlayFollower, safety: SafetyNet | None = None,
    report: MembershipReport | None = None, routing: Callable[[], RouteChoice | None] | None = None,
    punch: Callable[[], tuple[PunchTarget, ...]] | None = None,
) -> Callable[[], Awaitable[PlanResult]]:
    """The reconciler's plan step: follow the underlay and the protected addresses (I/O), then plan from the
    cached inputs (pure) with the current routing choice (`routing`, e.g. `Router.choice`; a make-before-break
    stage may sit in it), then say whether this node is in the network."""

    async def plan_fn() -> PlanResult:
        protected = await safety.protected() if safety is not None else ()
        result = inputs.plan(plan_config(cfg, await underlay.follow(inputs.node())), protected,
                             routing() if routing is not None else None, punch() if punch is not None else ())
        underlay.planned(result)
        if report is not None:
            report.update(result)
        return result

    return plan_fn


def health_params(cfg: AgentConfig) -> HealthParams:
    return HealthParams(down_after=cfg.health_down_after, up_after=cfg.health_up_after, window=cfg.health_window,
                        degraded_loss=cfg.health_degraded_loss, degraded_rtt=cfg.health_degraded_rtt,
                        rtt_change=cfg.health_rtt_change, rtt_change_min=cfg.health_rtt_change_min,
                        establish_after=math.ceil(cfg.health_establish_time / cfg.health_interval))


def with_probes(plan_fn: Callable[[], Awaitable[PlanResult]], monitor: PathMonitor
                ) -> Callable[[], Awaitable[PlanResult]]:
    """The plan step, also telling the path-health monitor what this plan probes."""

    async def plan_and_probe() -> PlanResult:
        result = await plan_fn()
        monitor.update_plan(result.role, result.gateway, result.probes)
        return result

    return plan_and_probe


def path_health(cfg: AgentConfig, client: KubeClient, rt: Runtime, wireguard_key: str = "",
                observer: EndpointObserver | None = None,
                paths: Callable[[], tuple[RoutedPath, ...]] | None = None) -> tuple[PathMonitor, ReportWriter] | None:
    """The path-health monitor and its PathReport writer (None with --no-health-probes). `wireguard_key`: this
    node's WireGuard public key, carried in every status it writes (`raven.agent.wgkeys` writes it first, and
    alone when path health is off), so a report deleted and created again has it back at the next write.
    `observer`: NAT traversal's rendezvous (the NAT'd peers' mapped endpoints), carried in every status too and
    written as soon as it changes."""
    if not cfg.health_probes:
        return None
    metrics = ProbeMetrics(rt.registry)
    monitor = PathMonitor(cfg.node_name, health_params(cfg), cfg.health_interval, cfg.health_timeout,
                          metrics=metrics)

    def on_write(result: str) -> None:
        metrics.report_writes.labels(result).inc()

    def snapshot(now: float) -> PathReportStatus:
        return replace(monitor.status(now), wireguard_public_key=wireguard_key,
                       observed_endpoints=observer.endpoints if observer is not None else (),
                       paths=paths() if paths is not None else ())

    writer = ReportWriter(cfg.node_name, KubeReportStore(TypedClient(client)),
                          WritePolicy(cfg.health_min_write_interval, cfg.health_heartbeat,
                                      cfg.health_rtt_write_interval), snapshot, on_write)
    return monitor, writer


def tunnel_evidence(vpn: VpnDriver, monitor: PathMonitor | None) -> Verify:
    """Make-before-break's evidence (raven.agent.staging): a tunnel is verified when its SA is up (charon's
    CHILD_SA installed, WireGuard's handshake fresh) and the path-health probe through it is `up` (the SA alone
    with --no-health-probes); broken when it has no SA or its probe is `down`."""

    async def verify(names: Mapping[str, str]) -> Evidence:
        try:
            states = await vpn.states()
        except DriverUnavailable:
            states = []  # no daemon, no SA: every tunnel is broken, the plan is applied as it is
        up = {t.name for t in states if t.ike_state == "ESTABLISHED" and t.child_state in SA_UP}
        verified, broken = set(), set()
        for hop, name in names.items():
            probe = monitor.state_of("peer", hop) if monitor is not None else None
            if name in up and probe in (None, "up"):
                verified.add(hop)
            if name not in up or probe == "down":
                broken.add(hop)
        return Evidence(frozenset(verified), frozenset(broken))

    return verify


def with_wireguard_mtu(plan_fn: Callable[[], Awaitable[PlanResult]], driver: WireGuardDriver
                       ) -> Callable[[], Awaitable[PlanResult]]:
    """The plan step, also giving the WireGuard device the MTU raven1's packets need (raven1's + VXLAN)."""

    async def plan_and_size() -> PlanResult:
        result = await plan_fn()
        for link in result.state.links:
            if link.name == INTER_GATEWAY_LINK:
                driver.device_mtu = link.mtu + mtu.VXLAN_OVERHEAD
        return result

    return plan_and_size


def wireguard_summary(plane: WgDataPlane, reason: str) -> str:
    """What /readyz says of the WireGuard data plane: which one, why, its process or adoption, its restarts."""
    if plane.implementation == "kernel":
        how = "adopted" if plane.adopted else "created"
        return f"kernel WireGuard ({how}, recreated {plane.restarts}) for {plane.ifname}: {reason}"
    how = "adopted" if plane.adopted else f"pid {plane.pid}"
    return f"wireguard-go ({how}, restarts {plane.restarts}) for {plane.ifname}: {reason}"


async def start_wireguard(cfg: AgentConfig, driver: WireGuardDriver, reason: str, reconciler: Reconciler,
                          client: TypedClient, gateways: TypedInformer[Gateway], rt: Runtime) -> KeyPublisher:
    """The WireGuard device up (the kernel's or wireguard-go's, adopted or started: `reason` says why this one)
    before the first pass routes into it, then supervised; the public key published in this node's PathReport
    (`raven.agent.wgkeys`); both visible in /readyz, the data plane also in raven_agent_wireguard_implementation."""
    process = driver.process

    def on_start() -> None:
        reconciler.trigger("wireguard-started")

    process.on_start = on_start
    await process.ensure()
    log.info("wireguard data plane", extra=kv(ifname=driver.ifname, implementation=process.implementation,
                                              reason=reason, adopted=process.adopted, pid=process.pid,
                                              public_key=driver.public_key, key_file=cfg.wireguard_key_file))
    Gauge("raven_agent_wireguard_implementation", "1 for the WireGuard data plane in use (kernel or wireguard-go).",
          ["implementation"], registry=rt.registry).labels(process.implementation).set(1)
    rt.supervisor.spawn("wireguard-go" if process.implementation == "wireguard-go" else "wireguard-kernel",
                        process.supervise())

    def wireguard_check() -> CheckResult:
        return CheckResult(True, wireguard_summary(process, reason))

    rt.health.add_readiness_check("wireguard", wireguard_check)
    publisher = KeyPublisher(client, cfg.node_name, driver.public_key, gateways.values)
    rt.supervisor.spawn("wireguard-key", publisher.run())
    rt.health.add_readiness_check("wireguard-key", publisher.ready)
    return publisher


def _tunnel_candidate(node_name: str, inputs: PlanInputs) -> bool:
    return any(ep.node_name == node_name and ep.type == ENDPOINT_TYPE_TUNNEL
               for g in inputs.gateways() for ep in g.spec.all_endpoints)


def router_settings(cfg: AgentConfig) -> RouterSettings:
    return RouterSettings(Hysteresis(cfg.route_hold_time, cfg.route_min_gain, cfg.route_min_gain_ms),
                          timedelta(seconds=STALE_AFTER_HEARTBEATS * cfg.health_heartbeat), cfg.tunnel_cidr)


class RoutingLoop:
    """Runs the router (`raven.agent.routes`) when its inputs changed (a PathReport, a Gateway, this node's role)
    or a better path waits out its hold time, at most every `interval` seconds; a new choice re-plans
    (`on_choice`), and a new next hop for some pool (`via`) marks the node's PathReport for writing (`on_paths`).
    A cost alone is no reason to write: costs move with every RTT sample, and every write makes every gateway
    re-evaluate; the cost is carried along by the writes the report makes anyway (RTT interval, heartbeat)."""

    def __init__(self, router: Router, inputs: PlanInputs, reports: TypedInformer[PathReport],
                 on_choice: Callable[[], None], interval: float = 1.0,
                 on_paths: Callable[[], None] | None = None) -> None:
        self.router = router
        self.inputs = inputs
        self.reports = reports
        self.on_choice = on_choice
        self.on_paths = on_paths
        self.interval = interval
        self.dirty = asyncio.Event()

    def mark(self) -> None:
        self.dirty.set()

    def wrap(self, plan_fn: Callable[[], Awaitable[PlanResult]]) -> Callable[[], Awaitable[PlanResult]]:
        """The plan step, also re-evaluating the routes when this node became (or stopped being) a gateway."""

        async def plan_and_route() -> PlanResult:
            result = await plan_fn()
            if (result.gateway if result.role == "gateway" else None) != self.router.gateway:
                # Became (or stopped being) a gateway, e.g. the first pass after a start: the routes of this very
                # pass come from the router (adopting the paths this node last published), not the default path
                # now and the router's a second later (an agent restart must write nothing).
                self.mark()
                if self.step(time.time()):
                    self.on_choice()
                    result = await plan_fn()
            return result

        return plan_and_route

    def step(self, now: float) -> bool:
        """One evaluation (calling `on_choice` / `on_paths` for what changed); whether the choice changed."""
        last = self.inputs.last
        gateway = last.gateway if last is not None and last.role == "gateway" else None
        before, vias = self.router.choice, self.router.vias()
        self.router.update(gateway, self.inputs.gateways(), self.reports.values(), now, self._published(gateway))
        changed = self.router.choice != before
        if changed:
            self.on_choice()
        if self.on_paths is not None and self.router.vias() != vias:
            self.on_paths()
        return changed

    def _published(self, gateway: str | None) -> tuple[RoutedPath, ...]:
        """The paths this node's own PathReport says it used as `gateway`'s active endpoint."""
        own = self.reports.get(self.inputs.node_name)
        if gateway is None or own is None or own.status.role != "gateway" or own.status.gateway != gateway:
            return ()
        return own.status.paths

    async def run(self) -> None:
        while True:
            if not self.router.pending():
                await self.dirty.wait()
            self.dirty.clear()
            self.step(time.time())
            await asyncio.sleep(self.interval)


def agent_main(cfg: AgentConfig, api: ApiClient) -> Callable[[Runtime], Coroutine[Any, Any, None]]:
    """The agent's main coroutine over `api` (from `new_api_client`, loaded before anything starts)."""

    async def main(rt: Runtime) -> None:
        client = KubeClient(api)
        kernel = KernelApplier(ownership(plan_config(cfg, None)))
        wg: WireGuardDriver | None = None
        vpn: IPsecDriver | WireGuardDriver
        wg_reason = ""
        if cfg.vpn_driver == "wireguard":
            choice = await choose_data_plane(cfg.wireguard_implementation)
            wg_reason = choice.reason
            wg = vpn = WireGuardDriver(load_or_create_private_key(cfg.wireguard_key_file), cfg.psk,
                                       process=choice.plane)
        else:
            vpn = IPsecDriver(cfg.vici_socket, cfg.psk)
        log.info("agent starting", extra=kv(node=cfg.node_name, vpn_driver=cfg.vpn_driver, vici=cfg.vici_socket,
                                            ipsec_auth=cfg.ipsec_auth, psk_source=cfg.psk_source or None))
        for note in cfg.openyurt_notes:  # OpenYurt's raven-agent-config keys (raven/openyurt_config.py)
            (log.warning if "not used" in note or "overridden" in note else log.info)(
                "openyurt agent setting", extra=kv(detail=note))
        try:
            gateways = TypedInformer(Informer(client, GATEWAYS, "gateways", rt.registry), Gateway.from_dict)
            # Only this node's facts feed the plan: caching every Node would cost memory on big clusters.
            nodes = TypedInformer(
                Informer(client, NODES, "nodes", rt.registry, field_selector=f"metadata.name={cfg.node_name}"),
                Node.from_dict,
            )
            inputs = PlanInputs(cfg.node_name, gateways, nodes)
            report = MembershipReport(inputs)
            router: Router | None = None
            reports: TypedInformer[PathReport] | None = None
            if cfg.routing_by_cost and cfg.health_probes:
                # Every node's report is cached (members' too: no field selects gateways' reports only); parsed
                # once per resourceVersion. Read only: agents write their own report only.
                reports = TypedInformer(Informer(client, PATHREPORTS, "pathreports", rt.registry),
                                        PathReport.from_dict)
                router = Router(router_settings(cfg), RoutingMetrics(rt.registry))

            def route_choice() -> RouteChoice | None:
                return router.choice if router is not None else None

            # NAT traversal needs the probes (its evidence) and routing by cost (what moves the pool).
            puncher = NatPuncher(cfg.tunnel_cidr) if cfg.nat_traversal and router is not None else None
            if cfg.nat_traversal and puncher is None:
                log.warning("nat traversal off", extra=kv(reason="needs --health-probes and --routing-by-cost"))

            def punch_targets() -> tuple[PunchTarget, ...]:
                return puncher.punch if puncher is not None else ()

            plan_fn = plan_with_underlay(cfg, inputs, UnderlayFollower(), SafetyNet(client.server_host), report,
                                         route_choice, punch_targets)
            if wg is not None:
                plan_fn = with_wireguard_mtu(plan_fn, wg)
            observer = EndpointObserver()
            health = path_health(cfg, client, rt, wg.public_key if wg is not None else "", observer,
                                 router.paths if router is not None else None)
            if health is not None:
                plan_fn = with_probes(plan_fn, health[0])
                observer.on_change = health[1].mark_dirty
            routing: RoutingLoop | None = None
            if router is not None and reports is not None:
                def on_choice() -> None:
                    reconciler.trigger("routing")

                routing = RoutingLoop(router, inputs, reports, on_choice,
                                      on_paths=health[1].mark_dirty if health is not None else None)
                plan_fn = routing.wrap(plan_fn)
            nat: NatLoop | None = None
            if puncher is not None and health is not None and router is not None and routing is not None:
                nat_router, nat_routing, nat_monitor = router, routing, health[0]

                def peer_probe(inner: str) -> str | None:
                    return nat_monitor.state_of("peer", inner)

                nat_writer = health[1]
                published_links: frozenset[tuple[str, str]] = frozenset()

                def on_nat() -> None:
                    nonlocal published_links
                    links = puncher.direct_links if puncher is not None else frozenset()
                    nat_router.extra_direct = links
                    nat_routing.mark()
                    if links != published_links:  # a verified pair's probe is published from now on (or no more)
                        published_links = links
                        nat_writer.mark_dirty()
                    reconciler.trigger("nat-traversal")

                def attempt(target: ProbeTarget) -> bool:
                    return target.kind == "peer" and puncher is not None and puncher.attempting(target.gateway)

                nat_monitor.quiet = attempt

                nat = NatLoop(puncher, inputs, peer_probe, on_nat)
                plan_fn = nat.wrap(plan_fn)
            # TunnelByteMetrics: the dataplane metrics plus the tunnel byte counters path health reports.
            monitor = health[0] if health is not None else None
            stager = Stager(cfg.path_change_grace, tunnel_evidence(vpn, monitor), StagingMetrics(rt.registry),
                            settle=cfg.path_change_settle)
            reconciler = Reconciler(
                plan_fn, inputs.synced, IngressGuard(kernel, IngressFilterApplier(), ProbeNatApplier()), vpn,
                AgentMetrics(rt.registry), TunnelByteMetrics(rt.registry), resync_period=cfg.resync_period,
                stager=stager,
            )
            reconciler.on_states = observer.update
            if nat is not None:
                nat_loop = nat

                def on_states(conns: Iterable[IPsecConnection], states: list[TunnelState]) -> None:
                    observer.update(conns, states)
                    nat_loop.on_states(conns, states)

                reconciler.on_states = on_states
            if monitor is not None:
                def on_path_state(target: ProbeTarget, state: str) -> None:
                    if target.kind == "peer" and nat is not None:
                        nat.mark()
                    if target.kind == "peer" and stager.last is not None and stager.last.held:
                        reconciler.trigger(f"path-health/{target.gateway}")  # a held path change may go now

                monitor.on_change = on_path_state

            if isinstance(vpn, IPsecDriver) and cfg.ipsec_auth == "cert":
                # Imported here: the identity's X.509 code (cryptography) is ~40 ms of a start a PSK node skips.
                from raven.agent.identity import NodeIdentity

                driver = vpn

                def on_credentials(creds: Credentials, retired: list[str]) -> None:
                    driver.set_credentials(creds, retired)
                    reconciler.trigger("ipsec-certificate")

                identity = NodeIdentity(cfg.node_name, cfg.ipsec_identity_dir, TypedClient(client), on_credentials,
                                        rt.registry)
                rt.supervisor.spawn("ipsec-identity", identity.run())
                rt.health.add_readiness_check("ipsec-identity", identity.check)

            publisher: KeyPublisher | None = None
            if wg is not None:
                publisher = await start_wireguard(cfg, wg, wg_reason, reconciler, TypedClient(client), gateways, rt)

            def on_gateway(ev: TypedEvent[Gateway]) -> None:
                if inputs.on_gateway(ev):
                    reconciler.trigger(f"gateway/{ev.name}")
                if routing is not None:
                    routing.mark()
                    watch_reports()
                if nat is not None:
                    nat.mark()
                if publisher is not None:
                    publisher.check()

            def on_node(ev: TypedEvent[Node]) -> None:
                if inputs.on_node(ev):
                    reconciler.trigger(f"node/{ev.name}")

            watching = False

            def watch_reports() -> None:
                """Only a tunnel candidate (a node in some Gateway's spec.endpoints) can become a gateway and route:
                its agent watches the PathReports from then on (a standby's cache is warm when it takes over); a
                plain member never caches them (~9 MiB at 100 gateways)."""
                nonlocal watching
                if watching or routing is None or reports is None or not _tunnel_candidate(cfg.node_name, inputs):
                    return
                watching = True
                loop = routing

                def on_report(ev: TypedEvent[PathReport]) -> None:
                    loop.mark()

                reports.add_handler(on_report)
                rt.supervisor.spawn("informer-pathreports", reports.run())
                rt.health.add_readiness_check("informer-pathreports", reports.check)

            gateways.add_handler(on_gateway)
            nodes.add_handler(on_node)
            rt.supervisor.spawn("informer-gateways", gateways.run())
            rt.supervisor.spawn("informer-nodes", nodes.run())
            rt.supervisor.spawn("kube-proxy-check", check_kube_proxy(inputs))
            rt.health.add_readiness_check("informer-gateways", gateways.check)
            rt.health.add_readiness_check("informer-nodes", nodes.check)
            rt.health.add_readiness_check("reconciled", reconciler.ready)
            rt.health.add_readiness_check("membership", report.check)
            await gateways.wait_synced()
            await nodes.wait_synced()
            reconciler.trigger("synced")
            if routing is not None:
                watch_reports()
                if watching and reports is not None:
                    # The first plan routes by the reports (and adopts the paths this node published before a
                    # restart): wait for them, a while at most (the plan falls back to the default paths).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reports.wait_synced(), REPORTS_SYNC_WAIT_S)
                rt.supervisor.spawn("routing", routing.run())
            if nat is not None:
                rt.supervisor.spawn("nat-traversal", nat.run())
            if health is not None:
                # Probe results are data (logged, metered, published), never readiness: no check registered.
                rt.supervisor.spawn("path-health", health[0].run(health[1]))
            await reconciler.run()
        finally:
            # The data plane stays as it is: an agent restart must not drop traffic.
            await kernel.close()
            if vpn is not None:
                await vpn.close()
            await client.close()

    return main
