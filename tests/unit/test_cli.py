"""The CLI contract: --help for both modes, one clear line and a non-zero exit for each bad config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raven.config import SETTINGS

RAVEN = [sys.executable, "-m", "raven.cli"]


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KUBECONFIG", "NODE_NAME", "VPN_CONNECTION_PSK", "KUBERNETES_SERVICE_HOST")
    }
    return subprocess.run(RAVEN + args, env={**base, **(env or {})}, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("mode", ["controller", "agent"])
def test_help_explains_every_flag(mode: str) -> None:
    result = run([f"--mode={mode}", "--help"])
    assert result.returncode == 0
    for s in SETTINGS:  # argparse lists every group in both modes; each mode rejects the other's flags
        assert s.flag in result.stdout
    assert "$NODE_NAME" in result.stdout and "$VPN_CONNECTION_PSK" in result.stdout


def _assert_clean_error(result: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("raven: error:")
    assert phrase in lines[0], lines[0]


def test_agent_without_node_name(kubeconfig: str, psk_file: str) -> None:
    _assert_clean_error(run(["--mode=agent", "--kubeconfig", kubeconfig, "--psk-file", psk_file]), "node name")


def test_agent_node_name_from_env(kubeconfig: str, tmp_path: Path) -> None:
    # NODE_NAME satisfies the node name; the PSK is the next missing piece, which proves the env was read.
    result = run(["--mode=agent", "--kubeconfig", kubeconfig, "--ipsec-auth=psk"], env={"NODE_NAME": "n1"})
    _assert_clean_error(result, "pre-shared key")


def test_unreadable_kubeconfig(tmp_path: Path) -> None:
    _assert_clean_error(run(["--mode=controller", "--kubeconfig", str(tmp_path / "missing")]), "does not exist")


def test_kubeconfig_env_fallback_is_checked(tmp_path: Path) -> None:
    result = run(["--mode=controller"], env={"KUBECONFIG": str(tmp_path / "nope")})
    _assert_clean_error(result, "nope")


def test_no_kubeconfig_outside_cluster() -> None:
    _assert_clean_error(run(["--mode=controller"]), "no kubeconfig")


@pytest.mark.parametrize(
    ("addr", "phrase"),
    [
        ("localhost", "not HOST:PORT"),
        (":99999", "out of range"),
        ("1.2.3:80", "not an IP address"),
        (":http", "not a number"),
    ],
)
def test_bad_listen_address(kubeconfig: str, addr: str, phrase: str) -> None:
    _assert_clean_error(run(["--mode=controller", "--kubeconfig", kubeconfig, "--health-addr", addr]), phrase)


def test_ipsec_without_psk_has_no_default(kubeconfig: str) -> None:
    result = run(["--mode=agent", "--kubeconfig", kubeconfig, "--node-name", "n1", "--ipsec-auth=psk"])
    _assert_clean_error(result, "there is no default key")


def test_psk_too_short(kubeconfig: str) -> None:
    result = run(
        ["--mode=agent", "--kubeconfig", kubeconfig, "--node-name", "n1", "--ipsec-auth=psk"],
        env={"VPN_CONNECTION_PSK": "secret"},
    )
    _assert_clean_error(result, "too short")


def test_psk_file_unreadable(kubeconfig: str, tmp_path: Path) -> None:
    result = run(["--mode=agent", "--kubeconfig", kubeconfig, "--node-name", "n1", "--ipsec-auth=psk",
                  "--psk-file", str(tmp_path / "x")])
    _assert_clean_error(result, "cannot be read")


def test_cert_mode_reads_no_psk(kubeconfig: str, tmp_path: Path) -> None:
    from raven.cli import build_config, build_parser
    from raven.config import AgentConfig

    ns = build_parser().parse_args(["--mode=agent", "--kubeconfig", kubeconfig, "--node-name", "n1",
                                    "--psk-file", str(tmp_path / "absent")])
    cfg = build_config(ns, {"VPN_CONNECTION_PSK": "x" * 32})
    assert isinstance(cfg, AgentConfig) and cfg.ipsec_auth == "cert" and cfg.psk == ""


def test_wireguard_reads_the_cluster_psk_and_needs_it(kubeconfig: str, psk_file: str) -> None:
    from raven.cli import build_config, build_parser
    from raven.config import AgentConfig

    ns = build_parser().parse_args(["--mode=agent", "--kubeconfig", kubeconfig, "--node-name", "n1",
                                    "--vpn-driver=wireguard", "--psk-file", psk_file])
    cfg = build_config(ns, {})
    assert isinstance(cfg, AgentConfig) and cfg.vpn_driver == "wireguard" and len(cfg.psk) >= 16
    result = run(["--mode=agent", "--kubeconfig", kubeconfig, "--node-name", "n1", "--vpn-driver=wireguard"])
    _assert_clean_error(result, "the wireguard driver needs the cluster's pre-shared key")


def test_flag_of_the_other_mode_is_rejected(kubeconfig: str) -> None:
    result = run(["--mode=controller", "--kubeconfig", kubeconfig, "--node-name", "n1"])
    _assert_clean_error(result, "--node-name cannot be used with --mode=controller")


def test_lease_timings_must_be_ordered(kubeconfig: str) -> None:
    result = run(["--mode=controller", "--kubeconfig", kubeconfig, "--lease-duration", "5", "--renew-deadline", "6"])
    _assert_clean_error(result, "--renew-deadline: must be shorter")


def test_unknown_mode() -> None:
    result = run(["--mode=proxy"])
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_config_reads_every_agent_flag(kubeconfig: str, psk_file: str) -> None:
    from raven.cli import build_config, build_parser
    from raven.config import AgentConfig

    ns = build_parser().parse_args(
        [
            "--mode=agent",
            "--kubeconfig",
            kubeconfig,
            "--node-name",
            "n1",
            "--psk-file",
            psk_file,
            "--ipsec-auth=psk",
            "--vxlan-vni",
            "300",
            "--tunnel-cidr",
            "100.64.0.0/16",
            "--esp-proposals",
            "aes128-sha256, aes256-sha256",
            "--underlay-mtu",
            "9000",
        ]
    )
    cfg = build_config(ns, {})
    assert isinstance(cfg, AgentConfig)
    assert (cfg.node_name, cfg.vxlan_vni, cfg.tunnel_cidr, cfg.underlay_mtu) == ("n1", 300, "100.64.0.0/16", 9000)
    assert cfg.esp_proposals == ("aes128-sha256", "aes256-sha256")
    assert cfg.psk == "x" * 48 and "x" * 48 not in repr(cfg)  # the key never reaches logs


@pytest.mark.parametrize("mode", ["controller", "agent"])
def test_unusable_kubeconfig_exits_at_once_with_one_line(tmp_path: Path, psk_file: str, mode: str) -> None:
    # Readable but not a kubeconfig: only loading it tells. That must end the process with exit 2,
    # not crash a supervised task inside a process that keeps running (and serving /healthz 500).
    path = tmp_path / "kubeconfig"
    path.write_text("")
    args = [f"--mode={mode}", "--kubeconfig", str(path), "--health-addr", "127.0.0.1:0", "--metrics-addr",
            "127.0.0.1:0"]
    if mode == "agent":
        args += ["--node-name", "n1", "--psk-file", psk_file]
    result = run(args)
    assert result.returncode == 2
    _assert_clean_error(result, "cannot load Kubernetes client config")


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--vxlan-port", "4473"], "must differ"),  # the default --tunnel-port
        (["--underlay-mtu", "600"], "path MTU below 576"),
    ],
)
def test_agent_settings_the_plan_rejects_are_config_errors(
    kubeconfig: str, psk_file: str, flags: list[str], phrase: str
) -> None:
    result = run(["--mode=agent", "--kubeconfig", kubeconfig, "--node-name", "n1", "--psk-file", psk_file, *flags])
    assert result.returncode == 2
    _assert_clean_error(result, phrase)


def test_a_taken_health_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {}}]\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["--mode=controller", "--kubeconfig", str(path), "--health-addr", f"127.0.0.1:{port}",
                      "--metrics-addr", "127.0.0.1:0"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # Logging is set up by then (the other address may have been served a moment): the error is the last line.
    assert result.stderr.strip().splitlines()[-1].startswith(f"raven: error: cannot listen on 127.0.0.1:{port}")
