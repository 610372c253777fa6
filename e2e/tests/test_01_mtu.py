"""No fragments with the default flags: bulk TCP (iperf3) over a direct, a relayed and member-to-member paths,
and the fragment counters of every node (IpFragCreates, IpReasmReqds, IpFragFails in each namespace's
/proc/net/snmp) did not move. The harness passes no MTU flag: the agents size raven0, raven1 and the
routes from what they read on the node (the underlay, libipsec's ipsec0)."""

from __future__ import annotations

import pytest

from e2e.cluster import RavenCluster
from e2e.iperf import FRAGMENT_COUNTERS, delta, iperf3_run, snmp

MIN_BYTES = 1_000_000  # 2 s of TCP at anything but a crawl


def _pairs(rc: RavenCluster) -> dict[str, tuple[str, str]]:
    gw = rc.active_gateway_node
    return {
        "direct": (gw("gw-edge-a"), gw("gw-cloud")),
        "relayed": (gw("gw-edge-a"), gw("gw-edge-b")),  # NAT to NAT, through gw-cloud
        "member-to-member": (rc.member_node("edge-a"), rc.member_node("cloud")),
        "member-to-member-relayed": (rc.member_node("edge-a"), rc.member_node("edge-b")),
    }


@pytest.mark.parametrize("kind", ["direct", "relayed", "member-to-member", "member-to-member-relayed"])
def test_bulk_tcp_is_never_fragmented_with_default_flags(rc: RavenCluster, kind: str) -> None:
    assert not any("mtu" in a for a in rc.agent_args), rc.agent_args  # the defaults are what is tested
    src_node, dst_node = _pairs(rc)[kind]
    src, dst = rc.cl.nodes[src_node].pods[0], rc.cl.nodes[dst_node].pods[0]
    nodes = {name: rc.cl.nodes[name].netns for name in sorted(rc.registered)}
    before = {name: snmp(ns) for name, ns in nodes.items()}
    transfer = iperf3_run(src.netns, dst.netns, dst.ip, 18130, seconds=2.0, name=f"frag-{kind}")
    moved = {name: d for name, ns in nodes.items()
             if any((d := delta(before[name], snmp(ns), FRAGMENT_COUNTERS)).values())}
    assert transfer.bytes > MIN_BYTES, transfer.raw["end"]
    assert moved == {}, f"{kind} {src_node} -> {dst_node}: fragments {moved} ({transfer.bytes} bytes carried)"
