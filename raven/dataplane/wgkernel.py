"""The kernel WireGuard data plane, and the choice between it and wireguard-go (`--wireguard-implementation`).

`KernelWireGuard` is the `WgDataPlane` of a kernel WireGuard device: created over rtnetlink (`ip link add IFNAME
type wireguard`), configured over generic netlink (family "wireguard": `GenlChannel`, the messages of
`raven.dataplane.wgnetlink`, sent on a `rtnl.RouteSocket` opened as NETLINK_GENERIC), looked at every `poll_s`
and created again when someone deleted it (a new start: the driver writes everything again), deleted only by
`--cleanup`. No process to run: the kernel keeps the device and its sessions across agent restarts.

`choose_data_plane` picks one at start, in this order (`auto`, the default):
1. wireguard-go already answers on IFNAME's UAPI socket: adopt it (an agent restart never swaps a data plane
   under live sessions; `--cleanup` then a restart moves a node to the kernel);
2. IFNAME exists and is a kernel WireGuard device: adopt it;
3. IFNAME exists as another kind (a `tun` that a killed wireguard-go left): wireguard-go (it takes that device);
4. else create IFNAME as a kernel WireGuard device: success, and the generic-netlink family answers, means the
   kernel (the device stays: `ensure` adopts it); EOPNOTSUPP (no module), or any other refusal, means
   wireguard-go, and the reason is logged.
`kernel` or `wireguard-go` forces one (`kernel` fails the start when the kernel has none).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from raven.dataplane import rtnl, wgnetlink
from raven.dataplane.wireguard import (
    SOCKET_DIR,
    WG_IFNAME,
    DeviceInfo,
    UapiError,
    WgDataPlane,
    WireGuardGo,
    WireGuardUnavailable,
)
from raven.log import kv

log = logging.getLogger(__name__)

Implementation = Literal["auto", "kernel", "wireguard-go"]
KERNEL: Final = "kernel"
USERSPACE: Final = "wireguard-go"


class GenlChannel:
    """The kernel device's configuration over generic netlink: the same `get`/`set`/`available` as `Uapi`
    (a `DeviceInfo`; UAPI `set` lines, written as WG_CMD_SET_DEVICE messages). One socket per request, as
    `Uapi` opens one connection per request; the family id is looked up once."""

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        self.ifname = ifname
        self.netns = netns
        self.family: int | None = None

    def __repr__(self) -> str:
        return f"GenlChannel(ifname={self.ifname!r}, family={self.family})"

    def _socket(self) -> rtnl.RouteSocket:
        try:
            return rtnl.RouteSocket(self.netns, protocol=rtnl.NETLINK_GENERIC)
        except OSError as exc:
            raise WireGuardUnavailable(f"generic netlink: {exc}") from None

    def _family(self, sock: rtnl.RouteSocket) -> int:
        if self.family is None:
            try:
                self.family = lookup_family(sock)
            except rtnl.NetlinkError as exc:
                raise WireGuardUnavailable(f"generic netlink family lookup: {exc}") from None
            if self.family is None:
                raise WireGuardUnavailable("generic netlink family 'wireguard' not registered (no kernel module)")
        return self.family

    def get_sync(self) -> DeviceInfo:
        sock = self._socket()
        try:
            family = self._family(sock)
            body = wgnetlink.encode_get_device(family, self.ifname).body
            try:
                return wgnetlink.parse_device(sock.dump(family, body))
            except rtnl.NetlinkError as exc:  # ENODEV: the device is gone (being created again)
                self.family = None  # looked up again next time (a module reloaded has a new id)
                raise WireGuardUnavailable(f"{self.ifname}: WG_CMD_GET_DEVICE: {os.strerror(exc.errno or 0)}"
                                           ) from None
        finally:
            sock.close()

    def set_sync(self, lines: list[str]) -> None:
        sock = self._socket()
        try:
            family = self._family(sock)
            for msg in wgnetlink.encode_set_messages(family, self.ifname, lines):
                # One at a time: a large configuration is several 32 KiB messages, beyond one send's buffer.
                try:
                    errors = sock.send([msg])
                except rtnl.NetlinkError as exc:
                    raise WireGuardUnavailable(f"{self.ifname}: WG_CMD_SET_DEVICE: {exc}") from None
                if errors:
                    if errors[0].errno == errno.ENODEV:
                        raise WireGuardUnavailable(f"{self.ifname}: WG_CMD_SET_DEVICE: {errors[0].message}")
                    raise UapiError(errors[0].errno, f"set ({errors[0].message})")
        finally:
            sock.close()

    async def get(self) -> DeviceInfo:
        return await asyncio.to_thread(self.get_sync)

    async def set(self, lines: Iterable[str]) -> None:
        body = list(lines)
        if body:
            await asyncio.to_thread(self.set_sync, body)

    async def available(self) -> bool:
        try:
            await self.get()
        except (WireGuardUnavailable, UapiError):
            return False
        return True


def lookup_family(sock: rtnl.RouteSocket) -> int | None:
    """The "wireguard" generic-netlink family's id (CTRL_CMD_GETFAMILY), None when it is not registered."""
    payload = sock.get(wgnetlink.encode_get_family(), absent=(errno.ENOENT,))
    return None if payload is None else wgnetlink.family_id(payload)


