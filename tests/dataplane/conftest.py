"""Fixtures for the data-plane tests: real network namespaces named `rdp-*`, removed after each test."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.netlab import Lab, Netns

PREFIX = "rdp"


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with Lab(PREFIX) as the_lab:
        yield the_lab


def ip_json(ns: Netns, *args: str) -> Any:
    """`ip -j ...` inside `ns`, parsed: the independent view the tests compare against."""
    proc = ns.run(["ip", "-j", *args], check=False)
    if proc.returncode != 0:
        if "FIB table does not exist" in proc.stderr:
            return []
        raise AssertionError(f"ip {' '.join(args)} failed: {proc.stderr}")
    out = proc.stdout.strip()
    return json.loads(out) if out else []


def bridge_json(ns: Netns, *args: str) -> Any:
    out = ns.run(["bridge", "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def kernel_snapshot(ns: Netns) -> dict[str, Any]:
    """Everything a Raven apply could touch, as `ip`/`iptables` print it (for before/after comparisons)."""
    routes = ip_json(ns, "-4", "route", "show", "table", "all")
    links = [(x["ifname"], x.get("link_type")) for x in ip_json(ns, "link", "show")]
    rules = ip_json(ns, "-4", "rule", "show")
    save = ns.run(["iptables-save", "-t", "mangle"]).stdout
    ipt = [line for line in save.splitlines() if not line.startswith("#")]
    return {"routes": routes, "links": links, "rules": rules, "iptables": ipt}
