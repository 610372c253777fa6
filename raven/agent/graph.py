"""Plain-text (and Graphviz) views of the topology and of one node's plan.

Rendered from the very `Topology` and `PlanResult` the agent plans with (like Kilo's `kgctl graph`), so
what you look at is what runs. No I/O: callers print the strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from raven.agent.plan import PlanResult
from raven.agent.status import ClusterStatus, Health, Pool, status_of
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
    """The graph of a topology alone (no health, no conditions): `render_graph` of its status."""
    return render_graph(status_of(topology))


# --- `raven status` (text) and `raven graph` (DOT), from raven.agent.status.ClusterStatus ---

# Above this many pairs (or members), the text lists only those that are not up, and counts the rest:
# 1,000 gateways are half a million pairs, which `-o json` lists.
TEXT_LIST_LIMIT = 400
_COLOURS = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}
STATE_COLOUR = {"up": "green", "degraded": "yellow", "down": "red", "unknown": "dim"}


class Paint:
    """ANSI colour when `on` (a terminal), plain text otherwise."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str, colour: str) -> str:
        return f"\033[{_COLOURS[colour]}m{text}\033[0m" if self.on and text else text


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def format_rtt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}ms"


def format_loss(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def _age(h: Health, now: datetime) -> float | None:
    return None if h.since is None else max(0.0, (now - h.since).total_seconds())


def _table(rows: Sequence[Sequence[str]], paint: Paint, colours: Sequence[str | None] = ()) -> list[str]:
    """Aligned columns; `colours[i]`: the colour of row i's state column (the 1st column named STATE)."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    state_col = rows[0].index("STATE") if "STATE" in rows[0] else -1
    out = []
    for n, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            text = cell.ljust(widths[i]) if i < len(row) - 1 else cell
            colour = colours[n] if n < len(colours) else None
            if n == 0:
                text = paint(text, "bold")
            elif i == state_col and colour is not None:
                text = paint(text, colour)
            cells.append(text)
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _reach(p: Pool) -> str:
    if not p.active:
        return "-"
    if p.reachable:
        return f"{p.address}:{p.port}"
    if p.exposure:
        return f"(no public address yet: {p.exposure})"
    return "(under NAT: it dials out)"


def _exposure(p: Pool) -> str:
    if p.exposure:
        return p.exposure
    return "under NAT" if p.under_nat else "node IP"


def render_status(s: ClusterStatus, paint: Paint | None = None) -> str:
    """`raven status` as text: a summary line, the pools, members, pairs and problems."""
    pt = paint or Paint(False)
    sm = summary_counts(s)
    lines = [sm, ""]
    rows = [["POOL", "ENDPOINT", "EXPOSURE", "PEERS DIAL", "INNER", "NODES", "SUBNETS"]]
    for p in s.pools:
        ready = sum(1 for m in p.members if m.ready)
        subnets = ",".join(p.subnets) if len(p.subnets) <= 3 else f"{','.join(p.subnets[:2])},+{len(p.subnets) - 2}"
        rows.append([p.gateway, f"{p.endpoint} ({p.endpoint_ip})" if p.endpoint else pt("none", "red"),
                     _exposure(p), _reach(p), p.inner or "-", f"{len(p.members)} ({ready} ready)", subnets or "-"])
    lines += ["POOLS (one per Gateway)", *_table(rows, pt), ""]

    members = [(p, m) for p in s.pools for m in p.members if m.role == "member"]
    shown = members if len(members) <= TEXT_LIST_LIMIT else [(p, m) for p, m in members if m.health.state != "up"]
    lines.append("MEMBERS (reach other pools via their gateway, over raven0; health of that hop)")
    rows = [["POOL", "NODE", "PATH", "STATE", "RTT", "LOSS", "FOR", "READY"]]
    colours: list[str | None] = [None]
    for p, m in shown:
        h = m.health
        rows.append([p.gateway, f"{m.name} ({m.ip})", f"via {p.endpoint}" if p.endpoint else "no gateway",
                     h.state, format_rtt(h.rtt_seconds), format_loss(h.loss_ratio), format_age(_age(h, s.now)),
                     {True: "yes", False: "NO", None: "no Node"}[m.ready]])
        colours.append(STATE_COLOUR[h.state])
    lines += _table(rows, pt, colours) if len(rows) > 1 else ["  (none)"]
    if len(shown) < len(members):
        lines.append(f"  ({len(members) - len(shown)} more members up: -o json lists every one)")
    lines.append("")

    pairs = list(s.pairs)
    shown_pairs = pairs if len(pairs) <= TEXT_LIST_LIMIT else [p for p in pairs if p.state != "up"]
    lines.append("PAIRS (gateway to gateway; a relay carries the pair over two tunnels)")
    rows = [["A", "B", "PATH", "STATE", "RTT", "LOSS", "FOR"]]
    colours = [None]
    for pr in shown_pairs[:TEXT_LIST_LIMIT]:
        h = pr.health
        state = h.state if pr.kind != "unreachable" else "down"
        rows.append([pr.a, pr.b, pr.describe, state, format_rtt(h.rtt_seconds), format_loss(h.loss_ratio),
                     format_age(_age(h, s.now))])
        colours.append("red" if pr.kind == "unreachable" else STATE_COLOUR[h.state])
    lines += _table(rows, pt, colours) if len(rows) > 1 else ["  (fewer than two active gateways)"]
    hidden = len(pairs) - min(len(shown_pairs), TEXT_LIST_LIMIT)
    if hidden:
        relays: dict[str, int] = {}
        for pr in pairs:
            if pr.via is not None:
                relays[pr.via] = relays.get(pr.via, 0) + 1
        carried = ", ".join(f"{name} carries {n}" for name, n in sorted(relays.items()))
        lines.append(f"  ({hidden} more pairs not listed{': relays: ' + carried if carried else ''}; "
                     "-o json lists every pair)")
    lines.append("")

    detours = [(p.gateway, r) for p in s.pools for r in p.routes if r.via]
    if any(p.routes for p in s.pools):
        lines.append("ROUTES (routing by cost: paths a gateway sends through a relay; the others go direct)")
        rows = [["FROM", "TO", "VIA", "COST", "FOR"]]
        for src, r in detours[:TEXT_LIST_LIMIT]:
            age = (s.now - r.since).total_seconds() if r.since is not None else None
            rows.append([src, r.gateway, r.via, f"{r.cost:.1f}", format_age(age)])
        lines += _table(rows, pt) if len(rows) > 1 else ["  (none: every pool is reached directly)"]
        if len(detours) > TEXT_LIST_LIMIT:
            lines.append(f"  ({len(detours) - TEXT_LIST_LIMIT} more: -o json lists every route)")
        lines.append("")

    lines.append(pt(f"PROBLEMS ({len(s.problems)})", "red" if s.problems else "green") if s.problems
                 else pt("PROBLEMS: none", "green"))
    lines += [f"  {p.message}" if p.reason in ("Planner",) else f"  [{p.reason}] {p.message}" for p in s.problems]
    return "\n".join(lines) + "\n"


def summary_counts(s: ClusterStatus) -> str:
    kinds = {"direct": 0, "relay": 0, "unreachable": 0}
    bad = 0
    for p in s.pairs:
        kinds[p.kind] += 1
        bad += p.state in ("down", "degraded") or p.kind == "unreachable"
    active = sum(1 for p in s.pools if p.active)
    nodes = sum(len(p.members) for p in s.pools)
    return (f"{len(s.pools)} gateways ({active} active), {nodes} nodes; {len(s.pairs)} pairs: {kinds['direct']} "
            f"direct, {kinds['relay']} relayed, {kinds['unreachable']} unreachable, {bad} unhealthy; "
            f"{len(s.problems)} problems")


NL = "\\n"  # a line break inside a DOT label


def _q(text: str) -> str:
    """A DOT quoted string; `NL` in it stays a DOT line break (Kubernetes names hold no quote or backslash)."""
    return '"' + text.replace('"', '\\"') + '"'


def _edge_attrs(h: Health, kind: str, via: str | None) -> str:
    label = format_rtt(h.rtt_seconds) if h.rtt_seconds is not None else h.state
    if via is not None:
        label = f"via {via}{NL}{label}"
    attrs = [f"label={_q(label)}"]
    if kind == "relay":
        attrs.append("style=dashed")
    if kind == "unreachable":
        attrs += ["style=dotted", "color=red", "fontcolor=red"]
    elif h.bad:
        attrs += ["color=red", "fontcolor=red", "penwidth=2"]
    elif h.state == "unknown":
        attrs.append("color=gray50")
    return ", ".join(attrs)


def render_graph(s: ClusterStatus) -> str:
    """Graphviz DOT: each pool a cluster (its gateway node doubled), members joined to their gateway, one edge
    per pair of pools between their active endpoints (solid: a tunnel; dashed: relayed, labelled with the
    relay), labelled with the RTT; unhealthy links red, pairs without a path dotted red."""
    out = ["graph raven {", "  graph [rankdir=LR, fontname=Helvetica, compound=true];",
           "  node [shape=box, fontname=Helvetica, fontsize=10];", "  edge [fontname=Helvetica, fontsize=9];"]
    anchor: dict[str, str] = {}  # gateway -> the DOT node its pairs attach to
    for i, p in enumerate(s.pools):
        nat = " (NAT)" if p.active and not p.reachable else ""
        expose = f", {p.exposure}" if p.exposure else ""
        style = "" if p.active else " style=dashed; color=red;"
        label = f"{p.gateway}{nat}{expose}" + ("" if p.active else " - no active endpoint")
        out.append(f"  subgraph cluster_{i} {{")
        out.append(f"    label={_q(label)};{style}")
        for m in p.members:
            node_id = _q(f"{p.gateway}/{m.name}")
            if m.role == "gateway":
                label = NL.join([m.name, m.ip, *([f"inner {p.inner}"] if p.inner else [])])
                out.append(f"    {node_id} [label={_q(label)}, peripheries=2, style=bold];")
            else:
                out.append(f"    {node_id} [label={_q(m.name + NL + m.ip)}];")
        if p.endpoint is None:
            # An empty pool still shows, as a placeholder node.
            node_id = _q(f"{p.gateway}/")
            out.append(f"    {node_id} [label=\"no active endpoint\", shape=plaintext];")
            anchor[p.gateway] = node_id
        else:
            anchor[p.gateway] = _q(f"{p.gateway}/{p.endpoint}")
        out.append("  }")
        if p.endpoint is not None:
            for m in p.members:
                if m.role == "member":
                    attrs = _edge_attrs(m.health, "member", None)
                    out.append(f"  {_q(p.gateway + '/' + m.name)} -- {anchor[p.gateway]} [{attrs}, weight=4];")
    for pr in s.pairs:
        out.append(f"  {anchor[pr.a]} -- {anchor[pr.b]} [{_edge_attrs(pr.health, pr.kind, pr.via)}];")
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
