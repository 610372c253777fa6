"""One Raven cluster in network namespaces (prefix ``rve``), built and converged once per session.

The topology is the default one plus spares used by the churn scenarios: a third node in edge-a
(``edge-a-3``) and a whole NAT'd pool ``edge-c`` with its Gateway ``gw-edge-c``; their namespaces and
charons exist from the start, their Node/Gateway objects are registered only by the tests.

Each scenario restores what it changed; the autouse `healthy` fixture checks after every test that
the cluster is back to a full green matrix (waiting for it, so the next scenario starts converged).
Measurements (outages, recovery times) go to `MEASUREMENTS` and are printed in the terminal summary.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.cluster import PathReportWrites, RavenCluster
from e2e.topology import TOPOLOGY_DIR, TopologySpec, parse_topology
from tests.conftest import pytest_runtest_makereport  # noqa: F401  (CI=true: a root skip fails the run)

# A second copy of the suite (another worktree) can run beside this one with its own lab prefix.
PREFIX = os.environ.get("RAVEN_E2E_PREFIX", "rve")
SPARE_NODE = "edge-a-3"
SPARE_POOL_NODE = "edge-c-1"
SPARE_GATEWAY = "gw-edge-c"
MEASUREMENTS: dict[str, Any] = {}


def e2e_spec() -> TopologySpec:
    """The default topology plus the spare node and spare pool (see the module docstring)."""
    doc: dict[str, Any] = yaml.safe_load((TOPOLOGY_DIR / "default.yaml").read_text())
    doc = copy.deepcopy(doc)
    for pool in doc["pools"]:
        if pool["name"] == "edge-a":
            pool["nodes"].append({"name": SPARE_NODE, "ip": "192.168.11.13", "podCIDR": "10.11.2.0/24", "pods": 1})
    doc["pools"].append({
        "name": "edge-c", "nat": True, "lan": "192.168.13.0/24", "podCIDR": "10.14.0.0/16",
        "gateway": SPARE_GATEWAY,
        "nodes": [{"name": SPARE_POOL_NODE, "ip": "192.168.13.11", "podCIDR": "10.14.0.0/24", "pods": 1}],
    })
    doc["gateways"].append({
        "apiVersion": "raven.openyurt.io/v1beta1", "kind": "Gateway", "metadata": {"name": SPARE_GATEWAY},
        "spec": {"tunnelConfig": {"Replicas": 1},
                 "endpoints": [{"nodeName": SPARE_POOL_NODE, "type": "tunnel", "port": 4500, "underNAT": True}]},
    })
    return parse_topology(doc)


@pytest.fixture(scope="session")
def rc(request: pytest.FixtureRequest) -> Iterator[RavenCluster]:
    if os.geteuid() != 0:
        pytest.skip("end-to-end scenarios need root (network namespaces)")
    cluster = RavenCluster(e2e_spec(), prefix=PREFIX, hold_nodes={SPARE_NODE, SPARE_POOL_NODE},
                           hold_gateways={SPARE_GATEWAY})
    failed = True
    try:
        cluster.start()
        matrix = cluster.wait_converged(timeout=120)
        MEASUREMENTS["start_to_green_matrix_s"] = round(cluster.elapsed(), 2)
        MEASUREMENTS["matrix_pairs"] = len(matrix.results)
        failed = False
        yield cluster
    finally:
        # Logs stay (path in the failure messages) when anything failed.
        cluster.close(keep_logs=failed or request.session.testsfailed > 0
                      or os.environ.get("RAVEN_E2E_KEEP") == "1")


def own_cluster(request: pytest.FixtureRequest, cluster: RavenCluster) -> Iterator[RavenCluster]:
    """A module's own cluster (for a module-scoped fixture to yield from): started, converged, closed after the
    module, with its logs kept when anything failed."""
    if os.geteuid() != 0:
        pytest.skip("end-to-end scenarios need root (network namespaces)")
    failed = True
    try:
        cluster.start()
        cluster.wait_converged(timeout=120)
        failed = False
        yield cluster
    finally:
        cluster.close(keep_logs=failed or request.session.testsfailed > 0
                      or os.environ.get("RAVEN_E2E_KEEP") == "1")


@pytest.fixture
def writes(rc: RavenCluster) -> Iterator[PathReportWrites]:
    """Every PathReport write the test's cluster (the session's, or a module's own `rc`) receives meanwhile."""
    counter = PathReportWrites()
    rc.api.server.on_request = counter
    try:
        yield counter
    finally:
        rc.api.server.on_request = None


@pytest.fixture(autouse=True)
def healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each scenario: the cluster must be back to green (a scenario restores what it changed)."""
    yield
    if "rc" not in request.fixturenames:
        return
    cluster: RavenCluster = request.getfixturevalue("rc")
    if cluster.closed:  # the teardown scenario closed it
        return
    cluster.wait_converged(timeout=60)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASUREMENTS:
        terminalreporter.write_sep("-", "raven e2e measurements")
        for key, value in sorted(MEASUREMENTS.items()):
            terminalreporter.write_line(f"{key}: {value}")
