"""NAT routers of four kinds, built with iptables in a router namespace, and a small NAT traversal lab.

`router_rules(kind, ...)` is the one place the lab's NAT behaviours are written down (pure: the
`iptables-restore` text a router loads); `e2e.topology` uses it for pools with `natType`, and
`NatLab` builds the smallest lab that shows what they do to hole punching: a WAN with one public host
(the rendezvous/relay, like a cloud gateway) and N sites, each a router with one host behind it.

The four kinds, as RFC 4787 names their mapping and filtering behaviour (the ports are the tunnel
ports, UDP 500 and 4500):

- ``full-cone``: MASQUERADE out; DNAT of the tunnel ports to the host in, from anyone (EIM, EIF);
- ``address-restricted``: the same DNAT, admitted only from an address the host sent to within 60 s
  (`-m recent`; EIM, address-dependent filtering);
- ``port-restricted``: plain MASQUERADE (keeps ports); in, only replies of a conntrack entry, exact address
  and port (EIM while the port is free, address-and-port-dependent filtering);
- ``symmetric``: MASQUERADE ``--random-fully`` (ADM: a new port per destination); in, only replies.

Every kind drops new UDP flows from the WAN to the router itself (`input_firewall`, as a home router does;
see `router_rules`).

Linux conntrack's MASQUERADE keeps the source port when it is free, so a single host behind a
port-restricted router appears with its own port to every peer (endpoint-independent in effect);
``--random-fully`` picks a random port for every new flow, so each peer sees another port.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from e2e.netlab import Lab, Netns

NatKind = Literal["full-cone", "address-restricted", "port-restricted", "symmetric"]
NAT_KINDS: Final[tuple[NatKind, ...]] = ("full-cone", "address-restricted", "port-restricted", "symmetric")
TUNNEL_PORTS: Final = (500, 4500)
# How long an address the host sent to stays admitted by an address-restricted router (s).
RESTRICTED_WINDOW_S: Final = 60


def router_rules(kind: NatKind, lan: str, host_ip: str, wan_if: str = "wan0",
                 ports: Sequence[int] = TUNNEL_PORTS, input_firewall: bool = True) -> str:
    """The iptables-restore text of one NAT router: `lan` masqueraded out of `wan_if`; `host_ip` is the host
    the cone kinds map the tunnel ports to (inbound DNAT)."""
    if kind not in NAT_KINDS:
        raise ValueError(f"unknown NAT kind {kind!r}")
    nat = ["*nat", ":PREROUTING ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
    filt = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]"]
    if input_firewall:
        # A new UDP flow from the WAN to the router itself is dropped, as a home router's firewall does. Without
        # this, the first punch packet that arrives before the host behind has sent its own is accepted to the
        # router's stack and its (confirmed) conntrack entry owns the reply tuple the host's outbound flow
        # needs: MASQUERADE then moves the host's flow to another port and the punch never meets (seen by hand).
        filt.append(f"-A INPUT -i {wan_if} -p udp -m conntrack --ctstate NEW -j DROP")
    rnd = " --random-fully" if kind == "symmetric" else ""
    nat.append(f"-A POSTROUTING -s {lan} -o {wan_if} -j MASQUERADE{rnd}")
    if kind in ("full-cone", "address-restricted"):
        for p in ports:
            nat.append(f"-A PREROUTING -i {wan_if} -p udp --dport {p} -j DNAT --to-destination {host_ip}:{p}")
    if kind == "address-restricted":
        # Remember every address the host sends tunnel traffic to; a new inbound flow from elsewhere is dropped.
        for p in ports:
            filt.append(f"-A FORWARD -o {wan_if} -p udp --sport {p} -m recent --name natout --rdest --set")
        filt.append("-A FORWARD -i " + wan_if + " -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
        filt.append(f"-A FORWARD -i {wan_if} -p udp -m recent --name natout --rsource --rcheck "
                    f"--seconds {RESTRICTED_WINDOW_S} -j ACCEPT")
        filt.append(f"-A FORWARD -i {wan_if} -j DROP")
    return "\n".join([*nat, "COMMIT", *filt, "COMMIT", ""])


@dataclass
class Site:
    name: str
    kind: NatKind
    router: Netns
    host: Netns
    lan: str
    host_ip: str
    router_wan_ip: str

    def flush_conntrack(self) -> None:
        """NAT rebinding: forget every mapping (the next packet of each flow is a new one)."""
        self.router.run(["conntrack", "-F"], check=False)

    def reload_rules(self) -> None:
        """A router "reboot": NAT rules and conntrack flushed, then the rules restored."""
        self.router.run(["sh", "-c", "iptables -w 5 -t nat -F && iptables -w 5 -F && conntrack -F; true"])
        self.router.run(["iptables-restore", "-w", "5"], input=router_rules(self.kind, self.lan, self.host_ip))


@dataclass
class NatLab:
    """wan (bridge) + pub (a public host at WAN_NET .2) + per site r<i> (router, WAN .10+i) and h<i> (host,
    192.168.<i>.11 behind it). Each site's LAN is its own /24 (10 + i)."""

    lab: Lab
    kinds: Sequence[NatKind]
    wan_net: str = "198.19.0.0/24"
    sites: list[Site] = field(default_factory=list)
    pub: Netns | None = None

    @property
    def pub_ip(self) -> str:
        return str(ipaddress.ip_network(self.wan_net).network_address + 2)

    def build(self) -> NatLab:
        wan_net = ipaddress.ip_network(self.wan_net)
        plen = wan_net.prefixlen
        names = ["wan", "pub"] + [n for i in range(len(self.kinds)) for n in (f"r{i}", f"h{i}")]
        self.lab.netns_many(names)
        wan, pub = self.lab["wan"], self.lab["pub"]
        self.pub = pub
        self.lab.veth(pub, "eth0", wan, "pub0")
        wan.ip_batch(["link add br0 type bridge", "link set br0 up", "link set pub0 master br0", "link set pub0 up"])
        pub.ip_batch(["link set eth0 up", f"addr add {self.pub_ip}/{plen} dev eth0"])
        for i, kind in enumerate(self.kinds):
            r, h = self.lab[f"r{i}"], self.lab[f"h{i}"]
            lan = f"192.168.{10 + i}.0/24"
            rlan, hip = f"192.168.{10 + i}.1", f"192.168.{10 + i}.11"
            rwan = str(wan_net.network_address + 10 + i)
            self.lab.veth(r, "wan0", wan, f"w{i}")
            self.lab.veth(h, "eth0", r, "lan0")
            wan.ip_batch([f"link set w{i} master br0", f"link set w{i} up"])
            r.ip_batch(["link set wan0 up", f"addr add {rwan}/{plen} dev wan0", "link set lan0 up",
                        f"addr add {rlan}/24 dev lan0"])
            h.ip_batch(["link set eth0 up", f"addr add {hip}/24 dev eth0", f"route add default via {rlan}"])
            r.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            r.run(["iptables-restore", "-w", "5"], input=router_rules(kind, lan, hip))
            self.sites.append(Site(f"s{i}", kind, r, h, lan, hip, rwan))
        return self


def wait_for(pred: object, timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until `pred()` is true, None after `timeout`."""
    assert callable(pred)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(interval)
    return None
