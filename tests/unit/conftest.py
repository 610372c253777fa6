"""Fixtures of the CLI and config tests: a readable (empty) kubeconfig and a PSK file."""

from __future__ import annotations

from pathlib import Path

import pytest

PSK = "x" * 48


@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    return str(path)


@pytest.fixture
def psk_file(tmp_path: Path) -> str:
    path = tmp_path / "psk"
    path.write_text(PSK + "\n")
    return str(path)
