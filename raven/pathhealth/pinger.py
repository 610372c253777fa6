"""The probe edge: an asyncio ICMP echo pinger. The target's kernel answers, so no agent is in the path.

One socket per source address (a gateway probes all its peers from its inner address, a member its gateway from
its raven0 address), all targets of a socket probed in one tick every `interval`, replies read by a reader
callback on the event loop (no thread, no per-probe task). Each probe is resolved exactly once, in the order it
was sent: by its reply (the RTT) or by `timeout` (lost); outcomes go to `on_outcome(key, rtt | None, now)`.

Socket kind: the unprivileged ICMP datagram socket (`SOCK_DGRAM, IPPROTO_ICMP`: the kernel sets the echo id,
computes the checksum and delivers only this socket's replies) when `net.ipv4.ping_group_range` admits our
group; else a raw socket (root / CAP_NET_RAW), which sees every ICMP packet and filters by id and source.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from raven.log import kv

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

ICMP_ECHO_REQUEST: Final = 8
ICMP_ECHO_REPLY: Final = 0
_PAYLOAD: Final = b"raven-probe\0"  # 12 bytes: the whole echo is 20 bytes of ICMP
_ids = itertools.count((os.getpid() * 7919) & 0xFFFF)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(header + _PAYLOAD)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, csum, ident, seq) + _PAYLOAD


def parse_reply(data: bytes, raw: bool) -> tuple[int, int] | None:
    """(id, seq) of an echo reply, None for anything else. A raw socket's data starts with the IP header."""
    if raw:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8 or data[0] != ICMP_ECHO_REPLY:
        return None
    _, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
    return ident, seq


