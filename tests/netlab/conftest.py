"""Fixtures for the lab's own tests: every namespace is named `rvl-*` and removed after each test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from e2e.netlab import Lab, lab_session

PREFIX = "rvl"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")


@pytest.fixture
def lab() -> Iterator[Lab]:
    _need_root()
    yield from lab_session(PREFIX)
