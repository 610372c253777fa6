"""OpenYurt Raven's cluster objects besides Gateways, read the way a migrated cluster needs them (pure).

- `kube-system/raven-cfg` (rendered by OpenYurt's raven-agent chart): `enable-l3-tunnel` and `enable-l7-proxy`
  switch the election of tunnel and proxy endpoints on or off for every Gateway (`switches_from`).
- `raven.openyurt.io/extra-allowed-source-cidrs`: extra subnets routed across pools like pod CIDRs
  (`extra_cidrs`), on a Node (that node's subnets) or, as OpenYurt's controller reads it, on a Gateway (the
  subnets of its active tunnel endpoint's node).

What absence means differs from OpenYurt on purpose (docs/migrating-from-openyurt.md): OpenYurt elects nothing
when raven-cfg or one of its keys is missing. Here only an explicit "false" switches a kind of endpoint off, so a
fresh install, a cluster whose raven-cfg was deleted with the OpenYurt chart, or a mistaken `kubectl delete`
keeps every tunnel. A value that is neither true nor false (case-insensitive) is a problem, reported, and
counts as the default (on): bad input never tears down what works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from raven.api.gateway import JSONObject, is_object

RAVEN_CFG_NAMESPACE: Final = "kube-system"
RAVEN_CFG_NAME: Final = "raven-cfg"
KEY_ENABLE_TUNNEL: Final = "enable-l3-tunnel"
KEY_ENABLE_PROXY: Final = "enable-l7-proxy"
ANNOTATION_EXTRA_CIDRS: Final = "raven.openyurt.io/extra-allowed-source-cidrs"


@dataclass(frozen=True)
class Switches:
    """Which endpoint kinds the controller elects (raven-cfg), with the problems found reading it."""

    tunnel: bool = True
    proxy: bool = True
    present: bool = False  # whether raven-cfg exists (for messages)
    problems: tuple[str, ...] = ()

    def config_for(self, ep_type: str) -> dict[str, str]:
        """The `config` entries OpenYurt writes on an active endpoint of `ep_type` (its switch, as text)."""
        if ep_type == "tunnel":
            return {KEY_ENABLE_TUNNEL: "true" if self.tunnel else "false"}
        if ep_type == "proxy":
            return {KEY_ENABLE_PROXY: "true" if self.proxy else "false"}
        return {}

    def disabled_note(self, ep_type: str) -> str | None:
        """Why `ep_type` endpoints are not elected, or None when they are."""
        on = self.tunnel if ep_type == "tunnel" else self.proxy
        if on:
            return None
        key = KEY_ENABLE_TUNNEL if ep_type == "tunnel" else KEY_ENABLE_PROXY
        return f"{ep_type} endpoints not elected: {RAVEN_CFG_NAMESPACE}/{RAVEN_CFG_NAME} {key} is \"false\""


ALL_ON: Final = Switches()


def _switch(data: Mapping[str, object], key: str, problems: list[str]) -> bool:
    value = data.get(key)
    if value is None:
        return True
    text = value.strip().lower() if isinstance(value, str) else None
    if text == "true":
        return True
    if text == "false":
        return False
    problems.append(f"{RAVEN_CFG_NAMESPACE}/{RAVEN_CFG_NAME}: {key} is {value!r}, neither \"true\" nor \"false\"; "
                    "treated as \"true\"")
    return True


def switches_from(cm: JSONObject | None) -> Switches:
    """The switches of a raven-cfg ConfigMap as API JSON (None: it does not exist)."""
    if cm is None:
        return ALL_ON
    data = cm.get("data")
    data = data if is_object(data) else {}
    problems: list[str] = []
    tunnel = _switch(data, KEY_ENABLE_TUNNEL, problems)
    proxy = _switch(data, KEY_ENABLE_PROXY, problems)
    return Switches(tunnel=tunnel, proxy=proxy, present=True, problems=tuple(problems))


def extra_cidrs(annotations: Mapping[str, str]) -> tuple[str, ...]:
    """The comma-separated CIDRs of the extra-allowed-source-cidrs annotation, as written (stripped, no empties);
    checking them is the node checks' job (raven.controller.nodecheck)."""
    text = annotations.get(ANNOTATION_EXTRA_CIDRS, "")
    return tuple(p.strip() for p in text.split(",") if p.strip())
