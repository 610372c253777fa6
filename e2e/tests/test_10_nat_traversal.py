"""NAT traversal with charon through iptables NAT routers (issue 15): the NAT-type matrix, time to direct,
reachability throughout, NAT rebinding and a router reboot under a 10 ms probe.

Its own small lab (`e2e.natlab.PunchLab`, prefix ``<session prefix>n``): two public hosts play the reachable
gateways (pub0 also relays), two hosts behind NAT routers of the kinds under test play NAT'd gateways. Each host
dials both public hosts from port 4500; the public hosts' SA lists are the rendezvous (`Sighting`s), and each
host then runs NAT traversal's pure core on its own, as an agent would (`infer`, `decide_pair`, `plan` with the
shared `PunchSchedule`), loading or unloading its `direct` connection from the plan. "Verified" is this lab's
make-before-break input: the direct CHILD_SA installed at both ends and a ping through it answered.

`test_rendezvous_in_the_session_cluster` checks the agents' and the controller's side in the shared cluster: the
reachable gateways' agents publish the NAT'd gateways' mappings in their PathReports, `raven status` infers from
them, and the controller publishes the inference in each NAT'd Gateway's active endpoint config.

The agents themselves (their plan holding the punch connections, routing moving the pair, both drivers) are proven
on a full Raven cluster in `test_10_nat_agents.py`; this lab covers the NAT kinds, which that cluster (port-preserving
MASQUERADE) does not. Figures go to MEASUREMENTS; bounds are generous (the aims: direct within 10 s, <= 3 s outage
on a break)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import pytest

from e2e.cluster import RavenCluster
from e2e.natlab import NAT_KINDS, NatKind, PunchLab, inner, wait_for
from e2e.netlab import Lab
from e2e.probe import ContinuousProbe, ProbeResult, ping
from raven.kube.client import PATHREPORTS
from raven.nattraversal.core import NatInference, PairState, PunchSchedule, decide_pair, from_config, infer, plan

from .conftest import MEASUREMENTS
from .conftest import PREFIX as SESSION_PREFIX
from .test_09_status import status_json

pytestmark = [pytest.mark.root, pytest.mark.slow]
PREFIX = f"{SESSION_PREFIX}n"  # its own small labs (rven by default)
SCHEDULE = PunchSchedule()
# The matrix's expected outcome: direct wherever the mappings and filters allow.
RELAYED: frozenset[frozenset[str]] = frozenset({frozenset({"port-restricted", "symmetric"}), frozenset({"symmetric"})})
SHORT = [("port-restricted", "port-restricted"), ("full-cone", "symmetric"), ("port-restricted", "symmetric"),
         ("symmetric", "symmetric")]
PAIRS = list(itertools.combinations_with_replacement(NAT_KINDS, 2))


@dataclass
class Run:
    kinds: tuple[NatKind, NatKind]
    punched: bool = False
    direct_s: float | None = None  # from the first attempt's start to verified at both ends
    from_up_s: float | None = None  # from both relay tunnels up to verified
    decisions: list[str] = field(default_factory=list)
    inferences: dict[str, NatInference] = field(default_factory=dict)
    loaded: list[bool] = field(default_factory=lambda: [False, False])
    states: list[dict[str, PairState]] = field(default_factory=lambda: [{}, {}])


def _verified(pl: PunchLab, i: int) -> bool:
    j = 1 - i
    return (pl.direct_installed(i) and pl.direct_installed(j)
            and ping(pl.net.sites[i].host, inner(j), count=1, wait=1.0).ok)


def _step(pl: PunchLab, run: Run, now: float) -> bool:
    """One plan at each end; returns True when both are direct."""
    direct = []
    for i in (0, 1):
        me, peer = f"h{i}", f"h{1 - i}"
        verified = {peer: _verified(pl, i)} if run.loaded[i] else {}
        p = plan(me, run.inferences, [peer], run.states[i], verified, now, SCHEDULE)
        run.states[i] = dict(p.states)
        run.decisions = [d.reason for d in p.decisions]
        if p.punch and not run.loaded[i]:
            t = p.punch[0]
            pl.punch(i, 1 - i, t.address, t.port)
            run.loaded[i] = run.punched = True
        elif not p.punch and run.loaded[i]:
            pl.unpunch(i)
            run.loaded[i] = False
        direct.append(bool(p.direct_links))
    return all(direct)


def _until_direct(pl: PunchLab, run: Run, t_up: float, timeout: float) -> None:
    now = time.time()
    seen = pl.sightings(since=float(int(now)))
    run.inferences = {f"h{i}": infer(f"h{i}", f"h{i}", seen) for i in (0, 1)}
    start = float(int(now)) + SCHEDULE.lead
    start = max(start, float(int(now) + 1))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _step(pl, run, time.time()):
            run.direct_s = round(time.time() - start, 3)
            run.from_up_s = round(time.monotonic() - t_up, 3)
            return
        time.sleep(0.1)


def _pair(kinds: tuple[NatKind, NatKind], port: int) -> tuple[Run, ProbeResult]:
    with Lab(PREFIX) as lab:
        pl = PunchLab(lab, kinds)
        t_boot = time.monotonic()
        assert wait_for(pl.relays_up, 30) is not None, "relay tunnels did not come up"
        t_up = time.monotonic()
        h0, h1 = pl.net.sites[0].host, pl.net.sites[1].host
        run = Run(kinds)
        with ContinuousProbe(h0, h1, inner(1), port=port) as probe:
            assert probe.wait_first_reply(15), "no reply through the relay"
            _until_direct(pl, run, t_up, timeout=SCHEDULE.lead + SCHEDULE.window + 3)
            time.sleep(0.5)
            result = probe.stop()
        MEASUREMENTS[f"nat_{kinds[0]}__{kinds[1]}"] = {
            "direct": run.direct_s is not None, "punched": run.punched, "attempt_to_direct_s": run.direct_s,
            "relays_up_to_direct_s": run.from_up_s, "boot_to_relays_s": round(t_up - t_boot, 2),
            "behaviours": [run.inferences[h].behaviour for h in ("h0", "h1")],
            "probe_lost": result.lost, "probe_max_outage_s": round(result.max_outage_s, 3),
        }
        return run, result


def _check(kinds: tuple[NatKind, NatKind], port: int) -> None:
    run, probe = _pair(kinds, port)
    relayed = frozenset(kinds) in RELAYED
    assert (run.direct_s is None) is relayed, (kinds, run.decisions, run.inferences)
    if run.direct_s is not None:
        assert run.direct_s < 30
    if kinds == ("symmetric", "symmetric"):
        assert not run.punched  # both address-dependent: not even tried
        assert decide_pair(run.inferences["h0"], run.inferences["h1"]).punch is False
    # Reachable throughout, through the relay and across the switch to the direct path.
    assert probe.max_outage_s < 1.0, probe


@pytest.mark.parametrize("kinds", SHORT, ids=["-".join(k) for k in SHORT])
def test_nat_matrix_short(kinds: tuple[NatKind, NatKind]) -> None:
    _check(kinds, 18201)


@pytest.mark.minute
@pytest.mark.parametrize("kinds", [k for k in PAIRS if k not in SHORT], ids=["-".join(k) for k in PAIRS
                                                                           if k not in SHORT])
def test_nat_matrix_rest(kinds: tuple[NatKind, NatKind]) -> None:
    _check(kinds, 18202)


@pytest.mark.parametrize(("kinds", "site", "event"), [
    (("port-restricted", "port-restricted"), 0, "flush"),
    (("full-cone", "symmetric"), 1, "flush"),
    (("port-restricted", "port-restricted"), 0, "reboot"),
], ids=["port-restricted-flush", "symmetric-flush", "port-restricted-reboot"])
def test_direct_path_survives_nat_rebinding(kinds: tuple[NatKind, NatKind], site: int, event: str) -> None:
    with Lab(PREFIX) as lab:
        pl = PunchLab(lab, kinds)
        assert wait_for(pl.relays_up, 30) is not None
        t_up = time.monotonic()
        run = Run(kinds)
        h0, h1 = pl.net.sites[0].host, pl.net.sites[1].host
        with ContinuousProbe(h0, h1, inner(1), port=18203) as probe:
            assert probe.wait_first_reply(15)
            _until_direct(pl, run, t_up, timeout=SCHEDULE.lead + SCHEDULE.window + 3)
            assert run.direct_s is not None, run.decisions
            time.sleep(1.0)
            before = pl.direct_bytes(0)
            t_event = time.monotonic()
            s = pl.net.sites[site]
            s.flush_conntrack() if event == "flush" else s.reload_rules()
            # Recovered: the probe answers again; the direct SA still carries it (not the relay).
            time.sleep(8.0)
            result = probe.stop()
        recovery = result.outage_from(t_event, horizon=8.0)
        still_direct = pl.direct_installed(0) and pl.direct_bytes(0) > before
        MEASUREMENTS[f"nat_{event}_{kinds[site]}"] = {"recovery_s": round(recovery, 3), "lost": result.lost,
                                                      "still_direct": still_direct}
        assert recovery < 30, result
        assert still_direct


def test_rendezvous_in_the_session_cluster(rc: RavenCluster) -> None:
    """gw-cloud and gw-edge-pub are reachable; gw-edge-a/b dial them from behind plain MASQUERADE routers: both
    observers see each NAT'd gateway's active node at its router's WAN address. The port is 4500 for a node that
    was first behind its router; a node elected after a failover behind the same NAT finds 4500 still held by its
    predecessor's conntrack entries and gets another port, maybe a different one per observer: what the observers
    see decides the behaviour, and `raven status` and the controller must both say what they saw."""
    observers = {rc.active_gateway_node(g): g for g in ("gw-cloud", "gw-edge-pub")}
    nat_pools = ("edge-a", "edge-b")

    def seen() -> dict[str, dict[str, tuple[str, str, int]]]:
        """observer gateway -> NAT'd gateway -> (node, address, port)"""
        out: dict[str, dict[str, tuple[str, str, int]]] = {}
        for r in rc.list_objects(PATHREPORTS):
            if r["metadata"]["name"] in observers:
                out[observers[r["metadata"]["name"]]] = {
                    e["gateway"]: (e["node"], e["address"], e["port"])
                    for e in r.get("status", {}).get("observedEndpoints", [])}
        return out

    def published() -> bool:
        got = seen()
        # Exactly the NAT'd ones (not gw-cloud, which dials gw-edge-pub: a reachable peer's address is known).
        return len(got) == 2 and all(
            set(by_gw) == {f"gw-{p}" for p in nat_pools} and all(
                by_gw[f"gw-{p}"][:2] == (rc.active_gateway_node(f"gw-{p}"), rc.cl.pools[p].router_wan_ip)
                for p in nat_pools) for by_gw in got.values())

    took = wait_for(published, 30, interval=0.2)
    assert took is not None, seen()
    MEASUREMENTS["nat_rendezvous_published_s"] = round(took, 2)
    got = seen()
    expected = {}
    for p in nat_pools:
        ports = {by_gw[f"gw-{p}"][2] for by_gw in got.values()}
        expected[f"gw-{p}"] = "endpoint-independent" if len(ports) == 1 else "address-dependent"
        MEASUREMENTS[f"nat_rendezvous_gw-{p}"] = {"ports": sorted(ports), "behaviour": expected[f"gw-{p}"]}
    pools = {p["gateway"]: p for p in status_json(rc)["pools"]}
    for gw, behaviour in expected.items():
        nat = pools[gw]["natTraversal"]
        assert nat["behaviour"] == behaviour and nat["observers"] == ["gw-cloud", "gw-edge-pub"], (nat, got)
    assert pools["gw-cloud"]["natTraversal"] is None

    # The controller publishes the same inference where the agents read (the NAT'd Gateway's active endpoint).
    def config(gw: str) -> dict[str, str]:
        eps = rc.gateways()[gw].get("status", {}).get("activeEndpoints", [])
        return next((e.get("config", {}) for e in eps if e["type"] == "tunnel"), {})

    def published_to_agents() -> bool:
        return all(config(f"gw-{p}").get("natBehaviour") == expected[f"gw-{p}"]
                   and config(f"gw-{p}").get("natMappedAddress") == rc.cl.pools[p].router_wan_ip for p in nat_pools)

    assert wait_for(published_to_agents, 30, interval=0.2) is not None, config("gw-edge-a")
    inference = from_config("gw-edge-a", rc.active_gateway_node("gw-edge-a"), config("gw-edge-a"))
    assert inference is not None and inference.observers == ("gw-cloud", "gw-edge-pub")
    assert "natBehaviour" not in config("gw-cloud")


