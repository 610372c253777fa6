"""Resource types the server serves: the built-in kinds Raven uses and types defined by CRDs.

A `ResourceType` is one group/version/resource as discovery advertises it; several versions of a CRD
share one store. Built-in kinds carry their kubectl table columns (what `kubectl get` prints).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

Cells = Callable[[dict[str, Any]], list[Any]]


@dataclass
class ResourceType:
    """Everything the server needs to serve one kind at one version: names (for discovery and URLs),
    scope, status subresource, the schema and printer columns of a CRD, field selectors, table cells."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    has_status: bool = False
    custom: bool = False
    # For custom resources: the version's openAPIV3Schema and additionalPrinterColumns.
    schema: dict[str, Any] | None = None
    printer_columns: list[dict[str, Any]] | None = None
    storage_version: str = ""
    field_selectors: tuple[str, ...] = ("metadata.name", "metadata.namespace")
    columns: list[dict[str, Any]] | None = None  # built-in table columns after Name
    cells: Cells | None = None
    # A kind served from another group's storage (events.k8s.io/v1 Events live in core v1 Events):
    # the storage group and the conversions between the stored shape and this version's shape.
    storage_group: str | None = None
    to_api: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    from_api: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # Subresources besides status (CSR's "approval"), served with get/patch/update.
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> tuple[str, str]:
        return (self.group if self.storage_group is None else self.storage_group, self.plural)

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    def discovery(self) -> list[dict[str, Any]]:
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        out = [main]
        if self.has_status:
            out.append({"name": f"{self.plural}/status", "singularName": "", "namespaced": self.namespaced,
                        "kind": self.kind, "verbs": ["get", "patch", "update"]})
        for sub in self.subresources:
            out.append({"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced,
                        "kind": self.kind, "verbs": ["get", "patch", "update"]})
        return out


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_age(text: str | None) -> str:
    """duration.HumanDuration of the time since `text`, as kubectl prints AGE."""
    t = parse_time(text)
    if t is None:
        return "<unknown>"
    secs = int((datetime.now(UTC) - t).total_seconds())
    if secs < -1:
        return "<invalid>"
    secs = max(secs, 0)
    if secs < 120:
        return f"{secs}s"
    mins = secs // 60
    if mins < 10:
        s = secs % 60
        return f"{mins}m{s}s" if s else f"{mins}m"
    if mins < 180:
        return f"{mins}m"
    hours = secs // 3600
    if hours < 8:
        m = mins % 60
        return f"{hours}h{m}m" if m else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        h = hours % 24
        return f"{days}d{h}h" if h else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def _col(name: str, typ: str = "string", desc: str = "", priority: int = 0, fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": typ, "format": fmt, "description": desc, "priority": priority}


AGE_COL = _col("Age", "string", "CreationTimestamp is a timestamp representing the server time when this "
               "object was created.")


def _age(o: dict[str, Any]) -> str:
    return human_age(o.get("metadata", {}).get("creationTimestamp"))


def _node_cells(o: dict[str, Any]) -> list[Any]:
    conds = o.get("status", {}).get("conditions") or []
    ready = next((c for c in conds if c.get("type") == "Ready"), None)
    status = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    if o.get("spec", {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = o.get("metadata", {}).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    version = o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", "")
    addrs = o.get("status", {}).get("addresses") or []
    internal = next((a.get("address") for a in addrs if a.get("type") == "InternalIP"), "<none>")
    return [status, ",".join(roles) or "<none>", _age(o), version, internal]


def _ns_cells(o: dict[str, Any]) -> list[Any]:
    return [o.get("status", {}).get("phase", ""), _age(o)]


def _cm_cells(o: dict[str, Any]) -> list[Any]:
    return [len(o.get("data") or {}) + len(o.get("binaryData") or {}), _age(o)]


def _secret_cells(o: dict[str, Any]) -> list[Any]:
    return [o.get("type", ""), len(o.get("data") or {}), _age(o)]


def _svc_cells(o: dict[str, Any]) -> list[Any]:
    spec = o.get("spec", {})
    ingress = o.get("status", {}).get("loadBalancer", {}).get("ingress") or []
    ext = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress)
    if not ext:
        ext = "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"
    ports = []
    for p in spec.get("ports") or []:
        s = str(p.get("port"))
        if p.get("nodePort"):
            s += f":{p['nodePort']}"
        ports.append(f"{s}/{p.get('protocol', 'TCP')}")
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>") or "<none>", ext,
            ",".join(ports) or "<none>", _age(o)]


def _ep_cells(o: dict[str, Any]) -> list[Any]:
    eps = []
    for sub in o.get("subsets") or []:
        for a in sub.get("addresses") or []:
            for p in sub.get("ports") or [{}]:
                eps.append(f"{a.get('ip')}:{p.get('port')}" if p else a.get("ip"))
    return [",".join(eps) or "<none>", _age(o)]


def _pod_cells(o: dict[str, Any]) -> list[Any]:
    containers = o.get("spec", {}).get("containers") or []
    statuses = o.get("status", {}).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [f"{ready}/{len(containers)}", o.get("status", {}).get("phase", ""), restarts, _age(o)]


def _lease_cells(o: dict[str, Any]) -> list[Any]:
    return [o.get("spec", {}).get("holderIdentity", ""), _age(o)]


def _event_cells(o: dict[str, Any]) -> list[Any]:
    io = o.get("involvedObject") or o.get("regarding") or {}
    last = o.get("lastTimestamp") or o.get("eventTime") or o.get("metadata", {}).get("creationTimestamp")
    return [human_age(last), o.get("type", ""), o.get("reason", ""),
            f"{(io.get('kind') or '').lower()}/{io.get('name', '')}", o.get("message") or o.get("note", "")]


def _deploy_cells(o: dict[str, Any]) -> list[Any]:
    st = o.get("status", {})
    want = o.get("spec", {}).get("replicas", 1)
    return [f"{st.get('readyReplicas', 0)}/{want}", st.get("updatedReplicas", 0), st.get("availableReplicas", 0),
            _age(o)]


def _ds_cells(o: dict[str, Any]) -> list[Any]:
    st = o.get("status", {})
    sel = o.get("spec", {}).get("template", {}).get("spec", {}).get("nodeSelector") or {}
    return [st.get("desiredNumberScheduled", 0), st.get("currentNumberScheduled", 0), st.get("numberReady", 0),
            st.get("updatedNumberScheduled", 0), st.get("numberAvailable", 0),
            ",".join(f"{k}={v}" for k, v in sel.items()) or "<none>", _age(o)]


def _sa_cells(o: dict[str, Any]) -> list[Any]:
    return [len(o.get("secrets") or []), _age(o)]


def _binding_cells(o: dict[str, Any]) -> list[Any]:
    ref = o.get("roleRef", {})
    return [f"{ref.get('kind', '')}/{ref.get('name', '')}", _age(o)]


def _csr_cells(o: dict[str, Any]) -> list[Any]:
    spec, st = o.get("spec", {}), o.get("status", {})
    conds = [c.get("type", "") for c in st.get("conditions") or [] if c.get("status", "True") == "True"]
    if st.get("certificate"):
        conds.append("Issued")
    return [_age(o), spec.get("signerName", ""), spec.get("username", ""), ",".join(conds) or "Pending"]


def _vap_cells(o: dict[str, Any]) -> list[Any]:
    spec = o.get("spec", {})
    kind = (spec.get("paramKind") or {}).get("kind", "")
    return [len(spec.get("validations") or []), kind or "<unset>", _age(o)]


def _vapb_cells(o: dict[str, Any]) -> list[Any]:
    spec = o.get("spec", {})
    ref = spec.get("paramRef") or {}
    return [spec.get("policyName", ""), ref.get("name", "") or "<unset>", _age(o)]


def _crd_cells(o: dict[str, Any]) -> list[Any]:
    return [o.get("metadata", {}).get("creationTimestamp", "")]


POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
              "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
              "status.nominatedNodeName")
