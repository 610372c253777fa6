"""Every user setting, declared once, and the frozen, validated config of each mode built from them.

A setting is one field of `CommonConfig` (both modes), `NetworkRanges` (the cluster's address ranges, which both
modes read from the same ConfigMap: the controller checks pod CIDRs against them, the agent plans with them),
`SharedHealth` (the path-health timing both modes must agree on),
`ControllerConfig` or `AgentConfig` (whose plan settings sit in `PlanSettings`), declared with
`setting(default, help, check=..., env=..., cluster=...)`.
Its flag is the field name with dashes (`tunnel_cidr` -> `--tunnel-cidr`), its type the field's annotation.
`SETTINGS` lists them all; from it come the CLI flags (`raven.cli`), the environment fallbacks (the flag
wins), the README flag table and the agent ConfigMap (`raven.docs`). The plan's parameters
(`raven.agent.plan.PlanConfig`) extend `PlanSettings`, so they are these same fields and checks.

Validation runs in `__post_init__`, once per construction: a bad value is a `ConfigError` whose message
starts with the flag it is about, shown as one line on stderr with exit code 2 instead of a traceback
minutes later. Fields without `setting(...)` (`common`, the key read from `--psk-file`, the Lease identity)
are derived by `raven.cli` from settings and the environment.

A new setting is one line: a field with `setting(...)`; regenerate the docs with `python -m raven.docs --write`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from raven.agent.addressing import compute_mtus
from raven.dataplane.state import POOL_VIRTUAL_NEXT_HOP

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

MIN_PSK_LENGTH = 16
# A path MTU below this is certainly a misconfiguration (IPv4 hosts must accept 576-byte datagrams).
MIN_PATH_MTU = 576

Mode = Literal["common", "network", "controller", "agent"]
T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is shown to the user as is."""


