"""The agent's plan inputs (raven.agent.inputs.PlanInputs): what the plan is built from when inputs go bad.

The typed caches are filled directly (no API server), as the informer's events would fill them.
"""

from __future__ import annotations

import copy
from typing import Any

from prometheus_client import CollectorRegistry

from raven.agent.app import UnderlayFollower, plan_with_underlay
from raven.agent.inputs import PlanInputs
from raven.agent.plan import PlanResult
from raven.api.gateway import Gateway
from raven.api.node import Node
from raven.config import AgentConfig, CommonConfig, ListenAddr
from raven.kube.client import GATEWAYS, NODES, KubeClient
from raven.kube.informer import Informer
from raven.kube.typed import TypedEvent, TypedInformer
from tests.unit.plan_cluster import cluster_json


class _View:
    """PlanInputs as the agent wires it: `plan()` follows the underlay, then plans."""

    def __init__(self, node_name: str) -> None:
        client: Any = object.__new__(KubeClient)  # never used: only the caches are read
        registry = CollectorRegistry()
        self.raw: dict[str, dict[str, Any]] = {}
        self.gateways = TypedInformer(Informer(client, GATEWAYS, "gateways", registry), Gateway.from_dict)
        self.nodes = TypedInformer(Informer(client, NODES, "nodes", registry), Node.from_dict)
        for name, obj in cluster_json().items():
            self.raw[name] = obj
            self.gateways.store(obj)
        common = CommonConfig(kubeconfig=None, health_addr=ListenAddr("", 0), metrics_addr=ListenAddr("", 0))
        cfg = AgentConfig(common=common, node_name=node_name, psk="0123456789abcdef0123")
        self.inputs = PlanInputs(node_name, self.gateways, self.nodes)
        self._plan = plan_with_underlay(cfg, self.inputs, UnderlayFollower(tunnel_and_paths=False))

    async def plan(self) -> PlanResult:
        return await self._plan()


def _view(node_name: str) -> tuple[_View, dict[str, dict[str, Any]]]:
    view = _View(node_name)
    return view, view.raw


def _edit(view: _View, gateways: dict[str, dict[str, Any]], name: str, obj: dict[str, Any]) -> None:
    old = view.gateways.get(name)
    gateways[name] = obj
    entry = view.gateways.store(obj)
    view.inputs.on_gateway(TypedEvent("MODIFIED", name, entry.value, old, entry.error))


async def test_an_unparsable_edit_of_a_gateway_keeps_its_last_good_version_planned() -> None:
    # A wrong JSON type in an edit (Replicas as a string) must not tear down a working pool's tunnels.
    view, gateways = _view("edge-a-1")
    before = await view.plan()
    assert before.role == "gateway" and before.state.ipsec

    bad = copy.deepcopy(gateways["gw-edge-a"])
    bad["metadata"]["resourceVersion"] = "1001"
    bad["spec"]["tunnelConfig"]["Replicas"] = "1"
    _edit(view, gateways, "gw-edge-a", bad)
    during = await view.plan()
    assert during.state == before.state
    assert any("gw-edge-a" in p and "malformed" in p for p in during.problems)


async def test_an_unparsable_peer_gateway_keeps_its_routes_on_other_pools() -> None:
    view, gateways = _view("edge-a-2")
    before = await view.plan()
    assert before.role == "member"
    bad = copy.deepcopy(gateways["gw-dc"])
    bad["metadata"]["resourceVersion"] = "1001"
    bad["status"]["nodes"] = "dc-1"
    _edit(view, gateways, "gw-dc", bad)
    assert (await view.plan()).state == before.state


async def test_a_repaired_gateway_is_planned_from_its_new_version() -> None:
    view, gateways = _view("edge-a-2")
    bad = copy.deepcopy(gateways["gw-dc"])
    bad["metadata"]["resourceVersion"] = "1001"
    bad["status"]["nodes"] = "dc-1"
    _edit(view, gateways, "gw-dc", bad)
    await view.plan()
    fixed = copy.deepcopy(gateways["gw-dc"])
    fixed["metadata"]["resourceVersion"] = "1002"
    fixed["status"] = {"nodes": [], "activeEndpoints": []}  # the pool lost its nodes: no route to it any more
    _edit(view, gateways, "gw-dc", fixed)
    after = await view.plan()
    assert not any("10.247." in r.dst for r in after.state.routes)
    assert not any("malformed" in p for p in after.problems)


async def test_a_failed_underlay_lookup_is_retried_on_the_next_plan(monkeypatch: Any) -> None:
    # A transient netlink failure must not leave raven0 planned with the default MTU for good.
    import raven.agent.app as app
    from raven.dataplane.underlay import Underlay

    calls: list[str] = []

    async def flaky(node_ip: str) -> Underlay | None:
        calls.append(node_ip)
        if len(calls) == 1:
            raise OSError(105, "No buffer space available")
        return Underlay("eth9", 1400)

    monkeypatch.setattr(app, "detect_underlay", flaky)
    view, _gateways = _view("edge-a-2")
    view.nodes.store({
        "metadata": {"name": "edge-a-2", "labels": {"raven.openyurt.io/gateway": "gw-edge-a"}},
        "spec": {"podCIDRs": ["10.245.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.12"}]},
    })
    try:
        await view.plan()
    except OSError:
        pass  # the reconciler reports a failed plan and retries it
    result = await view.plan()
    raven0 = next(link for link in result.state.links if link.name == "raven0")
    assert (raven0.mtu, raven0.underlay_ifname) == (1350, "eth9")


async def test_the_plan_is_reused_until_an_input_or_its_parameters_change() -> None:
    from dataclasses import replace

    from raven.agent.plan import PlanConfig

    view, gateways = _view("edge-a-2")
    cfg = PlanConfig()
    first = view.inputs.plan(cfg)
    assert view.inputs.plan(cfg) is first  # nothing changed: the cached plan
    heartbeat = {"metadata": {"name": "edge-a-2", "resourceVersion": "7"}, "spec": {"podCIDRs": ["10.245.1.0/24"]}}
    old = view.nodes.store(heartbeat).value
    new = view.nodes.store({**heartbeat, "metadata": {"name": "edge-a-2", "resourceVersion": "8"}}).value
    assert not view.inputs.on_node(TypedEvent("MODIFIED", "edge-a-2", new, old))  # same facts: no re-plan
    assert not view.inputs.on_node(TypedEvent("MODIFIED", "other-node", new, old))
    assert view.inputs.plan(cfg) is first
    assert view.inputs.plan(replace(cfg, underlay_mtu=1400)) is not first  # e.g. the underlay MTU was found
    bad = copy.deepcopy(gateways["gw-dc"])
    bad["metadata"]["resourceVersion"] = "1001"
    _edit(view, gateways, "gw-dc", bad)
    assert view.inputs.plan(cfg) is not first
