"""The WireGuard driver with real wireguard-go daemons in namespaces (and `wg` itself as the reference client).

Topology: a switch namespace with a bridge; gateways ga, gb on it (192.0.2.1/.2). Each gateway holds an inner
address on lo (241.0.0.N/32) and routes the other's inner address into its WireGuard device, as the plan does
with --vpn-driver=wireguard; the driver configures the peers over UAPI.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.netlab import Lab, Netns
from raven.dataplane.state import IPsecConnection
from raven.dataplane.wireguard import (
    SOCKET_DIR,
    DeviceInfo,
    WireGuardDriver,
    WireGuardGo,
    desired_peers,
    pair_psk,
    public_key,
    set_lines,
)
from tests.dataplane.conftest import root_lab
from tests.dataplane.test_ipsec import ping, wait_for

pytestmark = pytest.mark.root

SECRET = "rvwg-test-cluster-secret-7d1f"
PREFIX = "rvwg"


@dataclass
class Gw:
    name: str
    idx: int
    ns: Netns
    key: bytes
    driver: WireGuardDriver

    @property
    def inner(self) -> str:
        return f"241.0.0.{self.idx}"

    @property
    def underlay(self) -> str:
        return f"192.0.2.{self.idx}"

    @property
    def ifname(self) -> str:
        return f"rvwg-{self.name}"  # one socket per device in the shared /run/wireguard


def conn(me: Gw, peer: Gw, dial: bool = True, key: str | None = None) -> IPsecConnection:
    return IPsecConnection(
        name=f"raven-{peer.name}", local_id=me.name, remote_id=peer.name, local_addrs=(me.underlay,),
        remote_addrs=(peer.underlay,) if dial else ("%any",), remote_port=4500, local_ts=f"{me.inner}/32",
        remote_ts=f"{peer.inner}/32", initiator=dial, local_port=4500, local_node=f"node-{me.name}",
        peer_node=f"node-{peer.name}", peer_public_key=public_key(peer.key) if key is None else key)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from root_lab(PREFIX)


def new_key() -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate().private_bytes_raw()


@pytest.fixture
async def gws(lab: Lab) -> AsyncIterator[dict[str, Gw]]:
    sw = lab.netns("sw")
    sw.add_bridge("br0")
    out: dict[str, Gw] = {}
    for i, name in enumerate(("ga", "gb"), start=1):
        ns = lab.netns(name)
        lab.veth(ns, "eth0", sw, f"p{name}")
        sw.ip("link", "set", f"p{name}", "master", "br0")
        ns.add_addr("eth0", f"192.0.2.{i}/24")
        ns.add_addr("lo", f"241.0.0.{i}/32")
        key = new_key()
        gw = Gw(name, i, ns, key, WireGuardDriver(key, SECRET, ifname=""))
        gw.driver = WireGuardDriver(key, SECRET, ifname=gw.ifname,
                                    process=WireGuardGo(gw.ifname, netns=ns.name, poll_s=0.1))
        out[name] = gw
    supervisors: list[asyncio.Task[None]] = []
    try:
        for gw in out.values():
            await gw.driver.process.ensure()
            gw.driver.device_mtu = 1440
            supervisors.append(asyncio.ensure_future(gw.driver.process.supervise()))
        for gw in out.values():
            peer = out["gb" if gw.name == "ga" else "ga"]
            gw.ns.ip("route", "add", f"{peer.inner}/32", "dev", gw.ifname, "src", gw.inner)
        yield out
    finally:
        for t in supervisors:
            t.cancel()
        for gw in out.values():
            await gw.driver.cleanup()
            (SOCKET_DIR / f"{gw.ifname}.log").unlink(missing_ok=True)


async def up(ga: Gw, gb: Gw) -> None:
    """ga dials gb, gb only answers; inner traffic flows."""
    assert (await ga.driver.reconcile([conn(ga, gb)])).ok
    assert (await gb.driver.reconcile([conn(gb, ga, dial=False)])).ok
    assert await wait_for(lambda: ping(ga.ns, ga.inner, gb.inner, 1))


async def handshaken(gw: Gw, name: str) -> bool:
    return any(t.name == name and t.ike_state == "ESTABLISHED" for t in await gw.driver.states())


async def test_tunnel_carries_inner_traffic_with_the_pair_psk(gws: dict[str, Gw]) -> None:
    ga, gb = gws["ga"], gws["gb"]
    ra = await ga.driver.reconcile([conn(ga, gb)])
    rb = await gb.driver.reconcile([conn(gb, ga, dial=False)])
    assert ra.ok and rb.ok and ra.writes["uapi_set"] == 1
    assert await wait_for(lambda: ping(ga.ns, ga.inner, gb.inner, 1))
    assert await handshaken(ga, "raven-gb") and await handshaken(gb, "raven-ga")
    info = await gb.driver.process.uapi.get()
    (peer,) = info.peers.values()
    assert peer.preshared_key == pair_psk(SECRET, "node-ga", "node-gb").hex()
    assert peer.allowed_ips == frozenset({f"{ga.inner}/32"})
    # gb only answers: it learnt ga's endpoint from the handshake (what NAT traversal reads).
    assert await gb.driver.observed_endpoints() == {"raven-ga": f"{ga.underlay}:4500"}
    # The device MTU is the plan's, the link is up.
    link = ga.ns.run(["ip", "-o", "link", "show", ga.ifname]).stdout
    assert "mtu 1440" in link and ",UP" in link
    # Equal again: nothing written.
    again = await ga.driver.reconcile([conn(ga, gb)])
    assert again.ok and again.total_writes == 0


async def test_wrong_cluster_secret_cannot_exchange_traffic(gws: dict[str, Gw]) -> None:
    ga, gb = gws["ga"], gws["gb"]
    gb.driver = WireGuardDriver(gb.key, SECRET + "-wrong", ifname=gb.ifname, process=gb.driver.process)
    await ga.driver.reconcile([conn(ga, gb)])
    await gb.driver.reconcile([conn(gb, ga, dial=False)])
    # ga keeps initiating (its tx grows with every initiation); gb never answers: no session, no traffic.
    assert not ping(ga.ns, ga.inner, gb.inner, 3)
    info = await ga.driver.process.uapi.get()
    (peer,) = info.peers.values()
    assert peer.tx_bytes > 0 and peer.last_handshake == 0 and peer.rx_bytes == 0
    assert not await handshaken(gb, "raven-ga")
    # The right secret: the same pair works (so the failure above was the secret, nothing else).
    gb.driver = WireGuardDriver(gb.key, SECRET, ifname=gb.ifname, process=gb.driver.process)
    await gb.driver.reconcile([conn(gb, ga, dial=False)])
    assert await wait_for(lambda: ping(ga.ns, ga.inner, gb.inner, 1))


async def test_killed_wireguard_go_is_restarted_and_reconfigured(gws: dict[str, Gw]) -> None:
    ga, gb = gws["ga"], gws["gb"]
    await up(ga, gb)
    proc = gb.driver.process
    starts = proc.starts
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    assert await wait_for(lambda: proc.starts > starts)  # the supervisor started it again
    assert proc.restarts == 1 and gb.driver.connects == starts + 1
    # A new device: no peers, and the route through it went with the old one (the kernel pass re-adds it).
    assert (await proc.uapi.get()).peers == {}
    gb.ns.ip("route", "replace", f"{ga.inner}/32", "dev", gb.ifname, "src", gb.inner)
    report = await gb.driver.reconcile([conn(gb, ga, dial=False)])
    assert report.ok and report.writes["uapi_set"] == 1
    assert await wait_for(lambda: ping(ga.ns, ga.inner, gb.inner, 1))


async def test_agent_restart_adopts_the_running_daemon_without_a_new_handshake(gws: dict[str, Gw]) -> None:
    ga, gb = gws["ga"], gws["gb"]
    await up(ga, gb)
    before = (await ga.driver.process.uapi.get()).peers
    # A second agent process for the same device: adopts it, writes no peer.
    adopter = WireGuardDriver(ga.key, SECRET, ifname=ga.ifname, process=WireGuardGo(ga.ifname, netns=ga.ns.name))
    await adopter.process.ensure()
    assert adopter.process.adopted and adopter.connects == 1
    report = await adopter.reconcile([conn(ga, gb)])
    assert report.ok and "uapi_set" not in report.writes
    after = (await ga.driver.process.uapi.get()).peers
    assert [p.last_handshake for p in after.values()] == [p.last_handshake for p in before.values()]


async def test_a_node_whose_key_changed_rejoins(gws: dict[str, Gw]) -> None:
    ga, gb = gws["ga"], gws["gb"]
    await up(ga, gb)
    old_pub = public_key(gb.key)
    gb.key = new_key()  # rotated (key file deleted, agent restarted): the new key is published
    gb.driver = WireGuardDriver(gb.key, SECRET, ifname=gb.ifname, process=gb.driver.process)
    await gb.driver.reconcile([conn(gb, ga, dial=False)])
    assert not ping(ga.ns, ga.inner, gb.inner, 1)  # ga still has the old key
    report = await ga.driver.reconcile([conn(ga, gb)])
    assert report.ok
    peers = (await ga.driver.process.uapi.get()).peers
    assert list(peers) == [base64.b64decode(public_key(gb.key)).hex()]
    assert base64.b64decode(old_pub).hex() not in peers
    assert await wait_for(lambda: ping(ga.ns, ga.inner, gb.inner, 1))


class FakeUapi:
    """A UAPI socket that records each request and answers errno=0 (to see what `wg` itself sends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path.unlink(missing_ok=True)
        self._sock.bind(str(path))
        self._sock.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with c:
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    continue  # `wg` first connects once only to see that the socket is there
                self.requests.append(data.decode())
                c.sendall(b"errno=0\n\n" if data.startswith(b"set=1") else b"listen_port=0\nerrno=0\n\n")

    def close(self) -> None:
        self._sock.close()
        self.path.unlink(missing_ok=True)


def test_set_lines_are_what_wg_sends(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for /run/wireguard")
    SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    fake = FakeUapi(SOCKET_DIR / "rvwgfake.sock")
    try:
        me, peer = new_key(), new_key()
        c = IPsecConnection(name="raven-gb", local_id="ga", remote_id="gb", local_addrs=("192.0.2.1",),
                            remote_addrs=("192.0.2.2",), remote_port=4500, local_ts="241.0.0.1/32",
                            remote_ts="241.0.0.2/32", initiator=True, local_node="a", peer_node="b",
                            peer_public_key=public_key(peer))
        desired, _ = desired_peers([c], SECRET)
        ours = set_lines(DeviceInfo(), me.hex(), 4500, desired, {})
        (tmp_path / "priv").write_text(base64.b64encode(me).decode())
        (tmp_path / "psk").write_text(base64.b64encode(pair_psk(SECRET, "a", "b")).decode())
        subprocess.run(["wg", "set", "rvwgfake", "private-key", str(tmp_path / "priv"), "listen-port", "4500",
                        "peer", public_key(peer), "preshared-key", str(tmp_path / "psk"),
                        "endpoint", "192.0.2.2:4500", "persistent-keepalive", "25",
                        "allowed-ips", "241.0.0.2/32"], check=True, capture_output=True, timeout=10)
        sets = [r for r in fake.requests if r.startswith("set=1")]
        assert len(sets) == 1
        theirs = sets[0].removeprefix("set=1\n").rstrip("\n").split("\n")
        assert sorted(ours) == sorted(theirs)
        # And the order of the peer's lines: public_key first, then its attributes, allowed IPs after replace.
        assert theirs.index(f"public_key={base64.b64decode(public_key(peer)).hex()}") < theirs.index(
            "replace_allowed_ips=true") < theirs.index("allowed_ip=241.0.0.2/32")
    finally:
        fake.close()


def test_wireguard_go_outlives_the_process_objects_and_loop_that_started_it(lab: Lab) -> None:
    # An agent's exit closes its event loop and drops its objects; the wireguard-go it started must stay (the next
    # agent adopts it). asyncio would kill a child whose subprocess transport is closed or collected.
    import gc

    ns = lab.netns("gx")
    process = WireGuardGo("rvwg-gx", netns=ns.name)
    asyncio.run(process.ensure())
    pid = process.pid
    assert pid is not None
    try:
        del process
        gc.collect()
        time.sleep(0.2)
        os.kill(pid, 0)  # still there
        adopter = WireGuardGo("rvwg-gx", netns=ns.name)
        asyncio.run(adopter.ensure())
        assert adopter.adopted
    finally:
        asyncio.run(WireGuardGo("rvwg-gx", netns=ns.name).stop())
        (SOCKET_DIR / "rvwg-gx.log").unlink(missing_ok=True)


def test_stop_where_there_is_no_device_leaves_a_live_socket_alone(lab: Lab) -> None:
    # `--cleanup` stops WireGuard whatever --vpn-driver says; run in a namespace without the device (sharing /run
    # with the one that has it, as `ip netns exec` does), it must not take another wireguard-go's socket away.
    owner, other = lab.netns("so"), lab.netns("st")
    process = WireGuardGo("rvwg-so", netns=owner.name)
    asyncio.run(process.ensure())
    try:
        assert not asyncio.run(WireGuardGo("rvwg-so", netns=other.name).stop())  # no device there
        assert Path(process.uapi.path).exists()
        asyncio.run(process.uapi.get())  # still answering
        # A stale socket (its wireguard-go gone without removing it) is removed by anyone.
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        Path(process.uapi.path).touch()
    finally:
        asyncio.run(WireGuardGo("rvwg-so", netns=owner.name).stop())
        (SOCKET_DIR / "rvwg-so.log").unlink(missing_ok=True)
    assert not Path(process.uapi.path).exists()
