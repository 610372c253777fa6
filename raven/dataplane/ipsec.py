"""The IPsec driver: Raven's `IPsecConnection`s -> strongSwan's charon over VICI.

Public surface (what the agent's reconciler calls)::

    driver = IPsecDriver(socket_path, psk, settings=IPsecSettings(), on_op=None)   # psk "" in cert mode
    driver.set_credentials(Credentials(...))  # cert mode: this node's key + certificate + the cluster CA
    report = await driver.reconcile(conns)   # ApplyReport; ops counted per VICI command
    states = await driver.states()           # [TunnelState] from list-sas, for metrics and status
    report = await driver.cleanup()          # terminate + unload every raven-* connection, our PSK
    await driver.close()

Raises `CharonUnavailable` (with the reason) when charon cannot be reached: the reconciler turns
that into a readiness failure and retries; the driver reconnects on the next call (a restarted
charon gets a new socket and, having lost its configuration, everything reloaded).

Ownership: only connections whose name starts with the prefix (`raven-`) and shared keys whose
id starts with `<prefix>psk-` are read, replaced or removed. Others' connections are never touched.
Private keys are ours by id (`Credentials.key_id` and `retired_key_ids`, the SHA-1 of the public key
that `get-keys` reports); others' keys are never unloaded.

Certificates (`auth = pubkey`, --ipsec-auth=cert): the node's private key and certificate are loaded
with `load-key`/`load-cert`, NOT named in the connection, so a renewed certificate changes no
connection: charon keeps every established SA (an SA is authenticated once, when it is set up) and
authenticates the next one with the new certificate. Renewal loads the new key and certificate, then
unloads the old key: charon picks the certificate whose private key it holds, so the old one is never
offered again. (VICI cannot unload a single certificate: the old public certificates stay in charon's
memory until it restarts; they are useless without their key.) Each connection's `remote.cacerts` is
the cluster CA and its `remote.id` the node identity of the peer Gateway's active endpoint, so charon
accepts that node's certificate only. A connection that needs a certificate before one is set is not
loaded (reported as an error) rather than loaded to fail.

No local cache decides what to load: every reconcile compares with what charon reports, so an agent
restart or a charon restart converges the same way. The connection's full configuration is
fingerprinted into its CHILD_SA name (`inner-<SA part>-<whole>`), which `list-conns` reports back: a
converged reconcile makes zero load/unload calls, and a changed peer replaces that one connection only
(other peers' SAs are untouched). Its IKE_SA is terminated first, so the new identity/addresses take
effect at once, unless only the role changed (who initiates, where to dial: what the SA part leaves
out) and the SA's hosts are still allowed: then the established SA carries on (`_keeps_sa`; a pool
exposed flips the initiator of its relay connection, which must not cut the relayed path).
The PSK is loaded with owners (every local and remote identity in use) under an id derived from a
slow hash (scrypt) of secret and owners, so charon's `get-shared` answers "already loaded" without
charon ever revealing the secret, and the id does not make a weak PSK cheap to guess.

DPD: `dpd_delay` on every connection; the timeout of IKEv2 DPD is charon's retransmission schedule
(strongswan.conf `retransmit_*`). The initiating side uses dpd_action=restart and close_action=start
(it re-establishes on its own); the responding side uses clear/none. start_action is none on both:
charon ends the SAs of a replaced connection whose old config had start_action=start, so the driver
initiates instead: every reconcile starts (non-blocking) each initiator connection that has no IKE_SA
at all, a just-loaded one or one charon gave up on after a hard failure (e.g. NO_PROPOSAL_CHOSEN from
a peer whose agent has not loaded its side yet). A terminate that finds no SA (it went away on its
own) is not an error.
Simultaneous initiation (`IPsecConnection.mutual`: a NAT-punched pair, both ends initiate at once): charon
completes both exchanges, and when they cross (each end answers the other's IKE_AUTH before its own is back)
it keeps both, two ESTABLISHED IKE_SAs with one CHILD_SA each (`unique = replace` only sees an SA that was
up when it answered the other; when it does, it deletes the older one 10 s later). Every reconcile deletes
the duplicates `duplicates_to_end` picks: both ends keep the SA with the smaller initiator SPI, and the
other one is deleted by the end that answered it, once both have been up `DUPLICATE_GRACE_S` (15 s, so
charon's own delete comes first). Lossless by construction: kernel-libipsec encrypts with the CHILD_SA
installed last for the (shared, fixed) reqid, which at each end of a crossed pair is the one it initiated,
so the deleting end never sends on the duplicate, and its terminate is not forced (the duplicate's SAs stay
until the peer, which moves to the kept SA as it removes its side, answers the DELETE; only what the peer
encrypts in the microseconds between sending that answer and removing its side could come too late; the
test measured 0 lost where the other choice of deleting end loses a round trip). The agent's tunnel
check asks for a reconcile when it sees one (reason `duplicate-sa`); each delete is one log line and counted
as VICI op `terminate_duplicate` (raven_agent_vici_operations_total). A mutual connection has
close_action=none at both ends: with start, the peer re-established whatever was deleted at once (a new
duplicate; after charon's own delete, a new one every 10 s for ever); an SA gone for good is re-initiated by
the driver (an initiator without an IKE_SA).
Reqids: every connection's CHILD_SA gets a fixed reqid of its own (`assign_reqids`: from a hash of the
connection name, in a range charon's dynamic allocator never reaches), never charon's dynamic one. charon
(5.9) re-establishing a CHILD_SA (dpd_action=restart, close_action=start) asks for the reqid the old one
had; by then that reqid was released, and the kernel interface hands released reqids to the next new
allocation and honours an explicit request for an existing reqid WITHOUT checking its traffic selectors.
So after an uplink cut past DPD on a gateway with two peers, the first tunnel back can take the other's
old reqid and the second then joins it: two CHILD_SAs with one reqid, and kernel-libipsec (which picks
the outbound SA by reqid) encrypts one peer's packets with the other peer's SA, which drops them "due to
policy". IKE is up on both ends, ESP to that peer is a black hole until the SAs are torn down. A fixed
reqid per connection is never allocated, released or shared, so a restart comes back on its own.
NAT-T: `encap = yes` forces UDP encapsulation (what NAT'ed peers need anyway, and what kernel-libipsec
does regardless), so the MTU computation can count on ESP-in-UDP; charon detects NAT by itself.

VICI is blocking and its Session is not thread-safe: every call runs in ONE dedicated worker thread,
so the event loop never blocks and calls never interleave. vici's list/initiate/terminate calls are
lazy generators: they are always fully iterated here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import vici
import vici.exception

from raven.dataplane.report import ApplyError, ApplyReport
from raven.dataplane.state import VICI_CONN_PREFIX, IPsecConnection
from raven.dataplane.tunnel import DriverUnavailable
from raven.log import kv

log = logging.getLogger(__name__)

# VICI operations, as counted in ApplyReport.writes and exported as metrics labels.
VICI_OPS: Final = ("load_conn", "unload_conn", "terminate", "load_shared", "unload_shared", "initiate",
                   "load_key", "unload_key", "load_cert", "terminate_duplicate")
CHILD_PREFIX: Final = "inner-"
# Fixed reqids (see the module docstring): [REQID_BASE, REQID_BASE + REQID_SPAN). charon's dynamic reqids count up
# from 1 (one per distinct CHILD_SA selector set, recycled), far below; the range stays under 2^31.
REQID_BASE: Final = 1 << 24
REQID_SPAN: Final = 1 << 28
# How long both IKE_SAs of a duplicate pair must have been ESTABLISHED before the driver deletes one
# (`duplicates_to_end`): charon's own uniqueness check (unique = replace), when it sees the duplicate, deletes the
# older SA 10 s after the newer one came up ("suspected reauthentication"); the driver must not delete the other
# one meanwhile. 5 s of margin for that DELETE exchange (retransmits at 1 s, 2.4 s).
DUPLICATE_GRACE_S: Final = 15
T = TypeVar("T")


class CharonUnavailable(DriverUnavailable):
    """charon's VICI socket cannot be reached (absent, refused, closed, timed out)."""


