"""The end-to-end runner: a whole Raven cluster (API server, controllers, charons, agents) in namespaces.

`RavenCluster` builds a topology with `e2e.topology`, then brings up everything a real deployment has:

- the test API server (`e2e.apiserver.ApiServer`) in this process, on a thread whose network namespace
  is the topology's control-plane netns: nodes reach it at ``https://<control plane ip>:6443`` over the
  emulated WAN and NAT routers, as a real control plane would be reached. Tests keep the in-process
  handle for fault injection (`drop_watches`), and talk to it over HTTP from that same thread;
- the Gateway and PathReport CRDs (``manifests/01-crd-gateways.yaml``, ``01-crd-pathreports.yaml``), every Node
  (InternalIP, podCIDR, Ready, gateway label) and every Gateway of the topology (some may be held back for churn tests);
- one charon per node (kernel-libipsec, `Netns.start_charon`), or with `vpn_driver="wireguard"` none: each agent
  starts wireguard-go itself (its key file and /run/wireguard in the node's run directory, the cluster PSK file);
- per node, what its DaemonSet pod gets: a kubeconfig with a token bound to that node (like a pod's
  bound service-account token: `ApiServer.add_node_token`), the charon socket, and its identity
  directory (the agent makes its key and gets its certificate from the controllers' signer), or with
  `ipsec_auth="psk"` the cluster PSK file instead;
- two controller replicas with leader election in the control-plane netns;
- one agent per node inside that node's netns, next to its charon.

Every process logs under the lab's run directory (``<run_dir>/<netns short name>/<process>.{out,err}.log``).
`close()` stops everything and removes every namespace; it runs on exceptions, on Ctrl-C (the caller's
`with`/`finally`) and is idempotent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from e2e import netlab
from e2e.apiserver import ApiRequest, ApiServer
from e2e.netlab import Netns, Process
from e2e.probe import ContinuousProbe, PingResult, ProbeResult, ping, ping_many, tcp_check, udp_check
from e2e.topology import Cluster, TopologySpec, build, load_topology, node_object
from raven.kube.client import GATEWAYS, NODES, PATHREPORTS, ApiError, KubeClient, Resource, new_api_client

log = logging.getLogger("e2e.cluster")

REPO = Path(__file__).resolve().parent.parent
# The installed entry point next to this interpreter; else the module from this checkout (same code).
_RAVEN_SCRIPT = Path(sys.executable).parent / "raven"
RAVEN_ARGV = [str(_RAVEN_SCRIPT)] if _RAVEN_SCRIPT.exists() else ["env", f"PYTHONPATH={REPO}", sys.executable,
                                                                   "-m", "raven.cli"]
CRD_MANIFESTS = (REPO / "manifests" / "01-crd-gateways.yaml", REPO / "manifests" / "01-crd-pathreports.yaml")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
APISERVER_PORT = 6443
AGENT_HTTP = "127.0.0.1:9650"  # per netns loopback: the same port in every node
CONTROLLER_HTTP_BASE = 9660

T = TypeVar("T")

# A tiny HTTP GET run inside a namespace (no curl dependency): prints the status code, then the body.
_HTTP_GET = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        print(r.status); print(r.read().decode(errors="replace"))
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode(errors="replace"))
except OSError as e:
    print(0); print(e)
"""


class ConvergenceError(AssertionError):
    """The cluster did not reach the expected state before the deadline (message says what was missing)."""


# ----------------------------------------------------------------------------------------------
# the API server on a thread inside the control-plane namespace


