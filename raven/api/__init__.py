"""The project's typed API objects: the Gateway (raven.openyurt.io/v1beta1), and the Node, Service and Endpoints
facts Raven uses. Each is converted once from API JSON (read as `object`, never `Any`) by `raven.kube.typed`."""

from raven.api.gateway import (
    Condition,
    Endpoint,
    Gateway,
    GatewayParseError,
    GatewaySpec,
    GatewayStatus,
    NodeInfo,
    UnparsableGateway,
    parse_gateway,
    validate,
)
from raven.api.node import Node
from raven.api.pathreport import PathReport, PathReportStatus, Target
from raven.api.service import Service, ServiceEndpoints

__all__ = [
    "Condition",
    "Endpoint",
    "Gateway",
    "GatewayParseError",
    "GatewaySpec",
    "GatewayStatus",
    "Node",
    "NodeInfo",
    "PathReport",
    "PathReportStatus",
    "Service",
    "ServiceEndpoints",
    "Target",
    "UnparsableGateway",
    "parse_gateway",
    "validate",
]
