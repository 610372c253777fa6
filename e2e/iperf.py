"""Bulk TCP between lab namespaces with iperf3 (Debian package), and the counters that tell what it cost.

`iperf3_run` starts a one-shot server in the destination namespace and a client in the source, and returns
the client's JSON summary (bytes, bits per second, retransmits). `snmp` reads /proc/net/snmp of a namespace
(`IpFragCreates`, `IpReasmReqds`, `UdpRcvbufErrors`, ...); `cpu_seconds` reads a process's utime+stime.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from e2e.netlab import LabError, Netns

CLK_TCK = os.sysconf("SC_CLK_TCK")
# What "no fragments" looks at: fragments created when sending, reassemblies asked for when receiving, and
# packets dropped because they were too big with DF set (a black hole if no ICMP came back).
FRAGMENT_COUNTERS = ("IpFragCreates", "IpReasmReqds", "IpFragFails")


@dataclass(frozen=True)
class Transfer:
    bytes: int
    bits_per_second: float
    retransmits: int
    raw: dict[str, Any]


def iperf3_path() -> str:
    path = shutil.which("iperf3")
    if path is None:
        raise LabError("iperf3 is not installed (Debian package iperf3; the Makefile's APT_TEST)")
    return path


def iperf3_run(src: Netns, dst: Netns, dst_ip: str, port: int, seconds: float = 3.0,
               name: str = "iperf3", extra: tuple[str, ...] = ()) -> Transfer:
    """One TCP transfer of `seconds` from `src` to `dst_ip` (in `dst`); raises LabError when it fails."""
    iperf3 = iperf3_path()
    log = dst.run_dir / f"{name}-server.out.log"
    offset = log.stat().st_size if log.exists() else 0  # the log is appended to by every run of that name
    server = dst.popen([iperf3, "-s", "-1", "--forceflush", "-B", dst_ip, "-p", str(port)], name=f"{name}-server")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Listening: a server announces itself on stdout ("Server listening on PORT").
            with open(server.stdout_path, "rb") as f:
                f.seek(offset)
                if b"listening" in f.read() or not server.alive():
                    break
            time.sleep(0.02)
        out = src.run([iperf3, "-c", dst_ip, "-p", str(port), "-t", str(seconds), "-J", *extra],
                      check=False, timeout=seconds + 30)
        try:
            doc: dict[str, Any] = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise LabError(f"iperf3 {src.name} -> {dst_ip}: rc={out.returncode} {out.stderr[-500:]}") from None
        if out.returncode != 0 or "error" in doc:
            raise LabError(f"iperf3 {src.name} -> {dst_ip}: {doc.get('error')} {out.stderr[-500:]}")
        sent = doc["end"]["sum_sent"]
        received = doc["end"]["sum_received"]
        return Transfer(bytes=int(received["bytes"]), bits_per_second=float(received["bits_per_second"]),
                        retransmits=int(sent.get("retransmits", 0)), raw=doc)
    finally:
        server.stop(2.0)


def snmp(ns: Netns) -> dict[str, int]:
    """/proc/net/snmp of `ns`, as {"IpFragCreates": n, "UdpRcvbufErrors": n, ...}."""
    text = ns.run(["cat", "/proc/net/snmp"]).stdout
    out: dict[str, int] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, keys = names.partition(":")
        for k, v in zip(keys.split(), values.partition(":")[2].split(), strict=False):
            out[f"{proto}{k}"] = int(v)
    return out


def delta(before: dict[str, int], after: dict[str, int], keys: tuple[str, ...]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys}


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # Fields after the command: state is index 0, utime 11, stime 12 (stat(5) numbers 14 and 15).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK
