"""Gateway election: which candidate nodes carry a Gateway's tunnel and proxy traffic (pure).

`elect()` is a plain function of (Gateway, the nodes labelled for it, load-balancer addresses, now):
no I/O, no clock, no randomness, so the same inputs always give the same status and the reconciler
can call it on every event. Rules (OpenYurt Raven's, made sticky):

- candidates: nodes labelled `raven.openyurt.io/gateway=<name>` that appear in `spec.endpoints`;
  a candidate is eligible when Ready and not being deleted;
- `tunnelConfig.Replicas` tunnel and `proxyConfig.Replicas` proxy endpoints are active (a missing
  tunnel Replicas means 1);
- sticky: an active endpoint that is still an eligible candidate keeps its role and its position in
  `status.activeEndpoints` (the position is the LoadBalancer slot, see exposure.py); a lost one is
  replaced, in the same position, by the next eligible candidate in spec order;
- an invalid spec keeps the last good election and reports the problem in the `Valid` condition;
- data-plane health (`HealthInput`, decided by health.py from the agents' PathReports) adjusts eligibility
  without forking these rules: an active endpoint that is `not_forwarding` is replaced, in its slot, by the
  next fit candidate (and kept when there is none: nothing better to move to); an `unfit` candidate (held
  after a health failover, or its own reports say it cannot do better) is never newly elected; a `keep`
  active endpoint stays although its Node's Ready is Unknown (edge autonomy: the control plane cannot hear the
  node, the data plane says it works).
- a node the cluster-wide checks rejected (`nodecheck`: a bad pod CIDR) is neither listed in status.nodes nor
  eligible; it and every endpoint misconfiguration are reported in the `NodesValid` condition (False while
  any is found; its reason is the first finding's, in node order, the same reason as that finding's Event).
- OpenYurt compatibility (raven/api/openyurt.py): `kube-system/raven-cfg` switches tunnel or proxy election off
  (`Switches`: wanted 0, said in the Valid message); each active endpoint carries OpenYurt's `config` entry
  (`enable-l3-tunnel` / `enable-l7-proxy`) and its port defaulted as OpenYurt's webhook does (4500 / 10262),
  in status only (spec stays as written); the accepted extra-allowed-source-cidrs are added to the subnets of
  their node (a Node's annotation) or of the active tunnel endpoint's node (a Gateway's).
- Replicas that cannot be honoured (tunnel Replicas > 1: one active tunnel endpoint carries a pool's traffic;
  proxy Replicas beyond the proxy endpoints listed) elect what can be, and set Valid=False with reason
  `ReplicasNotHonoured` saying so: OpenYurt's webhook rejects such a spec, we keep electing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from raven.api.constants import (
    CONDITION_VALID,
    DEFAULT_PROXY_PORT,
    DEFAULT_TUNNEL_PORT,
    ENDPOINT_CONFIG_PUBLIC_KEY,
    ENDPOINT_TYPE_PROXY,
    ENDPOINT_TYPE_TUNNEL,
    EXPOSE_TYPE_LOAD_BALANCER,
)
from raven.api.gateway import Condition, Endpoint, Gateway, GatewayStatus, NodeInfo, PathHealth, validate
from raven.api.node import Node
from raven.api.openyurt import ALL_ON, Switches
from raven.controller.nodecheck import Finding
from raven.nattraversal.core import CONFIG_KEYS as NAT_CONFIG_KEYS

REASON_VALID = "SpecValid"
REASON_INVALID = "InvalidSpec"
REASON_REPLICAS = "ReplicasNotHonoured"
CONDITION_NODES_VALID = "NodesValid"
REASON_NODES_VALID = "NodesValid"
# A condition message names at most this many findings (each is also its own Event).
MAX_FINDINGS_IN_MESSAGE = 10


@dataclass(frozen=True)
class HealthInput:
    """What the data plane says (health.py), by node name, each with its evidence for Events and conditions."""

    not_forwarding: Mapping[str, str] = field(default_factory=dict)
    unfit: Mapping[str, str] = field(default_factory=dict)
    keep: Mapping[str, str] = field(default_factory=dict)
    # Of `unfit`, the nodes unfit only because they are held after a health failover: they may still fill a
    # hole that Node readiness (not health) left, when nobody else can (better a held node than no tunnel).
    held: frozenset[str] = frozenset()
    # (type, status, reason, message) of the health condition to set; None leaves conditions as they are.
    condition: tuple[str, str, str, str] | None = None
    # status.pathHealth to write (peer counts, held nodes); None keeps the previous one.
    path_health: PathHealth | None = None
    # Evidence first: how many peers each candidate reaches over its own uplink (its underlay probes); a hole is
    # filled by the candidate that reaches the most, spec order among equals (a candidate with no evidence: 0).
    prefer: Mapping[str, int] = field(default_factory=dict)


NO_HEALTH = HealthInput()

# ElectionResult.lost_kinds values (the `reason` label of raven_gateway_failovers_total).
LOST_NOT_FORWARDING = "not_forwarding"
LOST_NOT_READY = "not_ready"
LOST_DELETED = "node_deleted"
LOST_GONE = "node_gone"
LOST_SPEC = "spec_changed"
LOST_REJECTED = "node_rejected"
LOST_DISABLED = "disabled"


@dataclass(frozen=True)
class ElectionResult:
    status: GatewayStatus
    # Endpoints that became active / stopped being active, for Events and metrics.
    elected: tuple[Endpoint, ...] = ()
    lost: tuple[Endpoint, ...] = ()
    # Problems with the gateway's spec (validate()) and with its nodes (missing InternalIP, ...).
    spec_problems: tuple[str, ...] = ()
    node_problems: tuple[str, ...] = ()
    # Why each lost endpoint was lost, by node name (NotReady, deleted, unlabelled, ...).
    lost_reasons: Mapping[str, str] = field(default_factory=dict)
    # The same as a short kind (LOST_*), by node name.
    lost_kinds: Mapping[str, str] = field(default_factory=dict)
    # Nodes left out and endpoint misconfigurations (the NodesValid condition), sorted by node.
    findings: tuple[Finding, ...] = ()
    # What of a valid spec is not done as written (Replicas not honoured), and why endpoints are not elected.
    replica_notes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.spec_problems


def condition(
    previous: Sequence[Condition] | None, type_: str, status: str, reason: str, message: str, now: str
) -> Condition:
    """A condition that keeps its lastTransitionTime while its status does not change."""
    for old in previous or ():
        if old.type == type_ and old.status == status and old.last_transition_time:
            return Condition(type_, status, reason, message, old.last_transition_time)
    return Condition(type_, status, reason, message, now)


def _condition_type(c: Condition) -> str:
    return c.type


def _node_name(n: Node) -> str:
    return n.name


def _merge_conditions(previous: Sequence[Condition] | None, new: Condition) -> list[Condition]:
    """Replace our condition type, keep everyone else's."""
    out = [c for c in previous or () if c.type != new.type]
    out.append(new)
    return sorted(out, key=_condition_type)