def link_kind(ifname: str, netns: str | None = None) -> str | None:
    """The kind of the link IFNAME ("wireguard", "tun", ...), "" for a link without one, None when absent."""
    sock = rtnl.RouteSocket(netns)
    try:
        payload = sock.get(rtnl.encode_link_get(ifname), absent=(errno.ENODEV,))
    finally:
        sock.close()
    return None if payload is None else (wgnetlink.link_kind(payload) or "")


def create_kernel_link(ifname: str, mtu: int, netns: str | None = None) -> str | None:
    """Create IFNAME as a kernel WireGuard device (up, `mtu`): None when done, else why not (the kernel's words)."""
    sock = rtnl.RouteSocket(netns)
    try:
        errors = sock.send([wgnetlink.encode_link_create(ifname, mtu)])
    finally:
        sock.close()
    return None if not errors else f"RTM_NEWLINK {ifname} type wireguard: {errors[0].message}"


def delete_link(ifname: str, netns: str | None = None) -> bool:
    sock = rtnl.RouteSocket(netns)
    try:
        idx = sock.link_index(ifname)
        if idx is None:
            return False
        errors = sock.send([rtnl.encode_link_delete(idx)])
        if errors and errors[0].errno != errno.ENODEV:
            raise OSError(errors[0].errno, errors[0].message)
        return True
    finally:
        sock.close()


def family_registered(netns: str | None = None) -> bool:
    sock = rtnl.RouteSocket(netns, protocol=rtnl.NETLINK_GENERIC)
    try:
        return lookup_family(sock) is not None
    finally:
        sock.close()


