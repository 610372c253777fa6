"""The WireGuard tunnel driver (`--vpn-driver=wireguard`): one WireGuard device, one peer per directly
connected gateway, carrying raven1's VXLAN between inner addresses (route-based, as with IPsec).

What it consumes is the plan's tunnel list, the same `IPsecConnection`s the IPsec driver loads (one per
direct peer: inner /32 <-> inner /32, the peer's outer address when we may dial it, its node and published
key). Per peer: allowed IPs = the peer's inner address only, so relaying and failover stay routing changes
(the plan's routes), never peer or allowed-IP churn; endpoint = the peer's address when known (else learnt
from its handshake, a peer under NAT dials us), persistent keepalive towards every peer we can dial (keeps a
NAT mapping on our side open); preshared key = HKDF-SHA256 of the cluster secret and the two node names,
sorted (`pair_psk`): a node without the secret cannot complete a handshake with anyone.

Keys: the node's private key lives in `--wireguard-key-file` (base64, as `wg genkey` writes it; created once,
0600, never logged); its public key is published in the node's own PathReport (`status.wireguardPublicKey`,
`raven.agent.wgkeys`), and the controller copies it into the Gateway's `status.activeEndpoints[].config.publicKey`
(the key OpenYurt Raven's WireGuard driver uses), where peers read it. Rotation: delete the file and restart the
agent.

Data plane (a `WgDataPlane`: the device, its configuration channel, its supervision), chosen at start by
`raven.dataplane.wgkernel.choose_data_plane`: the kernel module where there is one (`KernelWireGuard`, configured
over generic netlink), else `wireguard-go -f IFACE`, run by the agent itself (`WireGuardGo`: started when absent,
adopted when an earlier agent left it running, restarted with backoff when it dies, stopped only by `--cleanup`)
and configured over the UAPI socket `/run/wireguard/IFACE.sock` (text protocol, `Uapi`). Both channels speak
`DeviceInfo` and UAPI `set` lines, so the diff below is one piece of code for both.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from raven.dataplane import rtnl
from raven.dataplane.ipsec import TunnelState
from raven.dataplane.report import ApplyError, ApplyReport
from raven.dataplane.state import WIREGUARD_LINK, IPsecConnection
from raven.dataplane.tunnel import DriverUnavailable
from raven.kube.backoff import Backoff
from raven.log import kv

log = logging.getLogger(__name__)

WG_IFNAME: Final = WIREGUARD_LINK  # OpenYurt Raven's device name
SOCKET_DIR: Final = Path("/run/wireguard")  # where wireguard-go (and `wg`) look; fixed in wireguard-go
KEEPALIVE_S: Final = 25  # wg-quick's advice for NAT: most mappings outlive 30 s of silence
# After REJECT_AFTER_TIME (180 s) without a new handshake a session carries nothing: older is not "up".
HANDSHAKE_FRESH_S: Final = 180
PSK_SALT: Final = b"raven wireguard preshared key v1"
KEY_LEN: Final = 32
UAPI_ANSWER_LIMIT: Final = 64 << 20  # bytes: 100,000 peers' worth
CHILD_POLL_S: Final = 0.05  # how often a started wireguard-go is looked at (waitpid WNOHANG)


class WireGuardUnavailable(DriverUnavailable):
    """The wireguard-go UAPI socket cannot be reached (not started yet, restarting, gone)."""


class UapiError(RuntimeError):
    """wireguard-go answered a UAPI request with a non-zero errno."""

    def __init__(self, errno_value: int, request: str) -> None:
        super().__init__(f"UAPI {request} failed: errno={errno_value}")
        self.errno = errno_value


# ---------------------------------------------------------------------------------------------------------
# keys


def b64_to_hex(key: str) -> str | None:
    """A base64 WireGuard key (as published, as `wg` prints) in UAPI hex; None when it is not a 32-byte key."""
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (ValueError, TypeError):
        return None
    return raw.hex() if len(raw) == KEY_LEN else None


def clamp(private: bytes) -> bytes:
    """The X25519 clamping WireGuard applies to a private key (and reports back over UAPI): comparing the clamped
    form keeps an unclamped key file from being rewritten into wireguard-go on every pass."""
    key = bytearray(private)
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public_key(private: bytes) -> str:
    """The base64 public key of a raw 32-byte X25519 private key (`wg pubkey`)."""
    # cryptography is imported where it is used (here and below): ~7 MiB of RSS an IPsec agent, which imports this
    # module for the driver choice and cleanup, never needs.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    pub = X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()
    return base64.b64encode(pub).decode()


def load_or_create_private_key(path: str | Path) -> bytes:
    """The node's private key from `path` (base64, `wg genkey` format); created once (0600, its directory
    0700) when the file does not exist. A key readable by others is made 0600 (and said so, without the key)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = X25519PrivateKey.generate().private_bytes_raw()
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(key).decode() + "\n")
        log.info("wireguard private key created", extra=kv(path=str(p), public_key=public_key(key)))
        return key
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(p, 0o600)
        log.warning("wireguard key file was readable by others; made 0600", extra=kv(path=str(p)))
    hexed = b64_to_hex(p.read_text())
    if hexed is None:
        raise ValueError(f"--wireguard-key-file {str(p)!r} holds no base64 32-byte key")
    return bytes.fromhex(hexed)