def invalid_status(gw_status: GatewayStatus, problems: Sequence[str], now: str) -> GatewayStatus:
    """The last good election, plus a Valid=False condition naming the problems."""
    cond = condition(gw_status.conditions, CONDITION_VALID, "False", REASON_INVALID, "; ".join(problems), now)
    return replace(gw_status, conditions=_merge_conditions(gw_status.conditions, cond))


def _node_info(node: Node, extra: Sequence[str] = (), gateway_extra: Sequence[str] = ()) -> NodeInfo:
    # Listed with what is known: an empty privateIP or subnet list is better than hiding the node.
    subnets = list(node.pod_cidrs)
    subnets += [c for c in [*extra, *gateway_extra] if c not in subnets]
    return NodeInfo(node_name=node.name, private_ip=node.internal_ip or "", subnets=subnets)


def nodes_condition(previous: Sequence[Condition] | None, findings: Sequence[Finding], now: str) -> Condition:
    """NodesValid: True when nothing is found, else False with the first finding's reason and every message."""
    if not findings:
        return condition(previous, CONDITION_NODES_VALID, "True", REASON_NODES_VALID, "", now)
    messages = [f.message for f in findings[:MAX_FINDINGS_IN_MESSAGE]]
    if len(findings) > MAX_FINDINGS_IN_MESSAGE:
        messages.append(f"and {len(findings) - MAX_FINDINGS_IN_MESSAGE} more (see the Events)")
    return condition(previous, CONDITION_NODES_VALID, "False", findings[0].reason, "; ".join(messages), now)


