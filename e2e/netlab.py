"""A small synchronous network-namespace lab that owns everything it creates.

A `Lab` is identified by a short prefix (e.g. ``rvl``). Every network namespace it creates is named
``<prefix>-<name>``; every process it starts lives in one of those namespaces; every per-namespace
config folder is ``/etc/netns/<prefix>-<name>``. That naming is the ownership record: `Lab.close()`
removes what this lab created, and `cleanup_prefix(prefix)` removes the leftovers of a crashed run
by name alone. Nothing with another prefix is ever touched, so several labs (other engineers' tests,
the end-to-end suite) run side by side on one machine.

A prefix belongs to one live lab at a time, machine-wide: a lab holds an flock on
``/run/lock/raven-netlab-<prefix>.lock`` while open. A second run with the same prefix (two pytest
runs on a shared machine) waits for it instead of "cleaning up" the first run's live namespaces;
the kernel drops the lock when its holder dies, so a crashed run never blocks the next one.

Everything here is plain `subprocess` (iproute2, iptables, sysctl) so it can be used from sync
pytest fixtures, from the e2e runner and from a shell. Bulk changes go through ``ip -n NS -batch -``
(one fork per namespace instead of one per object).

Charon (strongSwan) runs once per namespace, as ENVIRONMENT.md describes: a per-namespace
``strongswan.conf`` under ``/etc/netns/<ns>/`` (``ip netns exec`` bind-mounts it over
``/etc/strongswan.conf``), kernel-libipsec loaded (userspace ESP through a TUN device), a private
tmpfs on ``/run`` inside the exec (so charons do not fight over ``/run/charon.pid``) and a VICI
socket under the lab's run directory.

Also a tiny TCP forwarder (``python -m e2e.netlab forward ...``) that accepts in one namespace and
connects in another, so a server inside the lab (the test API server) is reachable from the root
namespace on 127.0.0.1 and vice versa, without giving the root namespace any lab address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

log = logging.getLogger("e2e.netlab")

CHARON = "/usr/lib/ipsec/charon"
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
IFNAMSIZ = 15
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")

# Plugins charon loads in the lab. kernel-libipsec does ESP in userspace (no ESP in this kernel);
# kernel-netlink still handles addresses/routes. An explicit list keeps start-up fast and independent
# of whatever /etc/strongswan.d enables.
CHARON_PLUGINS = (
    "random nonce openssl pem pkcs1 pkcs8 x509 revocation constraints pubkey kdf "
    "aes sha1 sha2 hmac gmp kernel-libipsec kernel-netlink socket-default vici updown"
)


class LabError(RuntimeError):
    """A lab operation failed (a command returned non-zero, a process did not come up)."""


LOCK_DIR = Path("/run/lock")
# How long a new lab waits for another live lab with its prefix to close (RAVEN_LAB_LOCK_WAIT seconds).
LOCK_WAIT_S = float(os.environ.get("RAVEN_LAB_LOCK_WAIT", "600"))
# prefix -> [fd of its lock file, labs open in this process]. Within one process a new lab with a
# prefix still cleans up after an earlier one (a test that failed before close()), as it always did.
_held: dict[str, list[int]] = {}


def _lock_path(prefix: str) -> Path:
    return LOCK_DIR / f"raven-netlab-{prefix}.lock"


def _lock_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    return "?"


def _claim_prefix(prefix: str, timeout: float) -> None:
    """Take the machine-wide lock of `prefix` (see the module docstring), waiting up to `timeout` s."""
    if prefix in _held:
        _held[prefix][1] += 1
        return
    LOCK_DIR.mkdir(parents=True, exist_ok=True)  # a minimal container may have no /run/lock
    fd = os.open(_lock_path(prefix), os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                holder = _lock_holder(fd)
                os.close(fd)
                raise LabError(f"prefix {prefix!r} is still in use by a live lab (pid {holder}) after "
                               f"{timeout:.0f} s") from None
            if not waiting:
                log.warning("prefix in use by another live lab, waiting prefix=%s pid=%s", prefix, _lock_holder(fd))
                waiting = True
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[prefix] = [fd, 1]


def _release_prefix(prefix: str) -> None:
    held = _held.get(prefix)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _held[prefix]
        os.close(held[0])  # drops the flock


def _prefix_in_use_elsewhere(prefix: str) -> str | None:
    """The pid of another process holding `prefix`'s lock, or None (free, or held by this process)."""
    if prefix in _held or not _lock_path(prefix).exists():
        return None
    fd = os.open(_lock_path(prefix), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(fd)
    finally:
        os.close(fd)
    return None


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"invalid lab prefix {prefix!r}: want [a-z][a-z0-9]{{1,7}}")


