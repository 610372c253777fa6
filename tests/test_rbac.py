"""RBAC in manifests/02-rbac.yaml is exactly what the code uses: no call is refused, no rule is unused.

A real controller and a real agent (`raven --mode=...` with the args of the shipped Deployment and DaemonSet)
run against the test API server, each with a token of its ServiceAccount. The server's `on_request` hook sees
every resource request as an authorizer does (verb, API group, resource, subresource, namespace, name) and
enforces the manifest's rules with the small RBAC evaluator below: a request no rule allows gets the real
server's 403, and fails the test. The scenario drives every API call the code makes (informers, the
controller's PathReport informer included, Lease acquire/renew/release, status writes including a 409 re-read,
Events created and repeated, LoadBalancer Services/Endpoints created, moved, clashing with a foreign object and
deleted); afterwards every rule
(verb x group x resource, in its namespace) must have been needed by at least one request.

The agent needs a network namespace (it programs its kernel as a member node), so this runs as root; both
processes reach the in-process server through a TCP forwarder from their namespace's loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.apiserver import ApiRequest, ApiServer
from e2e.apiserver.errors import ApiError as ServerApiError
from e2e.cluster import RAVEN_ARGV
from e2e.netlab import Lab, Netns, Process
from raven.kube.client import (
    ENDPOINTS,
    EVENTS,
    GATEWAYS,
    LEASES,
    NODES,
    PATHREPORTS,
    SERVICES,
    KubeClient,
    Resource,
    new_api_client,
)
from tests.controller.conftest import eventually, gateway_body, install_crd, node_body, set_ready
from tests.controller.test_gateway_election import wait_active

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
NAMESPACES = Resource("", "v1", "namespaces")
NS = "raven-system"
CONTROLLER_IP, AGENT_IP = "10.97.0.1", "10.97.0.2"


# --- the RBAC evaluator ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grant:
    """One rule of a (Cluster)Role as bound to a user: cluster-wide (namespace None) or in one namespace."""

    source: str  # "ClusterRole raven-agent rule 1", for messages
    namespace: str | None
    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]  # "plural" or "plural/subresource"
    names: frozenset[str]  # resourceNames; empty: any

    def allows(self, r: ApiRequest) -> bool:
        resource = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
        return ((self.namespace is None or self.namespace == r.namespace)
                and ({"*", r.verb} & self.verbs != set()) and ({"*", r.group} & self.groups != set())
                and ({"*", resource} & self.resources != set()) and (not self.names or r.name in self.names))

    def cells(self) -> Iterator[tuple[str, str, str]]:
        """Each (verb, group, resource) this rule grants: each must be needed by some request."""
        for verb in sorted(self.verbs):
            for group in sorted(self.groups):
                for resource in sorted(self.resources):
                    yield verb, group, resource


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def grants(user: str) -> list[Grant]:
    """Every rule bound to `user` by the manifest's (Cluster)RoleBindings (user subjects and ServiceAccounts)."""
    docs = _docs("02-rbac.yaml")
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    out: list[Grant] = []
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subjects = {service_account_user(s["namespace"], s["name"]) if s["kind"] == "ServiceAccount" else s["name"]
                    for s in b.get("subjects") or [] if s["kind"] in ("ServiceAccount", "User")}
        if user not in subjects:
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])]
        for i, rule in enumerate(role.get("rules") or []):
            out.append(Grant(f"{ref['kind']} {ref['name']} rule {i} (via {b['kind']} {b['metadata']['name']})", ns,
                             frozenset(rule["verbs"]), frozenset(rule["apiGroups"]), frozenset(rule["resources"]),
                             frozenset(rule.get("resourceNames") or ())))
    return out


# Checked by the real server inside another request (approving or signing a CSR of that signer), never requested
# on their own: the scenario proves them used by the approval and status patches it waits for.
IMPLIED = frozenset({("approve", "certificates.k8s.io", "signers"), ("sign", "certificates.k8s.io", "signers")})


def unused(gs: list[Grant], seen: list[ApiRequest]) -> list[str]:
    out = []
    for g in gs:
        for verb, group, resource in g.cells():
            if (verb, group, resource) in IMPLIED:
                continue
            one = Grant(g.source, g.namespace, frozenset([verb]), frozenset([group]), frozenset([resource]), g.names)
            if not any(one.allows(r) for r in seen):
                out.append(f"{g.source}: {verb} {group or 'core'}/{resource}"
                           + (f" in {g.namespace}" if g.namespace else ""))
    return out


