"""The settings declared in raven/config.py are the only source: CLI, env, checks, plan, ConfigMap, README.

Each test reads the thing itself (parsed YAML, the argparse parser, the constructed configs, the README's
table rows) and compares it with `raven.config.SETTINGS`.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from raven.agent.app import plan_config
from raven.agent.plan import PlanConfig
from raven.cli import build_config, build_parser
from raven.config import SETTINGS, AgentConfig, ConfigError, ControllerConfig, PlanSettings, configmap_data
from raven.dataplane.underlay import Underlay
from raven.docs import BEGIN, END, configmap_settings_yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
BY_NAME = {s.name: s for s in SETTINGS}


def agent(kubeconfig: str, psk_file: str, *flags: str, env: dict[str, str] | None = None) -> AgentConfig:
    ns = build_parser().parse_args(
        ["--mode=agent", "--kubeconfig", kubeconfig, "--node-name", "n1", "--psk-file", psk_file, *flags]
    )
    cfg = build_config(ns, env or {})
    assert isinstance(cfg, AgentConfig)
    return cfg


def controller(kubeconfig: str, *flags: str, env: dict[str, str] | None = None) -> ControllerConfig:
    cfg = build_config(build_parser().parse_args(["--mode=controller", "--kubeconfig", kubeconfig, *flags]), env or {})
    assert isinstance(cfg, ControllerConfig)
    return cfg


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def _agent_container() -> dict[str, Any]:
    (ds,) = _docs("05-agent.yaml")
    containers: list[dict[str, Any]] = ds["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "agent")


# --- every setting -------------------------------------------------------------------------------------

def test_defaults_are_the_declared_ones(kubeconfig: str, psk_file: str) -> None:
    a, c = agent(kubeconfig, psk_file), controller(kubeconfig)
    for s in SETTINGS:
        if s.name in ("kubeconfig", "node_name", "psk_file"):
            continue  # given above
        if s.mode == "network":  # read by both modes
            assert getattr(a, s.name) == getattr(c, s.name) == s.default, s.name
            continue
        value = getattr(a.common if s.mode == "common" else a if s.mode == "agent" else c, s.name)
        assert value == s.default, s.name


def test_every_setting_is_a_flag_of_its_mode_only() -> None:
    parser = build_parser()
    dests = {a.dest: a for a in parser._actions}
    assert {s.name for s in SETTINGS} <= set(dests)
    for s in SETTINGS:
        assert s.flag in dests[s.name].option_strings
        assert dests[s.name].default is not None  # SUPPRESS: defaults come from the declaration only


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.mode in ("controller", "agent")], ids=lambda s: s.flag)
def test_flag_of_the_other_mode_is_rejected(kubeconfig: str, setting: Any) -> None:
    other = "controller" if setting.mode == "agent" else "agent"
    value = [] if setting.kind != "value" else [setting.show(setting.default) or "x"]
    ns = build_parser().parse_args([f"--mode={other}", "--kubeconfig", kubeconfig, setting.flag, *value])
    with pytest.raises(ConfigError, match=f"^{setting.flag} cannot be used with --mode={other}$"):
        build_config(ns, {"NODE_NAME": "n1", "VPN_CONNECTION_PSK": "k" * 32})


# A value each checked setting rejects. A new setting with a check needs a line here (the first test says so).
BAD = {
    "health_addr": ":99999",
    "metrics_addr": "localhost",
    "lease_namespace": "",
    "lease_name": "",
    "lease_duration": "0",
    "renew_deadline": "-1",
    "retry_period": "0",
    "health_hold_time": "0",
    "health_settle_time": "0",
    "health_establish_time": "0",
    "health_stale_after": "-1",
    "wireguard_key_file": "",
    "vici_socket": "",
    "ipsec_identity_dir": "",
    "ipsec_ca_secret": "",
    "ipsec_cert_lifetime": "0",
    "agent_service_account": "",
    "resync_period": "0",
    "vxlan_vni": "0",
    "vxlan_port": "70000",
    "overlay_cidr": "240.0.0.0/25",
    "tunnel_vni": "16777216",
    "tunnel_port": "0",
    "tunnel_cidr": "fd00::/64",
    "underlay_mtu": "100",
    "ipsec_device_mtu": "70000",
    "ike_proposals": ",",
    "esp_proposals": "",
    "service_cidr": "10.96.0.1/12",
    "health_interval": "0",
    "health_timeout": "-1",
    "health_down_after": "0",
    "health_up_after": "0",
    "health_window": "0",
    "health_degraded_loss": "1.5",
    "route_hold_time": "0",
    "route_min_gain": "1.5",
    "route_min_gain_ms": "-1",
    "health_degraded_rtt": "0",
    "health_rtt_change": "0",
    "health_rtt_change_min": "0",
    "health_rtt_write_interval": "0",
    "health_heartbeat": "0",
    "health_min_write_interval": "0",
    "path_change_grace": "0",
    "path_change_settle": "-1",
}


def test_every_check_has_a_bad_value_below() -> None:
    checked = {s.name for s in SETTINGS if s.check is not None}
    assert checked - {"health_addr", "metrics_addr"} == set(BAD) - {"health_addr", "metrics_addr"}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_is_one_error_naming_the_flag(kubeconfig: str, psk_file: str, name: str) -> None:
    s = BY_NAME[name]
    with pytest.raises(ConfigError) as err:
        if s.mode == "controller":
            controller(kubeconfig, s.flag, BAD[name])
        else:
            agent(kubeconfig, psk_file, s.flag, BAD[name])
    assert str(err.value).startswith(f"{s.flag}: "), err.value
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tunnel-vni", "200"], "--tunnel-vni: must differ from --vxlan-vni"),
        (["--vxlan-port", "4473"], "--tunnel-port: must differ from --vxlan-port"),
        (["--tunnel-cidr", "240.1.0.0/16"], "--tunnel-cidr: 240.1.0.0/16 overlaps --overlay-cidr"),
        (["--overlay-cidr", "169.254.0.0/16"], "--overlay-cidr: 169.254.0.0/16 contains 169.254.240.1"),
        (["--underlay-mtu", "600"], "--underlay-mtu: 600 leaves a path MTU below 576"),
        (["--vxlan-vni", "x"], "--vxlan-vni: 'x' is not an integer"),
        (["--resync-period", "soon"], "--resync-period: 'soon' is not a number"),
    ],
)
def test_combinations_name_the_flag(kubeconfig: str, psk_file: str, flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        agent(kubeconfig, psk_file, *flags)


def test_lease_timings_name_the_flag(kubeconfig: str) -> None:
    with pytest.raises(ConfigError, match=r"^--retry-period: must be shorter than --renew-deadline"):
        controller(kubeconfig, "--retry-period", "10")


def test_the_tunnel_cidr_has_one_limit_for_cli_and_plan(kubeconfig: str, psk_file: str) -> None:
    # The CLI used to allow /24 at most and the plan /30: now both are PlanSettings' one check.
    with pytest.raises(ConfigError, match=r"^--tunnel-cidr: "):
        agent(kubeconfig, psk_file, "--tunnel-cidr", "241.0.0.0/28")
    with pytest.raises(ConfigError, match=r"^--tunnel-cidr: "):
        PlanConfig(tunnel_cidr="241.0.0.0/28")


# --- the environment ------------------------------------------------------------------------------------

def test_declared_env_vars_are_read_when_the_flag_is_absent(kubeconfig: str, psk_file: str) -> None:
    env = {"RAVEN_VXLAN_VNI": "300", "RAVEN_ESP_PROPOSALS": "aes128-sha256,aes256-sha256",
           "RAVEN_RESYNC_PERIOD": "7.5"}
    cfg = agent(kubeconfig, psk_file, env=env)
    assert (cfg.vxlan_vni, cfg.esp_proposals, cfg.resync_period) == (300, ("aes128-sha256", "aes256-sha256"), 7.5)


def test_the_flag_wins_over_the_env(kubeconfig: str, psk_file: str) -> None:
    cfg = agent(kubeconfig, psk_file, "--vxlan-vni", "310", env={"RAVEN_VXLAN_VNI": "300", "NODE_NAME": "other"})
    assert (cfg.vxlan_vni, cfg.node_name) == (310, "n1")


def test_a_bad_env_value_names_the_flag_and_the_variable(kubeconfig: str, psk_file: str) -> None:
    with pytest.raises(ConfigError, match=r"^--tunnel-port: 'x' is not an integer \(from \$RAVEN_TUNNEL_PORT\)$"):
        agent(kubeconfig, psk_file, env={"RAVEN_TUNNEL_PORT": "x"})


def test_node_name_and_kubeconfig_come_from_their_usual_env_vars(kubeconfig: str, psk_file: str) -> None:
    ns = build_parser().parse_args(["--mode=agent", "--psk-file", psk_file])
    cfg = build_config(ns, {"NODE_NAME": "n2", "KUBECONFIG": kubeconfig})
    assert isinstance(cfg, AgentConfig)
    assert (cfg.node_name, cfg.common.kubeconfig) == ("n2", kubeconfig)


def test_env_of_the_other_mode_is_ignored(kubeconfig: str) -> None:
    # One environment may serve both modes (e.g. a shared ConfigMap): only flags are rejected.
    cfg = controller(kubeconfig, env={"RAVEN_VXLAN_VNI": "300", "NODE_NAME": "n1"})
    assert cfg.lease_duration == 15


# --- the plan -------------------------------------------------------------------------------------------

def test_plan_config_carries_every_plan_setting(kubeconfig: str, psk_file: str) -> None:
    flags = ["--vxlan-vni", "300", "--vxlan-port", "5472", "--overlay-cidr", "100.64.0.0/10", "--tunnel-vni", "301",
             "--tunnel-port", "5473", "--tunnel-cidr", "198.18.0.0/16", "--underlay-mtu", "9000",
             "--ipsec-device-mtu", "1400", "--ike-proposals", "aes128-sha256-modp3072", "--esp-proposals",
             "aes128-sha256", "--ipsec-auth", "psk"]
    plan_settings = {f.name for f in fields(PlanSettings)}
    assert {f[2:].replace("-", "_") for f in flags[::2]} == plan_settings  # every one of them is set above
    cfg = agent(kubeconfig, psk_file, *flags)
    pc = plan_config(cfg, None)
    for name in plan_settings:
        assert getattr(pc, name) == getattr(cfg, name) != BY_NAME[name].default, name


def test_the_detected_underlay_mtu_is_used_unless_the_flag_is_given(kubeconfig: str, psk_file: str) -> None:
    eth = Underlay("eth1", 9000)
    detected = plan_config(agent(kubeconfig, psk_file), eth)
    assert (detected.effective_underlay_mtu, detected.underlay_ifname) == (9000, "eth1")
    forced = plan_config(agent(kubeconfig, psk_file, "--underlay-mtu", "1400"), eth)
    assert forced.effective_underlay_mtu == 1400


def test_the_detected_tunnel_device_caps_raven1_unless_the_flag_overrides_it(kubeconfig: str, psk_file: str) -> None:
    from raven.agent.app import Detected
    from raven.dataplane.devices import TunnelDevice

    seen = Detected(Underlay("eth1", 1500), TunnelDevice("ipsec0", 1400))
    detected = plan_config(agent(kubeconfig, psk_file), seen)
    assert detected._mtus().inter_gateway == 1350  # the VXLAN packet (1350 + 50) fits ipsec0 whole
    assert plan_config(agent(kubeconfig, psk_file), Underlay("eth1", 1500))._mtus().inter_gateway == 1372
    forced = plan_config(agent(kubeconfig, psk_file, "--ipsec-device-mtu", "1300"), seen)
    assert forced._mtus().inter_gateway == 1250
    path = plan_config(agent(kubeconfig, psk_file), Detected(Underlay("eth1", 1500), None, path_mtu=1300))
    assert (path._mtus().intra_pool, path._mtus().inter_gateway) == (1450, 1180)


def test_a_detected_mtu_too_small_names_the_device_and_the_flag(kubeconfig: str, psk_file: str) -> None:
    with pytest.raises(ValueError, match=r"^MTU of eth1: 600 leaves a path MTU below 576; set --underlay-mtu$"):
        plan_config(agent(kubeconfig, psk_file), Underlay("eth1", 600))


# --- the manifests --------------------------------------------------------------------------------------

def test_configmap_holds_every_cluster_setting_with_its_default() -> None:
    docs = {d["metadata"]["name"]: d for d in _docs("03-agent-config.yaml")}
    data = docs["raven-agent-config"]["data"]
    cluster = [s for s in SETTINGS if s.cluster]
    assert cluster and data == {s.env: s.show(s.default) for s in cluster} == configmap_data()
    for s in cluster:
        assert s.mode in ("network", "agent", "controller") and s.env == f"RAVEN_{s.name.upper()}"
        assert s.parse(data[s.env]) == s.default
    # The comments beside the keys are generated too (python -m raven.docs --write).
    assert configmap_settings_yaml() in (MANIFESTS / "03-agent-config.yaml").read_text()


def test_configmap_values_make_a_valid_agent_config(kubeconfig: str, psk_file: str) -> None:
    (cm,) = (d for d in _docs("03-agent-config.yaml") if d["metadata"]["name"] == "raven-agent-config")
    agent(kubeconfig, psk_file, env=dict(cm["data"]))


def test_daemonset_passes_the_configmap_as_env_and_no_flag_overrides_it() -> None:
    container = _agent_container()
    assert {"configMapRef": {"name": "raven-agent-config"}} in container["envFrom"]
    ns = build_parser().parse_args(container["args"])  # every arg is a flag the CLI knows
    given = set(vars(ns)) - {"mode"}
    assert ns.mode == "agent"
    assert all(BY_NAME[name].mode in ("common", "network", "agent") for name in given)
    assert not {s.name for s in SETTINGS if s.cluster} & given, "a flag would silently override the ConfigMap"
    env_names = {e["name"] for e in container["env"]}
    assert "NODE_NAME" in env_names
    declared_env = {s.env for s in SETTINGS if s.env}
    assert not (env_names - {"NODE_NAME"}) & declared_env, "set cluster settings in the ConfigMap, not here"


def test_charon_gets_its_config_from_its_own_configmap() -> None:
    (ds,) = _docs("05-agent.yaml")
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    name = volumes["charon-config"]["configMap"]["name"]
    docs = {d["metadata"]["name"]: d for d in _docs("03-agent-config.yaml")}
    assert "strongswan.conf" in docs[name]["data"] and name != "raven-agent-config"


def test_controller_deployment_args_are_controller_settings() -> None:
    (deploy,) = _docs("04-controller.yaml")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    ns = build_parser().parse_args(container["args"])
    assert ns.mode == "controller"
    given = set(vars(ns)) - {"mode"}
    assert all(BY_NAME[name].mode in ("common", "controller") for name in given)
    # The ranges the controller checks pod CIDRs against are the agents' own: the same ConfigMap, no override.
    assert {"configMapRef": {"name": "raven-agent-config"}} in container["envFrom"]
    assert not {s.name for s in SETTINGS if s.cluster} & given, "a flag would silently override the ConfigMap"


def test_the_network_ranges_are_one_declaration_read_by_both_modes(kubeconfig: str, psk_file: str) -> None:
    (cm,) = (d for d in _docs("03-agent-config.yaml") if d["metadata"]["name"] == "raven-agent-config")
    env = {**cm["data"], "RAVEN_OVERLAY_CIDR": "100.64.0.0/10", "RAVEN_TUNNEL_CIDR": "198.18.0.0/16",
           "RAVEN_SERVICE_CIDR": "10.96.0.0/12,fd00:10:96::/108"}
    a, c = agent(kubeconfig, psk_file, env=env), controller(kubeconfig, env=env)
    assert (a.overlay_cidr, a.tunnel_cidr) == (c.overlay_cidr, c.tunnel_cidr) == ("100.64.0.0/10", "198.18.0.0/16")
    assert c.service_cidr == ("10.96.0.0/12", "fd00:10:96::/108")
    # The controller checks the pair the same way the agent does.
    with pytest.raises(ConfigError, match=r"^--tunnel-cidr: 240.1.0.0/16 overlaps --overlay-cidr"):
        controller(kubeconfig, "--tunnel-cidr", "240.1.0.0/16")


# What the kubelet substitutes for `$(VAR)` in args: the env vars the container takes from the downward API.
DOWNWARD = {"status.hostIP": "192.0.2.10", "status.podIP": "10.244.1.7", "spec.nodeName": "n1",
            "metadata.name": "raven-controller-0"}


def _expanded_args(container: dict[str, Any]) -> list[str]:
    env = {e["name"]: DOWNWARD[e["valueFrom"]["fieldRef"]["fieldPath"]] for e in container["env"]
           if "fieldRef" in e.get("valueFrom", {})}
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]


def test_agent_serves_health_on_loopback_and_metrics_on_the_node_ip_only(kubeconfig: str, psk_file: str) -> None:
    container = _agent_container()
    args = _expanded_args(container)
    cfg = build_config(build_parser().parse_args([*args, "--kubeconfig", kubeconfig, "--psk-file", psk_file]),
                       {"NODE_NAME": "n1"})
    assert isinstance(cfg, AgentConfig)
    assert cfg.common.health_addr.host == "127.0.0.1"
    assert cfg.common.metrics_addr.host == DOWNWARD["status.hostIP"]
    for probe in ("livenessProbe", "readinessProbe"):  # the kubelet probes from the node: loopback works
        get = container[probe]["httpGet"]
        assert (get["host"], get["port"]) == ("127.0.0.1", cfg.common.health_addr.port), probe
    assert {"name": "metrics", "containerPort": cfg.common.metrics_addr.port} in container["ports"]


def test_controller_serves_health_and_metrics_on_the_pod_ip_only(kubeconfig: str) -> None:
    (deploy,) = _docs("04-controller.yaml")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    cfg = build_config(build_parser().parse_args([*_expanded_args(container), "--kubeconfig", kubeconfig]), {})
    assert isinstance(cfg, ControllerConfig)
    assert cfg.common.health_addr.host == cfg.common.metrics_addr.host == DOWNWARD["status.podIP"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (ports["health"], ports["metrics"]) == (cfg.common.health_addr.port, cfg.common.metrics_addr.port)
    for probe in ("livenessProbe", "readinessProbe"):  # the kubelet probes the pod IP (no host given)
        assert container[probe]["httpGet"]["port"] == "health" and "host" not in container[probe]["httpGet"]


def test_the_code_serves_nothing_beyond_loopback_by_default(kubeconfig: str) -> None:
    common = controller(kubeconfig).common
    assert common.health_addr.host == common.metrics_addr.host == "127.0.0.1"


# --- the README -----------------------------------------------------------------------------------------

def _readme_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index(BEGIN) : text.index(END)]
    rows: dict[str, list[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`--"):
            rows[cells[0].split("`")[1]] = cells
    return rows


def test_readme_table_lists_every_setting_with_default_and_env() -> None:
    rows = _readme_rows()
    assert set(rows) == {"--mode"} | {s.flag for s in SETTINGS}
    for s in SETTINGS:
        _, default, env, _meaning = rows[s.flag]
        if s.kind == "value":
            assert default == (f"`{s.show(s.default)}`" if s.show(s.default) else ""), s.flag
        assert (env.split("`")[1] if env else None) == s.env, s.flag
        assert ("(ConfigMap)" in env) == s.cluster, s.flag
