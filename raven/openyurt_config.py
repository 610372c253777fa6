"""OpenYurt's agent settings by their own names: the keys of its `raven-agent-config` ConfigMap.

OpenYurt's raven-agent chart renders `kube-system/raven-agent-config` (vpn-driver, forward-node-ip, nat-traversal,
metric-bind-addr, tunnel-bind-addr, proxy-*) and `kube-system/raven-agent-secret` (vpn-connection-psk). A pod
cannot read a ConfigMap of another namespace, so the migration copies both into raven-system
(docs/migrating-from-openyurt.md): the Secret under its own name and key, which our DaemonSet already mounts (the
PSK of `--ipsec-auth=psk`), and the ConfigMap as `raven-openyurt-agent-config`, which the DaemonSet mounts as files
(one per key) in the directory named by `--openyurt-agent-config`. Every key there is, at start:

- mapped onto our setting with the same meaning, when the flags and environment do not set that setting
  (they win, and the start log says which key they overrode);
- rejected (exit 2, one line naming the key and what replaces it) when we would not do what it asks; or
- reported as unused (a warning at start) when it configures a component this Raven does not run (the L7 proxy).

Nothing is ignored silently: an unknown key is rejected too. `translate()` is pure; `apply()` is the CLI's step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from raven.api.constants import DEFAULT_TUNNEL_PORT
from raven.config import ConfigError, Setting, settings_for

# The PSK in OpenYurt's chart values (its README says never to use it): a cluster still on it is refused.
OPENYURT_EXAMPLE_PSK: Final = "OPENYURT-RAVEN-AGENT-VPN-PSK"
PROXY_KEYS: Final = ("proxy-external-addr", "proxy-internal-insecure-addr", "proxy-internal-secure-addr")
# raven-agent-config as OpenYurt's chart renders it with its default values (charts/raven-agent/values.yaml).
CHART_DEFAULTS: Final[Mapping[str, str]] = {
    "vpn-driver": "libreswan",
    "forward-node-ip": "false",
    "nat-traversal": "false",
    "metric-bind-addr": ":10265",
    "tunnel-bind-addr": ":4500",
    "proxy-external-addr": ":10262",
    "proxy-internal-insecure-addr": ":10264",
    "proxy-internal-secure-addr": ":10263",
}
KNOWN_KEYS: Final = tuple(CHART_DEFAULTS)


@dataclass
class Translation:
    """Our settings (name -> text as a flag takes it) and what could not be mapped."""

    values: dict[str, str] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)  # setting name -> the OpenYurt key it came from
    errors: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def _bool(key: str, text: str, out: Translation) -> bool | None:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    out.errors.append(f"{key}: {text!r} is not true or false")
    return None


def _host_port(key: str, text: str, out: Translation) -> tuple[str, int] | None:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        out.errors.append(f"{key}: {text!r} is not HOST:PORT or :PORT")
        return None
    return host.strip("[]"), int(port)


def translate(data: Mapping[str, str]) -> Translation:
    """What each key of OpenYurt's raven-agent-config means here (see the module docstring)."""
    out = Translation()
    for key in sorted(data):
        text = data[key]
        if key == "vpn-driver":
            driver = text.strip()
            if driver == "libreswan":
                out.values["vpn_driver"] = "ipsec"  # IPsec (IKEv2, ESP in UDP 4500): charon instead of pluto
                out.source["vpn_driver"] = key
            elif driver == "wireguard":
                out.values["vpn_driver"] = "wireguard"
                out.source["vpn_driver"] = key
            else:
                out.errors.append(f"vpn-driver: {text!r} is neither libreswan nor wireguard")
        elif key == "forward-node-ip":
            if _bool(key, text, out):
                out.errors.append(
                    "forward-node-ip: true (route every node IP across pools) is not supported: a route for node IPs "
                    "into the tunnel would capture the nodes' own underlay traffic. Host-network traffic already "
                    "reaches other pools without a setting: it leaves from the node's own address inside its pod CIDR "
                    "(the node source, see docs/architecture.md), which every pool routes back; set forward-node-ip "
                    "to \"false\"")
        elif key == "nat-traversal":
            if _bool(key, text, out):
                out.errors.append(
                    "nat-traversal: true (direct tunnels between two NATed pools, by hole punching) is not "
                    "implemented (the NAT traversal issue, #15): such pools reach each other through a relay gateway "
                    "both can reach, with no setting; set nat-traversal to \"false\"")
        elif key == "metric-bind-addr":
            hp = _host_port(key, text, out)
            if hp is not None:
                # OpenYurt binds an empty host to localhost, not to every address.
                out.values["metrics_addr"] = f"{hp[0] or '127.0.0.1'}:{hp[1]}"
                out.source["metrics_addr"] = key
        elif key == "tunnel-bind-addr":
            hp = _host_port(key, text, out)
            if hp is not None and hp[1] != DEFAULT_TUNNEL_PORT:
                out.errors.append(
                    f"tunnel-bind-addr: port {hp[1]}: charon listens on {DEFAULT_TUNNEL_PORT} (port_nat_t in the "
                    f"raven-charon-config ConfigMap); set port_nat_t there and spec.endpoints[].port of your Gateways "
                    f"to {hp[1]}, and tunnel-bind-addr to \":{DEFAULT_TUNNEL_PORT}\" or remove it")
        elif key in PROXY_KEYS:
            out.unused.append(f"{key}: not used: this Raven has no L7 proxy (raven-cfg enable-l7-proxy only elects "
                              "proxy endpoints, which nothing serves); remove the key")
        else:
            out.errors.append(f"{key}: not a key of OpenYurt's raven-agent-config (known: {', '.join(KNOWN_KEYS)})")
    return out


