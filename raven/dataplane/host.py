"""Host-level knobs outside rtnetlink: sysctls and the TCP MSS clamping chain (iptables mangle).

Both act on the node's network namespace, or on a named one (tests run the agent's appliers from
the root namespace against a node namespace). Sysctls are written only when their value differs;
the MSS chain is rewritten only when its rules differ from the desired devices, so a converged
reconcile writes nothing here either.

The chain (`RAVEN-MSS` by default) lives in the mangle table and is jumped to from FORWARD: it
clamps the MSS of forwarded TCP SYNs leaving through Raven's devices to the path MTU, so large
transfers across pools never black-hole on the encapsulation overhead. Locally originated traffic
needs no clamp: Raven's routes carry the MTU, which the local TCP stack honours.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from raven.log import kv

log = logging.getLogger(__name__)

CLONE_NEWNET: Final = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(netns: str | None) -> Iterator[None]:
    """Switch the *calling thread* into `netns` for the block (no-op for None).

    Only for threads Raven owns (the applier's worker thread): setns(2) affects just this thread,
    and /proc/sys/net opened inside resolves to the namespace's sysctls.
    """
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - would leave the thread astray
                err = ctypes.get_errno()
                raise OSError(err, f"setns back from {netns}: {os.strerror(err)}")
    finally:
        os.close(own)


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctls(netns: str | None, keys: Iterable[str]) -> dict[str, str]:
    """Current values (blocking; run in a worker thread). Reading works where /proc/sys is read-only."""
    out: dict[str, str] = {}
    with in_netns(netns):
        for key in keys:
            with open(sysctl_path(key)) as f:
                out[key] = f.read().strip()
    return out


def ensure_sysctls(netns: str | None, wanted: dict[str, str]) -> list[str]:
    """Write each sysctl whose value differs (blocking; run in a worker thread). Returns the keys written."""
    written: list[str] = []
    with in_netns(netns):
        for key, value in sorted(wanted.items()):
            path = sysctl_path(key)
            with open(path) as f:
                current = f.read().strip()
            if current != value:
                with open(path, "w") as f:
                    f.write(value)
                written.append(key)
    return written


@dataclass(frozen=True)
class MssState:
    """What the chain clamps today; `None` devices means the chain holds something unexpected."""

    jumped: bool
    ifnames: frozenset[str] | None


class MssClamp:
    """The RAVEN-MSS mangle chain: read, rewrite, remove. Idempotent. Blocking: call from a worker thread."""

    def __init__(
        self, chain: str = "RAVEN-MSS", netns: str | None = None, iptables: str = "iptables", timeout: float = 30.0
    ) -> None:
        self.chain = chain
        self._prefix: list[str] = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self._iptables = iptables
        self._timeout = timeout

    def _run(self, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        """Run one iptables command; a hung one (a stuck xtables lock, a broken backend) is killed after
        `timeout` seconds and raised as an OSError, which callers report as the clamp's failure only."""
        # Blocking on purpose: callers run this in a worker thread (asyncio's subprocess support
        # starts a watcher thread per child, which costs more than iptables-save itself).
        try:
            proc = subprocess.run(
                [*self._prefix, *args],
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OSError(errno.ETIMEDOUT, f"{args[0]} did not finish within {self._timeout:g} s") from None
        return proc.returncode, proc.stdout, proc.stderr

    def rule_args(self, ifname: str) -> list[str]:
        return [
            "-o", ifname, "-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN,RST", "SYN",
            "-j", "TCPMSS", "--clamp-mss-to-pmtu",
        ]  # fmt: skip

    def read(self) -> MssState:
        rc, out, err = self._run(f"{self._iptables}-save", "-t", "mangle")
        if rc != 0:
            raise OSError(f"{self._iptables}-save failed: {err.strip()}")
        return self.parse(out)

    def parse(self, save: str) -> MssState:
        jumped = False
        exists = False
        names: set[str] = set()
        unexpected = False
        for line in save.splitlines():
            words = line.split()
            if not words:
                continue
            if words[0] == f":{self.chain}":
                exists = True
            elif words[:2] == ["-A", "FORWARD"] and words[2:] == ["-j", self.chain]:
                jumped = True
            elif words[:2] == ["-A", self.chain]:
                if len(words) == 2 + len(self.rule_args("x")) and words[3] and words[2] == "-o":
                    if words[2:] == self.rule_args(words[3]):
                        names.add(words[3])
                        continue
                unexpected = True
        if not exists:
            return MssState(jumped=jumped, ifnames=frozenset())
        return MssState(jumped=jumped, ifnames=None if unexpected else frozenset(names))

    def write(self, ifnames: Sequence[str], current: MssState) -> int:
        """Make the chain clamp exactly `ifnames` (empty: remove it). Returns the number of iptables calls."""
        if not ifnames:
            return self.remove()
        lines = ["*mangle", f":{self.chain} - [0:0]"]
        lines += [f"-A {self.chain} " + " ".join(self.rule_args(n)) for n in sorted(ifnames)]
        if not current.jumped:
            lines.append(f"-I FORWARD 1 -j {self.chain}")
        lines.append("COMMIT")
        # --noflush: only our chain (declared, hence flushed) and our jump change.
        rc, _out, err = self._run(f"{self._iptables}-restore", "-w", "--noflush", stdin="\n".join(lines) + "\n")
        if rc != 0:
            raise OSError(f"{self._iptables}-restore failed: {err.strip()}")
        log.info("mss clamp written", extra=kv(chain=self.chain, ifnames=",".join(sorted(ifnames))))
        return 1

    def remove(self) -> int:
        """Remove every jump to the chain and the chain itself; returns how many of those existed."""
        removed = 0
        while self._run(self._iptables, "-w", "-t", "mangle", "-D", "FORWARD", "-j", self.chain)[0] == 0:
            removed += 1
        for op in ("-F", "-X"):
            if self._run(self._iptables, "-w", "-t", "mangle", op, self.chain)[0] == 0:
                removed += op == "-X"
        return removed