def check_ifname(name: str) -> str:
    """Return `name` if it is a valid Linux interface name (<= 15 chars, no '/' or spaces)."""
    if not name or len(name) > IFNAMSIZ or "/" in name or " " in name:
        raise ValueError(f"invalid interface name {name!r} (max {IFNAMSIZ} chars)")
    return name


def _run(
    argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed rc={proc.returncode}: {' '.join(argv)}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


def _ip_batch(opts: Sequence[str], lines: Sequence[str], batch: bool = True) -> None:
    if not lines:
        return
    if batch:
        _run(["ip", *opts, "-batch", "-"], input="\n".join(lines) + "\n")
    else:
        for line in lines:
            _run(["ip", *opts, *shlex.split(line)])


# ----------------------------------------------------------------------------------------------
# processes


class Process:
    """A long-running process inside a lab namespace, with stdout/stderr in log files.

    Started in its own session so `stop()` can signal the whole process group. `restart()` starts
    the same argv again, appending to the same logs.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.stdout_path = log_dir / f"{name}.out.log"
        self.stderr_path = log_dir / f"{name}.err.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self.start()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        if self.alive():
            raise LabError(f"process {self.name} already running pid={self.pid}")
        self._close_files()
        # Kept open for the process's life; closed in _close_files.
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        self._files = [out, err]
        self.popen = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.info("process started name=%s pid=%d argv=%s", self.name, self.popen.pid, self.argv)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would (no clean shutdown)."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.popen is None:
            return
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # Children left in the group (e.g. an updown script) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._close_files()
        log.info("process stopped name=%s pid=%d rc=%s", self.name, self.pid, self.popen.returncode)

    def restart(self, timeout: float = 5.0) -> None:
        self.stop(timeout)
        self.start()

    def logs(self) -> str:
        """Both log files, for failure messages."""
        parts = []
        for p in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                parts.append(f"--- {p.name}\n{p.read_text(errors='replace')}")
        return "\n".join(parts)

    def _close_files(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


class Charon:
    """One charon daemon in one namespace, reachable over its own VICI socket."""

    def __init__(self, ns: Netns, run_dir: Path, conf_path: Path) -> None:
        self.ns = ns
        self.run_dir = run_dir
        self.conf_path = conf_path
        self.vici_socket = run_dir / "charon.vici"
        self.log_path = run_dir / "charon.log"
        # The tmpfs on /run is private to this exec's mount namespace (ip netns exec unshares one),
        # so it disappears with the process.
        self.process = ns.popen(
            ["sh", "-c", f"mount -t tmpfs tmpfs /run && exec {CHARON}"], name="charon"
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll until charon answers a VICI `version` request."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise LabError(
                    f"charon in {self.ns.name} exited rc={self.process.returncode()}\n"
                    f"{self.process.logs()}\n{self.read_log()[-4000:]}"
                )
            if self.vici_socket.exists():
                try:
                    with self.session() as s:
                        s.version()
                    return
                except OSError as e:  # socket exists but not listening yet
                    last = e
            time.sleep(0.02)
        raise LabError(f"charon in {self.ns.name} not ready after {timeout}s: {last}")

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """A connected `vici.Session` (closed on exit). Remember: list_sas & co. are lazy generators."""
        import vici  # local: only charon users need it

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(str(self.vici_socket))
            yield vici.Session(sock)
        finally:
            sock.close()

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        self.process.stop()
        with contextlib.suppress(FileNotFoundError):
            self.vici_socket.unlink()

    def kill(self) -> None:
        self.process.kill()
        with contextlib.suppress(FileNotFoundError):
            self.vici_socket.unlink()

    def restart(self) -> None:
        self.stop()
        self.process.start()
        self.wait_ready()


# ----------------------------------------------------------------------------------------------
# namespaces


class Netns:
    """One network namespace of a lab. `name` is the full name (``<prefix>-<short>``)."""

    def __init__(self, lab: Lab, short: str) -> None:
        self.lab = lab
        self.short = short
        self.name = f"{lab.prefix}-{short}"
        self.run_dir = lab.run_dir / short
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[Process] = []
        self.charon: Charon | None = None

    def __repr__(self) -> str:
        return f"Netns({self.name})"

    # -- commands

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        input: str | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace; text output; raises LabError if `check` and rc != 0."""
        return _run(self.exec_argv(argv), check=check, input=input, timeout=timeout)

    def popen(
        self,
        argv: Sequence[str],
        name: str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Process:
        """Start a long-running process in the namespace; logs go to ``<run_dir>/<name>.{out,err}.log``."""
        proc = Process(name, self.exec_argv(argv), self.run_dir, env=env, cwd=cwd)
        self.processes.append(proc)
        return proc

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", self.name, *args], check=check)

    def ip_batch(self, lines: Sequence[str]) -> None:
        """Apply many `ip` commands (one per line, without the leading `ip`) in one fork."""
        _ip_batch(["-n", self.name], lines, self.lab.batch)

    def sysctl(self, **values: str | int) -> None:
        """Set sysctls, e.g. ``sysctl(**{"net.ipv4.ip_forward": 1})``; one fork for all."""
        args = [f"{k}={v}" for k, v in values.items()]
        self.run(["sysctl", "-q", "-w", *args])

    def enable_forwarding(self) -> None:
        self.sysctl(**{"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0})

    # -- small conveniences (each one `ip` fork; use ip_batch for bulk)

    def add_addr(self, ifname: str, cidr: str) -> None:
        self.ip("addr", "add", cidr, "dev", ifname)

    def add_route(self, dst: str, via: str | None = None, dev: str | None = None, table: str | None = None
                  ) -> None:
        args = ["route", "replace", dst]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        if table:
            args += ["table", table]
        self.ip(*args)

    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def add_bridge(self, ifname: str) -> None:
        self.ip_batch([f"link add {check_ifname(ifname)} type bridge", f"link set {ifname} up"])

    def addresses(self) -> list[str]:
        """All IPv4 addresses (without prefix length) in the namespace."""
        out = self.ip("-4", "-o", "addr", "show").stdout
        return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]

    def pids(self) -> list[int]:
        return _netns_pids(self.name)

    # -- latency (no netem here: a TUN device and a userspace delay program, ENVIRONMENT.md)

    def add_delay(self, iif: str, ms: float, dev: str = "dly0", table: int = 100,
                  timeout: float = 10.0) -> Process:
        """Delay every packet forwarded from `iif` by `ms` milliseconds (one way).

        Policy routing sends what arrives on `iif` into a TUN device whose program writes each packet
        back after `ms`; the kernel then forwards it by the main table. Re-injected packets skip
        conntrack (NOTRACK on `dev`): NAT was already undone on the first pass, and a second
        conntrack entry for the same flow would clash. Only inbound: outbound NAT must see the
        packet once. Packets for the box itself are not delayed (the local table comes first).
        Stopping the process removes the TUN device and its route: traffic flows undelayed again.
        """
        check_ifname(dev)
        ready = self.run_dir / f"delay-{dev}.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        root = str(Path(__file__).resolve().parent.parent)
        proc = self.popen(["env", f"PYTHONPATH={root}", sys.executable, "-m", "e2e.netlab", "delay",
                           "--dev", dev, "--ms", str(ms), "--ready", str(ready)], name=f"delay-{dev}")
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if not proc.alive() or time.monotonic() > deadline:
                proc.stop(1.0)
                raise LabError(f"delay program in {self.name} did not start\n{proc.logs()}")
            time.sleep(0.01)
        self.ip_batch([f"link set {dev} up", f"route replace default dev {dev} table {table}"])
        self.ip("rule", "del", "iif", iif, "lookup", str(table), check=False)
        self.ip("rule", "add", "iif", iif, "lookup", str(table), "priority", str(table))
        self.run(["sh", "-c", f"iptables -w 5 -t raw -C PREROUTING -i {dev} -j NOTRACK 2>/dev/null || "
                              f"iptables -w 5 -t raw -A PREROUTING -i {dev} -j NOTRACK"])
        return proc

    # -- strongSwan

    def start_charon(
        self, run_dir: Path | None = None, extra_conf: str = "", port: int = 500, port_nat_t: int = 4500,
        backend: str = "libipsec",
    ) -> Charon:
        """Start a charon in this namespace (see the module docstring); waits until VICI answers.

        `backend`: ``libipsec`` (the lab's conf: userspace ESP, for kernels without ESP) or ``kernel`` (the
        strongswan.conf the DaemonSet ships, `production_charon_conf`: ESP in the kernel's xfrm, for the VM tier
        of e2e/vm.py; `extra_conf`, `port` and `port_nat_t` do not apply to it)."""
        if backend not in CHARON_BACKENDS:
            raise ValueError(f"unknown charon backend {backend!r}: want one of {CHARON_BACKENDS}")
        if self.charon is not None and self.charon.process.alive():
            raise LabError(f"charon already running in {self.name}")
        cdir = run_dir if run_dir is not None else self.run_dir
        cdir.mkdir(parents=True, exist_ok=True)
        vici_socket = cdir / "charon.vici"
        if len(str(vici_socket)) > 100:
            raise LabError(f"VICI socket path too long for AF_UNIX: {vici_socket}")
        with contextlib.suppress(FileNotFoundError):
            vici_socket.unlink()
        if backend == "kernel":
            conf = production_charon_conf(vici_socket)
        else:
            conf = charon_conf(vici_socket, cdir / "charon.log", extra_conf, port=port, port_nat_t=port_nat_t)
        etc = ETC_NETNS / self.name
        etc.mkdir(parents=True, exist_ok=True)
        conf_path = etc / "strongswan.conf"
        conf_path.write_text(conf)
        self.charon = Charon(self, cdir, conf_path)
        return self.charon


# What `Netns.start_charon(backend=...)` accepts.
CHARON_BACKENDS = ("libipsec", "kernel")
# The DaemonSet's charon configuration (ConfigMap raven-charon-config) and the VICI socket path in it.
AGENT_CONFIG_MANIFEST = Path(__file__).resolve().parent.parent / "manifests" / "03-agent-config.yaml"
SHIPPED_VICI_SOCKET = "unix:///var/run/raven/charon.vici"


def production_charon_conf(vici_socket: Path, manifest: Path = AGENT_CONFIG_MANIFEST) -> str:
    """The strongswan.conf the DaemonSet ships (manifests/03-agent-config.yaml), with one change: the VICI
    socket is the lab's (the pod's shared /var/run/raven would sit in charon's private /run tmpfs here).
    No plugin list, no libipsec: charon loads its default plugins, kernel-netlink does ESP in the kernel,
    and it logs to stderr (``charon.err.log``), exactly as in the charon container."""
    import yaml  # local: only the kernel tier needs it

    for doc in yaml.safe_load_all(manifest.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap" and "strongswan.conf" in (doc.get("data") or {}):
            conf = str(doc["data"]["strongswan.conf"])
            if SHIPPED_VICI_SOCKET not in conf:
                raise LabError(f"{manifest}: the shipped strongswan.conf has no {SHIPPED_VICI_SOCKET}")
            return conf.replace(SHIPPED_VICI_SOCKET, f"unix://{vici_socket}")
    raise LabError(f"{manifest}: no ConfigMap with a strongswan.conf")


def charon_conf(
    vici_socket: Path, log_path: Path, extra: str = "", port: int = 500, port_nat_t: int = 4500
) -> str:
    """A self-contained strongswan.conf for one lab charon (no includes from /etc/strongswan.d)."""
    return f"""# written by e2e.netlab
charon {{
    load = {CHARON_PLUGINS}
    port = {port}
    port_nat_t = {port_nat_t}
    install_routes = yes
    retransmit_timeout = 1.0
    retransmit_base = 1.4
    retransmit_tries = 4
    # An initiator retrying towards a peer whose charon is away sends IKE_SA_INIT at least every 2 s, so the
    # peer's return is seen within ~2 s (issue 11, scenario j), not after a retransmit timeout grown to ~4 s.
    retransmit_limit = 2
    filelog {{
        lab {{
            path = {log_path}
            time_format = %H:%M:%S
            default = 1
            ike = 1
            cfg = 1
            append = yes
            flush_line = yes
        }}
    }}
    plugins {{
        vici {{
            socket = unix://{vici_socket}
        }}
        kernel-libipsec {{
            load = yes
        }}
    }}
{extra}
}}
"""


# ----------------------------------------------------------------------------------------------
# the lab


class Lab:
    """Creates namespaces, links and processes named with `prefix`; `close()` removes all of them.

    Usable as a context manager; `close()` is idempotent and best-effort (it keeps going after
    individual failures and logs them) so it is safe in `finally` blocks and fixtures.
    """

    def __init__(
        self, prefix: str, run_dir: Path | None = None, clean_first: bool = True, batch: bool = True
    ) -> None:
        _check_prefix(prefix)
        self.prefix = prefix
        # batch=False runs one `ip` per command: only the benchmark's baseline wants that.
        self.batch = batch
        _claim_prefix(prefix, LOCK_WAIT_S)
        try:
            if clean_first:
                # A previous crashed run with the same prefix must not make this one fail.
                cleanup_prefix(prefix)
            # A run dir the lab made itself is removed by a clean close() (logs stay after a failure
            # or with NETLAB_KEEP=1); a caller's run dir is never removed.
            self._own_run_dir = run_dir is None
            if run_dir is None:
                run_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir="/tmp"))
            self.run_dir = run_dir
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except BaseException:
            _release_prefix(prefix)
            raise
        self.namespaces: dict[str, Netns] = {}
        self.forwards: list[Process] = []
        self._closed = False

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(keep_logs=et is not None)

    def __getitem__(self, short: str) -> Netns:
        return self.namespaces[short]

    def netns(self, short: str) -> Netns:
        """Create namespace ``<prefix>-<short>`` with lo up."""
        return self.netns_many([short])[0]

    def netns_many(self, shorts: Sequence[str], lo_up: bool = True) -> list[Netns]:
        """Create several namespaces with one `ip -batch` fork, plus one per namespace for lo.

        Builders that batch per namespace anyway pass ``lo_up=False`` and add ``link set lo up``.
        """
        for s in shorts:
            if not _NAME_RE.match(s):
                raise ValueError(f"invalid namespace name {s!r}")
            if s in self.namespaces:
                raise LabError(f"namespace {s} already exists in lab {self.prefix}")
        created = [Netns(self, s) for s in shorts]
        # Register before creating so close() removes even a half-built batch.
        for ns in created:
            self.namespaces[ns.short] = ns
        _ip_batch([], [f"netns add {ns.name}" for ns in created], self.batch)
        if lo_up:
            for ns in created:
                ns.ip("link", "set", "lo", "up")
        return created

    def veth(
        self, a: Netns, a_if: str, b: Netns, b_if: str, mtu: int | None = None, up: bool = True
    ) -> None:
        """A veth pair with one end in each namespace, created there directly (no root-ns names)."""
        self.veth_many([(a, a_if, b, b_if)], mtu=mtu, up=up)

    def veth_many(
        self, pairs: Sequence[tuple[Netns, str, Netns, str]], mtu: int | None = None, up: bool = True
    ) -> None:
        lines = []
        for a, a_if, b, b_if in pairs:
            check_ifname(a_if)
            check_ifname(b_if)
            # Temporary root-ns names could collide with another lab; creating both ends directly in
            # their target namespaces avoids any root-ns name.
            m = f" mtu {mtu}" if mtu else ""
            lines.append(f"link add {a_if}{m} netns {a.name} type veth peer name {b_if}{m} netns {b.name}")
        _ip_batch([], lines, self.batch)
        if up:
            per_ns: dict[str, list[str]] = {}
            for a, a_if, b, b_if in pairs:
                per_ns.setdefault(a.short, []).append(f"link set {a_if} up")
                per_ns.setdefault(b.short, []).append(f"link set {b_if} up")
            for short, ls in per_ns.items():
                self.namespaces[short].ip_batch(ls)

    def forward_tcp(
        self,
        name: str,
        listen: tuple[str, int],
        connect: tuple[str, int],
        listen_ns: Netns | None = None,
        connect_ns: Netns | None = None,
        timeout: float = 10.0,
    ) -> tuple[Process, int]:
        """Forward TCP from `listen` (in `listen_ns`, None = root namespace) to `connect` in `connect_ns`.

        Returns the forwarder process and the bound port (useful with port 0). The forwarder ends in
        `connect_ns` (or `listen_ns`), so `close()`/`cleanup_prefix` find and kill it by namespace.
        """
        port_file = self.run_dir / f"fwd-{name}.port"
        with contextlib.suppress(FileNotFoundError):
            port_file.unlink()
        argv = [
            sys.executable, "-m", "e2e.netlab", "forward",
            "--listen", f"{listen[0]}:{listen[1]}", "--connect", f"{connect[0]}:{connect[1]}",
            "--port-file", str(port_file),
        ]
        if listen_ns is not None:
            argv += ["--listen-ns", listen_ns.name]
        if connect_ns is not None:
            argv += ["--connect-ns", connect_ns.name]
        if connect_ns is None and listen_ns is None:
            raise ValueError("forward_tcp needs at least one lab namespace")
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = Process(f"fwd-{name}", argv, self.run_dir, env=env)
        self.forwards.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return proc, int(port_file.read_text())
            if not proc.alive():
                break
            time.sleep(0.02)
        raise LabError(f"forwarder {name} did not start\n{proc.logs()}")

    def close(self, keep_logs: bool = False) -> None:
        """Stop every process, delete every namespace and /etc/netns folder this lab created."""
        if self._closed:
            return
        self._closed = True
        procs = list(self.forwards) + [p for ns in self.namespaces.values() for p in ns.processes]
        # SIGTERM everyone first and wait once, so teardown costs one grace period, not one each.
        for proc in procs:
            _best_effort(proc.signal, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while any(p.alive() for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        for proc in procs:
            _best_effort(proc.stop, 0.1)
        # Anything else still inside (a process started by hand, a child that escaped its group).
        names = [ns.name for ns in self.namespaces.values()]
        _remove_namespaces(names)
        _release_prefix(self.prefix)
        keep = keep_logs or os.environ.get("NETLAB_KEEP") == "1" or not self._own_run_dir
        if keep:
            log.info("lab closed prefix=%s namespaces=%d logs=%s", self.prefix, len(names), self.run_dir)
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            log.info("lab closed prefix=%s namespaces=%d", self.prefix, len(names))

    def leftovers(self) -> dict[str, list[str]]:
        """What with this lab's prefix still exists on the machine (for teardown tests)."""
        return find_leftovers(self.prefix)


def lab_session(prefix: str, run_dir: Path | None = None) -> Iterator[Lab]:
    """A lab for a pytest fixture: ``@pytest.fixture`` / ``def lab(): yield from lab_session("rdp")``.

    Leftovers of a crashed earlier run with the same prefix are removed first; everything is
    removed afterwards, whether the test passed or not.
    """
    with Lab(prefix, run_dir) as lab:
        yield lab


def _best_effort(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as e:  # teardown must go on
        log.warning("cleanup step failed step=%s error=%s", getattr(fn, "__qualname__", fn), e)


def _netns_pids(name: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_pids(pids: Sequence[int], timeout: float = 2.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    remaining = list(pids)
    while remaining and time.monotonic() < deadline:
        remaining = [p for p in remaining if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
        if remaining:
            time.sleep(0.02)
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _remove_namespaces(names: Sequence[str]) -> None:
    existing = set(list_netns())
    todo = [n for n in names if n in existing]
    pids: list[int] = []
    for n in todo:
        pids += _netns_pids(n)
    _kill_pids(pids)
    if todo:
        # -force keeps the batch going past a namespace that vanished meanwhile.
        _run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in todo), check=False)
    for n in names:
        shutil.rmtree(ETC_NETNS / n, ignore_errors=True)


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def cleanup_prefix(prefix: str) -> list[str]:
    """Remove every namespace (with its processes, links, mounts) and /etc/netns folder of `prefix`.

    For leftovers of a crashed run. Returns the namespace names it removed. Refuses (LabError) while
    another process's lab with this prefix is open: those are not leftovers.
    """
    _check_prefix(prefix)
    holder = _prefix_in_use_elsewhere(prefix)
    if holder is not None:
        raise LabError(f"prefix {prefix!r} belongs to a live lab (pid {holder}); not cleaning it up")
    names = [n for n in list_netns() if n.startswith(prefix + "-")]
    if ETC_NETNS.exists():
        names += [p.name for p in ETC_NETNS.iterdir() if p.name.startswith(prefix + "-") and p.name not in names]
    _remove_namespaces(names)
    # Root-namespace links are never created by the lab, but a crashed veth creation could leave one.
    for link in _root_links():
        if link.startswith(prefix + "-"):
            _run(["ip", "link", "del", link], check=False)
    if names:
        log.info("cleaned leftovers prefix=%s namespaces=%s", prefix, names)
    return names


def _root_links() -> list[str]:
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def find_leftovers(prefix: str) -> dict[str, list[str]]:
    """Namespaces, /etc/netns folders, root links, mounts and processes carrying `prefix`."""
    _check_prefix(prefix)
    p = prefix + "-"
    found: dict[str, list[str]] = {
        "netns": [n for n in list_netns() if n.startswith(p)],
        "etc_netns": sorted(x.name for x in ETC_NETNS.iterdir() if x.name.startswith(p))
        if ETC_NETNS.exists() else [],
        "links": [link for link in _root_links() if link.startswith(p)],
        "mounts": [],
        "processes": [],
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            if f"/run/netns/{p}" in line or f"/etc/netns/{p}" in line:
                found["mounts"].append(line.split()[4])
    for n in found["netns"]:
        found["processes"] += [str(x) for x in _netns_pids(n)]
    return found


# ----------------------------------------------------------------------------------------------
# TCP forwarder (runs as `python -m e2e.netlab forward ...`)

_CLONE_NEWNET = 0x40000000


def _setns(path: str | Path) -> None:
    """Move the calling thread into the network namespace at `path` (a /run/netns or /proc file)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; at EOF half-close (the other direction may still carry a reply)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


def _forward_listen(args: argparse.Namespace) -> socket.socket:
    """Bind the listening socket in the listen namespace, then move this thread to the connect one.

    Sockets keep the namespace they were created in: connect sockets made after the second setns
    live in the connect namespace while the listening socket stays where it was bound.
    """
    lhost, lport = args.listen.rsplit(":", 1)
    # Started in the root namespace: keep a handle on it for "connect in root".
    root_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    if args.listen_ns:
        _setns(NETNS_DIR / args.listen_ns)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((lhost, int(lport)))
    lsock.listen(128)
    lsock.setblocking(False)
    if args.connect_ns:
        _setns(NETNS_DIR / args.connect_ns)
    elif args.listen_ns:
        _setns(f"/proc/self/fd/{root_fd}")
    os.close(root_fd)
    return lsock


async def _forward_serve(lsock: socket.socket, connect: str) -> None:
    chost, cport = connect.rsplit(":", 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            creader, cwriter = await asyncio.open_connection(chost, int(cport))
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, cwriter), _pipe(creader, writer))
        finally:
            for w in (writer, cwriter):
                with contextlib.suppress(Exception):
                    w.close()

    server = await asyncio.start_server(handle, sock=lsock)
    async with server:
        await server.serve_forever()


# ----------------------------------------------------------------------------------------------
# delay element (runs as `python -m e2e.netlab delay ...` inside a namespace)

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


async def _delay_serve(fd: int, delay_s: float) -> None:
    loop = asyncio.get_running_loop()

    def write(pkt: bytes) -> None:
        with contextlib.suppress(OSError):  # a full queue drops, as a real link would
            os.write(fd, pkt)

    def on_readable() -> None:
        while True:
            try:
                pkt = os.read(fd, 65535)
            except (BlockingIOError, InterruptedError):
                return
            loop.call_later(delay_s, write, pkt)

    loop.add_reader(fd, on_readable)
    await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.netlab")
    sub = parser.add_subparsers(dest="cmd", required=True)
    fwd = sub.add_parser("forward", help="TCP forwarder between namespaces")
    fwd.add_argument("--listen", required=True)
    fwd.add_argument("--connect", required=True)
    fwd.add_argument("--listen-ns")
    fwd.add_argument("--connect-ns")
    fwd.add_argument("--port-file", required=True)
    dly = sub.add_parser("delay", help="TUN delay element (inside a namespace)")
    dly.add_argument("--dev", required=True)
    dly.add_argument("--ms", type=float, required=True)
    dly.add_argument("--ready", required=True)
    clean = sub.add_parser("cleanup", help="remove every leftover of a prefix")
    clean.add_argument("prefix")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.cmd == "forward":
        lsock = _forward_listen(args)
        Path(args.port_file).write_text(str(lsock.getsockname()[1]))
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_forward_serve(lsock, args.connect))
        return 0
    if args.cmd == "delay":
        fd = _open_tun(args.dev)
        Path(args.ready).write_text("1")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_delay_serve(fd, args.ms / 1000.0))
        return 0
    try:
        removed = cleanup_prefix(args.prefix)
    except LabError as e:  # a live lab holds the prefix: say so, touch nothing
        print(f"cleanup: {e}", file=sys.stderr)
        return 1
    print(f"removed {len(removed)} namespaces: {' '.join(removed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
