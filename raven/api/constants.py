"""Names shared with OpenYurt Raven: API group, labels, annotations, event reasons, defaults."""

from __future__ import annotations

from typing import Final

GROUP: Final = "raven.openyurt.io"
VERSION: Final = "v1beta1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "Gateway"

# A node belongs to gateway G when it carries this label with value G.
LABEL_GATEWAY: Final = "raven.openyurt.io/gateway"
# Labels on objects the controller owns (LoadBalancer Services and their Endpoints).
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE: Final = "raven-controller"
LABEL_OWNER_GATEWAY: Final = "raven.openyurt.io/owner-gateway"

ENDPOINT_TYPE_TUNNEL: Final = "tunnel"
ENDPOINT_TYPE_PROXY: Final = "proxy"
ENDPOINT_TYPES: Final = frozenset({ENDPOINT_TYPE_TUNNEL, ENDPOINT_TYPE_PROXY})

EXPOSE_TYPE_NONE: Final = ""
EXPOSE_TYPE_PUBLIC_IP: Final = "PublicIP"
EXPOSE_TYPE_LOAD_BALANCER: Final = "LoadBalancer"
# None (absent) and "" both mean "not exposed".
EXPOSE_TYPES: Final = frozenset({None, EXPOSE_TYPE_NONE, EXPOSE_TYPE_PUBLIC_IP, EXPOSE_TYPE_LOAD_BALANCER})

DEFAULT_TUNNEL_PORT: Final = 4500
# OpenYurt's mutating webhook defaults an unset proxy endpoint port to this (we write it in status only).
DEFAULT_PROXY_PORT: Final = 10262
# With --vpn-driver=wireguard each node publishes its WireGuard public key (base64) in its tunnel endpoint's
# config, under the key OpenYurt Raven's WireGuard driver uses; peers read it from status.activeEndpoints.
ENDPOINT_CONFIG_PUBLIC_KEY: Final = "publicKey"

EVENT_ACTIVE_ENDPOINT_ELECTED: Final = "ActiveEndpointElected"
EVENT_ACTIVE_ENDPOINT_LOST: Final = "ActiveEndpointLost"

# Our additive status condition type.
CONDITION_VALID: Final = "Valid"

# Routing by measured cost (raven/routing/graph.py): an operator's extra cost, in milliseconds (>= 0), added to
# every link of the Gateway that carries this annotation; a Gateway without it (an OpenYurt one) adds nothing.
ANNOTATION_LINK_WEIGHT: Final = "raven-py.io/link-weight"
