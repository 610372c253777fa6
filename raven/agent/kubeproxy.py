"""What kube-proxy (iptables mode) on this node does to Service traffic that crosses pools (pure).

Raven gives node-originated traffic a source every pool routes back (`raven.agent.plan.node_source`), and
MASQUERADE out of raven0/raven1 takes that same address, so whatever kube-proxy masquerades still routes. What
can still break or degrade cross-pool Service traffic is read from kube-proxy's nat rules (``iptables-save -t
nat``): its per-Service chains ``KUBE-SVC-*`` mark for masquerade (``-j KUBE-MARK-MASQ``) either everything
(``--masquerade-all``), or what is not "local" by its ``--detect-local-mode`` (``! -s <cluster or node CIDR>``,
``! -i <bridge or prefix>``), or, without a way to tell local traffic (no ``--cluster-cidr``), nothing but
external traffic. Findings:

- nothing marked: a host-network client reaching a ClusterIP keeps the node IP the route to the ClusterIP gave
  it; an endpoint in another pool cannot answer that address (other pools do not route node IPs). Broken;
- this node's pod CIDR outside the ``! -s`` CIDRs: its pods' Service traffic is masqueraded (to this node's
  Raven source when the endpoint is in another pool: it works, the client pod's address is lost);
- ``--masquerade-all``: the same for every pod.

No KUBE-SVC chain (kube-proxy in IPVS or nftables mode, or a replacement such as Cilium's): nothing is checked.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MasqueradePolicy:
    """How kube-proxy decides which ClusterIP traffic to masquerade, as read from its rules."""

    found: bool = False  # any KUBE-SVC-* chain with rules: kube-proxy in iptables mode
    all_traffic: bool = False  # --masquerade-all
    local_cidrs: frozenset[str] = field(default_factory=frozenset)  # ! -s CIDR
    local_ifaces: frozenset[str] = field(default_factory=frozenset)  # ! -i NAME (bridge or prefix+)


def read_policy(nat_save: str) -> MasqueradePolicy:
    """`iptables-save -t nat` text -> kube-proxy's masquerade policy for ClusterIP traffic."""
    found = all_traffic = False
    cidrs: set[str] = set()
    ifaces: set[str] = set()
    for line in nat_save.splitlines():
        if not line.startswith("-A KUBE-SVC-"):
            continue
        found = True
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if words[-2:] != ["-j", "KUBE-MARK-MASQ"]:
            continue
        negated = {words[i + 1]: words[i + 2] for i, w in enumerate(words[:-2]) if w == "!" and i + 2 < len(words)}
        if "-s" in negated:
            cidrs.add(negated["-s"])
        elif "-i" in negated:
            ifaces.add(negated["-i"])
        elif "-d" in words:  # a ClusterIP rule that marks whatever the source: --masquerade-all
            all_traffic = True
    return MasqueradePolicy(found, all_traffic, frozenset(cidrs), frozenset(ifaces))


def findings(policy: MasqueradePolicy, pod_cidrs: Sequence[str], node_source: str | None) -> list[str]:
    """One line per problem kube-proxy's policy causes for cross-pool Service traffic of this node."""
    if not policy.found:
        return []
    out: list[str] = []
    src = node_source or "this node's Raven source"
    if policy.all_traffic:
        out.append(f"kube-proxy masquerades all Service traffic (--masquerade-all): endpoints in other pools see {src} "
                   "instead of the client pod's address")
    elif not policy.local_cidrs and not policy.local_ifaces:
        out.append("kube-proxy marks no ClusterIP traffic for masquerade (no --cluster-cidr / --detect-local-mode): "
                   "host-network clients on this node reach endpoints in other pools from the node IP, which other "
                   "pools do not route back; set kube-proxy's --cluster-cidr to the pods' CIDRs")
    nets = []
    for cidr in policy.local_cidrs:
        try:
            nets.append(ipaddress.IPv4Network(cidr, strict=False))
        except ValueError:
            continue
    if nets and not policy.all_traffic:
        for cidr in pod_cidrs:
            try:
                net = ipaddress.IPv4Network(cidr)
            except ValueError:
                continue
            if not any(net.subnet_of(n) for n in nets):
                out.append(f"this node's pod CIDR {cidr} is outside kube-proxy's --cluster-cidr "
                           f"({', '.join(sorted(policy.local_cidrs))}): its pods' Service traffic is masqueraded "
                           f"(to {src} towards other pools: it routes, the client pod's address is lost)")
    return out
