"""Service secrets in the readiness probe, through the real program on every cloud: the
controller's agent config holds ``${NAME}`` (never a value), the controller fetches the
service-secrets secret at boot (and may read it), and the agent config plus what the secret
store holds give the real probe header."""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from program_support import (
    CONFIG_SECRET,
    FIXTURES,
    YAML_SECRET,
    bash_syntax,
    cloud_init_schema,
    decode_user_data,
    everything_visible,
    run,
)

from components.clouds.common import SERVICE_SECRETS_FILE
from components.synth import SynthResult, stack_config, synthesize
from lb_agent.config import AgentConfig

FIXTURE = "secret_probe.yaml"


@functools.cache
def _run(cloud: str) -> SynthResult:
    return run(FIXTURE, cloud, secrets={"HF_TOKEN": CONFIG_SECRET})


@pytest.fixture(params=["aws", "gcp", "kubernetes"])
def synth(request: pytest.FixtureRequest) -> tuple[str, SynthResult]:
    return request.param, _run(request.param)


def _cloud_init(result: SynthResult, cloud: str) -> str:
    vm = result.named("service-controller-vm")
    if cloud == "aws":
        return decode_user_data(vm.raw_inputs["userDataBase64"])
    return str(vm.raw_inputs["metadata"]["user-data"])


def _write_file(cloud_init: str, path: str) -> str:
    for item in yaml.safe_load(cloud_init)["write_files"]:
        if item["path"] == path:
            content = item["content"]
            return base64.b64decode(content).decode() if item.get("encoding") == "b64" \
                else str(content)
    raise AssertionError(f"{path} not in the controller's write_files")


def _controller_files(cloud: str, result: SynthResult) -> tuple[dict[str, Any], str]:
    """The controller's agent config and controller.sh, as the VM or pod gets them."""
    if cloud == "kubernetes":
        data = result.named("service-controller-files").raw_inputs["data"]
        return json.loads(data["agent.json"]), data["controller.sh"]
    # VMs take the agent config from the controller-config secret (not user data), so a
    # commit never changes user data.
    version = next(r for r in result.resources
                   if r.type.endswith("secretVersion:SecretVersion")
                   and r.name == "service-controller-config")
    stored = version.raw_inputs["secretString" if cloud == "aws" else "secretData"]
    return (json.loads(stored)["agent"],
            _write_file(_cloud_init(result, cloud), "/opt/skyform/controller.sh"))


def _stored_secrets(cloud: str, result: SynthResult) -> str:
    """The service-secrets JSON as the secret store holds it (revealed for the test)."""
    if cloud == "aws":
        return str(next(r for r in result.of_type(
            "aws:secretsmanager/secretVersion:SecretVersion")
            if r.name == "service-access-service-secrets").raw_inputs["secretString"])
    if cloud == "gcp":
        return str(next(r for r in result.of_type(
            "gcp:secretmanager/secretVersion:SecretVersion")
            if r.name == "service-access-service-secrets").raw_inputs["secretData"])
    return str(result.named("service-access-secret").raw_inputs["stringData"]
               ["service-secrets.json"])


def test_agent_config_holds_refs_never_values(synth: tuple[str, SynthResult]) -> None:
    cloud, result = synth
    config, script = _controller_files(cloud, result)
    headers = config["service"]["service_spec"]["readiness_probe"]["headers"]
    assert headers == {"Authorization": "Bearer ${HF_TOKEN}", "X-Api-Key": "${API_KEY}"}
    assert config["secrets_file"] == SERVICE_SECRETS_FILE
    for text in (json.dumps(config), script):
        assert CONFIG_SECRET not in text and YAML_SECRET not in text
    if cloud != "kubernetes":
        whole = _cloud_init(result, cloud)
        assert CONFIG_SECRET not in whole and YAML_SECRET not in whole


def test_agent_config_and_stored_secrets_give_the_real_probe(
        synth: tuple[str, SynthResult], tmp_path: Path) -> None:
    cloud, result = synth
    config, _ = _controller_files(cloud, result)
    stored = tmp_path / "service-secrets.json"
    stored.write_text(_stored_secrets(cloud, result))
    config.update(secrets_file=str(stored), token="t" * 16,
                  state_file=str(tmp_path / "agent.db"))
    config.pop("token_file", None)
    config.pop("token_env", None)
    loaded = AgentConfig.from_dict(config)
    assert loaded.probe.headers == {"Authorization": f"Bearer {CONFIG_SECRET}",
                                    "X-Api-Key": YAML_SECRET}


