"""Only tunnel traffic enters the overlay: the agent's iptables filter in front of raven0 and raven1.

The VXLAN sockets of raven0 (intra-pool) and raven1 (inter-gateway) listen on every address of the node.
Without a filter, anyone who can reach a node's UDP ports (the WAN, for a gateway with a public address)
could send plaintext VXLAN frames with any inner source: into the node's pods, or, through raven0 at a
gateway, into the IPsec tunnels. The filter, in the mangle table, has two stages:

1. Outer packets (chain `RAVEN-INGRESS`, jumped to from INPUT; only packets delivered to this node):
   - the tunnel port (raven1, `RAVEN-INGRESS-T`) accepts a packet only when it was decrypted by IPsec:
     with kernel ESP (production) the packet carries the inbound SA's policy (`-m policy --dir in --pol
     ipsec --proto esp`; the kernel has already checked that the inner source matches the SA's
     selectors, inner/32 <-> inner/32); with strongSwan's kernel-libipsec (tests, ENVIRONMENT.md) charon
     writes decrypted packets into its TUN device `ipsec0` (`-i ipsec0`), and nothing else writes there.
     Anything else on that port is plaintext from the wire: dropped. A decrypted packet then goes to
     `RAVEN-INGRESS-S`, which accepts it only from a planned peer gateway's inner address.
   - the pool port (raven0, `RAVEN-INGRESS-P`) accepts a packet only from the node IP of a current pool
     member (at the gateway) or of the active gateway (at a member; any inner source: the gateway's own
     filter checked it against the peer it came from).
   An accepted packet gets the sender's mark (`IngressPeer.mark`, within `mark_mask`); everything else
   sent to these ports is dropped.
2. Decapsulated packets (chain `RAVEN-OVERLAY`, jumped to from PREROUTING): the kernel keeps skb->mark
   through VXLAN decapsulation within one network namespace (`__iptunnel_pull_header` scrubs it only when
   crossing namespaces; verified in a netns pair: a mark set on the outer packet in mangle INPUT matched
   the inner packet in mangle PREROUTING, and without it the inner packet did not), so the inner packet
   still says which sender it came from. It passes only if its source is in that sender's
   `sources` (the subnets the plan routes via that peer, or a member's own pod CIDRs), else it is
   dropped: a peer gateway cannot speak for another pool, nor a member for another node. Passing packets
   have Raven's mark bits cleared (`RAVEN-OVERLAY-A`), so nothing downstream sees them.

Every packet the node receives or forwards crosses these chains (the data plane's hot path: each rule
a packet traverses costs it tens of nanoseconds, billed to charon's CPU when charon writes the packet,
docs/architecture.md "Throughput and MTU"), so they are laid out for the fewest rules per packet:
dispatch by port and device with `-g` (goto: the packet never comes back to try the next dispatch
rule), the "was it decrypted" test once per packet instead of once per peer, one rule per peer or
source, and the accepted inner packet leaving at its first matching rule. Every sub-chain still ends
in a DROP (fail closed: a packet that matches nothing, or arrives unmarked, is dropped).

The chains are the agent's (exact names, `CHAINS`); foreign rules, in the same built-in chains or
elsewhere, are never touched. Reconciled like every other kernel object: read (`iptables-save -t
mangle`), compare with the canonical rules (`render`), and rewrite only when they differ, atomically in
one `iptables-restore --noflush` transaction (declaring a chain flushes and refills it): a converged
reconcile writes nothing, and no packet ever sees a half-written filter.

Where iptables cannot run, the overlay is not built (`IngressGuard`, fail closed): a node whose VXLAN
sockets would accept anyone's frames is worse than a node out of the overlay, and the failure is reported
as an error on every pass (logs, `raven_agent_errors_total`, readiness). The MSS clamp, by contrast,
costs only the clamp.

Blocking (subprocesses): `IngressFilterApplier` methods run in a worker thread; `IngressGuard` does that.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Final, Protocol

from raven.dataplane import probenat
from raven.dataplane.iptables import Iptables
from raven.dataplane.probenat import ProbeNatApplier
from raven.dataplane.report import ApplyError, ApplyReport
from raven.dataplane.state import IngressFilter, IngressPeer, NodeNetwork, ProbeSnat
from raven.log import kv

log = logging.getLogger(__name__)

# The agent's chains, all in the mangle table.
OUTER_CHAIN: Final = "RAVEN-INGRESS"  # from INPUT: outer VXLAN packets
OUTER_TUNNEL_CHAIN: Final = "RAVEN-INGRESS-T"
OUTER_POOL_CHAIN: Final = "RAVEN-INGRESS-P"
OUTER_SOURCE_CHAIN: Final = "RAVEN-INGRESS-S"  # decrypted tunnel packets: inner source -> sender's mark
INNER_CHAIN: Final = "RAVEN-OVERLAY"  # from PREROUTING: decapsulated packets
INNER_TUNNEL_CHAIN: Final = "RAVEN-OVERLAY-T"
INNER_POOL_CHAIN: Final = "RAVEN-OVERLAY-P"
INNER_ACCEPT_CHAIN: Final = "RAVEN-OVERLAY-A"  # accepted inner packets: Raven's mark bits cleared
CHAINS: Final = (OUTER_CHAIN, OUTER_TUNNEL_CHAIN, OUTER_SOURCE_CHAIN, OUTER_POOL_CHAIN, INNER_CHAIN,
                 INNER_TUNNEL_CHAIN, INNER_POOL_CHAIN, INNER_ACCEPT_CHAIN)
# Built-in chain -> the owned chain it jumps to.
JUMPS: Final = {"INPUT": OUTER_CHAIN, "PREROUTING": INNER_CHAIN}
# The chains whose last rule must be a DROP for the filter to be closed (see `IngressObserved.enforcing`).
_CLOSING: Final = (OUTER_TUNNEL_CHAIN, OUTER_SOURCE_CHAIN, OUTER_POOL_CHAIN, INNER_TUNNEL_CHAIN, INNER_POOL_CHAIN)

Rules = dict[str, tuple[str, ...]]  # chain -> its rules as iptables-save prints them, without "-A CHAIN "


def mark_shift(mask: int) -> int:
    """The bit position of the mask's lowest bit (marks are `index << shift`)."""
    if mask <= 0:
        raise ValueError(f"mark mask {mask:#x} must be positive")
    return (mask & -mask).bit_length() - 1


