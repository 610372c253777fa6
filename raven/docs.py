"""Generate the README's flag table and the agent ConfigMap's settings from `raven.config.SETTINGS`.

`python -m raven.docs` prints the README table; `python -m raven.docs --write` rewrites the generated
parts of README.md and manifests/03-agent-config.yaml in place. tests/unit/test_docs.py and
tests/unit/test_manifests.py fail when either differs from the declarations.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from raven.config import SETTINGS, Setting, configmap_data

BEGIN = "<!-- BEGIN GENERATED FLAGS (python -m raven.docs) -->"
END = "<!-- END GENERATED FLAGS -->"
CONFIGMAP_BEGIN = "  # BEGIN GENERATED SETTINGS (python -m raven.docs --write)"
CONFIGMAP_END = "  # END GENERATED SETTINGS"

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
AGENT_CONFIGMAP = ROOT / "manifests" / "03-agent-config.yaml"

_TITLES = {"common": "common", "network": "cluster network (both modes, from the ConfigMap)",
           "controller": "controller mode", "agent": "agent mode"}


def _flag(s: Setting) -> str:
    if s.kind == "toggle":
        return f"`{s.flag}`, `--no-{s.flag[2:]}`"
    if s.kind == "switch":
        return f"`{s.flag}`"
    value = "\\|".join(s.choices) if s.choices else s.name.upper()
    return f"`{s.flag}` `{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def flags_markdown() -> str:
    lines = [BEGIN]
    for mode, title in _TITLES.items():
        lines += ["", f"**{title}**", "", "| flag | default | env | meaning |", "| --- | --- | --- | --- |"]
        if mode == "common":
            lines.append("| `--mode` `controller\\|agent` | (required) | | what this process runs |")
        for s in SETTINGS:
            if s.mode != mode:
                continue
            default = ("on" if s.default else "off") if s.kind != "value" else s.show(s.default)
            env = f"`{s.env}`" + (" (ConfigMap)" if s.cluster else "") if s.env else ""
            lines.append(f"| {_flag(s)} | {_cell(f'`{default}`' if default else '')} | {env} | {_cell(s.help)} |")
    lines.append(END)
    return "\n".join(lines)


def configmap_settings_yaml() -> str:
    """The generated part of the ConfigMap raven-agent-config's `data`: one commented key per setting."""
    by_env = {s.env: s for s in SETTINGS if s.cluster and s.env}
    lines = [CONFIGMAP_BEGIN]
    for key, value in configmap_data().items():
        lines.append(f"  # {by_env[key].flag}: {by_env[key].help}")
        lines.append(f"  {key}: {json.dumps(value)}")  # a JSON string is a YAML double-quoted scalar
    lines.append(CONFIGMAP_END)
    return "\n".join(lines)


def _replace(text: str, begin: str, end: str, generated: str) -> str:
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[:start] + generated + text[stop:]


def write() -> None:
    README.write_text(_replace(README.read_text(), BEGIN, END, flags_markdown()))
    AGENT_CONFIGMAP.write_text(
        _replace(AGENT_CONFIGMAP.read_text(), CONFIGMAP_BEGIN, CONFIGMAP_END, configmap_settings_yaml())
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(flags_markdown())
