"""The README's configuration reference is the CLI's, not a copy that drifts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from raven.docs import BEGIN, END, flags_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_flag_table_matches_cli() -> None:
    text = README.read_text()
    generated = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert generated == flags_markdown(), "README.md is stale: regenerate with python -m raven.docs"


def test_readme_starts_with_the_two_commands() -> None:
    lines = [ln for ln in README.read_text().splitlines() if ln.startswith("make ")]
    assert [ln.split()[1] for ln in lines[:2]] == ["demo", "test"]
    # ... and they are real targets: make itself resolves them (a dry run, nothing is executed).
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    for target in ("demo", "test"):
        dry = subprocess.run([make, "-n", "--no-print-directory", "-C", str(README.parent), target],
                             capture_output=True, text=True, timeout=30)
        assert dry.returncode == 0 and dry.stdout.strip(), f"make {target}: {dry.stderr}"
