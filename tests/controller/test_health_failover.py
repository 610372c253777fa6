"""Failover on data-plane health, against the test API server: the test writes PathReports as the agents would
(created with spec.nodeName, then status through /status) and checks what the controller decides, the Events and
the TunnelsHealthy condition naming the evidence, the metric, the hold time and that nothing flaps.

Three gateways (gw-c, gw-a, gw-b) of three nodes each: node 1 and 2 are tunnel candidates, node 1 active;
nodes 2 and 3 are members that probe node 1 over raven0 and, through it, the other gateways."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from e2e.apiserver import ApiServer
from raven.controller.app import PATHREPORT_SYNC_WAIT_S
from raven.kube.client import GATEWAYS, NODES, PATHREPORTS, ApiError, KubeClient, new_api_client
from tests.controller.conftest import (
    CRDS,
    ROOT,
    RunningController,
    active,
    eventually,
    gateway_body,
    node_body,
    set_ready,
)
from tests.controller.test_gateway_election import events_for, wait_active

Start = Callable[..., Awaitable[RunningController]]

POOLS = ("c", "a", "b")
SINCE = "2026-12-01T12:00:01Z"


def rfc3339(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


class Reports:
    """What every agent reports, for a given election; `cut(...)` marks targets down as the state machine would."""

    def __init__(self, kube: KubeClient, actives: dict[str, str]) -> None:
        self.kube = kube
        self.actives = dict(actives)  # gateway -> active node
        self.state: dict[str, dict[tuple[str, str], str]] = {}  # node -> (kind, gateway) -> state
        self.heartbeat_age = 5.0

    def targets(self, node: str) -> list[dict[str, Any]]:
        g = f"gw-{node[0]}"
        states = self.state.get(node, {})
        out = []
        if node == self.actives[g]:
            kinds = [("peer", f"gw-{p}") for p in POOLS if f"gw-{p}" != g]
        else:
            kinds = [("gateway", g)] + [("via", f"gw-{p}") for p in POOLS if f"gw-{p}" != g]
        for kind, gw in kinds:
            out.append({"kind": kind, "gateway": gw, "node": self.actives[gw], "address": "241.0.0.1",
                        "state": states.get((kind, gw), "up"), "since": SINCE, "rttSeconds": 0.001,
                        "lossRatio": 0.0})
        return out

    async def write(self, node: str) -> None:
        g = f"gw-{node[0]}"
        try:
            await self.kube.create(PATHREPORTS, {"apiVersion": "health.raven-py.io/v1alpha1", "kind": "PathReport",
                                                 "metadata": {"name": node}, "spec": {"nodeName": node}})
        except ApiError as exc:
            if exc.status != 409:
                raise
        hb = datetime.now(UTC) - timedelta(seconds=self.heartbeat_age)
        status = {"gateway": g, "role": "gateway" if node == self.actives[g] else "member",
                  "heartbeatTime": rfc3339(hb), "probeIntervalSeconds": 0.2, "targets": self.targets(node)}
        await self.kube.merge_patch(PATHREPORTS, node, {"status": status}, subresource="status")

    async def write_all(self) -> None:
        for p in POOLS:
            for i in (1, 2, 3):
                await self.write(f"{p}-{i}")

    async def set(self, node: str, kind: str, gw: str, state: str) -> None:
        self.state.setdefault(node, {})[(kind, gw)] = state
        await self.write(node)


async def cluster(kube: KubeClient) -> Reports:
    for p in POOLS:
        for i in (1, 2, 3):
            await kube.create(NODES, node_body(f"{p}-{i}", f"gw-{p}"))
        await kube.create(GATEWAYS, gateway_body(f"gw-{p}", [f"{p}-1", f"{p}-2"]))
    return Reports(kube, {f"gw-{p}": f"{p}-1" for p in POOLS})


async def ready_cluster(kube: KubeClient, start: Start, **settings: Any) -> tuple[RunningController, Reports]:
    reports = await cluster(kube)
    ctrl = await start(**{"health_failover": True, **settings})
    for p in POOLS:
        await wait_active(kube, f"gw-{p}", [f"{p}-1"])
    await reports.write_all()
    for p in POOLS:
        await eventually(lambda p=p: tunnels(kube, f"gw-{p}"), lambda c: c is not None and c["reason"] == "Healthy",
                         what=f"gw-{p} TunnelsHealthy")
    return ctrl, reports


async def tunnels(kube: KubeClient, gw: str) -> dict[str, Any] | None:
    obj = await kube.get(GATEWAYS, gw)
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "TunnelsHealthy":
            return dict(c)
    return None


async def forwarding_off(reports: Reports, pool: str) -> None:
    """The pool's active gateway answers but forwards nothing: its members lose everything through it."""
    for m in (f"{pool}-2", f"{pool}-3"):
        for p in POOLS:
            if p != pool:
                reports.state.setdefault(m, {})[("via", f"gw-{p}")] = "down"
        await reports.write(m)


