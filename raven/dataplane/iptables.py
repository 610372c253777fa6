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


class Iptables:
    """One table's save and restore, in this network namespace or `netns`'s (blocking: call from a worker thread).
    The agent's appliers (the ingress filter's mangle chains, the probes' nat chain) each own their chains in one
    table and write them with one `iptables-restore --noflush`."""

    def __init__(self, netns: str | None = None, iptables: str = "iptables") -> None:
        self._prefix: list[str] = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self._iptables = iptables

    def save(self, table: str) -> str:
        rc, out, err = run_iptables(self._prefix, (f"{self._iptables}-save", "-t", table))
        if rc != 0:
            raise OSError(f"{self._iptables}-save failed: {err.strip()}")
        return out

    def restore(self, script: str) -> None:
        rc, _out, err = run_iptables(self._prefix, (f"{self._iptables}-restore", "-w", "--noflush"), script)
        if rc != 0:
            raise OSError(f"{self._iptables}-restore failed: {err.strip()}")