EVENT_FIELDS = ("metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.namespace",
                "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion",
                "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "reportingComponent",
                "source", "type")


# core v1 Event field <-> events.k8s.io/v1 Event field (the real server stores both as one object).
_EVENT_FIELDS = [("involvedObject", "regarding"), ("related", "related"), ("message", "note"),
                 ("reason", "reason"), ("type", "type"), ("action", "action"), ("eventTime", "eventTime"),
                 ("series", "series"), ("reportingComponent", "reportingController"),
                 ("reportingInstance", "reportingInstance"), ("source", "deprecatedSource"),
                 ("firstTimestamp", "deprecatedFirstTimestamp"), ("lastTimestamp", "deprecatedLastTimestamp"),
                 ("count", "deprecatedCount")]


def _event_to_events_v1(o: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Event", "apiVersion": "events.k8s.io/v1", "metadata": o.get("metadata", {})}
    for core, new in _EVENT_FIELDS:
        if o.get(core) not in (None, "", {}, 0):
            out[new] = o[core]
    return out


def _events_v1_to_event(o: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "Event", "apiVersion": "v1", "metadata": o.get("metadata", {})}
    for core, new in _EVENT_FIELDS:
        if o.get(new) not in (None, "", {}):
            out[core] = o[new]
    out.setdefault("involvedObject", {})
    return out


def builtin_types() -> list[ResourceType]:
    return [
        ResourceType("", "v1", "nodes", "node", "Node", False, ["no"], has_status=True,
                     field_selectors=("metadata.name", "spec.unschedulable"),
                     columns=[_col("Status"), _col("Roles"), AGE_COL, _col("Version"),
                              _col("Internal-IP", priority=1)],
                     cells=_node_cells),
        ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, ["ns"], has_status=True,
                     field_selectors=("metadata.name", "status.phase"),
                     columns=[_col("Status"), AGE_COL], cells=_ns_cells),
        ResourceType("", "v1", "services", "service", "Service", True, ["svc"], ["all"], has_status=True,
                     columns=[_col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"), AGE_COL],
                     cells=_svc_cells),
        ResourceType("", "v1", "endpoints", "endpoints", "Endpoints", True, ["ep"],
                     columns=[_col("Endpoints"), AGE_COL], cells=_ep_cells),
        ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, ["cm"],
                     columns=[_col("Data", "integer"), AGE_COL], cells=_cm_cells),
        ResourceType("", "v1", "secrets", "secret", "Secret", True,
                     field_selectors=("metadata.name", "metadata.namespace", "type"),
                     columns=[_col("Type"), _col("Data", "integer"), AGE_COL], cells=_secret_cells),
        ResourceType("", "v1", "events", "event", "Event", True, ["ev"], field_selectors=EVENT_FIELDS,
                     columns=[_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
                     cells=_event_cells),
        ResourceType("", "v1", "pods", "pod", "Pod", True, ["po"], ["all"], has_status=True,
                     field_selectors=POD_FIELDS,
                     columns=[_col("Ready"), _col("Status"), _col("Restarts", "integer"), AGE_COL],
                     cells=_pod_cells),
        ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True,
                     columns=[_col("Holder"), AGE_COL], cells=_lease_cells),
        ResourceType("events.k8s.io", "v1", "events", "event", "Event", True, ["ev"],
                     columns=[_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Note")],
                     cells=_event_cells, storage_group="", to_api=_event_to_events_v1,
                     from_api=_events_v1_to_event),
        ResourceType("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ["sa"],
                     columns=[_col("Secrets", "integer"), AGE_COL], cells=_sa_cells),
        ResourceType("apps", "v1", "deployments", "deployment", "Deployment", True, ["deploy"], ["all"],
                     has_status=True,
                     columns=[_col("Ready"), _col("Up-to-date", "integer"), _col("Available", "integer"), AGE_COL],
                     cells=_deploy_cells),
        ResourceType("apps", "v1", "daemonsets", "daemonset", "DaemonSet", True, ["ds"], ["all"], has_status=True,
                     columns=[_col("Desired", "integer"), _col("Current", "integer"), _col("Ready", "integer"),
                              _col("Up-to-date", "integer"), _col("Available", "integer"), _col("Node Selector"),
                              AGE_COL],
                     cells=_ds_cells),
        ResourceType("rbac.authorization.k8s.io", "v1", "clusterroles", "clusterrole", "ClusterRole", False,
                     columns=[_col("Created At", "date")], cells=_crd_cells),
        ResourceType("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "clusterrolebinding",
                     "ClusterRoleBinding", False, columns=[_col("Role"), AGE_COL], cells=_binding_cells),
        ResourceType("rbac.authorization.k8s.io", "v1", "roles", "role", "Role", True,
                     columns=[_col("Created At", "date")], cells=_crd_cells),
        ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "rolebinding", "RoleBinding", True,
                     columns=[_col("Role"), AGE_COL], cells=_binding_cells),
        ResourceType("certificates.k8s.io", "v1", "certificatesigningrequests", "certificatesigningrequest",
                     "CertificateSigningRequest", False, ["csr"], has_status=True,
                     field_selectors=("metadata.name", "spec.signerName"), subresources=("approval",),
                     columns=[AGE_COL, _col("SignerName"), _col("Requestor"), _col("Condition")],
                     cells=_csr_cells),
        # Stored and served so manifests/06-pathreport-policy.yaml applies; CEL is not evaluated (no admission).
        ResourceType("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
                     "validatingadmissionpolicy", "ValidatingAdmissionPolicy", False, has_status=True,
                     columns=[_col("Validations", "integer"), _col("ParamKind"), AGE_COL], cells=_vap_cells),
        ResourceType("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
                     "validatingadmissionpolicybinding", "ValidatingAdmissionPolicyBinding", False,
                     columns=[_col("PolicyName"), _col("ParamRef"), AGE_COL], cells=_vapb_cells),
        ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition",
                     "CustomResourceDefinition", False, ["crd", "crds"], ["api-extensions"], has_status=True,
                     columns=[_col("Created At", "date")], cells=_crd_cells),
    ]


def crd_types(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of a CRD."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    kind = names.get("kind", "")
    storage = next((v["name"] for v in spec.get("versions", []) if v.get("storage")), "")
    out = []
    for v in spec.get("versions", []):
        if not v.get("served", True):
            continue
        out.append(ResourceType(
            group=spec.get("group", ""),
            version=v["name"],
            plural=names.get("plural", ""),
            singular=names.get("singular") or kind.lower(),
            kind=kind,
            namespaced=spec.get("scope") == "Namespaced",
            short_names=list(names.get("shortNames") or []),
            categories=list(names.get("categories") or []),
            has_status="status" in (v.get("subresources") or {}),
            custom=True,
            schema=(v.get("schema") or {}).get("openAPIV3Schema"),
            printer_columns=v.get("additionalPrinterColumns"),
            storage_version=storage,
            field_selectors=("metadata.name", "metadata.namespace",
                             *[f["jsonPath"].lstrip(".") for f in v.get("selectableFields") or []]),
        ))
    return out
