"""The via probes' source NAT chain (raven/dataplane/probenat.py), pure parts: render, parse, restore script."""

from __future__ import annotations

from raven.dataplane.probenat import CHAIN, ProbeNatObserved, parse, render, restore_script
from raven.dataplane.state import ProbeSnat

SNAT = ProbeSnat("240.0.0.0/8", "241.0.0.0/8", "241.0.39.79")
SAVE = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:RAVEN-PROBE - [0:0]
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -j RAVEN-PROBE
-A POSTROUTING -j KUBE-POSTROUTING
-A RAVEN-PROBE -s 240.0.0.0/8 -d 241.0.0.0/8 -p icmp -j SNAT --to-source 241.0.39.79
-A KUBE-POSTROUTING -j MASQUERADE
COMMIT
"""


def test_render_is_the_form_iptables_save_prints() -> None:
    assert render(None) == ()
    observed = parse(SAVE)
    assert observed == ProbeNatObserved(True, render(SNAT), 1)
    assert observed.converged(render(SNAT))
    assert not observed.converged(render(ProbeSnat("240.0.0.0/8", "241.0.0.0/8", "241.0.0.1")))
    assert not observed.converged(())
    assert ProbeNatObserved().converged(())


def test_restore_script_touches_only_its_chain_and_one_jump() -> None:
    fresh = restore_script(render(SNAT), ProbeNatObserved())
    assert fresh.splitlines() == ["*nat", f":{CHAIN} - [0:0]", f"-A {CHAIN} {render(SNAT)[0]}",
                                  f"-I POSTROUTING 1 -j {CHAIN}", "COMMIT"]
    doubled = restore_script(render(SNAT), ProbeNatObserved(True, (), 2))
    assert doubled.count(f"-D POSTROUTING -j {CHAIN}") == 1 and "-I POSTROUTING" not in doubled
    removal = restore_script((), parse(SAVE))
    assert removal.splitlines() == ["*nat", f"-D POSTROUTING -j {CHAIN}", f":{CHAIN} - [0:0]", f"-X {CHAIN}",
                                    "COMMIT"]
    assert "KUBE" not in fresh + doubled + removal
