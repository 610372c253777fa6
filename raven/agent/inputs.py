"""The agent's plan inputs: the typed Gateway and Node caches, and the plan last built from them (no I/O).

`PlanInputs` counts the informer changes that can affect the plan (any Gateway change; a change to this
node's own Node facts, not its heartbeats) and rebuilds the plan only after one, or when the plan's
parameters changed (e.g. the underlay MTU found by the wiring): a converged resync then costs a kernel
read and a diff, not a re-plan. Each object was parsed once, by the typed informer cache, when its
resourceVersion arrived; a Gateway edit that does not parse is planned from its last good version
(bad input must not tear down a working pool's tunnels) and reported in the plan's problems.
"""

from __future__ import annotations

from dataclasses import replace

from raven.agent.plan import PlanConfig, PlanResult, ProtectedAddress, plan
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.kube.typed import TypedEvent, TypedInformer
from raven.nattraversal.core import PunchTarget
from raven.routing.choice import RouteChoice


class PlanInputs:
    def __init__(self, node_name: str, gateways: TypedInformer[Gateway], nodes: TypedInformer[Node]) -> None:
        self.node_name = node_name
        self._gateways = gateways
        self._nodes = nodes
        self._generation = 0
        self._planned: tuple[int, PlanConfig, tuple[ProtectedAddress, ...], RouteChoice | None,
                             tuple[PunchTarget, ...]] | None = None
        self._last: PlanResult | None = None

    def synced(self) -> bool:
        return self._gateways.synced and self._nodes.synced

    def on_gateway(self, event: TypedEvent[Gateway]) -> bool:
        """Every Gateway change can change the plan. Returns whether a re-plan is due."""
        self._generation += 1
        return True

    def on_node(self, event: TypedEvent[Node]) -> bool:
        """Only this node's own facts feed the plan; other nodes' heartbeats must not cause work."""
        if event.name != self.node_name:
            return False
        new = event.obj if event.type != "DELETED" else None
        if event.old is not None and new is not None and _plan_facts(event.old) == _plan_facts(new):
            return False
        self._generation += 1
        return True

    def gateway_names(self) -> list[str]:
        """Every Gateway in the cache (parsed or not)."""
        return self._gateways.keys()

    def node(self) -> Node | None:
        """This node's own Node object, if the cache has it."""
        return self._nodes.get(self.node_name)

    @property
    def last(self) -> PlanResult | None:
        """The last plan built (None before the first)."""
        return self._last

    def gateways(self) -> list[Gateway]:
        """The parsed Gateways the plan uses (each its last good version)."""
        return self._gateway_list([])

    def _gateway_list(self, problems: list[str]) -> list[Gateway]:
        out: list[Gateway] = []
        for entry in self._gateways.entries():
            if entry.value is None:
                problems.append(f"gateway {entry.key}: malformed object skipped")
                continue
            if entry.error is not None:
                problems.append(f"gateway {entry.key}: malformed object; planned from its last good version")
            out.append(entry.value)
        return out

    def plan(self, cfg: PlanConfig, protected: tuple[ProtectedAddress, ...] = (),
             routing: RouteChoice | None = None, punch: tuple[PunchTarget, ...] = ()) -> PlanResult:
        """The plan for the current inputs with `cfg`, the protected addresses, the routing choice and NAT
        traversal's punch targets: the cached one when none changed."""
        key = (self._generation, cfg, protected, routing, punch)
        if self._last is not None and self._planned == key:
            return self._last
        problems: list[str] = []
        gateways = self._gateway_list(problems)
        me = self.node()
        result = plan(gateways, {me.name: me} if me is not None else {}, self.node_name, cfg, protected, routing,
                      punch)
        if problems:
            result = replace(result, problems=problems + result.problems)
        self._last, self._planned = result, key
        return result


def _plan_facts(node: Node) -> tuple[object, ...]:
    return (node.internal_ip, node.pod_cidrs, node.gateway, node.being_deleted)
