"""The test API server's CertificateSigningRequests behave like the real server's: the requester is recorded
from the token, spec is immutable, approval and certificate go through their subresources with their rules."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from e2e.apiserver import ApiServer
from raven.kube.client import CSRS, ApiError, KubeClient, new_api_client
from raven.pki import new_private_key, node_csr

CERT = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").decode()


def body(name: str) -> dict[str, object]:
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
            "spec": {"signerName": "raven.openyurt.io/ipsec", "usages": ["digital signature"],
                     "request": base64.b64encode(node_csr(new_private_key(), "n1")).decode(),
                     "username": "system:admin", "extra": {"authentication.kubernetes.io/node-name": ["other"]}}}


async def test_csr_lifecycle(apiserver: ApiServer, tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text(yaml.safe_dump(apiserver.kubeconfig_dict(apiserver.add_node_token("n1"))))
    node = KubeClient(await new_api_client(str(path)))
    assert apiserver.kubeconfig
    admin = KubeClient(await new_api_client(apiserver.kubeconfig))
    try:
        created = await node.create(CSRS, body("c1"))
        spec = created["spec"]
        # Whatever the body claimed, the server records the token's user.
        assert spec["username"] == "system:serviceaccount:raven-system:raven-agent"
        assert spec["extra"]["authentication.kubernetes.io/node-name"] == ["n1"]
        # No certificate before approval.
        with pytest.raises(ApiError) as err:
            await admin.merge_patch(CSRS, "c1", {"status": {"certificate": CERT}}, subresource="status")
        assert err.value.status == 422
        # Conditions through /status may not approve.
        await admin.merge_patch(CSRS, "c1", {"status": {"conditions": [{"type": "Approved", "status": "True"}]}},
                                subresource="status")
        assert not (await admin.get(CSRS, "c1")).get("status", {}).get("conditions")
        await admin.merge_patch(CSRS, "c1", {"status": {"conditions": [{"type": "Approved", "status": "True"}]}},
                                subresource="approval")
        done = await admin.merge_patch(CSRS, "c1", {"status": {"certificate": CERT}}, subresource="status")
        assert done["status"]["certificate"] == CERT
        with pytest.raises(ApiError):  # immutable once issued
            await admin.merge_patch(CSRS, "c1", {"status": {"certificate": CERT[:-4] + "QUFB"}}, subresource="status")
        # spec is immutable through the main resource.
        await admin.merge_patch(CSRS, "c1", {"spec": {"signerName": "x/y"}})
        assert (await admin.get(CSRS, "c1"))["spec"]["signerName"] == "raven.openyurt.io/ipsec"
        # Unknown tokens are refused.
        path.write_text(yaml.safe_dump(apiserver.kubeconfig_dict("nope")))
        bad = KubeClient(await new_api_client(str(path)))
        try:
            with pytest.raises(ApiError) as err:
                await bad.list(CSRS)
            assert err.value.status == 401
        finally:
            await bad.close()
    finally:
        await node.close()
        await admin.close()
