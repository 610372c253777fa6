"""The agent's reading of kube-proxy's masquerade policy (raven.agent.kubeproxy), from iptables-save text in the
shapes kube-proxy's iptables mode writes for each --detect-local-mode, and for --masquerade-all."""

from __future__ import annotations

from raven.agent.kubeproxy import MasqueradePolicy, findings, read_policy

SVC = '-A KUBE-SVC-ERIFXISQEP7F7OF4 -m comment --comment "kube-system/kube-dns:dns cluster IP" -d 10.96.0.10/32 ' \
      "-p udp -m udp --dport 53"
JUMP = "-A KUBE-SVC-ERIFXISQEP7F7OF4 -m comment --comment \"kube-system/kube-dns:dns -> 10.10.0.5:53\" " \
       "-j KUBE-SEP-IT2ZTR26TO4XFPTO"
HEAD = "*nat\n:KUBE-SVC-ERIFXISQEP7F7OF4 - [0:0]\n-A KUBE-SEP-IT2ZTR26TO4XFPTO -s 10.10.0.5/32 -j KUBE-MARK-MASQ\n"
PODS = ["10.10.1.0/24"]


def save(mark: str | None) -> str:
    rules = [JUMP] if mark is None else [f"{SVC.replace(' -d ', f' {mark} -d ', 1)} -j KUBE-MARK-MASQ"
                                         if mark else f"{SVC} -j KUBE-MARK-MASQ", JUMP]
    return HEAD + "\n".join(rules) + "\nCOMMIT\n"


def test_cluster_cidr_covering_the_pods_is_fine() -> None:
    policy = read_policy(save("! -s 10.8.0.0/13"))
    assert policy == MasqueradePolicy(found=True, local_cidrs=frozenset({"10.8.0.0/13"}))
    assert findings(policy, PODS, "10.10.1.1") == []


def test_a_pod_cidr_outside_the_cluster_cidr_is_masqueraded() -> None:
    (line,) = findings(read_policy(save("! -s 10.244.0.0/16")), PODS, "10.10.1.1")
    assert "10.10.1.0/24 is outside kube-proxy's --cluster-cidr (10.244.0.0/16)" in line and "10.10.1.1" in line


def test_interface_based_local_detection_is_fine() -> None:
    policy = read_policy(save("! -i cni0"))
    assert policy.local_ifaces == {"cni0"} and findings(policy, PODS, None) == []


def test_masquerade_all_and_no_local_detection_are_reported() -> None:
    (masq_all,) = findings(read_policy(save("")), PODS, "10.10.1.1")
    assert "--masquerade-all" in masq_all
    (none,) = findings(read_policy(save(None)), PODS, "10.10.1.1")
    assert "no --cluster-cidr" in none and "node IP" in none


def test_no_iptables_kube_proxy_means_nothing_to_check() -> None:
    assert read_policy("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n") == MasqueradePolicy()
    assert findings(MasqueradePolicy(), PODS, None) == []


def test_the_labs_kube_proxy_rules_read_back_as_their_cluster_cidr() -> None:
    """The e2e harness's kube-proxy stand-in (e2e.services.render_nat) and this reader agree."""
    from e2e.services import render_nat, service_views

    svc = {"metadata": {"name": "web", "namespace": "shop"},
           "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.7", "ports": [{"name": "http", "port": 80}]}}
    eps = {"metadata": {"name": "web", "namespace": "shop"},
           "subsets": [{"addresses": [{"ip": "10.12.0.10"}, {"ip": "10.13.0.10"}],
                        "ports": [{"name": "http", "port": 8080}]}]}
    policy = read_policy(render_nat(service_views([svc], [eps]), "10.8.0.0/13"))
    assert policy == MasqueradePolicy(found=True, local_cidrs=frozenset({"10.8.0.0/13"}))
    assert findings(policy, PODS, "10.10.1.1") == []