def _r(verb: str, resource: str, namespace: str = "", name: str = "", group: str = "", sub: str = "") -> ApiRequest:
    return ApiRequest("u", verb, group, resource, sub, namespace, name)


def test_the_evaluator_matches_like_rbac() -> None:
    cluster = Grant("c", None, frozenset({"list", "watch"}), frozenset({""}), frozenset({"nodes"}), frozenset())
    role = Grant("r", "ns1", frozenset({"create"}), frozenset({""}), frozenset({"events"}), frozenset())
    status = Grant("s", None, frozenset({"patch"}), frozenset({"g"}), frozenset({"gw/status"}), frozenset())
    named = Grant("n", None, frozenset({"list"}), frozenset({""}), frozenset({"nodes"}), frozenset({"n1"}))
    assert cluster.allows(_r("watch", "nodes", name="n1")) and not cluster.allows(_r("get", "nodes", name="n1"))
    assert role.allows(_r("create", "events", "ns1")) and not role.allows(_r("create", "events", "ns2"))
    assert not role.allows(_r("create", "events"))  # a Role never grants across namespaces
    assert status.allows(_r("patch", "gw", group="g", sub="status"))
    assert not status.allows(_r("patch", "gw", group="g")) and not status.allows(_r("patch", "gw", sub="status"))
    assert named.allows(_r("list", "nodes", name="n1")) and not named.allows(_r("list", "nodes"))
    assert unused([cluster], [_r("list", "nodes")]) == ["c: watch core/nodes"]


def test_every_service_account_of_the_workloads_is_bound() -> None:
    (deploy,) = _docs("04-controller.yaml")
    (ds,) = _docs("05-agent.yaml")
    for workload in (deploy, ds):
        sa = workload["spec"]["template"]["spec"]["serviceAccountName"]
        assert grants(service_account_user(workload["metadata"]["namespace"], sa)), sa


# --- the scenario ---------------------------------------------------------------------------------------

DOWNWARD = {"status.podIP": CONTROLLER_IP, "status.hostIP": AGENT_IP, "metadata.name": "raven-controller-0"}


def _workload(name: str, container: str) -> tuple[str, dict[str, Any]]:
    """(the user of its ServiceAccount, its container) of a shipped workload."""
    (doc,) = _docs(name)
    spec = doc["spec"]["template"]["spec"]
    user = service_account_user(doc["metadata"]["namespace"], spec["serviceAccountName"])
    return user, next(c for c in spec["containers"] if c["name"] == container)


