"""Read the nat table (``iptables-save -t nat``), for the agent's look at kube-proxy's rules
(`raven.agent.kubeproxy`). Read only: Raven writes nothing to the nat table."""

from __future__ import annotations

import logging
import subprocess

log = logging.getLogger(__name__)


def read_nat_rules(netns: str | None = None, timeout: float = 10.0) -> str | None:
    """The nat table as `iptables-save` prints it; None when iptables cannot be run or fails. Blocking."""
    prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    try:
        proc = subprocess.run([*prefix, "iptables-save", "-t", "nat"], capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("iptables-save failed: %s", exc)
        return None
    return proc.stdout if proc.returncode == 0 else None
