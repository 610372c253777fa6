"""The README's configuration reference is the CLI's, not a copy that drifts."""

from __future__ import annotations

from pathlib import Path

from raven.docs import BEGIN, END, flags_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_flag_table_matches_cli() -> None:
    text = README.read_text()
    generated = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert generated == flags_markdown(), "README.md is stale: regenerate with python -m raven.docs"


def test_readme_starts_with_the_two_commands() -> None:
    lines = [ln for ln in README.read_text().splitlines() if ln.startswith("make ")]
    assert [ln.split()[1] for ln in lines[:2]] == ["demo", "test"]