@dataclass(frozen=True)
class IPsecSettings:
    """Knobs that are the same for every connection of a node."""

    dpd_delay: str = "2s"
    encap: bool = True
    keyingtries: int = 0  # 0: keep trying forever (initiator)
    rekey_time: str = "4h"  # IKE_SA rekeying (the CHILD_SA uses charon's default)
    mobike: bool = False  # peers are fixed gateways; MOBIKE only confuses NAT'ed responders
    # Per VICI request: charon answers in milliseconds; 5 s keeps a hung charon from outlasting the
    # 8 s shutdown grace (raven.runtime.SHUTDOWN_TIMEOUT_S).
    timeout_s: float = 5.0
    nat_t_port: int = 4500  # charon's port_nat_t: where IKE to a non-500 peer port is sent from


@dataclass(frozen=True)
class Credentials:
    """This node's certificate identity as charon needs it (PEM). `key_id`: the key's VICI id (raven.pki.key_id)."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    ca_pem: bytes
    key_id: str


@dataclass(frozen=True)
class _CredsPass:
    """One reconcile's view of the credentials, and the retired keys it unloaded (or found gone)."""

    current: Credentials | None
    retired: frozenset[str]
    unloaded: set[str]


@dataclass(frozen=True)
class TunnelState:
    """One raven-* IKE_SA (and its CHILD_SA) as charon reports it."""

    name: str
    ike_state: str  # ESTABLISHED, CONNECTING, ...
    ike_unique_id: int
    remote_host: str
    remote_port: int
    child_state: str | None  # INSTALLED, REKEYING, ... None when no CHILD_SA
    child_unique_id: int | None
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    encap: bool
    # The IKE_SA's own identity, the same at both ends (who initiated it and both SPIs, hex), whether this end
    # initiated it, and how long it has been ESTABLISHED (s): what `duplicates_to_end` decides from.
    initiator: bool = False
    initiator_spi: str = ""
    responder_spi: str = ""
    established_s: int = 0


