"""The kernel applier: one node's read -> diff -> apply loop over its Raven-owned kernel objects.

Public surface (what the agent's reconciler calls)::

    applier = KernelApplier(Ownership(), netns=None, on_write=None)
    report = await applier.reconcile(desired)   # read -> diff -> apply; ApplyReport
    observed = await applier.read()              # Observed (owned objects only)
    changes = diff(desired, observed)            # pure (raven.dataplane.diff)
    report = await applier.apply(changes)
    report = await applier.cleanup()             # remove everything owned, nothing else
    await applier.close()

This module owns the sockets, threads and the pass itself; the parts live beside it: what is owned and
how it is read (`kernel_read`), the pure diff (`diff`), the writes over the one netlink path
(`kernel_write`, `rtnl`), sysctls (`sysctl`), the MSS chain (`mssclamp`), the report (`report`).

Also kept by `reconcile`: `net.ipv4.ip_forward=1` and loose reverse-path filtering (rp_filter=2) on
Raven's devices, written only when they differ. `cleanup` removes the devices (and with them their
sysctls) but leaves ip_forward alone: other software on the node relies on it too. A converged
reconcile writes nothing; a gateway failover seen by a non-gateway node is one neighbour and one FDB
replace.

`netns` (tests, tools) runs everything inside a named network namespace; the agent passes None.
After `close()` the applier cannot be used again. Errors never abort a reconcile half way: each
failed write is reported in `ApplyReport.errors` and the rest is applied; the next reconcile retries.
A failure to read (netns gone, netlink socket broken) raises `KernelError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from raven.dataplane import rtnl
from raven.dataplane.diff import Changes, Observed, diff
from raven.dataplane.kernel_read import KernelError, Ownership, read_observed
from raven.dataplane.kernel_write import Writer
from raven.dataplane.mssclamp import MssClamp, MssState
from raven.dataplane.report import ApplyError, ApplyReport
from raven.dataplane.state import NodeNetwork, VxlanLink
from raven.dataplane.sysctl import ensure_sysctls, read_sysctls
from raven.log import kv

__all__ = ["ApplyError", "ApplyReport", "Changes", "KernelApplier", "KernelError", "Observed", "Ownership", "diff"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class KernelApplier:
    """Reads, diffs and applies Raven's kernel objects on one node (or inside `netns`)."""

    def __init__(
        self,
        owner: Ownership | None = None,
        *,
        netns: str | None = None,
        on_write: Callable[[str, int], None] | None = None,
    ) -> None:
        self.owner = owner or Ownership()
        self.netns = netns
        self._on_write = on_write
        self._rt: rtnl.RouteSocket | None = None
        # One worker thread for the blocking parts (the netlink socket, sysctls): the loop stays free.
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="raven-kernel")
        # iptables runs as a subprocess: its own thread, so it overlaps with the route dump.
        self._aux = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="raven-iptables")
        self._mss = MssClamp(self.owner.mss_chain, netns)
        self._ifindex: dict[str, int] = {}

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def _in_aux(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._aux, fn, *args)

    async def _open(self) -> rtnl.RouteSocket:
        if self._rt is None:
            self._rt = await self._in_worker(rtnl.RouteSocket, self.netns)
        assert self._rt is not None
        return self._rt

    async def close(self) -> None:
        if self._rt is not None:
            rt, self._rt = self._rt, None
            # In the worker, after whatever still runs there (a cancelled apply leaves its send running):
            # closing the socket under that thread could hand its fd number to another socket meanwhile.
            await self._in_worker(rt.close)
        self._worker.shutdown(wait=False)
        self._aux.shutdown(wait=False)

    async def _reset(self) -> None:
        """Drop the socket after a failure (in the worker, after whatever runs there); the next call reopens it."""
        if self._rt is not None:
            rt, self._rt = self._rt, None
            await self._in_worker(rt.close)

    # ---- read ---------------------------------------------------------------------------------

    async def read(self) -> Observed:
        try:
            if self.netns is not None and not await self._in_aux(os.path.exists, f"/run/netns/{self.netns}"):
                # Sockets opened inside it keep a deleted namespace alive: only its name tells it is gone.
                raise FileNotFoundError(errno.ENOENT, f"network namespace {self.netns} is gone")
            rt = await self._open()
            observed, self._ifindex = await read_observed(rt, self.owner, self._worker, self._read_mss)
            return observed
        except OSError as exc:
            await self._reset()
            raise KernelError(f"reading kernel state failed: {exc}") from exc

    async def _read_mss(self) -> MssState:
        """The MSS chain, or "unknown" when iptables cannot run (missing from the image, a broken backend).

        The clamp is an optimisation next to devices and routes: its failure must not stop them from being
        applied. Unknown reads as unexpected content, so `apply` tries to rewrite the chain and reports the
        same failure as an iptables error on every pass.
        """
        try:
            return await self._in_aux(self._mss.read)
        except OSError as exc:
            log.debug("mss chain unreadable", extra=kv(chain=self.owner.mss_chain, error=str(exc)))
            return MssState(jumped=False, ifnames=None)

    # ---- apply --------------------------------------------------------------------------------

    async def reconcile(self, desired: NodeNetwork) -> ApplyReport:
        """Read, diff, apply; also keeps the sysctls Raven's devices need. Zero writes when converged."""
        start = time.perf_counter()
        observed = await self.read()
        changes = diff(desired, observed)
        report = await self.apply(changes, _start=start)
        if desired.links:
            await self._sysctls(desired.links, report)
        report.duration_s = time.perf_counter() - start
        return report

    def _writer(self, rt: rtnl.RouteSocket, report: ApplyReport) -> Writer:
        return Writer(rt, self._ifindex, protocol=self.owner.rt_proto, report=report, in_worker=self._in_worker,
                      on_write=self._on_write)  # fmt: skip

    async def apply(self, changes: Changes, *, _start: float | None = None) -> ApplyReport:
        start = time.perf_counter() if _start is None else _start
        report = ApplyReport()
        if changes.empty:
            report.duration_s = time.perf_counter() - start
            return report
        rt = await self._open()
        w = self._writer(rt, report)
        # The MSS chain (iptables, its own thread) names devices, needs none to exist: written meanwhile.
        mss_job = asyncio.ensure_future(self._write_mss(changes.mss, w)) if changes.mss is not None else None
        try:
            await w.apply(changes)
        except rtnl.NetlinkError as exc:
            # The socket broke mid-batch: outcome unknown, start afresh next time.
            w.error("route", "send", "batch", str(exc))
            await self._reset()
        finally:
            if mss_job is not None:
                await mss_job
        report.duration_s = time.perf_counter() - start
        if report.total_writes or report.errors:
            written = {k: v for k, v in report.writes.items() if v}
            ms = round(report.duration_s * 1000, 1)
            errors = len(report.errors)
            log.info("kernel applied", extra=kv(writes=report.total_writes, **written, errors=errors, ms=ms))
        return report

    async def _write_mss(self, ifnames: frozenset[str], w: Writer) -> None:
        try:
            current = await self._in_aux(self._mss.read)
            w.count("iptables", await self._in_aux(self._mss.write, sorted(ifnames), current))
        except OSError as exc:
            w.error("iptables", "write", self.owner.mss_chain, str(exc))

    async def _sysctls(self, links: Iterable[VxlanLink], report: ApplyReport) -> None:
        """Loose rp_filter on Raven's devices, and IPv4 forwarding on.

        Per-device settings are written over rtnetlink (RTM_SETLINK), which needs CAP_NET_ADMIN only: in a
        non-privileged container /proc/sys is read-only. The global ip_forward has no netlink setter; a
        Kubernetes node has it on already (the CNI needs it), so it is written only when off.
        """
        # Loose reverse-path filtering: replies from remote pools arrive on Raven's devices while the
        # main table knows another way back to those sources (or none).
        devices = {f"net.ipv4.conf.{link.name}.rp_filter": link.name for link in links if link.name in self._ifindex}
        try:
            current = await self._in_worker(read_sysctls, self.netns, ["net.ipv4.ip_forward", *devices])
        except OSError as exc:
            report.errors.append(ApplyError("sysctl", "read", ",".join(sorted(devices)), str(exc)))
            return
        written: list[str] = []
        todo = [(key, name) for key, name in sorted(devices.items()) if current[key] != "2"]
        if todo:
            rt = await self._open()
            written += await self._writer(rt, report).rp_filter(todo)
        if current["net.ipv4.ip_forward"] != "1":
            try:
                keys: list[str] = await self._in_worker(ensure_sysctls, self.netns, {"net.ipv4.ip_forward": "1"})
            except OSError as exc:
                report.errors.append(ApplyError(
                    "sysctl", "write", "net.ipv4.ip_forward",
                    f"forwarding is off and cannot be turned on here ({exc}); enable it on the node",
                ))  # fmt: skip
            else:
                written += keys
                report.writes["sysctl"] += len(keys)
                if self._on_write is not None and keys:
                    self._on_write("sysctl", len(keys))
        if written:
            log.info("sysctl written", extra=kv(keys=",".join(written)))

    async def cleanup(self) -> ApplyReport:
        """Remove every owned object (links, routes, rules, neighbours, FDB, the MSS chain) and nothing else."""
        start = time.perf_counter()
        observed = await self.read()
        changes = diff(NodeNetwork(), observed)
        report = await self.apply(changes, _start=start)
        if changes.mss is None:
            # Remove a half-installed chain too (no jump or unexpected rules).
            try:
                removed = await self._in_aux(self._mss.remove)
            except OSError as exc:
                report.errors.append(ApplyError("iptables", "remove", self.owner.mss_chain, str(exc)))
            else:
                report.writes["iptables"] += removed
        report.duration_s = time.perf_counter() - start
        log.info("kernel cleanup", extra=kv(writes=report.total_writes, errors=len(report.errors)))
        return report
