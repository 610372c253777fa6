"""The kernel tier: one test module run inside a VM booted with Debian's stock kernel (`make test-kernel`).

This machine's kernel has no ESP, no WireGuard module, no netem and no IPVS (ENVIRONMENT.md), so the paths
production clusters take are proven in a VM instead: virtme-ng (PyPI, the `kernel` extra) boots the Debian
kernel (`linux-image-amd64`, modules under /lib/modules) under qemu's software emulation (KVM does not work
here) with this machine's own files as its root over 9p, read-only, so the checkout and its .venv are there as
they are. Everything the guest writes goes to tmpfs (virtme overlays /etc, /var, /tmp; the lab's run
directory, with charon's VICI sockets and the other unix sockets, is a guest tmpfs, `GUEST_RUN_DIR`: 9p cannot
open unix sockets) or to the one shared read-write directory, `--out`, where the guest leaves its pytest log,
junit XML, exit code and, when something failed, the lab's logs.

    python -m e2e.vm [--vpn-driver ipsec] [--kernel /boot/vmlinuz-V] [--out DIR] MODULE [-- PYTEST_ARGS...]

Host side (`run`): checks that the machine can boot the VM (root, x86_64, qemu, busybox-static, a Debian
kernel with its modules, vng), byte-compiles the checkout (the guest cannot write .pyc files to it), boots
the VM, streams its console, kills the VM's process group on timeout, and exits with the guest's pytest exit
code. Where the machine cannot run the VM it prints ``SKIPPED: <reason>`` and exits 0, except under
``CI=true``, where that is a failure (exit 1): CI never goes green without the tier.

Guest side (`guest`, run by the host through ``vng --exec``): loads the kernel modules the lab needs
(`GUEST_MODULES`: a missing one fails the run), then runs pytest on the module with ``RAVEN_VM_GUEST=1``,
``RAVEN_VM_RUN_DIR`` (the lab's run directory on tmpfs) and ``RAVEN_VM_VPN_DRIVER`` set.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
VPN_DRIVERS = ("ipsec", "wireguard")
# Kernel modules the kernel lab needs, loaded before pytest starts (most would autoload; loading them first
# makes a kernel without one fail at once, by name). ESP and its algorithms for kernel-netlink's SAs, the
# xfrm netlink API, the lab's links, iptables (nf_tables backend) with the policy match of the ingress filter,
# NAT for the routers, and what the later scenarios use (wireguard, netem, IPVS).
GUEST_MODULES = (
    "esp4", "xfrm_user", "xfrm_algo", "aesni_intel", "sha256_generic", "authenc", "echainiv",
    "veth", "bridge", "vxlan", "tun",
    "nf_tables", "nft_compat", "nft_chain_nat", "xt_policy", "xt_mark", "xt_MASQUERADE", "xt_statistic",
    "xt_conntrack", "xt_TCPMSS", "xt_comment", "iptable_mangle", "iptable_nat", "iptable_raw", "iptable_filter",
    "wireguard", "sch_netem", "ip_vs",
)
DEFAULT_TIMEOUT_S = 2700.0
GUEST_RUN_DIR = Path("/var/tmp/raven-vm")
# CPU-bound Python is ~16x slower under TCG; generous per-test bound inside the guest.
GUEST_PYTEST_TIMEOUT_S = 1800


def log(msg: str) -> None:
    print(f"[e2e.vm] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# host side


def find_kernel(explicit: str | None) -> Path | None:
    """The kernel to boot: `explicit`, else the newest Debian kernel image in /boot (vmlinuz-*-amd64)."""
    if explicit:
        return Path(explicit)
    images = sorted(Path("/boot").glob("vmlinuz-*-amd64"), key=lambda p: _version_key(p.name))
    return images[-1] if images else None


def _version_key(name: str) -> list[int]:
    parts = name.removeprefix("vmlinuz-").replace("-", ".").split(".")
    return [int(p) if p.isdigit() else -1 for p in parts]


def preflight(kernel: Path | None) -> str | None:
    """Why this machine cannot boot the kernel tier's VM (None: it can)."""
    if os.geteuid() != 0:
        return "the kernel tier needs root (network namespaces inside the VM, and the VM sees the host as root)"
    if platform.machine() != "x86_64":
        return f"the kernel tier boots an amd64 kernel under qemu-system-x86_64; this is {platform.machine()}"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is missing (Debian qemu-system-x86: make install-kernel-test)"
    if not Path("/bin/busybox").exists() or "static" not in _file_kind(Path("/bin/busybox")):
        return "a static busybox is missing (virtme-ng builds its initramfs with it: Debian busybox-static)"
    if kernel is None or not kernel.exists():
        return f"no Debian kernel image {kernel or '/boot/vmlinuz-*-amd64'} (Debian linux-image-amd64)"
    version = kernel.name.removeprefix("vmlinuz-")
    if not Path(f"/lib/modules/{version}/modules.dep").exists():
        return f"no modules for kernel {version} in /lib/modules/{version} (or depmod -a {version} not run)"
    if not (VENV_BIN / "vng").exists():
        return f"vng is missing next to {sys.executable} (PyPI virtme-ng, the `kernel` extra)"
    return None