@dataclass(frozen=True)
class Duplicate:
    """A duplicate IKE_SA of a connection this end deletes (`end`), and the one both ends keep (`keep`)."""

    end: TunnelState
    keep: TunnelState


def duplicates_to_end(states: Iterable[TunnelState], grace_s: float = DUPLICATE_GRACE_S) -> list[Duplicate]:
    """The duplicate IKE_SAs this end deletes: when both ends of a connection initiate at once (a NAT-punched pair,
    `IPsecConnection.mutual`) and the IKE_AUTH exchanges cross, charon completes both and keeps both (its uniqueness
    check only sees an SA that was ESTABLISHED when it answered the other one). Callers pass the states of mutual
    connections only: at the initiating end of any other one (close_action=start) charon would re-establish the SA
    the peer deleted.

    The rule, the same at both ends without any coordination: among a connection's IKE_SAs that are ESTABLISHED with
    their CHILD_SA INSTALLED, and all so for `grace_s` (`DUPLICATE_GRACE_S`: charon's own cleanup goes first), both
    ends keep the one with the smallest (initiator SPI, responder SPI): both ends see the same SPIs. Each other one
    is deleted by the end that RESPONDED to it, so exactly one end sends one DELETE per duplicate, and it is the end
    that does not send on it: kernel-libipsec encrypts with the CHILD_SA installed last for the reqid (the
    connection's fixed reqid is shared by both), which at each end of a crossed pair is the one it initiated (it
    answered the peer's IKE_AUTH before its own came back). So the deleting end's traffic never used the duplicate;
    the other end's outbound moves to the kept SA when it removes the duplicate on the DELETE, and the packets it
    sent before are ahead of its answer, which the deleting end waits for before removing the duplicate's inbound
    SA (a non-forced terminate); nothing is lost (but, in principle, what the peer encrypts in the microseconds
    between sending its answer and removing its side). An SA that is not up at this end, or a single one, is never
    touched: the only working SA is never torn down."""
    up: dict[str, list[TunnelState]] = {}
    for t in states:
        if t.ike_state == "ESTABLISHED" and t.child_state == "INSTALLED" and t.initiator_spi:
            up.setdefault(t.name, []).append(t)
    out: list[Duplicate] = []
    for _name, sas in sorted(up.items()):
        if len(sas) < 2 or min(t.established_s for t in sas) < grace_s:
            continue
        keep = min(sas, key=lambda t: (int(t.initiator_spi, 16), int(t.responder_spi or "0", 16)))
        out.extend(Duplicate(t, keep) for t in sas if t is not keep and not t.initiator)
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def assign_reqids(names: Iterable[str]) -> dict[str, int]:
    """A distinct fixed reqid per connection name: from a hash of the name (so it does not depend on what else is
    loaded, and an agent restart computes the same), moved to the next free value on the rare collision (names
    in sorted order, so the outcome is deterministic)."""
    out: dict[str, int] = {}
    taken: set[int] = set()
    for name in sorted(set(names)):
        slot = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % REQID_SPAN
        while REQID_BASE + slot in taken:
            slot = (slot + 1) % REQID_SPAN
        out[name] = REQID_BASE + slot
        taken.add(out[name])
    return out


