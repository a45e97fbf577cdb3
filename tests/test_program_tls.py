"""service.tls: the key goes to the secret store (never user data or the plan), the controller
fetches it at boot, the agent serves HTTPS and the endpoint says https."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
from program_support import (
    bash_syntax,
    cloud_init_schema,
    decode_user_data,
    everything_visible,
    run,
)

from components.startup import TLS_KEYFILE
from components.synth import MASK, k8s_manifests

KEY_TEXT = "SYNTHKEYNOTREAL0000"


def test_aws_tls_secret_policy_and_boot(tmp_path: Path) -> None:
    result = run("https.yaml", "aws")
    assert result.outputs["endpoint"].startswith("https://")
    assert KEY_TEXT not in everything_visible(result)
    version = next(r for r in result.of_type("aws:secretsmanager/secretVersion:SecretVersion")
                   if r.name == "service-access-tls")
    assert version.inputs["secretString"] == MASK
    assert KEY_TEXT in version.raw_inputs["secretString"]
    policy = json.loads(result.named("service-controller-pulumi-up").inputs["policy"])
    read = next(s for s in policy["Statement"] if s["Sid"] == "ReadControllerSecrets")
    assert "arn:aws:synth:::secret/service-access-tls" in read["Resource"]
    assert len(read["Resource"]) == 3  # agent token, controller config, TLS
    user_data = decode_user_data(result.named("service-controller-vm").inputs["userDataBase64"])
    assert KEY_TEXT not in user_data
    cloud_init_schema(tmp_path, user_data)
    assert TLS_KEYFILE in user_data
    for instance in result.of_type("aws:ec2/instance:Instance"):
        assert KEY_TEXT not in decode_user_data(instance.raw_inputs["userDataBase64"])


def test_gcp_only_the_controller_reads_the_key() -> None:
    result = run("https.yaml", "gcp")
    members = {r.name for r in result.of_type(
        "gcp:secretmanager/secretIamMember:SecretIamMember")}
    assert "service-controller-tls" in members
    assert "service-access-tls-replica" not in members
    assert KEY_TEXT not in everything_visible(result)


def test_kubernetes_mounts_tls_into_the_controller(tmp_path: Path) -> None:
    result = run("https.yaml", "kubernetes")
    objects = k8s_manifests(result)
    for obj in objects:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "tls", "mountPath": "/etc/skyform/tls", "readOnly": True} in mounts
    secret = next(o for o in objects if o["kind"] == "Secret" and "stringData" in o)
    assert set(secret["stringData"]) == {"agent-token", "tls-key", "tls-cert",
                                         "replica-credential-ondemand",
                                         "replica-credential-spot"}
    config = next(o for o in objects if o["kind"] == "ConfigMap" and
                  o["metadata"]["name"].endswith("controller-files"))
    agent = json.loads(config["data"]["agent.json"])
    assert agent["tls"]["keyfile"] == TLS_KEYFILE
    bash_syntax(tmp_path, config["data"]["controller.sh"])
