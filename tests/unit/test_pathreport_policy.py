"""manifests/06-pathreport-policy.yaml, evaluated as the API server evaluates it (its CEL, by cel-python): an agent
may write only its own node's PathReport, so it can publish its own WireGuard key (status.wireguardPublicKey) and
cannot change another node's. The repository's test API server does not run admission policies; this runs the
shipped expressions themselves, on the requests an agent would send."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from raven.api.pathreport import key_patch, new_report_body

POLICY = Path(__file__).resolve().parents[2] / "manifests" / "06-pathreport-policy.yaml"
AGENT = "system:serviceaccount:raven-system:raven-agent"
NODE_EXTRA = "authentication.kubernetes.io/node-name"


def _policy() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(POLICY.read_text()) if d]
    (policy,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    spec: dict[str, Any] = policy["spec"]
    return spec


def _true(expr: str, activation: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expr))
    return bool(program.evaluate({k: celpy.json_to_cel(v) for k, v in activation.items()}))


def admitted(user: str, node: str | None, operation: str, resource: str, obj: dict[str, Any]) -> bool:
    """Whether the policy admits this write (False: the API server answers 403 with the policy's message)."""
    spec = _policy()
    rules = spec["matchConstraints"]["resourceRules"]
    if not any(operation in r["operations"] and resource in r["resources"] for r in rules):
        return True  # not a request the policy matches
    request = {"userInfo": {"username": user, "extra": {NODE_EXTRA: [node]} if node else {}}}
    activation = {"request": request, "object": obj}
    if not all(_true(m["expression"], activation) for m in spec.get("matchConditions") or []):
        return True
    return all(_true(v["expression"], activation) for v in spec["validations"])


def _report(name: str, spec_node: str, key: str) -> dict[str, Any]:
    """The object a status patch of `name` with `key` results in (what admission sees as `object`)."""
    body: dict[str, Any] = dict(new_report_body(name))  # type: ignore[arg-type]
    body["spec"] = {"nodeName": spec_node}
    body.update(key_patch(key))  # type: ignore[arg-type]
    return body


def test_an_agent_publishes_its_own_key() -> None:
    assert admitted(AGENT, "m-1", "CREATE", "pathreports", dict(new_report_body("m-1")))  # type: ignore[arg-type]
    assert admitted(AGENT, "m-1", "UPDATE", "pathreports/status", _report("m-1", "m-1", "KEY1"))


@pytest.mark.parametrize("operation,resource", [("UPDATE", "pathreports/status"), ("CREATE", "pathreports"),
                                                ("UPDATE", "pathreports")])
def test_an_agent_cannot_change_another_nodes_key(operation: str, resource: str) -> None:
    # m-1's agent writing m-2's report (a PATCH is an UPDATE to admission): refused, whatever the spec says.
    assert not admitted(AGENT, "m-1", operation, resource, _report("m-2", "m-2", "EVIL"))
    assert not admitted(AGENT, "m-1", operation, resource, _report("m-2", "m-1", "EVIL"))
    # A token bound to no node (not a DaemonSet pod's) writes no report at all.
    assert not admitted(AGENT, None, operation, resource, _report("m-1", "m-1", "EVIL"))


def test_a_report_naming_another_node_in_its_spec_is_refused() -> None:
    # Its own object, but claiming another node: refused (and readers ignore such a report anyway).
    assert not admitted(AGENT, "m-1", "UPDATE", "pathreports/status", _report("m-1", "m-2", "KEY1"))


def test_other_users_are_not_narrowed() -> None:
    # An administrator (or the controller, which only reads reports) is outside the policy's match.
    assert admitted("admin", None, "UPDATE", "pathreports/status", _report("m-2", "m-2", "KEY2"))