def open_socket(source: str) -> tuple[socket.socket, bool]:
    """A non-blocking ICMP socket bound to `source`: (socket, is_raw). Raises OSError when neither kind opens or
    `source` is not (yet) an address of this host."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        raw = False
    except PermissionError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        raw = True
    try:
        sock.setblocking(False)
        sock.bind((source, 0))
    except OSError:
        sock.close()
        raise
    return sock, raw


@dataclass
class _Target(Generic[K]):
    key: K
    address: str
    inflight: deque[tuple[int, float]] = field(default_factory=deque)  # (seq, sent at), oldest first
    answered: dict[int, float] = field(default_factory=dict)  # seq -> rtt, for replies not yet at the head


@dataclass
class PingerStats:
    sent: int = 0
    replies: int = 0
    lost: int = 0
    send_errors: int = 0
    stray: int = 0  # replies no in-flight probe matched (late, duplicated, someone else's)


class _Source(Generic[K]):
    """One bound ICMP socket and the targets probed from it."""

    def __init__(self, pinger: Pinger[K], source: str) -> None:
        self.pinger = pinger
        self.source = source
        self.sock: socket.socket | None = None
        self.raw = False
        self.ident = next(_ids) & 0xFFFF
        self.seq = itertools.count(1)
        self.targets: dict[str, _Target[K]] = {}  # by address
        self.by_seq: dict[int, _Target[K]] = {}
        self._open_failed: str | None = None

    def ensure_open(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self.sock is not None:
            return True
        try:
            self.sock, self.raw = open_socket(self.source)
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if reason != self._open_failed:  # once per distinct reason, not per tick
                log.info("probe socket not open yet", extra=kv(source=self.source, error=reason))
                self._open_failed = reason
            return False
        self._open_failed = None
        if not self.raw:
            # The kernel rewrites the echo id of a ping socket to its local port: replies carry that id.
            self.ident = self.sock.getsockname()[1] & 0xFFFF
        loop.add_reader(self.sock.fileno(), self.readable)
        return True

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.sock is not None:
            loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def send_all(self, now: float) -> None:
        sock = self.sock
        if sock is None:
            return
        stats = self.pinger.stats
        for t in self.targets.values():
            seq = next(self.seq) & 0xFFFF
            stale = self.by_seq.pop(seq, None)  # wrapped around onto a probe still in flight: cannot happen in
            if stale is not None:                # practice (65536 probes within one timeout); drop the old one
                stale.answered.pop(seq, None)
            try:
                sock.sendto(echo_request(self.ident, seq), (t.address, 0))
            except OSError as exc:
                # No route (charon gone, raven1 not up yet): the probe counts as lost at its timeout, like a drop.
                stats.send_errors += 1
                if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.ENOBUFS,
                                     errno.EPERM, errno.EACCES, errno.EADDRNOTAVAIL):
                    log.warning("probe send failed", extra=kv(source=self.source, target=t.address, error=str(exc)))
            t.inflight.append((seq, now))
            self.by_seq[seq] = t
            stats.sent += 1

    def readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        now = self.pinger.clock()
        for _ in range(256):  # bounded per wake-up: the loop keeps turning under a reply flood
            try:
                data, (addr, _) = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # an ICMP error queued on the socket (e.g. unreachable): the probe times out
            parsed = parse_reply(data, self.raw)
            if parsed is None:
                continue
            ident, seq = parsed
            if ident != self.ident:
                continue  # a raw socket sees every echo reply on the host
            t = self.by_seq.get(seq)
            if t is None or t.address != addr:
                self.pinger.stats.stray += 1
                continue
            del self.by_seq[seq]
            sent_at = next((s for q, s in t.inflight if q == seq), None)
            if sent_at is None:
                continue
            t.answered[seq] = now - sent_at
            self.pinger.resolve(t, now)

    def expire(self, now: float) -> None:
        for t in self.targets.values():
            self.pinger.resolve(t, now)


class Pinger(Generic[K]):
    """Probes every target every `interval` seconds; reports each probe's outcome once, in order."""

    def __init__(self, interval: float, timeout: float, on_outcome: Callable[[K, float | None, float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        self.interval = interval
        self.timeout = timeout
        self.on_outcome = on_outcome
        self.clock = clock
        self.stats = PingerStats()
        self._sources: dict[str, _Source[K]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def set_targets(self, targets: Mapping[K, tuple[str, str]]) -> None:
        """The targets from now on: key -> (source address, target address). A target whose key and addresses
        stay keeps its in-flight probes; one that goes is dropped without outcomes."""
        wanted: dict[str, dict[str, K]] = {}
        for key, (src, dst) in targets.items():
            wanted.setdefault(src, {})[dst] = key
        for src in list(self._sources):
            if src not in wanted:
                s = self._sources.pop(src)
                if self._loop is not None:
                    s.close(self._loop)
        for src, dsts in wanted.items():
            s = self._sources.get(src) or self._sources.setdefault(src, _Source(self, src))
            for addr in list(s.targets):
                if addr not in dsts or s.targets[addr].key != dsts[addr]:
                    gone = s.targets.pop(addr)
                    for seq, _ in gone.inflight:
                        s.by_seq.pop(seq, None)
            for addr, key in dsts.items():
                if addr not in s.targets:
                    s.targets[addr] = _Target(key, addr)

    def raw_sockets(self) -> list[bool]:
        """Per open socket whether it is raw (False: an ICMP datagram socket)."""
        return [s.raw for s in self._sources.values() if s.sock is not None]

    def resolve(self, t: _Target[K], now: float) -> None:
        while t.inflight:
            seq, sent_at = t.inflight[0]
            rtt = t.answered.pop(seq, None)
            if rtt is None and now - sent_at < self.timeout:
                return
            t.inflight.popleft()
            if rtt is None:
                self.stats.lost += 1
                src = next((s for s in self._sources.values() if s.targets.get(t.address) is t), None)
                if src is not None:
                    src.by_seq.pop(seq, None)
            else:
                self.stats.replies += 1
            self.on_outcome(t.key, rtt, now)

    def tick(self, now: float) -> None:
        """One round: resolve timed-out probes, then send the next probe to every target."""
        loop = self._loop or asyncio.get_running_loop()
        for s in self._sources.values():
            s.expire(now)
            if s.ensure_open(loop):
                s.send_all(now)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        next_at = self.clock()
        try:
            while True:
                now = self.clock()
                try:
                    self.tick(now)
                except Exception:  # a bug here must not end probing for good: log, keep the rhythm
                    log.exception("probe round failed")
                next_at += self.interval
                if next_at < now:  # fell behind (a stalled loop): no burst of catch-up rounds
                    next_at = now + self.interval
                await asyncio.sleep(next_at - now)
        finally:
            for s in self._sources.values():
                with contextlib.suppress(Exception):
                    s.close(self._loop)