def test_a_direct_path_that_breaks_falls_back_to_the_relay() -> None:
    """The two NAT routers stop passing each other's packets (the relay's path stays): charon's DPD on the direct
    SA gives up, its CHILD_SA (and libipsec's more specific route) goes, and traffic is relayed again. This is the
    fallback without the plan's help (bounded by DPD); with it, routing drops the pair from direct_links as soon as
    the probe through the direct tunnel is down (path health: 3 losses at 0.2 s)."""
    kinds: tuple[NatKind, NatKind] = ("port-restricted", "port-restricted")
    with Lab(PREFIX) as lab:
        pl = PunchLab(lab, kinds)
        assert wait_for(pl.relays_up, 30) is not None
        t_up = time.monotonic()
        run = Run(kinds)
        h0, h1 = pl.net.sites[0].host, pl.net.sites[1].host
        with ContinuousProbe(h0, h1, inner(1), port=18204) as probe:
            assert probe.wait_first_reply(15)
            _until_direct(pl, run, t_up, timeout=SCHEDULE.lead + SCHEDULE.window + 3)
            assert run.direct_s is not None, run.decisions
            time.sleep(1.0)
            t_cut = time.monotonic()
            for s, other in ((pl.net.sites[0], pl.net.sites[1]), (pl.net.sites[1], pl.net.sites[0])):
                s.router.run(["iptables", "-w", "5", "-I", "FORWARD", "-s", other.router_wan_ip, "-j", "DROP"])
                s.router.run(["iptables", "-w", "5", "-I", "FORWARD", "-d", other.router_wan_ip, "-j", "DROP"])
            relayed = wait_for(lambda: not pl.direct_installed(0), 40, interval=0.2)
            time.sleep(2.0)
            t_stop = time.monotonic()
            result = probe.stop()
        outage = result.outage_from(t_cut, horizon=40.0)
        MEASUREMENTS["nat_direct_break_to_relay"] = {"outage_s": round(outage, 3), "lost": result.lost,
                                                     "direct_sa_gone_s": relayed}
        assert relayed is not None, "the broken direct SA never went"
        assert outage < 40, result
        assert outage < t_stop - t_cut - 1.0, result  # answered again before the end: through the relay
