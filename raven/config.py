"""One frozen config per mode, built from flags + environment and validated before anything starts.

Validation happens here, once, so that a bad setting gives one clear line on stderr and a non-zero
exit instead of a traceback minutes later. Every flag the CLI parses ends up in a field that some code
reads: nothing is parsed and then ignored.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DEFAULT_HEALTH_ADDR = ":10275"
DEFAULT_METRICS_ADDR = ":10265"
DEFAULT_VICI_SOCKET = "/var/run/charon.vici"
MIN_PSK_LENGTH = 16


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is shown to the user as is."""


@dataclass(frozen=True, order=True)
class ListenAddr:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen_addr(text: str, flag: str) -> ListenAddr:
    """`HOST:PORT`, `:PORT` (all interfaces) or `[V6]:PORT`; port 0 picks a free port."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(f"{flag}: {text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{flag}: port {port_text!r} in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag}: port {port} in {text!r} is out of range 0-65535")
    if host and host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{flag}: host {host!r} in {text!r} is not an IP address") from None
    return ListenAddr(host, port)


def resolve_kubeconfig(flag_value: str | None, env: Mapping[str, str]) -> str | None:
    """The kubeconfig path to use, or None for in-cluster config; checks it can be read."""
    path = flag_value or env.get("KUBECONFIG") or None
    if path is None:
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


def _positive(value: float, flag: str) -> float:
    if value <= 0:
        raise ConfigError(f"{flag}: must be > 0, got {value}")
    return value


@dataclass(frozen=True)
class CommonConfig:
    kubeconfig: str | None
    health_addr: ListenAddr
    metrics_addr: ListenAddr
    log_format: Literal["text", "json"] = "text"
    log_level: str = "info"


@dataclass(frozen=True)
class ControllerConfig:
    common: CommonConfig
    leader_elect: bool = True
    lease_namespace: str = "kube-system"
    lease_name: str = "raven-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Who we are in the Lease: stable per pod (POD_NAME), unique per process otherwise.
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        _positive(self.lease_duration, "--lease-duration")
        _positive(self.renew_deadline, "--renew-deadline")
        _positive(self.retry_period, "--retry-period")
        if not self.renew_deadline < self.lease_duration:
            raise ConfigError("--renew-deadline must be shorter than --lease-duration")
        if not self.retry_period < self.renew_deadline:
            raise ConfigError("--retry-period must be shorter than --renew-deadline")
        if not self.lease_name or not self.lease_namespace:
            raise ConfigError("--lease-name and --lease-namespace must not be empty")


@dataclass(frozen=True)
class AgentConfig:
    common: CommonConfig
    node_name: str
    vpn_driver: Literal["ipsec", "wireguard"] = "ipsec"
    vici_socket: str = DEFAULT_VICI_SOCKET
    # The pre-shared key itself; never logged (repr=False) and never defaulted.
    psk: str = field(default="", repr=False)
    psk_source: str = ""
    resync_period: float = 30.0
    cleanup: bool = False
    vxlan_vni: int = 200
    vxlan_port: int = 4472
    overlay_cidr: str = "240.0.0.0/8"
    tunnel_vni: int = 201
    tunnel_port: int = 4473
    tunnel_cidr: str = "241.0.0.0/16"
    underlay_mtu: int | None = None
    tunnel_device_mtu: int | None = None
    ike_proposals: tuple[str, ...] = ("aes256-sha256-modp2048",)
    esp_proposals: tuple[str, ...] = ("aes256-sha256",)

    def __post_init__(self) -> None:
        if not self.node_name and not self.cleanup:
            raise ConfigError("agent mode needs the node name: pass --node-name or set NODE_NAME")
        _positive(self.resync_period, "--resync-period")
        for flag, vni in (("--vxlan-vni", self.vxlan_vni), ("--tunnel-vni", self.tunnel_vni)):
            if not 1 <= vni <= 16777215:
                raise ConfigError(f"{flag}: VNI {vni} is out of range 1-16777215")
        if self.vxlan_vni == self.tunnel_vni:
            raise ConfigError("--vxlan-vni and --tunnel-vni must differ")
        for flag, port in (("--vxlan-port", self.vxlan_port), ("--tunnel-port", self.tunnel_port)):
            if not 1 <= port <= 65535:
                raise ConfigError(f"{flag}: port {port} is out of range 1-65535")
        for flag, cidr in (("--overlay-cidr", self.overlay_cidr), ("--tunnel-cidr", self.tunnel_cidr)):
            try:
                net = ipaddress.ip_network(cidr)
            except ValueError:
                raise ConfigError(f"{flag}: {cidr!r} is not a valid IPv4 CIDR") from None
            if net.version != 4 or net.prefixlen > 24:
                raise ConfigError(f"{flag}: {cidr!r} must be an IPv4 network of /24 or larger")
        if ipaddress.ip_network(self.overlay_cidr).overlaps(ipaddress.ip_network(self.tunnel_cidr)):
            raise ConfigError("--overlay-cidr and --tunnel-cidr must not overlap")
        if self.underlay_mtu is not None and not 576 <= self.underlay_mtu <= 65535:
            raise ConfigError(f"--underlay-mtu: {self.underlay_mtu} is out of range 576-65535")
        if self.tunnel_device_mtu is not None and not 576 <= self.tunnel_device_mtu <= 65535:
            raise ConfigError(f"--ipsec-device-mtu: {self.tunnel_device_mtu} is out of range 576-65535")
        if self.vpn_driver == "wireguard":
            raise ConfigError("--vpn-driver=wireguard is not implemented yet; use --vpn-driver=ipsec")
        if self.vpn_driver == "ipsec" and not self.cleanup and not self.psk:
            raise ConfigError(
                "the ipsec driver needs a pre-shared key: pass --psk-file or set VPN_CONNECTION_PSK "
                "(there is no default key; generate one with: openssl rand -base64 48)"
            )
        if not self.ike_proposals or not self.esp_proposals:
            raise ConfigError("--ike-proposals and --esp-proposals must not be empty")


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
