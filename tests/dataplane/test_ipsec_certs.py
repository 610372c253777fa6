"""IPsecDriver in certificate mode (auth = pubkey) with real charons: per-node identities from a cluster CA.

Same lab as test_ipsec.py (ga initiates to gb and gc). Node names are the gateway names here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from raven.agent.addressing import node_ike_identity
from raven.dataplane.ipsec import Credentials, IPsecDriver
from raven.dataplane.kernel import KernelApplier
from raven.dataplane.state import IPsecConnection
from raven.pki import CertificateAuthority, key_id, new_ca, new_private_key, node_csr, sign_node
from tests.dataplane.test_ipsec import Gw, gws, installed, kernel_state, ping, wait_for  # noqa: F401
from tests.dataplane.test_ipsec import bring_up as bring_up_with

pytestmark = pytest.mark.root


def credentials(ca: CertificateAuthority, node: str, lifetime_s: float = 3600) -> Credentials:
    key = new_private_key()
    cert = sign_node(ca, node_csr(key, node), node, lifetime_s)
    return Credentials(key, cert, ca.cert_pem, key_id(key))


def cconn(me: Gw, peer: Gw, initiator: bool, local: str | None = None, remote: str | None = None,
          name: str | None = None, local_ts: str | None = None) -> IPsecConnection:
    return IPsecConnection(
        name=name or f"raven-{peer.name}",
        local_id=node_ike_identity(local or me.name),
        remote_id=node_ike_identity(remote or peer.name),
        local_addrs=(me.underlay,),
        remote_addrs=(peer.underlay,) if initiator else ("%any",),
        remote_port=4500,
        local_ts=local_ts or f"{me.inner}/32",
        remote_ts=f"{peer.inner}/32",
        initiator=initiator,
        auth="pubkey",
    )


@pytest.fixture
def ca() -> CertificateAuthority:
    return new_ca()


@pytest.fixture
async def cdrivers(gws: dict[str, Gw], ca: CertificateAuthority  # noqa: F811
                   ) -> AsyncIterator[dict[str, tuple[KernelApplier, IPsecDriver]]]:
    made = {n: (KernelApplier(netns=g.ns.name), IPsecDriver(str(g.charon.vici_socket), "")) for n, g in gws.items()}
    for n, (_k, d) in made.items():
        d.set_credentials(credentials(ca, n))
    try:
        yield made
    finally:
        for k, d in made.values():
            await k.close()
            await d.close()


async def bring_up(gws: dict[str, Gw], drivers: dict[str, tuple[KernelApplier, IPsecDriver]]) -> None:  # noqa: F811 (the gws fixture)
    """The PSK test's bring-up with certificate connections: no shared key, this node's key and two certificates."""
    await bring_up_with(gws, drivers, cconn, {"load_shared": 0, "load_key": 1, "load_cert": 2})


def sas(gw: Gw) -> dict[str, Any]:
    with gw.charon.session() as s:
        return {name: ike for item in s.list_sas() for name, ike in item.items()}


async def test_certificates_authenticate_and_a_converged_reconcile_calls_nothing(
    gws: dict[str, Gw], cdrivers: dict[str, tuple[KernelApplier, IPsecDriver]]  # noqa: F811
) -> None:
    ga, gb = gws["ga"], gws["gb"]
    await bring_up(gws, cdrivers)
    assert await wait_for(lambda: ping(ga.ns, ga.pod, gb.pod)), ga.charon.read_log()[-3000:]
    ike = sas(ga)["raven-gb"]
    assert ike["remote-id"] == b"raven-node-gb" and ike["local-id"] == b"raven-node-ga"
    again = await cdrivers["ga"][1].reconcile([cconn(ga, gb, True), cconn(ga, gws["gc"], True)])
    assert again.total_writes == 0, again.writes
    # No PSK anywhere: the tunnel stands on the certificates alone.
    with ga.charon.session() as s:
        assert not [k for k in s.get_shared().get("keys", []) if k.startswith(b"raven-")]


async def test_a_node_cannot_impersonate_another_gateway_with_its_own_certificate(
    gws: dict[str, Gw], cdrivers: dict[str, tuple[KernelApplier, IPsecDriver]], ca: CertificateAuthority  # noqa: F811
) -> None:
    """gc holds a valid certificate of the cluster CA (for gc). It claims gb's tunnel to ga two ways: with
    gb's identity (it has no key for it) and with its own identity for gb's traffic selectors (ga only
    accepts gb's identity on that connection). Both fail; ga's SA with gb stays and carries traffic."""
    ga, gb, gc = gws["ga"], gws["gb"], gws["gc"]
    await bring_up(gws, cdrivers)
    before = sas(ga)["raven-gb"]["uniqueid"]
    attacks = [
        cconn(gc, ga, True, local="gb", name="raven-evil-claim-id", local_ts=f"{gb.inner}/32"),
        cconn(gc, ga, True, name="raven-evil-own-id", local_ts=f"{gb.inner}/32"),
    ]
    gc_driver = cdrivers["gc"][1]
    report = await gc_driver.reconcile([cconn(gc, ga, False), *attacks])
    assert report.writes["initiate"] == 2 and report.writes["load_conn"] == 2  # the driver starts both attacks
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert sas(ga)["raven-gb"]["uniqueid"] == before
        # No CHILD_SA for gb's selectors ever comes up on the impostor. (With its own identity, gc's IKE_SA
        # may be accepted: gc IS a node of the cluster, and ga's connection to gc matches it; but ga
        # refuses gb's selectors on it.)
        got = sas(gc)
        assert not [a.name for a in attacks if got.get(a.name, {}).get("child-sas")], got
    log = gc.charon.read_log()
    assert "no private key found for 'raven-node-gb'" in log, log[-3000:]
    assert "TS_UNACCEPTABLE" in log, log[-3000:]
    assert ping(ga.ns, ga.pod, gb.pod)


async def test_a_certificate_from_another_ca_is_refused(
    gws: dict[str, Gw], cdrivers: dict[str, tuple[KernelApplier, IPsecDriver]]  # noqa: F811
) -> None:
    ga, gc = gws["ga"], gws["gc"]
    await bring_up(gws, cdrivers)
    rogue = new_ca()
    gc_driver = cdrivers["gc"][1]
    creds = credentials(rogue, "gb")  # a rogue CA's certificate naming gb
    gc_driver.set_credentials(Credentials(creds.key_pem, creds.cert_pem, gc_driver.credentials.ca_pem  # type: ignore
                                          if gc_driver.credentials else b"", creds.key_id))
    attack = cconn(gc, ga, True, local="gb", remote="ga", name="raven-evil-rogue", local_ts=f"{gws['gb'].inner}/32")
    before = sas(ga)["raven-gb"]["uniqueid"]
    assert (await gc_driver.reconcile([attack])).writes["load_conn"] == 1
    assert await wait_for(lambda: "raven-node-gb" in ga.charon.read_log() and (
        "no trusted" in ga.charon.read_log() or "AUTHENTICATION_FAILED" in gc.charon.read_log()), 10), \
        ga.charon.read_log()[-3000:]
    assert sas(ga)["raven-gb"]["uniqueid"] == before
    assert ping(ga.ns, ga.pod, gws["gb"].pod)


async def test_renewal_loads_the_new_certificate_keeps_every_sa_and_authenticates_the_next_one_with_it(
    gws: dict[str, Gw], cdrivers: dict[str, tuple[KernelApplier, IPsecDriver]], ca: CertificateAuthority  # noqa: F811
) -> None:
    ga, gb = gws["ga"], gws["gb"]
    await bring_up(gws, cdrivers)
    ga_driver = cdrivers["ga"][1]
    ids = {n: ike["uniqueid"] for n, ike in sas(ga).items()}
    old = ga_driver.credentials
    assert old is not None
    new = credentials(ca, "ga")
    ga_driver.set_credentials(new)
    conns = [cconn(ga, gb, True), cconn(ga, gws["gc"], True)]
    report = await ga_driver.reconcile(conns)
    assert report.ok, report.errors
    assert (report.writes["load_key"], report.writes["load_cert"], report.writes["unload_key"]) == (1, 2, 1)
    assert report.writes["load_conn"] == report.writes["terminate"] == 0
    assert {n: ike["uniqueid"] for n, ike in sas(ga).items()} == ids  # every SA kept
    with ga.charon.session() as s:
        keys = {k.decode() for k in s.get_keys()["keys"]}
    assert new.key_id in keys and old.key_id not in keys
    assert (await ga_driver.reconcile(conns)).total_writes == 0
    # A new IKE_SA (e.g. after a peer restart) authenticates with the new certificate: the old key is gone.
    with ga.charon.session() as s:
        list(s.terminate({"ike": "raven-gb", "force": "yes", "timeout": -1}))
    await ga_driver.reconcile(conns)
    assert await wait_for(lambda: installed(ga_driver, "raven-gb")), ga.charon.read_log()[-3000:]
    assert ping(ga.ns, ga.pod, gb.pod)


async def test_a_pubkey_connection_waits_for_credentials(gws: dict[str, Gw]) -> None:  # noqa: F811
    ga, gb = gws["ga"], gws["gb"]
    driver = IPsecDriver(str(ga.charon.vici_socket), "")
    try:
        report = await driver.reconcile([cconn(ga, gb, True)])
        assert report.writes["load_conn"] == 0
        assert [e.reason for e in report.errors] == ["no node certificate yet"]
    finally:
        await driver.close()


async def test_cleanup_unloads_our_keys_and_nothing_else(
    gws: dict[str, Gw], cdrivers: dict[str, tuple[KernelApplier, IPsecDriver]], ca: CertificateAuthority  # noqa: F811
) -> None:
    ga = gws["ga"]
    await bring_up(gws, cdrivers)
    other = new_private_key()  # someone else's key in the same charon
    with ga.charon.session() as s:
        s.load_key({"type": "ecdsa", "data": other})
    ours = cdrivers["ga"][1].credentials
    assert ours is not None
    report = await cdrivers["ga"][1].cleanup()
    assert report.ok and report.writes["unload_key"] == 1 and report.writes["unload_conn"] == 2
    with ga.charon.session() as s:
        keys = {k.decode() for k in s.get_keys()["keys"]}
        assert not [c for item in s.list_conns() for c in item if c.startswith("raven-")]
    assert keys == {key_id(other)}