def _file_kind(path: Path) -> str:
    """Whether an ELF file is statically linked, without `file`: a static binary has no PT_INTERP."""
    with contextlib.suppress(OSError):
        data = path.read_bytes()[:4096]
        return "dynamic" if b"/ld-linux" in data or b"ld-linux-x86-64" in data else "static"
    return ""


def vng_argv(kernel: Path, out: Path, guest_cmd: str, memory: str, cpus: int) -> list[str]:
    return [str(VENV_BIN / "vng"), "--run", str(kernel), "--disable-kvm", "--force-9p", "--memory", memory,
            "--cpus", str(cpus), "--rwdir", str(out), "--exec", guest_cmd]


def run_vm(args: argparse.Namespace) -> int:
    ci = os.environ.get("CI", "").lower() == "true"
    kernel = find_kernel(args.kernel)
    reason = preflight(kernel)
    if reason is not None:
        if ci:
            log(f"FAILED: CI=true and the kernel tier cannot run: {reason}")
            return 1
        log(f"SKIPPED: {reason}")
        return 0
    assert kernel is not None
    module = Path(args.module)
    if not (REPO / module).exists() and not module.exists():
        log(f"FAILED: no test module {module}")
        return 2
    # The guest sees the checkout read-only: compile here, or every process in the VM compiles on import.
    compileall.compile_dir(str(REPO / "raven"), quiet=1, workers=0)
    compileall.compile_dir(str(REPO / "e2e"), quiet=1, workers=0)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="raven-vm-", dir="/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("rc", "pytest.log", "junit.xml", "measurements.json"):
        with contextlib.suppress(FileNotFoundError):
            (out / stale).unlink()
    guest = [sys.executable, "-m", "e2e.vm", "guest", "--out", str(out), "--vpn-driver", args.vpn_driver,
             "--ci", "true" if ci else "false", *(["--keep"] if args.keep else []), str(module), "--",
             *args.pytest_args]
    guest_cmd = f"cd {shlex.quote(str(REPO))} && exec {shlex.join(guest)}"
    argv = vng_argv(kernel, out, guest_cmd, args.memory, args.cpus)
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    log(f"booting {kernel.name} (qemu TCG, {args.cpus} cpus, {args.memory}): {module}, vpn driver {args.vpn_driver}; "
        f"results in {out}")
    t0 = time.monotonic()
    # SIGTERM (a CI job cancelled, a kill by pid) unwinds like Ctrl-C, so _boot's finally kills the VM's group.
    signal.signal(signal.SIGTERM, _raise_exit)
    rc = _boot(argv, env, out / "console.log", args.timeout)
    wall = time.monotonic() - t0
    guest_rc = _read_rc(out / "rc")
    if rc == -1:
        log(f"FAILED: the VM did not finish within {args.timeout:.0f} s (killed); console in {out / 'console.log'}")
        return 1
    if guest_rc is None:
        log(f"FAILED: the guest wrote no exit code (vng rc={rc}: boot failed?); console in {out / 'console.log'}")
        return 1
    with contextlib.suppress(OSError):
        log(f"measurements: {(out / 'measurements.json').read_text().strip()}")
    log(f"kernel tier: pytest exit {guest_rc} in the VM, {wall:.0f} s wall (boot included); "
        f"logs in {out}{' (lab logs in lab/)' if (out / 'lab').exists() else ''}")
    return guest_rc


