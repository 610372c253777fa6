"""Traffic probes between pods of a lab: ping, TCP and UDP checks, and a continuous UDP probe.

Everything runs inside the lab's namespaces (``ip netns exec``) and only ever targets addresses
given by the caller, which are lab addresses: nothing leaves the lab.

- `ping` / `ping_many`: ICMP with loss and RTT (the system `ping`), many pairs in parallel.
- `tcp_check` / `udp_check`: a one-shot echo through a tiny server started in the destination.
- `ContinuousProbe`: a UDP echo server in the destination and a sender in the source that sends a
  sequence-numbered datagram every `interval` (default 10 ms) and records which were answered;
  `stop()` returns the loss and every outage (a run of unanswered packets) with its length. Used
  by failover and restart tests.

The same file is the probe's own program (``python -m e2e.probe udp-echo|tcp-echo|udp-send|...``);
that part imports nothing heavy so it starts fast inside a namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from e2e.netlab import Netns, Process

_ROOT = str(Path(__file__).resolve().parent.parent)
_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_PING_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def _probe_argv(*args: str) -> list[str]:
    # `env` sets PYTHONPATH inside the netns exec so `-m e2e.probe` resolves from this checkout.
    return ["env", f"PYTHONPATH={_ROOT}", sys.executable, "-m", "e2e.probe", *args]


# ----------------------------------------------------------------------------------------------
# one-shot checks


@dataclass(frozen=True)
class PingResult:
    """The summary of one `ping` run (counts and RTTs parsed from its output)."""

    src: str
    dst: str
    sent: int
    received: int
    rtt_avg_ms: float | None
    rtt_max_ms: float | None

    @property
    def ok(self) -> bool:
        return self.received > 0

    @property
    def loss(self) -> float:
        return 1.0 if self.sent == 0 else 1.0 - self.received / self.sent


def ping(src: Netns, dst_ip: str, count: int = 3, interval: float = 0.2, wait: float = 1.0,
         src_ip: str | None = None) -> PingResult:
    """ICMP echo from namespace `src` to `dst_ip`; never raises on loss."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait)]
    if src_ip:
        argv += ["-I", src_ip]
    try:
        out = src.run([*argv, dst_ip], check=False, timeout=count * (interval + wait) + 10).stdout
    except subprocess.TimeoutExpired:  # a ping that cannot even finish (a starved VM) answered nothing
        return PingResult(src.name, dst_ip, count, 0, None, None)
    return parse_ping(src.name, dst_ip, out)


def parse_ping(src: str, dst: str, out: str) -> PingResult:
    m = _PING_SUMMARY.search(out)
    sent, received = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    r = _PING_RTT.search(out)
    return PingResult(src, dst, sent, received,
                      float(r.group(2)) if r else None, float(r.group(3)) if r else None)


def ping_many(pairs: Sequence[tuple[Netns, str]], count: int = 2, interval: float = 0.2,
              wait: float = 1.0, parallel: int = 8) -> list[PingResult]:
    """Ping many (source namespace, destination address) pairs, `parallel` at a time."""
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(lambda p: ping(p[0], p[1], count, interval, wait), pairs))


def start_echo_server(ns: Netns, ip: str, port: int, proto: str = "udp", once: bool = False,
                      name: str | None = None, timeout: float = 10.0, report_peer: bool = False) -> Process:
    """A UDP or TCP echo server in `ns`, returned once it is bound (it prints "ready").

    With `report_peer` (UDP) it answers with the source ``ip:port`` it saw instead of the payload.
    """
    flags = (["--once"] if once else []) + (["--report-peer"] if report_peer else [])
    argv = _probe_argv(f"{proto}-echo", "--bind", ip, "--port", str(port), *flags)
    server = ns.popen(argv, name=name or f"{proto}-echo-{port}")
    offset = server.stdout_path.stat().st_size if server.stdout_path.exists() else 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), open(server.stdout_path, "rb") as f:
            f.seek(offset)
            if b"ready" in f.read():
                return server
        if not server.alive():
            break
        time.sleep(0.01)
    server.stop(1.0)
    raise RuntimeError(f"echo server {ns.name} {ip}:{port} did not start\n{server.logs()}")


