"""What the agent's reconciler needs from a tunnel driver (IPsec over charon, `raven.dataplane.ipsec`;
WireGuard, `raven.dataplane.wireguard`).

A driver takes the plan's tunnels (`IPsecConnection`: one per directly connected peer gateway, inner /32 <->
inner /32, route-based) and makes its daemon hold exactly those; `states()` reports each one as a
`TunnelState`; `connects` changes when the daemon restarted (the reconciler then re-applies);
`available()` is a cheap liveness look; a driver raises `DriverUnavailable` while its daemon cannot be
reached (expected during a restart: retried, logged on one line).
"""

from __future__ import annotations


class DriverUnavailable(RuntimeError):
    """The tunnel daemon (charon, wireguard-go) cannot be reached."""