@functools.lru_cache(maxsize=1 << 14)
def pair_psk(secret: str, node_a: str, node_b: str) -> bytes:
    """The preshared key of the pair (node_a, node_b): HKDF-SHA256 over the cluster secret, the two node
    names sorted (so both ends derive the same key). Without the secret no handshake completes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    first, second = sorted((node_a, node_b))
    info = first.encode() + b"\x00" + second.encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=PSK_SALT, info=info).derive(secret.encode())


# ---------------------------------------------------------------------------------------------------------
# the UAPI text protocol (https://www.wireguard.com/xplatform/)


@dataclass(frozen=True)
class PeerInfo:
    public_key: str  # hex, as in UAPI
    preshared_key: str = ""
    endpoint: str | None = None
    keepalive: int = 0
    allowed_ips: frozenset[str] = frozenset()
    last_handshake: int = 0  # unix seconds, 0: never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class DeviceInfo:
    private_key: str = ""  # hex; "" when unset
    listen_port: int = 0
    peers: Mapping[str, PeerInfo] = field(default_factory=dict)


def parse_get(text: str) -> DeviceInfo:
    """The answer to `get=1` (without its errno line) as a `DeviceInfo`."""
    device: dict[str, str] = {}
    peers: dict[str, PeerInfo] = {}
    cur: dict[str, str] | None = None
    allowed: list[str] = []

    def close() -> None:
        if cur is not None:
            peers[cur["public_key"]] = PeerInfo(
                public_key=cur["public_key"], preshared_key=cur.get("preshared_key", ""),
                endpoint=cur.get("endpoint"), keepalive=int(cur.get("persistent_keepalive_interval", "0")),
                allowed_ips=frozenset(allowed), last_handshake=int(cur.get("last_handshake_time_sec", "0")),
                rx_bytes=int(cur.get("rx_bytes", "0")), tx_bytes=int(cur.get("tx_bytes", "0")))

    for line in text.splitlines():
        if not line or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key == "public_key":
            close()
            cur, allowed = {"public_key": value}, []
        elif cur is None:
            device[key] = value
        elif key == "allowed_ip":
            allowed.append(value)
        else:
            cur[key] = value
    close()
    zero = "0" * 64
    private = device.get("private_key", "")
    return DeviceInfo(private_key="" if private == zero else private,
                      listen_port=int(device.get("listen_port", "0")), peers=peers)


class Uapi:
    """One request per connection on wireguard-go's UAPI socket."""

    def __init__(self, path: str | Path, timeout_s: float = 5.0) -> None:
        self.path = str(path)
        self._timeout = timeout_s

    async def _request(self, body: str, what: str) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                # A `get` lists every peer (~300 bytes each): far beyond the stream's default 64 KiB line limit.
                reader, writer = await asyncio.open_unix_connection(self.path, limit=UAPI_ANSWER_LIMIT)
                try:
                    writer.write(body.encode())
                    await writer.drain()
                    data = await reader.readuntil(b"\n\n")
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise WireGuardUnavailable(f"{self.path}: {type(exc).__name__}: {exc}") from None
        text = data.decode()
        lines = text.rstrip("\n").split("\n")
        errno_value = int(lines[-1].split("=", 1)[1]) if lines[-1].startswith("errno=") else -1
        if errno_value != 0:
            raise UapiError(errno_value, what)
        return "\n".join(lines[:-1])

    async def get(self) -> DeviceInfo:
        return parse_get(await self._request("get=1\n\n", "get"))

    async def set(self, lines: Iterable[str]) -> None:
        body = "".join(f"{line}\n" for line in lines)
        if body:
            await self._request(f"set=1\n{body}\n", "set")

    async def available(self) -> bool:
        try:
            await self._request("get=1\n\n", "get")
        except (WireGuardUnavailable, UapiError):
            return False
        return True