def _args(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The container's args as the kubelet passes them: `$(VAR)` replaced from its downward-API env."""
    values = dict(env)
    for e in container.get("env") or []:
        path = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if path in DOWNWARD:
            values[e["name"]] = DOWNWARD[path]
    return [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in container["args"]]


def _node_netns(lab: Lab, server: ApiServer) -> tuple[Netns, Netns]:
    """The controller's pod and the agent's node: a LAN of two, each reaching the API server on its loopback."""
    ctl, agt = lab.netns_many(["ctl", "agt"])
    lab.veth(ctl, "eth0", agt, "eth0")
    for ns, ip in ((ctl, CONTROLLER_IP), (agt, AGENT_IP)):
        ns.add_addr("eth0", f"{ip}/24")
        lab.forward_tcp(f"api-{ns.short}", ("127.0.0.1", server.port), ("127.0.0.1", server.port), listen_ns=ns)
    return ctl, agt


class Recorder:
    """The server's `on_request` hook: records every request, refuses (403) what the manifest does not allow,
    and makes the first status write to gateway `conflict_on` a real 409 (someone else wrote it first)."""

    def __init__(self, server: ApiServer, users: dict[str, list[Grant]], conflict_on: str) -> None:
        self.server, self.users, self.conflict_on = server, users, conflict_on
        self.seen: dict[str, list[ApiRequest]] = {u: [] for u in users}
        self.denied: list[ApiRequest] = []

    def __call__(self, r: ApiRequest) -> None:
        if r.user not in self.users:
            return  # the test's own (admin) client
        self.seen[r.user].append(r)
        if not any(g.allows(r) for g in self.users[r.user]):
            self.denied.append(r)
            what = f"{r.resource}/{r.subresource}" if r.subresource else r.resource
            group = f' in API group "{r.group}"' if r.group else ' in API group ""'
            scope = f' in the namespace "{r.namespace}"' if r.namespace else " at the cluster scope"
            raise ServerApiError(403, f'{what} "{r.name}" is forbidden: User "{r.user}" cannot {r.verb} resource '
                                 f'"{what}"{group}{scope}', "Forbidden",
                                 {"name": r.name, "kind": r.resource})
        if (r.verb, r.resource, r.subresource, r.name) == ("patch", "gateways", "status", self.conflict_on):
            self.conflict_on = ""
            rt = self.server.state.lookup("raven.openyurt.io", "v1beta1", "gateways")
            assert rt is not None
            self.server.state.patch(rt, None, r.name, "application/merge-patch+json",
                                      b'{"metadata":{"labels":{"touched":"by-someone-else"}}}', None, False, "Warn")

    def calls(self, user: str, verb: str, resource: str, sub: str = "") -> list[ApiRequest]:
        return [r for r in self.seen[user] if (r.verb, r.resource, r.subresource) == (verb, resource, sub)]


@contextlib.contextmanager
def explained(rec: Recorder, *procs: Process) -> Iterator[None]:
    """A scenario that stalls because a call was refused fails with the refused calls, not with the symptom."""
    try:
        yield
    except AssertionError as exc:
        if rec.denied:
            raise AssertionError(_refused(rec, "".join(p.logs() for p in procs))) from exc
        raise


def _refused(rec: Recorder, logs: str) -> str:
    return ("calls the RBAC manifest refuses:\n" + "\n".join(sorted(set(map(str, rec.denied)))) + "\nlast logs:\n"
            + logs[-3000:])


async def test_rbac_allows_every_call_of_the_code_and_nothing_more(apiserver: ApiServer, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root and a network namespace")
    ctl_user, ctl = _workload("04-controller.yaml", "controller")
    agent_user, agent = _workload("05-agent.yaml", "agent")
    rec = Recorder(apiserver, {ctl_user: grants(ctl_user), agent_user: grants(agent_user)}, conflict_on="gw-c")
    apiserver.on_request = rec
    assert apiserver.kubeconfig
    kube = KubeClient(await new_api_client(apiserver.kubeconfig))
    try:
        await install_crd(kube)
        await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        # Someone else's Service with the name of gw-f's load-balancer slot: create is a 409, then a list by name.
        await kube.create(SERVICES, {"apiVersion": "v1", "kind": "Service",
                                     "metadata": {"name": "raven-lb-gw-f-0", "namespace": NS},
                                     "spec": {"ports": [{"protocol": "TCP", "port": 80}]}}, NS)
        for name, gw in (("c-1", "gw-a"), ("c-2", "gw-a"), ("f-1", "gw-f"), ("k-1", "gw-c")):
            await kube.create(NODES, node_body(name, gw))
        await kube.create(NODES, node_body("m-1", "gw-a", ip=AGENT_IP))  # the agent's node, a member
        await kube.create(GATEWAYS, gateway_body("gw-a", ["c-1", "c-2"], exposeType="LoadBalancer"))
        await kube.create(GATEWAYS, gateway_body("gw-f", ["f-1"], exposeType="LoadBalancer"))
        await kube.create(GATEWAYS, gateway_body("gw-c", ["k-1"]))
        # The agent's node is also a tunnel candidate (of a Gateway with no node of its own: never elected), so it
        # watches the PathReports, as routing by cost needs (raven/agent/app.py).
        await kube.create(GATEWAYS, gateway_body("gw-m", ["m-1"]))

        with Lab("rrbac") as lab:
            kubeconfigs = {}
            # The agent's token is bound to its node, as a DaemonSet pod's is: the IPsec signer then approves and
            # signs its certificate request (the approval and status patches are exercised).
            sa_ns, _, sa_name = agent_user.removeprefix("system:serviceaccount:").partition(":")
            tokens = {"ctl": apiserver.add_user(ctl_user), "agt": apiserver.add_node_token("m-1", f"{sa_ns}:{sa_name}")}
            for short, token in tokens.items():
                kubeconfigs[short] = apiserver.write_kubeconfig(tmp_path / f"kubeconfig-{short}", token)
            ctl_ns, agt_ns = _node_netns(lab, apiserver)
            psk = tmp_path / "psk"
            psk.write_text("k" * 32)
            # --health-failover is opt-in; its rule ships so that turning it on needs no RBAC change: exercise it.
            controller = ctl_ns.popen([*RAVEN_ARGV, *_args(ctl, {}), "--health-failover",
                                       "--kubeconfig", kubeconfigs["ctl"]],
                                      name="controller", env=dict(os.environ, POD_NAME="raven-controller-0"))
            agent_proc = agt_ns.popen([*RAVEN_ARGV, *_args(agent, {}), "--kubeconfig", kubeconfigs["agt"],
                                       "--psk-file", str(psk), "--vici-socket", str(agt_ns.run_dir / "vici"),
                                       "--ipsec-identity-dir", str(tmp_path / "ipsec")],
                                      name="agent", env=dict(os.environ, NODE_NAME="m-1"))

            with explained(rec, controller, agent_proc):
                await wait_active(kube, "gw-a", ["c-1"], within=30)
                await wait_active(kube, "gw-c", ["k-1"])
                await eventually(lambda: kube.get(ENDPOINTS, "raven-lb-gw-a-0", NS), lambda e: bool(e.get("subsets")),
                                 what="gw-a's load-balancer Endpoints")
                await eventually(lambda: rec.calls(ctl_user, "list", "services"),
                                 lambda c: any(r.name == "raven-lb-gw-f-0" for r in c), what="the clash looked up")
                # Failover and back: the Endpoints move (patch); the second election of c-1 repeats an Event (patch).
                await set_ready(kube, "c-1", False)
                await wait_active(kube, "gw-a", ["c-2"])
                await set_ready(kube, "c-1", True)
                await set_ready(kube, "c-2", False)
                await wait_active(kube, "gw-a", ["c-1"])
                await set_ready(kube, "c-2", True)
                await set_ready(kube, "c-1", False)
                await wait_active(kube, "gw-a", ["c-2"])
                await eventually(lambda: rec.calls(ctl_user, "patch", "events"), bool, what="an Event repeated")
                # No longer exposed: the controller deletes its Service and Endpoints.
                await kube.merge_patch(GATEWAYS, "gw-a", {"spec": {"exposeType": None}})
                await eventually(lambda: rec.calls(ctl_user, "delete", "endpoints"), bool, what="Endpoints deleted")
                await eventually(lambda: [r.resource for r in rec.seen[agent_user] if r.verb == "watch"],
                                 lambda w: {"gateways", "nodes", "pathreports"} <= set(w),
                                 what="the agent's informers watching")
                # The agent's certificate request: created, read back, approved and signed by the controller.
                for sub in ("approval", "status"):
                    await eventually(lambda sub=sub: rec.calls(ctl_user, "patch", "certificatesigningrequests", sub),
                                     bool, what=f"the agent's certificate request patched ({sub})")
                # The agent's PathReport: read (missing), created, then its status written.
                await eventually(lambda: rec.calls(agent_user, "patch", "pathreports", "status"), bool,
                                 what="the agent's PathReport status written")
                # A clean stop releases the Lease (get + update).
                await asyncio.to_thread(controller.stop, 10.0)
                await asyncio.to_thread(agent_proc.stop, 10.0)
                lease = await kube.get(LEASES, "raven-controller", NS)
                assert not lease["spec"].get("holderIdentity"), "the controller did not release its Lease"
            logs = controller.logs() + agent_proc.logs()
    finally:
        apiserver.on_request = None
        await kube.close()

    assert not rec.denied, _refused(rec, logs)
    assert rec.calls(ctl_user, "get", "gateways"), "the 409 re-read never happened: the scenario is broken"
    assert any(r.name == "m-1" for r in rec.calls(agent_user, "watch", "nodes"))
    problems = unused(grants(ctl_user), rec.seen[ctl_user]) + unused(grants(agent_user), rec.seen[agent_user])
    assert not problems, "rules no call needed:\n" + "\n".join(problems)
    # The events really went where the Role is (and nowhere else).
    assert {r.namespace for r in rec.seen[ctl_user] if r.resource == EVENTS.plural} == {"default"}


# --- the WireGuard install (deploy/wireguard) -------------------------------------------------------------

OVERLAY = ROOT / "deploy" / "wireguard"
AGENT_WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def overlay_grants(user: str) -> list[Grant]:
    """The base install's rules plus any (Cluster)Role the overlay's Kustomization adds for `user`."""
    kustomization = yaml.safe_load((OVERLAY / "Kustomization").read_text())
    extra = [r for r in kustomization.get("resources") or [] if not r.startswith("../")]
    for name in extra:  # an overlay that adds RBAC: it must be evaluated too (none ships today)
        kinds = {d["kind"] for d in yaml.safe_load_all((OVERLAY / name).read_text()) if d}
        assert not kinds & {"ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding"}, (
            f"{name} adds RBAC: teach overlay_grants to read it")
    return grants(user)


def _wireguard_agent() -> dict[str, Any]:
    """The agent container as the overlay patches it (its args replace the base's)."""
    (patch,) = [d for d in yaml.safe_load_all((OVERLAY / "agent-wireguard.yaml").read_text()) if d]
    return next(c for c in patch["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")


async def test_the_wireguard_agent_needs_no_gateway_write(apiserver: ApiServer, tmp_path: Path) -> None:
    """A real agent with the overlay's args (--vpn-driver=wireguard, its own wireguard-go) and a real controller,
    under the RBAC the overlay ships: no call refused, the agent's key reaches its Gateway's status, and the agent
    never writes a Gateway (it publishes in its own PathReport, which the controller copies)."""
    if os.geteuid() != 0:
        pytest.skip("the agent needs root and a network namespace")
    ctl_user, ctl = _workload("04-controller.yaml", "controller")
    agent_user, _ = _workload("05-agent.yaml", "agent")
    agent = _wireguard_agent()
    rec = Recorder(apiserver, {ctl_user: overlay_grants(ctl_user), agent_user: overlay_grants(agent_user)},
                   conflict_on="")
    apiserver.on_request = rec
    assert apiserver.kubeconfig
    kube = KubeClient(await new_api_client(apiserver.kubeconfig))
    try:
        await install_crd(kube)
        await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        await kube.create(NODES, node_body("w-1", "gw-w", ip=AGENT_IP))  # the agent's node, the tunnel endpoint
        await kube.create(NODES, node_body("p-1", "gw-p"))
        await kube.create(GATEWAYS, gateway_body("gw-w", ["w-1"]))
        await kube.create(GATEWAYS, gateway_body("gw-p", ["p-1"]))
        with Lab("rrbwg") as lab:
            sa_ns, _, sa_name = agent_user.removeprefix("system:serviceaccount:").partition(":")
            tokens = {"ctl": apiserver.add_user(ctl_user), "agt": apiserver.add_node_token("w-1", f"{sa_ns}:{sa_name}")}
            kubeconfigs = {s: apiserver.write_kubeconfig(tmp_path / f"kubeconfig-{s}", t) for s, t in tokens.items()}
            ctl_ns, agt_ns = _node_netns(lab, apiserver)
            psk = tmp_path / "psk"
            psk.write_text("k" * 32)
            wgrun = tmp_path / "wgrun"
            wgrun.mkdir()
            controller = ctl_ns.popen([*RAVEN_ARGV, *_args(ctl, {}), "--kubeconfig", kubeconfigs["ctl"]],
                                      name="controller", env=dict(os.environ, POD_NAME="raven-controller-0"))
            # The node's /run/wireguard is a directory of the test (a bind mount in the agent's mount namespace).
            mount = 'mkdir -p /run/wireguard && mount --bind "$0" /run/wireguard && exec "$@"'
            agent_proc = agt_ns.popen(["sh", "-c", mount, str(wgrun), *RAVEN_ARGV, *_args(agent, {"HOST_IP": AGENT_IP}),
                                       "--kubeconfig", kubeconfigs["agt"], "--psk-file", str(psk),
                                       "--wireguard-key-file", str(tmp_path / "wg" / "private.key")],
                                      name="agent", env=dict(os.environ, NODE_NAME="w-1"))
            with explained(rec, controller, agent_proc):
                await wait_active(kube, "gw-w", ["w-1"], within=30)

                async def status_key() -> str:
                    gw = await kube.get(GATEWAYS, "gw-w")
                    (ep,) = gw["status"]["activeEndpoints"]
                    return str((ep.get("config") or {}).get("publicKey", ""))

                key = await eventually(status_key, bool, within=30, what="w-1's key in gw-w's status")
                report = await kube.get(PATHREPORTS, "w-1")
                assert report["status"]["wireguardPublicKey"] == key
                await asyncio.to_thread(agent_proc.stop, 10.0)
                await asyncio.to_thread(controller.stop, 10.0)
            logs = controller.logs() + agent_proc.logs()
    finally:
        apiserver.on_request = None
        await kube.close()
    assert not rec.denied, _refused(rec, logs)
    assert rec.calls(agent_user, "patch", "pathreports", "status"), "the key was not written by the agent"
    agent_writes = {(r.verb, r.resource, r.subresource) for r in rec.seen[agent_user] if r.verb in AGENT_WRITES}
    assert agent_writes <= {("create", "pathreports", ""), ("patch", "pathreports", "status")}, agent_writes
