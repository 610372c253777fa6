"""Why a node is out of the network (raven.agent.membership), and the agent's `membership` readiness check."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from raven.agent.membership import Membership, membership
from raven.agent.plan import PlanConfig, PlanResult, plan
from raven.api.constants import LABEL_GATEWAY
from raven.api.node import Node
from tests.unit.plan_cluster import JSON, cluster_json, nodes, parse

NAMES = list(cluster_json())


def node(name: str, label: str | None) -> Node:
    base = next(n for n in nodes() if n.name == name)
    return replace(base, labels={LABEL_GATEWAY: label} if label else {})


def planned(name: str, objs: dict[str, JSON] | None = None) -> PlanResult:
    return plan(parse(objs or cluster_json()), nodes(), name, PlanConfig())


def test_a_node_in_the_network_has_no_problem() -> None:
    assert membership("edge-a-2", node("edge-a-2", "gw-edge-a"), NAMES, planned("edge-a-2")) == Membership()


@pytest.mark.parametrize(("label", "expected"), [
    (None, "has no raven.openyurt.io/gateway label"),
    ("gw-typo", "labelled raven.openyurt.io/gateway=gw-typo but no Gateway gw-typo exists"),
    ("gw-edge-a", "gateway gw-edge-a does not list node lost-1 in its status: the controller left it out"),
])
def test_a_misconfigured_node_is_unready_and_says_why(label: str | None, expected: str) -> None:
    n = replace(node("edge-a-2", label), name="lost-1")
    m = membership("lost-1", n, NAMES, planned("lost-1"))
    assert not m.ready and m.problem is not None and expected in m.problem


def test_a_missing_node_object_is_unready() -> None:
    m = membership("gone", None, NAMES, planned("gone"))
    assert not m.ready and "no Node object named gone" in (m.problem or "")


def test_a_pool_without_active_endpoint_is_warned_about_but_ready() -> None:
    objs = cluster_json()
    objs["gw-edge-a"]["status"]["activeEndpoints"] = []
    m = membership("edge-a-2", node("edge-a-2", "gw-edge-a"), NAMES, planned("edge-a-2", objs))
    assert m.ready and "gateway gw-edge-a has no usable active tunnel endpoint" in (m.problem or "")


class _Inputs:
    """The two things MembershipReport reads from PlanInputs, over fixed data."""

    def __init__(self, name: str, n: Node | None) -> None:
        self.node_name = name
        self._node = n

    def node(self) -> Node | None:
        return self._node

    def gateway_names(self) -> list[str]:
        return NAMES


def test_the_report_warns_once_and_fails_the_readiness_check(caplog: pytest.LogCaptureFixture) -> None:
    from raven.agent.app import MembershipReport

    inputs = _Inputs("edge-a-2", node("edge-a-2", "gw-typo"))
    report = MembershipReport(inputs)  # type: ignore[arg-type]  # (duck-typed: node_name, node, gateway_names)
    assert report.check().ok
    out = planned("nobody")
    with caplog.at_level(logging.INFO, logger="raven.agent.app"):
        report.update(out)
        report.update(out)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].getMessage() == "node is out of the network"
        check = report.check()
        assert not check.ok and "no Gateway gw-typo exists" in check.reason
        inputs._node = node("edge-a-2", "gw-edge-a")
        report.update(planned("edge-a-2"))
    assert report.check().ok
    assert [r.getMessage() for r in caplog.records][-1] == "node is in the network"
