"""NAT traversal's inference as the controller publishes it (reconciler.py `_nat_inferences`), against the test API
server: the NAT'd Gateway's active endpoint config follows what is fresh, including when an observer's report simply
goes stale (its agent died: no event), which the controller times, as it times going stale for health verdicts.

Two reachable gateways (gw-o1, gw-o2: the observers, one node each) and a NAT'd one (gw-n, node n-1). The test writes
the observers' PathReports as their agents would, each a heartbeat 178 s old (stale after 180 s, the default of
--health-stale-after and of the controller's own bound without health failover), so a report goes stale 2 s after
its agent's last write. An agent is alive while the test keeps writing its heartbeat; it dies when the test stops."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from raven.api.gateway import Gateway
from raven.api.pathreport import format_time
from raven.controller.reconciler import GatewayReconciler
from raven.kube.client import GATEWAYS, NODES, PATHREPORTS, ApiError, KubeClient
from raven.nattraversal.core import CONFIG_KEYS
from tests.controller.conftest import RunningController, eventually, gateway_body, node_body
from tests.controller.test_gateway_election import rv, wait_active

Start = Callable[..., Awaitable[RunningController]]

AGE = 178.0  # seconds: each report goes stale 2 s after it was written
SINCE = {"gw-o1": "2026-12-02T18:00:00Z", "gw-o2": "2026-12-02T18:00:05Z"}
ADDRESS = "198.51.100.7"

# Both health modes: with health failover the bound is --health-stale-after, without it NAT_STALE_AFTER (both 180 s),
# and the health verdicts time nothing for gw-n here (the observers probe nobody: their reports name no target).
pytestmark = pytest.mark.parametrize("health_failover", [True, False], ids=["health", "no-health"])


async def heartbeat(kube: KubeClient, observer: str, port: int = 4500, age: float = AGE) -> None:
    """The observer's agent writes its report: its sighting of n-1 at ADDRESS:port and a heartbeat `age` s old."""
    node = f"{observer.removeprefix('gw-')}-1"
    try:
        await kube.create(PATHREPORTS, {"apiVersion": "health.raven-py.io/v1alpha1", "kind": "PathReport",
                                        "metadata": {"name": node}, "spec": {"nodeName": node}})
    except ApiError as exc:
        if exc.status != 409:
            raise
    hb = datetime.now(UTC) - timedelta(seconds=age)
    status = {"gateway": observer, "role": "gateway", "heartbeatTime": format_time(hb), "probeIntervalSeconds": 0.2,
              "targets": [], "observedEndpoints": [{"gateway": "gw-n", "node": "n-1", "address": ADDRESS,
                                                    "port": port, "since": SINCE[observer]}]}
    await kube.merge_patch(PATHREPORTS, node, {"status": status}, subresource="status")


async def nat_config(kube: KubeClient) -> dict[str, str]:
    """The NAT keys of gw-n's active endpoint config."""
    gw = await kube.get(GATEWAYS, "gw-n")
    for ep in (gw.get("status") or {}).get("activeEndpoints") or []:
        return {k: v for k, v in (ep.get("config") or {}).items() if k in CONFIG_KEYS}
    return {}


def alive(kube: KubeClient, *observers: str, ports: dict[str, int] | None = None) -> Callable[[],
                                                                                             Awaitable[dict[str, str]]]:
    """Read gw-n's NAT config while the observers' agents keep writing their heartbeats."""
    async def read() -> dict[str, str]:
        for o in observers:
            await heartbeat(kube, o, (ports or {}).get(o, 4500))
        return await nat_config(kube)
    return read


async def cluster(kube: KubeClient, start: Start, health_failover: bool) -> RunningController:
    for name, node in (("gw-o1", "o1-1"), ("gw-o2", "o2-1"), ("gw-n", "n-1")):
        await kube.create(NODES, node_body(node, name))
        body = gateway_body(name, [node])
        body["spec"]["endpoints"][0]["underNAT"] = name == "gw-n"
        await kube.create(GATEWAYS, body)
    ctrl = await start(health_failover=health_failover)
    for name, node in (("gw-o1", "o1-1"), ("gw-o2", "o2-1"), ("gw-n", "n-1")):
        await wait_active(kube, name, [node])
    return ctrl