def _boot(argv: Sequence[str], env: dict[str, str], console: Path, timeout: float) -> int:
    """Run vng (and so qemu) in its own process group, its output to `console` and to stdout; -1 on timeout,
    after killing the group: no qemu is ever left behind."""
    with open(console, "wb") as log_file:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        try:
            os.set_blocking(proc.stdout.fileno(), False)
            while True:
                chunk = proc.stdout.read(65536)
                if chunk:
                    log_file.write(chunk)
                    log_file.flush()
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                elif proc.poll() is not None:
                    return proc.returncode
                else:
                    if time.monotonic() > deadline:
                        return -1
                    time.sleep(0.1)
        finally:
            if proc.poll() is None or _group_alive(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _read_rc(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# guest side


def run_guest(args: argparse.Namespace) -> int:
    out = Path(args.out)
    rc = 1
    try:
        rc = _guest(args, out)
    finally:
        (out / "rc").write_text(f"{rc}\n")
    return rc


def _guest(args: argparse.Namespace, out: Path) -> int:
    log(f"guest kernel {platform.release()}, {os.cpu_count()} cpus")
    t0 = time.monotonic()
    missing = [m for m in GUEST_MODULES
               if subprocess.run(["modprobe", m], capture_output=True, check=False).returncode != 0]
    if missing:
        log(f"FAILED: kernel modules missing in {platform.release()}: {' '.join(missing)}")
        return 1
    log(f"{len(GUEST_MODULES)} kernel modules loaded in {time.monotonic() - t0:.0f} s")
    # The lab's run directory on a tmpfs of its own: unix sockets work there (not over 9p), and it is not under
    # /run, which every lab charon hides behind a private tmpfs (its VICI socket would be out of the agent's view).
    run_dir = GUEST_RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "raven-vm", str(run_dir)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        log(f"FAILED: cannot mount a tmpfs on {run_dir}: {mounted.stderr.strip()}")
        return 1
    Path("/run/lock").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RAVEN_VM_GUEST="1", RAVEN_VM_RUN_DIR=str(run_dir), RAVEN_VM_VPN_DRIVER=args.vpn_driver,
               RAVEN_VM_OUT=str(out),
               CI=args.ci, PYTHONDONTWRITEBYTECODE="1",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")
    # Live progress on the console (the lab's start alone takes minutes here): the cluster's and the lab's log lines.
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "-o", "log_cli=true",
            "--log-cli-level=INFO", "--log-cli-format=%(asctime)s %(name)s %(message)s",
            f"--timeout={GUEST_PYTEST_TIMEOUT_S}", f"--junitxml={out / 'junit.xml'}", args.module, *args.pytest_args]
    log(f"running {shlex.join(argv)}")
    with open(out / "pytest.log", "wb") as f:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            f.flush()
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        rc = proc.wait()
    lab = run_dir / "lab"
    if lab.exists() and (rc != 0 or args.keep):
        shutil.copytree(lab, out / "lab", ignore=_not_regular, dirs_exist_ok=True)
    return rc


def _not_regular(directory: str, names: list[str]) -> list[str]:
    """copytree's ignore: sockets and other special files (VICI sockets) are not copied."""
    skip = []
    for n in names:
        p = Path(directory) / n
        if not (p.is_dir() or p.is_file()) or p.is_symlink():
            skip.append(n)
    return skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(prog="python -m e2e.vm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    guest = sub.add_parser("guest", help="inside the VM (vng --exec runs it)")
    guest.add_argument("--out", required=True)
    guest.add_argument("--vpn-driver", choices=VPN_DRIVERS, default="ipsec")
    guest.add_argument("--ci", default="false")
    guest.add_argument("--keep", action="store_true")
    guest.add_argument("module")
    if argv and argv[0] == "guest":
        gargs = parser.parse_args(argv)
        gargs.pytest_args = pytest_args
        return run_guest(gargs)
    host = argparse.ArgumentParser(prog="python -m e2e.vm", description=__doc__.split("\n\n")[0])
    host.add_argument("module", help="the test module to run inside the VM, e.g. e2e/kernel/lab.py")
    host.add_argument("--vpn-driver", choices=VPN_DRIVERS, default=os.environ.get("RAVEN_VM_VPN_DRIVER", "ipsec"))
    host.add_argument("--kernel", help="kernel image (default: the newest /boot/vmlinuz-*-amd64)")
    host.add_argument("--out", help="results directory shared with the guest (default: a new /tmp/raven-vm-*)")
    host.add_argument("--memory", default="2G")
    host.add_argument("--cpus", type=int, default=2)
    host.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="whole VM run, seconds")
    host.add_argument("--keep", action="store_true", help="copy the lab's logs to --out even when everything passed")
    hargs = host.parse_args(argv)
    hargs.pytest_args = pytest_args
    return run_vm(hargs)


if __name__ == "__main__":
    sys.exit(main())
