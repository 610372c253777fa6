"""Scenario 6: teardown leaves the machine as it found it: no namespace, /etc/netns folder, root link,
mount or process with the prefix, also when the runner is interrupted (Ctrl-C) or fails mid-way.

The first test runs last: it closes the session's cluster. The second (an interrupted demo, a failed
start) builds its own clusters under the prefix ``rvet``, so it runs in any order and alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.cluster import ConvergenceError, RavenCluster
from e2e.netlab import find_leftovers

from .conftest import PREFIX

pytestmark = [pytest.mark.root, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


# The interrupted demo and the broken start use their own prefix: they never depend on (or wait for)
# the session cluster, whatever order the tests run in.
OWN_PREFIX = f"{PREFIX}t"  # rvet by default


def _clean(prefix: str = PREFIX) -> dict[str, list[str]]:
    return {k: v for k, v in find_leftovers(prefix).items() if v}


def test_closing_the_cluster_leaves_nothing_behind(rc: RavenCluster, request: pytest.FixtureRequest) -> None:
    run_dir = str(rc.run_dir)
    assert find_leftovers(PREFIX)["netns"], "the cluster should exist before teardown"
    # Its logs stay (as the session fixture would keep them) when an earlier scenario failed.
    rc.close(keep_logs=request.session.testsfailed > 0 or os.environ.get("RAVEN_E2E_KEEP") == "1")
    assert _clean() == {}
    assert _processes_mentioning(run_dir) == []
    assert not rc.api._thread.is_alive()


def test_interrupted_demo_and_failed_start_leave_nothing_behind(tmp_path: Path) -> None:
    # Ctrl-C while the demo is converging.
    run_dirs_before = set(Path("/tmp").glob(f"{OWN_PREFIX}-*"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "demo.out"
    with open(out, "w") as f:
        demo = subprocess.Popen([sys.executable, "-m", "e2e.demo", "--prefix", OWN_PREFIX], stdout=f,
                                stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        # Generous: on a shared machine the demo may first wait for another run's teardown test to
        # release the prefix (e2e.netlab's per-prefix lock; its output then says so).
        deadline = time.monotonic() + 240
        while "agents started" not in out.read_text() and time.monotonic() < deadline and demo.poll() is None:
            time.sleep(0.05)
        assert "agents started" in out.read_text(), out.read_text()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) in (0, 1), out.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "tearing down" in out.read_text()
    assert _clean(OWN_PREFIX) == {}
    assert set(Path("/tmp").glob(f"{OWN_PREFIX}-*")) == run_dirs_before, "the demo left its run directory"
    # A start that fails half-way (an agent flag the agent rejects) cleans up too (its logs stay in
    # the run directory the caller gave, for the failure message).
    with pytest.raises(ConvergenceError, match="agents exited"):
        with RavenCluster(prefix=OWN_PREFIX, run_dir=tmp_path / "broken",
                          agent_args=["--vxlan-vni", "not-a-number"]) as broken:
            broken.wait_converged(timeout=60)  # fails as soon as the agents have exited
    assert _clean(OWN_PREFIX) == {}
