"""The Gateway reconciler: informer events -> work queue -> election -> status + Events -> exposure.

Informer handlers only enqueue Gateway names (a node event enqueues just the gateways named by its old
and new `raven.openyurt.io/gateway` label, and only when a fact the election uses changed: heartbeats
are ignored). Workers take names from the coalescing queue and reconcile one Gateway at a time:

1. read the Gateway and its nodes from the typed informer caches (never from the API server; each object
   was parsed once, when its resourceVersion arrived);
2. check the nodes (`nodecheck`, pure: pod CIDRs against the whole cluster, endpoints against the Nodes),
   then `elect()` (pure) with the rejected nodes left out;
3. write the status only if it differs, as a merge patch of /status carrying the resourceVersion the
   decision was based on; a 409 means our view was stale: re-read the Gateway, decide again, retry;
4. Events (ActiveEndpointElected / ActiveEndpointLost / InvalidGateway) only for changes actually
   written, so a restart or a no-op reconcile emits nothing; NodeIncomplete when a gateway's node
   problems change; one Event per new finding of the node checks, on the Gateway and (for a rejected node)
   on the Node, with the finding's reason; GatewayNotFound on each Node labelled for a Gateway that does
   not exist (remembered in memory only: a new leader reports existing problems once more);
5. make the LoadBalancer objects match (exposure.py). Last, so a failing Service write never holds
   back the status agents route by.

With --health-failover (the default) step 2 first asks health.py what the agents' PathReports say (a pure
verdict: not forwarding / unfit / kept despite NotReady, and the TunnelsHealthy condition) and feeds it to the
same election. A PathReport event enqueues only the Gateways whose evidence it changes (the ones it names,
plus the Gateways whose last verdict saw losses: third-party evidence can change theirs); a verdict that
depends on time (a hold ending, a report going stale) re-queues its Gateway for then. So does NAT traversal's
inference published into a NAT'd Gateway's endpoint config: it is made again when a report it rests on goes stale.

Writes are gated by `may_write()` (the leader check): an ex-leader stops writing at once, mid-reconcile.
A failed reconcile is retried with per-key jittered backoff; bad data is reported and never crashes.

OpenYurt compatibility: the `kube-system/raven-cfg` ConfigMap (its own informer, `ravencfg`) switches tunnel and
proxy election on or off; a change of either switch re-elects every Gateway (as OpenYurt's raven-cfg handler
does). The extra-allowed-source-cidrs annotations of Nodes and Gateways are checked with the node checks
(`NodeIndex.extras`); a rejected one is a finding (NodesValid, an Event) and is dropped alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import aiohttp

from raven.api.constants import (
    API_VERSION,
    CONDITION_VALID,
    ENDPOINT_TYPE_TUNNEL,
    EVENT_ACTIVE_ENDPOINT_ELECTED,
    EVENT_ACTIVE_ENDPOINT_LOST,
    EXPOSE_TYPE_LOAD_BALANCER,
    KIND,
    LABEL_OWNER_GATEWAY,
)
from raven.api.gateway import JSON, Gateway, GatewayStatus, UnparsableGateway, parse_gateway
from raven.api.node import Node
from raven.api.openyurt import ALL_ON, RAVEN_CFG_NAME, RAVEN_CFG_NAMESPACE, Switches, extra_cidrs
from raven.api.pathreport import PathReport
from raven.api.service import Meta, Service, ServiceEndpoints
from raven.controller.election import (
    LOST_NOT_FORWARDING,
    NO_HEALTH,
    REASON_INVALID,
    REASON_REPLICAS,
    ElectionResult,
    HealthInput,
    condition,
    elect,
)
from raven.controller.exposure import Exposure, ForeignObjectError, desired_slots
from raven.controller.health import (
    CONDITION_TUNNELS_HEALTHY,
    REASON_HEALTHY,
    REASON_NO_BETTER,
    REASON_NO_EVIDENCE,
    HealthMemory,
    HealthSettings,
    HealthVerdict,
    assess,
    memory_from_status,
    path_health,
    record_failover,
)
from raven.controller.metrics import ControllerMetrics
from raven.controller.nodecheck import (
    REASON_GATEWAY_NOT_FOUND,
    Extras,
    Finding,
    NodeIndex,
    Ranges,
    endpoint_findings,
    is_incumbent,
)
from raven.kube.client import GATEWAYS, ApiError
from raven.kube.events import EventRecorder, ObjectRef
from raven.kube.typed import TypedClient, TypedEvent, TypedInformer
from raven.kube.workqueue import WorkQueue
from raven.log import kv
from raven.nattraversal.core import evidence, infer, to_config

log = logging.getLogger(__name__)

EVENT_INVALID_GATEWAY = "InvalidGateway"
EVENT_NODE_INCOMPLETE = "NodeIncomplete"
EVENT_NOT_FORWARDING = "GatewayNotForwarding"
EVENT_NO_BETTER_CANDIDATE = "NoBetterCandidate"
EVENT_REPLICAS_NOT_HONOURED = REASON_REPLICAS
MAX_CONFLICT_RETRIES = 5
# Sightings older than this are no evidence when health failover (and its --health-stale-after) is off: 3 heartbeats.
NAT_STALE_AFTER = timedelta(seconds=180)
# The defaults of --overlay-cidr / --tunnel-cidr (raven.config.NetworkRanges), for callers that pass no ranges.
DEFAULT_RANGES = Ranges.of("240.0.0.0/8", "241.0.0.0/16")


class NotLeader(Exception):
    """Leadership was lost mid-reconcile: stop without writing."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _facts(n: Node) -> tuple[object, ...]:
    """What the election uses from a Node; equal facts mean a node event can be ignored (heartbeats)."""
    return (n.internal_ip, n.pod_cidrs, n.ready, n.unreachable, n.being_deleted, n.gateway, n.extra_cidrs)