class ConfigChannel(Protocol):
    """How a WireGuard device is read and written: `Uapi` (wireguard-go), `wgkernel.GenlChannel` (the kernel)."""

    async def get(self) -> DeviceInfo: ...

    async def set(self, lines: Iterable[str]) -> None: ...  # UAPI `set` lines; UapiError when refused

    async def available(self) -> bool: ...


class WgDataPlane(Protocol):
    """One WireGuard device and what keeps it there: `WireGuardGo` or `wgkernel.KernelWireGuard`. `starts`
    counts (re)creations and adoptions (the driver's `connects`), `on_start` is called after each one."""

    implementation: str  # "kernel" or "wireguard-go": logged, in /readyz, in raven_agent_wireguard_implementation
    ifname: str
    netns: str | None
    starts: int
    restarts: int
    adopted: bool
    pid: int | None
    mtu: int | None
    on_start: Callable[[], None] | None

    @property
    def channel(self) -> ConfigChannel: ...

    async def ensure(self) -> None: ...

    async def supervise(self) -> None: ...

    async def stop(self) -> bool: ...


# ---------------------------------------------------------------------------------------------------------
# desired peers and the diff


@dataclass(frozen=True)
class WgPeer:
    name: str  # the tunnel's name (VICI_CONN_PREFIX + peer gateway), for states and logs
    public_key: str  # hex
    preshared_key: str  # hex
    endpoint: str | None  # "ip:port", None: learnt from the peer's handshake
    keepalive: int
    allowed_ips: frozenset[str]


def desired_peers(conns: Iterable[IPsecConnection], secret: str, keepalive: int = KEEPALIVE_S
                  ) -> tuple[dict[str, WgPeer], list[str]]:
    """(peers by hex public key, problems): one peer per tunnel whose peer has published a valid key."""
    peers: dict[str, WgPeer] = {}
    problems: list[str] = []
    for c in sorted(conns):
        pub = b64_to_hex(c.peer_public_key) if c.peer_public_key else None
        if pub is None:
            problems.append(f"{c.name}: node {c.peer_node or '?'} has published no valid WireGuard key yet")
            continue
        addr = c.remote_addrs[0] if c.remote_addrs and c.remote_addrs[0] != "%any" else None
        endpoint = f"{addr}:{c.remote_port}" if addr is not None else None
        peers[pub] = WgPeer(c.name, pub, pair_psk(secret, c.local_node, c.peer_node).hex(), endpoint,
                            keepalive if endpoint is not None else 0, frozenset({c.remote_ts}))
    return peers, problems


