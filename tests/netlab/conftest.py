"""Fixtures for the lab's own tests: every namespace is named `rvl-*` and removed after each test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from e2e.netlab import Lab

PREFIX = "rvl"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    _need_root()
    # Short run dir: VICI socket paths must fit in AF_UNIX's 108 bytes.
    with Lab(PREFIX) as the_lab:
        yield the_lab
