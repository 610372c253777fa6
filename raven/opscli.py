"""`raven status` and `raven graph` (also `kubectl raven status|graph`): what the cluster's pools look like.

Reads the API with the user's kubeconfig (`--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`, else the
in-cluster service account, as kubectl does): one list each of Gateways, Nodes and PathReports, and one read of
the agents' ConfigMap (raven-system/raven-agent-config, for the tunnel and overlay ranges and the report
heartbeat; its defaults when it cannot be read). No per-object calls. Everything shown is computed by
`raven.agent.status` from the same functions the agents plan with; this module only does the I/O.

Exit codes: 0 shown, 1 the API or Graphviz failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from raven.agent.graph import Paint, render_graph, render_status
from raven.agent.plan import PlanConfig
from raven.agent.status import ClusterStatus, build_status, iter_json, to_json
from raven.api.gateway import Gateway, UnparsableGateway, parse_gateway
from raven.api.node import Node
from raven.api.pathreport import STALE_AFTER_HEARTBEATS, PathReport, PathReportParseError
from raven.config import SETTINGS, ConfigError

COMMANDS = ("status", "graph")
CONFIGMAP_NAMESPACE = "raven-system"
CONFIGMAP_NAME = "raven-agent-config"


def kubeconfig_path(flag: str | None, env: Mapping[str, str], home: Path | None = None) -> str | None:
    """The kubeconfig kubectl would use: the flag, the first existing file of $KUBECONFIG, ~/.kube/config;
    None for the in-cluster service account. ConfigError when there is none of these."""
    if flag:
        if not Path(flag).is_file():
            raise ConfigError(f"kubeconfig {flag!r} does not exist or is not a file")
        return flag
    for part in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if part and Path(part).is_file():
            return part
    default = (home if home is not None else Path.home()) / ".kube" / "config"
    if default.is_file():
        return str(default)
    if env.get("KUBERNETES_SERVICE_HOST"):
        return None
    raise ConfigError("no kubeconfig: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, "
                      "or run inside a cluster")


@dataclass
class Snapshot:
    """What one `raven status` read from the API (converted once into the project's types)."""

    gateways: list[Gateway | UnparsableGateway]
    nodes: list[Node]
    reports: list[PathReport]
    now: datetime
    settings: dict[str, str] = field(default_factory=dict)  # the ConfigMap's data ({} when unread)
    settings_source: str = "defaults"
    calls: int = 0
    notes: list[str] = field(default_factory=list)


def _setting(name: str, data: Mapping[str, str]) -> object:
    s = next(x for x in SETTINGS if x.name == name)
    raw = data.get(s.env or "")
    if raw:
        return s.read(raw, f" (ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME})")
    return s.default


def plan_config(data: Mapping[str, str]) -> tuple[PlanConfig, timedelta]:
    """The agents' ranges and the reports' staleness, from the ConfigMap's data (its defaults when absent)."""
    overlay, tunnel, heartbeat = (_setting(n, data) for n in ("overlay_cidr", "tunnel_cidr", "health_heartbeat"))
    assert isinstance(overlay, str) and isinstance(tunnel, str) and isinstance(heartbeat, int | float)
    try:
        cfg = PlanConfig(overlay_cidr=overlay, tunnel_cidr=tunnel)
    except ValueError as exc:
        raise ConfigError(f"ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: {exc}") from None
    return cfg, timedelta(seconds=STALE_AFTER_HEARTBEATS * float(heartbeat))


async def collect(kubeconfig: str | None) -> Snapshot:
    """One list per kind (concurrently) and one ConfigMap read."""
    from raven.kube.client import GATEWAYS, NODES, PATHREPORTS, ApiError, KubeClient, Resource, new_api_client

    configmaps = Resource("", "v1", "configmaps", namespaced=True)
    client = KubeClient(await new_api_client(kubeconfig), timeout_s=60)
    notes: list[str] = []
    try:
        async def items(res: Resource) -> list[dict[str, object]]:
            try:
                out = (await client.list(res)).get("items") or []
            except ApiError as exc:
                if res is PATHREPORTS and exc.status in (403, 404):
                    notes.append(f"PathReports not readable ({exc.status}): no health shown")
                    return []
                raise
            return [o for o in out if isinstance(o, dict)]

        async def config() -> dict[str, object]:
            try:
                return await client.get(configmaps, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE)
            except ApiError as exc:
                if exc.status in (403, 404):
                    return {"status": exc.status}
                raise

        gws, nodes, reports, cm = await asyncio.gather(items(GATEWAYS), items(NODES), items(PATHREPORTS), config())
    finally:
        await client.close()
    now = datetime.now(UTC)
    parsed_reports: list[PathReport] = []
    for obj in reports:
        try:
            parsed_reports.append(PathReport.from_dict(obj))
        except PathReportParseError as exc:
            notes.append(f"PathReport {_name(obj)} unreadable ({exc}): ignored")
    data = cm.get("data")
    settings = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    source = (f"ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}" if "data" in cm or "metadata" in cm
              else f"defaults (ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: {cm.get('status')})")
    return Snapshot(
        gateways=[parse_gateway(o) for o in gws],
        nodes=[Node.from_dict(o) for o in nodes],
        reports=parsed_reports,
        now=now,
        settings=settings,
        settings_source=source,
        calls=4,
        notes=notes,
    )


def _name(obj: Mapping[str, object]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "?")) if isinstance(meta, dict) else "?"