def set_lines(current: DeviceInfo, private_key: str, listen_port: int, desired: Mapping[str, WgPeer],
              dialled: Mapping[str, str | None]) -> list[str]:
    """The UAPI `set` lines taking `current` to the desired device; [] when nothing differs.

    A peer's endpoint is written when the peer is new or its desired endpoint changed since we last wrote it
    (`dialled`, by public key): WireGuard follows a peer that roams (e.g. a NAT rebinding) and writing our
    configured address back on every pass would undo that."""
    out: list[str] = []
    if current.private_key != private_key:
        out.append(f"private_key={private_key}")
    if current.listen_port != listen_port:
        out.append(f"listen_port={listen_port}")
    for pub in sorted(set(current.peers) - set(desired)):
        out += [f"public_key={pub}", "remove=true"]
    for pub, want in sorted(desired.items()):
        have = current.peers.get(pub)
        lines: list[str] = []
        if have is None or have.preshared_key != want.preshared_key:
            lines.append(f"preshared_key={want.preshared_key}")
        new_endpoint = have is None or have.endpoint is None or dialled.get(pub, have.endpoint) != want.endpoint
        if want.endpoint is not None and new_endpoint and (have is None or have.endpoint != want.endpoint):
            lines.append(f"endpoint={want.endpoint}")
        if have is None or have.keepalive != want.keepalive:
            lines.append(f"persistent_keepalive_interval={want.keepalive}")
        if have is None or have.allowed_ips != want.allowed_ips:
            lines.append("replace_allowed_ips=true")
            lines += [f"allowed_ip={ip}" for ip in sorted(want.allowed_ips)]
        if lines:
            out += [f"public_key={pub}", *lines]
    return out


# ---------------------------------------------------------------------------------------------------------
# wireguard-go, supervised


