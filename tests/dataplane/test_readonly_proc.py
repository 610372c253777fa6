"""The agent inside a non-privileged container: /proc/sys is mounted read-only there, and the kernel
applier must still converge (per-device sysctls go over rtnetlink, which needs only CAP_NET_ADMIN)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from e2e.netlab import Lab, Netns

pytestmark = pytest.mark.root

# Runs inside the node namespace, in a private mount namespace where /proc/sys is read-only.
APPLY = textwrap.dedent('''
    import asyncio, json
    from raven.dataplane.kernel import KernelApplier
    from raven.dataplane.state import Address, NodeNetwork, Route, Rule, VxlanLink

    STATE = NodeNetwork(
        links=frozenset({VxlanLink("raven1", 201, 4473, 1350, "0e:72:f1:00:00:01", "241.0.0.1", None)}),
        addresses=frozenset({Address("raven1", "241.0.0.1/32")}),
        routes=frozenset({Route("10.2.0.0/24", 9027, "raven1", "241.0.0.2", 1350)}),
        rules=frozenset({Rule(9027, 9027)}),
    )

    async def main():
        kernel = KernelApplier()
        try:
            first = await kernel.reconcile(STATE)
            second = await kernel.reconcile(STATE)
        finally:
            await kernel.close()
        print(json.dumps({"errors": [e.__dict__ for e in first.errors], "sysctl_writes": first.writes["sysctl"],
                          "second_writes": second.total_writes}))

    asyncio.run(main())
''')


def apply_with_readonly_proc_sys(ns: Netns) -> dict[str, object]:
    script = (
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
        "! sh -c 'echo 1 > /proc/sys/net/ipv4/conf/lo/rp_filter' 2>/dev/null && "  # really read-only
        f"exec {sys.executable} -"
    )
    result = ns.run(["unshare", "-m", "sh", "-c", script], input=APPLY, check=False)
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_converges_with_a_read_only_proc_sys(lab: Lab) -> None:
    ns = lab.netns("ro")
    ns.ip("link", "set", "lo", "up")
    ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])  # as on any Kubernetes node
    out = apply_with_readonly_proc_sys(ns)
    assert out["errors"] == []
    assert out["sysctl_writes"] == 1 and out["second_writes"] == 0
    assert ns.run(["cat", "/proc/sys/net/ipv4/conf/raven1/rp_filter"]).stdout.strip() == "2"


def test_forwarding_off_and_unwritable_is_reported_clearly(lab: Lab) -> None:
    ns = lab.netns("rofw")
    ns.ip("link", "set", "lo", "up")
    out = apply_with_readonly_proc_sys(ns)  # a new namespace starts with forwarding off
    errors = out["errors"]
    assert isinstance(errors, list) and len(errors) == 1
    assert errors[0]["obj"] == "net.ipv4.ip_forward" and "enable it on the node" in errors[0]["reason"]
    # Everything else was still applied.
    assert ns.run(["cat", "/proc/sys/net/ipv4/conf/raven1/rp_filter"]).stdout.strip() == "2"