def _gcp_service_secret_id() -> str:
    return str(_run("gcp").named("service-access-service-secrets").inputs["secretId"])


@pytest.mark.parametrize(("cloud", "secret_id"), [
    ("aws", "arn:aws:synth:::secret/service-access-service-secrets"),
    ("gcp", None),
])
def test_vm_controller_fetches_the_service_secret_at_boot(
        cloud: str, secret_id: str | None, tmp_path: Path) -> None:
    result = _run(cloud)
    secret_id = secret_id or _gcp_service_secret_id()
    _, script = _controller_files(cloud, result)
    assert (f"(umask 077 && skyform_fetch_secret {secret_id} "
            f">{SERVICE_SECRETS_FILE}.new)") in script
    assert f"mv {SERVICE_SECRETS_FILE}.new {SERVICE_SECRETS_FILE}" in script
    # The agent starts after ``controller.sh token`` (ExecStartPre) has written the file.
    assert "ExecStartPre=/opt/skyform/controller.sh token" in _cloud_init(result, cloud)
    bash_syntax(tmp_path, script, "controller.sh")
    cloud_init_schema(tmp_path, _cloud_init(result, cloud))


def test_aws_controller_policy_reads_the_service_secret() -> None:
    result = _run("aws")
    policy = json.loads(result.named("service-controller-pulumi-up").inputs["policy"])
    reads = [s for s in policy["Statement"]
             if s["Action"] == ["secretsmanager:GetSecretValue"]]
    resources = [r for s in reads for r in
                 (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])]
    assert "arn:aws:synth:::secret/service-access-service-secrets" in resources
    assert "arn:aws:synth:::secret/service-access-agent-token" in resources


def test_aws_controller_policy_without_service_secrets_reads_only_the_token() -> None:
    policy = json.loads(run("cpu_http.yaml", "aws").named(
        "service-controller-pulumi-up").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ReadControllerSecrets"]["Resource"] == [
        "arn:aws:synth:::secret/service-access-agent-token",
        "arn:aws:synth:::secret/service-controller-config"]


def test_gcp_controller_can_access_the_service_secret() -> None:
    member = _run("gcp").named("service-controller-service-secrets")
    assert member.inputs["secretId"] == _gcp_service_secret_id()
    assert _gcp_service_secret_id().startswith("secret-probe-")
    assert member.inputs["role"] == "roles/secretmanager.secretAccessor"
    assert member.inputs["member"] == _run("gcp").named(
        "service-controller-token").inputs["member"]


def test_kubernetes_controller_mounts_the_service_secrets() -> None:
    result = _run("kubernetes")
    pod = result.named("service-controller-deployment").inputs["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "service-secrets")
    assert volume["secret"]["secretName"] == "secret-probe-secrets"
    assert volume["secret"]["defaultMode"] == 0o400
    assert volume["secret"]["items"] == [{"key": "service-secrets.json",
                                          "path": Path(SERVICE_SECRETS_FILE).name}]
    mount = next(m for m in pod["containers"][0]["volumeMounts"]
                 if m["name"] == "service-secrets")
    assert mount["mountPath"] == str(Path(SERVICE_SECRETS_FILE).parent)
    assert mount["readOnly"] is True


def test_no_secrets_means_no_secrets_file() -> None:
    for cloud in ("aws", "kubernetes"):
        result = run("cpu_http.yaml", cloud)
        config, script = _controller_files(cloud, result)
        assert "secrets_file" not in config
        assert "service-secrets" not in script


@pytest.mark.parametrize("cloud", ["aws", "gcp", "kubernetes"])
def test_controller_pulumi_credentials_stay_secret(cloud: str) -> None:
    """skyform:pulumiPassphrase reaches the controller only through the secret store (VMs:
    inside the controller config secret; Kubernetes: the Secret, mounted 0400), and the agent
    config names only the file it is read from."""
    passphrase = "controller-passphrase-5e1f"
    config, secret_keys = stack_config(
        FIXTURES / "cpu_http.yaml", cloud,
        extra={"backendUrl": "s3://state", "pulumiPassphrase": passphrase})
    result = synthesize(config, [*secret_keys, "skyform:pulumiPassphrase"])
    assert passphrase not in everything_visible(result)
    raw = json.dumps([r.raw_inputs for r in result.resources], default=str)
    assert passphrase in raw  # it is there, as a secret input
    assert "/run/skyform/pulumi/passphrase" in raw  # the agent's deployer reads this file