def mark_capacity(mask: int) -> int:
    """How many senders one mask can tell apart (mark 0 means "no sender")."""
    return mask >> mark_shift(mask)


def _mark(value: int, mask: int) -> str:
    return f"{value:#x}/{mask:#x}"


def _cidr(c: str) -> str:
    return c if "/" in c else f"{c}/32"


def _collapsed(cidrs: tuple[str, ...]) -> list[str]:
    """The fewest CIDRs covering exactly the same addresses (a pool's aligned pod CIDRs become one rule).

    Integer arithmetic: `ipaddress` objects cost a second for 10,000 sources."""
    ranges: list[tuple[int, int]] = []
    for c in cidrs:
        ip, _, plen = c.partition("/")
        size = 1 << (32 - int(plen or 32))
        first = int.from_bytes(socket.inet_aton(ip), "big") & ~(size - 1) & 0xFFFFFFFF
        ranges.append((first, first + size - 1))
    ranges.sort()
    merged: list[list[int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    out: list[str] = []
    for first, last in merged:
        while first <= last:
            # The largest aligned block starting at `first` that ends within `last`.
            size = first & -first if first else 1 << 32
            while first + size - 1 > last:
                size >>= 1
            out.append(f"{socket.inet_ntoa(first.to_bytes(4, 'big'))}/{32 - size.bit_length() + 1}")
            first += size
    return out


def render(f: IngressFilter | None) -> Rules:
    """Pure: the owned chains and their rules, in iptables-save's canonical form (empty: no filter)."""
    if f is None:
        return {}
    mask = f.mark_mask
    clear = f"-j MARK --set-xmark {_mark(0, mask)}"
    closed = f"-m mark --mark {_mark(0, mask)} -j DROP"  # no sender's mark: dropped

    def marks(peers: tuple[IngressPeer, ...]) -> tuple[str, ...]:
        # Cleared first (a mark set upstream must not pass for a sender's), one rule per sender.
        setm = [f"-s {_cidr(p.outer)} -j MARK --set-xmark {_mark(p.mark, mask)}" for p in sorted(peers)]
        return (clear, *setm, closed)

    def inner(peers: tuple[IngressPeer, ...]) -> tuple[str, ...]:
        rules = [
            # iptables-save prints no "-s" for 0.0.0.0/0: neither do we, or we would never converge.
            f"{'' if src == '0.0.0.0/0' else f'-s {src} '}-m mark --mark {_mark(p.mark, mask)} -g {INNER_ACCEPT_CHAIN}"
            for p in sorted(peers)
            for src in _collapsed(p.sources)
        ]
        return (*rules, "-j DROP")

    return {
        OUTER_CHAIN: (
            f"-p udp -m udp --dport {f.tunnel_port} -g {OUTER_TUNNEL_CHAIN}",
            f"-p udp -m udp --dport {f.pool_port} -g {OUTER_POOL_CHAIN}",
        ),
        # Decrypted (by libipsec, or by a kernel SA), else plaintext from the wire.
        OUTER_TUNNEL_CHAIN: (
            f"-i {f.ipsec_ifname} -g {OUTER_SOURCE_CHAIN}",
            f"-m policy --dir in --pol ipsec --proto esp -g {OUTER_SOURCE_CHAIN}",
            "-j DROP",
        ),
        OUTER_SOURCE_CHAIN: marks(f.tunnel),
        OUTER_POOL_CHAIN: marks(f.pool),
        INNER_CHAIN: (
            f"-i {f.tunnel_ifname} -g {INNER_TUNNEL_CHAIN}",
            f"-i {f.pool_ifname} -g {INNER_POOL_CHAIN}",
        ),
        INNER_TUNNEL_CHAIN: inner(f.tunnel),
        INNER_POOL_CHAIN: inner(f.pool),
        # Reached by goto from the rule that accepted the packet; returns to PREROUTING.
        INNER_ACCEPT_CHAIN: (clear,),
    }


@dataclass(frozen=True)
class IngressObserved:
    """The owned chains as iptables-save shows them, and how many jumps each built-in chain has to ours."""

    chains: Rules = field(default_factory=dict)
    jumps: dict[str, int] = field(default_factory=dict)

    def converged(self, want: Rules) -> bool:
        if not want:
            return not self.chains and not any(self.jumps.values())
        return self.chains == want and all(self.jumps.get(b, 0) == 1 for b in JUMPS)

    @property
    def enforcing(self) -> bool:
        """Some version of the filter is in place and closed (jumped to, each sub-chain ending in DROP)."""
        if not all(self.jumps.get(b, 0) >= 1 for b in JUMPS) or set(self.chains) != set(CHAINS):
            return False
        return all(self.chains[c] and self.chains[c][-1].endswith("-j DROP") for c in _CLOSING)


def parse(save: str) -> IngressObserved:
    """The owned part of `iptables-save -t mangle` output."""
    chains: dict[str, list[str]] = {}
    jumps = dict.fromkeys(JUMPS, 0)
    for line in save.splitlines():
        if line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name in CHAINS:
                chains.setdefault(name, [])
            continue
        words = line.split(" ", 2)
        if len(words) < 3 or words[0] != "-A":
            continue
        chain, rest = words[1], words[2]
        if chain in CHAINS:
            chains.setdefault(chain, []).append(rest)
        elif chain in JUMPS and rest == f"-j {JUMPS[chain]}":
            jumps[chain] += 1
    return IngressObserved({k: tuple(v) for k, v in chains.items()}, jumps)


def restore_script(want: Rules, current: IngressObserved) -> str:
    """Pure: the one iptables-restore --noflush transaction that turns `current` into `want`."""
    lines = ["*mangle"]
    if want:
        lines += [f":{c} - [0:0]" for c in CHAINS]  # declared, hence flushed, then refilled
        lines += [f"-A {c} {r}" for c in CHAINS for r in want[c]]
        for builtin, chain in JUMPS.items():
            have = current.jumps.get(builtin, 0)
            if have == 0:
                lines.append(f"-I {builtin} 1 -j {chain}")
            lines += [f"-D {builtin} -j {chain}"] * max(0, have - 1)
    else:
        for builtin, chain in JUMPS.items():
            lines += [f"-D {builtin} -j {chain}"] * current.jumps.get(builtin, 0)
        present = [c for c in CHAINS if c in current.chains]
        lines += [f":{c} - [0:0]" for c in present]  # flush all first: they jump to each other
        lines += [f"-X {c}" for c in present]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class IngressFilterApplier:
    """The owned chains: read, write, remove. Blocking (subprocesses): call from a worker thread."""

    def __init__(self, netns: str | None = None, iptables: str = "iptables") -> None:
        self._ipt = Iptables(netns, iptables)

    def read(self) -> IngressObserved:
        return parse(self._ipt.save("mangle"))

    def write(self, want: Rules, current: IngressObserved) -> int:
        """One iptables-restore (0 when already converged). Returns the number of iptables calls."""
        if current.converged(want):
            return 0
        self._ipt.restore(restore_script(want, current))
        return 1

    def remove(self) -> int:
        """Remove the owned chains and the jumps to them (nothing else). Returns iptables writes (0 or 1)."""
        return self.write({}, self.read())


class Kernel(Protocol):
    async def reconcile(self, desired: NodeNetwork) -> ApplyReport: ...


class IngressGuard:
    """The kernel driver the agent uses: the ingress filter, then the kernel applier; the overlay only
    behind a filter.

    With links wanted, the filter is written first, so a VXLAN socket never opens unfiltered. When it
    cannot be written and no closed filter is in place (iptables missing or broken, a planned state
    without a filter), the kernel gets the empty state (fail closed: this node leaves the overlay) and
    the reason is an error in the report, on every pass until fixed. A filter that is in place but
    stale (the rewrite failed) keeps the overlay up: it is closed, at worst to a new sender.
    When no links are wanted, the kernel goes first (links gone), then the filter.
    """

    def __init__(self, kernel: Kernel, ingress: IngressFilterApplier, probe_nat: ProbeNatApplier | None = None
                 ) -> None:
        self._kernel = kernel
        self._ingress = ingress
        self._probe_nat = probe_nat
        self._rendered: tuple[IngressFilter | None, Rules] = (None, {})

    async def _filter(self, f: IngressFilter | None, report: ApplyReport) -> bool:
        """Write the filter; True when a closed filter is in place afterwards (or none is needed)."""
        if self._rendered[0] != f:  # rendering 10,000 sources takes tens of ms: once per change
            self._rendered = (f, render(f))
        want = self._rendered[1]
        try:
            current = await asyncio.to_thread(self._ingress.read)
        except FileNotFoundError:
            if not want:  # no iptables on this node: no filter to remove either
                return True
            report.errors.append(ApplyError("iptables", "read", OUTER_CHAIN, "iptables is not installed"))
            return False
        except OSError:
            # Read once more before failing closed: an iptables-save killed by a signal sent to the agent's
            # process group (a stop under way: the pass still completes) or any one-off failure would otherwise
            # take this node out of the overlay; a broken iptables fails twice.
            try:
                current = await asyncio.to_thread(self._ingress.read)
            except OSError as exc:
                report.errors.append(ApplyError("iptables", "read", OUTER_CHAIN, str(exc)))
                return False
        try:
            n = await asyncio.to_thread(self._ingress.write, want, current)
        except OSError as exc:
            report.errors.append(ApplyError("iptables", "write", OUTER_CHAIN, str(exc)))
            return bool(want) and current.enforcing
        if n:
            report.writes["iptables"] += n
            log.info(
                "ingress filter written",
                extra=kv(
                    tunnel_peers=len(f.tunnel) if f else 0,
                    pool_peers=len(f.pool) if f else 0,
                    rules=sum(len(r) for r in want.values()),
                ),
            )
        return True

    async def _snat(self, p: ProbeSnat | None, report: ApplyReport) -> None:
        """The via probes' source NAT (raven.dataplane.probenat): its failure costs only those probes."""
        if self._probe_nat is None:
            return
        want = probenat.render(p)
        try:
            current = await asyncio.to_thread(self._probe_nat.read)
            n = await asyncio.to_thread(self._probe_nat.write, want, current)
        except FileNotFoundError:
            if want:
                report.errors.append(ApplyError("iptables", "read", probenat.CHAIN, "iptables is not installed"))
            return
        except OSError as exc:
            report.errors.append(ApplyError("iptables", "write", probenat.CHAIN, str(exc)))
            return
        if n:
            report.writes["iptables"] += n
            log.info("probe snat written", extra=kv(chain=probenat.CHAIN, to_source=p.to_source if p else ""))

    async def reconcile(self, desired: NodeNetwork) -> ApplyReport:
        start = time.perf_counter()
        mine = ApplyReport()
        if desired.links:
            protected = desired.ingress is not None and await self._filter(desired.ingress, mine)
            if not protected:
                if desired.ingress is None:
                    mine.errors.append(ApplyError("iptables", "plan", OUTER_CHAIN, "no ingress filter planned"))
                names = ",".join(sorted(link.name for link in desired.links))
                mine.errors.append(
                    ApplyError(
                        "iptables",
                        "guard",
                        names,
                        "overlay withheld: its VXLAN sockets would accept unauthenticated frames without the "
                        "ingress filter (fix iptables in the agent's image)",
                    )
                )
                desired = NodeNetwork()
            report = await self._kernel.reconcile(desired)
            await self._snat(desired.probe_snat, mine)
        else:
            report = await self._kernel.reconcile(desired)
            await self._filter(None, mine)
            await self._snat(None, mine)
        for kind, n in mine.writes.items():
            report.writes[kind] = report.writes.get(kind, 0) + n
        report.errors.extend(mine.errors)
        report.duration_s = time.perf_counter() - start
        return report
