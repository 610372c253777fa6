"""The image installs exactly the system packages the tests run against (Makefile APT_RUNTIME)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _makefile_runtime() -> set[str]:
    match = re.search(r"^APT_RUNTIME := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile has no APT_RUNTIME"
    return set(match.group(1).split())


def _dockerfile_packages() -> set[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"apt-get install -y --no-install-recommends (.+?)&&", text)
    assert match, "Dockerfile has no apt-get install line"
    return set(match.group(1).split())


def test_dockerfile_and_makefile_install_the_same_runtime_packages() -> None:
    assert _dockerfile_packages() == _makefile_runtime()


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
