"""Which Nodes may enter a Gateway's status.nodes, and what is misconfigured around them (pure).

Every agent routes the subnets listed in status.nodes into its tunnel table, which the kernel consults before
`main`. A pod CIDR there is therefore a route on every node of the cluster, and a bad one hijacks traffic:
one that covers the WAN cuts nodes off the API server, one that overlaps another pool's subnet takes that
subnet over. So the controller checks every Node before listing it; a node that fails is left out of the
status (its pods are then unreachable from other pools, which is the honest outcome of a bad pod CIDR) and
reported. `NodeIndex` holds the cluster-wide part of the checks, rebuilt when a Node's facts or the set of
Gateways change (heartbeats change neither); the rules:

- every pod CIDR parses (`InvalidPodCIDR`);
- no pod CIDR covers the InternalIP of any node or the API server's address (the host of the controller's
  kubeconfig or in-cluster config, when it is an IP address), overlaps the cluster's own ranges (`--overlay-cidr`,
  `--tunnel-cidr`, `--service-cidr` when set) or a special-purpose range that is never a pod network
  (0.0.0.0/8, loopback, link-local (cloud metadata), multicast, broadcast; ::1, fe80::/10, ff00::/8)
  (`PodCIDRReserved`);
- no pod CIDR overlaps another node's, in this pool or another (`PodCIDRConflict`). Of the nodes that
  overlap, the one that *had its subnets first* keeps them: a node whose pod CIDRs are all listed for it in
  a current status (of any Gateway) ranks before one whose are not, then the older Node
  (creationTimestamp), then the smaller name. Nodes are taken in that order and each is accepted unless it
  overlaps one already accepted. So a working pool's subnets are never taken away by a newcomer, and the
  decision is the same whichever Gateway is reconciled first (it depends on the statuses, the Nodes and
  nothing else). A node rejected by the first two rules claims nothing: it cannot push a good node out.

Only nodes labelled for an existing Gateway are checked and compete (the others are listed nowhere); the
addresses they must not cover are every node's. IPv6 pod CIDRs (dual stack) are checked like IPv4 ones.

`endpoint_findings` reports what a Gateway's spec.endpoints get wrong about nodes: a node that does not
exist, one that is labelled for another Gateway (or none), one that another Gateway's endpoints name too.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import socket
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.api.openyurt import ANNOTATION_EXTRA_CIDRS

REASON_INVALID_POD_CIDR = "InvalidPodCIDR"
REASON_POD_CIDR_RESERVED = "PodCIDRReserved"
REASON_POD_CIDR_CONFLICT = "PodCIDRConflict"
REASON_ENDPOINT_NODE_NOT_FOUND = "EndpointNodeNotFound"
REASON_ENDPOINT_NODE_NOT_MEMBER = "EndpointNodeNotMember"
REASON_ENDPOINT_NODE_CONFLICT = "EndpointNodeConflict"
REASON_GATEWAY_NOT_FOUND = "GatewayNotFound"
REASON_EXTRA_CIDR_INVALID = "ExtraCIDRInvalid"
REASON_EXTRA_CIDR_RESERVED = "ExtraCIDRReserved"
REASON_EXTRA_CIDR_CONFLICT = "ExtraCIDRConflict"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Never a pod network: a route for them into the tunnel would capture the host's own traffic.
SPECIAL_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)


@dataclass(frozen=True, order=True)
class Finding:
    """One problem with one node: `reason` is the Event reason (and the condition's, when it comes first)."""

    node: str
    reason: str
    message: str


@dataclass(frozen=True)
class Ranges:
    """The address ranges no pod CIDR may overlap, each with what it is (for the message)."""

    reserved: tuple[tuple[Network, str], ...]

    @functools.cached_property
    def spans(self) -> tuple[tuple[int, int, int, str], ...]:
        """(IP version, first, last, what) of each range, as integers: checking 10,000 nodes against them must
        not spend its time in `ipaddress`."""
        return tuple((net.version, *_span(net), what) for net, what in self.reserved)

    @classmethod
    def of(cls, overlay_cidr: str, tunnel_cidr: str, service_cidrs: Sequence[str] = (),
           api_server: str | None = None) -> Ranges:
        """`api_server`: the API server's host; protected when it is an IP address (a name is not resolved)."""
        out: list[tuple[Network, str]] = [
            (ipaddress.ip_network(overlay_cidr), f"the overlay range (--overlay-cidr {overlay_cidr})"),
            (ipaddress.ip_network(tunnel_cidr), f"the tunnel range (--tunnel-cidr {tunnel_cidr})"),
        ]
        out += [(ipaddress.ip_network(c), f"the Service range (--service-cidr {c})") for c in service_cidrs]
        out += [(ipaddress.ip_network(c), what) for c, what in SPECIAL_RANGES]
        api = _parse_ip(api_server)
        if api is not None:
            out.insert(0, (ipaddress.ip_network(api), f"the API server's address {api}"))
        return cls(tuple(out))


@functools.lru_cache(maxsize=1 << 16)  # type: ignore[misc]  # (its type says Callable[..., T])
def parse_cidr(text: str) -> Network | None:
    """A pod CIDR as the kernel would route it (host bits cleared), or None when it does not parse."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None


def _span(net: Network) -> tuple[int, int]:
    first = int(net.network_address)
    return first, first + net.num_addresses - 1


@functools.lru_cache(maxsize=1 << 16)  # type: ignore[misc]  # (its type says Callable[..., T])
def _cidr_span(text: str) -> tuple[int, int, int] | None:
    """(IP version, first, last) of a pod CIDR, None when it does not parse (cached: pure, asked per rebuild)."""
    address, slash, prefix = text.strip().partition("/")
    first = _v4_value(address)
    if first is not None and (not slash or (prefix.isascii() and prefix.isdigit() and int(prefix) <= 32)):
        host_bits = 32 - int(prefix) if slash else 0
        first = first >> host_bits << host_bits
        return 4, first, first + (1 << host_bits) - 1
    net = parse_cidr(text)  # IPv6, a netmask instead of a length, or no CIDR at all
    return None if net is None else (net.version, *_span(net))


def _v4_value(text: str) -> int | None:
    """A dotted-quad IPv4 address as an integer, None for anything else. inet_pton takes exactly what
    `ipaddress` takes (four decimal octets, no leading zeros) at a tenth of the cost: the first rebuild reads
    every node's address and pod CIDR, 20,000 of them on a 10,000-node cluster."""
    if ":" in text:
        return None
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        return None


# One pod CIDR of one node: (IP version, first, last, node, the CIDR as written). A plain tuple: 10,000 of
# them are built on every rebuild, and tuples sort by (version, first) as the sweep needs.
_Claim = tuple[int, int, int, str, str]


def _node_name(n: Node) -> str:
    return n.name


class NodeIndex:
    """The checks that need the whole cluster, over the Nodes and Gateway names it was built from.

    `invalid` holds the nodes that fail on their own (parse, reserved ranges, node addresses);
    `conflicts` the pairs of remaining nodes whose pod CIDRs overlap, which `rejections()` resolves.
    """

    def __init__(self, nodes: Iterable[Node], gateways: Collection[str], ranges: Ranges,
                 gateway_extras: Mapping[str, Sequence[str]] | None = None) -> None:
        all_nodes = sorted(nodes, key=_node_name)
        self.members: dict[str, Node] = {n.name: n for n in all_nodes if n.gateway in gateways}
        self.ranges = ranges
        self.gateway_extras = {g: tuple(c) for g, c in (gateway_extras or {}).items() if g in gateways and c}
        # Whether any extra CIDR is to be checked at all (asked on every reconcile: never a scan of the nodes).
        self.has_extras = bool(self.gateway_extras) or any(n.extra_cidrs for n in self.members.values())
        addresses: dict[int, list[tuple[int, str]]] = {4: [], 6: []}
        for n in all_nodes:
            ip = _ip_value(n.internal_ip) if n.internal_ip else None
            if ip is not None:
                addresses[ip[0]].append((ip[1], n.name))
        for family in addresses.values():
            family.sort()
        self.invalid: dict[str, Finding] = {}
        claims: list[_Claim] = []
        for node in self.members.values():
            problem, own = _check_node(node, addresses, ranges)
            if problem is not None:
                self.invalid[node.name] = problem
            else:
                claims.extend(own)
        # node -> the other nodes it overlaps, with the two CIDRs of each overlap
        self.conflicts: dict[str, dict[str, tuple[str, str]]] = {}
        claims.sort()
        self.addresses = addresses
        self.pod_claims = claims
        for version in (4, 6):
            self._sweep([c for c in claims if c[0] == version])

    def _sweep(self, claims: Sequence[_Claim]) -> None:
        """Pairs of overlapping claims of different nodes. Sorted by start, a group of claims whose ranges
        chain together is closed as soon as the next one starts after the group's end; only the (rare)
        groups of more than one claim are compared pairwise."""
        group: list[_Claim] = []
        end = -1
        for c in [*claims, None]:
            if c is not None and c[1] <= end:
                group.append(c)
                end = max(end, c[2])
                continue
            if len(group) > 1:
                for i, (_, a_first, a_last, a_node, a_cidr) in enumerate(group):
                    for _, b_first, b_last, b_node, b_cidr in group[i + 1 :]:
                        if a_node != b_node and b_first <= a_last and a_first <= b_last:
                            self.conflicts.setdefault(a_node, {})[b_node] = (a_cidr, b_cidr)
                            self.conflicts.setdefault(b_node, {})[a_node] = (b_cidr, a_cidr)
            if c is not None:
                group, end = [c], c[2]

    def rejections(self, incumbent: Callable[[Node], bool]) -> dict[str, Finding]:
        """Every member node left out of the statuses, by name. `incumbent(node)`: are all the node's pod
        CIDRs listed for it in a current status (see the module docstring for the order)?"""
        out = dict(self.invalid)
        if not self.conflicts:
            return out

        def rank(name: str) -> tuple[bool, bool, str, str]:
            n = self.members[name]
            return (not incumbent(n), not n.created, n.created, n.name)

        accepted: set[str] = set()
        for name in sorted(self.conflicts, key=rank):
            winners = sorted(other for other in self.conflicts[name] if other in accepted)
            if not winners:
                accepted.add(name)
                continue
            other = winners[0]
            mine, theirs = self.conflicts[name][other]
            gw = self.members[other].gateway
            out[name] = Finding(name, REASON_POD_CIDR_CONFLICT,
                                f"node {name}: pod CIDR {mine} overlaps {theirs} of node {other} (gateway {gw}), "
                                "which had it first; node left out of the network")
        return out


    def extras(self, listed: Callable[[str], Collection[str]]) -> Extras:
        """The extra-allowed-source-cidrs that may be routed, and a finding for each one that may not.

        The same rules as pod CIDRs (it parses; it covers no node's InternalIP and no reserved range; it overlaps
        no other node's pod CIDR and no extra CIDR accepted before it), but a bad one is dropped alone: its node
        keeps its pod CIDRs, and a good extra CIDR never pushes out a pod CIDR. Of overlapping extra CIDRs, those
        already listed in a current status (`listed(owner)`: the subnets listed for a node, or for a Gateway's
        tunnel endpoint) come first, then nodes in name order, then Gateways' annotations: what works stays."""
        owners: list[tuple[str, str, tuple[str, ...]]] = [
            ("node", n.name, n.extra_cidrs) for n in self.members.values()
            if n.extra_cidrs and n.name not in self.invalid]
        owners += [("gateway", g, c) for g, c in sorted(self.gateway_extras.items())]
        candidates: list[tuple[bool, int, str, str, str]] = []
        for order, (kind, owner, cidrs) in enumerate(owners):
            have = {parse_cidr(s) for s in listed(owner)}
            for cidr in cidrs:
                candidates.append((parse_cidr(cidr) not in have, order, kind, owner, cidr))
        accepted: list[_Claim] = []
        out = Extras()
        for _, _, kind, owner, cidr in sorted(candidates):
            who = f"{kind} {owner}"
            problem = self._extra_problem(who, owner if kind == "node" else None, cidr, accepted)
            if problem is not None:
                out.findings.append(Finding(owner, problem[0], f"{who}: {problem[1]}"))
                continue
            span = _cidr_span(cidr)
            assert span is not None
            accepted.append((*span, owner, cidr))
            target = out.by_node if kind == "node" else out.by_gateway
            target.setdefault(owner, []).append(cidr)
        out.findings.sort()
        return out

    def _extra_problem(self, who: str, node: str | None, cidr: str,
                       accepted: Sequence[_Claim]) -> tuple[str, str] | None:
        what = f"annotation {ANNOTATION_EXTRA_CIDRS} {cidr!r}"
        tail = "; that CIDR is ignored (nothing else changes)"
        span = _cidr_span(cidr)
        if span is None:
            return REASON_EXTRA_CIDR_INVALID, f"{what} does not parse{tail}"
        version, first, last = span
        hit = _covered(self.addresses[version], first, last)
        if hit is not None:
            ip = ipaddress.ip_address(hit[0]) if version == 4 else ipaddress.IPv6Address(hit[0])
            return REASON_EXTRA_CIDR_RESERVED, f"{what} covers {ip}, the InternalIP of node {hit[1]}{tail}"
        reserved = _reserved(self.ranges, cidr)
        if reserved is not None:
            return REASON_EXTRA_CIDR_RESERVED, f"{what} overlaps {reserved}{tail}"
        for c_version, c_first, c_last, c_node, c_cidr in self.pod_claims:
            if c_version == version and c_node != node and c_first <= last and first <= c_last:
                return REASON_EXTRA_CIDR_CONFLICT, f"{what} overlaps pod CIDR {c_cidr} of node {c_node}{tail}"
        for c_version, c_first, c_last, c_owner, c_cidr in accepted:
            if c_version == version and c_first <= last and first <= c_last:
                return REASON_EXTRA_CIDR_CONFLICT, f"{what} overlaps extra CIDR {c_cidr} of {c_owner}{tail}"
        return None


@dataclass
class Extras:
    """`NodeIndex.extras()`: accepted extra CIDRs by node and by Gateway, and the findings about the others."""

    by_node: dict[str, list[str]] = field(default_factory=dict)
    by_gateway: dict[str, list[str]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


def is_incumbent(node: Node, listed: Collection[str] | None) -> bool:
    """Whether every pod CIDR of `node` is among `listed` (its subnets in a current status), compared as
    networks. A node with no pod CIDR claims nothing and is never in a conflict."""
    if listed is None:
        return False
    have = {parse_cidr(s) for s in listed}
    return all(parse_cidr(c) in have for c in node.pod_cidrs)


@functools.lru_cache(maxsize=1 << 16)  # type: ignore[misc]  # (its type says Callable[..., T])
def _ip_value(text: str) -> tuple[int, int] | None:
    v4 = _v4_value(text)
    if v4 is not None:
        return 4, v4
    ip = _parse_ip(text)
    return None if ip is None else (ip.version, int(ip))


def _parse_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _covered(addresses: Sequence[tuple[int, str]], first: int, last: int) -> tuple[int, str] | None:
    i = bisect.bisect_left(addresses, (first, ""))
    return addresses[i] if i < len(addresses) and addresses[i][0] <= last else None


@functools.lru_cache(maxsize=1 << 16)  # type: ignore[misc]  # (its type says Callable[..., T])
def _reserved(ranges: Ranges, cidr: str) -> str | None:
    """The first reserved range a (parsable) pod CIDR overlaps, or None; cached, as the pod CIDRs of 10,000
    nodes are checked on every rebuild and hardly ever change."""
    span = _cidr_span(cidr)
    if span is None:
        return None
    version, first, last = span
    for r_version, r_first, r_last, what in ranges.spans:
        if r_version == version and r_first <= last and first <= r_last:
            return what
    return None


def _check_node(node: Node, addresses: Mapping[int, Sequence[tuple[int, str]]],
                ranges: Ranges) -> tuple[Finding | None, list[_Claim]]:
    claims: list[_Claim] = []
    for cidr in node.pod_cidrs:
        span = _cidr_span(cidr)
        if span is None:
            return Finding(node.name, REASON_INVALID_POD_CIDR,
                           f"node {node.name}: pod CIDR {cidr!r} does not parse; node left out of the network"), []
        version, first, last = span
        hit = _covered(addresses[version], first, last)
        if hit is not None:
            ip = ipaddress.ip_address(hit[0]) if version == 4 else ipaddress.IPv6Address(hit[0])
            whose = "its own InternalIP" if hit[1] == node.name else f"the InternalIP of node {hit[1]}"
            return Finding(node.name, REASON_POD_CIDR_RESERVED,
                           f"node {node.name}: pod CIDR {cidr} covers {ip}, {whose}; node left out of the network"), []
        what = _reserved(ranges, cidr)
        if what is not None:
            return Finding(node.name, REASON_POD_CIDR_RESERVED,
                           f"node {node.name}: pod CIDR {cidr} overlaps {what}; node left out of the network"), []
        claims.append((version, first, last, node.name, cidr))
    return None, claims


def endpoint_findings(gw: Gateway, nodes: Callable[[str], Node | None],
                      listed_by: Mapping[str, Collection[str]]) -> list[Finding]:
    """What `gw`'s spec.endpoints get wrong about nodes, sorted. `listed_by`: node -> the Gateways whose
    endpoints name it."""
    out: set[Finding] = set()
    for ep in gw.spec.all_endpoints:
        name = ep.node_name
        if not name:
            continue  # a spec problem (validate() reports it)
        node = nodes(name)
        if node is None:
            out.add(Finding(name, REASON_ENDPOINT_NODE_NOT_FOUND,
                            f"endpoint {name} ({ep.type}): no such node; it cannot be elected until it exists"))
        elif node.gateway != gw.name:
            label = f"labelled for gateway {node.gateway}" if node.gateway else "not labelled for any gateway"
            out.add(Finding(name, REASON_ENDPOINT_NODE_NOT_MEMBER,
                            f"endpoint {name} ({ep.type}): the node is {label}; it cannot be elected here"))
        others = sorted(set(listed_by.get(name, ())) - {gw.name})
        if others:
            out.add(Finding(name, REASON_ENDPOINT_NODE_CONFLICT,
                            f"endpoint {name} ({ep.type}): the node is also an endpoint of gateway(s) "
                            f"{', '.join(others)}; only the gateway it is labelled for can elect it"))
    return sorted(out)