class ApiServerThread:
    """`ApiServer` on its own event loop, on a thread moved into network namespace `netns`.

    Sockets belong to the namespace of the thread that creates them, so the listener (and the
    test's own client, which also runs on this loop) live in the control-plane netns while the rest
    of this process stays in the root namespace.
    """

    def __init__(self, netns: str, host: str, port: int, kubeconfig: Path) -> None:
        self.netns = netns
        self.server = ApiServer(host, port)
        self.kubeconfig = kubeconfig
        self.loop = asyncio.new_event_loop()
        self.client: KubeClient | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="apiserver", daemon=True)

    def start(self, timeout: float = 20.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("test API server did not start")
        if self._error is not None:
            raise RuntimeError(f"test API server failed to start: {self._error}") from self._error

    def _run(self) -> None:
        try:
            netlab._setns(netlab.NETNS_DIR / self.netns)
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._start())
        except BaseException as e:  # reported to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        # stop() ran the shutdown coroutine already; close what is left.
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    async def _start(self) -> None:
        await self.server.start()
        self.server.write_kubeconfig(self.kubeconfig)
        self.client = KubeClient(await new_api_client(str(self.kubeconfig)))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run `coro` on the server's loop (inside the control-plane netns) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def api(self, fn: Callable[[KubeClient], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        async def run() -> T:
            assert self.client is not None
            return await fn(self.client)
        return self.call(run(), timeout)

    def drop_watches(self, abrupt: bool = False) -> int:
        async def run() -> int:
            return self.server.drop_watches(abrupt)
        return self.call(run())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self.client is not None:
                await self.client.close()
            await self.server.stop()
        with contextlib.suppress(Exception):
            self.call(shutdown(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# ----------------------------------------------------------------------------------------------
# the cluster


@dataclass(frozen=True)
class FailoverResult:
    """What `RavenCluster.failover_under_probe` measured: who was active before and after, seconds from
    the NotReady write to the new election and to resumed traffic, and the probe's loss and outages."""

    gateway: str
    old: str
    new: str
    elected_s: float  # NotReady write -> the API shows the new active endpoint
    traffic_s: float  # NotReady write -> a ping through the new gateway answers
    probe: ProbeResult

    @property
    def resumed(self) -> bool:
        """No outage ran to the end of the probe: traffic flowed again when it stopped."""
        end = self.probe.sent * self.probe.interval_s
        return self.probe.received > 0 and all(o.start_s + o.length_s < end - 0.3 for o in self.probe.outages)


@dataclass
class Matrix:
    """Pod-to-pod ping results keyed by (source pod, destination pod)."""

    results: dict[tuple[str, str], PingResult] = field(default_factory=dict)

    @property
    def failed(self) -> list[tuple[str, str]]:
        return sorted(k for k, r in self.results.items() if not r.ok)

    @property
    def green(self) -> bool:
        return bool(self.results) and not self.failed


class RavenCluster:
    """A running Raven cluster in network namespaces; see the module docstring.

    `hold_nodes` / `hold_gateways` are part of the topology (namespaces, charon) but not registered
    at start: churn tests add them later with `join_node` / `create_gateway`.
    """

    def __init__(
        self,
        spec: TopologySpec | str = "default",
        prefix: str = "rve",
        run_dir: Path | None = None,
        hold_nodes: Iterable[str] = (),
        hold_gateways: Iterable[str] = (),
        controllers: int = 2,
        lease_duration: float = 4.0,
        renew_deadline: float = 3.0,
        retry_period: float = 0.5,
        agent_args: Sequence[str] = (),
        log_level: str = "info",
        ipsec_auth: str = "cert",
        controller_args: Sequence[str] = (),
        before_start: Callable[[RavenCluster], None] | None = None,
        vpn_driver: str = "ipsec",
        charon_backend: str = "libipsec",
        patience: float = 1.0,
    ) -> None:
        self.spec = load_topology(spec) if isinstance(spec, str) else spec
        self.prefix = prefix
        self._run_dir = run_dir
        self.hold_nodes = set(hold_nodes)
        self.hold_gateways = set(hold_gateways)
        self.n_controllers = controllers
        self.lease_args = ["--lease-duration", str(lease_duration), "--renew-deadline", str(renew_deadline),
                           "--retry-period", str(retry_period)]
        self.agent_args = list(agent_args)
        self.controller_args = list(controller_args)
        # Called once the Nodes and Gateways are registered, before any charon, controller or agent starts
        # (objects a scenario needs from the first election on, e.g. OpenYurt's ConfigMaps).
        self.before_start = before_start
        self.ipsec_auth = ipsec_auth
        # "wireguard": no charon; each agent starts wireguard-go for raven-wg0 (keys, cluster PSK: see agent_argv).
        self.vpn_driver = vpn_driver
        # "kernel": charon runs the DaemonSet's strongswan.conf (kernel ESP; the VM tier, e2e/vm.py).
        self.charon_backend = charon_backend
        # The VM tier (Python ~16x slower under qemu's emulation): the harness's own waits (HTTP polls of agents
        # and controllers, a probe's first answer) are this many times longer, and the HTTP polls run on a thread
        # of this process moved into the namespace instead of a new interpreter per poll.
        self.patience = patience
        self.log_level = log_level
        self.psk = secrets.token_hex(24)
        self.net: Cluster | None = None
        self.apiserver: ApiServerThread | None = None
        self.agents: dict[str, Process] = {}
        self.controllers: list[Process] = []
        self.registered: set[str] = set()
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()
        self._closed = False

    # -- lifecycle

    def __enter__(self) -> RavenCluster:
        try:
            self.start()
        except BaseException:
            self.close(keep_logs=True)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close(keep_logs=et is not None)

    @property
    def cl(self) -> Cluster:
        assert self.net is not None, "cluster not started"
        return self.net

    @property
    def api(self) -> ApiServerThread:
        assert self.apiserver is not None, "cluster not started"
        return self.apiserver

    @property
    def run_dir(self) -> Path:
        return self.cl.lab.run_dir

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def closed(self) -> bool:
        """`close()` ran: nothing of this cluster exists any more."""
        return self._closed

    def start(self, progress: Callable[[str], None] | None = None) -> None:
        say = progress or (lambda msg: log.info("%s", msg))
        t0 = time.monotonic()
        self.net = build(self.spec, self.prefix, self._run_dir)
        self.timings["build_s"] = time.monotonic() - t0
        say(f"topology built: {len(self.cl.nodes)} nodes, {len(self.cl.pods)} pods, {len(self.cl.pools)} pools")

        self.apiserver = ApiServerThread(self.cl.control_plane.name, self.cl.control_plane_ip, APISERVER_PORT,
                                         self.run_dir / "kubeconfig")
        self.apiserver.start()
        say(f"test API server at {self.api.server.url} (in {self.cl.control_plane.name})")
        self.install_crd()
        for obj in self.cl.node_objects():
            if obj["metadata"]["name"] not in self.hold_nodes:
                self.create(NODES, obj)
                self.registered.add(obj["metadata"]["name"])
        for gw in self.cl.gateway_objects():
            if gw["metadata"]["name"] not in self.hold_gateways:
                self.create(GATEWAYS, gw)
        say(f"registered {len(self.registered)} nodes and "
            f"{len(self.spec.gateways) - len(self.hold_gateways)} gateways")
        if self.before_start is not None:
            self.before_start(self)

        for node in self.cl.nodes:
            self.write_node_kubeconfig(node)
            if self.ipsec_auth == "psk" or self.vpn_driver == "wireguard":
                self.write_psk(node, self.psk)
        t1 = time.monotonic()
        if self.vpn_driver == "ipsec":
            self.cl.start_charons(backend=self.charon_backend)
            self.timings["charons_s"] = time.monotonic() - t1
            say(f"{len(self.cl.nodes)} charons up")
        for i in range(self.n_controllers):
            self.controllers.append(self._start_controller(i))
        for name in sorted(self.registered):
            self.start_agent(name)
        say(f"{self.n_controllers} controllers and {len(self.agents)} agents started")
        self.timings["started_s"] = time.monotonic() - t0
        self._t0 = t0

    def close(self, keep_logs: bool = False) -> None:
        """Stop agents and controllers (SIGTERM), the API server, then remove every namespace."""
        if self._closed:
            return
        self._closed = True
        procs = list(self.agents.values()) + self.controllers
        for p in procs:
            with contextlib.suppress(Exception):
                p.signal(15)
        if self.net is not None:
            self.net.close(keep_logs=keep_logs or os.environ.get("RAVEN_E2E_KEEP") == "1")
        if self.apiserver is not None:
            self.apiserver.stop()

    # -- API helpers (run on the API server's thread, over HTTP, from inside the cp netns)

    def create(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        return self.api.api(lambda c: c.create(res, obj))

    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.api.api(lambda c: c.get(res, name, namespace))

    def list_objects(self, res: Resource, namespace: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.api(lambda c: c.list(res, namespace)).get("items", [])
        return items

    def delete(self, res: Resource, name: str, namespace: str | None = None) -> None:
        with contextlib.suppress(ApiError):
            self.api.api(lambda c: c.delete(res, name, namespace))

    def patch(self, res: Resource, name: str, patch: dict[str, Any], subresource: str | None = None
              ) -> dict[str, Any]:
        return self.api.api(lambda c: c.merge_patch(res, name, patch, subresource=subresource))

    def install_crd(self) -> None:
        for manifest in CRD_MANIFESTS:
            for doc in yaml.safe_load_all(manifest.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.create(CRDS, doc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # served once the CRDs are Established
            try:
                self.api.api(lambda c: c.list(GATEWAYS))
                self.api.api(lambda c: c.list(PATHREPORTS))
                return
            except ApiError:
                time.sleep(0.05)
        raise ConvergenceError("Gateway/PathReport CRDs never became served")

    def gateways(self) -> dict[str, dict[str, Any]]:
        return {g["metadata"]["name"]: g for g in self.list_objects(GATEWAYS)}

    def active_endpoints(self) -> dict[str, list[str]]:
        """Gateway name -> node names of its active endpoints (from the API server)."""
        return {name: [ep.get("nodeName", "") for ep in (g.get("status") or {}).get("activeEndpoints") or []]
                for name, g in self.gateways().items()}

    def active_gateway_node(self, gateway: str) -> str:
        nodes = self.active_endpoints().get(gateway) or []
        if not nodes:
            raise ConvergenceError(f"gateway {gateway} has no active endpoint")
        return nodes[0]

    def set_node_ready(self, node: str, ready: bool) -> None:
        """Write the node's Ready condition through the status subresource, as its kubelet does (True, or False:
        the node says it is not ready, e.g. its runtime failed or it is shutting down)."""
        self._set_ready_condition(node, *(("True", "KubeletReady", "kubelet is posting ready status") if ready else
                                          ("False", "KubeletNotReady", "container runtime is down")))

    def set_node_unreachable(self, node: str) -> None:
        """Ready Unknown, as the node lifecycle controller writes when the node's kubelet stopped posting status
        (the control plane lost the node; its data plane may be fine). `set_node_ready(node, True)` undoes it."""
        self._set_ready_condition(node, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.")

    def _set_ready_condition(self, node: str, status: str, reason: str, message: str) -> None:
        cond = {"type": "Ready", "status": status, "reason": reason, "message": message,
                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.patch(NODES, node, {"status": {"conditions": [cond]}}, subresource="status")

    def create_gateway(self, name: str) -> None:
        for gw in self.cl.gateway_objects():
            if gw["metadata"]["name"] == name:
                self.create(GATEWAYS, gw)
                self.hold_gateways.discard(name)
                return
        raise KeyError(name)

    def join_node(self, node: str) -> None:
        """Register a held-back node (its Node object) and start its agent."""
        self.create(NODES, node_object(self.cl.nodes[node].spec))
        self.registered.add(node)
        self.hold_nodes.discard(node)
        self.start_agent(node)

    def remove_node(self, node: str) -> None:
        """The node leaves the cluster: its agent stops (as a drained DaemonSet pod) and its Node is deleted."""
        agent = self.agents.pop(node, None)
        if agent is not None:
            agent.stop()
        self.delete(NODES, node)
        self.registered.discard(node)

    def cleanup_agent(self, node: str, drop: tuple[str, ...] = ()) -> None:
        """`raven --mode=agent --cleanup` on the node: removes every kernel object and VICI connection
        Raven owns there (what a node leaving the cluster is left with once its agent is gone). `drop`: agent
        arguments left out (e.g. `--vpn-driver=wireguard`: cleanup must not depend on it)."""
        skip = ("--health-addr", "--metrics-addr", AGENT_HTTP, *drop)
        argv = [a for a in self.agent_argv(node) if a not in skip]
        out = self.cl.nodes[node].netns.run([*argv, "--cleanup"], check=False, timeout=60)
        if out.returncode != 0:
            raise ConvergenceError(f"agent cleanup on {node} failed rc={out.returncode}: {out.stderr[-2000:]}")

    # -- processes

    def write_psk(self, node: str, psk: str) -> Path:
        path = self.cl.nodes[node].netns.run_dir / "psk"
        path.write_text(psk + "\n")
        path.chmod(0o600)
        return path

    def write_node_kubeconfig(self, node: str) -> Path:
        """The node's kubeconfig: a token bound to the node (the requester the CSR signer checks)."""
        path = self.cl.nodes[node].netns.run_dir / "kubeconfig"
        token = self.api.server.add_node_token(node)
        path.write_text(yaml.safe_dump(self.api.server.kubeconfig_dict(token), sort_keys=False))
        path.chmod(0o600)
        return path

    def identity_dir(self, node: str) -> Path:
        return self.cl.nodes[node].netns.run_dir / "ipsec"

    def wireguard_key_file(self, node: str) -> Path:
        return self.cl.nodes[node].netns.run_dir / "wireguard" / "private.key"

    def wireguard_socket(self, node: str) -> Path:
        """The node's wireguard-go UAPI socket, as seen from this process (its /run/wireguard, see agent_argv)."""
        return self.cl.nodes[node].netns.run_dir / "wgrun" / "raven-wg0.sock"

    def agent_argv(self, node: str) -> list[str]:
        ns = self.cl.nodes[node].netns
        if self.vpn_driver == "wireguard":
            # Each node's own /run/wireguard (wireguard-go's socket directory is fixed): a bind mount of a node
            # directory in the agent's private mount namespace (`ip netns exec` makes one), the same directory
            # for every agent of the node, so a restarted agent finds the wireguard-go the last one started.
            wgrun = ns.run_dir / "wgrun"
            wgrun.mkdir(mode=0o700, exist_ok=True)
            mount = 'mkdir -p /run/wireguard && mount --bind "$0" /run/wireguard && exec "$@"'
            return ["sh", "-c", mount, str(wgrun), *RAVEN_ARGV, "--mode=agent", "--node-name", node,
                    "--kubeconfig", str(ns.run_dir / "kubeconfig"), "--vpn-driver=wireguard",
                    "--wireguard-key-file", str(self.wireguard_key_file(node)), "--psk-file", str(ns.run_dir / "psk"),
                    "--health-addr", AGENT_HTTP, "--metrics-addr", AGENT_HTTP, "--log-level", self.log_level,
                    *self.agent_args]
        assert ns.charon is not None
        if self.ipsec_auth == "psk":
            auth = ["--ipsec-auth=psk", "--psk-file", str(ns.run_dir / "psk")]
        else:
            auth = ["--ipsec-auth=cert", "--ipsec-identity-dir", str(self.identity_dir(node))]
        return [*RAVEN_ARGV, "--mode=agent", "--node-name", node, "--kubeconfig", str(ns.run_dir / "kubeconfig"),
                "--vici-socket", str(ns.charon.vici_socket), *auth,
                "--health-addr", AGENT_HTTP, "--metrics-addr", AGENT_HTTP, "--log-level", self.log_level,
                *self.agent_args]

    def diagnose(self, node: str, *args: str, timeout: float = 90.0, agent_pid: bool = False
                 ) -> tuple[int, dict[str, Any]]:
        """`raven diagnose -o json` on `node`, inside its netns with its agent's flags (given, or with `agent_pid`
        read from the running agent's command line, as in its container): (exit code, the report)."""
        if agent_pid:
            argv = [*RAVEN_ARGV, "diagnose", "--agent-pid", str(self.agents[node].pid)]
        else:
            argv = [("diagnose" if a == "--mode=agent" else a) for a in self.agent_argv(node)]
        out = self.cl.nodes[node].netns.run([*argv, "-o", "json", *args], check=False, timeout=timeout)
        try:
            report: dict[str, Any] = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise ConvergenceError(f"diagnose on {node} rc={out.returncode}: {out.stdout[-1000:]}"
                                   f"{out.stderr[-2000:]}") from None
        return out.returncode, report

    def start_agent(self, node: str) -> Process:
        ns = self.cl.nodes[node].netns
        proc = self.agents.get(node)
        if proc is not None and proc.alive():
            return proc
        if proc is None:
            proc = ns.popen(self.agent_argv(node), name="agent")
            self.agents[node] = proc
        else:
            proc.start()
        return proc

    def _start_controller(self, i: int) -> Process:
        cp = self.cl.control_plane
        addr = f"127.0.0.1:{CONTROLLER_HTTP_BASE + i}"
        argv = [*RAVEN_ARGV, "--mode=controller", "--kubeconfig", str(self.kubeconfig), *self.lease_args,
                "--health-addr", addr, "--metrics-addr", addr, "--log-level", self.log_level, *self.controller_args]
        env = dict(os.environ, POD_NAME=f"raven-controller-{i}")
        return cp.popen(argv, name=f"controller-{i}", env=env)

    def charon(self, node: str) -> netlab.Charon:
        c = self.cl.nodes[node].netns.charon
        assert c is not None
        return c

    def restart_charon(self, node: str) -> None:
        self.charon(node).restart()

    def controller_http(self, i: int) -> str:
        return f"127.0.0.1:{CONTROLLER_HTTP_BASE + i}"

    def http_get(self, ns: Netns, addr: str, path: str, timeout: float = 3.0) -> tuple[int, str]:
        """GET http://addr/path from inside `ns`; (status code, body); (0, "") when nothing answers."""
        timeout *= self.patience
        if self.patience > 1.0:
            return _http_get_on_thread(ns.name, f"http://{addr}{path}", timeout)
        out = ns.run([sys.executable, "-c", _HTTP_GET, f"http://{addr}{path}", str(timeout)],
                     check=False, timeout=timeout + 5)
        code, _, body = out.stdout.partition("\n")
        return (int(code) if code.isdigit() else 0), body

    def metrics(self, process: str) -> dict[str, float]:
        """Parsed /metrics of ``agent/<node>`` or ``controller/<i>``: ``name{labels}`` -> value."""
        kind, _, ident = process.partition("/")
        if kind == "agent":
            code, body = self.http_get(self.cl.nodes[ident].netns, AGENT_HTTP, "/metrics")
        else:
            code, body = self.http_get(self.cl.control_plane, self.controller_http(int(ident)), "/metrics")
        if code != 200:
            raise ConvergenceError(f"{process} /metrics answered {code}")
        return parse_metrics(body)

    def agent_ready(self, node: str, verbose: bool = False) -> tuple[bool, str]:
        code, body = self.http_get(self.cl.nodes[node].netns, AGENT_HTTP, "/readyz?verbose" if verbose else "/readyz")
        return code == 200, body.strip()

    def leader(self) -> int | None:
        """Index of the controller replica whose raven_controller_leader gauge is 1."""
        for i, proc in enumerate(self.controllers):
            if not proc.alive():
                continue
            with contextlib.suppress(ConvergenceError):
                m = self.metrics(f"controller/{i}")
                if any(k.startswith("raven_controller_leader") and v == 1 for k, v in m.items()):
                    return i
        return None

    # -- traffic

    def pods(self, nodes: Iterable[str] | None = None) -> list[tuple[str, Netns, str]]:
        """(name, netns, ip) of every pod on registered nodes (or on `nodes`)."""
        want = set(nodes) if nodes is not None else self.registered
        return [(p.name, p.netns, p.ip) for p in self.cl.pods.values() if p.node in want]

    def ping_matrix(self, pods: Sequence[tuple[str, Netns, str]] | None = None, count: int = 1,
                    wait: float = 1.0) -> Matrix:
        pods = list(pods if pods is not None else self.pods())
        pairs = [(a, b) for a in pods for b in pods if a[0] != b[0]]
        results = ping_many([(a[1], b[2]) for a, b in pairs], count=count, wait=wait, parallel=16)
        return Matrix({(a[0], b[0]): r for (a, b), r in zip(pairs, results, strict=True)})

    def member_node(self, pool: str) -> str:
        """A registered node of `pool` that is not its gateway's active endpoint."""
        gateway = self.cl.pools[pool].spec.gateway
        active = self.active_endpoints().get(gateway or "", [])
        return next(n.name for n in self.cl.pools[pool].nodes if n.name not in active and n.name in self.registered)

    def failover_under_probe(self, pool: str, dst_node: str, port: int, settle: float = 1.0,
                             dead: bool = True, timeout: float = 30.0) -> FailoverResult:
        """Mark the active endpoint of `pool`'s Gateway NotReady while a pod behind the pool's other node
        sends a 10 ms UDP probe to a pod on `dst_node`; wait for the new election and for traffic, let the
        probe run `settle` s more, then mark the old node Ready again (the new endpoint stays: sticky).

        With `dead` the old gateway also drops off its LAN at the moment of the write (a crashed node,
        restored afterwards): the old path cannot carry anything, so resumed traffic proves the new one.
        Without it the old gateway keeps forwarding until its own agent stands down (a drained node)."""
        gateway = self.cl.pools[pool].spec.gateway
        assert gateway is not None
        old = self.active_gateway_node(gateway)
        new = self.member_node(pool)
        src, dst = self.cl.nodes[new].pods[0], self.cl.nodes[dst_node].pods[0]
        with ContinuousProbe(src.netns, dst.netns, dst.ip, port=port, name=f"failover-{port}") as probe:
            if not probe.wait_first_reply(10.0 * self.patience):
                raise ConvergenceError(f"probe {src.name} -> {dst.name} never answered before the failover")
            time.sleep(0.3)
            if dead:
                self.cl.cut_link(old)
            self.set_node_ready(old, False)
            try:
                elected = self.wait_for(f"{gateway} to elect {new}",
                                        lambda: self.active_endpoints()[gateway] == [new], timeout=timeout,
                                        interval=0.02)
                resumed = self.wait_for("traffic through the new gateway",
                                        lambda: ping(src.netns, dst.ip, count=1, wait=0.3).ok, timeout=timeout,
                                        interval=0.02)
                time.sleep(settle)
            finally:
                result = probe.stop()
                if dead:
                    self.cl.restore_link(old)
                self.set_node_ready(old, True)
        return FailoverResult(gateway, old, new, elected, elected + resumed, result)

    def restart_agent_under_probe(self, node: str, src_node: str, dst_node: str, port: int,
                                  timeout: float = 30.0) -> ProbeResult:
        """Restart `node`'s agent (SIGTERM, start) while a 10 ms probe runs from a pod on `src_node` to a
        pod on `dst_node`; the probe stops 0.5 s after the new agent reports ready (within `timeout` s)."""
        src, dst = self.cl.nodes[src_node].pods[0], self.cl.nodes[dst_node].pods[0]
        agent = self.agents[node]
        with ContinuousProbe(src.netns, dst.netns, dst.ip, port=port, name=f"restart-{port}") as probe:
            if not probe.wait_first_reply(10.0 * self.patience):
                raise ConvergenceError(f"probe {src.name} -> {dst.name} never answered")
            time.sleep(0.3)
            agent.restart()
            self.wait_for(f"agent on {node} ready again", lambda: self.agent_ready(node)[0], timeout=timeout)
            time.sleep(0.5)
            return probe.stop()

    def ping(self, src_pod: str, dst_pod: str, count: int = 3) -> PingResult:
        """ICMP between two pods by name (loss and RTT in the result)."""
        return ping(self.cl.pods[src_pod].netns, self.cl.pods[dst_pod].ip, count=count, interval=0.05)

    def tcp(self, src_pod: str, dst_pod: str, port: int = 18080) -> float | None:
        """TCP connect + echo between two pods: RTT in ms, None on failure."""
        dst = self.cl.pods[dst_pod]
        return tcp_check(self.cl.pods[src_pod].netns, dst.netns, dst.ip, port)

    def udp(self, src_pod: str, dst_pod: str, port: int = 18081) -> float | None:
        """One UDP echo between two pods: RTT in ms, None on failure."""
        dst = self.cl.pods[dst_pod]
        return udp_check(self.cl.pods[src_pod].netns, dst.netns, dst.ip, port)

    def process(self, name: str) -> Process:
        """``agent/<node>``, ``charon/<node>`` or ``controller/<i>``: kill(), stop(), start(), restart(), logs().
        (For charon prefer `restart_charon`, which also waits until VICI answers.)"""
        kind, _, ident = name.partition("/")
        if kind == "agent":
            return self.agents[ident]
        if kind == "charon":
            return self.charon(ident).process
        if kind == "controller":
            return self.controllers[int(ident)]
        raise KeyError(name)

    # -- convergence

    def wait_converged(self, timeout: float = 90.0, progress: Callable[[str], None] | None = None) -> Matrix:
        """Wait until every registered Gateway has an active endpoint, every agent is ready and the pod
        ping matrix is green; returns the green matrix. Raises ConvergenceError naming what is missing."""
        say = progress or (lambda msg: log.info("%s", msg))
        deadline = time.monotonic() + timeout
        last = ""

        def report(msg: str) -> None:
            nonlocal last
            if msg != last:
                say(msg)
                last = msg

        while True:
            self._raise_if_agents_exited()
            missing = [g for g, eps in self.active_endpoints().items() if not eps]
            if not missing:
                break
            report(f"waiting for active endpoints: {', '.join(sorted(missing))}")
            self._check_deadline(deadline, f"gateways without active endpoint: {missing}")
            time.sleep(0.1)
        report("every gateway has an active endpoint")
        while True:
            self._raise_if_agents_exited()
            not_ready = [n for n in sorted(self.agents) if not self.agent_ready(n)[0]]
            if not not_ready:
                break
            report(f"waiting for agents: {', '.join(not_ready)}")
            self._check_deadline(deadline, "agents not ready: " + "; ".join(
                f"{n}: {self.agent_ready(n)[1][:300]}" for n in not_ready))
            time.sleep(0.2)
        report("every agent is ready")
        pods = self.pods()
        while True:
            self._raise_if_agents_exited()
            m = self.ping_matrix(pods)
            if m.green:
                report(f"pod matrix green ({len(m.results)} pairs)")
                return m
            report(f"pod matrix: {len(m.results) - len(m.failed)}/{len(m.results)} pairs ok")
            self._check_deadline(deadline, f"pod pairs failing: {m.failed[:12]}")
            time.sleep(0.2)

    def _raise_if_agents_exited(self) -> None:
        """An agent that exited will not come back by waiting: say so at once, with its last words
        (checked in every phase, so a start with a broken agent fails fast whatever else is slow)."""
        if self.controllers and not any(p.alive() for p in self.controllers):  # nothing will ever elect
            raise ConvergenceError(f"every controller exited; controller-0: {self.controllers[0].logs()[-1500:]}")
        dead = {n: p.returncode() for n, p in self.agents.items() if not p.alive()}
        if dead:
            name = sorted(dead)[0]
            raise ConvergenceError(f"agents exited {dead}; {name}: {self.agents[name].logs()[-1500:]}")

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            dead = [f"{n} rc={p.returncode()}" for n, p in self.agents.items() if not p.alive()]
            dead += [f"controller-{i} rc={p.returncode()}" for i, p in enumerate(self.controllers) if not p.alive()]
            raise ConvergenceError(f"not converged: {what}; dead processes: {dead or 'none'}; logs in {self.run_dir}")

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> float:
        """Poll `check` until true; returns the seconds it took. Raises ConvergenceError with `what`."""
        t0 = time.monotonic()
        while True:
            with contextlib.suppress(ConvergenceError, ApiError, concurrent.futures.TimeoutError):
                if check():
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise ConvergenceError(f"timed out after {timeout}s waiting for {what}; logs in {self.run_dir}")
            time.sleep(interval)

    # -- IPsec state (VICI) and routes, for path assertions

    def sas(self, node: str) -> dict[str, dict[str, Any]]:
        """IKE_SAs charon on `node` holds: name -> {state, uniqueid, remote-host, child-sas...} (decoded)."""
        with self.charon(node).session() as s:
            out: dict[str, dict[str, Any]] = {}
            for sa in s.list_sas():
                for name, body in sa.items():
                    out[name] = _decode(body)
            return out

    def tunnels(self, node: str) -> dict[str, bool]:
        """The node's tunnels by name (raven-<gateway>) -> up, whatever the driver: charon's IKE_SAs (up:
        ESTABLISHED); with WireGuard, the driver's peers (up: a fresh handshake), as the agent reports them (its
        tunnel gauge, refreshed by every pass and tunnel check: wait for it rather than read it once)."""
        if self.vpn_driver == "ipsec":
            return {n: sa["state"] == "ESTABLISHED" for n, sa in self.sas(node).items()}
        prefix = 'raven_agent_tunnel_ike_established{connection="'
        return {key[len(prefix):].split('"', 1)[0]: value == 1 for key, value in self.metrics(f"agent/{node}").items()
                if key.startswith(prefix)}

    def tunnels_up(self, node: str) -> set[str]:
        return {name for name, up in self.tunnels(node).items() if up}

    def route_get(self, node: str, dst: str, src: str | None = None, iif: str | None = None) -> str:
        """`ip route get` in the node's netns (with a pod source and input device, as forwarded traffic)."""
        args = ["route", "get", dst]
        if src:
            args += ["from", src]
        if iif:
            args += ["iif", iif]
        return self.cl.nodes[node].netns.ip(*args).stdout.strip()

    def link_packets(self, node: str, ifname: str) -> tuple[int, int] | None:
        """(rx, tx) packets of a link in the node's netns; None if it does not exist."""
        out = self.cl.nodes[node].netns.ip("-j", "-s", "link", "show", "dev", ifname, check=False)
        if out.returncode != 0:
            return None
        data = json.loads(out.stdout)[0]["stats64"]
        return int(data["rx"]["packets"]), int(data["tx"]["packets"])

    def gateway_objects_from_api(self) -> list[dict[str, Any]]:
        return [copy.deepcopy(g) for g in self.list_objects(GATEWAYS)]

    def elapsed(self) -> float:
        return time.monotonic() - self._t0


def _http_get_on_thread(netns: str, url: str, timeout: float) -> tuple[int, str]:
    """`RavenCluster.http_get` without a new interpreter: a thread of this process moves into `netns` (a thread's
    sockets are made in its namespace, as the API server's thread does) and GETs `url`."""
    import urllib.error
    import urllib.request

    result: list[tuple[int, str]] = [(0, "")]

    def get() -> None:
        try:
            netlab._setns(netlab.NETNS_DIR / netns)
            with urllib.request.urlopen(url, timeout=timeout) as r:
                result[0] = (int(r.status), r.read().decode(errors="replace"))
        except urllib.error.HTTPError as e:
            result[0] = (int(e.code), e.read().decode(errors="replace"))
        except OSError as e:
            result[0] = (0, str(e))

    thread = threading.Thread(target=get, name=f"http-{netns}", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    return result[0]


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class PathReportWrites:
    """The API server's on_request hook: every PathReport write (create, status patch), with its time and node."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, str]] = []

    def __call__(self, r: ApiRequest) -> None:
        if r.group == PATHREPORTS.group and r.verb in ("create", "patch", "update"):
            self.writes.append((time.monotonic(), r.name))

    def between(self, t0: float, t1: float) -> list[tuple[float, str]]:
        return [w for w in self.writes if t0 <= w[0] < t1]


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


def metric(m: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in m.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