def _why_lost(ep: Endpoint, spec_eps: Sequence[Endpoint], nodes: Mapping[str, Node],
              health: HealthInput, rejected: Mapping[str, Finding], switches: Switches = ALL_ON) -> tuple[str, str]:
    """(kind, message) of why an active endpoint was lost."""
    disabled = switches.disabled_note(ep.type)
    if disabled is not None:
        return LOST_DISABLED, disabled
    if ep.key not in {e.key for e in spec_eps}:
        return LOST_SPEC, "endpoint removed from spec"
    if ep.node_name in rejected:
        return LOST_REJECTED, rejected[ep.node_name].message
    node = nodes.get(ep.node_name)
    if node is None:
        return LOST_GONE, "node is gone or no longer labelled for this gateway"
    if node.being_deleted:
        return LOST_DELETED, "node is being deleted"
    if not node.ready and ep.node_name not in health.keep:
        return LOST_NOT_READY, "node is not Ready"
    if ep.node_name in health.not_forwarding:
        return LOST_NOT_FORWARDING, f"not forwarding: {health.not_forwarding[ep.node_name]}"
    return LOST_SPEC, "fewer replicas wanted"


def _pick(
    ep_type: str,
    wanted: int,
    spec_eps: Sequence[Endpoint],
    previous: Sequence[Endpoint],
    eligible: set[str],
    electable: set[str] | None = None,
    demote: Mapping[str, str] | None = None,
    last_resort: set[str] | None = None,
    prefer: Mapping[str, int] | None = None,
) -> list[Endpoint]:
    """Sticky choice for one endpoint type: previous survivors keep their slot, holes filled in spec order.

    `eligible`: may stay active; `electable` (default: the same): may become active; `demote`: survivors to
    replace by an electable spare when there is one (kept otherwise); `last_resort`: may fill a hole (never
    replace a demoted survivor) when no electable spare is left; `prefer`: spares with a higher value come
    first (spec order among equals)."""
    electable = eligible if electable is None else electable
    rank = prefer or {}

    def more_evidence_first(name: str) -> int:
        return -rank.get(name, 0)

    def ordered(names: list[str]) -> list[str]:
        return sorted(names, key=more_evidence_first)  # stable: spec order among equals
    by_node = {ep.node_name: ep for ep in spec_eps if ep.type == ep_type}
    slots: list[str | None] = []
    for old in previous:
        if old.type != ep_type:
            continue
        alive = old.node_name in by_node and old.node_name in eligible and old.node_name not in slots
        slots.append(old.node_name if alive else None)
    # Fewer replicas wanted than before: drop holes first, then the last survivors.
    while len(slots) > wanted and None in slots:
        slots.remove(None)
    del slots[wanted:]
    while len(slots) < wanted:
        slots.append(None)
    taken = {s for s in slots if s is not None}
    spare = [ep.node_name for ep in spec_eps if ep.type == ep_type and ep.node_name in electable]
    spare = ordered([n for n in spare if n not in taken and n not in (demote or {})])
    for i, s in enumerate(slots):
        if s is None and spare:
            slots[i] = spare.pop(0)
    for i, s in enumerate(slots):
        if s is not None and s in (demote or {}) and spare:
            slots[i] = spare.pop(0)
    if last_resort and None in slots:
        taken = {s for s in slots if s is not None}
        extra = ordered([ep.node_name for ep in spec_eps if ep.type == ep_type and ep.node_name in last_resort
                         and ep.node_name not in taken])
        for i, s in enumerate(slots):
            if s is None and extra:
                slots[i] = extra.pop(0)
    return [by_node[s] for s in slots if s is not None]