async def forwarding_off_then_agents_follow(kube: KubeClient, reports: Reports) -> None:
    """a-1 stops forwarding, the controller fails gw-a over to a-2, and the agents follow (all up again)."""
    await forwarding_off(reports, "a")
    await wait_active(kube, "gw-a", ["a-2"])
    reports.actives["gw-a"] = "a-2"
    reports.state = {}
    await reports.write_all()


def failovers(ctrl: RunningController, reason: str) -> float:
    return ctrl.metric("raven_gateway_failovers_total", {"reason": reason})


async def test_forwarding_off_fails_over_with_evidence_and_nothing_else_moves(kube: KubeClient,
                                                                              start: Start) -> None:
    ctrl, reports = await ready_cluster(kube, start)
    await forwarding_off(reports, "a")
    await wait_active(kube, "gw-a", ["a-2"])
    evs = await eventually(lambda: events_for(kube, "gw-a"),
                           lambda es: any(e["reason"] == "GatewayNotForwarding" for e in es), what="the Event")
    (ev,) = [e for e in evs if e["reason"] == "GatewayNotForwarding"]
    assert ev["type"] == "Warning"
    assert ev["message"] == ("gateway a-1 is not forwarding, failed over to a-2: 2 of 2 members (through it) lost "
                             "the gateway since 12:00:01 (it answers but does not forward)"), ev["message"]
    cond = await tunnels(kube, "gw-a")
    assert cond is not None and cond["status"] in ("False", "True") and "a-1" in cond["message"]
    assert "2 of 2 members (through it) lost the gateway since 12:00:01" in cond["message"]
    assert failovers(ctrl, "not_forwarding") == 1 and failovers(ctrl, "not_ready") == 0
    for g in ("gw-c", "gw-b"):
        assert await active(kube, g) == [f"{g[3]}-1"]
        assert (await tunnels(kube, g) or {}).get("reason") == "Healthy"


async def test_a_dead_cloud_gateway_fails_over_alone(kube: KubeClient, start: Start) -> None:
    """c-1 dies (still Ready: the grace period has not passed; its own report stays as it was)."""
    ctrl, reports = await ready_cluster(kube, start)
    seen = ctrl.delivered("pathreports", "MODIFIED")
    for m in ("c-2", "c-3"):
        reports.state[m] = {(k, g): "down" for k, g in [("gateway", "gw-c"), ("via", "gw-a"), ("via", "gw-b")]}
        await reports.write(m)
    for p in ("a", "b"):
        await reports.set(f"{p}-1", "peer", "gw-c", "down")
        for m in (f"{p}-2", f"{p}-3"):
            await reports.set(m, "via", "gw-c", "down")
    await wait_active(kube, "gw-c", ["c-2"])
    await ctrl.acted_on("pathreports", "MODIFIED", seen, n=8)
    assert await active(kube, "gw-a") == ["a-1"] and await active(kube, "gw-b") == ["b-1"]
    ev = [e for e in await events_for(kube, "gw-c") if e["reason"] == "GatewayNotForwarding"]
    # Decided as soon as the members' reports were enough (the peers' came after).
    assert ev and "2 of 2 members lost the gateway since 12:00:01 (over raven0)" in ev[0]["message"], ev
    for g in ("gw-a", "gw-b"):
        cond = await tunnels(kube, g)
        # Their losses were of c-1, no longer gw-c's active: about the old election, so no evidence now.
        assert cond is not None and cond["reason"] in ("Healthy", "RemoteGatewayDown"), cond
        assert not [e for e in await events_for(kube, g) if e["reason"] == "GatewayNotForwarding"]
    assert failovers(ctrl, "not_forwarding") == 1


