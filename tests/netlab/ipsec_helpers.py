"""Small VICI helpers for the lab's IPsec tests (route-based form: inner /32 <-> inner /32)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from e2e.netlab import Charon

PSK = "rvl-test-psk-0123456789"


def load_inner_tunnel(charon: Charon, *, local_addrs: list[str], remote_addrs: list[str],
                      local_id: str, remote_id: str, inner_local: str, inner_remote: str,
                      port: int = 500, name: str = "rvl-tun") -> None:
    conn: dict[str, Any] = {
        name: {
            "version": 2,
            "local_addrs": local_addrs,
            "remote_addrs": remote_addrs,
            "remote_port": port,
            "proposals": ["aes256-sha256-modp2048"],
            "dpd_delay": "2s",
            "local": {"auth": "psk", "id": local_id},
            "remote": {"auth": "psk", "id": remote_id},
            "children": {
                "inner": {
                    "mode": "tunnel",
                    "local_ts": [f"{inner_local}/32"],
                    "remote_ts": [f"{inner_remote}/32"],
                    "esp_proposals": ["aes256-sha256"],
                    "start_action": "none",
                }
            },
        }
    }
    with charon.session() as s:
        s.load_conn(conn)
        s.load_shared({"type": "IKE", "data": PSK, "owners": [local_id, remote_id]})


def initiate(charon: Charon, name: str = "rvl-tun") -> None:
    with charon.session() as s:
        # Lazy generator: iterating sends the request and waits for the result.
        for _ in s.initiate({"ike": name, "child": "inner", "timeout": 10000}):
            pass


def ike_sas(charon: Charon) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with charon.session() as s:
        for ike in s.list_sas():
            out.extend(ike.values())
    return out


def child_sas(charon: Charon) -> list[dict[str, Any]]:
    return [c for ike in ike_sas(charon) for c in ike.get("child-sas", {}).values()]


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False
