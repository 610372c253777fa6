"""CRDs written for the API server's own tests (not the project's manifests)."""

from __future__ import annotations

from typing import Any

GROUP = "raven.openyurt.io"
VERSION = "v1beta1"


def gateway_crd() -> dict[str, Any]:
    """A Gateway CRD shaped like OpenYurt's: cluster-scoped, status subresource, printer columns."""
    endpoint = {
        "type": "object",
        "required": ["nodeName", "type"],
        "properties": {
            "nodeName": {"type": "string"},
            "type": {"type": "string", "enum": ["tunnel", "proxy"]},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "underNAT": {"type": "boolean"},
            "publicIP": {"type": "string", "format": "ipv4"},
            "config": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gateways.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": "Gateway", "listKind": "GatewayList", "plural": "gateways", "singular": "gateway",
                      "shortNames": ["gw"]},
            "scope": "Cluster",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "ExposeType", "type": "string", "jsonPath": ".spec.exposeType"},
                    {"name": "Active", "type": "string", "jsonPath": ".status.activeEndpoints[*].nodeName"},
                    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.tunnelConfig.Replicas"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "properties": {
                                "exposeType": {"type": "string", "enum": ["", "PublicIP", "LoadBalancer"]},
                                "nodeSelector": {"type": "object", "nullable": True,
                                                 "x-kubernetes-preserve-unknown-fields": True},
                                "tunnelConfig": {"type": "object", "properties": {
                                    "Replicas": {"type": "integer", "default": 1}}},
                                "endpoints": {"type": "array", "items": endpoint},
                            },
                        },
                        "status": {
                            "type": "object",
                            "properties": {
                                "activeEndpoints": {"type": "array", "items": endpoint},
                                "nodes": {"type": "array", "items": {
                                    "type": "object",
                                    "properties": {"nodeName": {"type": "string"},
                                                   "privateIP": {"type": "string"},
                                                   "subnets": {"type": "array", "items": {"type": "string"}}}}},
                            },
                        },
                    },
                }},
            }],
        },
    }


def widget_crd() -> dict[str, Any]:
    """A namespaced CRD without a status subresource and with two served versions."""
    schema = {"openAPIV3Schema": {"type": "object", "properties": {
        "spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer"}, "color": {"type": "string", "default": "blue"}}},
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.test"},
        "spec": {
            "group": "example.test",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced",
            "versions": [
                {"name": "v1", "served": True, "storage": True, "schema": schema},
                {"name": "v1alpha1", "served": True, "storage": False, "schema": schema},
            ],
        },
    }


def gateway(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Gateway", "metadata": {"name": name}, "spec": spec}
