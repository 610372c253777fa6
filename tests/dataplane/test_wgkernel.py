"""The choice of WireGuard data plane (`raven.dataplane.wgkernel.choose_data_plane`) on this host, in namespaces.

This kernel has no WireGuard module: `auto` must fall back to wireguard-go with the kernel's refusal as its
reason and leave no device behind, `kernel` must refuse to start, an existing non-WireGuard device or a running
wireguard-go must be kept. The kernel path itself (device created, configured over generic netlink, traffic)
runs in a VM with Debian's kernel: e2e/kernel/test_wireguard_kernel.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from e2e.netlab import Lab
from raven.dataplane.wgkernel import (
    GenlChannel,
    KernelWireGuard,
    choose_data_plane,
    family_registered,
    link_kind,
    probe_kernel,
)
from raven.dataplane.wireguard import SOCKET_DIR, WireGuardGo, WireGuardUnavailable
from tests.dataplane.conftest import root_lab

pytestmark = pytest.mark.root

PREFIX = "rvwk"


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from root_lab(PREFIX)


def kernel_has_wireguard(lab: Lab) -> bool:
    ns = lab.netns("kp")
    probe = probe_kernel("rvwk-probe", ns.name)
    return probe.kernel


@pytest.fixture
def no_kernel_wireguard(lab: Lab) -> None:
    if kernel_has_wireguard(lab):
        pytest.skip("this kernel has WireGuard: the fallback is not what runs here")


def test_auto_falls_back_to_wireguard_go_with_the_kernels_reason_and_leaves_no_device(
        lab: Lab, no_kernel_wireguard: None) -> None:
    ns = lab.netns("fa")
    choice = asyncio.run(choose_data_plane("auto", ifname="rvwk-fa0", netns=ns.name))
    assert isinstance(choice.plane, WireGuardGo) and choice.plane.implementation == "wireguard-go"
    assert choice.reason.startswith("no kernel WireGuard (RTM_NEWLINK rvwk-fa0 type wireguard: "), choice.reason
    assert "not supported" in choice.reason.lower(), choice.reason  # EOPNOTSUPP, the kernel's own words
    assert link_kind("rvwk-fa0", ns.name) is None  # nothing created, nothing left
    assert not family_registered(ns.name)


def test_kernel_forced_without_the_module_refuses_to_start(lab: Lab, no_kernel_wireguard: None) -> None:
    ns = lab.netns("fk")
    with pytest.raises(WireGuardUnavailable, match=r"--wireguard-implementation=kernel: no kernel WireGuard"):
        asyncio.run(choose_data_plane("kernel", ifname="rvwk-fk0", netns=ns.name))


def test_wireguard_go_forced_does_not_probe_the_kernel(lab: Lab) -> None:
    ns = lab.netns("fg")
    ns.ip("link", "add", "rvwk-fg0", "type", "bridge")  # a probe would report it; a forced choice does not look
    choice = asyncio.run(choose_data_plane("wireguard-go", ifname="rvwk-fg0", netns=ns.name))
    assert isinstance(choice.plane, WireGuardGo)
    assert choice.reason == "--wireguard-implementation=wireguard-go"


def test_an_existing_device_of_another_kind_means_wireguard_go(lab: Lab) -> None:
    # What a SIGKILLed wireguard-go can leave (its tun); here a bridge: never deleted or taken by the kernel path.
    ns = lab.netns("fd")
    ns.ip("link", "add", "rvwk-fd0", "type", "bridge")
    choice = asyncio.run(choose_data_plane("auto", ifname="rvwk-fd0", netns=ns.name))
    assert isinstance(choice.plane, WireGuardGo)
    assert choice.reason == "rvwk-fd0 exists as a bridge device (wireguard-go's tun)"
    assert link_kind("rvwk-fd0", ns.name) == "bridge"
    with pytest.raises(WireGuardUnavailable, match="exists as a bridge device"):
        asyncio.run(KernelWireGuard("rvwk-fd0", netns=ns.name).ensure())


def test_a_running_wireguard_go_is_adopted_whatever_the_kernel_has(lab: Lab) -> None:
    ns = lab.netns("fw")
    running = WireGuardGo("rvwk-fw0", netns=ns.name)
    asyncio.run(running.ensure())
    try:
        choice = asyncio.run(choose_data_plane("auto", ifname="rvwk-fw0", netns=ns.name))
        assert isinstance(choice.plane, WireGuardGo)
        assert choice.reason == f"a running wireguard-go answers on {SOCKET_DIR}/rvwk-fw0.sock (adopted)"
        asyncio.run(choice.plane.ensure())
        assert choice.plane.adopted and choice.plane.starts == 1
    finally:
        asyncio.run(WireGuardGo("rvwk-fw0", netns=ns.name).stop())
        (SOCKET_DIR / "rvwk-fw0.log").unlink(missing_ok=True)


def test_the_generic_netlink_channel_without_the_family_is_a_daemon_away(lab: Lab, no_kernel_wireguard: None) -> None:
    ns = lab.netns("gc")
    channel = GenlChannel("rvwk-gc0", ns.name)
    assert not asyncio.run(channel.available())
    with pytest.raises(WireGuardUnavailable, match="family 'wireguard' not registered"):
        asyncio.run(channel.get())