async def test_degraded_tunnels_move_nothing(kube: KubeClient, start: Start) -> None:
    """What the state machine makes of one lost probe in ten: degraded, never down."""
    ctrl, reports = await ready_cluster(kube, start)
    seen = ctrl.delivered("pathreports", "MODIFIED")
    await reports.set("c-1", "peer", "gw-a", "degraded")
    await reports.set("a-2", "via", "gw-c", "degraded")
    await reports.set("a-3", "via", "gw-c", "degraded")
    await ctrl.acted_on("pathreports", "MODIFIED", seen, n=3)
    await eventually(lambda: tunnels(kube, "gw-a"), lambda c: c is not None and c["reason"] == "Degraded",
                     what="gw-a Degraded")
    assert await active(kube, "gw-a") == ["a-1"]
    assert failovers(ctrl, "not_forwarding") == 0


async def test_held_node_is_not_reelected_until_clean_for_the_hold_time(kube: KubeClient, start: Start) -> None:
    ctrl, reports = await ready_cluster(kube, start, health_hold_time=3.0)
    await forwarding_off(reports, "a")
    await wait_active(kube, "gw-a", ["a-2"])
    failed_at = datetime.now(UTC)
    # The agents follow the new election: a-2 is gateway now, and a-2 does not forward either.
    reports.actives["gw-a"] = "a-2"
    reports.state = {}
    await reports.write_all()
    for m in ("a-1", "a-3"):
        for p in ("c", "b"):
            reports.state.setdefault(m, {})[("via", f"gw-{p}")] = "down"
        await reports.write(m)
    cond = await eventually(lambda: tunnels(kube, "gw-a"),
                            lambda c: c is not None and c["reason"] == "NoBetterCandidate", what="NoBetterCandidate")
    assert "a-1: failed over at" in cond["message"] and "held until healthy for 3 s" in cond["message"], cond
    assert await active(kube, "gw-a") == ["a-2"]
    await eventually(lambda: events_for(kube, "gw-a"),
                     lambda es: any(e["reason"] == "NoBetterCandidate" for e in es), what="NoBetterCandidate Event")
    # No event is needed for the hold to end: the verdict re-queued the gateway for then.
    await wait_active(kube, "gw-a", ["a-1"], within=10)
    assert datetime.now(UTC) - failed_at >= timedelta(seconds=3)
    assert failovers(ctrl, "not_forwarding") == 2


async def test_a_released_hold_leaves_the_status_and_then_nothing_is_written(kube: KubeClient, start: Start) -> None:
    """The status is a merge patch: a hold that ends must be cleared in the API (held: [], trialSpent: false), not
    left there by an absent key, after which the controller found the status different from what it wanted and
    wrote it again on every reconcile."""
    ctrl, reports = await ready_cluster(kube, start, health_hold_time=1.0)
    await forwarding_off_then_agents_follow(kube, reports)
    await eventually(lambda: kube.get(GATEWAYS, "gw-a"),
                     lambda g: [h["nodeName"] for h in g["status"]["pathHealth"]["held"]] == ["a-1"],
                     what="a-1 held in the status")
    gw = await eventually(lambda: kube.get(GATEWAYS, "gw-a"),
                          lambda g: g["status"]["pathHealth"]["held"] == [], what="the hold released in the status")
    assert gw["status"]["pathHealth"]["trialSpent"] is False
    assert (await tunnels(kube, "gw-a") or {}).get("reason") == "Healthy"
    await ctrl.drained()
    writes, reconciles = ctrl.metric("raven_controller_status_writes_total"), ctrl.reconciles()
    ctrl.controller.reconciler.queue.add("gw-a")  # a reconcile with nothing new: it must write nothing
    await eventually(ctrl.reconciles, lambda n: n > reconciles, what="gw-a reconciled again")
    await ctrl.drained()
    assert ctrl.metric("raven_controller_status_writes_total") == writes


async def test_no_flap_the_new_gateway_keeps_its_role_when_the_old_one_recovers(kube: KubeClient,
                                                                                start: Start) -> None:
    ctrl, reports = await ready_cluster(kube, start, health_hold_time=1.0)
    await forwarding_off_then_agents_follow(kube, reports)
    await eventually(lambda: tunnels(kube, "gw-a"), lambda c: c is not None and c["reason"] == "Healthy",
                     within=10, what="hold over and gw-a healthy")
    seen = ctrl.delivered("pathreports", "MODIFIED")
    await reports.write("a-1")
    await ctrl.acted_on("pathreports", "MODIFIED", seen)
    assert await active(kube, "gw-a") == ["a-2"]
    assert failovers(ctrl, "not_forwarding") == 1


