"""Generate the README's configuration reference from the CLI parser, so the two cannot drift.

`python -m raven.docs` prints the Markdown table; tests/unit/test_docs.py fails when README.md differs.
"""

from __future__ import annotations

import argparse

from raven.cli import build_parser

BEGIN = "<!-- BEGIN GENERATED FLAGS (python -m raven.docs) -->"
END = "<!-- END GENERATED FLAGS -->"


def _flag(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings)
    if action.choices:
        names += " `" + "\\|".join(str(c) for c in action.choices) + "`"
    elif action.nargs != 0 and action.metavar is None and not isinstance(action, argparse.BooleanOptionalAction):
        names += " `" + action.dest.upper() + "`"
    return names


def flags_markdown() -> str:
    parser = build_parser()
    lines = [BEGIN]
    for group in parser._action_groups:  # argparse has no public way to walk groups
        actions = [a for a in group._group_actions if a.option_strings and a.dest not in ("help", "version")]
        if not actions:
            continue
        title = "common" if group.title in ("options", "optional arguments") else group.title
        lines += ["", f"**{title}**", "", "| flag | meaning |", "| --- | --- |"]
        for action in actions:
            help_text = (action.help or "").replace("|", "\\|")
            if action.default not in (None, False, argparse.SUPPRESS) and "default" not in help_text:
                help_text += f" (default: `{action.default}`)"
            lines.append(f"| {_flag(action)} | {help_text} |")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    print(flags_markdown())