def conn_config(conn: IPsecConnection, settings: IPsecSettings, ca_pem: bytes | None = None,
                reqid: int = 0) -> dict[str, Any]:
    """The VICI load-conn message body for one connection (without the fingerprinted child name).

    `ca_pem`: the cluster CA, required for `auth = pubkey` (the peer's certificate must chain to it).
    `reqid`: the CHILD_SA's fixed reqid (`assign_reqids`); 0 leaves it to charon (not what the driver loads)."""
    initiator = conn.initiator
    child: dict[str, Any] = {
        "mode": "tunnel",
        "local_ts": [conn.local_ts],
        "remote_ts": [conn.remote_ts],
        "esp_proposals": list(conn.esp_proposals),
        # The driver initiates itself (after loading, and whenever an initiator has no IKE_SA): charon ends the
        # SAs of a replaced connection whose old config had start_action=start, so a change of role or address
        # on an established pair (a pool exposed) would cut it.
        "start_action": "none",
        "dpd_action": "restart" if initiator else "clear",
        # Not for a mutual connection: the peer deletes the duplicate of a simultaneous initiation, and charon would
        # re-establish it at once (a new duplicate; with charon's own uniqueness check, a new one every 10 s). The
        # driver re-initiates an initiator that has no IKE_SA left.
        "close_action": "start" if initiator and not conn.mutual else "none",
    }
    if reqid:
        child["reqid"] = reqid
    # IKE to a peer's NAT-T port (4500) must come from our NAT-T socket with the non-ESP marker
    # (RFC 3948). Left at 500, charon sends unmarked IKE from port 500 to 4500; the peer takes it for
    # IKE only while the NAT keeps source port 500. A second node behind the same NAT (the new gateway
    # after a failover) gets another source port, and its unmarked IKE is dropped as ESP: no tunnel.
    local_port = {"local_port": settings.nat_t_port} if initiator and conn.remote_port != 500 else {}
    return {
        "version": 2,
        **local_port,
        "local_addrs": list(conn.local_addrs),
        "remote_addrs": list(conn.remote_addrs),
        "remote_port": conn.remote_port,
        "proposals": list(conn.proposals),
        "encap": "yes" if settings.encap else "no",
        "mobike": "yes" if settings.mobike else "no",
        "dpd_delay": settings.dpd_delay,
        "rekey_time": settings.rekey_time,
        "keyingtries": settings.keyingtries,
        "unique": "replace",
        **_auth(conn, ca_pem),
        "children": {"inner": child},
    }


def _auth(conn: IPsecConnection, ca_pem: bytes | None) -> dict[str, Any]:
    if conn.auth == "psk":
        return {"local": {"auth": "psk", "id": conn.local_id}, "remote": {"auth": "psk", "id": conn.remote_id}}
    if ca_pem is None:
        raise ValueError("a pubkey connection needs the cluster CA")
    # The certificate is sent always: the peer must not depend on having it cached.
    return {
        "send_cert": "always",
        "local": {"auth": "pubkey", "id": conn.local_id},
        "remote": {"auth": "pubkey", "id": conn.remote_id, "cacerts": [ca_pem.decode()]},
    }


# What a running SA does not depend on: who initiates (and its NAT-T source port) and where to dial. A connection
# whose change is only here keeps its established SA (`_keeps_sa`); any other change (identities, credentials,
# proposals, selectors, timers) ends it.
_ROLE_KEYS: Final = ("local_port", "local_addrs", "remote_addrs", "remote_port")
_CHILD_ROLE_KEYS: Final = ("start_action", "dpd_action", "close_action")


def _digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def child_name(config: dict[str, Any]) -> str:
    """`inner-<what the SA depends on>-<everything>`: list-conns reports it back, so a reconcile sees both what
    changed and whether an established SA survives the change."""
    sa = {k: v for k, v in config.items() if k not in _ROLE_KEYS and k != "children"}
    sa["children"] = {n: {k: v for k, v in c.items() if k not in _CHILD_ROLE_KEYS}
                      for n, c in config["children"].items()}
    return f"{CHILD_PREFIX}{_digest(sa)[:12]}-{_digest(config)[:8]}"


def _sa_part(child: str) -> str | None:
    """The SA part of a loaded child's name; None for a name of an older version (one digest only)."""
    body = child.removeprefix(CHILD_PREFIX)
    return body.split("-")[0] if child.startswith(CHILD_PREFIX) and body.count("-") == 1 else None


def _keeps_sa(loaded: set[str], child: str, conn: IPsecConnection, hosts: tuple[str, str]) -> bool:
    """Whether the established SA of a connection loaded with children `loaded` stays valid under the new config
    (child `child`): same SA part, and its (local, remote) hosts still allowed by the new addresses."""
    local, remote = hosts
    return (len(loaded) == 1 and _sa_part(next(iter(loaded))) == _sa_part(child) is not None
            and ("%any" in conn.remote_addrs or remote in conn.remote_addrs)
            and (not conn.local_addrs or "%any" in conn.local_addrs or local in conn.local_addrs))


