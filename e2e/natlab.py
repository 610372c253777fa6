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

import contextlib
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from e2e.netlab import Charon, Lab, Netns
from raven.nattraversal.core import Sighting

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
    """wan (bridge) + `publics` public hosts pub<k> (WAN .2+k: the reachable gateways) + per site r<i> (router,
    WAN .10+i) and h<i> (host, 192.168.<10+i>.11 behind it, its own /24)."""

    lab: Lab
    kinds: Sequence[NatKind]
    publics: int = 1
    wan_net: str = "198.19.0.0/24"
    sites: list[Site] = field(default_factory=list)
    pubs: list[Netns] = field(default_factory=list)

    def pub_ip(self, k: int = 0) -> str:
        return str(ipaddress.ip_network(self.wan_net).network_address + 2 + k)

    def build(self) -> NatLab:
        wan_net = ipaddress.ip_network(self.wan_net)
        plen = wan_net.prefixlen
        names = ["wan"] + [f"pub{k}" for k in range(self.publics)]
        names += [n for i in range(len(self.kinds)) for n in (f"r{i}", f"h{i}")]
        self.lab.netns_many(names)
        wan = self.lab["wan"]
        wan.ip_batch(["link add br0 type bridge", "link set br0 up"])
        for k in range(self.publics):
            pub = self.lab[f"pub{k}"]
            self.pubs.append(pub)
            self.lab.veth(pub, "eth0", wan, f"p{k}")
            wan.ip_batch([f"link set p{k} master br0", f"link set p{k} up"])
            pub.ip_batch(["link set eth0 up", f"addr add {self.pub_ip(k)}/{plen} dev eth0"])
            pub.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
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


# --- IKE hole punching between the sites' hosts, with charon, as the agents would do it ---

PSK: Final = "0sUmF2ZW4gTkFUIGxhYiBrZXkgb25seQ=="  # a lab-only key
INNER_NET: Final = "10.99.0.0/24"


def inner(i: int) -> str:
    """Host i's inner address (10.99.0.1+i); the public hosts' are 10.99.0.100+k."""
    return f"10.99.0.{1 + i}"


def pub_inner(k: int) -> str:
    return f"10.99.0.{100 + k}"


def ike_conn(local_id: str, remote_id: str, raddr: str, rport: int, lts: str, rts: str, initiate: bool,
             local_port: int = 4500) -> dict[str, Any]:
    """A connection dict as raven/dataplane/ipsec.py loads them (PSK here), from the tunnel port 4500."""
    return {"version": 2, "local_port": local_port, "local_addrs": ["%any"], "remote_addrs": [raddr],
            "remote_port": rport, "proposals": ["aes256-sha256-modp2048"], "encap": "yes", "mobike": "no",
            "dpd_delay": "2s", "keyingtries": 0, "unique": "replace",
            "local": {"auth": "psk", "id": local_id}, "remote": {"auth": "psk", "id": remote_id},
            "children": {"c": {"mode": "tunnel", "local_ts": [lts], "remote_ts": [rts],
                               "esp_proposals": ["aes256-sha256"],
                               "start_action": "start" if initiate else "none",
                               "dpd_action": "restart" if initiate else "clear",
                               "close_action": "start" if initiate else "none"}}}


def sa_list(ch: Charon) -> dict[str, list[dict[str, str]]]:
    """charon's IKE_SAs by connection name: state, remote-host/port and each CHILD_SA's state."""
    def s(v: object) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    out: dict[str, list[dict[str, str]]] = {}
    with ch.session() as v:
        for item in v.list_sas():
            for name, ike in item.items():
                entry = {k: s(ike.get(k, b"")) for k in ("state", "remote-host", "remote-port", "uniqueid")}
                entry["children"] = ",".join(s(c.get("state", b"")) for c in ike.get("child-sas", {}).values())
                out.setdefault(s(name), []).append(entry)
    return out