def elect(
    gw: Gateway,
    nodes: Iterable[Node],
    now: str,
    lb_addresses: Mapping[int, str] | None = None,
    health: HealthInput = NO_HEALTH,
    rejected: Mapping[str, Finding] | None = None,
    endpoint_findings: Sequence[Finding] = (),
    switches: Switches = ALL_ON,
    extras: Mapping[str, Sequence[str]] | None = None,
    gateway_extras: Sequence[str] = (),
    keys: Mapping[str, str] | None = None,
    nat: Mapping[str, Mapping[str, str]] | None = None,
) -> ElectionResult:
    """Compute the Gateway's status from its spec, its previous status and its nodes.

    `nodes` are the nodes labelled for this gateway (others are ignored). `lb_addresses` maps a tunnel
    slot (index among the active tunnel endpoints) to its LoadBalancer's address, for
    `exposeType: LoadBalancer`; that address becomes the active endpoint's publicIP, and the
    endpoint's port its publicPort (the Service forwards the same port).
    `now` (RFC 3339) is only used as lastTransitionTime of a condition that changes. `health`: what the data
    plane says (see HealthInput); the default changes nothing.
    `rejected`: the nodes the cluster-wide checks left out (`NodeIndex.rejections()`), by name;
    `endpoint_findings`: what `nodecheck.endpoint_findings` reports about this gateway's endpoints (and any other
    finding to show in NodesValid, such as a rejected extra CIDR). `switches`: raven-cfg (tunnel/proxy election on
    or off). `extras`: the accepted extra CIDRs of this gateway's nodes, by node; `gateway_extras`: the Gateway's
    own accepted ones, added to the active tunnel endpoint's node. `keys`: the WireGuard public key each node
    published in its own PathReport, by node; an elected tunnel endpoint's `config.publicKey` is that key, else
    the one its spec endpoint carries (an OpenYurt agent writes it there), else the one the previous status had
    for the same node (a report not read yet, or deleted, never takes a working key away).
    `nat`: NAT traversal's inference about each node under NAT (`raven.nattraversal.core.to_config` keys), merged
    into the elected tunnel endpoint's `config`; keys of an earlier inference not in it are dropped.
    """
    rejected = rejected or {}
    labelled = [n for n in nodes if n.gateway == gw.name]
    own = {n.name: n for n in labelled if n.name not in rejected}
    previous = gw.status
    problems = validate(gw)
    if problems:
        return ElectionResult(status=invalid_status(previous, problems, now), spec_problems=tuple(problems))

    spec_eps = gw.spec.all_endpoints
    eligible = {ep.node_name for ep in spec_eps if ep.node_name in own and own[ep.node_name].eligible}
    prev_active = previous.active_endpoints or []
    # Health only touches tunnel endpoints: the data plane measures tunnels, not proxies.
    stay = eligible | {n for n in health.keep if n in own and not own[n].being_deleted}
    electable = eligible - set(health.unfit) - set(health.not_forwarding)
    want_tunnels, want_proxies, replica_notes = _honoured_replicas(gw)
    notes = [n for n in (switches.disabled_note(ENDPOINT_TYPE_TUNNEL), switches.disabled_note(ENDPOINT_TYPE_PROXY))
             if n is not None]
    notes += switches.problems
    tunnels = _pick(ENDPOINT_TYPE_TUNNEL, want_tunnels if switches.tunnel else 0, spec_eps, prev_active, stay,
                    electable, health.not_forwarding, (eligible & health.held) - set(health.not_forwarding),
                    health.prefer)
    proxies = _pick(ENDPOINT_TYPE_PROXY, want_proxies if switches.proxy else 0, spec_eps, prev_active, eligible)

    if gw.spec.expose_type == EXPOSE_TYPE_LOAD_BALANCER:
        addrs = lb_addresses or {}
        tunnels = [
            replace(ep, public_ip=addrs[i], public_port=ep.tunnel_port) if i in addrs
            else replace(ep, public_ip=None, public_port=None)
            for i, ep in enumerate(tunnels)
        ]
    active = [_with_nat(_with_key(_as_active(ep, switches), keys or {}, prev_active), nat or {})
              for ep in tunnels + proxies]

    node_problems: list[str] = []
    for node in sorted(own.values(), key=_node_name):
        node_problems.extend(node.problems())

    findings = sorted([*(rejected[n.name] for n in labelled if n.name in rejected), *endpoint_findings])
    message = "; ".join([*replica_notes, *notes])
    if replica_notes:
        valid = condition(previous.conditions, CONDITION_VALID, "False", REASON_REPLICAS, message, now)
    else:
        valid = condition(previous.conditions, CONDITION_VALID, "True", REASON_VALID, message, now)
    conditions = _merge_conditions(previous.conditions, valid)
    conditions = _merge_conditions(conditions, nodes_condition(previous.conditions, findings, now))
    if health.condition is not None:
        conditions = _merge_conditions(conditions, condition(previous.conditions, *health.condition, now))
    gw_node = tunnels[0].node_name if tunnels and gateway_extras else None
    status = GatewayStatus(
        nodes=[_node_info(n, (extras or {}).get(n.name, ()), gateway_extras if n.name == gw_node else ())
               for n in sorted(own.values(), key=_node_name)],
        active_endpoints=active,
        conditions=conditions,
        path_health=health.path_health if health.path_health is not None else previous.path_health,
    )
    before = {ep.key for ep in prev_active}
    after = {ep.key for ep in active}
    lost = tuple(ep for ep in prev_active if ep.key not in after)
    why = {ep.node_name: _why_lost(ep, spec_eps, own, health, rejected, switches) for ep in lost}
    return ElectionResult(
        status=status,
        elected=tuple(ep for ep in active if ep.key not in before),
        lost=lost,
        node_problems=tuple(node_problems),
        lost_reasons={n: w[1] for n, w in why.items()},
        lost_kinds={n: w[0] for n, w in why.items()},
        findings=tuple(findings),
        replica_notes=tuple(replica_notes),
        notes=tuple(notes),
    )


