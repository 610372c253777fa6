"""The kernel tier's host-side pieces: charon with the DaemonSet's strongswan.conf in a lab namespace, and the VM
runner's decisions that need no VM (which kernel, skip or fail, what the guest copies back)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import vm
from e2e.netlab import SHIPPED_VICI_SOCKET, Lab, LabError, lab_session, production_charon_conf


@pytest.fixture
def klab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    yield from lab_session("rvk")


def test_production_conf_is_the_manifests_with_only_the_socket_changed(tmp_path: Path) -> None:
    conf = production_charon_conf(tmp_path / "charon.vici")
    assert f"unix://{tmp_path / 'charon.vici'}" in conf and SHIPPED_VICI_SOCKET not in conf
    assert "kernel-libipsec {\n      load = no" in conf and "load =" not in conf.split("plugins", 1)[0]
    broken = tmp_path / "cfg.yaml"
    broken.write_text("kind: ConfigMap\nmetadata: {name: x}\ndata:\n  strongswan.conf: 'charon {}'\n")
    with pytest.raises(LabError, match=r"no unix:///var/run/raven/charon\.vici"):
        production_charon_conf(tmp_path / "s", broken)


@pytest.mark.root
def test_kernel_backend_charon_loads_kernel_netlink_and_no_libipsec(klab: Lab) -> None:
    ns = klab.netns("n1")
    charon = ns.start_charon(backend="kernel")
    with charon.session() as s:
        plugins = [p.decode() if isinstance(p, bytes) else str(p) for p in s.stats()["plugins"]]
    assert "kernel-netlink" in plugins and "kernel-libipsec" not in plugins, plugins
    assert ns.ip("link", "show", "ipsec0", check=False).returncode != 0  # no userspace ESP device
    with pytest.raises(ValueError, match="unknown charon backend"):
        klab.netns("n2").start_charon(backend="xfrm")


def test_newest_debian_kernel_is_booted() -> None:
    assert vm.find_kernel("/boot/vmlinuz-x") == Path("/boot/vmlinuz-x")
    names = ["vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-57-amd64", "vmlinuz-6.1.0-10-amd64"]
    assert sorted(names, key=vm._version_key)[-1] == "vmlinuz-6.1.0-57-amd64"


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_machine_that_cannot_boot_skips_outside_ci_and_fails_in_ci(
        ci: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CI", ci)
    rc = vm.main(["e2e/kernel/lab.py", "--kernel", str(tmp_path / "vmlinuz-none"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    if ci:
        assert rc == 1 and "FAILED: CI=true and the kernel tier cannot run" in out, out
    else:
        assert rc == 0 and "SKIPPED:" in out, out


def test_the_guest_copies_logs_but_not_sockets(tmp_path: Path) -> None:
    (tmp_path / "agent.err.log").write_text("x")
    (tmp_path / "d").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "charon.vici"))
    try:
        assert vm._not_regular(str(tmp_path), ["agent.err.log", "d", "charon.vici"]) == ["charon.vici"]
    finally:
        sock.close()
