"""NAT traversal's pure core (raven/nattraversal/core.py) and the PathReport's observedEndpoints: sightings from
fresh gateway reports only, NAT behaviour inferred from two or more observers (natType a hint, never truth), which
NAT'd pairs may punch, a schedule both ends derive alike, and "direct" only from a verified input."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from raven.api.pathreport import ObservedEndpoint, PathReport, PathReportParseError, PathReportStatus
from raven.dataplane.ipsec import TunnelState
from raven.dataplane.state import IPsecConnection
from raven.nattraversal.core import (
    ADM,
    EIM,
    UNKNOWN,
    Evidence,
    NatInference,
    PunchSchedule,
    PunchTarget,
    Sighting,
    decide_pair,
    evidence,
    from_config,
    infer,
    pair_start,
    plan,
    published,
    sightings,
    to_config,
)
from raven.nattraversal.observer import EndpointObserver, observe
from tests.unit.test_pathreport_model import _schema

NOW = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC)
T0 = NOW.timestamp()


def report(node: str, gateway: str, seen: list[ObservedEndpoint], role: str = "gateway",
           heartbeat: datetime = NOW, spec_node: str | None = None) -> PathReport:
    return PathReport(node, spec_node if spec_node is not None else node,
                      PathReportStatus(gateway=gateway, role=role, heartbeat_time=heartbeat,  # type: ignore[arg-type]
                                       observed_endpoints=tuple(seen)))


def seen(gateway: str, port: int, node: str = "", address: str = "198.18.0.12") -> ObservedEndpoint:
    return ObservedEndpoint(gateway, node or f"{gateway}-1", address, port, NOW - timedelta(seconds=5))


# --- the PathReport field ---

def test_observed_endpoints_round_trip_and_match_the_crd_schema() -> None:
    r = report("cloud-1", "gw-cloud", [seen("gw-b", 4500), seen("gw-c", 31337, address="198.18.0.13")])
    doc: Any = r.to_dict()
    assert doc["status"]["observedEndpoints"][1] == {"gateway": "gw-c", "node": "gw-c-1", "address": "198.18.0.13",
                                                     "port": 31337, "since": "2026-12-02T05:59:55Z"}
    assert PathReport.from_dict(doc) == r
    jsonschema.Draft4Validator(_schema(), format_checker=jsonschema.FormatChecker()).validate(doc)


def test_a_report_without_observed_endpoints_is_unchanged_on_the_wire() -> None:
    doc: Any = report("edge-1", "gw-edge", []).to_dict()
    assert "observedEndpoints" not in doc["status"]
    assert PathReport.from_dict(doc).status.observed_endpoints == ()


@pytest.mark.parametrize(("path", "value"), [
    (("status", "observedEndpoints"), {}), (("status", "observedEndpoints", 0), "x"),
    (("status", "observedEndpoints", 0, "port"), "4500"), (("status", "observedEndpoints", 0, "port"), 70000),
    (("status", "observedEndpoints", 0, "port"), 45.5), (("status", "observedEndpoints", 0, "since"), "soon"),
    (("status", "observedEndpoints", 0, "address"), 7),
])
def test_wrong_shapes_of_observed_endpoints_raise_naming_the_field(path: tuple[Any, ...], value: object) -> None:
    doc: Any = copy.deepcopy(report("cloud-1", "gw-cloud", [seen("gw-b", 4500)]).to_dict())
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(PathReportParseError) as err:
        PathReport.from_dict(doc)
    assert "observedEndpoints" in str(err.value)


# --- sightings ---

def test_sightings_come_only_from_fresh_well_formed_gateway_reports() -> None:
    reports = [
        report("cloud-1", "gw-cloud", [seen("gw-b", 4500)]),
        report("cloud-2", "gw-cloud2", [seen("gw-b", 4500)], heartbeat=NOW - timedelta(seconds=600)),  # stale
        report("m-1", "gw-cloud", [seen("gw-b", 1)], role="member"),
        report("evil", "gw-x", [seen("gw-b", 2)], spec_node="other"),
        report("b-1", "gw-b", [seen("gw-b", 3)]),  # a gateway does not observe itself
    ]
    assert sightings(reports, NOW, timedelta(seconds=180)) == (
        Sighting("gw-cloud", "gw-b", "gw-b-1", "198.18.0.12", 4500, T0 - 5),)


def test_evidence_says_when_the_first_report_an_inference_rests_on_turns_stale() -> None:
    stale_after = timedelta(seconds=180)
    reports = [
        report("c1-1", "gw-c1", [seen("gw-b", 4500)], heartbeat=NOW - timedelta(seconds=100)),
        report("c2-1", "gw-c2", [seen("gw-b", 4500)], heartbeat=NOW - timedelta(seconds=30)),
        report("c3-1", "gw-c3", [seen("gw-b", 4500, node="gw-b-2")], heartbeat=NOW - timedelta(seconds=170)),
        report("c4-1", "gw-c4", [seen("gw-x", 4500)], heartbeat=NOW - timedelta(seconds=175)),  # about another
        report("c5-1", "gw-c5", [seen("gw-b", 4500)], heartbeat=NOW - timedelta(seconds=181)),  # stale already
    ]
    found = evidence(reports, "gw-b", ["gw-b-1"], NOW, stale_after)
    assert [s.observer for s in found.seen] == ["gw-c1", "gw-c2"]
    assert found.stale_at == NOW + timedelta(seconds=80)  # gw-c1's: then only gw-c2 is left
    assert evidence(reports, "gw-b", ["gw-b-1", "gw-b-2"], NOW, stale_after).stale_at == NOW + timedelta(seconds=10)
    later = evidence(reports, "gw-b", ["gw-b-1"], NOW + timedelta(seconds=81), stale_after)
    assert [s.observer for s in later.seen] == ["gw-c2"] and later.stale_at == NOW + timedelta(seconds=150)
    assert evidence(reports, "gw-b", ["gw-b-1"], NOW + timedelta(seconds=151), stale_after) == Evidence((), None)


# --- inference ---

def S(observer: str, port: int, address: str = "198.18.0.12", node: str = "b-1", since: float = T0) -> Sighting:
    return Sighting(observer, "gw-b", node, address, port, since)


def test_two_observers_same_port_is_endpoint_independent() -> None:
    i = infer("gw-b", "b-1", [S("gw-c1", 4500), S("gw-c2", 4500)])
    assert (i.behaviour, i.address, i.port, i.observers, i.source) == (EIM, "198.18.0.12", 4500,
                                                                        ("gw-c1", "gw-c2"), "observed")


def test_two_observers_different_ports_is_address_dependent() -> None:
    i = infer("gw-b", "b-1", [S("gw-c1", 4500), S("gw-c2", 40123)])
    assert i.behaviour == ADM and "different mappings" in i.reason


def test_one_observer_is_unknown_and_other_nodes_sightings_do_not_count() -> None:
    i = infer("gw-b", "b-1", [S("gw-c1", 4500), S("gw-c2", 40123, node="b-2")])
    assert (i.behaviour, i.port, i.observers) == (UNKNOWN, 4500, ("gw-c1",))
    assert infer("gw-b", "b-1", []).behaviour == UNKNOWN


def test_nat_type_is_a_hint_used_without_measurement_and_reported_when_contradicted() -> None:
    assert infer("gw-b", "b-1", [S("gw-c1", 4500)], nat_type="Symmetric").behaviour == ADM
    assert infer("gw-b", "b-1", [], nat_type="FullCone", public_ip="198.18.0.12",
                 public_port=4500).source == "hint"
    measured = infer("gw-b", "b-1", [S("gw-c1", 4500), S("gw-c2", 4500)], nat_type="Symmetric")
    assert measured.behaviour == EIM and "contradicted" in measured.reason and measured.port_restricted is None


# --- which pairs punch ---

def inf(gw: str, behaviour: str, port: int | None = 4500, restricted: bool | None = None) -> NatInference:
    return NatInference(gw, f"{gw}-1", behaviour, "198.18.0.1" if port else None, port, ("gw-cloud",),  # type: ignore[arg-type]
                        "observed", restricted, T0, "")


@pytest.mark.parametrize(("x", "y", "punch"), [
    (inf("a", EIM), inf("b", EIM), True),
    (inf("a", UNKNOWN), inf("b", EIM), True),
    (inf("a", ADM), inf("b", EIM), True),  # the symmetric side's packets can open an address-restricted filter
    (inf("a", ADM), inf("b", EIM, restricted=True), False),  # ... never a port-restricted one
    (inf("a", ADM), inf("b", ADM), False),
    (inf("a", EIM, port=None), inf("b", EIM), False),
])
def test_which_pairs_may_punch(x: NatInference, y: NatInference, punch: bool) -> None:
    assert decide_pair(x, y).punch is punch
    assert decide_pair(y, x) == decide_pair(x, y)  # the same answer at both ends


# --- schedule and plan ---

def test_the_schedule_is_bounded_and_both_ends_derive_the_same_start() -> None:
    s = PunchSchedule()
    a, b = inf("a", EIM), inf("b", EIM)
    assert pair_start(a, b, s) == pair_start(b, a, s) == T0 + s.lead
    starts = [s.attempt_start(0.0, n) for n in range(12)]
    gaps = [y - x for x, y in itertools.pairwise(starts)]
    assert gaps[0] == s.window + 5.0 and max(gaps) == s.window + 300.0  # never more than the cap apart
    assert s.attempt_at(0.0, 3.0) == (0, 0.0, 10.0) and s.attempt_at(0.0, 12.0) == (1, 15.0, 25.0)


def test_plan_punches_in_the_window_goes_direct_only_when_verified_and_falls_back() -> None:
    infs = {"a": inf("a", EIM), "b": inf("b", EIM), "s": inf("s", ADM), "t": inf("t", ADM)}
    start = T0 + 2
    p = plan("a", infs, ["b"], {}, {}, start - 1)
    assert p.punch == () and p.next_check == start and not p.direct_links
    p = plan("a", infs, ["b"], p.states, {}, start + 1)
    assert [t.peer for t in p.punch] == ["b"] and not p.direct_links  # trying, still relayed
    p = plan("a", infs, ["b"], p.states, {"b": True}, start + 3)
    assert p.direct_links == {("a", "b")} and p.punch  # verified: direct
    broke = start + 100
    p = plan("a", infs, ["b"], p.states, {"b": False}, broke)
    assert not p.direct_links and p.punch and p.next_check == broke + 10  # relayed at once, re-punched
    p = plan("a", infs, ["b"], p.states, {}, broke + 11)
    assert p.punch == () and p.next_check == broke + 15  # the attempt failed: backoff
    p = plan("s", infs, ["t"], {}, {"t": True}, start + 1)  # symmetric to symmetric: never, whatever the input
    assert p.punch == () and not p.direct_links and not p.decisions[0].punch


def test_a_new_mapping_restarts_the_schedule() -> None:
    infs = {"a": inf("a", EIM), "b": inf("b", EIM)}
    p = plan("a", infs, ["b"], {}, {}, T0 + 500)
    moved = {**infs, "b": NatInference("b", "b-1", EIM, "198.18.0.1", 4501, ("gw-cloud",), "observed", None,
                                       T0 + 600, "")}
    q = plan("a", moved, ["b"], p.states, {}, T0 + 603)
    assert q.states["b"].start == T0 + 602 and q.punch and q.punch[0].port == 4501


def test_a_withdrawn_inference_ends_attempts_but_keeps_a_verified_pair_while_its_probe_answers() -> None:
    infs = {"a": inf("a", EIM), "b": inf("b", EIM), "c": inf("c", EIM)}
    start = T0 + 2
    p = plan("a", infs, ["b", "c"], {}, {}, start + 1)
    p = plan("a", infs, ["b", "c"], p.states, {"b": True}, start + 2)
    assert p.direct_links == {("a", "b")} and [t.peer for t in p.punch] == ["b", "c"]  # b direct, c trying
    # The controller withdraws both peers' inferences (their observers' reports went stale).
    gone = {"a": infs["a"]}
    q = plan("a", gone, ["b", "c"], p.states, {"b": True}, start + 3)
    assert q.direct_links == {("a", "b")} and q.punch == (PunchTarget("b", "b-1", "198.18.0.1", 4500, 0),)
    assert q.next_check is None and "c" not in q.states  # c's attempt ended: relayed, nothing scheduled
    mine = plan("a", {"b": infs["b"]}, ["b"], p.states, {"b": True}, start + 3)  # our own inference withdrawn
    assert mine.direct_links == q.direct_links and mine.punch == q.punch
    # The direct path breaks while withdrawn: relayed at once, not re-punched (no mapping to aim at).
    r = plan("a", gone, ["b"], q.states, {"b": False}, start + 4)
    assert r.punch == () and not r.direct_links and r.states == {}
    # A published inference again (the observers are back): the schedule from its `since`, as at the other end.
    s = plan("a", infs, ["b"], r.states, {}, start + 12)
    assert s.states["b"].start == start and s.punch == () and s.next_check == start + 15


def test_fewer_observers_with_the_same_mapping_change_nothing_for_the_pair() -> None:
    infs = {"a": inf("a", EIM), "b": inf("b", EIM)}
    p = plan("a", infs, ["b"], {}, {"b": True}, T0 + 3)
    fewer = {**infs, "b": dataclasses.replace(infs["b"], behaviour=UNKNOWN, since=T0 - 60)}
    q = plan("a", fewer, ["b"], p.states, {"b": True}, T0 + 4)
    assert q.states == p.states and q.punch == p.punch and q.direct_links == p.direct_links


# --- the agent's observer ---

def conn(peer: str, initiator: bool, remote_id: str = "", peer_node: str = "") -> IPsecConnection:
    return IPsecConnection(f"raven-{peer}", "me", remote_id or f"raven-gw-{peer}", ("%any",),
                           ("%any",) if not initiator else ("198.18.0.9",), 4500, "241.0.0.1/32", "241.0.0.2/32",
                           initiator, peer_node=peer_node)


def state(peer: str, host: str, port: int, ike: str = "ESTABLISHED") -> TunnelState:
    return TunnelState(f"raven-{peer}", ike, 1, host, port, "INSTALLED", 2, 0, 0, 0, 0, True)


def test_observer_reports_the_mapped_endpoints_of_peers_that_dial_us_only() -> None:
    conns = [conn("gw-b", False, remote_id="raven-node-b-1"), conn("gw-c", False, peer_node="c-1"),
             conn("gw-pub", True), conn("gw-d", False), conn("gw-pub2", True)]
    reachable_dials_us = dataclasses.replace(conns[-1], initiator=False)  # its address is known: not NAT'd
    conns[-1] = reachable_dials_us
    states = [state("gw-b", "198.18.0.12", 4500), state("gw-c", "198.18.0.13", 31337),
              state("gw-pub", "198.18.0.9", 4500), state("gw-d", "198.18.0.14", 4500, ike="CONNECTING"),
              state("gw-pub2", "198.18.0.9", 4500)]
    got = observe(conns, states, (), NOW)
    assert got == (ObservedEndpoint("gw-b", "b-1", "198.18.0.12", 4500, NOW),
                   ObservedEndpoint("gw-c", "c-1", "198.18.0.13", 31337, NOW))
    later = NOW + timedelta(seconds=30)
    again = observe(conns, [state("gw-b", "198.18.0.12", 4500), state("gw-c", "198.18.0.13", 40000)], got, later)
    assert again[0].since == NOW and again[1].since == later  # a rebinding is a new mapping


def test_endpoint_observer_signals_a_change_once() -> None:
    changes: list[int] = []
    o = EndpointObserver(lambda: changes.append(1), clock=lambda: T0)
    conns = [conn("gw-b", False)]
    assert o.update(conns, [state("gw-b", "198.18.0.12", 4500)])
    assert not o.update(conns, [state("gw-b", "198.18.0.12", 4500)])
    assert changes == [1] and o.endpoints[0].port == 4500


# --- raven status shows the inference per NAT'd pool ---

def test_raven_status_reports_each_nat_pools_inferred_behaviour_in_its_schema() -> None:
    from raven.agent.status import to_json
    from tests.unit.test_status import SCHEMA, healthy_reports, status

    def observed(gw: str, port_a: int, port_b: int) -> PathReport:
        r = next(x for x in healthy_reports() if x.name == gw)
        return PathReport(r.name, r.node_name, dataclasses.replace(r.status, observed_endpoints=(
            ObservedEndpoint("gw-edge-a", "edge-a-1", "198.51.100.1", port_a),
            ObservedEndpoint("gw-edge-b", "edge-b-1", "198.51.100.2", port_b))))

    reports = [r for r in healthy_reports() if r.name not in ("cloud-1", "dc-1")]
    reports += [observed("cloud-1", 4500, 4500), observed("dc-1", 4500, 61000)]
    doc: Any = to_json(status(reports=reports))
    pools = {p["gateway"]: p for p in doc["pools"]}
    assert pools["gw-edge-a"]["natTraversal"]["behaviour"] == EIM
    assert pools["gw-edge-b"]["natTraversal"]["behaviour"] == ADM
    assert pools["gw-edge-a"]["natTraversal"]["observers"] == ["gw-cloud", "gw-dc"]
    assert pools["gw-cloud"]["natTraversal"] is None  # reachable: nothing to infer
    for p in doc["pools"]:
        jsonschema.validate(p, {**SCHEMA["properties"]["pools"]["items"], "$defs": SCHEMA["$defs"]})


# --- the controller publishes the inference in the NAT'd Gateway's active endpoint config; agents read it ---

def test_inference_round_trips_through_endpoint_config_and_malformed_config_reads_as_nothing() -> None:
    i = infer("gw-b", "b-1", [S("gw-c1", 4500), S("gw-c2", 4500)])
    config = to_config(i)
    assert config == {"natBehaviour": EIM, "natMappedAddress": "198.18.0.12", "natMappedPort": "4500",
                      "natObservers": "gw-c1,gw-c2", "natSince": str(int(T0))}
    back = from_config("gw-b", "b-1", config)
    assert back is not None and (back.behaviour, back.address, back.port, back.observers, back.since) == (
        i.behaviour, i.address, i.port, i.observers, i.since)
    assert to_config(infer("gw-b", "b-1", [], nat_type="FullCone")) == {}  # a hint alone publishes nothing
    for bad in ({**config, "natMappedPort": "x"}, {**config, "natMappedPort": "0"}, {**config, "natBehaviour": "?"},
                {k: v for k, v in config.items() if k != "natMappedAddress"}, {}):
        assert from_config("gw-b", "b-1", bad) is None


def test_election_merges_the_inference_into_the_elected_endpoint_and_drops_an_old_one() -> None:
    from raven.controller.election import elect
    from tests.unit.test_election import gateway, node, tunnel

    gw = gateway([tunnel("n-1", underNAT=True), tunnel("n-2", underNAT=True)])
    config = to_config(infer("gw-a", "n-1", [Sighting(o, "gw-a", "n-1", "198.18.0.12", 4500, T0)
                                              for o in ("gw-c1", "gw-c2")]))
    assert config
    first = elect(gw, [node("n-1"), node("n-2")], "2026-12-02T06:00:00Z", nat={"n-1": config})
    (ep,) = first.status.active_endpoints or []
    assert ep.config is not None and ep.config["natMappedPort"] == "4500" and ep.config["natBehaviour"] == EIM
    again = gateway([tunnel("n-1", underNAT=True)], status=first.status.to_dict())  # type: ignore[arg-type]
    later = elect(again, [node("n-1")], "2026-12-02T06:01:00Z", nat={})
    (ep2,) = later.status.active_endpoints or []
    assert not any(k.startswith("nat") for k in (ep2.config or {}))


def test_agents_read_every_published_inference_from_the_gateways_alone() -> None:
    from raven.controller.election import elect
    from tests.unit.test_election import gateway, node, tunnel

    def gw(name: str, port: int) -> Any:
        config = to_config(infer(name, "n-1", [Sighting(o, name, "n-1", "198.18.0.12", port, T0)
                                                for o in ("gw-c1", "gw-c2")]))
        g = gateway([tunnel("n-1", underNAT=True)], name=name)
        st = elect(g, [node("n-1", gw=name)], "2026-12-02T06:00:00Z", nat={"n-1": config}).status
        return gateway([tunnel("n-1", underNAT=True)], status=st.to_dict(), name=name)  # type: ignore[arg-type]

    plain = gateway([tunnel("n-1")], name="gw-pub")
    got = published([gw("gw-x", 4500), gw("gw-y", 4501), plain])
    assert sorted(got) == ["gw-x", "gw-y"] and got["gw-y"].port == 4501 and got["gw-x"].behaviour == EIM
    assert plan("gw-x", got, ["gw-y"], {}, {}, T0 + 3).punch  # both ends plan from the same published data