def status_from(snap: Snapshot) -> ClusterStatus:
    cfg, stale_after = plan_config(snap.settings)
    return build_status(snap.gateways, snap.nodes, snap.reports, snap.now, cfg=cfg, stale_after=stale_after)


def status_extras(snap: Snapshot) -> dict[str, object]:
    """What `-o json` adds to `raven.agent.status.to_json`: where the settings came from, and the notes."""
    return {"settingsSource": snap.settings_source, "notes": list(snap.notes)}


def status_document(snap: Snapshot, status: ClusterStatus) -> dict[str, object]:
    doc = to_json(status)
    doc.update(status_extras(snap))
    return doc


def svg(dot: str, dot_binary: str | None = None) -> str:
    """The DOT text laid out by Graphviz (`dot -Tsvg`); ConfigError when Graphviz is not installed."""
    exe = dot_binary or shutil.which("dot")
    if exe is None:
        raise ConfigError("Graphviz is not installed (no `dot` on PATH): install graphviz, or use -o dot")
    done = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dot -Tsvg failed (exit {done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout


def build_parser(prog: str = "raven") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Raven operator tools: read the cluster's pools, "
                                "paths and their health from the API.")
    sub = p.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="pools, gateways, active endpoints, paths, health and problems")
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")
    gr = sub.add_parser("graph", help="the same picture as Graphviz DOT (or SVG, laid out by `dot`)")
    gr.add_argument("-o", "--output", choices=("dot", "svg"), default="dot")
    for s in (st, gr):
        s.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig file (default: $KUBECONFIG, "
                       "~/.kube/config, in-cluster)")
    st.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                    help="colour the text (auto: only on a terminal, and not when $NO_COLOR is set)")
    return p


def _colour(choice: str, env: Mapping[str, str]) -> bool:
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def main(argv: Sequence[str], env: Mapping[str, str] | None = None, prog: str = "raven") -> int:
    environ = os.environ if env is None else env
    ns = build_parser(prog).parse_args(list(argv))
    try:
        kubeconfig = kubeconfig_path(ns.kubeconfig, environ)
        snap = asyncio.run(collect(kubeconfig))
        # A short-lived process that builds half a million small objects at 1,000 gateways (none in a cycle):
        # the cyclic collector would rescan them over and over (~half the build time), so it is off from here.
        gc.disable()
        status = status_from(snap)
        if ns.command == "status":
            if ns.output == "json":
                # Streamed: at 1,000 gateways the pairs alone are over 100 MB of JSON.
                for piece in iter_json(status, status_extras(snap)):
                    sys.stdout.write(piece)
                sys.stdout.flush()
                return 0
            out = render_status(status, Paint(_colour(ns.color, environ)))
            out += "".join(f"note: {n}\n" for n in snap.notes)
        else:
            dot = render_graph(status)
            out = svg(dot) if ns.output == "svg" else dot
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the API or Graphviz: one line, not a traceback
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    sys.stdout.flush()
    return 0


def kubectl_main() -> int:
    """`kubectl raven ...`: kubectl runs the `kubectl-raven` executable with the words after `raven`; the
    operator tools answer here, anything else goes to `raven` itself."""
    args = sys.argv[1:]
    if not args or args[0] in COMMANDS or args[0] in ("-h", "--help"):
        return main(args, prog="kubectl raven")
    from raven.cli import main as raven_main

    return raven_main(args)
