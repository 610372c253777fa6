"""The lab's own promises: namespaces, veths, processes, forwarding, and complete teardown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e.netlab import Lab, LabError, cleanup_prefix, find_leftovers

pytestmark = pytest.mark.root

PREFIX = "rvl"


def _nothing_left(found: dict[str, list[str]]) -> bool:
    return not any(found.values())


def test_veth_between_namespaces_carries_ping_and_names_stay_inside(lab: Lab) -> None:
    a, b = lab.netns_many(["va", "vb"])
    lab.veth(a, "eth0", b, "eth0")
    a.add_addr("eth0", "192.0.2.1/24")
    b.add_addr("eth0", "192.0.2.2/24")
    assert a.run(["ping", "-c", "1", "-W", "2", "192.0.2.2"], check=False).returncode == 0
    # Both ends live in their namespaces: nothing in the root namespace carries our names.
    assert find_leftovers(PREFIX)["links"] == []
    assert "192.0.2.1" in a.addresses()


def test_run_with_check_raises_on_failure_and_returns_text(lab: Lab) -> None:
    ns = lab.netns("cmd")
    assert ns.run(["echo", "hi"]).stdout == "hi\n"
    with pytest.raises(LabError):
        ns.run(["false"])
    assert ns.run(["false"], check=False).returncode == 1


def test_interface_names_longer_than_15_chars_are_refused(lab: Lab) -> None:
    a, b = lab.netns_many(["la", "lb"])
    with pytest.raises(ValueError):
        lab.veth(a, "x" * 16, b, "eth0")


def test_popen_logs_output_and_restart_starts_a_new_process(lab: Lab) -> None:
    ns = lab.netns("proc")
    proc = ns.popen(["sh", "-c", "echo started; exec sleep 60"], name="sleeper")
    first = proc.pid
    deadline = time.monotonic() + 5
    while "started" not in proc.stdout_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "started" in proc.stdout_path.read_text()
    assert ns.pids() == [first]
    proc.restart()
    assert proc.alive() and proc.pid != first
    proc.kill()
    assert not proc.alive()


def test_tcp_forward_from_root_loopback_into_a_namespace(lab: Lab) -> None:
    ns = lab.netns("srv")
    ns.add_addr("lo", "10.255.0.1/32")
    server = ns.popen(
        ["python3", "-c",
         "import socket\n"
         "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "s.bind(('10.255.0.1', 6443)); s.listen()\n"
         "while True:\n"
         "    c,_=s.accept(); c.sendall(b'hello from ns:'+c.recv(100)); c.close()\n"],
        name="server",
    )
    _, port = lab.forward_tcp("api", ("127.0.0.1", 0), ("10.255.0.1", 6443), connect_ns=ns)
    data = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not data:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                c.sendall(b"ping")
                c.shutdown(socket.SHUT_WR)
                data = c.recv(100)
        except OSError:
            time.sleep(0.05)
    assert data == b"hello from ns:ping", server.logs()


def test_close_removes_namespaces_processes_etc_and_mounts_even_with_charon() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = Lab(PREFIX)
    try:
        a, b = lab.netns_many(["ta", "tb"])
        lab.veth(a, "eth0", b, "eth0")
        a.start_charon()
        b.popen(["sleep", "60"], name="sleeper")
        assert not _nothing_left(find_leftovers(PREFIX))
        lab.close()
        assert _nothing_left(find_leftovers(PREFIX)), find_leftovers(PREFIX)
    finally:
        lab.close()  # idempotent (and the clean-up if anything above failed)


def test_cleanup_prefix_removes_leftovers_of_a_crashed_run() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    # A "crashed" run: namespaces, a config folder and a process, then no close() at all.
    subprocess.run(["ip", "netns", "add", f"{PREFIX}-crash"], check=True)
    Path(f"/etc/netns/{PREFIX}-crash").mkdir(parents=True, exist_ok=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", f"{PREFIX}-crash", "sleep", "60"],
                              start_new_session=True)
    try:
        time.sleep(0.1)
        assert f"{PREFIX}-crash" in cleanup_prefix(PREFIX)
        assert orphan.wait(5) is not None
        assert _nothing_left(find_leftovers(PREFIX))
    finally:
        orphan.kill()
        cleanup_prefix(PREFIX)


def test_prefix_is_validated() -> None:
    with pytest.raises(ValueError):
        Lab("Bad Prefix", clean_first=False)


_OTHER_RUN = """
import sys
from e2e.netlab import Lab, LabError, cleanup_prefix
try:
    if sys.argv[1] == "cleanup":
        cleanup_prefix(sys.argv[2])
    else:
        Lab(sys.argv[2]).close()
except LabError as e:
    print("refused:", e)
    sys.exit(3)
print("done")
"""


def _other_run(what: str, wait_s: float) -> subprocess.CompletedProcess[str]:
    """Another process (another engineer's pytest) using our prefix."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), RAVEN_LAB_LOCK_WAIT=str(wait_s))
    return subprocess.run([sys.executable, "-c", _OTHER_RUN, what, PREFIX], capture_output=True, text=True,
                          env=env, timeout=60)


def test_a_second_run_with_the_same_prefix_never_tears_down_a_live_lab(lab: Lab) -> None:
    ns = lab.netns("live")
    proc = ns.popen(["sleep", "60"], name="sleeper")
    # Neither a crash clean-up nor a new lab of another process may touch this one while it is open ...
    cleanup = _other_run("cleanup", wait_s=0)
    assert cleanup.returncode == 3 and "live lab" in cleanup.stdout, (cleanup.stdout, cleanup.stderr)
    second = _other_run("lab", wait_s=0.5)
    assert second.returncode == 3 and "still in use" in second.stdout, (second.stdout, second.stderr)
    assert ns.name in find_leftovers(PREFIX)["netns"] and proc.alive()
    # ... and once it is closed, the other process gets the prefix.
    lab.close()
    assert _other_run("lab", wait_s=5).stdout.strip() == "done"
    assert _nothing_left(find_leftovers(PREFIX))