def _honoured_replicas(gw: Gateway) -> tuple[int, int, list[str]]:
    """(tunnel, proxy) endpoints to elect, and a note for each Replicas that cannot be honoured as written."""
    notes: list[str] = []
    tunnels = gw.spec.tunnel_replicas
    if tunnels > 1:
        notes.append(f"spec.tunnelConfig.Replicas is {tunnels}: only one active tunnel endpoint carries a pool's "
                     "traffic, so 1 is elected")
        tunnels = 1
    proxies = gw.spec.proxy_replicas
    listed = sum(1 for ep in gw.spec.all_endpoints if ep.type == ENDPOINT_TYPE_PROXY)
    if proxies > listed:
        notes.append(f"spec.proxyConfig.Replicas is {proxies} but spec.endpoints lists {listed} proxy "
                     f"endpoint(s), so at most {listed} can be elected")
        proxies = listed
    return tunnels, proxies, notes


def _with_key(ep: Endpoint, keys: Mapping[str, str], previous: Sequence[Endpoint]) -> Endpoint:
    """A tunnel endpoint with the WireGuard public key peers read (see `elect`'s `keys`)."""
    if ep.type != ENDPOINT_TYPE_TUNNEL:
        return ep
    key = keys.get(ep.node_name) or (ep.config or {}).get(ENDPOINT_CONFIG_PUBLIC_KEY)
    if not key:
        key = next((p.config[ENDPOINT_CONFIG_PUBLIC_KEY] for p in previous
                    if p.node_name == ep.node_name and p.type == ENDPOINT_TYPE_TUNNEL and p.config
                    and p.config.get(ENDPOINT_CONFIG_PUBLIC_KEY)), None)
    if not key:
        return ep
    return replace(ep, config={**(ep.config or {}), ENDPOINT_CONFIG_PUBLIC_KEY: key})


def _with_nat(ep: Endpoint, nat: Mapping[str, Mapping[str, str]]) -> Endpoint:
    """A tunnel endpoint with what NAT traversal inferred about its node (see `elect`'s `nat`)."""
    if ep.type != ENDPOINT_TYPE_TUNNEL:
        return ep
    config = {k: v for k, v in (ep.config or {}).items() if k not in NAT_CONFIG_KEYS}
    config.update(nat.get(ep.node_name, {}))
    return replace(ep, config=config or None) if config != (ep.config or {}) else ep


def _as_active(ep: Endpoint, switches: Switches) -> Endpoint:
    """An elected spec endpoint as OpenYurt writes it in status: its port defaulted, its raven-cfg switch in
    `config` (merged into the endpoint's own config)."""
    default = DEFAULT_TUNNEL_PORT if ep.type == ENDPOINT_TYPE_TUNNEL else DEFAULT_PROXY_PORT
    return replace(ep, port=ep.port or default, config={**(ep.config or {}), **switches.config_for(ep.type)})
