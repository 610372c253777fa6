"""`raven --mode=controller|agent ...`: parse flags + environment into a validated config and run.

The flags are built from `raven.config.SETTINGS` (nothing about a setting is written here); a flag wins
over the setting's environment variable. Bad configuration ends here with one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, Literal, cast

from raven import __version__, openyurt_config
from raven import log as raven_log
from raven.config import (
    SETTINGS,
    AgentConfig,
    CommonConfig,
    ConfigError,
    ControllerConfig,
    Setting,
    read_psk,
    resolve_kubeconfig,
    settings_for,
)


def raven_version() -> str:
    return __version__


def help_text(s: Setting) -> str:
    """A setting's help for --help, with its default and environment variable."""
    notes = []
    if s.kind == "value" and s.default not in (None, ""):
        notes.append(f"default: {s.show(s.default)}")
    elif s.kind == "toggle":
        notes.append(f"default: {'on' if s.default else 'off'}")
    if s.env:
        notes.append(f"env ${s.env}")
    return f"{s.help} ({'; '.join(notes)})" if notes else s.help


def _add(group: argparse.ArgumentParser | argparse._ArgumentGroup, s: Setting) -> None:
    # No defaults here: an absent flag is absent from the namespace (SUPPRESS), so a flag of the other
    # mode can be told from an unset one, and the default comes from the declaration alone.
    common: dict[str, Any] = {"dest": s.name, "default": argparse.SUPPRESS, "help": help_text(s).replace("%", "%%")}
    if s.kind == "toggle":
        group.add_argument(s.flag, action=argparse.BooleanOptionalAction, **common)
    elif s.kind == "switch":
        group.add_argument(s.flag, action="store_true", **common)
    else:
        group.add_argument(s.flag, choices=s.choices, metavar=None if s.choices else s.name.upper(), **common)


GROUPS = {"common": None, "network": "cluster network (both modes)", "controller": "controller mode",
          "agent": "agent mode"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raven",
        description="Raven: cross-region pod networking for edge Kubernetes clusters. "
        "One binary, two modes: the controller elects each Gateway's active endpoints; "
        "the agent (on every node) programs routes, VXLAN and IPsec to match.",
        epilog="operator tools: `raven status` and `raven graph` (also `kubectl raven ...`; see `raven status -h`)",
    )
    p.add_argument("--version", action="version", version=f"raven {raven_version()}")
    p.add_argument("--mode", choices=("controller", "agent"), required=True, help="what this process runs")
    for mode, title in GROUPS.items():
        group = p.add_argument_group(title) if title else p
        for s in SETTINGS:
            if s.mode == mode:
                _add(group, s)
    return p


def _values(mode: Literal["controller", "agent"], ns: argparse.Namespace, env: Mapping[str, str]
            ) -> dict[str, Any]:
    """Each setting of `mode` that the flags or the environment set, parsed; the flag wins."""
    given = vars(ns)
    wrong = [s.flag for s in SETTINGS if s.mode not in ("common", "network", mode) and s.name in given]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)} cannot be used with --mode={mode}")
    values: dict[str, Any] = {}
    for s in settings_for(mode):
        if s.name in given:
            raw = given[s.name]
            values[s.name] = raw if isinstance(raw, bool) else s.read(raw, "")
        elif s.env and env.get(s.env):
            values[s.name] = s.read(env[s.env], f" (from ${s.env})")
    return values


def _split(values: dict[str, Any], cls: type) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: values.pop(k) for k in list(values) if k in names}


def build_config(ns: argparse.Namespace, env: Mapping[str, str]) -> ControllerConfig | AgentConfig:
    mode = cast(Literal["controller", "agent"], ns.mode)
    values = _values(mode, ns, env)
    # OpenYurt's raven-agent-config keys fill what the flags and environment left unset (raven/openyurt_config.py).
    openyurt_notes = openyurt_config.apply(values, env) if mode == "agent" else []
    common = _split(values, CommonConfig)
    cleanup = mode == "agent" and bool(values.get("cleanup"))
    # --cleanup touches only this node's kernel and charon: it needs no kubeconfig (nor a PSK, see AgentConfig).
    common["kubeconfig"] = None if cleanup else resolve_kubeconfig(common.get("kubeconfig"), env)
    common_cfg = CommonConfig(**common)
    if mode == "controller":
        if env.get("POD_NAME"):
            values["identity"] = env["POD_NAME"]
        return ControllerConfig(common=common_cfg, **values)
    # The PSK is read only where it is used (--ipsec-auth=psk, or the secret WireGuard's pair keys derive from): a
    # certificate-mode IPsec node holds no cluster secret.
    uses_psk = values.get("ipsec_auth", "cert") == "psk" or values.get("vpn_driver") == "wireguard"
    psk, psk_source = read_psk(values.get("psk_file"), env) if uses_psk else ("", "")
    return AgentConfig(common=common_cfg, psk=psk, psk_source=psk_source, openyurt_notes=tuple(openyurt_notes),
                       **values)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["diagnose"]:  # `raven diagnose ...`: the node-side checks (raven/diagnose.py)
        from raven.diagnose import main as diagnose_main

        return diagnose_main(args[1:], os.environ if env is None else env)
    if args and args[0] in ("status", "graph"):  # the operator tools: raven/opscli.py
        from raven import opscli

        return opscli.main(args, env)
    ns = build_parser().parse_args(args)
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
