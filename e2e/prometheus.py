"""A real Prometheus server (Debian's `prometheus`) scraping every agent and controller of a `RavenCluster`.

It runs in the cluster's control-plane namespace on its loopback (127.0.0.1:9090 there: every lab has its
own). Controllers serve /metrics in that namespace already; each agent serves on its own node's loopback, so
one TCP forwarder per node (`Lab.forward_tcp`, control plane -> node) makes it scrapable, labelled with the
node's name. Rules are loaded from `manifests/monitoring/raven-alerts.yaml` with every `for:` shortened for
tests. Data goes to a temporary directory removed by `close()`; the process is the lab's (killed with it).

    with PrometheusServer(rc, rule_for="3s") as prom:
        prom.wait_alert("RavenTunnelDown", gateway="gw-edge-b")
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from e2e.cluster import AGENT_HTTP, REPO, ConvergenceError, RavenCluster
from e2e.netlab import Process

RULES = REPO / "manifests" / "monitoring" / "raven-alerts.yaml"
LISTEN = "127.0.0.1:9090"


def test_rules(rules: Path, rule_for: str) -> dict[str, Any]:
    """The alerting rules with every `for:` set to `rule_for` (alerts fire within seconds in a test)."""
    doc: dict[str, Any] = yaml.safe_load(rules.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = rule_for
    return doc


class PrometheusServer:
    def __init__(self, rc: RavenCluster, rule_for: str = "3s", interval: str = "1s", rules: Path = RULES) -> None:
        self.rc = rc
        self.rule_for = rule_for
        self.interval = interval
        self.rules = rules
        self.data_dir: Path | None = None
        self.process: Process | None = None
        self.forwarders: list[Process] = []
        self.targets: dict[str, str] = {}  # node -> host:port in the control-plane namespace

    def __enter__(self) -> PrometheusServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def start(self, timeout: float = 60.0) -> None:
        rc, cp = self.rc, self.rc.cl.control_plane
        host, port = AGENT_HTTP.rsplit(":", 1)
        for node in sorted(rc.agents):
            proc, bound = rc.cl.lab.forward_tcp(f"prom-{node}", ("127.0.0.1", 0), (host, int(port)), listen_ns=cp,
                                                connect_ns=rc.cl.nodes[node].netns)
            self.forwarders.append(proc)
            self.targets[node] = f"127.0.0.1:{bound}"
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"{rc.prefix}-prometheus-"))
        rules = self.data_dir / "rules.yaml"
        rules.write_text(yaml.safe_dump(test_rules(self.rules, self.rule_for), sort_keys=False))
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval,
                       "scrape_timeout": self.interval},
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": "raven-agent",
                 "static_configs": [{"targets": [t], "labels": {"node": n}} for n, t in sorted(self.targets.items())]},
                {"job_name": "raven-controller",
                 "static_configs": [{"targets": [rc.controller_http(i) for i in range(len(rc.controllers))]}]},
            ],
        }
        conf = self.data_dir / "prometheus.yml"
        conf.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process = cp.popen(["prometheus", f"--config.file={conf}", f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                                 f"--web.listen-address={LISTEN}", "--log.level=warn"], name="prometheus")
        rc.wait_for("prometheus ready", lambda: self.get("/-/ready")[0] == 200, timeout=timeout, interval=0.2)

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
        for proc in self.forwarders:
            proc.stop()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def get(self, path: str) -> tuple[int, str]:
        if self.process is not None and not self.process.alive():
            raise ConvergenceError(f"prometheus exited: {self.process.logs()[-2000:]}")
        return self.rc.http_get(self.rc.cl.control_plane, LISTEN, path)

    def api(self, path: str, **query: str) -> Any:
        code, body = self.get(f"/api/v1/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else ""))
        doc = json.loads(body) if body.strip().startswith("{") else {}
        if code != 200 or doc.get("status") != "success":
            raise ConvergenceError(f"prometheus {path} {query}: {code} {body[:500]}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self, name: str, state: str = "firing", **labels: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"].get("alertname") == name
                and a["state"] == state and all(a["labels"].get(k) == v for k, v in labels.items())]

    def wait_targets_up(self, timeout: float = 60.0) -> float:
        """Every agent and controller scraped successfully (`up == 1` for each)."""
        want = len(self.targets) + len(self.rc.controllers)
        return self.rc.wait_for(f"{want} targets up", lambda: len(self.query("up == 1")) == want, timeout=timeout,
                                interval=0.5)

    def wait_alert(self, name: str, timeout: float = 60.0, **labels: str) -> float:
        t0 = time.monotonic()
        self.rc.wait_for(f"alert {name} {labels} firing", lambda: bool(self.alerts(name, **labels)), timeout=timeout,
                         interval=0.5)
        return time.monotonic() - t0


# ---------------------------------------------------------------------------------------------------------------
# which metric names the manifests name, and which a /metrics page exports (also used by tests/unit)

MONITORING = REPO / "manifests" / "monitoring"
DASHBOARD = MONITORING / "raven-dashboard.json"
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("_sum", "_count", "_created")}


def dashboard_queries(path: Path = DASHBOARD) -> list[str]:
    doc = json.loads(path.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", []) if t.get("expr")]


def rule_queries(path: Path = RULES) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def referenced_metrics(queries: list[str]) -> set[str]:
    """Every raven_* metric name the queries name (label names and values are not metric names)."""
    import re

    names: set[str] = set()
    for q in queries:
        q = re.sub(r"\{[^}]*\}", "", q)  # label matchers may hold anything
        q = re.sub(r"(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", q)
        names.update(re.findall(r"\b(raven_[a-z0-9_]+)\b", q))
    return names


def exported_metrics(text: str) -> set[str]:
    """The sample names a Prometheus text exposition can carry: every family declared (`# TYPE`, also those
    without samples yet, e.g. a labelled counter nobody incremented) with its type's suffixes, and every sample."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            base = name.removesuffix("_total") if kind == "counter" else name
            names.add(name)
            names.update(base + s for s in _SUFFIXES.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names