def both(config: dict[str, str], behaviour: str = "endpoint-independent") -> bool:
    return config.get("natBehaviour") == behaviour and config.get("natObservers") == "gw-o1,gw-o2"


async def test_an_observer_going_stale_leaves_the_remaining_observers_view_and_its_return_restores_both(
        kube: KubeClient, start: Start, health_failover: bool) -> None:
    await cluster(kube, start, health_failover)
    await heartbeat(kube, "gw-o1", age=0.0)  # fresh for 180 s: nothing of gw-o1's is due in this test
    await eventually(alive(kube, "gw-o2"), both, what="gw-n inferred EIM from both observers")
    # gw-o2's agent dies: nothing more is written, so no event arrives; its report goes stale within 2 s.
    left = await eventually(lambda: nat_config(kube), lambda c: c.get("natObservers") == "gw-o1",
                            what="the inference made again from gw-o1's report alone")
    assert left == {"natBehaviour": "unknown", "natMappedAddress": ADDRESS, "natMappedPort": "4500",
                    "natObservers": "gw-o1", "natSince": str(int(datetime.fromisoformat(SINCE["gw-o1"]).timestamp()))}
    # It comes back with the same sighting: a write whose observedEndpoints did not change, only fresh again (and
    # nothing else is due: gw-o1's report turns stale in minutes).
    await heartbeat(kube, "gw-o2", age=0.0)
    await eventually(lambda: nat_config(kube), both, what="gw-n inferred EIM from both observers again")


async def test_the_inference_is_withdrawn_when_every_observer_went_stale(kube: KubeClient, start: Start,
                                                                         health_failover: bool) -> None:
    await cluster(kube, start, health_failover)
    ports = {"gw-o1": 4500, "gw-o2": 61000}  # a symmetric NAT: each observer sees another port
    seen = await eventually(alive(kube, "gw-o1", "gw-o2", ports=ports), lambda c: both(c, "address-dependent"),
                            what="gw-n inferred address-dependent")
    assert seen["natMappedPort"] == "61000"  # the later sighting's (gw-o2's)
    # Both agents die: nothing is written any more.
    await eventually(lambda: nat_config(kube), lambda c: c == {}, what="the inference withdrawn")
    gw = Gateway.from_dict(await kube.get(GATEWAYS, "gw-n"))
    assert [e.node_name for e in gw.status.active_tunnel_endpoints()] == ["n-1"]  # the election itself stays


async def test_nothing_is_written_while_the_reports_stay_fresh(kube: KubeClient, start: Start, health_failover: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    evaluated: list[str] = []
    inferences = GatewayReconciler._nat_inferences

    def counted(self: GatewayReconciler, gw: Gateway) -> dict[str, dict[str, str]]:
        evaluated.append(gw.name)
        return inferences(self, gw)

    monkeypatch.setattr(GatewayReconciler, "_nat_inferences", counted)
    ctrl = await cluster(kube, start, health_failover)
    await eventually(alive(kube, "gw-o1", "gw-o2"), both, what="gw-n inferred EIM from both observers")
    await ctrl.drained()
    version, before = await rv(kube, "gw-n"), evaluated.count("gw-n")
    # The agents keep writing heartbeats (events that queue nothing). The first report the inference rests on would
    # have turned stale 2 s after the last reconcile: gw-n is evaluated again then, finds both fresh, writes nothing.
    heartbeats = alive(kube, "gw-o1", "gw-o2")

    async def evaluations() -> int:
        await heartbeats()
        return evaluated.count("gw-n")

    await eventually(evaluations, lambda n: n >= before + 2, what="gw-n evaluated again twice, on time alone")
    await ctrl.drained()
    assert await rv(kube, "gw-n") == version
    assert both(await nat_config(kube))