def _checked_facts(n: Node) -> tuple[object, ...]:
    """What the node checks (nodecheck.NodeIndex) use from a Node."""
    return (n.internal_ip, n.pod_cidrs, n.gateway, n.created, n.extra_cidrs)


AnyGateway = Gateway | UnparsableGateway


def _mentions(r: PathReport | None) -> frozenset[str]:
    """The Gateways a report is evidence about: its own and every target's."""
    if r is None:
        return frozenset()
    return frozenset({r.status.gateway, *(t.gateway for t in r.status.targets)} - {""})


def _evidence(r: PathReport | None, gw: str) -> tuple[object, ...]:
    """What of a report the verdict about `gw` can use (RTT and heartbeat-only changes are not)."""
    if r is None:
        return ()
    facts: tuple[object, ...] = (r.node_name, r.status.role, r.status.gateway == gw, r.status.gateway)
    return facts + tuple((t.kind, t.gateway, t.node, t.state, t.since) for t in r.status.targets
                         if r.status.gateway == gw or t.gateway == gw)


def _states(r: PathReport | None) -> tuple[object, ...]:
    if r is None:
        return ()
    return (r.node_name, r.status.role, r.status.gateway,
            tuple((t.kind, t.gateway, t.node, t.state) for t in r.status.targets))


def _condition_type(c: JSON) -> str:
    return str(c.get("type"))


def _gateway_extras(gw: AnyGateway | None) -> tuple[str, ...]:
    """The Gateway's own extra-allowed-source-cidrs annotation (OpenYurt's place for it)."""
    if not isinstance(gw, Gateway):
        return ()
    annotations = gw.metadata.get("annotations")
    if not isinstance(annotations, dict):
        return ()
    return extra_cidrs({str(k): str(v) for k, v in annotations.items()})


def _meta_but_version(gw: Gateway) -> JSON:
    """A Gateway's metadata without what every write changes (resourceVersion, managedFields)."""
    return {k: v for k, v in gw.metadata.items() if k not in ("resourceVersion", "managedFields")}


def _endpoint_nodes(gw: AnyGateway | None) -> frozenset[str]:
    if not isinstance(gw, Gateway):
        return frozenset()
    return frozenset(ep.node_name for ep in gw.spec.all_endpoints if ep.node_name)


def _node_ref(node: Node) -> ObjectRef:
    return ObjectRef("v1", "Node", node.name, node.uid)


def error_kind(exc: Exception) -> str:
    """The `kind` label of raven_controller_reconcile_errors_total: `api` (the server refused, or an
    object we may not touch is in the way), `network` (no usable answer), `unexpected` (anything else:
    a bug, logged with its traceback)."""
    if isinstance(exc, (ApiError, ForeignObjectError)):
        return "api"
    if isinstance(exc, (aiohttp.ClientError, OSError, TimeoutError)):
        return "network"
    return "unexpected"


