"""What one kernel pass did: writes per kind and each failed write with its object (`ApplyReport`).

Shared by the kernel applier and the IPsec driver; the agent's metrics and logs read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# Write kinds, as counted in ApplyReport.writes and exported as metrics labels.
KINDS: Final = ("link", "address", "route", "rule", "neighbor", "fdb", "sysctl", "iptables")


@dataclass(frozen=True)
class ApplyError:
    kind: str
    op: str
    obj: str
    reason: str


@dataclass
class ApplyReport:
    writes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    errors: list[ApplyError] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def total_writes(self) -> int:
        return sum(self.writes.values())

    @property
    def ok(self) -> bool:
        return not self.errors
