"""The Gateway API (raven.openyurt.io/v1beta1) and the Node facts Raven uses."""

from raven.api.gateway import (
    Condition,
    Endpoint,
    Gateway,
    GatewayParseError,
    GatewaySpec,
    GatewayStatus,
    NodeInfo,
    validate,
)
from raven.api.node import Node

__all__ = [
    "Condition",
    "Endpoint",
    "Gateway",
    "GatewayParseError",
    "GatewaySpec",
    "GatewayStatus",
    "Node",
    "NodeInfo",
    "validate",
]