def ping_matrix(pods: Sequence[tuple[str, Netns, str]], count: int = 1, wait: float = 1.0,
                parallel: int = 16) -> dict[tuple[str, str], PingResult]:
    """Ping every ordered pair of (name, namespace, address) pods; keyed by (source, destination) name."""
    pairs = [(a, b) for a in pods for b in pods if a[0] != b[0]]
    results = ping_many([(a[1], b[2]) for a, b in pairs], count=count, wait=wait, parallel=parallel)
    return {(a[0], b[0]): r for (a, b), r in zip(pairs, results, strict=True)}


def _echo_once(src: Netns, dst: Netns, dst_ip: str, port: int, proto: str, timeout: float) -> float | None:
    server = start_echo_server(dst, dst_ip, port, proto, once=True)
    try:
        out = src.run(_probe_argv(f"{proto}-once", "--to", f"{dst_ip}:{port}", "--timeout", str(timeout)),
                      check=False, timeout=timeout + 10)
        if out.returncode != 0:
            return None
        return float(out.stdout.strip())
    finally:
        server.stop(1.0)


def observed_source(src: Netns, servers: Sequence[tuple[str, int]], bind_port: int,
                    timeout: float = 2.0) -> list[str | None]:
    """From ONE UDP socket bound to `bind_port` in `src`, ask each `report_peer` echo server which
    source ``ip:port`` it saw (None when no answer). Reveals the NAT's mapping behaviour."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',int(sys.argv[1])))\n"
        "s.settimeout(float(sys.argv[2]))\n"
        "for hp in sys.argv[3:]:\n"
        "    h,p=hp.rsplit(':',1); s.sendto(b'who',(h,int(p)))\n"
        "    try: print(s.recvfrom(256)[0].decode())\n"
        "    except OSError: print('-')\n"
    )
    out = src.run([sys.executable, "-c", code, str(bind_port), str(timeout),
                   *(f"{h}:{p}" for h, p in servers)], check=False, timeout=timeout * len(servers) + 10)
    lines = out.stdout.split()
    return [None if x == "-" else x for x in lines] + [None] * (len(servers) - len(lines))


def tcp_check(src: Netns, dst: Netns, dst_ip: str, port: int = 18080, timeout: float = 2.0) -> float | None:
    """Connect + echo over TCP from `src` to a server in `dst`; the round trip in ms, None on failure."""
    return _echo_once(src, dst, dst_ip, port, "tcp", timeout)


def udp_check(src: Netns, dst: Netns, dst_ip: str, port: int = 18081, timeout: float = 2.0) -> float | None:
    """One UDP datagram echoed back from a server in `dst`; the round trip in ms, None on failure."""
    return _echo_once(src, dst, dst_ip, port, "udp", timeout)


# ----------------------------------------------------------------------------------------------
# continuous probe


@dataclass(frozen=True)
class Outage:
    """A run of consecutive unanswered probe packets: when it began (s from probe start), how long it
    lasted, how many packets it lost."""

    start_s: float  # offset from the probe's start of the first unanswered packet
    length_s: float  # from the first unanswered packet to the next answered one
    lost: int


@dataclass(frozen=True)
class ProbeResult:
    """What a `ContinuousProbe` saw: packets sent and answered (warm-up excluded), every outage, RTTs."""

    sent: int
    received: int
    interval_s: float
    outages: tuple[Outage, ...] = field(default_factory=tuple)
    rtt_avg_ms: float | None = None
    rtt_max_ms: float | None = None
    warmup: int = 0  # packets sent before the first answer, not counted
    start_monotonic: float | None = None  # the sender's CLOCK_MONOTONIC at sent_at 0 (one clock for all netns)

    def outage_from(self, t_monotonic: float, horizon: float = 30.0) -> float:
        """Seconds from `t_monotonic` (a failure, on this host's monotonic clock) to the end of the last outage
        that begins in the `horizon` after it (an outage a packet in flight at that moment started counts
        too): how long the traffic suffered from the failure, measured by the packets themselves."""
        assert self.start_monotonic is not None, "the probe recorded no start time"
        t = t_monotonic - self.start_monotonic
        ends = [o.start_s + o.length_s for o in self.outages
                if t - self.interval_s <= o.start_s + o.length_s and o.start_s <= t + horizon]
        return max(ends, default=t) - t

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def max_outage_s(self) -> float:
        return max((o.length_s for o in self.outages), default=0.0)


class ContinuousProbe:
    """UDP every `interval` seconds from `src` to an echo server at `dst_ip:port` in `dst`.

    Use as a context manager or call `stop()`; `stop()` returns a `ProbeResult`. Packets answered
    up to `grace` seconds after the stop still count (they were in flight).
    """

    def __init__(self, src: Netns, dst: Netns, dst_ip: str, port: int = 18090,
                 interval: float = 0.01, grace: float = 0.5, name: str | None = None) -> None:
        self.interval = interval
        tag = name or f"probe-{port}"
        self.out_path = src.run_dir / f"{tag}.json"
        self.ready_path = src.run_dir / f"{tag}.ready"
        for p in (self.out_path, self.ready_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.server: Process = start_echo_server(dst, dst_ip, port, "udp", name=f"{tag}-echo")
        self.sender: Process = src.popen(
            _probe_argv("udp-send", "--to", f"{dst_ip}:{port}", "--interval", str(interval),
                        "--grace", str(grace), "--out", str(self.out_path), "--ready", str(self.ready_path)),
            name=f"{tag}-send")
        self.result: ProbeResult | None = None

    def wait_first_reply(self, timeout: float = 10.0) -> bool:
        """Wait until one echo came back (the path works); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_path.exists():
                return True
            if not self.sender.alive():
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 10.0) -> ProbeResult:
        if self.result is not None:
            return self.result
        self.sender.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.sender.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.sender.stop(1.0)
        self.server.stop(1.0)
        try:
            data = json.loads(self.out_path.read_text())
        except (OSError, ValueError) as e:
            raise RuntimeError(f"probe wrote no result: {e}\n{self.sender.logs()}") from e
        self.result = summarise(data["sent_at"], data["answered"], data["interval"], data["rtts_ms"],
                                data.get("start_monotonic"))
        return self.result

    def __enter__(self) -> ContinuousProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.result is None:
            with contextlib.suppress(Exception):
                self.stop()


