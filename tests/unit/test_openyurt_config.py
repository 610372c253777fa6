"""OpenYurt's raven-agent-config keys, as its chart renders them, mapped onto our agent settings or rejected."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from raven.cli import build_config, build_parser
from raven.config import AgentConfig, ConfigError, ListenAddr
from raven.openyurt_config import CHART_DEFAULTS, translate


def mounted(tmp_path: Path, data: Mapping[str, str]) -> Path:
    """The ConfigMap as the kubelet mounts it: one file per key (plus its hidden ..data bookkeeping)."""
    d = tmp_path / "openyurt"
    d.mkdir()
    (d / "..data").mkdir()
    for k, v in data.items():
        (d / k).write_text(v)
    return d


def agent(tmp_path: Path, data: Mapping[str, str], *flags: str, env: dict[str, str] | None = None) -> AgentConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    argv = ["--mode=agent", "--node-name=n1", f"--kubeconfig={kubeconfig}",
            f"--openyurt-agent-config={mounted(tmp_path, data)}", *flags]
    cfg = build_config(build_parser().parse_args(argv), env or {})
    assert isinstance(cfg, AgentConfig)
    return cfg


def test_the_chart_defaults_map_and_the_proxy_keys_are_reported_unused(tmp_path: Path) -> None:
    t = translate(CHART_DEFAULTS)
    assert t.errors == []
    assert t.values == {"vpn_driver": "ipsec", "metrics_addr": "127.0.0.1:10265"}
    assert [u.split(":")[0] for u in t.unused] == ["proxy-external-addr", "proxy-internal-insecure-addr",
                                                   "proxy-internal-secure-addr"]
    cfg = agent(tmp_path, CHART_DEFAULTS)
    assert cfg.vpn_driver == "ipsec"
    assert cfg.common.metrics_addr == ListenAddr("127.0.0.1", 10265)  # an empty host is localhost, as OpenYurt binds
    assert any("vpn-driver='libreswan' applied as --vpn-driver ipsec" in n for n in cfg.openyurt_notes)
    assert sum("not used" in n for n in cfg.openyurt_notes) == 3


def test_a_flag_wins_and_the_override_is_said(tmp_path: Path) -> None:
    cfg = agent(tmp_path, {"metric-bind-addr": "0.0.0.0:9000"}, "--metrics-addr=10.0.0.5:10265")
    assert cfg.common.metrics_addr == ListenAddr("10.0.0.5", 10265)
    assert cfg.openyurt_notes == ("OpenYurt's metric-bind-addr='0.0.0.0:9000' overridden by --metrics-addr "
                                  "10.0.0.5:10265",)


@pytest.mark.parametrize(("key", "value", "says"), [
    ("forward-node-ip", "true", "the node source"),
    ("nat-traversal", "true", "relay gateway"),
    ("tunnel-bind-addr", ":4600", "set port_nat_t there and spec.endpoints[].port of your Gateways to 4600"),
    ("vpn-driver", "openvpn", "neither libreswan nor wireguard"),
    ("forward-node-ip", "maybe", "is not true or false"),
    ("metric-bind-addr", "10265", "is not HOST:PORT"),
    ("keep-alive-interval", "15", "not a key of OpenYurt's raven-agent-config"),
])
def test_what_we_would_not_do_is_refused_naming_the_key(tmp_path: Path, key: str, value: str, says: str) -> None:
    assert any(says in e for e in translate({key: value}).errors)
    with pytest.raises(ConfigError, match=f"--openyurt-agent-config .*{key}"):
        agent(tmp_path, {**CHART_DEFAULTS, key: value})


def test_same_meaning_values_are_accepted() -> None:
    t = translate({"forward-node-ip": "False", "nat-traversal": "false", "tunnel-bind-addr": "0.0.0.0:4500",
                   "vpn-driver": "wireguard"})
    assert (t.errors, t.values) == ([], {"vpn_driver": "wireguard"})


def test_the_charts_example_psk_is_refused(tmp_path: Path) -> None:
    """raven-agent-secret's vpn-connection-psk: the same Secret name and key our DaemonSet mounts; the chart's
    example value is known to everyone and refused."""
    with pytest.raises(ConfigError, match="example key of OpenYurt's chart"):
        agent(tmp_path, CHART_DEFAULTS, "--ipsec-auth=psk", env={"VPN_CONNECTION_PSK": "OPENYURT-RAVEN-AGENT-VPN-PSK"})
    cfg = agent(tmp_path / "ok", {}, "--ipsec-auth=psk", env={"VPN_CONNECTION_PSK": "a-real-key-0123456789abcdef"})
    assert cfg.psk == "a-real-key-0123456789abcdef" and cfg.psk_source == "env VPN_CONNECTION_PSK"


def test_no_directory_or_an_empty_one_changes_nothing(tmp_path: Path) -> None:
    cfg = agent(tmp_path, {})
    assert cfg.openyurt_notes == () and cfg.vpn_driver == "ipsec"


def test_the_example_psk_left_in_the_environment_is_no_matter_in_cert_mode(tmp_path: Path) -> None:
    cfg = agent(tmp_path, {}, "--ipsec-auth=cert", env={"VPN_CONNECTION_PSK": "OPENYURT-RAVEN-AGENT-VPN-PSK"})
    assert cfg.psk == ""
