"""Service secrets in the readiness probe: the spec sends ``${NAME}``, the agent fills it from
``secrets_file`` and probes a real replica with the real value, without showing it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_helpers import (  # noqa: F401 (autouse fixture)
    TOKEN,
    Replica,
    auth,
    free_port,
    in_flight_back_to_zero,
    running_agent,
)

from components.parser import parse_service_text
from lb_agent.config import AgentConfig, ConfigError, fill_secrets

REAL = "hf_real_value_from_store_42"
SERVICE_YAML = """\
service:
  readiness_probe:
    path: /health
    headers:
      Authorization: Bearer $HF_TOKEN
      X-Other: $UNKNOWN_NAME
  replicas: 1
secrets:
  HF_TOKEN: null
resources:
  cpus: 2
  ports: 8080
run: python3 -m http.server 8080
"""


def _service_json() -> dict[str, Any]:
    """What the program puts in the controller's config: secret values as ``${NAME}``."""
    task = parse_service_text(SERVICE_YAML, "svc.yaml",
                              secret_overrides={"HF_TOKEN": "<from skyform:secrets: HF_TOKEN>"})
    return task.to_json(secret_refs=True)


def _write_config(tmp_path: Path, replicas: list[str], secrets: Any = None,
                  *, secrets_file: str | None = None) -> Path:
    if secrets_file is None:
        path = tmp_path / "service-secrets.json"
        path.write_text(json.dumps({"HF_TOKEN": REAL} if secrets is None else secrets))
        secrets_file = str(path)
    config = {
        "service": _service_json(),
        "public": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "token": TOKEN,
        "state_file": str(tmp_path / "agent.db"),
        "probe": {"interval_seconds": 0.1, "timeout_seconds": 1},
        "replicas": [{"url": u, "replica_id": f"static-{i}"} for i, u in enumerate(replicas)],
        "secrets_file": secrets_file,
    }
    out = tmp_path / "agent.json"
    out.write_text(json.dumps(config))
    return out


def test_spec_sends_secret_refs_not_values_or_masks() -> None:
    task = parse_service_text(SERVICE_YAML.replace("HF_TOKEN: null", f"HF_TOKEN: {REAL}"),
                              "svc.yaml")
    probe = task.to_json(secret_refs=True)["service_spec"]["readiness_probe"]
    assert probe["headers"]["Authorization"] == "Bearer ${HF_TOKEN}"
    # The default stays masked; the secrets section is masked either way.
    assert task.to_json()["service_spec"]["readiness_probe"]["headers"]["Authorization"] == (
        "Bearer <secret>")
    assert task.to_json(secret_refs=True)["secrets"] == {"HF_TOKEN": "<secret>"}
    assert REAL not in json.dumps(task.to_json(secret_refs=True))


def test_longer_secret_value_wins_and_is_replaced_once() -> None:
    text = SERVICE_YAML.replace(
        "Bearer $HF_TOKEN", "Bearer $LONG-$HF_TOKEN"
    ).replace("HF_TOKEN: null", "HF_TOKEN: abcd\n  LONG: abcdabcd")
    task = parse_service_text(text, "svc.yaml")
    headers = task.to_json(secret_refs=True)["service_spec"]["readiness_probe"]["headers"]
    assert headers["Authorization"] == "Bearer ${LONG}-${HF_TOKEN}"


def test_config_fills_probe_but_keeps_service_in_file_form(tmp_path: Path) -> None:
    config = AgentConfig.load(str(_write_config(tmp_path, [])))
    assert config.probe.headers["Authorization"] == f"Bearer {REAL}"
    assert config.probe.headers["X-Other"] == "$UNKNOWN_NAME"  # unknown names stay
    service_text = json.dumps(config.service)
    assert REAL not in service_text and "${HF_TOKEN}" in service_text
    assert REAL not in repr(config)


def test_fill_secrets_recurses_and_handles_both_forms() -> None:
    secrets = {"A": "one", "B": "two"}
    value = {"x": ["$A", {"y": "${B}/$A_LONG/${C}"}], "n": 3}
    assert fill_secrets(value, secrets) == {"x": ["one", {"y": "two/$A_LONG/${C}"}], "n": 3}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"HF_TOKEN": 12345678}', "the value of HF_TOKEN must be a string"),
    ],
)
def test_bad_secrets_file_is_a_clear_error(tmp_path: Path, content: str | None,
                                           expected: str) -> None:
    secrets_path = tmp_path / "missing.json"
    if content is not None:
        secrets_path.write_text(content)
    config_path = _write_config(tmp_path, [], secrets_file=str(secrets_path))
    with pytest.raises(ConfigError) as err:
        AgentConfig.load(str(config_path))
    message = str(err.value)
    assert expected in message
    assert str(secrets_path) in message and str(config_path) in message
    assert err.value.field == "secrets_file"
    assert "12345678" not in message


async def test_agent_probes_with_the_real_header_and_status_hides_it(tmp_path: Path) -> None:
    rep = await Replica("a").start()
    try:
        config = AgentConfig.load(str(_write_config(tmp_path, [rep.url])))
        async with running_agent(config) as agent:
            await agent.wait_ready(1)
            probe = rep.state.probes[-1]
            assert probe["headers"]["authorization"] == f"Bearer {REAL}"
            async with httpx.AsyncClient() as client:
                status = await client.get(f"{agent.admin_url}/status", headers=auth())
            assert status.status_code == 200
            assert REAL not in status.text
    finally:
        await rep.stop()


def test_config_repr_hides_admin_token_and_deployer_env() -> None:
    """A logged or printed AgentConfig must not show the bearer token or the secret values
    ``skyform local`` hands the local deployer as replica environment."""
    config = AgentConfig.from_dict({
        "token": TOKEN,
        "state_file": ":memory:",
        "deployer": {"kind": "local", "env": {"HF_TOKEN": REAL}},
    })
    assert config.token == TOKEN and config.deployer is not None
    text = repr(config)
    assert TOKEN not in text
    assert REAL not in text
