"""The secure-by-default way to a deployed agent's live state (`skyform status --stack`): the
stack exports the admin URL and the agent token as a *secret* output, and the admin port is
open from outside only to ``skyform:adminCidrs`` (empty by default)."""

from __future__ import annotations

from typing import Any

import pytest
from program_support import run

from components.synth import MASK


def _admin_rules(result: Any, cloud: str) -> list[dict[str, Any]]:
    if cloud == "aws":
        return [r.inputs for r in result.of_type("aws:vpc/securityGroupIngressRule:"
                                                  "SecurityGroupIngressRule")
                if r.inputs.get("fromPort") == 20001 and "cidrIpv4" in r.inputs]
    return [r.inputs for r in result.of_type("gcp:compute/firewall:Firewall")
            if r.inputs.get("allows") == [{"protocol": "tcp", "ports": ["20001"]}]
            and r.inputs.get("sourceRanges")]


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_admin_port_is_closed_from_outside_unless_listed(cloud: str) -> None:
    closed = run("cpu_http.yaml", cloud)
    assert _admin_rules(closed, cloud) == []
    opened = run("cpu_http.yaml", cloud, adminCidrs=["198.51.100.7/32"])
    rules = _admin_rules(opened, cloud)
    assert len(rules) == 1
    assert (rules[0].get("cidrIpv4") or rules[0].get("sourceRanges")) in (
        "198.51.100.7/32", ["198.51.100.7/32"])


@pytest.mark.parametrize("cloud", ["aws", "gcp", "kubernetes"])
def test_admin_url_and_secret_token_outputs(cloud: str) -> None:
    result = run("cpu_http.yaml", cloud)
    assert result.outputs["adminToken"] == MASK
    assert "adminToken" in result.secret_outputs and "adminUrl" not in result.secret_outputs
    url = result.outputs["adminUrl"]
    assert url.startswith("http://") and url.endswith(":20001")
    if cloud == "kubernetes":
        assert ".svc.cluster.local:" in url  # in-cluster only: kubectl port-forward
    else:
        assert url == result.outputs["endpoint"].replace(":30001", ":20001")
