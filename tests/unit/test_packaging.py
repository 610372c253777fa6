"""The image installs exactly the system packages the tests run against (Makefile APT_RUNTIME), each one
for a reason; CI runs the README's test command.

The Makefile variable is read by `make` itself and the Dockerfile's apt-get line is parsed as the shell
would split it, so a comment or a second mention of a package name cannot make the checks pass."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Why each runtime package is in the image. A package nothing needs does not belong there.
RUNTIME_PURPOSE = {
    "strongswan-charon": "charon, the IKE daemon the ipsec driver talks to over VICI",
    "strongswan-swanctl": "swanctl, for operators inspecting charon in the pod",
    "libcharon-extra-plugins": "charon's kernel-libipsec plugin (no kernel ESP: ENVIRONMENT.md)",
    "libstrongswan-standard-plugins": "charon's crypto plugins for the proposals raven configures",
    "iproute2": "ip, for operators debugging routes in the pod (the agent itself speaks netlink)",
    "iptables": "iptables-save/-restore for the TCP MSS clamping chain",
    "wireguard-tools": "wg, for operators inspecting raven-wg0 (--vpn-driver=wireguard) in the pod",
    "wireguard-go": "the userspace WireGuard the agent starts for raven-wg0 where the kernel has none",
    "graphviz": "dot, which lays out `raven graph -o svg` (the image runs the CLI too: kubectl exec ... raven graph)",
}


def make_variable(name: str) -> list[str]:
    """The value of a Makefile variable as make expands it."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        [make, "--no-print-directory", "-s", "-C", str(ROOT), "--eval=print-%: ; @echo $($*)",
         f"print-{name}"], check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    return out.split()


def dockerfile_apt_packages() -> list[str]:
    """The package arguments of the `apt-get install` command in the Dockerfile's RUN instructions."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    packages: list[str] = []
    installs = 0
    for instruction in lines:
        keyword, _, rest = instruction.strip().partition(" ")
        if keyword.upper() != "RUN":
            continue
        words = shlex.split(rest, comments=False)
        commands: list[list[str]] = [[]]
        for w in words:
            if w in ("&&", "||", ";"):
                commands.append([])
            else:
                commands[-1].append(w)
        for cmd in commands:
            args = [a for a in cmd if "=" not in a or a.startswith("-")]  # drop VAR=value prefixes
            if args[:2] == ["apt-get", "install"]:
                installs += 1
                packages += [a for a in args[2:] if not a.startswith("-")]
    assert installs == 1, f"expected one apt-get install in the Dockerfile, found {installs}"
    return packages


def test_dockerfile_and_makefile_install_the_same_runtime_packages() -> None:
    docker = dockerfile_apt_packages()
    assert len(docker) == len(set(docker))
    assert set(docker) == set(make_variable("APT_RUNTIME"))


def test_every_runtime_package_has_a_purpose() -> None:
    assert set(make_variable("APT_RUNTIME")) == set(RUNTIME_PURPOSE)


def test_ci_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    commands = [shlex.split(line) for line in ci.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert ["make", "test"] in commands, commands