class KernelWireGuard:
    """A kernel WireGuard device as a `WgDataPlane` (see the module docstring)."""

    implementation = KERNEL

    def __init__(self, ifname: str = WG_IFNAME, netns: str | None = None, poll_s: float = 1.0,
                 on_start: Callable[[], None] | None = None) -> None:
        self.ifname = ifname
        self.netns = netns
        self._channel = GenlChannel(ifname, netns)
        self._poll_s = poll_s
        self.on_start = on_start
        self.starts = 0
        self.restarts = 0
        self.adopted = False
        self.pid: int | None = None  # no process: the kernel holds the device
        self.mtu: int | None = 1420
        self.created_by_choice = False  # the probe of `choose_data_plane` created the device just before

    def __repr__(self) -> str:
        return f"KernelWireGuard(ifname={self.ifname!r}, netns={self.netns!r})"

    @property
    def channel(self) -> GenlChannel:
        return self._channel

    async def _create(self) -> None:
        why = await asyncio.to_thread(create_kernel_link, self.ifname, self.mtu or 1420, self.netns)
        if why is not None and await asyncio.to_thread(link_kind, self.ifname, self.netns) != "wireguard":
            raise WireGuardUnavailable(why)

    async def ensure(self) -> None:
        kind = await asyncio.to_thread(link_kind, self.ifname, self.netns)
        if kind == "wireguard" and not self.created_by_choice:
            # Left by an earlier agent: its peers and sessions in place; MTU unknown until the driver sets it.
            self.adopted, self.mtu = True, None
            log.info("wireguard kernel device adopted", extra=kv(ifname=self.ifname))
        else:
            if kind is not None and kind != "wireguard":
                raise WireGuardUnavailable(f"{self.ifname} exists as a {kind or 'kind-less'} device, "
                                           f"not a kernel WireGuard one")
            if kind is None:
                await self._create()
            self.adopted = False
            log.info("wireguard kernel device created", extra=kv(ifname=self.ifname))
        self.created_by_choice = False
        self.starts += 1
        if self.on_start is not None:
            self.on_start()

    async def supervise(self) -> None:
        """Run forever: create the device again when it disappears (someone ran `ip link del`)."""
        if self.starts == 0:
            await self.ensure()
        while True:
            await asyncio.sleep(self._poll_s)
            if await asyncio.to_thread(link_kind, self.ifname, self.netns) is not None:
                continue
            log.warning("wireguard kernel device is gone; creating it again", extra=kv(ifname=self.ifname))
            try:
                await self._create()
            except (OSError, WireGuardUnavailable) as exc:
                log.error("wireguard kernel device cannot be created", extra=kv(ifname=self.ifname, error=str(exc)))
                continue
            self.mtu = None  # the driver writes its MTU again
            self.starts += 1
            self.restarts += 1
            if self.on_start is not None:
                self.on_start()

    async def stop(self) -> bool:
        """Delete the device (its peers and sessions go with it); True when there was one."""
        return await asyncio.to_thread(delete_link, self.ifname, self.netns)


@dataclass(frozen=True)
class Choice:
    plane: WgDataPlane
    reason: str  # why this one: logged at start, shown in /readyz


@dataclass(frozen=True)
class Probe:
    kernel: bool  # the kernel can hold the device
    created: bool  # the probe created it (then left it in place for `KernelWireGuard.ensure`)
    reason: str


def probe_kernel(ifname: str, netns: str | None = None, mtu: int = 1420) -> Probe:
    """Steps 2-4 of the module docstring."""
    kind = link_kind(ifname, netns)
    if kind == "wireguard":
        return Probe(True, False, f"{ifname} is a kernel WireGuard device already")
    if kind is not None:
        return Probe(False, False, f"{ifname} exists as a {kind or 'kind-less'} device (wireguard-go's tun)")
    why = create_kernel_link(ifname, mtu, netns)
    if why is not None:
        return Probe(False, False, f"no kernel WireGuard ({why})")
    if not family_registered(netns):
        delete_link(ifname, netns)
        return Probe(False, False, "no kernel WireGuard (a device was created but the genl family 'wireguard' is "
                                   "missing)")
    return Probe(True, True, "the kernel module answered (device created, genl family 'wireguard' registered)")


async def choose_data_plane(implementation: Implementation = "auto", ifname: str = WG_IFNAME,
                            netns: str | None = None, socket_dir: Path = SOCKET_DIR) -> Choice:
    """The device's data plane (see the module docstring)."""
    go = WireGuardGo(ifname, socket_dir=socket_dir, netns=netns)
    if implementation == USERSPACE:
        return Choice(go, "--wireguard-implementation=wireguard-go")
    if implementation == "auto" and await go.uapi.available():
        return Choice(go, f"a running wireguard-go answers on {go.uapi.path} (adopted)")
    probe = await asyncio.to_thread(probe_kernel, ifname, netns)
    if not probe.kernel:
        if implementation == KERNEL:
            raise WireGuardUnavailable(f"--wireguard-implementation=kernel: {probe.reason}")
        return Choice(go, probe.reason)
    plane = KernelWireGuard(ifname, netns=netns)
    plane.created_by_choice = probe.created
    return Choice(plane, probe.reason)