class WireGuardGo:
    """wireguard-go for one interface: `ensure()` adopts a running one (its UAPI socket answers) or starts
    one (`-f`, its own session: an agent restart does not take it down; logs to IFACE.log beside the socket,
    never to a pipe the agent holds); `supervise()` restarts it with backoff when it dies; `stop()` deletes
    the interface, which ends wireguard-go (`--cleanup` only)."""

    def __init__(self, ifname: str = WG_IFNAME, socket_dir: Path = SOCKET_DIR, binary: str = "wireguard-go",
                 on_start: Callable[[], None] | None = None, poll_s: float = 1.0, netns: str | None = None) -> None:
        self.ifname = ifname
        self.netns = netns  # tests: the named network namespace the device lives in (None: this process's)
        self.socket_dir = socket_dir
        self.uapi = Uapi(socket_dir / f"{ifname}.sock")
        self._binary = binary
        self.on_start = on_start
        self._poll_s = poll_s
        # A plain Popen, not an asyncio subprocess: asyncio kills a child whose transport is closed or collected
        # (at loop shutdown, say), and wireguard-go must outlive the agent.
        self._proc: subprocess.Popen[bytes] | None = None
        self.implementation = "wireguard-go"
        self.starts = 0  # started or adopted, the first time included
        self.restarts = 0  # started again after it had died
        self.adopted = False
        self.pid: int | None = None
        # The device's MTU (the driver sets it from the plan); applied, with the link up, after every start.
        self.mtu: int | None = 1420

    @property
    def channel(self) -> Uapi:
        return self.uapi

    async def ensure(self) -> None:
        if await self.uapi.available():
            # Left running by an earlier agent: its device is up, its peers in place; MTU unknown until set again.
            self.adopted, self.pid, self.mtu = True, None, None
            log.info("wireguard-go adopted", extra=kv(ifname=self.ifname, socket=self.uapi.path))
        else:
            await self._spawn()
            await self._link_up()
        self.starts += 1
        if self.on_start is not None:
            self.on_start()

    async def _link_up(self) -> None:
        """wireguard-go leaves its device down: up (with our MTU) before any route through it is written."""
        try:
            await set_link_mtu_up(self.ifname, self.mtu or 1420, self.netns)
        except OSError as exc:
            log.error("wireguard device cannot be set up", extra=kv(ifname=self.ifname, error=str(exc)))

    def _open_log(self) -> BinaryIO:
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return open(self.socket_dir / f"{self.ifname}.log", "ab")  # handed to the child

    async def _spawn(self, timeout_s: float = 10.0) -> None:
        logfile = await asyncio.to_thread(self._open_log)
        env = dict(os.environ, LOG_LEVEL="error", WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        try:
            prefix = ("ip", "netns", "exec", self.netns) if self.netns else ()
            self._proc = subprocess.Popen(  # noqa: ASYNC220 (a fork+exec: no wait on the child)
                [*prefix, self._binary, "-f", self.ifname], stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                env=env, start_new_session=True)
        finally:
            logfile.close()
        self.adopted, self.pid = False, self._proc.pid
        deadline = time.monotonic() + timeout_s
        while not await self.uapi.available():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise WireGuardUnavailable(f"wireguard-go for {self.ifname} did not start "
                                           f"(rc={self._proc.returncode}); see {self.socket_dir}/{self.ifname}.log")
            await asyncio.sleep(0.02)
        log.info("wireguard-go started", extra=kv(ifname=self.ifname, pid=self.pid))

    async def _wait_gone(self) -> None:
        proc = self._proc
        if proc is not None and not self.adopted:
            while proc.poll() is None:  # noqa: ASYNC110 (waitpid WNOHANG: no thread left blocked at shutdown)
                await asyncio.sleep(CHILD_POLL_S)
            return
        # Not our child: no exit to wait for, only its socket to poll.
        while await self.uapi.available():  # noqa: ASYNC110
            await asyncio.sleep(self._poll_s)

    async def supervise(self) -> None:
        """Run forever: wait for wireguard-go to end, start it again (backoff between failed starts)."""
        backoff = Backoff(base=0.1, cap=10.0)
        if self.starts == 0:
            await self.ensure()
        while True:
            await self._wait_gone()
            rc = self._proc.returncode if self._proc is not None and not self.adopted else None
            log.warning("wireguard-go is gone; starting it again", extra=kv(ifname=self.ifname, rc=rc))
            while True:
                try:
                    await self._spawn()
                    break
                except (OSError, WireGuardUnavailable) as exc:
                    delay = backoff.next()
                    log.error("wireguard-go start failed", extra=kv(error=str(exc), retry_in_s=round(delay, 2)))
                    await asyncio.sleep(delay)
            backoff.reset()
            await self._link_up()
            self.starts += 1
            self.restarts += 1
            if self.on_start is not None:
                self.on_start()

    async def stop(self) -> bool:
        """Delete the interface (wireguard-go ends with it) and its socket; True when there was one."""
        def delete() -> bool:
            sock = rtnl.RouteSocket(self.netns)
            try:
                idx = sock.link_index(self.ifname)
                if idx is None:
                    return False
                errors = sock.send([rtnl.encode_link_delete(idx)])
                if errors:
                    raise OSError(errors[0].errno, errors[0].message)
                return True
            finally:
                sock.close()

        existed = await asyncio.to_thread(delete)
        if self._proc is not None:
            deadline = time.monotonic() + 5.0
            while self._proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(CHILD_POLL_S)
        if existed or not await self._answers():
            # Ours, or stale (a SIGKILLed wireguard-go leaves it). A socket that answers while this network
            # namespace has no such device belongs to a wireguard-go elsewhere (the host's, seen from a namespace
            # that shares /run): not ours to remove.
            await asyncio.to_thread(Path(self.uapi.path).unlink, missing_ok=True)
        return existed

    async def _answers(self) -> bool:
        try:
            await Uapi(self.uapi.path, timeout_s=1.0).get()
        except (WireGuardUnavailable, UapiError):
            return False
        return True


async def set_link_mtu_up(ifname: str, mtu: int, netns: str | None = None) -> bool:
    """Set the device's MTU and bring it up (one RTM_NEWLINK); False when there is no such device."""
    def run() -> bool:
        sock = rtnl.RouteSocket(netns)
        try:
            idx = sock.link_index(ifname)
            if idx is None:
                return False
            errors = sock.send([rtnl.encode_link_set(idx, mtu=mtu)])
            if errors:
                raise OSError(errors[0].errno, errors[0].message)
            return True
        finally:
            sock.close()

    return await asyncio.to_thread(run)


# ---------------------------------------------------------------------------------------------------------
# the driver


class WireGuardDriver:
    """The tunnel driver over one WireGuard device (see the module docstring). `reconcile(conns)` makes
    the device hold exactly the planned peers (only what differs is written); `states()` reports each peer
    as a `TunnelState` (ESTABLISHED while its last handshake is fresh); `connects` counts wireguard-go
    (re)starts and adoptions, so the reconciler re-applies after one."""

    daemon = "wireguard"  # what /readyz names when wireguard-go is down

    def __init__(self, private_key: bytes, secret: str, port: int = 4500, ifname: str = WG_IFNAME,
                 process: WgDataPlane | None = None, keepalive: int = KEEPALIVE_S) -> None:
        self._private_hex = clamp(private_key).hex()
        self.public_key = public_key(private_key)
        self._secret = secret
        self._port = port
        self.ifname = ifname
        self.process: WgDataPlane = process if process is not None else WireGuardGo(ifname)
        self._keepalive = keepalive
        self.device_mtu: int | None = None  # set from the plan (raven1's MTU + VXLAN) by the agent
        self._names: dict[str, str] = {}  # hex public key -> tunnel name, of the last reconcile
        self._dialled: dict[str, str | None] = {}
        self._applied_start = -1
        self.problems: list[str] = []

    def __repr__(self) -> str:  # never the keys
        return f"WireGuardDriver(ifname={self.ifname!r}, public_key={self.public_key!r})"

    @property
    def connects(self) -> int:
        return self.process.starts

    async def available(self) -> bool:
        return await self.process.channel.available()

    async def reconcile(self, conns: Iterable[IPsecConnection]) -> ApplyReport:
        started = time.perf_counter()
        report = ApplyReport(writes={})
        conns = list(conns)
        desired, self.problems = desired_peers(conns, self._secret, self._keepalive)
        port = next((c.local_port for c in sorted(conns)), self._port)
        current = await self.process.channel.get()
        if self._applied_start != self.process.starts:
            self._dialled = {}  # a new wireguard-go (or an adopted one): nothing of ours is known to be there
        lines = set_lines(current, self._private_hex, port, desired, self._dialled)
        if lines:
            try:
                await self.process.channel.set(lines)
            except UapiError as exc:
                report.errors.append(ApplyError("wireguard", "uapi_set", self.ifname, str(exc)))
            else:
                report.writes["uapi_set"] = 1
                removed = set(current.peers) - set(desired)
                added = set(desired) - set(current.peers)
                log.info("wireguard peers", extra=kv(ifname=self.ifname, peers=len(desired), added=len(added),
                                                     removed=len(removed), lines=len(lines)))
        # What we asked wireguard-go to dial; after a failed `set` nothing is known to be there (written again).
        self._dialled = {} if report.errors else {pub: p.endpoint for pub, p in desired.items()}
        self._names = {pub: p.name for pub, p in desired.items()}
        if self.device_mtu is not None and self.device_mtu != self.process.mtu:
            self.process.mtu = self.device_mtu
            if await set_link_mtu_up(self.ifname, self.device_mtu, self.process.netns):
                report.writes["link_mtu"] = 1
        self._applied_start = self.process.starts
        report.duration_s = time.perf_counter() - started
        return report

    async def states(self) -> list[TunnelState]:
        info = await self.process.channel.get()
        now = time.time()
        out: list[TunnelState] = []
        for pub, name in sorted(self._names.items(), key=lambda kv_: kv_[1]):
            peer = info.peers.get(pub)
            if peer is None:
                continue
            fresh = peer.last_handshake > 0 and now - peer.last_handshake < HANDSHAKE_FRESH_S
            host, _, port = (peer.endpoint or ":0").rpartition(":")
            out.append(TunnelState(name=name, ike_state="ESTABLISHED" if fresh else "CONNECTING", ike_unique_id=0,
                                   remote_host=host, remote_port=int(port or 0),
                                   child_state="INSTALLED" if fresh else None, child_unique_id=None,
                                   bytes_in=peer.rx_bytes, bytes_out=peer.tx_bytes, packets_in=0, packets_out=0,
                                   encap=True))
        return out

    async def observed_endpoints(self) -> dict[str, str]:
        """Tunnel name -> the endpoint WireGuard currently uses for the peer (learnt from its handshake when
        it dialled us): what NAT traversal needs to know."""
        return {s.name: f"{s.remote_host}:{s.remote_port}" for s in await self.states() if s.remote_host}

    async def cleanup(self) -> ApplyReport:
        report = ApplyReport(writes={})
        if await self.process.stop():
            report.writes["link_delete"] = 1
        return report

    async def close(self) -> None:
        """Agent shutdown: wireguard-go keeps running (the next agent adopts it)."""