def _fingerprinted(conn: IPsecConnection, settings: IPsecSettings,
                   ca_pem: bytes | None = None, reqid: int = 0) -> tuple[str, dict[str, Any]]:
    config = conn_config(conn, settings, ca_pem, reqid)
    name = child_name(config)
    config["children"] = {name: config["children"]["inner"]}
    return name, config


class IPsecDriver:
    """Keeps charon's raven-* connections and PSK equal to the desired set. See the module docstring."""

    daemon = "charon"  # what /readyz names when it is down

    def __init__(
        self,
        socket_path: str,
        psk: str,
        *,
        prefix: str = VICI_CONN_PREFIX,
        settings: IPsecSettings | None = None,
        on_op: Callable[[str, int], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.prefix = prefix
        self.settings = settings or IPsecSettings()
        self._psk = psk
        self._on_op = on_op
        self._session: Any = None
        self._sock: socket.socket | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="raven-vici")
        self._psk_ids: dict[tuple[str, ...], str] = {}
        self._creds: Credentials | None = None
        self._retired_keys: set[str] = set()
        self._certs_loaded: tuple[int, bytes, bytes] | None = None  # (session, cert, CA) loaded on it
        self.connects = 0  # how many times a session was (re)established

    # ---- plumbing (worker thread only) ---------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    def _connect(self) -> Any:
        if self._session is not None:
            return self._session
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.settings.timeout_s)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            raise CharonUnavailable(f"charon unreachable at {self.socket_path}: {exc.strerror or exc}") from exc
        self._sock = sock
        self._session = vici.Session(sock)
        self.connects += 1
        log.info("vici connected", extra=kv(socket=self.socket_path, connects=self.connects))
        return self._session

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._session = None

    def _with_session(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(session)`; on a broken connection reconnect once (charon restarted) and rerun."""
        for attempt in (1, 2):
            session = self._connect()
            try:
                return fn(session)
            except (OSError, vici.exception.SessionException) as exc:
                self._disconnect()
                if attempt == 2:
                    raise CharonUnavailable(f"charon at {self.socket_path} failed: {exc}") from exc
                log.warning("vici connection lost, reconnecting", extra=kv(socket=self.socket_path, reason=str(exc)))
        raise AssertionError("unreachable")

    # ---- public ----------------------------------------------------------------------------------

    def set_credentials(self, creds: Credentials | None, retired_key_ids: Iterable[str] = ()) -> None:
        """Use `creds` from the next reconcile on; `retired_key_ids` (previous keys of ours) are unloaded
        once the new key is loaded. Established SAs are kept."""
        if self._creds is not None and creds is not None and self._creds.key_id != creds.key_id:
            self._retired_keys.add(self._creds.key_id)
        self._retired_keys.update(k for k in retired_key_ids if creds is None or k != creds.key_id)
        self._creds = creds

    @property
    def credentials(self) -> Credentials | None:
        return self._creds

    async def reconcile(self, conns: Iterable[IPsecConnection]) -> ApplyReport:
        """Make charon's raven-* connections and PSK match `conns`. Zero VICI writes when converged."""
        desired = {c.name: c for c in conns}
        bad = [n for n in desired if not n.startswith(self.prefix)]
        if bad:
            raise ValueError(f"connection names must start with {self.prefix!r}: {bad}")
        start = time.perf_counter()
        creds = self._snapshot()
        report = await self._run(lambda: self._with_session(lambda s: self._reconcile_sync(s, desired, creds)))
        self._retired_keys -= creds.unloaded
        report.duration_s = time.perf_counter() - start
        return report

    async def states(self) -> list[TunnelState]:
        return await self._run(lambda: self._with_session(self._states_sync))

    async def available(self) -> bool:
        """Whether charon answers on the VICI socket now (a connect, nothing sent): cheap enough to poll a few
        times a second while charon is down, so its return is noticed at once instead of after a reconcile
        backoff that grew while it was away (up to 30 s)."""

        def attempt() -> bool:
            if self._session is not None:
                return True
            if not os.path.exists(self.socket_path):
                return False
            try:
                self._connect()
            except CharonUnavailable:
                return False
            return True

        return await self._run(attempt)

    async def connections(self) -> dict[str, set[str]]:
        """The raven-* connections charon has loaded -> their CHILD_SA names (list-conns; read only)."""
        return await self._run(lambda: self._with_session(self._loaded))

    async def initiate_logged(self, name: str, child: str, timeout_s: float) -> tuple[bool, list[str]]:
        """Start `name`'s CHILD_SA `child` and wait up to `timeout_s` for it, with charon's log of the attempt
        (`raven diagnose`: charon says why an SA does not come up, e.g. AUTHENTICATION_FAILED). Returns
        (established, log lines). The same initiate the reconciler sends for a dead initiator."""

        def attempt(s: Any) -> tuple[bool, list[str]]:
            lines: list[str] = []
            try:
                for event in s.initiate({"ike": name, "child": child, "timeout": int(timeout_s * 1000),
                                         "init-limits": "no", "loglevel": 1}):
                    lines.append(_s(event.get("msg", b"")))
            except vici.exception.CommandException as exc:
                lines.append(str(exc))
                return False, lines
            return True, lines

        return await self._run(lambda: self._with_session(attempt))

    async def listen_log(self, wait_s: float, keep: Callable[[str, str], bool]) -> list[str]:
        """charon's log events for `wait_s` seconds, those for which `keep(ike_sa_name, message)` holds (a
        responder cannot start an SA: it can only hear why the peer's attempts fail)."""

        def listen(s: Any) -> list[str]:
            lines: list[str] = []
            deadline = time.monotonic() + wait_s
            for _kind, event in s.listen(["log"], timeout=0.5):
                if event is not None:
                    msg, ike = _s(event.get("msg", b"")), _s(event.get("ikesa-name", b""))
                    if keep(ike, msg):
                        lines.append(msg)
                if time.monotonic() >= deadline:
                    break
            return lines

        # A fresh session: `listen` registers for events, which must not linger on the shared one.
        await self._run(self._disconnect)
        try:
            return await self._run(lambda: self._with_session(listen))
        finally:
            await self._run(self._disconnect)

    async def cleanup(self) -> ApplyReport:
        """Terminate and unload every raven-* connection, our PSK and our keys; nothing else."""
        start = time.perf_counter()
        if self._creds is not None:
            self.set_credentials(None, [self._creds.key_id])
        creds = self._snapshot()
        report = await self._run(lambda: self._with_session(lambda s: self._reconcile_sync(s, {}, creds)))
        self._retired_keys -= creds.unloaded
        report.duration_s = time.perf_counter() - start
        return report

    async def close(self) -> None:
        await self._run(self._disconnect)
        self._worker.shutdown(wait=False)

    # ---- the work (worker thread) --------------------------------------------------------------

    def _count(self, report: ApplyReport, op: str) -> None:
        report.writes[op] += 1
        if self._on_op is not None:
            self._on_op(op, 1)

    def _loaded(self, s: Any) -> dict[str, set[str]]:
        """Our loaded connections -> their CHILD_SA names (the fingerprints)."""
        out: dict[str, set[str]] = {}
        for item in _drain(s.list_conns()):
            for name, body in item.items():
                if name.startswith(self.prefix):
                    out[name] = set(body.get("children", {}).keys())
        return out

    def _active_ike(self, sas: list[Any]) -> dict[str, tuple[str, str]]:
        """Our IKE_SAs (list-sas items) by connection name: (local host, remote host)."""
        return {name: (_s(ike.get("local-host", b"")), _s(ike.get("remote-host", b"")))
                for item in sas for name, ike in item.items() if name.startswith(self.prefix)}

    def _snapshot(self) -> _CredsPass:
        """What the worker may read of the credentials (set_credentials runs on the event loop's thread)."""
        return _CredsPass(self._creds, frozenset(self._retired_keys), set())

    def _reconcile_sync(self, s: Any, desired: dict[str, IPsecConnection], creds: _CredsPass) -> ApplyReport:
        report = ApplyReport(writes=dict.fromkeys(VICI_OPS, 0))
        desired = self._loadable(desired, creds.current, report)
        loaded = self._loaded(s)
        ca_pem = creds.current.ca_pem if creds.current is not None else None
        reqids = assign_reqids(desired)
        wanted = {name: _fingerprinted(conn, self.settings, ca_pem, reqids[name]) for name, conn in desired.items()}
        to_load = sorted(n for n, (child, _cfg) in wanted.items() if loaded.get(n) != {child})
        to_unload = sorted(n for n in loaded if n not in wanted)
        initiators = {n for n, c in desired.items() if c.initiator}
        sas = _drain(s.list_sas()) if to_load or to_unload or initiators else []
        active = self._active_ike(sas)
        # Credentials first: a connection that starts on load needs them.
        self._sync_psk(s, desired.values(), report)
        self._sync_creds(s, creds, report)
        for name in to_unload:
            if name in active:
                self._terminate(s, name, report)
            self._op(report, "unload_conn", name, s.unload_conn, {"name": name})
        for name in to_load:
            if name in active and not _keeps_sa(loaded.get(name, set()), wanted[name][0], desired[name],
                                                active[name]):
                # Changed peer: drop its old SA so the new identity/addresses/proposals apply now.
                self._terminate(s, name, report)
                del active[name]
            _child, cfg = wanted[name]
            self._op(report, "load_conn", name, s.load_conn, {name: cfg})
            log.info("vici connection loaded", extra=kv(conn=name, remote=",".join(desired[name].remote_addrs),
                                                        initiator=desired[name].initiator))
        # Every initiator without an IKE_SA is started: one just loaded (start_action is none, see conn_config),
        # and one whose IKE_SA is gone for good (charon does not retry after a hard failure, e.g.
        # NO_PROPOSAL_CHOSEN from a peer whose agent had not loaded its side yet, AUTHENTICATION_FAILED).
        # Non-blocking; an SA still being set up is listed and left alone.
        for name in sorted(initiators - active.keys()):
            child, _cfg = wanted[name]
            self._op(report, "initiate", name, s.initiate,
                     {"ike": name, "child": child, "timeout": -1, "init-limits": "no"})
            if name not in to_load:
                log.info("vici connection re-initiated", extra=kv(conn=name, reason="no IKE_SA"))
        # Only where both ends initiate: elsewhere the initiating end (close_action=start) would re-establish it.
        mutual = {n for n, c in desired.items() if c.mutual} - set(to_load)
        for dup in duplicates_to_end(t for t in self._tunnel_states(sas) if t.name in mutual):
            self._end_duplicate(s, dup, report)
        if to_load or to_unload:
            log.info("vici reconciled", extra=kv(loaded=len(to_load), unloaded=len(to_unload)))
        return report

    def _loadable(self, desired: dict[str, IPsecConnection], current: Credentials | None,
                  report: ApplyReport) -> dict[str, IPsecConnection]:
        """The connections whose credentials exist; each other one is an error (loading it would only fail)."""
        out: dict[str, IPsecConnection] = {}
        for name, conn in desired.items():
            if conn.auth == "pubkey" and current is None:
                report.errors.append(ApplyError("vici", "load_conn", name, "no node certificate yet"))
            elif conn.auth == "psk" and not self._psk:
                report.errors.append(ApplyError("vici", "load_conn", name, "no pre-shared key (--ipsec-auth=psk)"))
            else:
                out[name] = conn
        return out

    def _sync_creds(self, s: Any, cp: _CredsPass, report: ApplyReport) -> None:
        """Our key and certificates loaded (again after a charon restart), retired keys unloaded."""
        keys = {_s(k) for k in s.get_keys().get("keys", [])} if (cp.current or cp.retired) else set()
        creds = cp.current
        if creds is not None:
            if creds.key_id not in keys:
                self._op(report, "load_key", creds.key_id, s.load_key, {"type": "ecdsa", "data": creds.key_pem})
                self._certs_loaded = None  # a charon without our key (restarted) has none of our certificates
                log.info("vici key loaded", extra=kv(key_id=creds.key_id))
            want = (self.connects, creds.cert_pem, creds.ca_pem)
            if self._certs_loaded != want:
                # Loading an identical certificate again is a no-op in charon: safe after an agent restart.
                self._op(report, "load_cert", "ca", s.load_cert, {"type": "X509", "flag": "CA", "data": creds.ca_pem})
                self._op(report, "load_cert", "node", s.load_cert,
                         {"type": "X509", "flag": "NONE", "data": creds.cert_pem})
                if not report.errors:
                    self._certs_loaded = want
        for key_id in sorted(cp.retired):
            errors = len(report.errors)
            if key_id in keys:
                self._op(report, "unload_key", key_id, s.unload_key, {"id": key_id})
                log.info("vici key unloaded", extra=kv(key_id=key_id, reason="retired"))
            if len(report.errors) == errors:  # a failed unload is tried again by the next reconcile
                cp.unloaded.add(key_id)

    def _op(self, report: ApplyReport, op: str, name: str, call: Callable[..., Any], *args: Any) -> None:
        self._count(report, op)
        try:
            result = call(*args)
            if op in ("terminate", "initiate", "terminate_duplicate"):
                _drain(result)  # lazy generators: nothing is sent until iterated
        except vici.exception.CommandException as exc:
            if op in ("terminate", "terminate_duplicate") and "no matching SAs" in str(exc):
                return  # the SA went away on its own since we listed it: the goal is met
            report.errors.append(ApplyError("vici", op, name, str(exc)))
            # debug: whoever holds the report logs each failure once (the agent's loop, --cleanup).
            log.debug("vici operation failed", extra=kv(op=op, conn=name, reason=str(exc)))

    def _end_duplicate(self, s: Any, dup: Duplicate, report: ApplyReport) -> None:
        """Delete one duplicate IKE_SA (`duplicates_to_end`). Not forced: charon keeps the duplicate's SAs until the
        peer answers the DELETE, so what the peer sent on it before it removed its side still arrives."""
        end, keep = dup.end, dup.keep
        self._op(report, "terminate_duplicate", end.name, s.terminate, {"ike-id": end.ike_unique_id, "timeout": -1})
        log.info("vici duplicate IKE_SA deleted",
                 extra=kv(conn=end.name, ike_id=end.ike_unique_id, spis=f"{end.initiator_spi}_i {end.responder_spi}_r",
                          kept=f"{keep.initiator_spi}_i {keep.responder_spi}_r", kept_ike_id=keep.ike_unique_id,
                          reason="simultaneous initiation: both SAs up, the kept one has the smaller initiator SPI, "
                                 "the peer initiated this one"))

    def _terminate(self, s: Any, name: str, report: ApplyReport) -> None:
        # force: do not wait for a DELETE answer from a peer that may be gone; timeout=-1: return at once.
        self._op(report, "terminate", name, s.terminate, {"ike": name, "force": "yes", "timeout": -1})

    def _psk_id(self, owners: tuple[str, ...]) -> str:
        key = owners
        if key not in self._psk_ids:
            salt = b"raven-psk-id\0" + "\0".join(owners).encode()
            digest = hashlib.scrypt(self._psk.encode(), salt=salt, n=2**14, r=8, p=1, dklen=12)
            self._psk_ids = {key: f"{self.prefix}psk-{digest.hex()}"}
        return self._psk_ids[key]

    def _sync_psk(self, s: Any, conns: Iterable[IPsecConnection], report: ApplyReport) -> None:
        psk_conns = [c for c in conns if c.auth == "psk"]
        owners = tuple(sorted({c.local_id for c in psk_conns} | {c.remote_id for c in psk_conns}))
        have = {_s(k) for k in s.get_shared().get("keys", []) if _s(k).startswith(f"{self.prefix}psk-")}
        want = {self._psk_id(owners)} if owners else set()
        for key_id in sorted(want - have):
            self._op(
                report, "load_shared", key_id, s.load_shared,
                {"id": key_id, "type": "IKE", "data": self._psk, "owners": list(owners)},
            )  # fmt: skip
        for key_id in sorted(have - want):
            self._op(report, "unload_shared", key_id, s.unload_shared, {"id": key_id})

    def _states_sync(self, s: Any) -> list[TunnelState]:
        return self._tunnel_states(_drain(s.list_sas()))

    def _tunnel_states(self, sas: list[Any]) -> list[TunnelState]:
        """Our IKE_SAs (list-sas items) as TunnelStates."""
        out: list[TunnelState] = []
        for item in sas:
            for name, ike in item.items():
                if not name.startswith(self.prefix):
                    continue
                children = list(ike.get("child-sas", {}).values())
                # Prefer the installed CHILD_SA (during a rekey two exist briefly).
                children.sort(key=lambda c: _s(c.get("state", b"")) != "INSTALLED")
                child = children[0] if children else None
                out.append(
                    TunnelState(
                        name=name,
                        ike_state=_s(ike.get("state", b"")),
                        ike_unique_id=int(ike.get("uniqueid", 0)),
                        remote_host=_s(ike.get("remote-host", b"")),
                        remote_port=int(ike.get("remote-port", 0)),
                        child_state=_s(child["state"]) if child else None,
                        child_unique_id=int(child["uniqueid"]) if child else None,
                        bytes_in=sum(int(c.get("bytes-in", 0)) for c in children),
                        bytes_out=sum(int(c.get("bytes-out", 0)) for c in children),
                        packets_in=sum(int(c.get("packets-in", 0)) for c in children),
                        packets_out=sum(int(c.get("packets-out", 0)) for c in children),
                        encap=any(_s(c.get("encap", b"no")) == "yes" for c in children),
                        initiator=_s(ike.get("initiator", b"no")) == "yes",
                        initiator_spi=_s(ike.get("initiator-spi", b"")),
                        responder_spi=_s(ike.get("responder-spi", b"")),
                        established_s=int(ike.get("established", 0)),
                    )
                )
        return sorted(out, key=lambda t: (t.name, t.ike_unique_id))


def _drain(gen: Iterator[Any] | Any) -> list[Any]:
    """Iterate vici's lazy generators to the end (nothing is sent until they are iterated)."""
    return list(gen)
