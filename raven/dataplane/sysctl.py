"""Sysctls read and written through /proc/sys (blocking; run in a worker thread), in the node's or a named namespace.

Only what has no rtnetlink setter goes through here (reading every key, and writing the global
`net.ipv4.ip_forward`); Raven's per-device IPv4 settings (rp_filter) are written over rtnetlink by
`raven.dataplane.kernel_write`, which works where /proc/sys is read-only. A value is written only
when it differs.
"""

from __future__ import annotations

from collections.abc import Iterable

from raven.dataplane.netns import in_netns


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctls(netns: str | None, keys: Iterable[str]) -> dict[str, str]:
    """Current values (blocking; run in a worker thread). Reading works where /proc/sys is read-only."""
    out: dict[str, str] = {}
    with in_netns(netns):
        for key in keys:
            with open(sysctl_path(key)) as f:
                out[key] = f.read().strip()
    return out


def ensure_sysctls(netns: str | None, wanted: dict[str, str]) -> list[str]:
    """Write each sysctl whose value differs (blocking; run in a worker thread). Returns the keys written."""
    written: list[str] = []
    with in_netns(netns):
        for key, value in sorted(wanted.items()):
            path = sysctl_path(key)
            with open(path) as f:
                current = f.read().strip()
            if current != value:
                with open(path, "w") as f:
                    f.write(value)
                written.append(key)
    return written
