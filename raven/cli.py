"""`raven --mode=controller|agent ...`: parse flags + environment into a validated config and run.

Bad configuration ends here with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Literal, cast

from raven import log as raven_log
from raven.config import (
    DEFAULT_HEALTH_ADDR,
    DEFAULT_METRICS_ADDR,
    DEFAULT_VICI_SOCKET,
    AgentConfig,
    CommonConfig,
    ConfigError,
    ControllerConfig,
    parse_listen_addr,
    read_psk,
    resolve_kubeconfig,
)

# Flags that only make sense in one mode; passing them in the other is an error, not silently ignored.
CONTROLLER_ONLY = ("leader_elect", "lease_namespace", "lease_name", "lease_duration", "renew_deadline",
                   "retry_period")
AGENT_ONLY = ("node_name", "vpn_driver", "vici_socket", "psk_file", "resync_period", "cleanup", "vxlan_vni",
              "vxlan_port", "overlay_cidr", "tunnel_vni", "tunnel_port", "tunnel_cidr", "underlay_mtu",
              "ipsec_device_mtu", "ike_proposals", "esp_proposals")


def raven_version() -> str:
    try:
        return version("raven")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raven",
        description="Raven: cross-region pod networking for edge Kubernetes clusters. "
        "One binary, two modes: the controller elects each Gateway's active endpoints; "
        "the agent (on every node) programs routes, VXLAN and IPsec to match.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"raven {raven_version()}")
    p.add_argument("--mode", choices=("controller", "agent"), required=True, help="what this process runs")
    p.add_argument("--kubeconfig", default=None,
                   help="kubeconfig file; falls back to $KUBECONFIG, then to in-cluster config")
    p.add_argument("--health-addr", default=DEFAULT_HEALTH_ADDR,
                   help="HOST:PORT serving /healthz and /readyz (also /metrics)")
    p.add_argument("--metrics-addr", default=DEFAULT_METRICS_ADDR,
                   help="HOST:PORT serving /metrics (may equal --health-addr)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="least severe level logged")

    c = p.add_argument_group("controller mode")
    c.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=None,
                   help="compete for a Lease so only one replica writes (default: on); "
                   "--no-leader-elect for a single replica")
    c.add_argument("--lease-namespace", default=None, help="namespace of the Lease (default: kube-system)")
    c.add_argument("--lease-name", default=None, help="name of the Lease (default: raven-controller)")
    c.add_argument("--lease-duration", type=float, default=None,
                   help="seconds a standby waits before taking over an unrenewed Lease (default: 15)")
    c.add_argument("--renew-deadline", type=float, default=None,
                   help="seconds the leader keeps trying to renew before it stops writing (default: 10)")
    c.add_argument("--retry-period", type=float, default=None,
                   help="seconds between Lease acquire/renew attempts (default: 2)")

    a = p.add_argument_group("agent mode")
    a.add_argument("--node-name", default=None, help="this node's name; falls back to $NODE_NAME (required)")
    a.add_argument("--vpn-driver", choices=("ipsec", "wireguard"), default=None,
                   help="tunnel between gateways (default: ipsec, through charon over VICI)")
    a.add_argument("--vici-socket", default=None,
                   help=f"charon's VICI socket (default: {DEFAULT_VICI_SOCKET})")
    a.add_argument("--psk-file", default=None,
                   help="file holding the IPsec pre-shared key; falls back to $VPN_CONNECTION_PSK. "
                   "There is no default key")
    a.add_argument("--resync-period", type=float, default=None,
                   help="seconds between full reconciles even without events (default: 30)")
    a.add_argument("--cleanup", action="store_true", default=None,
                   help="remove every route, rule, device and IPsec connection Raven created, then exit")
    a.add_argument("--vxlan-vni", type=int, default=None, help="VNI of the intra-pool VXLAN raven0 (default: 200)")
    a.add_argument("--vxlan-port", type=int, default=None, help="UDP port of raven0 (default: 4472)")
    a.add_argument("--overlay-cidr", default=None,
                   help="raven0 addresses are derived from node IPs inside this network (default: 240.0.0.0/8)")
    a.add_argument("--tunnel-vni", type=int, default=None,
                   help="VNI of the inter-gateway VXLAN raven1 (default: 201)")
    a.add_argument("--tunnel-port", type=int, default=None, help="UDP port of raven1 (default: 4473)")
    a.add_argument("--tunnel-cidr", default=None,
                   help="each Gateway gets a stable inner address from this network (default: 241.0.0.0/16)")
    a.add_argument("--underlay-mtu", type=int, default=None,
                   help="MTU of the node's network (default: read from the device holding the node IP)")
    a.add_argument("--ipsec-device-mtu", type=int, default=None,
                   help="MTU of a userspace ESP device that carries inter-gateway packets (strongSwan "
                   "kernel-libipsec's ipsec0, 1400 by default); leave unset with kernel ESP")
    a.add_argument("--ike-proposals", default=None,
                   help="comma-separated IKE proposals (default: aes256-sha256-modp2048)")
    a.add_argument("--esp-proposals", default=None,
                   help="comma-separated ESP proposals (default: aes256-sha256)")
    return p


def _given(ns: argparse.Namespace, names: Sequence[str]) -> list[str]:
    return ["--" + n.replace("_", "-") for n in names if getattr(ns, n) is not None]


def _proposals(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return default
    return tuple(p.strip() for p in text.split(",") if p.strip())


def build_config(ns: argparse.Namespace, env: Mapping[str, str]) -> ControllerConfig | AgentConfig:
    wrong = _given(ns, AGENT_ONLY if ns.mode == "controller" else CONTROLLER_ONLY)
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} cannot be used with --mode={ns.mode}")
    common = CommonConfig(
        kubeconfig=None if ns.mode == "agent" and ns.cleanup else resolve_kubeconfig(ns.kubeconfig, env),
        health_addr=parse_listen_addr(ns.health_addr, "--health-addr"),
        metrics_addr=parse_listen_addr(ns.metrics_addr, "--metrics-addr"),
        log_format=cast(Literal["text", "json"], ns.log_format),
        log_level=ns.log_level,
    )
    if ns.mode == "controller":
        defaults = ControllerConfig(common=common)
        return ControllerConfig(
            common=common,
            leader_elect=defaults.leader_elect if ns.leader_elect is None else ns.leader_elect,
            lease_namespace=ns.lease_namespace or defaults.lease_namespace,
            lease_name=ns.lease_name or defaults.lease_name,
            lease_duration=defaults.lease_duration if ns.lease_duration is None else ns.lease_duration,
            renew_deadline=defaults.renew_deadline if ns.renew_deadline is None else ns.renew_deadline,
            retry_period=defaults.retry_period if ns.retry_period is None else ns.retry_period,
            identity=env.get("POD_NAME") or defaults.identity,
        )
    psk, psk_source = read_psk(ns.psk_file, env)

    def pick(value: object, default: object) -> object:
        return default if value is None else value

    d = AgentConfig.__dataclass_fields__
    agent = AgentConfig(
        common=common,
        node_name=ns.node_name or env.get("NODE_NAME", ""),
        vpn_driver=cast(Literal["ipsec", "wireguard"], ns.vpn_driver or "ipsec"),
        vici_socket=ns.vici_socket or DEFAULT_VICI_SOCKET,
        psk=psk,
        psk_source=psk_source,
        resync_period=cast(float, pick(ns.resync_period, d["resync_period"].default)),
        cleanup=bool(ns.cleanup),
        vxlan_vni=cast(int, pick(ns.vxlan_vni, d["vxlan_vni"].default)),
        vxlan_port=cast(int, pick(ns.vxlan_port, d["vxlan_port"].default)),
        overlay_cidr=cast(str, pick(ns.overlay_cidr, d["overlay_cidr"].default)),
        tunnel_vni=cast(int, pick(ns.tunnel_vni, d["tunnel_vni"].default)),
        tunnel_port=cast(int, pick(ns.tunnel_port, d["tunnel_port"].default)),
        tunnel_cidr=cast(str, pick(ns.tunnel_cidr, d["tunnel_cidr"].default)),
        underlay_mtu=ns.underlay_mtu,
        tunnel_device_mtu=ns.ipsec_device_mtu,
        ike_proposals=_proposals(ns.ike_proposals, ("aes256-sha256-modp2048",)),
        esp_proposals=_proposals(ns.esp_proposals, ("aes256-sha256",)),
    )
    # The plan checks combinations of these settings too (ports that must differ, an underlay MTU that
    # leaves no room for the encapsulation); what it would reject at start is a configuration error here.
    from raven.agent.app import plan_config

    try:
        plan_config(agent, None)
    except ValueError as exc:
        raise ConfigError(f"agent settings: {exc}") from None
    return agent


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        cfg = build_config(ns, os.environ if env is None else env)
    except ConfigError as exc:
        print(f"raven: error: {exc}", file=sys.stderr)
        return 2
    raven_log.setup(cfg.common.log_format, cfg.common.log_level)
    try:
        return asyncio.run(_run(cfg))
    except ConfigError as exc:  # problems only detectable at start (e.g. an unparsable kubeconfig)
        print(f"raven: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


async def _run(cfg: ControllerConfig | AgentConfig) -> int:
    from raven.kube.client import new_api_client
    from raven.runtime import run_mode

    if isinstance(cfg, AgentConfig) and cfg.cleanup:
        from raven.agent.cleanup import agent_cleanup

        return await agent_cleanup(cfg)
    # Loaded here, before anything starts: an unusable kubeconfig is a ConfigError (exit 2, one line),
    # not a crashed supervised task in a process that keeps running.
    api = await new_api_client(cfg.common.kubeconfig)
    try:
        if isinstance(cfg, ControllerConfig):
            from raven.controller.app import controller_main

            return await run_mode("controller", raven_version(), cfg.common, controller_main(cfg, api))
        from raven.agent.app import agent_main

        return await run_mode("agent", raven_version(), cfg.common, agent_main(cfg, api))
    finally:
        await api.close()


if __name__ == "__main__":
    sys.exit(main())