def read_dir(path: str) -> dict[str, str]:
    """The ConfigMap mounted as files: key -> content (the kubelet's `..data` links and hidden files skipped)."""
    d = Path(path)
    if not d.is_dir():
        return {}
    out: dict[str, str] = {}
    for entry in sorted(d.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        out[entry.name] = entry.read_text().strip()
    return out


def apply(values: dict[str, object], env: Mapping[str, str]) -> list[str]:
    """Fill `values` (the agent's settings the flags and environment set, parsed) from the directory of
    `--openyurt-agent-config`, where they leave a setting unset. Returns the lines to log at start (what was
    mapped, overridden, unused); raises ConfigError naming every rejected key."""
    path = values.get("openyurt_agent_config")
    if not isinstance(path, str) or not path:
        return []
    data = read_dir(path)
    t = translate(data)
    psk = env.get("VPN_CONNECTION_PSK", "").strip()
    psk_file = values.get("psk_file")
    if isinstance(psk_file, str) and psk_file and os.path.isfile(psk_file):
        psk = Path(psk_file).read_text().strip()
    if psk == OPENYURT_EXAMPLE_PSK and values.get("ipsec_auth") == "psk":
        t.errors.append("vpn-connection-psk: this is the example key of OpenYurt's chart, known to everyone; generate "
                        "one (openssl rand -base64 48) or use --ipsec-auth=cert (no shared key at all)")
    if t.errors:
        raise ConfigError(f"--openyurt-agent-config {path}: " + "; ".join(t.errors))
    settings: dict[str, Setting] = {s.name: s for s in settings_for("agent")}
    notes: list[str] = []
    for name, text in sorted(t.values.items()):
        s = settings[name]
        key = t.source[name]
        if name in values:
            notes.append(f"OpenYurt's {key}={data[key]!r} overridden by {s.flag} {s.show(values[name])}")
            continue
        values[name] = s.read(text, f" (from {path}/{key}, OpenYurt's raven-agent-config)")
        notes.append(f"OpenYurt's {key}={data[key]!r} applied as {s.flag} {text}")
    return notes + t.unused