def summarise(sent_at: Sequence[float], answered: Sequence[int], interval: float,
              rtts_ms: Sequence[float], start_monotonic: float | None = None) -> ProbeResult:
    """Outages from per-sequence send times (seconds from start) and the answered sequence numbers.

    Packets sent before the first answer are warm-up (the echo server was still starting) and are
    left out, unless nothing was ever answered: then everything counts as lost.
    """
    ok = set(answered)
    n = len(sent_at)
    first_ok = min((s for s in ok if s < n), default=0)
    warmup = first_ok
    outages: list[Outage] = []
    seq = first_ok
    while seq < n:
        if seq in ok:
            seq += 1
            continue
        first = seq
        while seq < n and seq not in ok:
            seq += 1
        end = sent_at[seq] if seq < n else sent_at[-1] + interval
        outages.append(Outage(sent_at[first], end - sent_at[first], seq - first))
    return ProbeResult(
        sent=n - warmup, received=len(ok & set(range(n))), interval_s=interval, outages=tuple(outages),
        warmup=warmup, start_monotonic=start_monotonic,
        rtt_avg_ms=sum(rtts_ms) / len(rtts_ms) if rtts_ms else None,
        rtt_max_ms=max(rtts_ms) if rtts_ms else None,
    )


# ----------------------------------------------------------------------------------------------
# the probe program (runs inside a namespace)

_HDR = struct.Struct("!QQ")  # sequence number, send time in ns (monotonic, sender's clock)


def _hostport(value: str) -> tuple[str, int]:
    host, port = value.rsplit(":", 1)
    return host, int(port)


