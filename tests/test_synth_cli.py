"""`skyform synth`: JSON and human output, manifests, exit 2 for bad or unplaceable specs."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import yaml
from click.testing import CliRunner
from program_support import CONFIG_SECRET, FIXTURES, YAML_SECRET

from components.commands.synth import synth


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(synth, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_json_lists_resources_and_outputs() -> None:
    code, out, _ = _invoke(str(FIXTURES / "gpu_spot.yaml"), "--cloud", "aws", "--json",
                           "--replicas", "3", "--secret", f"EXTRA={CONFIG_SECRET}")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"resources", "outputs"}
    types = {r["type"] for r in doc["resources"]}
    assert {"skyform:index:SkyService", "skyform:aws:ReplicaGroup", "skyform:aws:Firewall",
            "skyform:aws:Controller", "aws:ec2/instance:Instance"} <= types
    assert all(set(r) == {"type", "name", "parent", "inputs"} for r in doc["resources"])
    assert doc["outputs"]["replicaCount"] == 3
    assert doc["outputs"]["endpoint"].endswith(":30001")
    assert YAML_SECRET not in out and CONFIG_SECRET not in out


def test_human_output_has_tree_cost_and_outputs() -> None:
    code, out, _ = _invoke(str(FIXTURES / "cpu_http.yaml"), "--cloud", "gcp")
    assert code == 0
    assert "skyform:gcp:ReplicaGroup" in out
    assert "cost estimate" in out and "/h" in out
    assert "endpoint" in out


def test_env_override_reaches_replicas() -> None:
    code, out, _ = _invoke(str(FIXTURES / "cpu_post.yaml"), "--cloud", "kubernetes", "--json",
                           "--env", "GREETING=hello-from-cli")
    assert code == 0
    assert "export GREETING=hello-from-cli" in out


def test_unplaceable_exits_2_with_reason() -> None:
    # GCP sells no A10G (a Kubernetes cluster may have one, so only a VM cloud refuses it).
    code, _, err = _invoke(str(FIXTURES / "gpu_spot.yaml"), "--cloud", "gcp")
    assert code == 2
    assert "cannot deploy on gcp" in err and "A10G" in err


def test_invalid_spec_exits_2_with_located_issue() -> None:
    code, _, err = _invoke(str(FIXTURES / "invalid.yaml"), "--cloud", "aws")
    assert code == 2
    assert "invalid.yaml:3:" in err and "service.replicas" in err


def test_missing_secret_value_is_a_spec_error_and_secret_flag_fixes_it() -> None:
    code, _, err = _invoke(str(FIXTURES / "t4_spot.yaml"), "--cloud", "aws")
    assert code == 2 and "HF_TOKEN" in err
    code, _, _ = _invoke(str(FIXTURES / "t4_spot.yaml"), "--cloud", "aws", "--secret",
                         "HF_TOKEN=abc")
    assert code == 0


def test_manifests_are_written_and_valid(tmp_path: Path) -> None:
    code, _, err = _invoke(str(FIXTURES / "t4_spot.yaml"), "--cloud", "kubernetes",
                           "--secret", f"HF_TOKEN={CONFIG_SECRET}", "--manifests",
                           str(tmp_path / "out"), "--json")
    assert code == 0, err
    files = sorted((tmp_path / "out").glob("*.yaml"))
    assert len(files) >= 10
    for file in files:
        text = file.read_text()
        assert CONFIG_SECRET not in text
        kubernetes_validate.validate(yaml.safe_load(text), "1.30.0", strict=True)


def test_manifests_only_for_kubernetes(tmp_path: Path) -> None:
    code, _, _ = _invoke(str(FIXTURES / "cpu_http.yaml"), "--cloud", "aws", "--manifests",
                         str(tmp_path))
    assert code == 2  # click usage error
