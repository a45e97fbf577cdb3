"""API keys and admission settings from the stack config, through the real program on every
cloud: ``skyform:apiKeys`` never appears in plain text in any resource input, output or user
data (only SHA-256 digests, and those only inside secrets), and the agent config the
controller gets (plus, on Kubernetes, the key file from the Secret) admits the keys: an agent
built from it answers 401 without a key, 200 with one, and applies a key's own rate limit."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pulumi
import pytest
from agent_helpers import Replica, in_flight_back_to_zero, running_agent  # noqa: F401
from program_support import FIXTURES, decode_user_data, everything_visible

from components.clouds.kubernetes import API_KEYS_FILE, API_KEYS_KEY
from components.stack_config import StackConfigError
from components.synth import SynthResult, stack_config, synthesize
from lb_agent.config import AgentConfig

ALICE = "sk-alice-4f1c9e0b7d2a6e83"
BOB = "sk-bob-91d0c3e5a7f24b68"
# As `pulumi config set --path` stores them: 0.01 is a string there, 1 a number.
KEYS = {"alice": ALICE, "bob": {"key": BOB, "rateLimitRps": "0.01", "rateLimitBurst": 1}}
SETTINGS = {"maxInFlightPerReplica": "4", "queueWaitSeconds": "30", "rateLimitRps": "50",
            "rateLimitBurst": "100", "trustedProxies": ["10.0.0.0/8"]}


def _synth(cloud: str, keys: Any, **extra: Any) -> SynthResult:
    config, secret_keys = stack_config(FIXTURES / "cpu_http.yaml", cloud,
                                       extra={"apiKeys": keys, **extra})
    return synthesize(config, [*secret_keys, "skyform:apiKeys"])


@functools.cache
def _run(cloud: str) -> SynthResult:
    return _synth(cloud, KEYS, **SETTINGS)


@pytest.fixture(params=["aws", "gcp", "kubernetes"])
def synth(request: pytest.FixtureRequest) -> tuple[str, SynthResult]:
    return request.param, _run(request.param)


def _everything_revealed(cloud: str, result: SynthResult) -> str:
    """Every resource input with secrets revealed, user data decoded, and the outputs."""
    parts = [json.dumps([r.raw_inputs for r in result.resources], default=str),
             json.dumps(result.outputs, default=str)]
    for r in result.resources:
        if "userDataBase64" in r.raw_inputs:
            parts.append(decode_user_data(r.raw_inputs["userDataBase64"]))
    return "\n".join(parts)


def _controller_agent(cloud: str, result: SynthResult, tmp_path: Path) -> dict[str, Any]:
    """The agent config the controller runs with, its files at ``tmp_path``."""
    if cloud == "kubernetes":
        config = json.loads(result.named("service-controller-files").raw_inputs["data"]
                            ["agent.json"])
        keyfile = tmp_path / "api-keys.json"
        keyfile.write_text(result.named("service-access-secret").raw_inputs["stringData"]
                           [API_KEYS_KEY])
        assert config["admission"]["api_keys_file"] == API_KEYS_FILE
        config["admission"]["api_keys_file"] = str(keyfile)
    else:
        version = next(r for r in result.resources
                       if r.type.endswith("secretVersion:SecretVersion")
                       and r.name == "service-controller-config")
        config = json.loads(version.raw_inputs["secretString" if cloud == "aws"
                                               else "secretData"])["agent"]
    config.update(token="t" * 16, state_file=str(tmp_path / "agent.db"))
    config.pop("token_file", None)
    config.pop("token_env", None)
    return config


def test_no_key_is_ever_in_plain_text(synth: tuple[str, SynthResult]) -> None:
    cloud, result = synth
    revealed = _everything_revealed(cloud, result)
    visible = everything_visible(result)
    for key in (ALICE, BOB):
        assert key not in revealed  # not even inside a secret: only digests leave the stack
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert digest in revealed  # the digest is delivered ...
        assert digest not in visible  # ... inside secrets only


def test_the_controller_agent_config_carries_the_plain_settings(
        synth: tuple[str, SynthResult], tmp_path: Path) -> None:
    cloud, result = synth
    config = AgentConfig.from_dict(_controller_agent(cloud, result, tmp_path))
    adm = config.admission
    assert (adm.max_in_flight_per_replica, adm.rate_limit_rps, adm.rate_limit_burst) \
        == (4, 50.0, 100)
    assert adm.trusted_proxies == ["10.0.0.0/8"] and config.queue_wait_seconds == 30
    assert [(d.name, d.rate_limit_rps, d.rate_limit_burst) for d in adm.api_key_digests] \
        == [("alice", None, None), ("bob", 0.01, 1)]
    assert adm.api_keys == []


@pytest.mark.parametrize("cloud", ["aws", "gcp", "kubernetes"])
async def test_the_agent_built_from_the_controller_config_admits_the_keys(
        cloud: str, tmp_path: Path) -> None:
    config = _controller_agent(cloud, _run(cloud), tmp_path)
    rep = await Replica("a").start()
    config.update(replicas=[rep.url], public={"host": "127.0.0.1", "port": 0},
                  admin={"host": "127.0.0.1", "port": 0}, deployer=None,
                  autoscaler={"enabled": False},
                  # One load balancer here: the Kubernetes lease needs the in-cluster API.
                  lease={"kind": "none"})
    try:
        async with running_agent(AgentConfig.from_dict(config)) as agent:
            await agent.wait_ready(1)
            async with httpx.AsyncClient(base_url=agent.url, timeout=10) as c:
                assert (await c.get("/")).status_code == 401
                assert (await c.get("/", headers={"Authorization": "Bearer " + "x" * 20})
                        ).status_code == 401
                for key in (ALICE, BOB):
                    r = await c.get("/", headers={"Authorization": f"Bearer {key}"})
                    assert r.status_code == 200
                # bob's own limit (burst 1) is spent; alice has the stack's 50 rps.
                r = await c.get("/", headers={"Authorization": f"Bearer {BOB}"})
                assert r.status_code == 429 and "retry-after" in r.headers
                r = await c.get("/", headers={"Authorization": f"Bearer {ALICE}"})
                assert r.status_code == 200
            assert rep.state.hits == 3
    finally:
        await rep.stop()


def test_kubernetes_mounts_the_digests_from_the_secret_0400() -> None:
    result = _run("kubernetes")
    pod = result.named("service-controller-deployment").inputs["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["defaultMode"] == 0o400
    assert volume["secret"]["items"] == [{"key": API_KEYS_KEY,
                                          "path": Path(API_KEYS_FILE).name}]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys")
    assert mount["mountPath"] == str(Path(API_KEYS_FILE).parent) and mount["readOnly"] is True
    # The ConfigMap (plain) holds the file's path only.
    assert "sha256" not in result.named("service-controller-files").raw_inputs["data"][
        "agent.json"]


def test_a_list_of_keys_is_named_by_index(tmp_path: Path) -> None:
    result = _synth("aws", [ALICE, BOB])
    config = AgentConfig.from_dict(_controller_agent("aws", result, tmp_path))
    assert [d.name for d in config.admission.api_key_digests] == ["key-0", "key-1"]
    assert [d.sha256 for d in config.admission.api_key_digests] == [
        hashlib.sha256(k.encode()).hexdigest() for k in (ALICE, BOB)]


def test_without_keys_or_settings_the_agent_config_has_no_admission(tmp_path: Path) -> None:
    for cloud in ("aws", "kubernetes"):
        config, secret_keys = stack_config(FIXTURES / "cpu_http.yaml", cloud)
        agent = _controller_agent_plain(cloud, synthesize(config, secret_keys))
        assert "admission" not in agent and "queue_wait_seconds" not in agent.get("proxy", {})


def _controller_agent_plain(cloud: str, result: SynthResult) -> dict[str, Any]:
    if cloud == "kubernetes":
        return dict(json.loads(result.named("service-controller-files").raw_inputs["data"]
                               ["agent.json"]))
    version = next(r for r in result.resources if r.name == "service-controller-config"
                   and r.type.endswith("secretVersion:SecretVersion"))
    return dict(json.loads(version.raw_inputs["secretString"])["agent"])


@pytest.mark.parametrize(("keys", "extra", "message"), [
    ({"alice": "short"}, {}, "skyform:apiKeys.alice: the key must be at least 16 characters"),
    ([ALICE, "  padded-key-0123456789 "], {}, "skyform:apiKeys[1]: the key must be"),
    ({"bad name!": ALICE}, {}, "skyform:apiKeys.bad name!: the name 'bad name!' must match"),
    ({"bob": {"key": BOB, "rps": 1}}, {}, "skyform:apiKeys.bob: unknown field(s) rps"),
    ({"bob": {"key": BOB, "rateLimitRps": -1}}, {},
     "skyform:apiKeys.bob.rateLimitRps: expected a number >= 0"),
    ({"bob": {"key": BOB, "rateLimitBurst": "many"}}, {},
     "skyform:apiKeys.bob.rateLimitBurst: expected a whole number >= 0, got 'many'"),
    ({"bob": {"rateLimitRps": 1}}, {}, "skyform:apiKeys.bob: missing the field key"),
    ({"a": ALICE, "b": ALICE}, {}, "skyform:apiKeys: b repeats the key of a"),
    ("sk-just-a-string-0123456", {}, "skyform:apiKeys: must be a list of keys or an object"),
    (json.dumps("sk-just-a-string-0123456"), {},
     "skyform:apiKeys: expected a list of keys or an object NAME: key"),
    ([ALICE], {"rateLimitRps": "fast"},
     "skyform:rateLimitRps: must be a number of requests per second >= 0"),
    ([ALICE], {"trustedProxies": ["lb"]}, "skyform:trustedProxies: 'lb' is not a CIDR"),
    ([ALICE], {"queueWaitSeconds": "-5"}, "skyform:queueWaitSeconds: must be >= 0"),
])
def test_bad_admission_config_is_refused_naming_the_entry_never_the_key(
        keys: Any, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        _synth("aws", keys, **extra)
    assert isinstance(caught.value.__cause__, StackConfigError)
    text = str(caught.value)
    assert message in text
    for secret in (ALICE, BOB, "short", "padded-key-0123456789", "sk-just-a-string"):
        assert secret not in text


def test_kubernetes_keeps_client_addresses_when_keyless_limits_need_them() -> None:
    """Key-less buckets are per client address; a LoadBalancer Service's default
    ``externalTrafficPolicy: Cluster`` would hand the agent node addresses instead."""
    config, secret_keys = stack_config(FIXTURES / "cpu_http.yaml", "kubernetes",
                                       extra={"rateLimitRps": "5"})
    spec = synthesize(config, secret_keys).named("service-controller-lb").inputs["spec"]
    assert spec["externalTrafficPolicy"] == "Local"
    keyed = _run("kubernetes").named("service-controller-lb").inputs["spec"]  # buckets per key
    assert "externalTrafficPolicy" not in keyed
    config, secret_keys = stack_config(FIXTURES / "cpu_http.yaml", "kubernetes")
    plain = synthesize(config, secret_keys).named("service-controller-lb").inputs["spec"]
    assert "externalTrafficPolicy" not in plain
