"""Fixtures for the data-plane tests: real network namespaces named `rdp-*`, removed after each test."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.netlab import Lab, Netns
from raven.dataplane.state import UNREACHABLE, Address, FdbEntry, Neighbor, NodeNetwork, Route, Rule, VxlanLink

PREFIX = os.environ.get("RAVEN_DATAPLANE_PREFIX", "rdp")  # another checkout runs beside with its own


def root_lab(prefix: str) -> Iterator[Lab]:
    """A lab with `prefix` for one test (skipped without root), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with Lab(prefix) as the_lab:
        yield the_lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from root_lab(PREFIX)


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


def read_back(ns: Netns) -> NodeNetwork:
    """The Raven-shaped objects in `ns`, parsed from `ip -j`, `bridge -j` and iptables-save (not our reader)."""
    links = set()
    addresses = set()
    for link in ip_json(ns, "-d", "link", "show"):
        if not link["ifname"].startswith("raven"):
            continue
        data = link["linkinfo"]["info_data"]
        links.add(
            VxlanLink(
                link["ifname"], data["id"], data["port"], link["mtu"], link["address"], data["local"], data.get("link"),
                data.get("udp_csum", True),
            )
        )
        assert "UP" in link["flags"]
    for entry in ip_json(ns, "-4", "addr", "show"):
        if entry["ifname"].startswith("raven"):
            for a in entry["addr_info"]:
                scope = {"global": 0, "site": 200, "link": 253, "host": 254}.get(str(a.get("scope")), -1)
                addresses.add(Address(entry["ifname"], f"{a['local']}/{a['prefixlen']}", scope))
    routes = set()
    for table in (9027, 9028):
        for r in ip_json(ns, "-4", "-d", "route", "show", "table", str(table), "proto", "250"):
            mtu = next((m["mtu"] for m in r.get("metrics", []) if "mtu" in m), None)
            dst = "0.0.0.0/0" if r["dst"] == "default" else r["dst"] if "/" in r["dst"] else r["dst"] + "/32"
            # An unreachable route (the transit table's): no device, read independently by its type.
            dev = UNREACHABLE if r.get("type") == "unreachable" else r["dev"]
            routes.add(Route(dst, table, dev, r.get("gateway"), mtu, r.get("prefsrc")))
    rules = set()
    for rule in ip_json(ns, "-4", "-d", "rule", "show"):
        if rule.get("protocol") == "250" or rule.get("protocol") == 250:
            rules.add(Rule(rule["priority"], int(rule["table"]), rule.get("iif")))
    neighbors = set()
    fdb = set()
    for dev in sorted(link.name for link in links):
        for n in ip_json(ns, "-4", "neigh", "show", "dev", dev, "nud", "permanent"):
            neighbors.add(Neighbor(dev, n["dst"], n["lladdr"]))
        for f in bridge_json(ns, "fdb", "show", "dev", dev):
            if "permanent" in f.get("state", "") and "dst" in f:
                fdb.add(FdbEntry(dev, f["mac"], f["dst"]))
    save = ns.run(["iptables-save", "-t", "mangle"]).stdout
    clamp = set()
    jumped = "-A FORWARD -j RAVEN-MSS" in save
    for line in save.splitlines():
        if line.startswith("-A RAVEN-MSS -o ") and "--clamp-mss-to-pmtu" in line and jumped:
            clamp.add(line.split()[3])
    return NodeNetwork(
        links=frozenset(links),
        addresses=frozenset(addresses),
        routes=frozenset(routes),
        rules=frozenset(rules),
        neighbors=frozenset(neighbors),
        fdb=frozenset(fdb),
        mss_clamp_ifnames=frozenset(clamp),
    )
