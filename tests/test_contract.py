"""The generator-agent contract (lb_agent.contract): the config the Pulumi program writes for
the controller is the typed model the agent loads, whole, with nothing added afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.synth import synthesize
from lb_agent.config import AgentConfig, ConfigError
from lb_agent.contract import ON_AGENT, AgentConfigFile, dump

ROOT = Path(__file__).resolve().parents[1]


def _kubernetes_agent_file(**config: str) -> dict[str, object]:
    result = synthesize({"skyform:service": str(ROOT / "examples" / "hello.yaml"),
                         "skyform:cloud": "kubernetes", **config})
    text = result.named("service-controller-files").raw_inputs["data"]["agent.json"]
    data: dict[str, object] = json.loads(text)
    return data


def test_the_generated_file_is_the_contract_model_and_loads_in_the_agent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _kubernetes_agent_file()
    model = AgentConfigFile.model_validate(data, context={ON_AGENT: True})
    assert dump(model) == data  # nothing in the file the model does not hold, and back
    # The Kubernetes controller's token comes from its environment, built in, not patched.
    assert data["token_env"] and "token_file" not in data
    monkeypatch.setenv(str(data["token_env"]), "t" * 32)
    config = AgentConfig.from_dict(data)
    assert config.state_file == data["state_file"]
    assert config.service == data["service"] and config.autoscaler == data["autoscaler"]


def test_unset_options_stay_out_of_the_file() -> None:
    """Only what the generator set is dumped, so an unset stack option keeps the agent's
    default and does not change the controller's file."""
    data = _kubernetes_agent_file()
    assert "admission" not in data and "routing" not in data and "limits" not in data
    keyed = _kubernetes_agent_file(**{"skyform:rateLimitRps": "5"})
    assert keyed["admission"] == {"rate_limit_rps": 5.0}


def test_files_are_checked_where_the_agent_loads_them_not_where_they_are_named() -> None:
    tls = {"tls": {"keyfile": "/etc/skyform/tls/key.pem", "certfile": "/nope/cert.pem"}}
    built = AgentConfigFile.model_validate(tls)  # the generator: the controller's paths
    assert built.tls is not None and built.tls.certfile == "/nope/cert.pem"
    with pytest.raises(ConfigError) as info:
        AgentConfig.from_dict({"token": "t" * 32, **tls})
    assert any(field.startswith("tls.") and "file not found" in message
               for field, message in info.value.issues)
