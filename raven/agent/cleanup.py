"""`raven --mode=agent --cleanup`: remove every kernel object, VICI connection and WireGuard device Raven owns,
then exit."""

from __future__ import annotations

import logging

from raven.agent.app import ownership, plan_config
from raven.agent.identity import identity_key_ids
from raven.config import AgentConfig
from raven.dataplane.ingress import IngressFilterApplier
from raven.dataplane.ipsec import CharonUnavailable, IPsecDriver
from raven.dataplane.kernel import KernelApplier, KernelError
from raven.dataplane.probenat import ProbeNatApplier
from raven.dataplane.wireguard import WG_IFNAME, WireGuardGo
from raven.log import kv

log = logging.getLogger(__name__)


async def agent_cleanup(cfg: AgentConfig) -> int:
    """`--cleanup`: remove everything Raven owns on this node (kernel objects, raven-* VICI connections, the
    WireGuard device and the wireguard-go serving it), whatever `--vpn-driver` says: a node switched from one
    driver to the other, or cleaned with the flags of the other, must not keep the first one's tunnels.

    Returns the exit code: 1 when anything could not be removed (so a script or an operator notices), else 0.
    """
    failed = False
    kernel = KernelApplier(ownership(plan_config(cfg, None)))
    try:
        report = await kernel.cleanup()
    except KernelError as exc:
        failed = True
        log.error("kernel cleanup failed: nothing removed", extra=kv(error=str(exc)))
    else:
        for err in report.errors:
            log.warning("kernel cleanup write failed", extra=kv(kind=err.kind, op=err.op, obj=err.obj,
                                                                reason=err.reason))
        failed = failed or not report.ok
        log.info("kernel state removed", extra=kv(writes=report.total_writes, errors=len(report.errors)))
    finally:
        await kernel.close()
    failed = not _remove_ingress_filter() or failed
    failed = not await _remove_ipsec(cfg) or failed
    failed = not await _stop_wireguard() or failed
    return 1 if failed else 0


async def _remove_ipsec(cfg: AgentConfig) -> bool:
    """The raven-* VICI connections and this node's keys in charon (none to remove when charon is not running).
    True if done."""
    failed = False
    vpn = IPsecDriver(cfg.vici_socket, cfg.psk)
    vpn.set_credentials(None, identity_key_ids(cfg.ipsec_identity_dir))  # our keys, by their ids
    try:
        vici_report = await vpn.cleanup()
        for err in vici_report.errors:
            log.warning("ipsec cleanup operation failed", extra=kv(op=err.op, conn=err.obj, reason=err.reason))
        failed = not vici_report.ok
        log.info("ipsec connections removed", extra=kv(ops=vici_report.total_writes))
    except CharonUnavailable as exc:
        # A charon that is not running holds no connections (it loses them all when it stops).
        log.warning("charon not reachable; nothing to remove there", extra=kv(error=str(exc)))
    except Exception as exc:
        failed = True
        log.error("ipsec cleanup failed", extra=kv(error=f"{type(exc).__name__}: {exc}"))
    finally:
        await vpn.close()
    return not failed


async def _stop_wireguard() -> bool:
    """The WireGuard device, kernel or wireguard-go (which ends with it), and its UAPI socket; the key file stays.
    True if done."""
    try:
        existed = await WireGuardGo().stop()
    except OSError as exc:
        log.error("wireguard cleanup failed", extra=kv(error=str(exc)))
        return False
    log.info("wireguard device removed" if existed else "no wireguard device", extra=kv(ifname=WG_IFNAME))
    return True


def _remove_ingress_filter() -> bool:
    """The ingress filter's chains and jumps (after the links: no socket is left unfiltered), and the via probes'
    source NAT chain. True if done."""
    try:
        writes = IngressFilterApplier().remove() + ProbeNatApplier().remove()
    except FileNotFoundError as exc:  # no iptables on this node: no filter either
        log.warning("iptables not found; no ingress filter to remove", extra=kv(error=str(exc)))
        return True
    except OSError as exc:
        log.error("ingress filter cleanup failed", extra=kv(error=str(exc)))
        return False
    log.info("ingress filter removed", extra=kv(writes=writes))
    return True
