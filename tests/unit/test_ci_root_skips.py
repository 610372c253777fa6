"""Under CI=true a root-only test that skips fails the run (tests/conftest.py), so CI cannot go green
without the data-plane tests; elsewhere it stays a skip. Proven by running real root-only tests in a
pytest subprocess as an unprivileged user (uid 65534, allowed to read the tree and the interpreter)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# One skip inside the test body, one in a fixture (the data-plane `lab`), one marked `root`.
ROOT_ONLY = [
    "tests/netlab/test_netlab.py::test_cleanup_prefix_removes_leftovers_of_a_crashed_run",
    "tests/dataplane/test_ownership.py::test_a_foreign_device_named_like_ravens_survives_reconcile_and_cleanup",
]


def run_unprivileged(ci: str | None) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run pytest as another user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONDONTWRITEBYTECODE="1", HOME="/tmp")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
         # Read access only (the interpreter may live under /root): not root, so geteuid() != 0.
         "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
         sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfs", *ROOT_ONLY],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.root
def test_under_ci_a_skipped_root_test_fails_the_run() -> None:
    proc = run_unprivileged("true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # The in-body skip becomes a failure, the fixture's (setup) skip an error: either fails the run.
    assert "1 failed, 1 error" in proc.stdout, proc.stdout
    assert proc.stdout.count("CI=true but this root-only test was skipped") >= 2, proc.stdout


@pytest.mark.root
def test_outside_ci_a_root_test_skips_quietly() -> None:
    proc = run_unprivileged(None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 skipped" in proc.stdout, proc.stdout
