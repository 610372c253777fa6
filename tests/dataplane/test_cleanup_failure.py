"""`raven --mode=agent --cleanup` that cannot do all of its job says so: exit 1 and a log line, never a
traceback."""

from __future__ import annotations

import sys

from e2e.netlab import Lab


def test_cleanup_that_cannot_remove_everything_exits_1_without_a_traceback(lab: Lab) -> None:
    ns = lab.netns("clf")
    # No iptables on PATH (a broken image): the MSS chain can be neither read nor removed.
    result = ns.run(
        ["env", "PATH=/nonexistent", sys.executable, "-m", "raven.cli", "--mode=agent", "--cleanup",
         "--vici-socket", "/nonexistent/charon.vici"],
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "kernel cleanup write failed" in result.stderr and "kind=iptables" in result.stderr