def _udp_echo(args: argparse.Namespace) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind, args.port))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048)
        # --report-peer answers with the source address it saw (a poor man's STUN, for NAT tests).
        s.sendto(f"{addr[0]}:{addr[1]}".encode() if args.report_peer else data, addr)
        if args.once:
            return 0


def _tcp_echo(args: argparse.Namespace) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((args.bind, args.port))
    s.listen(16)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        with c:
            c.settimeout(5)
            with contextlib.suppress(OSError):
                c.sendall(c.recv(2048))
        if args.once:
            return 0


def _once(args: argparse.Namespace, proto: str) -> int:
    """Echo one message; print the RTT in ms. Retries for `retry_for` s if asked."""
    dst = _hostport(args.to)
    deadline = time.monotonic() + args.retry_for
    payload = b"raven-probe"
    while True:
        t0 = time.monotonic()
        try:
            if proto == "tcp":
                with socket.create_connection(dst, timeout=args.timeout) as c:
                    c.sendall(payload)
                    got = c.recv(2048)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.settimeout(args.timeout)
                    u.sendto(payload, dst)
                    got, _ = u.recvfrom(2048)
            if got == payload:
                print(f"{(time.monotonic() - t0) * 1000:.3f}")
                return 0
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return 1
        time.sleep(0.1)


def _udp_send(args: argparse.Namespace) -> int:
    dst = _hostport(args.to)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    stop_at: list[float] = []
    signal.signal(signal.SIGTERM, lambda *_: stop_at.append(time.monotonic()))
    signal.signal(signal.SIGINT, lambda *_: stop_at.append(time.monotonic()))
    start = time.monotonic_ns()
    interval_ns = int(args.interval * 1e9)
    sent_at: list[float] = []
    answered: list[int] = []
    rtts: list[float] = []
    ready = False
    seq = 0
    next_send = start
    while True:
        now = time.monotonic_ns()
        sending = not stop_at
        if not sending and time.monotonic() - stop_at[0] >= args.grace:
            break
        if sending and now >= next_send:
            with contextlib.suppress(OSError):  # "network unreachable" is an unanswered packet
                s.sendto(_HDR.pack(seq, now) + b"x" * 16, dst)
            sent_at.append((now - start) / 1e9)
            seq += 1
            # Catch up without bursts if the process was descheduled.
            next_send = max(next_send + interval_ns, now - interval_ns)
        wait = max(0.0, (next_send - time.monotonic_ns()) / 1e9) if sending else 0.02
        r, _, _ = select.select([s], [], [], wait)
        if not r:
            continue
        while True:
            try:
                data = s.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP errors surface here (ECONNREFUSED)
                break
            if len(data) < _HDR.size:
                continue
            rseq, t_sent = _HDR.unpack_from(data)
            answered.append(rseq)
            rtts.append((time.monotonic_ns() - t_sent) / 1e6)
            if not ready:
                ready = True
                Path(args.ready).write_text("1")
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps({"interval": args.interval, "sent_at": sent_at, "start_monotonic": start / 1e9,
                               "answered": sorted(set(answered)), "rtts_ms": rtts}))
    os.replace(tmp, args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m e2e.probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("udp-echo", "tcp-echo"):
        p = sub.add_parser(name)
        p.add_argument("--bind", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--once", action="store_true")
        p.add_argument("--report-peer", action="store_true")
    for name in ("udp-once", "tcp-once"):
        p = sub.add_parser(name)
        p.add_argument("--to", required=True)
        p.add_argument("--timeout", type=float, default=2.0)
        p.add_argument("--retry-for", type=float, default=0.0)
    p = sub.add_parser("udp-send")
    p.add_argument("--to", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--grace", type=float, default=0.5)
    p.add_argument("--out", required=True)
    p.add_argument("--ready", required=True)
    args = ap.parse_args(argv)
    handlers: dict[str, Any] = {
        "udp-echo": _udp_echo, "tcp-echo": _tcp_echo, "udp-send": _udp_send,
        "udp-once": lambda a: _once(a, "udp"), "tcp-once": lambda a: _once(a, "tcp"),
    }
    return int(handlers[args.cmd](args))


if __name__ == "__main__":
    sys.exit(main())