@dataclass(frozen=True, order=True)
class ListenAddr:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen_addr(text: str) -> ListenAddr:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[V6]:PORT`; port 0 picks a free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port {port_text!r} in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} is out of range 0-65535")
    if host and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host {host!r} in {text!r} is not an IP address") from None
    return ListenAddr(host, port)


# --- checks: a value in, a problem (without the flag, which the caller prepends) or None out -------------

Check = Callable[[Any], "str | None"]


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def not_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value}"


def fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def not_empty(value: str | tuple[str, ...]) -> str | None:
    return None if value else "must not be empty"


def vni(value: int) -> str | None:
    return None if 1 <= value <= 0xFFFFFF else f"VNI {value} is out of range 1-16777215"


def udp_port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"port {value} is out of range 1-65535"


def mtu(value: int | None) -> str | None:
    return None if value is None or 576 <= value <= 65535 else f"{value} is out of range 576-65535"


def ipv4_network(value: str) -> str | None:
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        return f"{value!r} is not a valid IPv4 CIDR"
    if net.version != 4 or net.prefixlen > 24:
        return f"{value!r} must be an IPv4 network of /24 or larger"
    return None


def networks(value: tuple[str, ...]) -> str | None:
    for text in value:
        try:
            ipaddress.ip_network(text)
        except ValueError:
            return f"{text!r} is not a valid CIDR (host bits must be zero)"
    return None


# --- declaration ----------------------------------------------------------------------------------------

_META = "raven.setting"


@dataclass(frozen=True)
class _Declared:
    help: str
    check: Check | None
    env: str | None
    cluster: bool


def setting(default: T, help: str, *, check: Check | None = None, env: str | None = None,
            cluster: bool = False) -> T:
    """Declare a config field as a user setting (see the module docstring).

    `env`: the environment variable read when the flag is absent. `cluster`: the value must be the same on
    every node, so it is set in the ConfigMap raven-agent-config and read from `$RAVEN_<NAME>` (the
    default `env` of a cluster setting).
    """
    return field(default=default, metadata={_META: _Declared(help, check, env, cluster)})


@dataclass(frozen=True)
class Setting:
    """One user setting as the CLI, the environment, the docs and the ConfigMap see it."""

    name: str  # the config field, e.g. "tunnel_cidr"
    mode: Mode
    default: object
    help: str
    env: str | None
    check: Check | None
    cluster: bool
    parse: Callable[[str], object]  # text of a flag or env var -> value; ValueError with the problem
    choices: tuple[str, ...] | None
    kind: Literal["value", "switch", "toggle"]  # --x VALUE, --x, --x/--no-x

    @property
    def flag(self) -> str:
        return flag(self.name)

    def show(self, value: object) -> str:
        """A value as it is written on the command line, in the environment or in the ConfigMap."""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return "" if value is None else str(value)

    def read(self, text: str, source: str) -> object:
        try:
            return self.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{self.flag}: {exc}{source}") from None


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _parse_number(kind: type[int] | type[float]) -> Callable[[str], object]:
    def parse(text: str) -> object:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None

    return parse


def _parse_choice(choices: tuple[str, ...]) -> Callable[[str], object]:
    def parse(text: str) -> object:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _parse_list(text: str) -> object:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _codec(hint: object) -> tuple[Callable[[str], object], tuple[str, ...] | None]:
    """How text becomes a value of the field's type (`X | None` parses as X: None is "unset")."""
    if isinstance(hint, UnionType):
        (inner,) = (a for a in typing.get_args(hint) if a is not NoneType)
        return _codec(inner)
    if typing.get_origin(hint) is Literal:
        choices = tuple(str(a) for a in typing.get_args(hint))
        return _parse_choice(choices), choices
    if hint is bool:
        return _parse_bool, None
    if hint is int or hint is float:
        return _parse_number(hint), None
    if hint is str:
        return str, None
    if hint is ListenAddr:
        return parse_listen_addr, None
    if hint == tuple[str, ...]:
        return _parse_list, None
    raise TypeError(f"no parser for settings of type {hint!r}")


def _declared(cls: type, mode: Mode, skip: type | tuple[type, ...] = ()) -> tuple[Setting, ...]:
    hints = typing.get_type_hints(cls)
    skipped = {f.name for base in (skip if isinstance(skip, tuple) else (skip,)) for f in fields(base)}
    out: list[Setting] = []
    for f in fields(cls):
        decl = f.metadata.get(_META)
        if f.name in skipped or not isinstance(decl, _Declared):
            continue
        hint = hints[f.name]
        parse, choices = _codec(hint)
        kind: Literal["value", "switch", "toggle"] = "value"
        if hint is bool:
            kind = "toggle" if f.default is True else "switch"
        env = decl.env or (f"RAVEN_{f.name.upper()}" if decl.cluster else None)
        out.append(Setting(f.name, mode, f.default, decl.help, env, decl.check, decl.cluster, parse, choices,
                           kind))
    return tuple(out)


def _default_identity() -> str:
    """A controller replica's Lease identity when POD_NAME is not set: host name and a random suffix."""
    import uuid  # here, not at the top: uuid imports platform, a cost every agent start would pay for nothing

    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_fields(cfg: DataclassInstance) -> None:
    """Every declared setting's own check; the message names the flag."""
    for f in fields(cfg):
        decl = f.metadata.get(_META)
        if isinstance(decl, _Declared) and decl.check is not None:
            problem = decl.check(getattr(cfg, f.name))
            if problem is not None:
                raise ConfigError(f"{flag(f.name)}: {problem}")


# --- the configs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommonConfig:
    # The kubeconfig path raven.cli resolved (checked readable), or None for in-cluster config.
    kubeconfig: str | None = setting(None, "kubeconfig file (neither given: in-cluster config)", env="KUBECONFIG")
    # (ListenAddr is frozen: a shared default is safe.)
    # Loopback by default: nothing is served to the network unless asked for (an agent runs with hostNetwork,
    # so `:PORT` would be every address of the node, a gateway's public one included). The manifests bind
    # metrics to the node's IP (agent) or the pod's IP (controller), from the downward API.
    health_addr: ListenAddr = setting(ListenAddr("127.0.0.1", 10275),  # noqa: RUF009
                                      "HOST:PORT serving /healthz and /readyz (also /metrics); `:PORT` is every "
                                      "address")
    metrics_addr: ListenAddr = setting(ListenAddr("127.0.0.1", 10265),  # noqa: RUF009
                                       "HOST:PORT serving /metrics (may equal --health-addr); the manifests set "
                                       "the node's or pod's IP")
    log_format: Literal["text", "json"] = setting("text", "log line format")
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", "least severe level logged")

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True, kw_only=True)
class NetworkRanges:
    """The cluster's own address ranges: the same value in the controller and on every node (ConfigMap).

    The agent plans raven0/raven1 addresses inside them; the controller refuses a Node whose pod CIDR
    overlaps them (such a route would capture the overlay's own traffic)."""

    overlay_cidr: str = setting("240.0.0.0/8", "raven0 addresses are derived from node IPs inside this network",
                                check=ipv4_network, cluster=True)
    tunnel_cidr: str = setting("241.0.0.0/16", "each Gateway gets a stable inner address from this network",
                               check=ipv4_network, cluster=True)


@dataclass(frozen=True, kw_only=True)
class SharedHealth:
    """Path-health timing that the controller and every agent must agree on (the ConfigMap): how long a new path
    may take to come up. Agents report such a path down only after it; the controller counts a new tunnel's losses
    (after either end's election) against a gateway only after it."""

    health_establish_time: float = setting(10.0, "seconds a new path (a new target, a tunnel after either end's "
                                           "election, one whose far end or gateway moved) may take to come up: "
                                           "agents report it down, and the controller counts its losses against a "
                                           "gateway, only after that", check=positive, cluster=True)


def _check_ranges(cfg: NetworkRanges) -> None:
    """The two ranges together (each was checked by its own setting's check first)."""
    overlay, tunnel = ipaddress.ip_network(cfg.overlay_cidr), ipaddress.ip_network(cfg.tunnel_cidr)
    if overlay.overlaps(tunnel):
        raise ConfigError(f"--tunnel-cidr: {cfg.tunnel_cidr} overlaps --overlay-cidr {cfg.overlay_cidr}")
    vnh = ipaddress.ip_address(POOL_VIRTUAL_NEXT_HOP)
    for name, net in (("overlay_cidr", overlay), ("tunnel_cidr", tunnel)):
        if vnh in net:
            raise ConfigError(f"{flag(name)}: {net} contains {vnh}, the pools' virtual next hop")


@dataclass(frozen=True)
class ControllerConfig(NetworkRanges, SharedHealth):
    common: CommonConfig
    leader_elect: bool = setting(True, "compete for a Lease so only one replica writes; --no-leader-elect for "
                                 "a single replica")
    lease_namespace: str = setting("kube-system", "namespace of the Lease", check=not_empty)
    lease_name: str = setting("raven-controller", "name of the Lease", check=not_empty)
    lease_duration: float = setting(15.0, "seconds a standby waits before taking over an unrenewed Lease",
                                    check=positive)
    renew_deadline: float = setting(10.0, "seconds the leader keeps trying to renew before it stops writing",
                                    check=positive)
    retry_period: float = setting(2.0, "seconds between Lease acquire/renew attempts", check=positive)
    health_failover: bool = setting(True, "replace a Ready active gateway that the agents' PathReports show is not "
                                    "forwarding, and keep a NotReady one the data plane still reaches; "
                                    "--no-health-failover: Node readiness only")
    health_hold_time: float = setting(60.0, "seconds a gateway replaced on health evidence must show nothing against "
                                      "it before it may be elected again", check=positive)
    health_settle_time: float = setting(1.0, "seconds a loss must last before it counts against a gateway when "
                                        "another report still says the far end is up (that report may just be "
                                        "written later)", check=positive)
    health_stale_after: float = setting(180.0, "seconds after which a PathReport's heartbeat is stale (no evidence); "
                                        "3 x the agents' heartbeat", check=positive)
    service_cidr: tuple[str, ...] = setting((), "the cluster's Service CIDRs (comma-separated, as the API server's "
                                            "--service-cluster-ip-range); a Node whose pod CIDR overlaps one is "
                                            "left out of the network. Unset: not checked", check=networks,
                                            cluster=True)
    ipsec_ca_secret: str = setting("raven-ipsec-ca", "Secret (in --lease-namespace) holding the CA that signs "
                                   "the nodes' IPsec certificates; created when absent", check=not_empty)
    ipsec_cert_lifetime: float = setting(7 * 86400.0, "seconds a node's IPsec certificate is valid (agents "
                                         "renew it at two thirds of its life)", check=positive)
    agent_service_account: str = setting("system:serviceaccount:raven-system:raven-agent",
                                         "the only user whose certificate requests the IPsec signer approves",
                                         check=not_empty)
    # Who we are in the Lease: stable per pod (POD_NAME), unique per process otherwise.
    identity: str = field(default_factory=_default_identity)

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_ranges(self)
        if not self.renew_deadline < self.lease_duration:
            raise ConfigError(f"--renew-deadline: must be shorter than --lease-duration ({self.renew_deadline} >= "
                              f"{self.lease_duration})")
        if not self.retry_period < self.renew_deadline:
            raise ConfigError(f"--retry-period: must be shorter than --renew-deadline ({self.retry_period} >= "
                              f"{self.renew_deadline})")


def path_mtu_problem(underlay_mtu: int, esp_proposals: tuple[str, ...], ipsec_device_mtu: int | None) -> str | None:
    path = compute_mtus(underlay_mtu, esp_proposals, ipsec_device_mtu).cross_pool_path
    return f"{underlay_mtu} leaves a path MTU below {MIN_PATH_MTU}" if path < MIN_PATH_MTU else None


@dataclass(frozen=True, kw_only=True)
class PlanSettings(NetworkRanges):
    """The agent settings the plan reads (`raven.agent.plan.PlanConfig` extends this class), the cluster's
    `NetworkRanges` included."""

    vxlan_vni: int = setting(200, "VNI of the intra-pool VXLAN raven0", check=vni, cluster=True)
    vxlan_port: int = setting(4472, "UDP port of raven0", check=udp_port, cluster=True)
    tunnel_vni: int = setting(201, "VNI of the inter-gateway VXLAN raven1", check=vni, cluster=True)
    tunnel_port: int = setting(4473, "UDP port of raven1", check=udp_port, cluster=True)
    underlay_mtu: int | None = setting(None, "MTU of the node's network; unset: read from the device holding "
                                       "the node IP", check=mtu)
    ipsec_device_mtu: int | None = setting(None, "override for the MTU of a userspace ESP device that carries "
                                           "inter-gateway packets; unset: read from strongSwan "
                                           "kernel-libipsec's ipsec0 before each plan when it exists "
                                           "(none with kernel ESP)", check=mtu)
    ike_proposals: tuple[str, ...] = setting(("aes256-sha256-modp2048",), "comma-separated IKE proposals",
                                             check=not_empty, cluster=True)
    esp_proposals: tuple[str, ...] = setting(("aes256-sha256",), "comma-separated ESP proposals",
                                             check=not_empty, cluster=True)
    ipsec_auth: Literal["cert", "psk"] = setting(
        "cert", "how gateways authenticate each other: cert (each node's own certificate from the cluster CA; "
        "a peer accepts Gateway G only from G's active endpoint) or psk (one cluster-wide pre-shared key: "
        "weaker, any node holding it can impersonate any gateway)", cluster=True)

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.vxlan_vni == self.tunnel_vni:
            raise ConfigError(f"--tunnel-vni: must differ from --vxlan-vni (both {self.vxlan_vni})")
        if self.vxlan_port == self.tunnel_port:
            raise ConfigError(f"--tunnel-port: must differ from --vxlan-port (both {self.vxlan_port})")
        _check_ranges(self)
        if self.underlay_mtu is not None:
            problem = path_mtu_problem(self.underlay_mtu, self.esp_proposals, self.ipsec_device_mtu)
            if problem:
                raise ConfigError(f"--underlay-mtu: {problem}")


P = TypeVar("P", bound=PlanSettings)


def carry_plan_settings(source: PlanSettings, target: P) -> P:
    """`target` with every plan setting taken from `source` (e.g. an AgentConfig into a PlanConfig)."""
    return replace(target, **{f.name: getattr(source, f.name) for f in fields(PlanSettings)})


@dataclass(frozen=True, kw_only=True)
class AgentConfig(PlanSettings, SharedHealth):
    common: CommonConfig
    node_name: str = setting("", "this node's name (required)", env="NODE_NAME")
    vpn_driver: Literal["ipsec", "wireguard"] = setting("ipsec", "tunnel between gateways (ipsec: through "
                                                        "charon over VICI; wireguard: the kernel's WireGuard, "
                                                        "or wireguard-go started by the agent)")
    wireguard_implementation: Literal["auto", "kernel", "wireguard-go"] = setting(
        "auto", "WireGuard's data plane (--vpn-driver=wireguard; auto: the kernel module when the kernel can "
        "create a wireguard device, else wireguard-go; a running wireguard-go is adopted either way)")
    vici_socket: str = setting("/var/run/charon.vici", "charon's VICI socket", check=not_empty)
    psk_file: str | None = setting(None, "file holding the cluster's pre-shared key (IPsec's PSK; with "
                                   "--vpn-driver=wireguard the secret each pair's preshared key is derived from); "
                                   "unset: the key in $VPN_CONNECTION_PSK. There is no default key")
    wireguard_key_file: str = setting("/var/lib/raven/wireguard/private.key", "this node's WireGuard private key "
                                      "(--vpn-driver=wireguard; base64, made 0600 when missing, never sent "
                                      "anywhere; its public key is published in the node's own PathReport)",
                                      check=not_empty)
    ipsec_identity_dir: str = setting("/var/lib/raven/ipsec", "directory of this node's IPsec private key "
                                      "(0600, made here, never sent anywhere) and certificate (--ipsec-auth=cert)",
                                      check=not_empty)
    resync_period: float = setting(30.0, "seconds between full reconciles even without events", check=positive,
                                   cluster=True)
    cleanup: bool = setting(False, "remove every route, rule, device and IPsec connection Raven created, "
                            "then exit")
    openyurt_agent_config: str | None = setting(None, "directory of OpenYurt's raven-agent-config keys, one file "
                                                "each (a mounted ConfigMap): each is mapped onto our setting or "
                                                "rejected, see raven/openyurt_config.py; unset: none read")
    health_probes: bool = setting(True, "probe data-plane paths (ICMP echo) and publish this node's PathReport; "
                                  "--no-health-probes: neither", cluster=True)
    health_interval: float = setting(0.2, "seconds between two path-health probes of one target", check=positive,
                                     cluster=True)
    health_timeout: float = setting(0.5, "seconds a probe waits for its reply before it counts as lost",
                                    check=positive, cluster=True)
    health_down_after: int = setting(3, "consecutive lost probes that make a target down", check=positive,
                                     cluster=True)
    health_up_after: int = setting(3, "consecutive replies that bring a down target back", check=positive,
                                   cluster=True)
    health_window: int = setting(10, "probes over which the loss ratio is measured", check=positive, cluster=True)
    health_degraded_loss: float = setting(0.3, "loss ratio over the window from which a target is degraded",
                                          check=fraction, cluster=True)
    health_degraded_rtt: float = setting(0.5, "RTT estimate (seconds) above which a target is degraded",
                                         check=positive, cluster=True)
    health_rtt_change: float = setting(0.5, "relative change of a target's RTT estimate worth a PathReport write",
                                       check=positive, cluster=True)
    health_rtt_change_min: float = setting(0.004, "least change of a target's RTT estimate (seconds) worth a "
                                           "PathReport write (the resolution routing by cost sees: keep it below "
                                           "--route-min-gain-ms)", check=positive, cluster=True)
    health_rtt_write_interval: float = setting(30.0, "an RTT move alone (no state change) is written at most this "
                                               "many seconds after the last PathReport write", check=positive,
                                               cluster=True)
    health_heartbeat: float = setting(60.0, "seconds between PathReport writes when nothing changed (a report "
                                      "3 heartbeats old is stale)", check=positive, cluster=True)
    health_min_write_interval: float = setting(2.0, "least seconds between two PathReport writes of a node (changes "
                                               "in between are coalesced)", check=positive, cluster=True)
    path_change_grace: float = setting(5.0, "seconds an old path (a relay's allowance for the moved subnets, a "
                                       "tunnel no longer planned) is kept after routes moved off it (make-before-"
                                       "break: the far end switches on its own clock)", check=positive)
    path_change_settle: float = setting(1.0, "least seconds a planned path change waits before routes move (the "
                                        "far end plans it too, so its ingress filter accepts the new path); 0: "
                                        "as soon as the new tunnel is verified", check=not_negative)
    routing_by_cost: bool = setting(True, "active gateways route each remote pool by measured cost (RTT, loss, the "
                                    "Gateways' raven-py.io/link-weight) over the published PathReports: direct, or "
                                    "through the cheapest relay (raven/routing); --no-routing-by-cost: direct, or "
                                    "the top-ranked relay", cluster=True)
    nat_traversal: bool = setting(False, "NAT'd active gateways punch direct tunnels to their NAT'd peers from the "
                                  "mappings the controller publishes (raven/agent/natpunch.py); a pair goes direct "
                                  "once a probe answers through it, else stays relayed. Needs health probes and "
                                  "routing by cost", cluster=True)
    route_hold_time: float = setting(10.0, "seconds a better path must stay better before traffic moves to it",
                                     check=positive, cluster=True)
    route_min_gain: float = setting(0.2, "least relative gain (of the current path's cost) worth a path change",
                                    check=fraction, cluster=True)
    route_min_gain_ms: float = setting(5.0, "least gain (milliseconds of cost) worth a path change", check=positive,
                                       cluster=True)
    # The pre-shared key itself (from psk_file or VPN_CONNECTION_PSK); never logged, never defaulted.
    psk: str = field(default="", repr=False)
    psk_source: str = ""
    # What raven/openyurt_config.py applied or found unused, logged at start.
    openyurt_notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.node_name and not self.cleanup:
            raise ConfigError("agent mode needs the node name: pass --node-name or set NODE_NAME")
        if self.health_window < self.health_down_after:
            raise ConfigError(f"--health-window ({self.health_window}) must be at least --health-down-after "
                              f"({self.health_down_after})")
        if self.vpn_driver == "wireguard" and not self.cleanup and not self.psk:
            raise ConfigError(
                "the wireguard driver needs the cluster's pre-shared key (each pair's preshared key is derived "
                "from it): pass --psk-file or set VPN_CONNECTION_PSK (generate one with: openssl rand -base64 48)"
            )
        if self.vpn_driver == "ipsec" and self.ipsec_auth == "psk" and not self.cleanup and not self.psk:
            raise ConfigError(
                "the ipsec driver needs a pre-shared key: pass --psk-file or set VPN_CONNECTION_PSK "
                "(there is no default key; generate one with: openssl rand -base64 48)"
            )


SETTINGS: tuple[Setting, ...] = (
    *_declared(CommonConfig, "common"),
    *_declared(NetworkRanges, "network"),
    *_declared(SharedHealth, "network"),
    *_declared(ControllerConfig, "controller", skip=(NetworkRanges, SharedHealth)),
    # the agent's own settings first, then the plan's
    *_declared(AgentConfig, "agent", skip=(PlanSettings, SharedHealth)),
    *_declared(PlanSettings, "agent", skip=NetworkRanges),
)


def settings_for(mode: Literal["controller", "agent"]) -> tuple[Setting, ...]:
    """The settings `mode` reads: the common ones, the cluster's network ranges, and its own."""
    return tuple(s for s in SETTINGS if s.mode in ("common", "network", mode))


def configmap_data() -> dict[str, str]:
    """The ConfigMap raven-agent-config's data: every cluster-wide setting's env var and default (the agents and
    the controller both read it: each takes the keys of its own mode and ignores the others)."""
    return {s.env: s.show(s.default) for s in SETTINGS if s.cluster and s.env}


# --- values that are not plain settings -----------------------------------------------------------------


def resolve_kubeconfig(path: str | None, env: Mapping[str, str]) -> str | None:
    """The kubeconfig path to use (--kubeconfig or $KUBECONFIG), or None for in-cluster config."""
    if not path:
        if not env.get("KUBERNETES_SERVICE_HOST"):
            raise ConfigError(
                "no kubeconfig: pass --kubeconfig or set KUBECONFIG (or run inside a cluster)"
            )
        return None
    # KUBECONFIG may list several files; like kubectl we take the first.
    first = path.split(os.pathsep)[0]
    p = Path(first)
    if not p.is_file():
        raise ConfigError(f"kubeconfig {first!r} does not exist or is not a file")
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"kubeconfig {first!r} is not readable: {exc.strerror}") from None
    return first


def read_psk(psk_file: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """(key, where it came from). The file wins over VPN_CONNECTION_PSK; an empty key is no key."""
    if psk_file:
        try:
            key = Path(psk_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--psk-file {psk_file!r} cannot be read: {exc.strerror}") from None
        if not key:
            raise ConfigError(f"--psk-file {psk_file!r} is empty")
        source = f"file {psk_file}"
    else:
        key = env.get("VPN_CONNECTION_PSK", "").strip()
        source = "env VPN_CONNECTION_PSK"
        if not key:
            return "", ""
    if len(key) < MIN_PSK_LENGTH:
        raise ConfigError(
            f"the pre-shared key from {source} is too short ({len(key)} characters, need at least "
            f"{MIN_PSK_LENGTH}); generate one with: openssl rand -base64 48"
        )
    return key, source