async def test_edge_autonomy_keeps_a_notready_gateway_the_peers_still_reach(kube: KubeClient, start: Start) -> None:
    """Ready Unknown (the control plane cannot hear a-1) while its peers still reach it: kept."""
    ctrl, reports = await ready_cluster(kube, start)
    seen = ctrl.delivered("nodes", "MODIFIED")
    await set_ready(kube, "a-1", False, unreachable=True)
    await ctrl.acted_on("nodes", "MODIFIED", seen)
    assert await active(kube, "gw-a") == ["a-1"]
    cond = await tunnels(kube, "gw-a")
    assert cond is not None and cond["reason"] == "KeptDespiteNotReady" and "2 of 2 peers reach it" in cond["message"]
    # The peers lose it too: now nothing says it works, and readiness decides.
    await reports.set("c-1", "peer", "gw-a", "down")
    await reports.set("b-1", "peer", "gw-a", "down")
    await wait_active(kube, "gw-a", ["a-2"])
    assert failovers(ctrl, "not_ready") == 1


async def test_stale_reports_fall_back_to_node_readiness(kube: KubeClient, start: Start) -> None:
    ctrl, reports = await ready_cluster(kube, start)
    reports.heartbeat_age = 200  # older than --health-stale-after (180 s): no evidence
    await reports.write_all()
    await eventually(lambda: tunnels(kube, "gw-a"), lambda c: c is not None and c["reason"] == "NoEvidence",
                     what="gw-a NoEvidence")
    await set_ready(kube, "a-1", False)
    await wait_active(kube, "gw-a", ["a-2"])
    assert failovers(ctrl, "not_ready") == 1


async def test_health_failover_off_ignores_reports(kube: KubeClient, start: Start) -> None:
    reports = await cluster(kube)
    ctrl = await start(health_failover=False)
    await wait_active(kube, "gw-a", ["a-1"])
    await reports.write_all()
    await forwarding_off(reports, "a")
    await set_ready(kube, "c-1", False)  # an event that is processed after the reports were written
    await wait_active(kube, "gw-c", ["c-2"])
    await ctrl.drained()
    assert await active(kube, "gw-a") == ["a-1"] and await tunnels(kube, "gw-a") is None


async def test_without_the_pathreport_crd_the_leader_does_not_wait_for_reports(apiserver: ApiServer,
                                                                               start: Start) -> None:
    """A cluster that did not apply 01-crd-pathreports.yaml: Node readiness decides, from the first election on
    (a new leader waits up to PATHREPORT_SYNC_WAIT_S for reports only when their CRD is served)."""
    assert apiserver.kubeconfig
    kube = KubeClient(await new_api_client(apiserver.kubeconfig))
    try:
        crd = yaml.safe_load((ROOT / "manifests" / "01-crd-gateways.yaml").read_text())
        await kube.create(CRDS, crd)
        await eventually(lambda: kube.list(GATEWAYS), lambda _: True, what="the Gateway CRD served")
        await kube.create(NODES, node_body("a-1", "gw-a"))
        await kube.create(GATEWAYS, gateway_body("gw-a", ["a-1"]))
        began = time.monotonic()
        await start(health_failover=True)
        await wait_active(kube, "gw-a", ["a-1"], within=PATHREPORT_SYNC_WAIT_S - 2)
        assert time.monotonic() - began < PATHREPORT_SYNC_WAIT_S - 2
    finally:
        await kube.close()