class GatewayReconciler:
    def __init__(
        self,
        client: TypedClient,
        gateways: TypedInformer[AnyGateway],
        nodes: TypedInformer[Node],
        exposure: Exposure,
        recorder: EventRecorder,
        metrics: ControllerMetrics,
        may_write: Callable[[], bool],
        *,
        workers: int = 8,
        clock: Callable[[], str] = rfc3339_now,
        reports: TypedInformer[PathReport] | None = None,
        health: HealthSettings | None = None,
        now: Callable[[], datetime] | None = None,
        ranges: Ranges = DEFAULT_RANGES,
        ravencfg: TypedInformer[Switches] | None = None,
    ) -> None:
        self.client = client
        self.gateways = gateways
        self.nodes = nodes
        self.exposure = exposure
        self.recorder = recorder
        self.metrics = metrics
        self.may_write = may_write
        self.workers = workers
        self.clock = clock
        self.queue = WorkQueue()
        self._members: dict[str, set[str]] = {}  # gateway -> names of nodes labelled for it
        self._written_rv: dict[str, str] = {}  # gateway -> resourceVersion of our last status write
        # gateway -> (the resourceVersion a status write in flight was decided from, the status it writes): its
        # watch event can arrive before the PATCH's answer, and must still be known as our own write.
        self._writing: dict[str, tuple[str, GatewayStatus]] = {}
        self._reported: dict[str, tuple[str, ...]] = {}  # gateway -> node problems last reported
        self._invalid: set[str] = set()
        self._verdicts: dict[str, HealthVerdict | None] = {}  # the verdict of the gateway's last election
        # The node checks: the cluster-wide index (None: rebuild before the next use), the nodes it rejected
        # last time, the Gateways whose endpoints name each node, and the findings last reported.
        self.ranges = ranges
        self._index: NodeIndex | None = None
        self._rejected: dict[str, Finding] = {}
        self._endpoints: dict[str, frozenset[str]] = {}  # gateway -> nodes its endpoints name
        self._endpoint_of: dict[str, set[str]] = {}  # node -> gateways whose endpoints name it
        self._reported_findings: dict[str, frozenset[Finding]] = {}
        self._orphans: dict[str, str] = {}  # node -> the missing gateway it was reported labelled for
        # OpenYurt's raven-cfg (None: not watched, everything elected) and the extra CIDRs of Gateways.
        self.ravencfg = ravencfg
        self._gw_extras: dict[str, tuple[str, ...]] = {}
        self._extras: Extras | None = None
        self._reported_cfg_problems: tuple[str, ...] = ()
        # gateway -> exception types whose traceback was logged since its last success
        self._tracebacks_logged: dict[str, set[str]] = {}
        # Failover on data-plane health (None: Node readiness only).
        self.reports = reports
        self.health = health if reports is not None else None
        self.now = now or _utcnow
        self._actives: dict[str, frozenset[str]] = {}  # gateway -> active tunnel nodes, from the cache
        self._mentioned_by: dict[str, set[str]] = {}  # gateway -> reports that are evidence about it
        self._memory: dict[str, HealthMemory] = {}
        # (gateway, node) -> when this controller saw the node become an active tunnel endpoint (not for what the
        # first list showed: that election is older than this controller, its tunnels are established).
        self._elected_at: dict[tuple[str, str], datetime] = {}
        # Young tunnels seen up from both ends since their younger end's election (health.tunnels_up_both_ways):
        # their losses count at once. Forgotten when either end is elected again or stops being active.
        self._seen_up: set[tuple[str, str, str, str]] = set()
        self._sensitive: set[str] = set()  # gateways whose last verdict saw losses
        self._failover_memory: dict[str, HealthMemory] = {}  # the memory of a failover being written
        metrics.queue_depth.set_function(lambda: len(self.queue))
        gateways.add_handler(self.on_gateway)
        nodes.add_handler(self.on_node)
        if reports is not None:
            reports.add_handler(self.on_report_key)
            reports.add_handler(self.on_report_nat)
        if reports is not None and self.health is not None:
            reports.add_handler(self.on_report)
        if ravencfg is not None:
            ravencfg.add_handler(self.on_raven_cfg)

    # --- event handlers: cheap, enqueue only ---

    def on_gateway(self, ev: TypedEvent[AnyGateway]) -> None:
        name = ev.name
        if ev.type == "DELETED":
            self._actives.pop(name, None)
            self._elected_at = {k: v for k, v in self._elected_at.items() if k[0] != name}
            self._seen_up = {t for t in self._seen_up if name not in (t[0], t[2])}
        elif isinstance(ev.obj, Gateway):
            actives = frozenset(e.node_name for e in ev.obj.status.active_tunnel_endpoints())
            if actives != self._actives.get(name):
                before = self._actives.get(name, frozenset())
                if ev.type == "MODIFIED":
                    seen = self.now()
                    for node in actives - before:
                        self._elected_at[(name, node)] = seen
                for node in before - actives:
                    self._elected_at.pop((name, node), None)
                moved = {(name, n) for n in actives ^ before}
                self._seen_up = {t for t in self._seen_up if (t[0], t[1]) not in moved and (t[2], t[3]) not in moved}
                self._actives[name] = actives
                # Who is whose peer changed: gateways whose evidence involved this one decide again.
                for other in self._sensitive - {name}:
                    self.queue.add(other)
        if ev.type == "MODIFIED" and ev.obj is not None and (
                ev.obj.resource_version == self._written_rv.get(name) or self._own_write_in_flight(ev)):
            return  # our own status write coming back: nothing new to decide
        if ev.type != "MODIFIED":
            self._index = None  # which nodes are members (labelled for an existing Gateway) changed
        extras = () if ev.type == "DELETED" else _gateway_extras(ev.obj)
        if extras != self._gw_extras.get(name, ()):
            self._index = None  # the Gateway's extra CIDRs are checked with the nodes'
            if extras:
                self._gw_extras[name] = extras
            else:
                self._gw_extras.pop(name, None)
        new = frozenset() if ev.type == "DELETED" else _endpoint_nodes(ev.obj)
        old = self._endpoints.get(name, frozenset())
        if new != old:
            for node in old - new:
                self._endpoint_of.get(node, set()).discard(name)
            for node in new - old:
                self._endpoint_of.setdefault(node, set()).add(name)
            # Another Gateway naming one of these nodes has a finding (dis)appear.
            for node in old ^ new:
                for other in self._endpoint_of.get(node, ()):
                    self.queue.add(other)
        if new:
            self._endpoints[name] = new
        else:
            self._endpoints.pop(name, None)
        self.queue.add(name)

    def _own_write_in_flight(self, ev: TypedEvent[AnyGateway]) -> bool:
        """The event is the status write in flight coming back before its answer: the version it replaces is the one
        the write was decided from, and nothing changed but the status, to exactly what is being written. (Had
        somebody else written that, our write fails on its resourceVersion, 409, and is decided again.)"""
        writing = self._writing.get(ev.name)
        old, new = ev.old, ev.obj
        if writing is None or not isinstance(old, Gateway) or not isinstance(new, Gateway):
            return False
        based_on, status = writing
        return (old.resource_version == based_on and new.status == status and new.spec == old.spec
                and _meta_but_version(new) == _meta_but_version(old))

    def on_node(self, ev: TypedEvent[Node]) -> None:
        name = ev.name
        old = ev.old
        new = None if ev.type == "DELETED" else ev.obj
        if old is not None and new is not None and _facts(old) == _facts(new):
            return  # a heartbeat or an unrelated change
        if old is None or new is None or _checked_facts(old) != _checked_facts(new):
            self._index = None  # a pod CIDR, an address or a membership changed (readiness does not matter)
        old_gw = old.gateway if old else None
        new_gw = new.gateway if new else None
        if old is None or new is None or old_gw != new_gw:
            # The endpoints naming this node find it appeared, went or moved.
            for named_by in self._endpoint_of.get(name, ()):
                self.queue.add(named_by)
        if old_gw and old_gw != new_gw:
            self._members.get(old_gw, set()).discard(name)
        if new_gw:
            self._members.setdefault(new_gw, set()).add(name)
        for gw in {old_gw, new_gw} - {None}:
            assert gw is not None
            self.queue.add(gw)

    def on_raven_cfg(self, ev: TypedEvent[Switches]) -> None:
        """raven-cfg changed: when a switch did, every Gateway is elected again (OpenYurt's handler does the same)."""
        old = ev.old or ALL_ON
        new = ALL_ON if ev.type == "DELETED" else (ev.obj or ALL_ON)
        if new.problems != self._reported_cfg_problems:
            self._reported_cfg_problems = new.problems
            for problem in new.problems:
                log.warning("raven-cfg value not understood", extra=kv(problem=problem))
        if (old.tunnel, old.proxy, old.problems) == (new.tunnel, new.proxy, new.problems) and ev.type != "DELETED":
            return
        log.info("raven-cfg changed: electing every gateway again",
                 extra=kv(event=ev.type, enable_l3_tunnel=new.tunnel, enable_l7_proxy=new.proxy))
        for name in self.gateways.keys():
            self.queue.add(name)

    def switches(self) -> Switches:
        """What raven-cfg says now (absent, or not watched: everything is elected; see raven/api/openyurt.py)."""
        if self.ravencfg is None:
            return ALL_ON
        return self.ravencfg.get(RAVEN_CFG_NAME, RAVEN_CFG_NAMESPACE) or ALL_ON

    def on_report(self, ev: TypedEvent[PathReport]) -> None:
        old = ev.old
        new = None if ev.type == "DELETED" or ev.error is not None else ev.obj
        before, after = _mentions(old), _mentions(new)
        for gw in before - after:
            self._mentioned_by.get(gw, set()).discard(ev.name)
        for gw in after:
            self._mentioned_by.setdefault(gw, set()).add(ev.name)
        freshness_changed = self._fresh(old) != self._fresh(new)
        if _states(old) == _states(new) and not freshness_changed:
            return  # a heartbeat or an RTT change: no verdict changes (going stale is timed, see _assess)
        for gw in before | after:
            if freshness_changed or _evidence(old, gw) != _evidence(new, gw):
                self.queue.add(gw)
        for gw in self._sensitive:
            self.queue.add(gw)

    def on_report_key(self, ev: TypedEvent[PathReport]) -> None:
        """A node's published WireGuard key changed: the Gateways whose endpoints name it copy it again."""
        old = ev.old.wireguard_public_key if ev.old is not None else ""
        new = ev.obj.wireguard_public_key if ev.obj is not None and ev.type != "DELETED" and ev.error is None else ""
        if old != new:
            for gw in self._endpoint_of.get(ev.name, ()):
                self.queue.add(gw)

    def on_report_nat(self, ev: TypedEvent[PathReport]) -> None:
        """A gateway's sightings of NAT'd peers changed, or its report turned fresh again (its agent is back, or
        reaches the API again): the Gateways it names (before or after) infer again. Going stale sends no event: it
        is timed (`_nat_inferences`)."""
        def named(r: PathReport | None) -> set[tuple[str, str, str, int]]:
            return {(e.gateway, e.node, e.address, e.port) for e in r.status.observed_endpoints} if r else set()

        current = ev.obj if ev.type != "DELETED" and ev.error is None else None
        old, new = named(ev.old), named(current)
        changed = old ^ new
        if current is not None and ev.old is not None and current.fresh(self.now(), self._nat_stale_after) \
                and not ev.old.fresh(self.now(), self._nat_stale_after):
            changed |= new
        for gw in {g for g, _, _, _ in changed}:
            self.queue.add(gw)

    @property
    def _nat_stale_after(self) -> timedelta:
        return self.health.stale_after if self.health is not None else NAT_STALE_AFTER

    def _nat_inferences(self, gw: Gateway) -> dict[str, dict[str, str]]:
        """node -> NAT traversal's inference about it, as endpoint config keys, for gw's endpoints under NAT, from
        the fresh sightings of the reachable gateways' reports (raven.nattraversal.core). An inference resting on a
        report that will turn stale re-queues the Gateway for just after then, so it is made again from what is
        fresh at that time (fewer observers: `unknown`, or the remaining observer's view; none: withdrawn)."""
        under_nat = [ep for ep in gw.spec.all_endpoints if ep.type == ENDPOINT_TYPE_TUNNEL and ep.is_under_nat]
        if self.reports is None or not under_nat:
            return {}
        now = self.now()
        found = evidence(self.reports.values(), gw.name, (ep.node_name for ep in under_nat), now,
                         self._nat_stale_after)
        if found.stale_at is not None:
            self.queue.add_after(gw.name, max((found.stale_at - now).total_seconds(), 0.0) + 0.05)
        out: dict[str, dict[str, str]] = {}
        for ep in under_nat:
            config = to_config(infer(gw.name, ep.node_name, found.seen, nat_type=ep.nat_type or ""))
            if config:
                out[ep.node_name] = config
        return out

    def _published_keys(self, gw: Gateway) -> dict[str, str]:
        """node -> the WireGuard public key its own PathReport publishes, for the nodes of gw's endpoints (a
        report whose spec.nodeName is not its name publishes nothing: `PathReport.wireguard_public_key`)."""
        if self.reports is None:
            return {}
        out: dict[str, str] = {}
        for node in _endpoint_nodes(gw):
            report = self.reports.get(node)
            if report is not None and report.wireguard_public_key:
                out[node] = report.wireguard_public_key
        return out

    def _fresh(self, r: PathReport | None) -> bool:
        return r is not None and self.health is not None and r.fresh(self.now(), self.health.stale_after)

    def on_service(self, ev: TypedEvent[Service]) -> None:
        self._enqueue_owner(ev.obj.meta if ev.obj is not None else None)

    def on_endpoints(self, ev: TypedEvent[ServiceEndpoints]) -> None:
        self._enqueue_owner(ev.obj.meta if ev.obj is not None else None)

    def _enqueue_owner(self, meta: Meta | None) -> None:
        owner = meta.labels.get(LABEL_OWNER_GATEWAY) if meta is not None else None
        if owner:
            self.queue.add(owner)

    def new_term(self) -> None:
        """Leading (again): the health memory comes from the Gateways' status.pathHealth, which another leader may
        have changed meanwhile, not from what this replica remembered of an earlier term."""
        self._memory.clear()
        self._failover_memory.clear()

    def enqueue_all(self) -> None:
        for name in self.gateways.keys():
            self.queue.add(name)
        # Objects left by gateways deleted while nobody was leading.
        for owner in self.exposure.owner_gateways():
            self.queue.add(owner)

    # --- workers ---

    async def run_workers(self) -> None:
        """Reconcile queued gateways until cancelled (runs only while leading)."""
        async with asyncio.TaskGroup() as tg:
            for i in range(self.workers):
                tg.create_task(self._worker(), name=f"gateway-worker-{i}")

    async def _worker(self) -> None:
        while True:
            name = await self.queue.get()
            start = time.perf_counter()
            try:
                await self.reconcile(name)
                self.queue.forget(name)
                self._tracebacks_logged.pop(name, None)
            except asyncio.CancelledError:
                raise
            except NotLeader:
                pass
            except Exception as exc:
                self._failed(name, exc)
            finally:
                self.queue.done(name)
                self.metrics.reconcile_duration.observe(time.perf_counter() - start)

    def _failed(self, name: str, exc: Exception) -> None:
        """Count the failure by kind and retry with backoff. An unexpected exception (a bug, not the API
        or the network saying no) is logged with its traceback the first time it hits this gateway (again
        after a success); its retries log one line each, so the loop is never silent and never floods."""
        kind = error_kind(exc)
        self.metrics.reconcile_errors.labels(kind=kind).inc()
        delay = self.queue.add_rate_limited(name)
        fields = kv(gateway=name, error=f"{type(exc).__name__}: {exc}", kind=kind, retry_in_s=round(delay, 2))
        if kind == "unexpected" and type(exc).__qualname__ not in self._tracebacks_logged.get(name, ()):
            self._tracebacks_logged.setdefault(name, set()).add(type(exc).__qualname__)
            log.error("reconcile failed unexpectedly, will retry", exc_info=exc, extra=fields)
        else:
            log.warning("reconcile failed, will retry", extra=fields)

    # --- one gateway ---

    def _check_leader(self) -> None:
        if not self.may_write():
            raise NotLeader

    async def reconcile(self, name: str) -> None:
        current = self.gateways.get(name)
        if current is None:
            self._forget(name)
            self._check_leader()
            self._report_orphans(name)
            await self.exposure.apply(name, None, [])
            return
        for node in self._members.get(name, ()):
            if self._orphans.get(node) == name:
                del self._orphans[node]  # the Gateway exists (again): report it again if it goes
        for _ in range(MAX_CONFLICT_RETRIES):
            self._check_leader()
            if isinstance(current, UnparsableGateway):
                await self._report_unparsable(current)
                return
            gw = current
            if gw.being_deleted:
                await self.exposure.apply(name, None, [])
                return
            result = self._elect(gw)
            if result.valid:
                self._invalid.discard(name)
            else:
                self._invalid.add(name)
            self.metrics.invalid_gateways.set(len(self._invalid))
            try:
                written = await self._write_status(gw, result.status)
            except ApiError as exc:
                if exc.conflict:
                    # Our cache was behind the server: decide again from the server's object.
                    current = await self.client.get(GATEWAYS, name, parse_gateway)
                    continue
                if exc.not_found:
                    return  # deleted meanwhile; the informer's DELETED event cleans up
                raise
            self.metrics.active_tunnel_endpoints.labels(gateway=name).set(
                len(result.status.active_tunnel_endpoints()))
            if written:
                self._after_write(gw, result)
            self._report_node_problems(gw, result)
            self._report_findings(gw, result)
            # Exposure after the status: agents need the election even when a Service write fails
            # (that failure is retried with backoff; an invalid spec keeps the last good objects).
            if result.valid:
                slots = []
                if gw.spec.expose_type == EXPOSE_TYPE_LOAD_BALANCER:
                    slots = desired_slots(gw, result.status.active_tunnel_endpoints(), self.nodes.get)
                await self.exposure.apply(name, gw, slots)
            return
        raise RuntimeError(f"gateway {name}: status write kept conflicting")

    def _elect(self, gw: Gateway) -> ElectionResult:
        members = [n for n in map(self.nodes.get, self._members.get(gw.name, ())) if n is not None]
        lb = self.exposure.addresses(gw.name) if gw.spec.expose_type == EXPOSE_TYPE_LOAD_BALANCER else None
        verdict = self._assess(gw, members)
        health = NO_HEALTH if verdict is None else self._health_input(gw, verdict)
        rejected = self._rejections(gw.name)
        found = endpoint_findings(gw, self.nodes.get, self._endpoint_of)
        extras = self._extra_cidrs(gw.name)
        own = {n.name for n in members} | {gw.name}
        found += [f for f in extras.findings if f.node in own]
        result = elect(gw, members, self.clock(), lb, health, rejected=rejected, endpoint_findings=found,
                       switches=self.switches(), extras=extras.by_node,
                       gateway_extras=extras.by_gateway.get(gw.name, ()), keys=self._published_keys(gw),
                       nat=self._nat_inferences(gw))
        self._verdicts[gw.name] = verdict
        if verdict is not None and health.path_health is not None:
            result = self._with_failovers(gw, result, verdict)
        return result

    def _with_failovers(self, gw: Gateway, result: ElectionResult, verdict: HealthVerdict) -> ElectionResult:
        """Hold every node this election replaces on health evidence, in the status it writes (status.pathHealth:
        a new leader reads the holds from there); the memory is kept only once that status is written."""
        memory = verdict.memory
        for ep in result.lost:
            if result.lost_kinds.get(ep.node_name) == LOST_NOT_FORWARDING and ep.node_name in verdict.blamed:
                memory = record_failover(memory, ep.node_name, verdict.blamed[ep.node_name], self.now())
        if memory == verdict.memory:
            self._failover_memory.pop(gw.name, None)
            return result
        self._failover_memory[gw.name] = memory
        ph = path_health(memory, verdict.peers_up, verdict.peers)
        return replace(result, status=replace(result.status, path_health=ph))

    def _relevant_reports(self, gw: str) -> Iterable[PathReport]:
        """The reports about `gw`, and those about every gateway they name (third-party evidence)."""
        assert self.reports is not None
        names = set(self._mentioned_by.get(gw, ()))
        for r in [self.reports.get(n) for n in list(names)]:
            for other in _mentions(r) - {gw}:
                names |= self._mentioned_by.get(other, set())
        for n in names:
            e = self.reports.entry(n)
            if e is not None and e.current is not None:
                yield e.current

    def _assess(self, gw: Gateway, members: list[Node]) -> HealthVerdict | None:
        if self.health is None or self.reports is None:
            return None
        now = self.now()
        memory = self._memory.get(gw.name)
        if memory is None:  # first time (a new leader): what the last leader wrote
            memory = memory_from_status(gw.status.path_health)
        verdict = assess(gw, {n.name: n for n in members}, self._actives, self._relevant_reports(gw.name),
                         memory, now, self.health, self._elected_at, frozenset(self._seen_up))
        self._memory[gw.name] = verdict.memory
        self._seen_up |= verdict.seen_up
        if verdict.condition_reason in (REASON_HEALTHY, REASON_NO_EVIDENCE) and not verdict.memory.holds:
            self._sensitive.discard(gw.name)
        else:
            self._sensitive.add(gw.name)
        if verdict.next_check is not None:
            self.queue.add_after(gw.name, max((verdict.next_check - now).total_seconds(), 0.0) + 0.05)
        return verdict

    def _health_input(self, gw: Gateway, verdict: HealthVerdict) -> HealthInput:
        previous = [c for c in gw.status.conditions or () if c.type == CONDITION_TUNNELS_HEALTHY]
        if verdict.condition_reason == REASON_NO_EVIDENCE and not previous:
            # No reports ever: the status stays exactly what it was before PathReports.
            return replace(verdict.election, path_health=None)
        return replace(verdict.election, condition=(CONDITION_TUNNELS_HEALTHY, verdict.condition_status,
                                                    verdict.condition_reason, verdict.condition_message))

    # --- the node checks ---

    def _rejections(self, reconciling: str) -> dict[str, Finding]:
        """Every node left out of the statuses, by name (see nodecheck). The index is rebuilt only after a
        node fact or the set of Gateways changed; the overlap order is decided again each time (it reads the
        current statuses), and a Gateway whose node's verdict changed is queued, so every Gateway acts on
        the same decision."""
        if self._index is None:
            self._index = NodeIndex(self.nodes.values(), set(self.gateways.keys()), self.ranges, self._gw_extras)
        rejected = self._index.rejections(self._incumbent)
        if rejected != self._rejected:
            changed = {n for n in rejected.keys() | self._rejected.keys() if rejected.get(n) != self._rejected.get(n)}
            self._rejected = rejected
            self.metrics.rejected_nodes.set(len(rejected))
            for name in sorted(changed):
                node = self.nodes.get(name)
                if node is not None and node.gateway and node.gateway != reconciling:
                    self.queue.add(node.gateway)
        return rejected

    def _incumbent(self, node: Node) -> bool:
        """Whether the node's pod CIDRs are listed for it in a current status: its Gateway's first, then any
        (a node moving between Gateways keeps its subnets). Asked only for nodes whose pod CIDRs overlap."""
        listed = self._listed_for_node(node.name, node.gateway)
        return listed is not None and is_incumbent(node, listed)

    def _listed_for_node(self, node: str, gateway: str | None) -> list[str] | None:
        """The subnets a current status lists for `node` (its Gateway's first, then any), None when none does."""
        first = [gateway] if gateway else []
        for name in itertools.chain(first, self.gateways.keys()):
            gw = self.gateways.get(name)
            if isinstance(gw, Gateway):
                for info in gw.status.nodes or ():
                    if info.node_name == node:
                        return info.subnets
        return None

    def _listed_for(self, owner: str) -> list[str]:
        """What a current status lists for an extra CIDR's owner: a node's subnets, or for a Gateway the subnets
        of its active tunnel endpoint's node."""
        gw = self.gateways.get(owner)
        if isinstance(gw, Gateway) and owner in self._gw_extras:
            tunnels = gw.status.active_tunnel_endpoints()
            node = tunnels[0].node_name if tunnels else ""
            return next((i.subnets for i in gw.status.nodes or () if i.node_name == node), [])
        node_obj = self.nodes.get(owner)
        return self._listed_for_node(owner, node_obj.gateway if node_obj else None) or []

    def _extra_cidrs(self, reconciling: str) -> Extras:
        """The extra-allowed-source-cidrs that may be routed (see NodeIndex.extras); when what is accepted changes,
        the other Gateways it concerns are queued (like the node checks' rejections)."""
        assert self._index is not None
        if not self._index.has_extras:
            self._extras = Extras()
            return self._extras
        extras = self._index.extras(self._listed_for)
        before = self._extras
        self._extras = extras
        if before is not None and before != extras:
            owners = {f.node for f in [*before.findings, *extras.findings]}
            owners |= before.by_node.keys() | extras.by_node.keys()
            owners |= before.by_gateway.keys() | extras.by_gateway.keys()
            for owner in sorted(owners):
                node = self.nodes.get(owner)
                gw = node.gateway if node is not None else owner
                if gw and gw != reconciling and (gw in self._members or gw in self._gw_extras):
                    self.queue.add(gw)
        return extras

    def _report_findings(self, gw: Gateway, result: ElectionResult) -> None:
        """One warning, one Event on the Gateway and (for a node left out) one on the Node per new finding."""
        now = frozenset(result.findings)
        before = self._reported_findings.get(gw.name, frozenset())
        if now == before:
            return
        self._reported_findings[gw.name] = now
        for f in sorted(now - before):
            log.warning("node check failed", extra=kv(gateway=gw.name, node=f.node, reason=f.reason,
                                                      problem=f.message))
            self.recorder.record(self._ref(gw), "Warning", f.reason, f.message)
            node = self.nodes.get(f.node)
            if node is not None and self._rejected.get(f.node) == f:
                self.recorder.record(_node_ref(node), "Warning", f.reason, f"{f.message} (gateway {gw.name})")
        if before and not now:
            log.info("gateway nodes valid again", extra=kv(gateway=gw.name))

    def _report_orphans(self, missing: str) -> None:
        """Nodes labelled for a Gateway that does not exist are in no pool: say so, once per node."""
        for name in sorted(self._members.get(missing, ())):
            node = self.nodes.get(name)
            if node is None or self._orphans.get(name) == missing:
                continue
            self._orphans[name] = missing
            message = (f"node {name} is labelled raven.openyurt.io/gateway={missing} but no Gateway {missing} "
                       "exists: the node is in no pool and unreachable from other pools")
            log.warning("node labelled for a missing gateway", extra=kv(node=name, gateway=missing))
            self.recorder.record(_node_ref(node), "Warning", REASON_GATEWAY_NOT_FOUND, message)

    async def _write_status(self, gw: Gateway, status: GatewayStatus) -> bool:
        # `gw.status` is the status as parsed from the cache (a malformed one never gets here: the whole
        # Gateway is then an UnparsableGateway, reported by _report_unparsable).
        if status == gw.status:
            return False
        self._check_leader()
        # A merge patch of the fields we own (lists are replaced whole; others' status fields are kept),
        # carrying the resourceVersion the decision was based on: a stale view is a 409, not a lost update.
        patch: JSON = {"metadata": {"resourceVersion": gw.resource_version}, "status": status.to_dict()}
        self._writing[gw.name] = (gw.resource_version, status)
        try:
            updated_rv = await self.client.merge_patch(GATEWAYS, gw.name, patch, subresource="status")
        except ApiError as exc:
            self.metrics.status_write_errors.labels(reason="conflict" if exc.conflict else str(exc.status)).inc()
            raise
        except Exception:
            self.metrics.status_write_errors.labels(reason="error").inc()
            raise
        finally:
            self._writing.pop(gw.name, None)
        self._written_rv[gw.name] = updated_rv
        self.metrics.status_writes.inc()
        return True

    def _ref(self, gw: AnyGateway) -> ObjectRef:
        return ObjectRef(API_VERSION, KIND, gw.name, gw.uid)

    def _after_write(self, gw: Gateway, result: ElectionResult) -> None:
        ref = self._ref(gw)
        if not result.valid:
            message = "; ".join(result.spec_problems)
            log.warning("invalid gateway: keeping last election", extra=kv(gateway=gw.name, problems=message))
            self.recorder.record(ref, "Warning", EVENT_INVALID_GATEWAY, message)
            return
        verdict = self._verdicts.get(gw.name)
        for ep in result.lost:
            reason = result.lost_reasons.get(ep.node_name, "")
            kind = result.lost_kinds.get(ep.node_name, "")
            log.warning("active endpoint lost", extra=kv(gateway=gw.name, node=ep.node_name, type=ep.type,
                                                         why=reason))
            self.metrics.failovers.labels(gateway=gw.name).inc()
            self.metrics.gateway_failovers.labels(reason=kind).inc()
            self.recorder.record(ref, "Warning", EVENT_ACTIVE_ENDPOINT_LOST,
                                 f"{ep.type} endpoint on node {ep.node_name} is no longer active: {reason}")
            if kind == LOST_NOT_FORWARDING and verdict is not None and ep.node_name in verdict.blamed:
                blame = verdict.blamed[ep.node_name]
                self._memory[gw.name] = self._failover_memory.pop(
                    gw.name, record_failover(self._memory.get(gw.name, verdict.memory), ep.node_name, blame,
                                             self.now()))
                self._sensitive.add(gw.name)
                new = ", ".join(e.node_name for e in result.status.active_tunnel_endpoints()) or "nobody"
                self.recorder.record(ref, "Warning", EVENT_NOT_FORWARDING,
                                     f"gateway {ep.node_name} is not forwarding, failed over to {new}: "
                                     f"{blame.evidence}")
        self._record_health_transition(gw, result)
        self._record_replicas(gw, result)
        for ep in result.elected:
            log.info("active endpoint elected", extra=kv(gateway=gw.name, node=ep.node_name, type=ep.type))
            self.metrics.elections.labels(gateway=gw.name).inc()
            self.recorder.record(ref, "Normal", EVENT_ACTIVE_ENDPOINT_ELECTED,
                                 f"{ep.type} endpoint on node {ep.node_name} is active")
        if result.lost and not any(ep.type == "tunnel" for ep in result.status.active_endpoints or []):
            log.warning("gateway has no active tunnel endpoint", extra=kv(gateway=gw.name))

    def _record_replicas(self, gw: Gateway, result: ElectionResult) -> None:
        """An Event when the Replicas that cannot be honoured change (the Valid condition says the same)."""
        old = [c.message for c in gw.status.conditions or ()
               if c.type == CONDITION_VALID and c.reason == REASON_REPLICAS]
        message = "; ".join(result.replica_notes)
        if result.replica_notes and old != [message]:
            listed = ", ".join(e.node_name for e in result.status.active_endpoints or ()) or "none"
            log.warning("replicas not honoured", extra=kv(gateway=gw.name, why=message))
            self.recorder.record(self._ref(gw), "Warning", EVENT_REPLICAS_NOT_HONOURED,
                                 f"{message} (active endpoints listed: {listed})")

    def _record_health_transition(self, gw: Gateway, result: ElectionResult) -> None:
        """An Event when the TunnelsHealthy condition turns to NoBetterCandidate (nothing moves: say why once)."""
        old = [c.reason for c in gw.status.conditions or () if c.type == CONDITION_TUNNELS_HEALTHY]
        new = [c for c in result.status.conditions or () if c.type == CONDITION_TUNNELS_HEALTHY]
        if new and new[0].reason == REASON_NO_BETTER and old != [REASON_NO_BETTER]:
            log.warning("gateway not forwarding and no better candidate", extra=kv(gateway=gw.name,
                                                                                    why=new[0].message))
            self.recorder.record(self._ref(gw), "Warning", EVENT_NO_BETTER_CANDIDATE, new[0].message)

    def _report_node_problems(self, gw: Gateway, result: ElectionResult) -> None:
        problems = result.node_problems
        if problems == self._reported.get(gw.name, ()):
            return
        self._reported[gw.name] = problems
        if problems:
            message = "; ".join(problems)
            log.warning("gateway nodes incomplete", extra=kv(gateway=gw.name, problems=message))
            self.recorder.record(self._ref(gw), "Warning", EVENT_NODE_INCOMPLETE, message)

    async def _report_unparsable(self, bad: UnparsableGateway) -> None:
        """A Gateway we cannot even parse: only the Valid condition is written (merge patch)."""
        name, problem = bad.name, bad.error
        others = [c.to_dict() for c in bad.conditions if c.type != CONDITION_VALID]
        previous = [c for c in bad.conditions if c.type == CONDITION_VALID][-1:]
        cond = condition(previous, CONDITION_VALID, "False", REASON_INVALID, problem, self.clock())
        if previous and previous[0].status == "False" and previous[0].message == problem:
            return  # already reported
        self._invalid.add(name)
        self.metrics.invalid_gateways.set(len(self._invalid))
        self._check_leader()
        patch: JSON = {"status": {"conditions": sorted([*others, cond.to_dict()], key=_condition_type)}}
        try:
            updated_rv = await self.client.merge_patch(GATEWAYS, name, patch, subresource="status")
        except ApiError as exc:
            self.metrics.status_write_errors.labels(reason=str(exc.status)).inc()
            if exc.not_found:
                return
            raise
        self._written_rv[name] = updated_rv
        self.metrics.status_writes.inc()
        log.warning("unparsable gateway", extra=kv(gateway=name, problem=problem))
        self.recorder.record(self._ref(bad), "Warning", EVENT_INVALID_GATEWAY, problem)

    def _forget(self, name: str) -> None:
        with contextlib.suppress(KeyError):
            self.metrics.active_tunnel_endpoints.remove(name)
        self._written_rv.pop(name, None)
        self._memory.pop(name, None)
        self._failover_memory.pop(name, None)
        self._verdicts.pop(name, None)
        self._sensitive.discard(name)
        self._tracebacks_logged.pop(name, None)
        self._reported.pop(name, None)
        self._reported_findings.pop(name, None)
        self._invalid.discard(name)
        self.metrics.invalid_gateways.set(len(self._invalid))