class PunchLab:
    """A `NatLab` with charon everywhere: pub0 relays (its SAs to the hosts cover the whole inner range and it
    forwards between them), pub1.. only observe; every host dials every public host from port 4500 (the relay
    tunnel and the rendezvous at once), then may load a `direct` connection towards the other host's mapping."""

    def __init__(self, lab: Lab, kinds: Sequence[NatKind], publics: int = 2) -> None:
        self.net = NatLab(lab, kinds, publics).build()
        ids = [f"pub{k}" for k in range(publics)] + [f"h{i}" for i in range(len(kinds))]
        self.pub_charons = [p.start_charon() for p in self.net.pubs]
        self.host_charons = [s.host.start_charon() for s in self.net.sites]
        for k, (pub, ch) in enumerate(zip(self.net.pubs, self.pub_charons, strict=True)):
            pub.ip("addr", "add", f"{pub_inner(k)}/32", "dev", "lo")
            with ch.session() as v:
                v.load_shared({"id": "k", "type": "IKE", "data": PSK, "owners": ids})
                for i in range(len(kinds)):
                    lts = INNER_NET if k == 0 else f"{pub_inner(k)}/32"
                    v.load_conn({f"to-h{i}": ike_conn(f"pub{k}", f"h{i}", "%any", 4500, lts, f"{inner(i)}/32",
                                                      False)})
        for i, (site, ch) in enumerate(zip(self.net.sites, self.host_charons, strict=True)):
            site.host.ip("addr", "add", f"{inner(i)}/32", "dev", "lo")
            with ch.session() as v:
                v.load_shared({"id": "k", "type": "IKE", "data": PSK, "owners": ids})
                for k in range(publics):
                    rts = INNER_NET if k == 0 else f"{pub_inner(k)}/32"
                    v.load_conn({f"pub{k}": ike_conn(f"h{i}", f"pub{k}", self.net.pub_ip(k), 4500,
                                                     f"{inner(i)}/32", rts, True)})

    def relays_up(self) -> bool:
        for ch in self.pub_charons:
            sas = sa_list(ch)
            for i in range(len(self.host_charons)):
                if not any(x["state"] == "ESTABLISHED" and "INSTALLED" in x["children"]
                           for x in sas.get(f"to-h{i}", [])):
                    return False
        return True

    def sightings(self, since: float) -> list[Sighting]:
        """What each public host sees of each host: the NAT's mapping (charon's remote-host/remote-port)."""
        out = []
        for k, ch in enumerate(self.pub_charons):
            for name, entries in sa_list(ch).items():
                for x in entries:
                    if x["state"] == "ESTABLISHED" and name.startswith("to-h"):
                        out.append(Sighting(f"pub{k}", f"h{name[4:]}", f"h{name[4:]}", x["remote-host"],
                                            int(x["remote-port"]), since))
        return out

    def punch(self, i: int, j: int, address: str, port: int) -> None:
        """Host i initiates IKE to host j's mapping from its tunnel port (4500, shared with the relay tunnel)."""
        with self.host_charons[i].session() as v:
            v.load_conn({"direct": ike_conn(f"h{i}", f"h{j}", address, port, f"{inner(i)}/32", f"{inner(j)}/32",
                                            True)})

    def unpunch(self, i: int) -> None:
        with self.host_charons[i].session() as v:
            with contextlib.suppress(Exception):
                list(v.terminate({"ike": "direct", "force": "yes", "timeout": "-1"}))
            with contextlib.suppress(Exception):
                v.unload_conn({"name": "direct"})

    def direct_installed(self, i: int) -> bool:
        return any(x["state"] == "ESTABLISHED" and "INSTALLED" in x["children"]
                   for x in sa_list(self.host_charons[i]).get("direct", []))

    def direct_bytes(self, i: int) -> int:
        with self.host_charons[i].session() as v:
            total = 0
            for item in v.list_sas({"ike": "direct"}):
                for ike in item.values():
                    for c in ike.get("child-sas", {}).values():
                        total += int(c.get("bytes-out", 0))
            return total


def wait_for(pred: object, timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until `pred()` is true, None after `timeout`."""
    assert callable(pred)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(interval)
    return None
