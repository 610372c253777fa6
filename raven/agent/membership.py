"""Whether this node is in the network, and if not why (pure): what the agent warns about and /readyz shows.

A node is in the network when a Gateway's status lists it and that Gateway has an active tunnel endpoint.
When it is not, the reason is one of:

- a misconfiguration of this node: no Node object, no `raven.openyurt.io/gateway` label, a label naming a
  Gateway that does not exist, or a Gateway that does not list it (the controller left it out: a bad pod
  CIDR, reported in the Node's Events). The agent is then *unready* (check `membership`), so the DaemonSet
  shows the node (`kubectl get ds` READY below DESIRED, `kubectl describe pod` names the reason). The price:
  a rolling update of the DaemonSet counts that pod as unavailable, so fix the node, or keep Raven's
  DaemonSet off nodes that are not meant to be in a pool (e.g. a nodeAffinity on the label);
- its Gateway has no active tunnel endpoint (every candidate is NotReady, say): a pool-wide outage that the
  Gateway's ActiveEndpointLost Events and status show. Warned about, but the agent stays ready: making every
  member of the pool unready would not point at the cause, and the agent itself is doing its job.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from raven.agent.plan import PlanResult
from raven.api.constants import LABEL_GATEWAY
from raven.api.node import Node


@dataclass(frozen=True)
class Membership:
    problem: str | None = None  # None: in the network
    ready: bool = True  # False when the problem is a misconfiguration of this node


def membership(node_name: str, node: Node | None, gateways: Collection[str], result: PlanResult) -> Membership:
    if result.role != "none":
        return Membership()
    if node is None:
        return Membership(f"no Node object named {node_name}: this node is in no pool", ready=False)
    label = node.gateway
    if label is None:
        return Membership(f"node {node_name} has no {LABEL_GATEWAY} label: it is in no pool and unreachable from "
                          "other pools", ready=False)
    if label not in gateways:
        return Membership(f"node {node_name} is labelled {LABEL_GATEWAY}={label} but no Gateway {label} exists: it "
                          "is in no pool and unreachable from other pools", ready=False)
    if result.gateway is None:
        return Membership(f"gateway {label} does not list node {node_name} in its status: the controller left it "
                          "out (see the Node's Events, e.g. a bad pod CIDR) or has not caught up yet", ready=False)
    return Membership(f"gateway {result.gateway} has no usable active tunnel endpoint: this node's pool is cut off "
                      "from the others")
