"""The in-memory cluster state: object semantics shared by every resource.

Owns the cluster-wide resourceVersion clock, resource registration (built-ins and CRD-defined types),
create/update/patch/delete with the real server's rules (uid, timestamps, generation, finalizers and
deletionTimestamp, status subresource separation, optimistic concurrency, no-op writes that change
nothing), ownerReference garbage collection, namespace termination, list pagination and watch starts.
All methods are synchronous: one event loop serialises every write, so each is atomic.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import logging
import random
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from . import csr as csr_api
from . import schema as structural
from . import shapes
from .errors import (
    ApiError,
    FieldError,
    already_exists,
    bad_request,
    conflict,
    invalid,
    not_found,
)
from .patch import json_patch, merge_patch, strategic_merge_patch
from .resources import ResourceType, builtin_types, crd_types
from .selectors import Matcher, ObjMatcher
from .store import Entry, Event, Key, Store, Transform, Watcher, clone, encode

log = logging.getLogger("e2e.apiserver")

CRD_GROUP = "apiextensions.k8s.io"
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# Kinds whose DELETE answers with the deleted object rather than a Success Status.
_RETURNS_OBJECT = {("", "pods"), ("", "services"), ("", "namespaces"), (CRD_GROUP, "customresourcedefinitions"),
                   ("apps", "deployments"), ("apps", "daemonsets")}
_GENERATION_KINDS = {(CRD_GROUP, "customresourcedefinitions"), ("apps", "deployments"), ("apps", "daemonsets")}

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_GEN_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_str() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_volatile(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


def _spec_part(obj: dict[str, Any], has_status: bool) -> dict[str, Any]:
    skip = ("metadata", "status") if has_status else ("metadata",)
    return {k: v for k, v in obj.items() if k not in skip}


def validate_metadata(meta: dict[str, Any], namespace_like: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    name = meta.get("name", "")
    if namespace_like:
        if not _DNS1123_LABEL.match(name) or len(name) > 63:
            errs.append(FieldError("FieldValueInvalid", "metadata.name", name,
                                   "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                                   "or '-', and must start and end with an alphanumeric character (e.g. 'my-name',"
                                   "  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"))
    elif not _DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        errs.append(FieldError("FieldValueInvalid", "metadata.name", name,
                               "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                               "'-' or '.', and must start and end with an alphanumeric character (e.g. "
                               "'example.com', regex used for validation is "
                               "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"))
    labels = meta.get("labels")
    if labels is not None and not isinstance(labels, dict):
        errs.append(FieldError("FieldValueInvalid", "metadata.labels", labels, "must be a map"))
    for k, v in (labels or {}).items():
        prefix, _, nm = k.rpartition("/")
        if (prefix and not _DNS1123_SUBDOMAIN.match(prefix)) or not _QUALIFIED_NAME.match(nm) or len(nm) > 63:
            errs.append(FieldError("FieldValueInvalid", "metadata.labels", k,
                                   "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                                   "start and end with an alphanumeric character"))
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            errs.append(FieldError("FieldValueInvalid", "metadata.labels", v,
                                   "a valid label must be an empty string or consist of alphanumeric characters, "
                                   "'-', '_' or '.', and must start and end with an alphanumeric character"))
    ann = meta.get("annotations")
    if ann is not None and (not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values())):
        errs.append(FieldError("FieldValueInvalid", "metadata.annotations", ann, "must be a map of strings"))
    elif ann and sum(len(k) + len(v) for k, v in ann.items()) > 256 * 1024:
        errs.append(FieldError("FieldValueTooLong", "metadata.annotations", "", "may not be more than 262144 bytes"))
    fins = meta.get("finalizers")
    if fins is not None and (not isinstance(fins, list) or not all(isinstance(f, str) for f in fins)):
        errs.append(FieldError("FieldValueInvalid", "metadata.finalizers", fins, "must be a list of strings"))
    return errs


class ApiState:
    """The API server's state, with no HTTP in it: resource types (built-ins and CRDs), one `Store` per
    resource, the global resourceVersion counter, owner references for garbage collection.

    `create`/`update`/`delete`/`get` take a `ResourceType` (from `lookup(group, version, plural)`); they
    are the very methods the HTTP handlers call, so tests may call them directly to change the world
    behind a client's back (e.g. while it cannot connect) and watchers see it as any other change.
    """

    def __init__(self, history_window: int = 10_000) -> None:
        self.rv = 1
        self.window = history_window
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.stores: dict[tuple[str, str], Store] = {}
        self.owner_index: dict[str, set[tuple[tuple[str, str], Key]]] = {}
        self.by_uid: dict[str, tuple[tuple[str, str], Key]] = {}
        self._next_ip = 1
        self._next_node_port = 30000
        for rt in builtin_types():
            self._register(rt)
        ns_type = self.types[("", "v1", "namespaces")]
        for ns in DEFAULT_NAMESPACES:
            self.create(ns_type, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # ---- registration -------------------------------------------------------------------------------
    def _register(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.version, rt.plural)] = rt
        if rt.store_key not in self.stores:
            self.stores[rt.store_key] = Store(rt.group, rt.plural, rt.namespaced, self.rv, self.window)

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.types.get((group, version, plural))

    def group_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for g, v, _ in self.types:
            vs = out.setdefault(g, [])
            if v not in vs:
                vs.append(v)
        for vs in out.values():
            vs.sort(key=_version_priority)
        return out

    def set_history_window(self, window: int) -> None:
        self.window = window
        for s in self.stores.values():
            s.set_window(window)

    def compact(self) -> None:
        for s in self.stores.values():
            s.compact(self.rv)

    # ---- helpers ------------------------------------------------------------------------------------
    def store(self, rt: ResourceType) -> Store:
        return self.stores[rt.store_key]

    def _key(self, rt: ResourceType, ns: str | None, name: str) -> Key:
        return (ns or "", name) if rt.namespaced else ("", name)

    def raw_for(self, rt: ResourceType, entry: Entry) -> bytes:
        if rt.to_api is not None or (rt.custom and entry.obj.get("apiVersion") != rt.api_version):
            return encode(self.obj_for(rt, entry.obj))
        return entry.raw

    def obj_for(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored object as this resource version shows it."""
        if rt.to_api is not None:
            return rt.to_api(obj)
        if rt.custom and obj.get("apiVersion") != rt.api_version:
            return {**obj, "apiVersion": rt.api_version}
        return obj

    def _commit(self, store: Store, type_: str, key: Key, obj: dict[str, Any], old: dict[str, Any] | None) -> Entry:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        raw = encode(obj)
        entry = Entry(obj, raw)
        if type_ == "DELETED":
            store.remove(key)
            self.by_uid.pop(obj["metadata"]["uid"], None)
        else:
            store.put(key, entry)
            self.by_uid[obj["metadata"]["uid"]] = ((store.group, store.resource), key)
        self._index_owners(store, key, old, None if type_ == "DELETED" else obj)
        store.record(Event(type_, self.rv, key, obj, raw, old))
        return entry

    def _index_owners(self, store: Store, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        ref = ((store.group, store.resource), key)
        for o in (old,):
            for r in (o or {}).get("metadata", {}).get("ownerReferences") or []:
                deps = self.owner_index.get(r.get("uid", ""))
                if deps is not None:
                    deps.discard(ref)
                    if not deps:
                        del self.owner_index[r.get("uid", "")]
        for r in (new or {}).get("metadata", {}).get("ownerReferences") or []:
            if isinstance(r, dict) and r.get("uid"):
                self.owner_index.setdefault(r["uid"], set()).add(ref)

    def _check_identity(self, rt: ResourceType, ns: str | None, body: Any, name: str | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("the object provided is unrecognized (must be of type map)")
        api_version = body.get("apiVersion")
        kind = body.get("kind")
        if rt.custom:
            if not kind:
                raise bad_request(f"Object 'Kind' is missing in '{json.dumps(body)[:200]}'")
            if not api_version:
                raise bad_request(f"Object 'apiVersion' is missing in '{json.dumps(body)[:200]}'")
        if api_version and api_version != rt.api_version:
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                              f"version ({rt.api_version})")
        if kind and kind != rt.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        if not isinstance(body.get("metadata", {}), dict):
            raise bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: json: cannot '
                              "unmarshal into Go struct field ObjectMeta.metadata of type v1.ObjectMeta")
        shapes.check(rt.kind, rt.version, rt.store_key if rt.from_api is None else (rt.group, rt.plural), body)
        obj: dict[str, Any] = clone(body)
        # Custom resources are stored at the CRD's storage version (conversion strategy None).
        obj["apiVersion"] = f"{rt.group}/{rt.storage_version}" if rt.custom else rt.api_version
        obj["kind"] = rt.kind
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if name is not None:
            if meta.get("name") and meta["name"] != name:
                raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                  f"({name})")
            meta["name"] = name
        if rt.namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            if ns:
                meta["namespace"] = ns
            elif not meta.get("namespace"):
                raise ApiError(404, "the server could not find the requested resource", "NotFound")
        else:
            meta.pop("namespace", None)
        if rt.from_api is not None:
            obj = rt.from_api(obj)
        return obj

    def _check_namespace(self, rt: ResourceType, ns: str, creating: bool) -> None:
        if not rt.namespaced:
            return
        entry = self.stores[("", "namespaces")].objects.get(("", ns))
        if entry is None:
            raise not_found("namespaces", "", ns)
        if creating and entry.obj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, f"{rt.plural} \"\" is forbidden: unable to create new content in namespace {ns} "
                           "because it is being terminated", "Forbidden",
                           {"kind": rt.plural, "causes": [{"reason": "NamespaceTerminating", "message":
                            f"namespace {ns} is being terminated", "field": "metadata.namespace"}]})

    # ---- admission: defaulting and validation ---------------------------------------------------------
    def _admit(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
               field_validation: str) -> list[str]:
        warnings: list[str] = []
        errs = validate_metadata(obj["metadata"], rt.plural == "namespaces" and rt.group == "")
        if rt.custom:
            unknown: list[str] = []
            structural.prune(rt.schema, obj, "", unknown, root=True)
            if unknown:
                if field_validation == "Strict":
                    raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{p}"' for p in unknown))
                if field_validation == "Warn":
                    warnings.extend(f'unknown field "{p}"' for p in unknown)
            structural.apply_defaults(rt.schema, obj)
            structural.validate(rt.schema, obj, "", errs, root=True)
        else:
            self._default_builtin(rt, obj, old, errs)
        if errs:
            raise invalid(rt.kind, rt.group, obj["metadata"].get("name", ""), errs)
        return warnings

    def _default_builtin(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
                         errs: list[FieldError]) -> None:
        kind = (rt.group, rt.plural)
        meta = obj["metadata"]
        if kind == ("", "namespaces"):
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            if old is None:
                obj["status"] = {"phase": "Active"}
        elif kind == ("", "services"):
            self._default_service(obj, old, errs)
        if kind in (("", "configmaps"), ("", "secrets")) and old is not None and old.get("immutable"):
            if kind == ("", "secrets"):
                obj.setdefault("type", "Opaque")
            changed = [f for f in ("data", "binaryData", "immutable", "type") if obj.get(f) != old.get(f)]
            if obj.get("stringData"):
                changed.append("data")
            if changed:
                errs.append(FieldError("FieldValueForbidden", changed[0], None,
                                       "field is immutable when `immutable` is set"))
                return
        if kind == ("", "secrets"):
            obj.setdefault("type", "Opaque")
            data = obj.get("data") or {}
            for k, v in data.items():
                try:
                    base64.b64decode(v, validate=True)
                except (binascii.Error, TypeError, ValueError) as exc:
                    raise bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: illegal base64 "
                                      f"data at input byte 0 (key {k})") from exc
            string_data = obj.pop("stringData", None)
            if isinstance(string_data, dict):
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
                obj["data"] = data
        elif kind == ("", "pods"):
            spec = obj.setdefault("spec", {})
            if not spec.get("containers"):
                errs.append(FieldError("FieldValueRequired", "spec.containers", None))
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("terminationGracePeriodSeconds", 30)
            if old is None:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort", **(obj.get("status") or {})}
        elif kind == (CRD_GROUP, "customresourcedefinitions"):
            self._validate_crd(obj, old, errs)
        elif kind == ("coordination.k8s.io", "leases"):
            obj.setdefault("spec", {})
        elif kind in (("apps", "deployments"), ("apps", "daemonsets")):
            self._default_workload(kind[1], obj, errs)

    @staticmethod
    def _default_workload(plural: str, obj: dict[str, Any], errs: list[FieldError]) -> None:
        """The apps/v1 defaults kubectl shows back (strategy, history limit, pod template defaults)."""
        spec = obj.setdefault("spec", {})
        template = spec.get("template") or {}
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not spec.get("selector"):
            errs.append(FieldError("FieldValueRequired", "spec.selector", None))
        elif any(labels.get(k) != v for k, v in selector.items()):
            errs.append(FieldError("FieldValueInvalid", "spec.template.metadata.labels", labels,
                                   "`selector` does not match template `labels`"))
        if plural == "deployments":
            spec.setdefault("replicas", 1)
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault("strategy", {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        else:
            spec.setdefault("updateStrategy", {"type": "RollingUpdate",
                                               "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        spec.setdefault("revisionHistoryLimit", 10)
        pod = template.get("spec")
        if isinstance(pod, dict):
            pod.setdefault("restartPolicy", "Always")
            pod.setdefault("dnsPolicy", "ClusterFirst")
            pod.setdefault("schedulerName", "default-scheduler")
            pod.setdefault("terminationGracePeriodSeconds", 30)
            pod.setdefault("securityContext", {})
            for c in pod.get("containers") or []:
                if isinstance(c, dict):
                    image = str(c.get("image", ""))
                    latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
                    c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
                    c.setdefault("terminationMessagePath", "/dev/termination-log")
                    c.setdefault("terminationMessagePolicy", "File")
        obj.setdefault("status", {})

    def _alloc_ip(self) -> str:
        n = self._next_ip
        self._next_ip += 1
        return f"10.96.{(n >> 8) & 0xFF}.{n & 0xFF}"

    def _default_service(self, obj: dict[str, Any], old: dict[str, Any] | None, errs: list[FieldError]) -> None:
        spec = obj.setdefault("spec", {})
        old_spec = (old or {}).get("spec", {})
        spec.setdefault("type", "ClusterIP")
        if spec["type"] not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            errs.append(FieldError("FieldValueNotSupported", "spec.type", spec["type"],
                                   'supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"'))
            return
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            if not spec.get("clusterIP") and old_spec.get("clusterIP"):
                spec["clusterIP"] = old_spec["clusterIP"]
                spec["clusterIPs"] = old_spec.get("clusterIPs", [old_spec["clusterIP"]])
            elif old_spec.get("clusterIP") and spec.get("clusterIP") != old_spec["clusterIP"]:
                errs.append(FieldError("FieldValueInvalid", "spec.clusterIPs[0]", spec.get("clusterIP"),
                                       "may not change once set"))
            if not spec.get("clusterIP"):
                spec["clusterIP"] = self._alloc_ip()
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports") or []}
        for i, p in enumerate(spec.get("ports") or []):
            if not isinstance(p, dict) or not isinstance(p.get("port"), int):
                errs.append(FieldError("FieldValueRequired", f"spec.ports[{i}].port", None))
                continue
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p["port"])
            if spec["type"] in ("NodePort", "LoadBalancer") and not p.get("nodePort"):
                prev = old_ports.get((p["port"], p["protocol"]), {}).get("nodePort")
                if prev:
                    p["nodePort"] = prev
                else:
                    p["nodePort"] = self._next_node_port
                    self._next_node_port = 30000 + (self._next_node_port - 30000 + 1) % 2768
        if old is None or "status" not in obj:
            obj["status"] = (old or {}).get("status") or {"loadBalancer": {}}

    def _validate_crd(self, obj: dict[str, Any], old: dict[str, Any] | None, errs: list[FieldError]) -> None:
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        group = spec.get("group", "")
        if not group:
            errs.append(FieldError("FieldValueRequired", "spec.group", None))
        for f in ("plural", "kind"):
            if not names.get(f):
                errs.append(FieldError("FieldValueRequired", f"spec.names.{f}", None))
        if spec.get("scope") not in ("Cluster", "Namespaced"):
            errs.append(FieldError("FieldValueNotSupported", "spec.scope", spec.get("scope"),
                                   'supported values: "Cluster", "Namespaced"'))
        if names.get("plural") and group and obj["metadata"].get("name") != f"{names['plural']}.{group}":
            errs.append(FieldError("FieldValueInvalid", "metadata.name", obj["metadata"].get("name"),
                                   'must be spec.names.plural+"."+spec.group'))
        versions = spec.get("versions") or []
        if not versions:
            errs.append(FieldError("FieldValueInvalid", "spec.versions", versions, "must have exactly one version "
                                   "marked as storage version"))
        elif sum(1 for v in versions if v.get("storage")) != 1:
            errs.append(FieldError("FieldValueInvalid", "spec.versions", versions, "must have exactly one version "
                                   "marked as storage version"))
        for i, v in enumerate(versions):
            sch = (v.get("schema") or {}).get("openAPIV3Schema")
            if sch is None:
                errs.append(FieldError("FieldValueRequired", f"spec.versions[{i}].schema.openAPIV3Schema", None,
                                       "schemas are required"))
            else:
                errs.extend(structural.structural_problems(sch, f"spec.versions[{i}].schema.openAPIV3Schema"))
        if old is not None:
            old_spec = old.get("spec", {})
            if old_spec.get("scope") != spec.get("scope"):
                errs.append(FieldError("FieldValueInvalid", "spec.scope", spec.get("scope"), "field is immutable"))
            if old_spec.get("group") != group:
                errs.append(FieldError("FieldValueInvalid", "spec.group", group, "field is immutable"))
        if errs:
            return
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
        spec.setdefault("conversion", {"strategy": "None"})
        for v in versions:
            v.setdefault("served", True)
        storage = next(v["name"] for v in versions if v.get("storage"))
        stored = list((old or {}).get("status", {}).get("storedVersions") or [])
        if storage not in stored:
            stored.append(storage)
        ts = now_str()
        obj["status"] = {
            "acceptedNames": {k: names[k] for k in ("plural", "singular", "kind", "listKind", "shortNames",
                                                    "categories") if k in names},
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": ts},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": ts},
            ],
            "storedVersions": stored,
        }

    # ---- CRD lifecycle --------------------------------------------------------------------------------
    def _serve_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        group, plural = spec["group"], spec["names"]["plural"]
        for key in [k for k in self.types if k[0] == group and k[2] == plural]:
            del self.types[key]
        for rt in crd_types(crd):
            self._register(rt)
        log.info("crd=%s serving versions=%s", crd["metadata"]["name"],
                 ",".join(v["name"] for v in spec["versions"] if v.get("served")))

    def _unserve_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        key = (spec["group"], spec["names"]["plural"])
        store = self.stores.get(key)
        if store is not None:
            for k in list(store.objects):
                entry = store.objects[k]
                obj = clone(entry.obj)
                self._commit(store, "DELETED", k, obj, entry.obj)
            for w in list(store.watchers):
                w.close()
            del self.stores[key]
        for tk in [k for k in self.types if (k[0], k[2]) == key]:
            del self.types[tk]
        log.info("crd=%s no longer served", crd["metadata"]["name"])

    # ---- verbs ----------------------------------------------------------------------------------------
    def get(self, rt: ResourceType, ns: str | None, name: str) -> Entry:
        entry = self.store(rt).objects.get(self._key(rt, ns, name))
        if entry is None:
            raise not_found(rt.plural, rt.group, name)
        return entry

    def create(self, rt: ResourceType, ns: str | None, body: Any, dry_run: bool = False,
               field_validation: str = "Warn", user: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
        """`user`: the authenticated requester (username, uid, groups, extra), recorded where the real server does."""
        obj = self._check_identity(rt, ns, body, None)
        meta = obj["metadata"]
        if csr_api.is_csr(rt.group, rt.plural):
            errs = csr_api.prepare_create(obj, user or {})
            if errs:
                raise invalid(rt.kind, rt.group, meta.get("name", ""), errs)
        if rt.namespaced:
            self._check_namespace(rt, meta["namespace"], creating=True)
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(random.choices(_GEN_ALPHABET, k=5))
            else:
                raise invalid(rt.kind, rt.group, "", [FieldError("FieldValueRequired", "metadata.name", None,
                                                                 "name or generateName is required")])
        for f in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                  "generation", "selfLink"):
            meta.pop(f, None)
        if rt.custom and rt.has_status:
            obj.pop("status", None)
        warnings = self._admit(rt, obj, None, field_validation)
        store = self.store(rt)
        key = self._key(rt, meta.get("namespace"), meta["name"])
        if key in store.objects:
            raise already_exists(rt.plural, rt.group, meta["name"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_str()
        if rt.custom or rt.store_key in _GENERATION_KINDS:
            meta["generation"] = 1
        if dry_run:
            return self.obj_for(rt, obj), warnings
        entry = self._commit(store, "ADDED", key, obj, None)
        if rt.store_key == (CRD_GROUP, "customresourcedefinitions"):
            self._serve_crd(entry.obj)
        return self.obj_for(rt, entry.obj), warnings

    def update(self, rt: ResourceType, ns: str | None, name: str, body: Any, subresource: str | None = None,
               dry_run: bool = False, field_validation: str = "Warn") -> tuple[dict[str, Any], list[str]]:
        store = self.store(rt)
        key = self._key(rt, ns, name)
        entry = store.objects.get(key)
        if entry is None:
            raise not_found(rt.plural, rt.group, name)
        old = entry.obj
        new = self._check_identity(rt, ns, body, name)
        meta = new["metadata"]
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, rt.group, name,
                           "the object has been modified; please apply your changes to the latest version and try "
                           "again")
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            raise conflict(rt.plural, rt.group, name, f"Precondition failed: UID in precondition: {meta['uid']}, "
                           f"UID in object meta: {old['metadata']['uid']}")
        if csr_api.is_csr(rt.group, rt.plural) and subresource in ("status", "approval"):
            new, errs = csr_api.prepare_update(old, new, subresource)
            if errs:
                raise invalid(rt.kind, rt.group, name, errs)
            meta = new["metadata"]
        elif subresource == "status":
            status = new.get("status")
            new = clone(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
            meta = new["metadata"]
        else:
            if rt.has_status and not (rt.group == "" and rt.plural == "namespaces" and subresource == "finalize"):
                if "status" in old:
                    new["status"] = clone(old["status"])
                else:
                    new.pop("status", None)
            if rt.plural == "namespaces" and rt.group == "" and subresource != "finalize":
                new["spec"] = clone(old.get("spec", {}))
            if csr_api.is_csr(rt.group, rt.plural):
                new["spec"] = clone(old.get("spec", {}))  # immutable
            for f in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation",
                      "selfLink"):
                if f in old["metadata"]:
                    meta[f] = old["metadata"][f]
                else:
                    meta.pop(f, None)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        warnings = self._admit(rt, new, old, field_validation)
        deleting = bool(old["metadata"].get("deletionTimestamp"))
        if deleting:
            added = set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if added:
                raise invalid(rt.kind, rt.group, name, [FieldError(
                    "FieldValueForbidden", "metadata.finalizers", None,
                    "no new finalizers can be added if the object is being deleted, found new finalizers "
                    + json.dumps(sorted(added)))])
        if "generation" in old["metadata"]:
            has_status = rt.has_status
            if _spec_part(new, has_status) != _spec_part(old, has_status):
                meta["generation"] = old["metadata"]["generation"] + 1
        if _strip_volatile(new) == _strip_volatile(old):
            return self.obj_for(rt, old), warnings  # a no-op write changes nothing, not even resourceVersion
        if dry_run:
            return self.obj_for(rt, new), warnings
        if deleting and not meta.get("finalizers"):
            entry = self._commit(store, "DELETED", key, new, old)
            self._after_delete(rt, store, entry.obj, "Background")
        else:
            entry = self._commit(store, "MODIFIED", key, new, old)
            if rt.store_key == (CRD_GROUP, "customresourcedefinitions"):
                self._serve_crd(entry.obj)
        return self.obj_for(rt, entry.obj), warnings

    def patch(self, rt: ResourceType, ns: str | None, name: str, content_type: str, raw: bytes,
              subresource: str | None = None, dry_run: bool = False,
              field_validation: str = "Warn") -> tuple[dict[str, Any], list[str], bool]:
        """Returns (object, warnings, created)."""
        ctype = content_type.split(";")[0].strip().lower()
        entry = self.store(rt).objects.get(self._key(rt, ns, name))
        try:
            if ctype == "application/apply-patch+yaml":
                import yaml
                body = yaml.safe_load(raw.decode() or "{}")
            else:
                body = json.loads(raw.decode() or "null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"error decoding patch: {exc}") from exc
        if ctype == "application/apply-patch+yaml":
            # Server-side apply, approximated: create if absent, else a merge of the applied configuration.
            if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
                raise bad_request("error decoding YAML: object expected")
            if entry is None:
                if subresource:
                    raise not_found(rt.plural, rt.group, name)
                body.setdefault("metadata", {})["name"] = name
                if rt.namespaced and ns:
                    body["metadata"]["namespace"] = ns
                obj, warnings = self.create(rt, ns, body, dry_run, field_validation)
                return obj, warnings, True
            patched = merge_patch(self.obj_for(rt, entry.obj), body)
        else:
            if entry is None:
                raise not_found(rt.plural, rt.group, name)
            current = self.obj_for(rt, entry.obj)
            if ctype == "application/json-patch+json":
                patched = json_patch(current, body)
            elif ctype == "application/merge-patch+json":
                if not isinstance(body, dict):
                    raise bad_request("json: cannot unmarshal into Go value of type map[string]interface {}")
                patched = merge_patch(current, body)
            elif ctype == "application/strategic-merge-patch+json":
                if rt.custom:
                    raise ApiError(415, "the body of the request was in an unknown format - accepted media types "
                                   "include: application/json-patch+json, application/merge-patch+json, "
                                   "application/apply-patch+yaml", "UnsupportedMediaType")
                if not isinstance(body, dict):
                    raise bad_request("json: cannot unmarshal into Go value of type map[string]interface {}")
                patched = strategic_merge_patch(current, body)
            else:
                smp = "" if rt.custom else ", application/strategic-merge-patch+json"
                raise ApiError(415, "the body of the request was in an unknown format - accepted media types "
                               "include: application/json-patch+json, application/merge-patch+json, "
                               f"application/apply-patch+yaml{smp}", "UnsupportedMediaType")
        if not isinstance(patched, dict):
            raise bad_request("the patched object is not an object")
        obj, warnings = self.update(rt, ns, name, patched, subresource, dry_run, field_validation)
        return obj, warnings, False

    def delete(self, rt: ResourceType, ns: str | None, name: str, options: dict[str, Any],
               dry_run: bool = False) -> tuple[dict[str, Any], bool]:
        """Returns (response body, object returned rather than Status)."""
        store = self.store(rt)
        key = self._key(rt, ns, name)
        entry = store.objects.get(key)
        if entry is None:
            raise not_found(rt.plural, rt.group, name)
        old = entry.obj
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise conflict(rt.plural, rt.group, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                           f"UID in object meta: {old['metadata']['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, rt.group, name, "Precondition failed: ResourceVersion in precondition: "
                           f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                           f"{old['metadata']['resourceVersion']}")
        policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else "Background")
        if dry_run:
            return self.obj_for(rt, old), True
        obj = clone(old)
        if policy == "Orphan":
            self._orphan(old["metadata"]["uid"])
        is_ns = rt.group == "" and rt.plural == "namespaces"
        if policy == "Foreground" and self.owner_index.get(old["metadata"]["uid"]) and not is_ns:
            return self._delete_foreground(rt, store, key, obj, old), True
        if obj["metadata"].get("finalizers") or is_ns:
            if not obj["metadata"].get("deletionTimestamp"):
                if obj["metadata"].get("generation"):
                    obj["metadata"]["generation"] += 1
                obj["metadata"]["deletionTimestamp"] = now_str()
                obj["metadata"]["deletionGracePeriodSeconds"] = 0
                if is_ns:
                    obj["status"] = {"phase": "Terminating"}
                entry = self._commit(store, "MODIFIED", key, obj, old)
            if is_ns:
                self._terminate_namespace(name)
                final = store.objects.get(key)
                if final is None:
                    return self.obj_for(rt, entry.obj), True
                return self.obj_for(rt, final.obj), True
            return self.obj_for(rt, entry.obj), True
        entry = self._commit(store, "DELETED", key, obj, old)
        self._after_delete(rt, store, entry.obj, policy)
        if rt.custom or rt.store_key in _RETURNS_OBJECT:
            return self.obj_for(rt, entry.obj), True
        details: dict[str, Any] = {"name": name, "kind": rt.plural, "uid": obj["metadata"]["uid"]}
        if rt.group:
            details["group"] = rt.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}, False

    def _delete_foreground(self, rt: ResourceType, store: Store, key: Key, obj: dict[str, Any],
                           old: dict[str, Any]) -> dict[str, Any]:
        """Foreground deletion: the owner stays (deletionTimestamp + foregroundDeletion) until its dependents
        are gone; the garbage collector then removes the finalizer and the owner with it."""
        meta = obj["metadata"]
        if "foregroundDeletion" not in (meta.get("finalizers") or []):
            meta["finalizers"] = [*(meta.get("finalizers") or []), "foregroundDeletion"]
        if not meta.get("deletionTimestamp"):
            if meta.get("generation"):
                meta["generation"] += 1
            meta["deletionTimestamp"] = now_str()
            meta["deletionGracePeriodSeconds"] = 0
        self._commit(store, "MODIFIED", key, obj, old)
        uid = meta["uid"]
        for dep_store_key, dep_key in list(self.owner_index.get(uid, ())):
            dep_rt = self._type_for(dep_store_key)
            dep_store = self.stores.get(dep_store_key)
            if dep_rt is None or dep_store is None or dep_key not in dep_store.objects:
                continue
            try:
                self.delete(dep_rt, dep_key[0] or None, dep_key[1], {"propagationPolicy": "Foreground"})
            except ApiError as exc:
                log.warning("gc foreground dependent=%s/%s failed: %s", dep_key[0], dep_key[1], exc)
        self._release_foreground(uid)
        current = store.objects.get(key)
        return self.obj_for(rt, current.obj if current is not None else obj)

    def _release_foreground(self, uid: str) -> None:
        """Drop the foregroundDeletion finalizer of `uid` once it has no dependents left."""
        where = self.by_uid.get(uid)
        if where is None or self.owner_index.get(uid):
            return
        store = self.stores.get(where[0])
        rt = self._type_for(where[0])
        entry = store.objects.get(where[1]) if store is not None else None
        if rt is None or entry is None:
            return
        fins = entry.obj["metadata"].get("finalizers") or []
        if not entry.obj["metadata"].get("deletionTimestamp") or "foregroundDeletion" not in fins:
            return
        upd = clone(entry.obj)
        upd["metadata"]["finalizers"] = [f for f in fins if f != "foregroundDeletion"]
        self.update(rt, where[1][0] or None, where[1][1], upd)

    def _type_for(self, store_key: tuple[str, str]) -> ResourceType | None:
        return next((t for t in self.types.values() if t.store_key == store_key), None)

    def _after_delete(self, rt: ResourceType, store: Store, obj: dict[str, Any], policy: str) -> None:
        meta = obj["metadata"]
        for ref in meta.get("ownerReferences") or []:
            if isinstance(ref, dict) and ref.get("uid"):
                self._release_foreground(ref["uid"])
        if rt.store_key == (CRD_GROUP, "customresourcedefinitions"):
            self._unserve_crd(obj)
        if policy != "Orphan":
            self._collect_dependents(meta["uid"])
        ns = meta.get("namespace")
        if ns:
            ns_entry = self.stores[("", "namespaces")].objects.get(("", ns))
            if ns_entry is not None and ns_entry.obj["metadata"].get("deletionTimestamp"):
                self._finish_namespace_if_empty(ns)

    def _collect_dependents(self, uid: str) -> None:
        """Garbage collection: a dependent whose owners are all gone is deleted (background propagation)."""
        for store_key, key in list(self.owner_index.get(uid, ())):
            store = self.stores.get(store_key)
            if store is None or key not in store.objects:
                continue
            dep = store.objects[key].obj
            refs = dep["metadata"].get("ownerReferences") or []
            alive = [r for r in refs if r.get("uid") != uid and self._uid_exists(r)]
            rt = self._type_for(store_key)
            if rt is None:
                continue
            try:
                if alive:
                    upd = clone(dep)
                    upd["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    self.update(rt, key[0] or None, key[1], upd)
                else:
                    self.delete(rt, key[0] or None, key[1], {})
            except ApiError as exc:
                log.warning("gc dependent=%s/%s failed: %s", key[0], key[1], exc)

    def _uid_exists(self, ref: dict[str, Any]) -> bool:
        return ref.get("uid") in self.by_uid

    def _orphan(self, uid: str) -> None:
        for store_key, key in list(self.owner_index.get(uid, ())):
            store = self.stores.get(store_key)
            rt = self._type_for(store_key)
            if store is None or rt is None or key not in store.objects:
                continue
            upd = clone(store.objects[key].obj)
            upd["metadata"]["ownerReferences"] = [r for r in upd["metadata"].get("ownerReferences") or []
                                                  if r.get("uid") != uid]
            if not upd["metadata"]["ownerReferences"]:
                del upd["metadata"]["ownerReferences"]
            self.update(rt, key[0] or None, key[1], upd)

    def _terminate_namespace(self, ns: str) -> None:
        for store_key, store in list(self.stores.items()):
            if not store.namespaced:
                continue
            rt = self._type_for(store_key)
            if rt is None:
                continue
            for key in [k for k in store.objects if k[0] == ns]:
                entry = store.objects.get(key)
                if entry is not None and not entry.obj["metadata"].get("deletionTimestamp"):
                    self.delete(rt, ns, key[1], {})
        self._finish_namespace_if_empty(ns)

    def _finish_namespace_if_empty(self, ns: str) -> None:
        for store in self.stores.values():
            if store.namespaced and any(k[0] == ns for k in store.objects):
                return
        store = self.stores[("", "namespaces")]
        entry = store.objects.get(("", ns))
        if entry is not None:
            obj = clone(entry.obj)
            obj.get("spec", {}).pop("finalizers", None)
            self._commit(store, "DELETED", ("", ns), obj, entry.obj)

    # ---- list and watch -------------------------------------------------------------------------------
    def list(self, rt: ResourceType, ns: str | None, labels: Matcher | None, fields: ObjMatcher | None,
             limit: int = 0, cont: str | None = None) -> tuple[list[Entry], int, str | None, int | None]:
        """Entries in key order, the list resourceVersion, a continue token and the remaining count."""
        store = self.store(rt)
        list_rv = self.rv
        start_after: Key | None = None
        if cont:
            try:
                tok = json.loads(base64.b64decode(cont + "=" * (-len(cont) % 4)))
                list_rv = int(tok["rv"])
                start_after = (tok["start"][0], tok["start"][1])
            except (ValueError, KeyError, TypeError, IndexError, binascii.Error) as exc:
                raise bad_request(f"continue key is not valid: {exc}") from exc
            if list_rv < store.floor:
                raise ApiError(410, "The provided continue parameter is too old to display a consistent list "
                               "result. You can start a new list without the continue parameter, or use the continue "
                               "token in this response to retrieve the remainder of the results. Continuing with the "
                               "provided token results in an inconsistent list - objects that were created, "
                               "modified, or deleted between the time the first chunk was returned and now may show "
                               "up in the list.", "Expired")
        if limit or cont:
            # A paginated list is consistent: every page reads the state at the first page's version.
            snap = store.snapshots.get(list_rv) if cont else store.snapshot(list_rv)
            keys, objects = snap if snap is not None else (store.sorted_keys(), store.objects)
        else:
            keys, objects = store.sorted_keys(), store.objects
        if start_after is not None:
            idx = bisect.bisect_right(keys, start_after)
        elif ns and rt.namespaced:
            idx = bisect.bisect_left(keys, (ns, ""))
        else:
            idx = 0
        out: list[Entry] = []
        n = len(keys)
        filtered = labels is not None or fields is not None
        while idx < n:
            key = keys[idx]
            if ns and rt.namespaced and key[0] != ns:
                break
            idx += 1
            entry = objects[key]
            if labels is not None and not labels(entry.obj["metadata"].get("labels") or {}):
                continue
            if fields is not None and not fields(entry.obj):
                continue
            out.append(entry)
            if limit and len(out) >= limit:
                break
        more = idx < n and not (ns and rt.namespaced and keys[idx][0] != ns)
        token = None
        remaining = None
        if limit and more and out:
            last = keys[idx - 1]
            token = base64.b64encode(json.dumps({"v": "meta.k8s.io/v1", "rv": list_rv,
                                                 "start": [last[0], last[1]]}).encode()).decode().rstrip("=")
            if not filtered and not ns:
                remaining = n - idx
        return out, list_rv, token, remaining

    def watch(self, rt: ResourceType, ns: str | None, rv: str | None, labels: Matcher | None,
              fields: ObjMatcher | None, transform: Transform | None, send_initial: bool | None,
              bookmarks: bool) -> Watcher:
        store = self.store(rt)
        w = Watcher(ns if rt.namespaced and ns else None, labels, fields, transform)
        initial = send_initial if send_initial is not None else rv in (None, "", "0")
        if initial:
            for key in store.sorted_keys():
                entry = store.objects[key]
                if w.matches(key, entry.obj):
                    w.push(self._line(rt, w, "ADDED", entry))
            if send_initial and bookmarks:
                w.push(self.bookmark(rt, initial_end=True))
        elif rv in (None, "", "0"):
            pass  # sendInitialEvents=false without a version: start at the current state, no backlog
        else:
            try:
                start = int(rv or "0")
            except ValueError as exc:
                raise bad_request(f"invalid resource version: {rv}") from exc
            if start < store.floor:
                raise ApiError(410, f"too old resource version: {start} ({store.floor})", "Expired")
            for ev in store.events_since(start):
                w.offer(ev)
        store.watchers.add(w)
        return w

    def _line(self, rt: ResourceType, w: Watcher, type_: str, entry: Entry) -> bytes:
        if w.transform is not None:
            return w.transform(type_, entry.obj, entry.raw)
        return b'{"type":"' + type_.encode() + b'","object":' + self.raw_for(rt, entry) + b"}\n"

    def bookmark(self, rt: ResourceType, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(self.rv), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return encode({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version,
                                                      "metadata": meta}}) + b"\n"


def _version_priority(v: str) -> tuple[int, int, int, str]:
    """Kubernetes version ordering: GA > beta > alpha, higher numbers first."""
    m = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", v)
    if not m:
        return (3, 0, 0, v)
    major = int(m.group(1))
    stage = {"": 0, "beta": 1, "alpha": 2}[m.group(2) or ""]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor, v)
