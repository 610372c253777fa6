"""The ICMP pinger against real kernels in network namespaces: replies, a cut (iptables drop), both socket kinds."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.netlab import Lab, lab_session
from raven.pathhealth.pinger import checksum, echo_request, parse_reply

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


def test_echo_request_checksum_verifies() -> None:
    pkt = echo_request(0x1234, 7)
    assert checksum(pkt) == 0
    reply = bytes([0, 0]) + pkt[2:]
    assert parse_reply(reply, raw=False) == (0x1234, 7)
    assert parse_reply(bytes([0x45]) + bytes(19) + reply, raw=True) == (0x1234, 7)
    assert parse_reply(pkt, raw=False) is None  # a request is not a reply


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    yield from lab_session(os.environ.get("RAVEN_PATHHEALTH_PREFIX", "rvph"))  # another checkout: its own


def _pair(lab: Lab, n: int) -> list[str]:
    g, p = lab.netns_many(["g", "p"])
    lab.veth(g, "g0", p, "p0")
    g.add_addr("g0", "10.99.0.1/16")
    addrs = [f"10.99.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
    p.ip_batch([f"addr add {a}/16 dev p0" for a in addrs])
    return addrs


def run_pinger(lab: Lab, dsts: list[str], seconds: float, interval: float = 0.05, timeout: float = 0.2,
               ping_group: str | None = None) -> dict[str, Any]:
    g = lab["g"]
    if ping_group is not None:
        g.sysctl(**{"net.ipv4.ping_group_range": ping_group})
    out = g.run([sys.executable, "-m", "raven.pathhealth.probe_run", "10.99.0.1", ",".join(dsts), str(seconds),
                 str(interval), str(timeout)], timeout=seconds + 30)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("ping_group", ["1 0", "0 2147483647"], ids=["raw", "datagram"])
def test_replies_then_a_cut_target_goes_down_the_others_stay_up(lab: Lab, ping_group: str) -> None:
    addrs = _pair(lab, 3)
    # Drop echo requests to the second address from the start: it must go down, never up.
    lab["p"].run(["iptables", "-A", "INPUT", "-d", addrs[1], "-p", "icmp", "-j", "DROP"])
    res = run_pinger(lab, addrs, 1.5, ping_group=ping_group)
    t = res["targets"]
    assert t[addrs[0]]["state"] == "up" and t[addrs[2]]["state"] == "up", res
    assert t[addrs[1]]["state"] == "down" and t[addrs[1]]["replies"] == 0, res
    assert 0 < t[addrs[0]]["rtt"] < 0.05
    assert res["stats"]["stray"] == 0
    assert res["raw_socket"] == [ping_group == "1 0"]

