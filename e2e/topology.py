"""A multi-region cluster described in YAML and built from network namespaces.

This module owns the topology file format (`parse_topology`/`load_topology`, validated up front
with messages naming the bad field) and the builder (`build`) that turns a `TopologySpec` into a
running `Cluster` on top of an `e2e.netlab.Lab`:

- per pool a router netns ``r-<pool>`` holding the pool LAN bridge (``br0``, router at the LAN's
  first address) and an uplink ``wan0`` to the WAN; NAT pools MASQUERADE the LAN to the WAN, routed
  ("public") pools are reachable: every WAN host has a route to each routed LAN via its router;
- a ``wan`` netns with the WAN bridge, and a ``cp`` netns on the WAN holding the control-plane
  address (the test API server runs there, or is forwarded there from the root namespace);
- per node a netns with ``eth0`` on its pool LAN (default route via the router), a ``cni0`` bridge
  holding the first address of its pod CIDR, and per pod a netns ``<node>-p<k>`` with a veth into
  ``cni0``; in each node's main table, routes to the other nodes' pod CIDRs of the same pool via
  their LAN address play the CNI. Nothing routes pod CIDRs between pools: that is Raven's job.

The builder is fast because it batches: one `ip -batch` for all namespaces, one for all veth pairs,
then one `ip -n NS -batch` per namespace and one `sysctl`/`iptables-restore` exec per forwarding box,
those run a few at a time in threads (each touches only its own namespace).
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from e2e.netlab import Charon, Lab, Netns, Process
from raven.api.constants import LABEL_GATEWAY
from raven.api.gateway import Gateway, GatewayParseError, validate

log = logging.getLogger("e2e.topology")

TOPOLOGY_DIR = Path(__file__).resolve().parent / "topologies"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?$")
_RESERVED = {"wan", "cp"}
MAX_PODS_PER_NODE = 200
# Concurrent `ip`/`sysctl` forks while building (each touches one namespace).
BUILD_PARALLELISM = 4
# Routers sit at WAN host addresses ROUTER_WAN_OFFSET + pool index.
ROUTER_WAN_OFFSET = 10

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address


class TopologyError(ValueError):
    """The topology file is malformed; the message names the field."""


# ----------------------------------------------------------------------------------------------
# spec (pure)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    pool: str
    ip: Addr
    pod_cidr: Net
    pods: int
    labels: Mapping[str, str]

    def pod_ip(self, k: int) -> Addr:
        return self.pod_cidr.network_address + 10 + k

    @property
    def cni_ip(self) -> Addr:
        return self.pod_cidr.network_address + 1


@dataclass(frozen=True)
class PoolSpec:
    name: str
    index: int
    nat: bool
    lan: Net
    pod_cidr: Net
    gateway: str | None
    nodes: tuple[NodeSpec, ...]
    # MASQUERADE --random-fully: a new public port per flow, close to a symmetric NAT.
    symmetric_nat: bool = False

    @property
    def router_lan_ip(self) -> Addr:
        return self.lan.network_address + 1


@dataclass(frozen=True)
class TopologySpec:
    wan: Net
    control_plane_ip: Addr
    pools: tuple[PoolSpec, ...]
    gateways: tuple[Mapping[str, Any], ...] = ()

    def router_wan_ip(self, pool: PoolSpec) -> Addr:
        return self.wan.network_address + ROUTER_WAN_OFFSET + pool.index

    @property
    def nodes(self) -> list[NodeSpec]:
        return [n for p in self.pools for n in p.nodes]

    def pool(self, name: str) -> PoolSpec:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


def _req(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise TopologyError(f"{path}.{key}: required")
    return obj[key]


def _net(value: Any, path: str) -> Net:
    try:
        return ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as e:
        raise TopologyError(f"{path}: invalid IPv4 CIDR {value!r}: {e}") from e


def _addr(value: Any, path: str) -> Addr:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError as e:
        raise TopologyError(f"{path}: invalid IPv4 address {value!r}") from e


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise TopologyError(f"{path}: invalid name {value!r} (lowercase DNS label, max 24 chars)")
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TopologyError(f"{path}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise TopologyError(f"{path}: expected a list, got {type(value).__name__}")
    return value


def parse_topology(obj: Any) -> TopologySpec:
    """Validate a topology document (the YAML's data) into a `TopologySpec`."""
    doc = _mapping(obj, "topology")
    wan = _net(_req(doc, "wan", ""), "wan")
    cp = _mapping(_req(doc, "controlPlane", ""), "controlPlane")
    cp_ip = _addr(_req(cp, "address", "controlPlane"), "controlPlane.address")
    pools_raw = _list(_req(doc, "pools", ""), "pools")
    if not pools_raw:
        raise TopologyError("pools: at least one pool")
    if wan.num_addresses < ROUTER_WAN_OFFSET + len(pools_raw) + 2:
        raise TopologyError(f"wan: {wan} too small for {len(pools_raw)} routers")
    if cp_ip not in wan or cp_ip in (wan.network_address, wan.broadcast_address):
        raise TopologyError(f"controlPlane.address: {cp_ip} is not a host of wan {wan}")
    if int(cp_ip) - int(wan.network_address) >= ROUTER_WAN_OFFSET and \
            int(cp_ip) - int(wan.network_address) < ROUTER_WAN_OFFSET + len(pools_raw):
        raise TopologyError(f"controlPlane.address: {cp_ip} collides with a router's WAN address")

    pools: list[PoolSpec] = []
    seen: set[str] = set(_RESERVED)
    all_pod_cidrs: list[tuple[str, Net]] = []
    for i, praw in enumerate(pools_raw):
        ppath = f"pools[{i}]"
        p = _mapping(praw, ppath)
        pname = _name(_req(p, "name", ppath), f"{ppath}.name")
        if pname in seen or f"r-{pname}" in seen:
            raise TopologyError(f"{ppath}.name: {pname!r} is used twice or reserved")
        seen.update({pname, f"r-{pname}"})
        nat = p.get("nat", False)
        if not isinstance(nat, bool):
            raise TopologyError(f"{ppath}.nat: expected boolean")
        symmetric = p.get("symmetricNAT", False)
        if not isinstance(symmetric, bool):
            raise TopologyError(f"{ppath}.symmetricNAT: expected boolean")
        lan = _net(_req(p, "lan", ppath), f"{ppath}.lan")
        if lan.num_addresses < 4:
            raise TopologyError(f"{ppath}.lan: {lan} too small")
        pool_pods = _net(_req(p, "podCIDR", ppath), f"{ppath}.podCIDR")
        gateway = p.get("gateway")
        if gateway is not None and not isinstance(gateway, str):
            raise TopologyError(f"{ppath}.gateway: expected string")
        nodes: list[NodeSpec] = []
        ips: set[Addr] = {lan.network_address + 1}
        for j, nraw in enumerate(_list(_req(p, "nodes", ppath), f"{ppath}.nodes")):
            npath = f"{ppath}.nodes[{j}]"
            n = _mapping(nraw, npath)
            nname = _name(_req(n, "name", npath), f"{npath}.name")
            if nname in seen or re.match(r".*-p\d+$", nname):
                raise TopologyError(f"{npath}.name: {nname!r} is used twice, reserved or looks like a pod")
            seen.add(nname)
            ip = _addr(_req(n, "ip", npath), f"{npath}.ip")
            if ip not in lan or ip in (lan.network_address, lan.broadcast_address) or ip in ips:
                raise TopologyError(f"{npath}.ip: {ip} is not a free host address of lan {lan}")
            ips.add(ip)
            pcidr = _net(_req(n, "podCIDR", npath), f"{npath}.podCIDR")
            if not pcidr.subnet_of(pool_pods):
                raise TopologyError(f"{npath}.podCIDR: {pcidr} is not inside the pool's {pool_pods}")
            pods = n.get("pods", 1)
            if isinstance(pods, bool) or not isinstance(pods, int) or not 0 <= pods <= MAX_PODS_PER_NODE:
                raise TopologyError(f"{npath}.pods: expected an integer 0..{MAX_PODS_PER_NODE}")
            if pods and pcidr.num_addresses < 10 + pods + 1:
                raise TopologyError(f"{npath}.podCIDR: {pcidr} too small for {pods} pods")
            labels_raw = _mapping(n.get("labels", {}), f"{npath}.labels")
            labels = {str(k): str(v) for k, v in labels_raw.items()}
            if gateway:
                labels.setdefault(LABEL_GATEWAY, gateway)
            for other_name, other in all_pod_cidrs:
                if other.overlaps(pcidr):
                    raise TopologyError(f"{npath}.podCIDR: {pcidr} overlaps {other_name}'s {other}")
            all_pod_cidrs.append((nname, pcidr))
            nodes.append(NodeSpec(nname, pname, ip, pcidr, pods, labels))
        pools.append(PoolSpec(pname, i, nat, lan, pool_pods, gateway, tuple(nodes), symmetric))

    for a in pools:
        if a.lan.overlaps(wan):
            raise TopologyError(f"pools[{a.index}].lan: {a.lan} overlaps the wan {wan}")
        if a.pod_cidr.overlaps(wan) or any(a.pod_cidr.overlaps(b.lan) for b in pools):
            raise TopologyError(f"pools[{a.index}].podCIDR: {a.pod_cidr} overlaps the wan or a lan")
        for b in pools[: a.index]:  # report the later pool: it is the one reusing the space
            if a.pod_cidr.overlaps(b.pod_cidr):
                raise TopologyError(f"pools[{a.index}].podCIDR: {a.pod_cidr} overlaps pool {b.name}")
            # NAT pools may reuse the same private LAN (as real sites do); a routed LAN must be unique.
            if a.lan.overlaps(b.lan) and not (a.nat and b.nat):
                raise TopologyError(f"pools[{a.index}].lan: {a.lan} overlaps pool {b.name}'s lan")

    gateways = tuple(_parse_gateways(doc.get("gateways", []), pools))
    return TopologySpec(wan, cp_ip, tuple(pools), gateways)


def _parse_gateways(raw: Any, pools: Sequence[PoolSpec]) -> list[Mapping[str, Any]]:
    node_names = {n.name for p in pools for n in p.nodes}
    out: list[Mapping[str, Any]] = []
    names: set[str] = set()
    for i, graw in enumerate(_list(raw, "gateways")):
        path = f"gateways[{i}]"
        obj = _mapping(graw, path)
        try:
            gw = Gateway.from_dict(obj)
        except GatewayParseError as e:
            raise TopologyError(f"{path}: {e}") from e
        problems = validate(gw)
        if problems:
            raise TopologyError(f"{path}: {'; '.join(problems)}")
        if not gw.name or gw.name in names:
            raise TopologyError(f"{path}.metadata.name: missing or used twice")
        names.add(gw.name)
        for ep in gw.spec.all_endpoints:
            if ep.node_name not in node_names:
                raise TopologyError(f"{path}: endpoint names unknown node {ep.node_name!r}")
        out.append(copy.deepcopy(dict(obj)))
    for p in pools:
        if p.gateway and p.gateway not in names:
            raise TopologyError(f"pools[{p.index}].gateway: no Gateway named {p.gateway!r}")
    return out


def cut_topology(pools: Sequence[str], source: str | Path = "default") -> TopologySpec:
    """Topology `source` cut down to `pools` (in their order there) with one node each; Gateways keep only the
    endpoints on those nodes (a Gateway left without one is dropped)."""
    doc: dict[str, Any] = copy.deepcopy(_read_topology(source))
    doc["pools"] = [dict(p, nodes=p["nodes"][:1]) for p in doc["pools"] if p["name"] in pools]
    keep = {p["nodes"][0]["name"] for p in doc["pools"]}
    gateways = []
    for gw in doc["gateways"]:
        eps = [ep for ep in gw["spec"]["endpoints"] if ep["nodeName"] in keep]
        if eps:
            gateways.append(dict(gw, spec=dict(gw["spec"], endpoints=eps)))
    doc["gateways"] = gateways
    return parse_topology(doc)


def _read_topology(source: str | Path) -> Any:
    """A topology document by file path or by name (a file in e2e/topologies/)."""
    path = Path(source)
    if not path.exists() and not str(source).endswith((".yaml", ".yml")):
        path = TOPOLOGY_DIR / f"{source}.yaml"
    try:
        return yaml.safe_load(path.read_text())
    except OSError as e:
        raise TopologyError(f"cannot read topology {path}: {e}") from e
    except yaml.YAMLError as e:
        raise TopologyError(f"{path}: invalid YAML: {e}") from e


def load_topology(source: str | Path = "default") -> TopologySpec:
    """Load a topology by file path or by name (a file in e2e/topologies/)."""
    return parse_topology(_read_topology(source))


# ----------------------------------------------------------------------------------------------
# the built cluster


@dataclass
class Pod:
    name: str
    node: str
    netns: Netns
    ip: str


@dataclass
class Node:
    spec: NodeSpec
    netns: Netns
    pool: str
    router_port: str  # this node's bridge port in its pool router (cut_link sets it down)
    pods: list[Pod] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def ip(self) -> str:
        return str(self.spec.ip)

    @property
    def pod_cidr(self) -> str:
        return str(self.spec.pod_cidr)


@dataclass
class Pool:
    spec: PoolSpec
    router: Netns
    router_wan_ip: str
    nodes: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def nat(self) -> bool:
        return self.spec.nat


class Cluster:
    """The built topology: name -> namespace lookups and the operations tests need on the network."""

    def __init__(self, lab: Lab, spec: TopologySpec) -> None:
        self.lab = lab
        self.spec = spec
        self.pools: dict[str, Pool] = {}
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, Pod] = {}
        self.wan: Netns
        self.control_plane: Netns
        self.build_seconds = 0.0
        self._delays: dict[str, Process] = {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(keep_logs=et is not None)

    @property
    def control_plane_ip(self) -> str:
        return str(self.spec.control_plane_ip)

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def pod(self, name: str) -> Pod:
        return self.pods[name]

    def pool_of(self, node: str) -> Pool:
        return self.pools[self.nodes[node].pool]

    def gateway_objects(self) -> list[dict[str, Any]]:
        """The topology's Gateways as API objects (deep copies: callers may mutate them)."""
        return [copy.deepcopy(dict(g)) for g in self.spec.gateways]

    def node_objects(self) -> list[dict[str, Any]]:
        """Kubernetes Node objects (InternalIP, podCIDR, Ready, labels) for registering the nodes."""
        return [node_object(n.spec) for n in self.nodes.values()]

    # -- operations for tests

    def cut_link(self, node: str) -> None:
        """Disconnect a node from its pool LAN (its port on the router's bridge goes down)."""
        n = self.nodes[node]
        self.pool_of(node).router.ip("link", "set", n.router_port, "down")

    def restore_link(self, node: str) -> None:
        n = self.nodes[node]
        self.pool_of(node).router.ip("link", "set", n.router_port, "up")

    def cut_uplink(self, pool: str) -> None:
        """Disconnect a whole pool from the WAN (router's uplink down)."""
        self.pools[pool].router.ip("link", "set", "wan0", "down")

    def restore_uplink(self, pool: str) -> None:
        self.pools[pool].router.ip("link", "set", "wan0", "up")

    def set_latency(self, pool: str, ms: float) -> None:
        """Delay everything entering `pool` from the WAN by `ms` (0 removes the delay).

        One way, at the pool's router: a round trip between two pools gains the sum of both pools'
        latencies. NAT keeps working (see `Netns.add_delay`).
        """
        router = self.pools[pool].router
        old = self._delays.pop(pool, None)
        if old is not None:
            old.stop(2.0)  # its TUN device and route vanish with it
        if ms > 0:
            self._delays[pool] = router.add_delay("wan0", ms)

    def expose_control_plane(self, port: int, name: str = "cp") -> int:
        """Make ``<control plane ip>:port`` (a server in the cp netns) reachable on 127.0.0.1 of
        the root namespace; returns the local port."""
        _, local = self.lab.forward_tcp(
            name, ("127.0.0.1", 0), (self.control_plane_ip, port), connect_ns=self.control_plane
        )
        return local

    def forward_to_control_plane(self, root_port: int, port: int, name: str = "cp-in") -> Process:
        """The other direction: a server on 127.0.0.1:root_port in the root namespace becomes
        reachable from every node at ``<control plane ip>:port``."""
        proc, _ = self.lab.forward_tcp(
            name, (self.control_plane_ip, port), ("127.0.0.1", root_port), listen_ns=self.control_plane
        )
        return proc

    def start_charons(self, nodes: Sequence[str] | None = None, backend: str = "libipsec") -> dict[str, Charon]:
        """One charon per node (all nodes by default); each node's VICI socket is
        ``cluster.nodes[name].netns.charon.vici_socket``. `backend`: see `Netns.start_charon`."""
        return {n: self.nodes[n].netns.start_charon(backend=backend) for n in (nodes or list(self.nodes))}

    def close(self, keep_logs: bool = False) -> None:
        for proc in self._delays.values():
            proc.stop(1.0)
        self.lab.close(keep_logs=keep_logs)


def node_object(n: NodeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": n.name, "labels": dict(n.labels)},
        "spec": {"podCIDR": str(n.pod_cidr), "podCIDRs": [str(n.pod_cidr)]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": str(n.ip)},
                {"type": "Hostname", "address": n.name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    }


def router_name(pool: str) -> str:
    return f"r-{pool}"


def pod_name(node: str, k: int) -> str:
    return f"{node}-p{k}"


def build(spec: TopologySpec, prefix: str, run_dir: Path | None = None, batch: bool = True) -> Cluster:
    """Build `spec` in namespaces named with `prefix`; on any failure everything is removed again."""
    lab = Lab(prefix, run_dir, batch=batch)
    try:
        return build_in(lab, spec)
    except BaseException:
        lab.close(keep_logs=True)
        raise


def build_in(lab: Lab, spec: TopologySpec) -> Cluster:
    """Build `spec` inside an existing lab (which the caller closes)."""
    t0 = time.monotonic()
    cl = Cluster(lab, spec)
    names = ["wan", "cp"]
    for p in spec.pools:
        names.append(router_name(p.name))
        for n in p.nodes:
            names.append(n.name)
            names += [pod_name(n.name, k) for k in range(n.pods)]
    lab.netns_many(names, lo_up=False)
    ns = lab.namespaces
    cl.wan, cl.control_plane = ns["wan"], ns["cp"]

    wan_len = spec.wan.prefixlen
    routed = [(p.lan, spec.router_wan_ip(p)) for p in spec.pools if not p.nat]
    veths: list[tuple[Netns, str, Netns, str]] = [(cl.control_plane, "eth0", cl.wan, "cp0")]
    batches: dict[str, list[str]] = {n: ["link set lo up"] for n in names}
    batches["wan"] += ["link add br0 type bridge", "link set br0 up", "link set cp0 master br0",
                       "link set cp0 up"]
    batches["cp"] += ["link set eth0 up", f"addr add {spec.control_plane_ip}/{wan_len} dev eth0"]
    batches["cp"] += [f"route replace {lan} via {gw}" for lan, gw in routed]

    for p in spec.pools:
        rname = router_name(p.name)
        router = ns[rname]
        rwan = spec.router_wan_ip(p)
        pool = Pool(p, router, str(rwan))
        cl.pools[p.name] = pool
        veths.append((router, "wan0", cl.wan, f"r{p.index}"))
        batches["wan"] += [f"link set r{p.index} master br0", f"link set r{p.index} up"]
        rb = batches[rname]
        rb += ["link set wan0 up", f"addr add {rwan}/{wan_len} dev wan0",
               "link add br0 type bridge", "link set br0 up",
               f"addr add {p.router_lan_ip}/{p.lan.prefixlen} dev br0"]
        rb += [f"route replace {lan} via {gw}" for lan, gw in routed if gw != rwan]
        for j, n in enumerate(p.nodes):
            node_ns = ns[n.name]
            port = f"n{j}"
            veths.append((node_ns, "eth0", router, port))
            rb += [f"link set {port} master br0", f"link set {port} up"]
            node = Node(n, node_ns, p.name, port)
            nb = batches[n.name]
            nb += ["link set eth0 up", f"addr add {n.ip}/{p.lan.prefixlen} dev eth0",
                   f"route replace default via {p.router_lan_ip}",
                   "link add cni0 type bridge", "link set cni0 up",
                   f"addr add {n.cni_ip}/{n.pod_cidr.prefixlen} dev cni0"]
            # The "CNI": other nodes' pod CIDRs of the same pool via their LAN address.
            nb += [f"route replace {o.pod_cidr} via {o.ip}" for o in p.nodes if o is not n]
            for k in range(n.pods):
                pname = pod_name(n.name, k)
                pod_ns = ns[pname]
                veths.append((pod_ns, "eth0", node_ns, f"vp{k}"))
                nb += [f"link set vp{k} master cni0", f"link set vp{k} up"]
                batches[pname] += ["link set eth0 up",
                                   f"addr add {n.pod_ip(k)}/{n.pod_cidr.prefixlen} dev eth0",
                                   f"route replace default via {n.cni_ip}"]
                pod = Pod(pname, n.name, pod_ns, str(n.pod_ip(k)))
                node.pods.append(pod)
                cl.pods[pname] = pod
            pool.nodes.append(node)
            cl.nodes[n.name] = node

    lab.veth_many(veths, up=False)
    # Bridges before their ports: the order inside each batch matters, so "link add br0" comes first.
    fwd = "sysctl -q -w net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0"
    jobs: list[Callable[[], object]] = []
    for name, lines in batches.items():
        jobs.append(functools.partial(ns[name].ip_batch, _bridges_first(lines)))
    for p in spec.pools:
        router = ns[router_name(p.name)]
        if p.nat:
            rnd = " --random-fully" if p.symmetric_nat else ""
            rules = (f"*nat\n:POSTROUTING ACCEPT [0:0]\n"
                     f"-A POSTROUTING -s {p.lan} -o wan0 -j MASQUERADE{rnd}\nCOMMIT\n")
            jobs.append(functools.partial(router.run, ["sh", "-c", f"{fwd} && iptables-restore -w 5"],
                                          input=rules))
        else:
            jobs.append(functools.partial(router.run, fwd.split()))
        jobs += [functools.partial(ns[n.name].run, fwd.split()) for n in p.nodes]
    # Every job touches one namespace only, so they are independent: run the forks concurrently.
    with ThreadPoolExecutor(max_workers=BUILD_PARALLELISM) as executor:
        for fut in [executor.submit(job) for job in jobs]:
            fut.result()
    cl.build_seconds = time.monotonic() - t0
    log.info("topology built prefix=%s namespaces=%d seconds=%.3f", lab.prefix, len(names), cl.build_seconds)
    return cl


def _bridges_first(lines: list[str]) -> list[str]:
    adds = [line for line in lines if line.startswith("link add")]
    return adds + [line for line in lines if not line.startswith("link add")]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m e2e.topology [TOPOLOGY] --prefix P`: build, print the layout, keep it until Ctrl-C."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m e2e.topology")
    ap.add_argument("topology", nargs="?", default="default")
    ap.add_argument("--prefix", default="rvt")
    ap.add_argument("--once", action="store_true", help="tear down right after building")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    spec = load_topology(args.topology)
    with build(spec, args.prefix) as cl:
        print(f"built in {cl.build_seconds:.2f}s; run dir {cl.lab.run_dir}")
        for pool in cl.pools.values():
            kind = "NAT" if pool.nat else "routed"
            print(f"pool {pool.name} ({kind}) router {pool.router.name} wan {pool.router_wan_ip}")
            for node in pool.nodes:
                pods = ", ".join(f"{p.netns.name} {p.ip}" for p in node.pods)
                print(f"  node {node.netns.name} {node.ip} pods {node.pod_cidr}: {pods}")
        print(f"control plane: ip netns exec {cl.control_plane.name} ... ({cl.control_plane_ip})")
        if not args.once:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
