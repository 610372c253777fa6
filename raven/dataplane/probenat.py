"""The source NAT of members' `via` probes at an active gateway (iptables nat chain `RAVEN-PROBE`).

A member probes *through* its gateway: an ICMP echo from its raven0 (overlay) address to a peer gateway's inner
address, routed over raven0 to the gateway, forwarded there into the peer's IPsec SA and answered by the peer's
kernel. Two things stop that echo without help: the SA's selectors are inner/32 <-> inner/32 (a member's source
matches no policy), and the peer has no route back to a member's overlay address (overlay addresses are not
unique across pools). So the gateway rewrites the source of exactly these echoes to its own inner address, in
POSTROUTING, after the forwarding decision: the echo still needs the gateway to forward it (IP forwarding on,
charon's SA installed, the uplink working), and the reply comes back through the SA to the gateway, whose
conntrack turns it back to the member and forwards it over raven0. With kernel ESP the NAT hook re-runs the
xfrm lookup after rewriting (`nf_xfrm_me_harder`), so the rewritten echo matches the inner/32 policy; with
kernel-libipsec the TUN device sees the rewritten packet.

One rule, only at an active gateway: `-s <overlay CIDR> -d <tunnel CIDR> -p icmp -j SNAT --to-source <inner>`.
Reconciled like the ingress filter (read `iptables-save -t nat`, rewrite the chain in one `iptables-restore
--noflush` only when it differs). Like the MSS clamp its failure costs only what it serves (the via probes, then
reported lost): it is reported as an iptables error, never withholds the overlay. Blocking: call from a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from raven.dataplane.iptables import Iptables
from raven.dataplane.state import ProbeSnat

CHAIN: Final = "RAVEN-PROBE"
HOOK: Final = "POSTROUTING"


def render(p: ProbeSnat | None) -> tuple[str, ...]:
    """Pure: the chain's rules as iptables-save prints them (without "-A CHAIN "); empty: no chain."""
    if p is None:
        return ()
    return (f"-s {p.sources} -d {p.destinations} -p icmp -j SNAT --to-source {p.to_source}",)


@dataclass(frozen=True)
class ProbeNatObserved:
    exists: bool = False
    rules: tuple[str, ...] = ()
    jumps: int = 0

    def converged(self, want: tuple[str, ...]) -> bool:
        if not want:
            return not self.exists and self.jumps == 0
        return self.exists and self.rules == want and self.jumps == 1


def parse(save: str) -> ProbeNatObserved:
    """The owned part of `iptables-save -t nat` output."""
    exists, rules, jumps = False, [], 0
    for line in save.splitlines():
        if line.startswith(f":{CHAIN} "):
            exists = True
            continue
        words = line.split(" ", 2)
        if len(words) < 3 or words[0] != "-A":
            continue
        if words[1] == CHAIN:
            rules.append(words[2])
        elif words[1] == HOOK and words[2] == f"-j {CHAIN}":
            jumps += 1
    return ProbeNatObserved(exists, tuple(rules), jumps)


def restore_script(want: tuple[str, ...], current: ProbeNatObserved) -> str:
    """Pure: the iptables-restore --noflush transaction that turns `current` into `want`."""
    lines = ["*nat"]
    if want:
        lines.append(f":{CHAIN} - [0:0]")  # declared, hence flushed, then refilled
        lines += [f"-A {CHAIN} {r}" for r in want]
        if current.jumps == 0:
            lines.append(f"-I {HOOK} 1 -j {CHAIN}")
        lines += [f"-D {HOOK} -j {CHAIN}"] * max(0, current.jumps - 1)
    else:
        lines += [f"-D {HOOK} -j {CHAIN}"] * current.jumps
        if current.exists:
            lines += [f":{CHAIN} - [0:0]", f"-X {CHAIN}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class ProbeNatApplier:
    """The RAVEN-PROBE nat chain: read, write, remove. Blocking (subprocesses): call from a worker thread."""

    def __init__(self, netns: str | None = None, iptables: str = "iptables") -> None:
        self._ipt = Iptables(netns, iptables)

    def read(self) -> ProbeNatObserved:
        return parse(self._ipt.save("nat"))

    def write(self, want: tuple[str, ...], current: ProbeNatObserved) -> int:
        """One iptables-restore (0 when already converged). Returns the number of iptables calls."""
        if current.converged(want):
            return 0
        self._ipt.restore(restore_script(want, current))
        return 1

    def remove(self) -> int:
        """Remove the chain and the jumps to it (nothing else). Returns iptables writes (0 or 1)."""
        return self.write((), self.read())
