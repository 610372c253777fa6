"""What a real cluster has around Raven, in the lab: kube-proxy's Service rules, a cluster DNS, a cloud LB.

Harness code (nothing here is part of Raven):

- `render_nat` / `KubeProxy`: kube-proxy's iptables mode, generated from the Service and Endpoints objects in
  the test API server and applied to every lab node: ``KUBE-SERVICES`` (hooked from PREROUTING and OUTPUT)
  jumps per ClusterIP:port to ``KUBE-SVC-<hash>``, which marks traffic from outside the cluster CIDR for
  masquerade (``KUBE-MARK-MASQ``: mark 0x4000) and picks an endpoint with ``-m statistic --mode random
  --probability 1/(n-i)``; ``KUBE-SEP-<hash>`` DNATs to it (and marks hairpin traffic). NodePorts (last rule
  of KUBE-SERVICES, ``addrtype --dst-type LOCAL`` -> ``KUBE-NODEPORTS`` -> ``KUBE-EXT-<hash>``, which marks
  everything) and LoadBalancer ingress IPs whose ``ipMode`` is not ``Proxy`` (captured on every node, as
  kube-proxy does) go the same way; ``KUBE-POSTROUTING`` MASQUERADEs what carries the mark. Chain names are
  kube-proxy's (base32 of a SHA-256 of the service port name, protocol and endpoint). iptables mode only:
  this kernel has no IPVS. Synced when the test calls `sync()` (kube-proxy syncs on watch events).
- `ClusterDns`: Debian's dnsmasq in a pod network namespace, answering ``<svc>.<ns>.svc.cluster.local`` with
  the Services' ClusterIPs (a hosts file rewritten by `update()`, re-read on SIGHUP), behind the DNS Service
  (``kube-system/kube-dns``, UDP and TCP 53); clients get a ``resolv.conf`` naming its ClusterIP
  (``/etc/netns/<ns>/resolv.conf``, which ``ip netns exec`` mounts over ``/etc/resolv.conf``).
- `CloudLoadBalancer`: the cloud controller's part for ``type: LoadBalancer``: a load-balancer namespace on the
  WAN, one WAN address per Service written to ``status.loadBalancer.ingress`` (``ipMode: Proxy``: it is a
  full proxy), and per Service port a DNAT to the endpoint's address (the Endpoints object) with a SNAT to the
  LB address, so replies come back through it as from a cloud LB. When the endpoint moves it re-targets and
  drops the flows to the old target (conntrack), as a cloud LB drops flows to a deregistered target.
- `start_web`: ``python -m http.server`` in endpoint pods, each answering its own pod name.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import netlab
from e2e.cluster import RavenCluster
from e2e.netlab import Netns, Process
from raven.kube.client import ENDPOINTS, SERVICES, ApiError, Resource

log = logging.getLogger("e2e.services")

NAMESPACES = Resource("", "v1", "namespaces")
MASQ_MARK = 0x4000  # kube-proxy's default --iptables-masquerade-bit 14
DNS_DOMAIN = "cluster.local"
DNS_NAMESPACE, DNS_SERVICE = "kube-system", "kube-dns"
# The base-chain hooks kube-proxy installs once (and this harness removes again).
_JUMPS = (
    ("PREROUTING", "kubernetes service portals", "KUBE-SERVICES"),
    ("OUTPUT", "kubernetes service portals", "KUBE-SERVICES"),
    ("POSTROUTING", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
)
_FIXED_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
_PER_SERVICE = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-")


# ----------------------------------------------------------------------------------------------
# the objects kube-proxy reads (pure)


@dataclass(frozen=True)
class PortView:
    name: str
    protocol: str  # "tcp" / "udp"
    port: int
    target_port: int
    node_port: int | None


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    type: str
    cluster_ip: str | None
    ports: tuple[PortView, ...]
    # (ip, ipMode) of status.loadBalancer.ingress
    lb_ingress: tuple[tuple[str, str], ...] = ()
    # port name -> endpoint addresses (ip, port)
    endpoints: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)

    def key(self, port: PortView) -> str:
        return f"{self.namespace}/{self.name}:{port.name}" if port.name else f"{self.namespace}/{self.name}"


def service_views(services: Sequence[dict[str, Any]], endpoints: Sequence[dict[str, Any]]) -> list[ServiceView]:
    """Services (ClusterIP, NodePort, LoadBalancer) with their ready endpoint addresses, by port name."""
    eps: dict[tuple[str, str], dict[str, list[tuple[str, int]]]] = {}
    for ep in endpoints:
        meta = ep.get("metadata", {})
        by_port: dict[str, list[tuple[str, int]]] = {}
        for subset in ep.get("subsets") or []:
            for p in subset.get("ports") or []:
                for a in subset.get("addresses") or []:
                    by_port.setdefault(p.get("name") or "", []).append((a["ip"], int(p["port"])))
        eps[(meta.get("namespace", ""), meta.get("name", ""))] = by_port
    out = []
    for svc in services:
        meta, spec = svc.get("metadata", {}), svc.get("spec", {})
        if spec.get("type", "ClusterIP") == "ExternalName":
            continue
        cip = spec.get("clusterIP")
        ports = tuple(
            PortView(p.get("name") or "", str(p.get("protocol", "TCP")).lower(), int(p["port"]),
                     int(p.get("targetPort", p["port"])), p.get("nodePort"))
            for p in spec.get("ports") or []
        )
        ingress = tuple((i["ip"], i.get("ipMode", "VIP"))
                        for i in (svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []) if i.get("ip"))
        key = (meta.get("namespace", ""), meta.get("name", ""))
        by_port = eps.get(key, {})
        out.append(ServiceView(key[0], key[1], spec.get("type", "ClusterIP"),
                               cip if cip and cip != "None" else None, ports, ingress,
                               {p.name: tuple(sorted(set(by_port.get(p.name, [])))) for p in ports}))
    return sorted(out, key=lambda s: (s.namespace, s.name))


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(svc: ServiceView, port: PortView) -> str:
    return "KUBE-SVC-" + _hash(svc.key(port) + port.protocol)


def ext_chain(svc: ServiceView, port: PortView) -> str:
    return "KUBE-EXT-" + _hash(svc.key(port) + port.protocol)


def sep_chain(svc: ServiceView, port: PortView, ip: str, target: int) -> str:
    return "KUBE-SEP-" + _hash(svc.key(port) + port.protocol + f"{ip}:{target}")


def render_nat(views: Sequence[ServiceView], cluster_cidr: str, stale: Iterable[str] = ()) -> str:
    """The nat table kube-proxy (iptables mode) writes for `views`, as `iptables-restore --noflush` input.

    `stale`: per-service chains present on the node; those no longer wanted are flushed and deleted."""
    chains: list[str] = list(_FIXED_CHAINS)
    rules: list[str] = [
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK:#x}/{MASQ_MARK:#x} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK:#x}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK:#x}",
    ]
    nodeport_rules: list[str] = []
    for svc in views:
        for port in svc.ports:
            if svc.cluster_ip is None:
                continue
            key, proto = svc.key(port), port.protocol
            eps = svc.endpoints.get(port.name, ())
            if not eps:
                continue  # kube-proxy REJECTs in the filter table; here the packet just finds no DNAT
            chain, ext = svc_chain(svc, port), ext_chain(svc, port)
            match = f"-p {proto} -m {proto} --dport {port.port}"
            chains.append(chain)
            rules.append(f'-A KUBE-SERVICES -m comment --comment "{key} cluster IP" -d {svc.cluster_ip}/32 '
                         f"{match} -j {chain}")
            rules.append(f'-A {chain} -m comment --comment "{key} cluster IP" ! -s {cluster_cidr} '
                         f"-d {svc.cluster_ip}/32 {match} -j KUBE-MARK-MASQ")
            for i, (ip, target) in enumerate(eps):
                sep = sep_chain(svc, port, ip, target)
                chains.append(sep)
                left = len(eps) - i
                stat = f" -m statistic --mode random --probability {1 / left:0.10f}" if left > 1 else ""
                rules.append(f'-A {chain} -m comment --comment "{key} -> {ip}:{target}"{stat} -j {sep}')
                rules.append(f'-A {sep} -m comment --comment "{key}" -s {ip}/32 -j KUBE-MARK-MASQ')
                rules.append(f'-A {sep} -m comment --comment "{key}" -p {proto} -m {proto} '
                             f"-j DNAT --to-destination {ip}:{target}")
            captured = [ip for ip, mode in svc.lb_ingress if mode != "Proxy"]
            if port.node_port or captured:
                chains.append(ext)
                rules.append(f'-A {ext} -m comment --comment "masquerade traffic for {key} external destinations" '
                             "-j KUBE-MARK-MASQ")
                rules.append(f"-A {ext} -j {chain}")
            for ip in captured:
                rules.append(f'-A KUBE-SERVICES -m comment --comment "{key} loadbalancer IP" -d {ip}/32 '
                             f"{match} -j {ext}")
            if port.node_port:
                nodeport_rules.append(f'-A KUBE-NODEPORTS -m comment --comment "{key}" -p {proto} -m {proto} '
                                      f"--dport {port.node_port} -j {ext}")
    rules += nodeport_rules
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last '
                 'rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    wanted = set(chains)
    gone = sorted(c for c in set(stale) if c.startswith(_PER_SERVICE) and c not in wanted)
    lines = ["*nat", *(f":{c} - [0:0]" for c in [*chains, *gone]), *rules, *(f"-X {c}" for c in gone), "COMMIT", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# applying it to the lab


def _list_all(rc: RavenCluster, res: Resource) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = rc.api.api(lambda c: c.list(res)).get("items", [])
    return items


def ensure_namespace(rc: RavenCluster, name: str) -> None:
    with contextlib.suppress(ApiError):
        rc.api.api(lambda c: c.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": name}}))


def create_service(rc: RavenCluster, namespace: str, name: str, ports: Sequence[dict[str, Any]],
                   endpoints: Sequence[tuple[str, str]], type: str = "ClusterIP") -> dict[str, Any]:
    """A selector-less Service and its Endpoints (what the endpoints controller would write for pods);
    `endpoints`: (pod IP, node name). Port dicts: name, protocol, port, targetPort."""
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"type": type, "ports": [dict(p) for p in ports]}}
    svc: dict[str, Any] = rc.api.api(lambda c: c.create(SERVICES, body, namespace))
    subsets = [{"addresses": [{"ip": ip, "nodeName": node} for ip, node in endpoints],
                "ports": [{"name": p["name"], "port": p.get("targetPort", p["port"]), "protocol": p["protocol"]}
                          for p in ports]}] if endpoints else []
    ep = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": namespace},
          "subsets": subsets}
    rc.api.api(lambda c: c.create(ENDPOINTS, ep, namespace))
    return svc


def delete_service(rc: RavenCluster, namespace: str, name: str) -> None:
    for res in (SERVICES, ENDPOINTS):
        with contextlib.suppress(ApiError):
            rc.api.api(lambda c, res=res: c.delete(res, name, namespace))


class KubeProxy:
    """kube-proxy (iptables mode) on every registered node of `rc`; see the module docstring."""

    def __init__(self, rc: RavenCluster, cluster_cidr: str, nodes: Iterable[str] | None = None) -> None:
        self.rc = rc
        self.cluster_cidr = str(ipaddress.IPv4Network(cluster_cidr))
        self.nodes = sorted(nodes if nodes is not None else rc.registered)
        self.syncs = 0
        self.last = ""

    def _each(self, fn: Callable[[Netns], object]) -> None:
        with ThreadPoolExecutor(max_workers=4) as ex:
            for fut in [ex.submit(fn, self.rc.cl.nodes[n].netns) for n in self.nodes]:
                fut.result()

    def install(self) -> None:
        def one(ns: Netns) -> None:
            ns.run(["iptables-restore", "-w", "5", "--noflush"],
                   input="\n".join(["*nat", *(f":{c} - [0:0]" for c in _FIXED_CHAINS), "COMMIT", ""]))
            for base, comment, target in _JUMPS:
                rule = ["-t", "nat", "-m", "comment", "--comment", comment, "-j", target]
                if ns.run(["iptables", "-w", "5", "-C", base, *rule], check=False).returncode != 0:
                    ns.run(["iptables", "-w", "5", "-I", base, "1", *rule])
        self._each(one)
        self.sync()

    def sync(self) -> str:
        """Read every Service and Endpoints object and write the nat table of every node; returns the rules."""
        views = service_views(_list_all(self.rc, SERVICES), _list_all(self.rc, ENDPOINTS))

        def one(ns: Netns) -> None:
            have = ns.run(["iptables", "-w", "5", "-t", "nat", "-S"]).stdout.splitlines()
            stale = [line.split()[1] for line in have if line.startswith("-N ")]
            ns.run(["iptables-restore", "-w", "5", "--noflush"], input=render_nat(views, self.cluster_cidr, stale))
        self._each(one)
        self.syncs += 1
        self.last = render_nat(views, self.cluster_cidr)
        return self.last

    def uninstall(self) -> None:
        def one(ns: Netns) -> None:
            for base, comment, target in _JUMPS:
                ns.run(["iptables", "-w", "5", "-t", "nat", "-D", base, "-m", "comment", "--comment", comment,
                        "-j", target], check=False)
            have = ns.run(["iptables", "-w", "5", "-t", "nat", "-S"]).stdout.splitlines()
            chains = [line.split()[1] for line in have if line.startswith("-N KUBE-")]
            if chains:
                ns.run(["iptables-restore", "-w", "5", "--noflush"],
                       input="\n".join(["*nat", *(f":{c} - [0:0]" for c in chains), *(f"-X {c}" for c in chains),
                                        "COMMIT", ""]))
        self._each(one)

    def counters(self, node: str, chain: str) -> int:
        """Packets that entered `chain`'s rules on `node` (sum of its rules' packet counters)."""
        out = self.rc.cl.nodes[node].netns.run(["iptables", "-w", "5", "-t", "nat", "-L", chain, "-v", "-x", "-n"])
        total = 0
        for line in out.stdout.splitlines()[2:]:
            parts = line.split()
            if parts and parts[0].isdigit():
                total += int(parts[0])
        return total


# ----------------------------------------------------------------------------------------------
# cluster DNS


def write_resolv_conf(ns: Netns, nameserver: str, namespace: str = "default") -> Path:
    """The pod's resolv.conf (kubelet's ClusterFirst); ``ip netns exec`` mounts it over /etc/resolv.conf."""
    folder = netlab.ETC_NETNS / ns.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "resolv.conf"
    search = f"{namespace}.svc.{DNS_DOMAIN} svc.{DNS_DOMAIN} {DNS_DOMAIN}"
    path.write_text(f"nameserver {nameserver}\nsearch {search}\noptions ndots:5 timeout:1 attempts:3\n")
    return path


class ClusterDns:
    """dnsmasq in the pod `pod` serving the Services' names; see the module docstring."""

    def __init__(self, rc: RavenCluster, pod: str) -> None:
        self.rc = rc
        self.pod = rc.cl.pods[pod]
        self.hosts = self.pod.netns.run_dir / "dns-hosts"
        self.process: Process | None = None
        self.cluster_ip = ""
        self.resolv: list[Path] = []

    def start(self) -> str:
        """Start dnsmasq and the DNS Service; returns its ClusterIP."""
        self.update(write_only=True)
        self.hosts.chmod(0o644)
        argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}",
                f"--listen-address={self.pod.ip}", "--bind-interfaces", f"--local=/{DNS_DOMAIN}/",
                "--domain-needed", "--user=root", "--group=root", "--log-facility=-",
                f"--pid-file={self.pod.netns.run_dir / 'dnsmasq.pid'}"]
        self.process = self.pod.netns.popen(argv, name="dnsmasq")
        proc = self.process
        # Until dnsmasq has set up its handlers, a SIGHUP (update) would kill it: wait for its "started" line.
        self.rc.wait_for("dnsmasq to start", lambda: "started, version" in proc.logs() or not proc.alive(),
                         timeout=20, interval=0.05)
        if not proc.alive():
            raise RuntimeError(f"dnsmasq exited: {proc.logs()}")
        ensure_namespace(self.rc, DNS_NAMESPACE)
        svc = create_service(self.rc, DNS_NAMESPACE, DNS_SERVICE,
                             [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53},
                              {"name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 53}],
                             [(self.pod.ip, self.pod.node)])
        self.cluster_ip = svc["spec"]["clusterIP"]
        self.update()
        return self.cluster_ip

    def update(self, write_only: bool = False) -> None:
        """Rewrite the A records from the Services and make dnsmasq re-read them."""
        lines = []
        for svc in _list_all(self.rc, SERVICES):
            meta, cip = svc["metadata"], svc.get("spec", {}).get("clusterIP")
            if cip and cip != "None":
                lines.append(f"{cip} {meta['name']}.{meta['namespace']}.svc.{DNS_DOMAIN}")
        self.hosts.write_text("\n".join(lines) + "\n")
        if not write_only and self.process is not None:
            self.process.signal(signal.SIGHUP)

    def configure_clients(self, namespaces: Iterable[Netns], search_namespace: str = "default") -> None:
        for ns in namespaces:
            self.resolv.append(write_resolv_conf(ns, self.cluster_ip, search_namespace))

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        delete_service(self.rc, DNS_NAMESPACE, DNS_SERVICE)
        for path in self.resolv:
            with contextlib.suppress(OSError):
                path.unlink()


def resolve(ns: Netns, name: str, timeout: float = 10.0) -> str | None:
    """The address glibc's resolver (getaddrinfo, through the namespace's resolv.conf) gives for `name`."""
    code = ("import socket,sys\ntry: print(socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET)[0][4][0])\n"
            "except OSError as e: print('ERR', e)")
    out = ns.run([sys.executable, "-c", code, name], check=False, timeout=timeout).stdout.strip()
    return None if not out or out.startswith("ERR") else out


# ----------------------------------------------------------------------------------------------
# endpoint pods


def start_web(rc: RavenCluster, pods: Iterable[str], port: int) -> list[Process]:
    """``python -m http.server`` on `port` in each pod, answering GET / with the pod's name."""
    procs = []
    for name in pods:
        pod = rc.cl.pods[name]
        root = pod.netns.run_dir / f"www-{port}"
        root.mkdir(exist_ok=True)
        (root / "index.html").write_text(name)
        procs.append(pod.netns.popen([sys.executable, "-m", "http.server", str(port), "--bind", pod.ip,
                                      "--directory", str(root)], name=f"web-{port}"))
    for name in pods:
        pod = rc.cl.pods[name]
        rc.wait_for(f"web server in {name}", lambda pod=pod: rc.http_get(pod.netns, f"{pod.ip}:{port}", "/")[0] == 200,
                    timeout=30, interval=0.1)
    return procs


# ----------------------------------------------------------------------------------------------
# the cloud's load balancer


@dataclass
class Retarget:
    """The LB moved a Service's target (`old` None: first programmed): `seen` when its poll found the new
    Endpoints, `at` when the new DNAT was in place and the old flows dropped (monotonic times)."""

    service: str
    old: str | None
    new: str | None
    at: float
    seen: float = 0.0


class CloudLoadBalancer:
    """The cloud controller stand-in for Services of type LoadBalancer; see the module docstring.

    It polls the API every `interval` s (a cloud controller watches; the poll adds at most that much to a
    failover). Addresses come from `first_ip` upwards on the WAN."""

    def __init__(self, rc: RavenCluster, first_ip: str = "198.18.0.200", interval: float = 0.05,
                 short: str = "lb") -> None:
        self.rc = rc
        self.wan = rc.cl.spec.wan
        self.next_ip = ipaddress.IPv4Address(first_ip)
        self.interval = interval
        self.short = short
        self.ns: Netns | None = None
        self.assigned: dict[tuple[str, str], str] = {}  # (namespace, name) -> LB address
        self.targets: dict[tuple[str, str], tuple[str, tuple[tuple[str, int, int], ...]]] = {}
        self.events: list[Retarget] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        lab = self.rc.cl.lab
        ns = lab.netns(self.short)
        self.ns = ns
        lab.veth(ns, "eth0", self.rc.cl.wan, f"{self.short}0")
        self.rc.cl.wan.ip("link", "set", f"{self.short}0", "master", "br0")
        lines = [f"addr add {ipaddress.IPv4Address(int(self.wan.network_address) + 254)}/{self.wan.prefixlen} dev eth0"]
        for pool in self.rc.cl.spec.pools:
            if not pool.nat:
                lines.append(f"route replace {pool.lan} via {self.rc.cl.spec.router_wan_ip(pool)}")
        ns.ip_batch(lines)
        ns.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        self._thread = threading.Thread(target=self._loop, name="cloud-lb", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.ns is not None:
            netlab._remove_namespaces([self.ns.name])
            self.rc.cl.lab.namespaces.pop(self.short, None)
            self.ns = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception as e:  # the API may be restarting; keep going, say why
                if not self.errors or self.errors[-1] != str(e):
                    self.errors.append(str(e))
            self._stop.wait(self.interval)

    def reconcile(self) -> None:
        assert self.ns is not None
        services = [s for s in _list_all(self.rc, SERVICES) if s.get("spec", {}).get("type") == "LoadBalancer"]
        endpoints = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in _list_all(self.rc, ENDPOINTS)}
        for svc in services:
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            ip = self.assigned.get(key)
            if ip is None:
                ip = str(self.next_ip)
                self.next_ip += 1
                self.ns.ip("addr", "add", f"{ip}/32", "dev", "eth0")
                self.assigned[key] = ip
            ingress = svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []
            if [i.get("ip") for i in ingress] != [ip]:
                patch = {"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "Proxy"}]}}}
                self.rc.api.api(lambda c, key=key, patch=patch: c.merge_patch(SERVICES, key[1], patch, key[0],
                                                                              subresource="status"))
            ep = endpoints.get(key, {})
            addrs = [a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []]
            target = addrs[0] if addrs else ""
            ports = tuple(sorted((str(p.get("protocol", "TCP")).lower(), int(p["port"]), int(p.get("targetPort",
                                  p["port"]))) for p in svc["spec"].get("ports") or []))
            want = (target, ports)
            if self.targets.get(key) != want:
                seen = time.monotonic()
                old = self.targets.get(key, ("", ()))[0] or None
                self._program(ip, target, ports)
                self.targets[key] = want
                self.events.append(Retarget(f"{key[0]}/{key[1]}", old, target or None, time.monotonic(), seen))
                log.info("load balancer target service=%s/%s ip=%s target=%s", key[0], key[1], ip, target)
        gone = set(self.assigned) - {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services}
        for key in gone:
            ip = self.assigned.pop(key)
            self.targets.pop(key, None)
            self._program(ip, "", ())
            self.ns.ip("addr", "del", f"{ip}/32", "dev", "eth0", check=False)

    def _program(self, ip: str, target: str, ports: Sequence[tuple[str, int, int]]) -> None:
        """One chain per LB address: DNAT each Service port to the target, SNAT to the LB address."""
        assert self.ns is not None
        chain = "LB-" + ip.replace(".", "-")
        pre = [f"-A PREROUTING -d {ip}/32 -j {chain}"]
        rules = [f"-A {chain} -p {proto} -m {proto} --dport {port} -j DNAT --to-destination {target}:{tport}"
                 for proto, port, tport in ports] if target else []
        post = f"-A POSTROUTING -m conntrack --ctstate DNAT --ctorigdst {ip}/32 -j SNAT --to-source {ip}"
        have = self.ns.run(["iptables", "-w", "5", "-t", "nat", "-S"]).stdout
        text = ["*nat", f":{chain} - [0:0]", *rules]
        if f"-j {chain}" not in have:
            text += [*pre, post]
        self.ns.run(["iptables-restore", "-w", "5", "--noflush"], input="\n".join([*text, "COMMIT", ""]))
        # Flows to the old target are dropped at once (a deregistered target), so the next packet is NATed anew.
        for proto, port, _ in ports or [("udp", 0, 0)]:
            argv = ["conntrack", "-D", "-p", proto, "--orig-dst", ip]
            if port:
                argv += ["--dport", str(port)]
            self.ns.run(argv, check=False)

    def packets(self) -> int:
        """Packets the LB has DNATed (every per-address chain's counters)."""
        assert self.ns is not None
        out = self.ns.run(["iptables", "-w", "5", "-t", "nat", "-L", "-v", "-x", "-n"]).stdout
        total = 0
        section = ""
        for line in out.splitlines():
            if line.startswith("Chain "):
                section = line.split()[1]
                continue
            parts = line.split()
            if section.startswith("LB-") and parts and parts[0].isdigit():
                total += int(parts[0])
        return total


# One client process making several requests (each a new TCP connection, hence a new conntrack entry and
# a new endpoint pick): prints one JSON [status, body] line per URL; status 0 when nothing answered.
_HTTP_MANY = """
import json, sys, urllib.request, urllib.error
timeout = float(sys.argv[1])
for url in sys.argv[2:]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            print(json.dumps([r.status, r.read().decode(errors="replace")]))
    except urllib.error.HTTPError as e:
        print(json.dumps([e.code, ""]))
    except OSError as e:
        print(json.dumps([0, str(e)]))
"""


def http_many(ns: Netns, urls: Sequence[str], timeout: float = 5.0) -> list[tuple[int, str]]:
    """GET every URL from inside `ns` (names resolved through its resolv.conf); (status, body) each."""
    out = ns.run([sys.executable, "-c", _HTTP_MANY, str(timeout), *urls], check=False,
                 timeout=timeout * len(urls) * 3 + 10)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("[")]
    return [(int(code), str(body)) for code, body in rows]


def web_clients(procs: Iterable[Process]) -> dict[str, list[str]]:
    """Per web server (process log path), the client addresses it logged, in order (http.server writes
    ``<client> - - [...] "GET ..."`` to stderr)."""
    seen: dict[str, list[str]] = {}
    for proc in procs:
        rows = seen.setdefault(str(proc.stderr_path), [])
        with contextlib.suppress(OSError):
            for line in proc.stderr_path.read_text(errors="replace").splitlines():
                if '"GET ' in line:
                    rows.append(line.split(" ", 1)[0])
    return seen


def new_clients(before: dict[str, list[str]], after: dict[str, list[str]]) -> set[str]:
    """Client addresses logged between two `web_clients` snapshots."""
    return {ip for key, rows in after.items() for ip in rows[len(before.get(key, [])):]}
