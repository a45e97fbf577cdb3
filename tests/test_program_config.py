"""Stack config: every key in Pulumi.yaml is read by the program, the example stacks run, and
bad values are refused with the key named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.stack_config import (
    OBJECT_KEYS,
    SECRET_KEYS,
    UNSET_INT,
    StackConfigError,
    read_stack_settings,
)
from components.synth import synthesize

ROOT = Path(__file__).resolve().parent.parent


class _RecordingConfig:
    """Stands in for ``pulumi.Config``: answers service and cloud, records every key asked."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def _ask(self, key: str, *_: Any, **__: Any) -> Any:
        self.asked.add(key)
        return {"service": "svc.yaml", "cloud": "aws"}.get(key)

    get = get_int = get_object = get_secret = get_secret_object = _ask


def test_declared_keys_are_exactly_the_keys_read(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = {k.split(":", 1)[1] for k in yaml.safe_load(
        (ROOT / "Pulumi.yaml").read_text())["config"] if k.startswith("skyform:")}
    config = _RecordingConfig()
    raw_reads: set[str] = set()

    def get_config(key: str) -> None:
        raw_reads.add(key.split(":", 1)[1])

    monkeypatch.setattr(pulumi.runtime, "get_config", get_config)
    read_stack_settings(config)  # type: ignore[arg-type]
    read = config.asked | raw_reads
    # Object-valued and optional secret keys cannot be declared (see the next tests); all
    # others must be.
    assert declared == read - set(OBJECT_KEYS) - set(SECRET_KEYS)
    assert set(OBJECT_KEYS) | set(SECRET_KEYS) <= read


REQUIRED_KEYS = {"skyform:service", "skyform:cloud"}
_PYTHON_TYPES = {"string": str, "integer": int, "boolean": bool, "array": list}


def test_only_the_required_keys_lack_a_default() -> None:
    """The engine makes a project-namespace key with neither a default nor a stack value
    *required* (pkg/workspace/config.go, mergeConfig): `pulumi preview` then stops with
    "Stack is missing configuration values". Every optional key therefore has a default of
    its declared type, and the "not set" defaults are the ones the program reads as unset."""
    config = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    without_default = {k for k, decl in config.items() if "default" not in decl}
    assert without_default == REQUIRED_KEYS
    for key, decl in config.items():
        if "default" not in decl:
            continue
        default = decl["default"]
        assert type(default) is _PYTHON_TYPES[decl["type"]], key
        assert not decl.get("secret"), f"{key}: a secret key cannot have a default"
        if decl["type"] == "integer":
            assert default == UNSET_INT or default >= 0, key


def test_declared_defaults_mean_unset(tmp_path: Path) -> None:
    """Pulumi.yaml's defaults, as the engine merges them, plan the same service as no value."""
    config = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    base = {"skyform:service": str(ROOT / "examples" / "hello.yaml"), "skyform:cloud": "aws"}
    defaults = {k: d["default"] if isinstance(d["default"], str) else json.dumps(d["default"])
                for k, d in config.items() if "default" in d and k not in base}
    plain = synthesize(base)
    merged = synthesize({**defaults, **base})
    assert merged.outputs == plain.outputs
    assert sorted(r.type for r in merged.resources) == sorted(r.type for r in plain.resources)


def test_every_declaration_has_a_type_pulumi_accepts() -> None:
    """Pulumi's project file reference: ``type`` is required and is one of string, boolean,
    integer or array (``items`` required for array); a schema without it makes the CLI refuse
    the project file."""
    config = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    for key, decl in config.items():
        assert isinstance(decl, dict), key
        assert decl.get("type") in {"string", "boolean", "integer", "array"}, key
        if decl["type"] == "array":
            assert decl.get("items", {}).get("type") in {"string", "boolean", "integer"}, key
    for key in OBJECT_KEYS:
        assert f"skyform:{key}" not in config


@pytest.mark.parametrize("stack", sorted((ROOT / "stacks").glob("Pulumi.*-example.yaml")))
def test_example_stacks_synthesize(stack: Path) -> None:
    config = yaml.safe_load(stack.read_text())["config"]
    flat = {k: v if isinstance(v, str) else json.dumps(v)
            for k, v in config.items()}
    flat["skyform:service"] = str(ROOT / config["skyform:service"])
    result = synthesize(flat)
    assert result.outputs["endpoint"].endswith(":30001")
    assert result.outputs["replicaCount"] >= 1


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("skyform:cloud", "azure", "skyform:cloud: must be one of aws, gcp, kubernetes"),
        ("skyform:allowedCidrs", '["not-a-cidr"]', "skyform:allowedCidrs: 'not-a-cidr'"),
        ("skyform:maxReplicas", "0", "skyform:maxReplicas: 0 is below"),
        ("skyform:replicas", "-2", "skyform:replicas: must be >= 0"),
        ("skyform:minReplicas", "two", "skyform:minReplicas"),
        ("skyform:acceleratorLabel", "bad label!", "skyform:acceleratorLabel: 'bad label!'"),
        ("skyform:priceTable", "aws", "skyform:priceTable: must be one of none, gke"),
        ("skyform:serviceAccount", "Not_Valid", "skyform:serviceAccount: 'Not_Valid'"),
        ("skyform:bucketStore", "azure", "skyform:bucketStore: must be s3 or gcs"),
        ("skyform:updateMode", "canary",
         "skyform:updateMode: must be one of rolling, blue_green, got 'canary'"),
    ],
)
def test_bad_config_is_refused_with_the_key(key: str, value: str, message: str) -> None:
    config = {"skyform:service": str(ROOT / "examples" / "hello.yaml"), "skyform:cloud": "aws",
              "skyform:minReplicas": "1", key: value}
    with pytest.raises(pulumi.RunError) as caught:
        synthesize(config)
    assert isinstance(caught.value.__cause__, StackConfigError)
    assert message in str(caught.value)


@pytest.mark.parametrize(("key", "attr"), [
    ("acceleratorLabel", "accelerator_label"), ("priceTable", "price_table"),
    ("serviceAccount", "service_account"), ("bucketStore", "bucket_store"),
    ("updateMode", "update_mode"),
])
def test_kubernetes_keys_declare_the_default_the_program_uses(key: str, attr: str) -> None:
    """The real CLI treats a declared key without ``default`` as required."""
    from components.stack_config import StackSettings

    decl = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"][f"skyform:{key}"]
    assert decl["default"] == getattr(StackSettings(service="s.yaml", cloud="kubernetes"), attr)


@pytest.mark.parametrize("mode", ["rolling", "blue_green"])
def test_update_mode_reaches_the_agent_config(mode: str) -> None:
    config = {"skyform:service": str(ROOT / "examples" / "hello.yaml"),
              "skyform:cloud": "kubernetes"}
    if mode != "rolling":  # rolling is the default; blue_green also has a recorded version
        config["skyform:updateMode"] = mode
        config["skyform:fleet"] = json.dumps({"version": 4, "generations": [
            {"generation": 1, "digest": "d", "spot": 0, "ondemand": 1}]})
    result = synthesize(config)
    agent = json.loads(result.named("service-controller-files").raw_inputs["data"]["agent.json"])
    assert agent["autoscaler"]["update_mode"] == mode
    # The version the agent wrote into the fleet is not copied into its config (that would
    # change the controller's config after every rollout); the agent reads it from the fleet.
    assert "version" not in agent["autoscaler"]
    assert result.outputs["fleet"]["version"] == (None if mode == "rolling" else 4)
