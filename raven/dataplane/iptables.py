"""Running iptables (blocking: call from a worker thread), shared by the agent's iptables appliers."""

from __future__ import annotations

import subprocess


def run_iptables(prefix: list[str], args: tuple[str, ...], stdin: str | None = None) -> tuple[int, str, str]:
    """One iptables command (under `prefix`, e.g. nsenter): (returncode, stdout, stderr); a hung one raises OSError."""
    try:
        proc = subprocess.run(
            [*prefix, *args], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"{args[0]} timed out") from exc
    return proc.returncode, proc.stdout, proc.stderr
