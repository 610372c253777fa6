"""What a node probes, as its plan says (the plan builds these: raven.agent.plan, `PlanResult.probes`)."""

from __future__ import annotations

from dataclasses import dataclass

from raven.api.pathreport import TargetKind


@dataclass(frozen=True, order=True)
class ProbeTarget:
    kind: TargetKind  # gateway: own pool's gateway over raven0; peer: a peer gateway through the tunnel
    gateway: str  # the Gateway the target belongs to
    node: str  # the target's active endpoint node when planned
    source: str  # the local address the echo is sent from (decides the path it takes)
    address: str  # the address pinged (answered by the target node's kernel)

    @property
    def key(self) -> tuple[str, str]:
        """Identity of a target across plans: a failover of the target's gateway changes `node`, not the key
        (the inner address is per Gateway), so its health history carries over; the report names the node."""
        return self.kind, self.address
