"""The ingress filter on a real kernel (a netns, real iptables): written before the links, converged = zero
writes, changed in one transaction, removed with the links and by `--cleanup`, foreign rules untouched; and
where iptables cannot run, no overlay at all (fail closed)."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from e2e.netlab import Lab, Netns
from raven.dataplane.ingress import CHAINS, IngressFilterApplier, IngressGuard, IngressObserved, render
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.state import Address, IngressFilter, IngressPeer, NodeNetwork, Route, Rule, VxlanLink
from tests.dataplane.conftest import ip_json, kernel_snapshot

pytestmark = pytest.mark.root

FILTER = IngressFilter(
    tunnel_port=4473, pool_port=4472, tunnel_ifname="raven1", pool_ifname="raven0", ipsec_ifname="ipsec0",
    mark_mask=0x0FFF0000,
    tunnel=(IngressPeer("241.0.0.2", 0x10000, ("10.2.0.0/24", "241.0.0.2/32")),
            IngressPeer("241.0.0.3", 0x20000, ("10.3.0.0/24", "241.0.0.3/32"))),
)  # fmt: skip
STATE = NodeNetwork(
    links=frozenset({VxlanLink("raven1", 201, 4473, 1350, "0e:72:f1:00:00:01", "241.0.0.1", None)}),
    addresses=frozenset({Address("raven1", "241.0.0.1/32")}),
    routes=frozenset({Route("10.2.0.0/24", 9027, "raven1", "241.0.0.2", 1350)}),
    rules=frozenset({Rule(9027, 9027)}),
    mss_clamp_ifnames=frozenset({"raven1"}),
    ingress=FILTER,
)
FOREIGN = [
    ["-t", "mangle", "-N", "KUBE-X"],
    ["-t", "mangle", "-A", "KUBE-X", "-j", "RETURN"],
    ["-t", "mangle", "-A", "INPUT", "-p", "udp", "--dport", "53", "-j", "KUBE-X"],
    ["-t", "mangle", "-A", "PREROUTING", "-i", "eth9", "-j", "MARK", "--set-mark", "0x4000"],
]


def _foreign(ns: Netns) -> None:
    for args in FOREIGN:
        ns.run(["iptables", "-w", *args])


def _owned(ns: Netns) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in ns.run(["iptables-save", "-t", "mangle"]).stdout.splitlines():
        words = line.split(" ", 2)
        if words[0] == "-A" and words[1] in CHAINS:
            out.setdefault(words[1], []).append(words[2])
    return out


def _links(ns: Netns) -> list[str]:
    return sorted(x["ifname"] for x in ip_json(ns, "link", "show") if x["ifname"].startswith("raven"))


async def test_filter_is_reconciled_like_every_kernel_object_and_leaves_foreign_rules(lab: Lab) -> None:
    ns = lab.netns("ing")
    ns.ip("link", "set", "lo", "up")
    _foreign(ns)
    before = kernel_snapshot(ns)
    kernel = KernelApplier(netns=ns.name)
    guard = IngressGuard(kernel, IngressFilterApplier(ns.name))
    try:
        first = await guard.reconcile(STATE)
        assert first.ok, first.errors
        assert _links(ns) == ["raven1"]
        assert _owned(ns) == {c: list(r) for c, r in render(FILTER).items() if r}
        save = ns.run(["iptables-save", "-t", "mangle"]).stdout
        assert save.count("-A INPUT -j RAVEN-INGRESS") == 1 and save.count("-A PREROUTING -j RAVEN-OVERLAY") == 1

        converged = await guard.reconcile(STATE)
        assert converged.ok and converged.total_writes == 0, converged.writes

        smaller = dataclasses.replace(STATE, ingress=dataclasses.replace(FILTER, tunnel=FILTER.tunnel[:1]))
        changed = await guard.reconcile(smaller)
        assert changed.ok and changed.writes["iptables"] == 1 and changed.total_writes == 1
        assert not any("241.0.0.3" in r for rules in _owned(ns).values() for r in rules)

        gone = await guard.reconcile(NodeNetwork())
        assert gone.ok
    finally:
        await kernel.close()
    assert kernel_snapshot(ns) == before  # foreign rules, chains and jumps exactly as they were


async def test_without_iptables_the_overlay_is_not_built(lab: Lab) -> None:
    ns = lab.netns("ingx")
    kernel = KernelApplier(netns=ns.name)
    guard = IngressGuard(kernel, IngressFilterApplier(ns.name, iptables="iptables-not-installed"))
    try:
        report = await guard.reconcile(STATE)
    finally:
        await kernel.close()
    assert _links(ns) == []  # no VXLAN socket that would take anyone's frames
    assert {(e.kind, e.op) for e in report.errors} >= {("iptables", "read"), ("iptables", "guard")}
    assert any("overlay withheld" in e.reason for e in report.errors)


async def test_cleanup_command_removes_the_filter_and_nothing_else(lab: Lab) -> None:
    ns = lab.netns("ingc")
    ns.ip("link", "set", "lo", "up")
    _foreign(ns)
    before = kernel_snapshot(ns)
    kernel = KernelApplier(netns=ns.name)
    try:
        assert (await IngressGuard(kernel, IngressFilterApplier(ns.name)).reconcile(STATE)).ok
    finally:
        await kernel.close()
    assert _owned(ns)
    result = ns.run(
        [
            sys.executable,
            "-m",
            "raven.cli",
            "--mode=agent",
            "--cleanup",
            "--vpn-driver",
            "ipsec",
            "--vici-socket",
            str(ns.run_dir / "no-charon.vici"),
        ],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert kernel_snapshot(ns) == before


async def test_a_failed_rewrite_keeps_the_old_filter_and_the_overlay_but_no_filter_means_no_overlay(lab: Lab) -> None:
    # iptables refuses this rule (interface name longer than IFNAMSIZ): a real failed iptables-restore.
    bad = dataclasses.replace(STATE, ingress=dataclasses.replace(FILTER, ipsec_ifname="x" * 20))
    ns = lab.netns("ings")
    kernel = KernelApplier(netns=ns.name)
    guard = IngressGuard(kernel, IngressFilterApplier(ns.name))
    try:
        assert (await guard.reconcile(STATE)).ok
        good = _owned(ns)
        report = await guard.reconcile(bad)
        assert [(e.kind, e.op) for e in report.errors] == [("iptables", "write")], report.errors
        assert _owned(ns) == good and _links(ns) == ["raven1"]  # atomic: the old filter stands, closed

        fresh = lab.netns("ingf")
        kernel2 = KernelApplier(netns=fresh.name)
        try:
            report = await IngressGuard(kernel2, IngressFilterApplier(fresh.name)).reconcile(bad)
        finally:
            await kernel2.close()
        assert {(e.kind, e.op) for e in report.errors} == {("iptables", "write"), ("iptables", "guard")}
        assert _links(fresh) == [] and _owned(fresh) == {}
    finally:
        await kernel.close()


class _FailsOnce(IngressFilterApplier):
    """The real applier whose next read fails once, as an iptables-save killed by the SIGTERM of the agent's
    process group does (rc -15, nothing on stderr)."""

    fail_next = False

    def read(self) -> IngressObserved:
        if self.fail_next:
            self.fail_next = False
            raise OSError("iptables-save failed: ")
        return super().read()


async def test_one_failed_read_of_the_filter_does_not_take_the_node_out_of_the_overlay(lab: Lab) -> None:
    ns = lab.netns("ingr")
    kernel = KernelApplier(netns=ns.name)
    applier = _FailsOnce(ns.name)
    guard = IngressGuard(kernel, applier)
    try:
        assert (await guard.reconcile(STATE)).ok
        applier.fail_next = True
        report = await guard.reconcile(STATE)
        assert not applier.fail_next  # the failing read happened
        assert report.ok, report.errors
        assert _links(ns) == ["raven1"] and _owned(ns)
    finally:
        await kernel.close()
