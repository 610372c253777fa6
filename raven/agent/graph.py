"""Plain-text (and Graphviz) views of the topology and of one node's plan.

Rendered from the very `Topology` and `PlanResult` the agent plans with (like Kilo's `kgctl graph`), so
what you look at is what runs. No I/O: callers print the strings.
"""

from __future__ import annotations

from collections.abc import Sequence

from raven.agent.plan import PlanResult
from raven.agent.topology import GatewayView, Topology, build_topology, view_name
from raven.api.gateway import Gateway


def _describe_gateway(g: GatewayView) -> str:
    node = g.endpoint_node
    if not g.active or node is None:
        return f"{g.name}: no active tunnel endpoint"
    if g.reachable:
        reach = f"reachable at {g.address}:{g.port}"
    elif g.exposed:
        reach = f"exposed by {g.expose_type}, no public address yet"
    else:
        reach = "under NAT"
    subnets = ",".join(g.remote_subnets) or "-"
    return f"{g.name}: endpoint {node.name} ({node.ip}), {reach}, inner {g.inner}, subnets {subnets}"


def render_paths(topology: Topology) -> str:
    """Every gateway, then one line per pair: "a -> b: direct (x initiates)" or "a -> b: via relay r"."""
    lines = ["gateways:"]
    lines += [f"  {_describe_gateway(g)}" for g in sorted(topology.gateways.values(), key=view_name)]
    lines.append("paths:")
    lines += [f"  {p.describe()}" for p in topology.all_paths()] or ["  (fewer than two active gateways)"]
    if topology.problems:
        lines.append("problems:")
        lines += [f"  {p}" for p in topology.problems]
    return "\n".join(lines) + "\n"


def render_topology(gateways: Sequence[Gateway], tunnel_cidr: str) -> str:
    return render_paths(build_topology(gateways, tunnel_cidr))


def render_dot(topology: Topology) -> str:
    """Graphviz: solid edges are IPsec tunnels (arrow from the initiator), dashed ones relayed pairs."""
    out = ["graph raven {", "  node [shape=box];"]
    for g in sorted(topology.gateways.values(), key=view_name):
        style = "" if g.active else ", style=dashed"
        nat = " (NAT)" if g.active and not g.reachable else ""
        out.append(f'  "{g.name}" [label="{g.name}{nat}"{style}];')
    for p in topology.all_paths():
        if p.kind == "direct":
            other = p.dst if p.initiator == p.src else p.src
            out.append(f'  "{p.initiator}" -- "{other}" [dir=forward];')
        elif p.kind == "relay":
            out.append(f'  "{p.src}" -- "{p.dst}" [style=dashed, label="via {p.via}"];')
        else:
            out.append(f'  "{p.src}" -- "{p.dst}" [style=dotted, color=red, label="unreachable"];')
    out.append("}")
    return "\n".join(out) + "\n"


def render_plan(node_name: str, result: PlanResult) -> str:
    """One node's plan: role, paths from its gateway, and a count of every kind of kernel/VPN object."""
    s = result.state
    lines = [f"node {node_name}: role {result.role}, gateway {result.gateway or '-'}"]
    lines += [f"  {p.describe()}" for p in result.paths]
    lines.append(
        f"  links {len(s.links)}, addresses {len(s.addresses)}, routes {len(s.routes)}, rules {len(s.rules)}, "
        f"neighbours {len(s.neighbors)}, fdb {len(s.fdb)}, ipsec {len(s.ipsec)}"
    )
    for conn in sorted(s.ipsec):
        side = "initiates" if conn.initiator else "responds"
        lines.append(
            f"  ipsec {conn.name}: {side}, remote {','.join(conn.remote_addrs)}:{conn.remote_port}, "
            f"{conn.local_ts} <-> {conn.remote_ts}"
        )
    lines += [f"  problem: {p}" for p in result.problems]
    return "\n".join(lines) + "\n"
