"""The TCP MSS clamping chain (iptables mangle, `RAVEN-MSS` by default): read, rewrite, remove.

The chain is jumped to from FORWARD: it clamps the MSS of forwarded TCP SYNs leaving through Raven's
devices to the path MTU, so large transfers across pools never black-hole on the encapsulation
overhead. Locally originated traffic needs no clamp: Raven's routes carry the MTU, which the local TCP
stack honours. The chain is rewritten only when its rules differ from the desired devices. In a named
namespace (tests) iptables runs under `nsenter`. A failing or hung iptables raises OSError: the clamp
is an optimisation, and its failure must cost only the clamp.
"""

from __future__ import annotations

import errno
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from raven.log import kv

log = logging.getLogger(__name__)


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
