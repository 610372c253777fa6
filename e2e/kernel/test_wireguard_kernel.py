"""The kernel WireGuard data plane for real: to run inside a VM whose kernel has WireGuard (Debian's 6.1, see
../shared/ENVIRONMENT.md's VM section); skipped on a kernel without it (this host's).

Two namespaces joined by a veth (192.0.2.1, 192.0.2.2), each with an inner address on lo (241.0.0.N/32) routed to
the other through raven-wg0, as the plan does with --vpn-driver=wireguard. Everything goes through Raven's own
code: `choose_data_plane("auto")` must pick the kernel (creating the device over rtnetlink), the driver writes
the peers over generic netlink (`GenlChannel`, wgnetlink's messages), and then:
- inner traffic flows both ways; `wg show` (the reference tool, reading over its own netlink code) sees our
  private key's public half, the pair's preshared key, the endpoint, the keepalive, the /32 allowed IP and a
  handshake; the driver's `states()` says ESTABLISHED;
- a second reconcile writes nothing (the kernel's dump parsed back into what we wrote: the diff is empty);
- 1,000 more peers in one reconcile (several WG_CMD_SET_DEVICE messages: a nested attribute holds 64 KiB at most)
  are all there afterwards, and removing them again leaves the tunnel working;
- a second agent adopts the device (no handshake lost: traffic during the adoption);
- the device deleted under the supervisor is created again and reconfigured;
- `stop()` (--cleanup) deletes it.

Run: `python -m pytest -q e2e/kernel/test_wireguard_kernel.py` as root inside the VM, or
`python -m e2e.kernel.test_wireguard_kernel` (prints each step and its duration).
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from raven.dataplane.state import IPsecConnection
from raven.dataplane.wgkernel import KernelWireGuard, choose_data_plane, probe_kernel
from raven.dataplane.wireguard import WireGuardDriver, pair_psk, public_key
from tests.dataplane.test_ipsec import wait_for

pytestmark = pytest.mark.root

SECRET = "rvwv-vm-cluster-secret-51c3"
IFNAME = "raven-wg0"
NS = ("rvwv-a", "rvwv-b")  # fixed names (no Lab: this runs inside a VM); not the prefix of any Lab
PORT = 51820


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def ping(ns: str, src: str, dst: str, count: int = 1) -> bool:
    return in_ns(ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-I", src, dst,
                 check=False).returncode == 0


def teardown() -> None:
    for ns in NS:
        sh("ip", "netns", "del", ns, check=False)


def lab() -> None:
    teardown()
    for i, ns in enumerate(NS, start=1):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"241.0.0.{i}/32", "dev", "lo")
    sh("ip", "link", "add", "rvwv-va", "netns", NS[0], "type", "veth", "peer", "name", "rvwv-vb", "netns", NS[1])
    for i, (ns, dev) in enumerate(zip(NS, ("rvwv-va", "rvwv-vb"), strict=True), start=1):
        sh("ip", "-n", ns, "addr", "add", f"192.0.2.{i}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")


def conn(me: int, peer: int, peer_key: bytes, dial: bool) -> IPsecConnection:
    return IPsecConnection(
        name=f"raven-gw-{peer}", local_id=f"gw-{me}", remote_id=f"gw-{peer}", local_addrs=(f"192.0.2.{me}",),
        remote_addrs=(f"192.0.2.{peer}",) if dial else ("%any",), remote_port=PORT, local_ts=f"241.0.0.{me}/32",
        remote_ts=f"241.0.0.{peer}/32", initiator=dial, local_port=PORT, local_node=f"node-{me}",
        peer_node=f"node-{peer}", peer_public_key=public_key(peer_key))


def extra_peers(n: int) -> list[IPsecConnection]:
    """`n` peers that are never dialled (random keys, no endpoint: nothing is sent to them)."""
    out = []
    for i in range(n):
        key = X25519PrivateKey.generate().private_bytes_raw()
        a, b = divmod(i, 250)
        out.append(IPsecConnection(
            name=f"raven-x-{i}", local_id="gw-1", remote_id=f"x-{i}", local_addrs=("192.0.2.1",),
            remote_addrs=("%any",), remote_port=PORT, local_ts="241.0.0.1/32",
            remote_ts=f"242.{a}.{b + 1}.1/32", initiator=False, local_port=PORT, local_node="node-1",
            peer_node=f"x-{i}", peer_public_key=public_key(key)))
    return out


def wg_dump(ns: str) -> list[list[str]]:
    return [line.split("\t") for line in in_ns(ns, "wg", "show", IFNAME, "dump").stdout.splitlines()]


async def scenario(say: Callable[[str], None]) -> None:
    keys = [X25519PrivateKey.generate().private_bytes_raw() for _ in NS]
    drivers: list[WireGuardDriver] = []
    for i, ns in enumerate(NS):
        choice = await choose_data_plane("auto", ifname=IFNAME, netns=ns)
        assert isinstance(choice.plane, KernelWireGuard), choice.reason
        assert choice.reason.startswith("the kernel module answered"), choice.reason
        await choice.plane.ensure()
        assert not choice.plane.adopted and choice.plane.starts == 1  # created by the probe, not "adopted"
        driver = WireGuardDriver(keys[i], SECRET, port=PORT, ifname=IFNAME, process=choice.plane)
        driver.device_mtu = 1440
        drivers.append(driver)
        peer = 2 if i == 0 else 1
        sh("ip", "-n", ns, "route", "add", f"241.0.0.{peer}/32", "dev", IFNAME, "src", f"241.0.0.{i + 1}")
    say("both devices created by choose_data_plane(auto): kernel")
    a, b = drivers
    ra = await a.reconcile([conn(1, 2, keys[1], dial=True)])
    rb = await b.reconcile([conn(2, 1, keys[0], dial=False)])
    assert ra.ok and rb.ok and ra.writes.get("uapi_set") == 1 and rb.writes.get("uapi_set") == 1, (ra, rb)
    assert await wait_for(lambda: ping(NS[0], "241.0.0.1", "241.0.0.2")), "no inner traffic a -> b"
    assert ping(NS[1], "241.0.0.2", "241.0.0.1"), "no inner traffic b -> a"
    say("inner traffic both ways over the kernel devices")

    # The reference tool's view of what our generic-netlink messages wrote.
    dev, wpeer = wg_dump(NS[0])
    assert dev[1] == public_key(keys[0]) and dev[2] == str(PORT), dev
    assert wpeer[0] == public_key(keys[1]), wpeer
    assert base64.b64decode(wpeer[1]) == pair_psk(SECRET, "node-1", "node-2"), "preshared key"
    assert wpeer[2] == f"192.0.2.2:{PORT}" and wpeer[3] == "241.0.0.2/32" and int(wpeer[4]) > 0, wpeer
    assert wpeer[7] == "25", wpeer  # persistent keepalive
    link = sh("ip", "-n", NS[0], "-d", "link", "show", IFNAME).stdout
    assert "wireguard" in link and "mtu 1440" in link and ",UP" in link, link
    b_peer = wg_dump(NS[1])[1]
    assert b_peer[2].startswith("192.0.2.1:") and b_peer[7] == "off", b_peer  # learnt from the handshake
    states = await a.states()
    assert [(s.name, s.ike_state) for s in states] == [("raven-gw-2", "ESTABLISHED")], states
    say("wg show agrees: keys, psk, endpoint, allowed IP, keepalive, handshake; states() ESTABLISHED")

    again = await a.reconcile([conn(1, 2, keys[1], dial=True)])
    assert again.ok and not again.writes, again.writes
    say("a second reconcile writes nothing (the kernel's dump parses back into the desired device)")

    many = extra_peers(1000)
    t0 = time.perf_counter()
    r = await a.reconcile([conn(1, 2, keys[1], dial=True), *many])
    took = time.perf_counter() - t0
    assert r.ok, r.errors
    info = await a.process.channel.get()
    assert len(info.peers) == 1001 and len(wg_dump(NS[0])) == 1002
    converged = await a.reconcile([conn(1, 2, keys[1], dial=True), *many])
    assert converged.ok and not converged.writes
    assert ping(NS[0], "241.0.0.1", "241.0.0.2")
    r = await a.reconcile([conn(1, 2, keys[1], dial=True)])
    assert r.ok and len((await a.process.channel.get()).peers) == 1
    assert ping(NS[0], "241.0.0.1", "241.0.0.2")
    say(f"1,000 extra peers written over generic netlink in {took:.2f} s (in the VM), read back, removed")

    # A new agent adopts the device: traffic keeps flowing during the adoption.
    sender = subprocess.Popen(["ip", "netns", "exec", NS[0], "ping", "-n", "-q", "-c", "50", "-i", "0.05",  # noqa: ASYNC220
                               "-I", "241.0.0.1", "241.0.0.2"], stdout=subprocess.PIPE, text=True)
    choice = await choose_data_plane("auto", ifname=IFNAME, netns=NS[0])
    assert isinstance(choice.plane, KernelWireGuard) and "already" in choice.reason, choice.reason
    adopter = WireGuardDriver(keys[0], SECRET, port=PORT, ifname=IFNAME, process=choice.plane)
    await choice.plane.ensure()
    assert choice.plane.adopted
    r = await adopter.reconcile([conn(1, 2, keys[1], dial=True)])
    assert r.ok and not r.writes.get("uapi_set"), r.writes  # nothing to write: the peers are in place
    out, _ = sender.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    say("a second driver adopts the device, writes no peer, loses no packet")

    # Deleted under the supervisor: created again, the next reconcile writes everything back.
    plane = choice.plane
    plane_poll = KernelWireGuard(IFNAME, netns=NS[0], poll_s=0.1)
    plane_poll.starts, plane_poll.adopted = 1, True
    restarted = asyncio.Event()
    plane_poll.on_start = restarted.set
    sup_driver = WireGuardDriver(keys[0], SECRET, port=PORT, ifname=IFNAME, process=plane_poll)
    await sup_driver.reconcile([conn(1, 2, keys[1], dial=True)])
    task = asyncio.ensure_future(plane_poll.supervise())
    try:
        sh("ip", "-n", NS[0], "link", "del", IFNAME)
        await asyncio.wait_for(restarted.wait(), 10)
        assert plane_poll.restarts == 1
        sup_driver.device_mtu = 1440
        r = await sup_driver.reconcile([conn(1, 2, keys[1], dial=True)])
        assert r.ok and r.writes.get("uapi_set") == 1, r
        sh("ip", "-n", NS[0], "route", "replace", "241.0.0.2/32", "dev", IFNAME, "src", "241.0.0.1")
        assert await wait_for(lambda: ping(NS[0], "241.0.0.1", "241.0.0.2")), "no traffic after re-creation"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    say("deleted under the supervisor: created again, reconfigured, traffic back")

    assert await plane.stop()
    assert sh("ip", "-n", NS[0], "link", "show", IFNAME, check=False).returncode != 0
    assert not await plane.stop()
    say("stop() (--cleanup) deletes the device")


@pytest.fixture
def netns() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab()
    try:
        if not probe_kernel("rvwv-probe", NS[0]).kernel:
            pytest.skip("this kernel has no WireGuard (run inside the VM tier)")
        sh("ip", "-n", NS[0], "link", "del", "rvwv-probe")
        yield
    finally:
        teardown()


def test_kernel_wireguard_configured_over_generic_netlink_carries_traffic(netns: None) -> None:
    asyncio.run(scenario(lambda _: None))


if __name__ == "__main__":
    lab()
    try:
        if not probe_kernel("rvwv-probe", NS[0]).kernel:
            print("this kernel has no WireGuard", file=sys.stderr)
            sys.exit(2)
        sh("ip", "-n", NS[0], "link", "del", "rvwv-probe")
        started = time.monotonic()

        def say(what: str) -> None:
            print(f"[{time.monotonic() - started:7.2f} s] ok: {what}", flush=True)

        asyncio.run(scenario(say))
        print("PASS")
    finally:
        teardown()