async def test_a_new_leader_writes_nothing_while_a_node_is_held(kube: KubeClient, start: Start) -> None:
    """The election is sticky across leaders: a leader change alone causes zero Gateway writes, also right after a
    health failover (the held node and the FailedOver condition come from status.pathHealth, not from memory)."""
    reports = await cluster(kube)
    a = await start(identity="ctrl-a", leader_elect=True, health_hold_time=300.0)
    await eventually(lambda: a.metric("raven_controller_leader"), lambda v: v == 1, what="a leads")
    for p in POOLS:
        await wait_active(kube, f"gw-{p}", [f"{p}-1"])
    await reports.write_all()
    await forwarding_off_then_agents_follow(kube, reports)
    await eventually(lambda: tunnels(kube, "gw-a"), lambda c: c is not None and c["reason"] == "FailedOver",
                     what="gw-a FailedOver while a-1 is held")
    gw = await kube.get(GATEWAYS, "gw-a")
    (held,) = gw["status"]["pathHealth"]["held"]
    assert held["nodeName"] == "a-1" and "2 of 2 members (through it)" in held["evidence"], held
    assert gw["status"]["pathHealth"]["peersUp"] == 2 and gw["status"]["pathHealth"]["peers"] == 2
    await a.drained()
    rvs = {g: (await kube.get(GATEWAYS, f"gw-{g}"))["metadata"]["resourceVersion"] for g in POOLS}
    b = await start(identity="ctrl-b", leader_elect=True, health_hold_time=300.0)
    await a.stop()  # releases the Lease
    await eventually(lambda: b.metric("raven_controller_leader"), lambda v: v == 1, what="b leads")
    # b reconciled every Gateway (the report events it saw too) before "nothing changed" means anything.
    await eventually(b.reconciles, lambda n: n >= len(POOLS), what="b reconciled every gateway")
    await b.drained()
    assert {g: (await kube.get(GATEWAYS, f"gw-{g}"))["metadata"]["resourceVersion"] for g in POOLS} == rvs
    assert b.metric("raven_controller_status_writes_total") == 0
    # ... and b still holds a-1: it fills no slot while a-2 works, and its hold is still written.
    assert await active(kube, "gw-a") == ["a-2"]
    assert (await tunnels(kube, "gw-a") or {}).get("reason") == "FailedOver"


async def test_a_gateway_reporting_itself_not_ready_is_replaced_although_the_peers_reach_it(kube: KubeClient,
                                                                                              start: Start) -> None:
    ctrl, _ = await ready_cluster(kube, start)
    await set_ready(kube, "a-1", False)  # Ready=False: the kubelet says so, the control plane hears the node
    await wait_active(kube, "gw-a", ["a-2"])
    assert failovers(ctrl, "not_ready") == 1 and failovers(ctrl, "not_forwarding") == 0


async def test_a_replica_leading_again_takes_the_holds_from_the_status_not_from_its_last_term(
        kube: KubeClient, start: Start) -> None:
    """Another leader released a-1 meanwhile (status.pathHealth has no hold): when this replica leads again and a-2
    stops forwarding, a-1 is a fit candidate (with its own term's memory it would still be held)."""
    from raven.kube.client import LEASES
    from raven.kube.leader import micro_time

    reports = await cluster(kube)
    a = await start(identity="ctrl-a", leader_elect=True, health_hold_time=300.0, lease=(3.0, 2.0, 0.2))
    await eventually(lambda: a.metric("raven_controller_leader"), lambda v: v == 1, what="a leads")
    for p in POOLS:
        await wait_active(kube, f"gw-{p}", [f"{p}-1"])
    await reports.write_all()
    await forwarding_off_then_agents_follow(kube, reports)
    await eventually(lambda: kube.get(GATEWAYS, "gw-a"),
                     lambda g: [h["nodeName"] for h in g["status"]["pathHealth"].get("held", [])] == ["a-1"],
                     what="a-1 held in the status")
    lease = await kube.get(LEASES, "raven-controller", "kube-system")
    lease["spec"].update(holderIdentity="thief", renewTime=micro_time(), leaseDurationSeconds=30)
    await kube.replace(LEASES, "raven-controller", lease, "kube-system")
    await eventually(lambda: a.metric("raven_controller_leader"), lambda v: v == 0, what="a steps down")
    # The thief's term: it released a-1 (held lists are replaced whole by a merge patch).
    await kube.merge_patch(GATEWAYS, "gw-a", {"status": {"pathHealth": {"held": []}}}, subresource="status")
    lease = await kube.get(LEASES, "raven-controller", "kube-system")
    del lease["spec"]["holderIdentity"]
    await kube.replace(LEASES, "raven-controller", lease, "kube-system")
    await eventually(lambda: a.metric("raven_controller_leader"), lambda v: v == 1, what="a leads again")
    for m in ("a-1", "a-3"):  # a-2 answers but forwards nothing
        for p in ("c", "b"):
            reports.state.setdefault(m, {})[("via", f"gw-{p}")] = "down"
        await reports.write(m)
    await wait_active(kube, "gw-a", ["a-1"])
