"""``skyform validate``: exit codes, the summary, ``--json``, overrides."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from components.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "specs"

SERVICE = """\
envs:
  TOKEN: null
service:
  readiness_probe:
    path: /health
    headers:
      Authorization: Bearer $TOKEN
  replica_policy:
    min_replicas: 1
    max_replicas: 3
    target_qps_per_replica: 2
resources:
  ports: 8080
  accelerators: {T4, A10, L4}
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["validate", *args])
    return result.exit_code, result.stdout, result.stderr


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(text)
    return path


def test_valid_summary(tmp_path: Path) -> None:
    code, out, err = run(str(write(tmp_path, SERVICE)), "--env", "TOKEN=abc=def")
    assert code == 0, err
    assert "Autoscaling from 1 to 3 replicas (target QPS per replica: 2)" in out
    assert "GET /health with custom headers" in out
    assert "g4dn.xlarge" in out and "n1-standard-4" in out and "g2-standard-4" in out
    assert "$0.53/h" in out  # g4dn.xlarge on-demand
    assert "no offer" in out  # A10 is sold on neither AWS nor GCP
    # A Kubernetes cluster offers any GPU; GCP has no A10 node to price it as.
    assert "price unknown" in out
    assert err == ""


def test_json_output(tmp_path: Path) -> None:
    code, out, _ = run(str(write(tmp_path, SERVICE)), "--env", "TOKEN=sekret-token", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["service_spec"]["replica_policy"] == {
        "min_replicas": 1, "max_replicas": 3, "target_qps_per_replica": 2,
    }
    assert doc["service_port"] == 8080
    assert [r["accelerators"] for r in doc["resources"]] == [{"T4": 1}, {"A10": 1}, {"L4": 1}]
    assert doc["envs"] == {"TOKEN": "sekret-token"}
    aws = doc["placements"][0]["aws"]
    assert aws["offer"]["instance_type"] == "g4dn.xlarge"
    assert doc["placements"][1]["gcp"]["offer"] is None
    assert "offered on: kubernetes" in doc["placements"][1]["gcp"]["reason"]
    assert doc["placements"][1]["kubernetes"]["hourly_usd"] is None  # unknown, not Infinity
    assert doc["chosen_candidate"] == {"aws": 0, "gcp": 0, "kubernetes": 0}


def test_secrets_masked_in_json(tmp_path: Path) -> None:
    text = SERVICE.replace("envs:\n  TOKEN: null", "secrets:\n  TOKEN: null")
    code, out, _ = run(str(write(tmp_path, text)), "--secret", "TOKEN=hf_supersecret", "--json")
    assert code == 0
    assert "hf_supersecret" not in out
    doc = json.loads(out)
    assert doc["secrets"] == {"TOKEN": "<secret>"}


def test_invalid_exits_2_with_located_errors() -> None:
    path = FIXTURES / "many_errors.yaml"
    code, out, err = run(str(path))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0] == (
        f"{path}:2:1: resource: Invalid task YAML: Instead of 'resource', did you mean "
        "'resources'?"
    )
    assert lines[-1] == f"{path}: invalid service YAML (5 problems)"


def test_null_env_needs_value(tmp_path: Path) -> None:
    path = write(tmp_path, SERVICE)
    code, _, err = run(str(path))
    assert code == 2
    assert f"{path}:2:10: envs.TOKEN: Environment variable 'TOKEN' is None." in err
    assert run(str(path), "--env", "TOKEN=")[0] == 0  # empty string is a value


def test_missing_and_unreadable_exit_1(tmp_path: Path) -> None:
    code, _, err = run(str(tmp_path / "nope.yaml"))
    assert code == 1 and "no such file" in err
    code, _, err = run(str(tmp_path))
    assert code == 1 and "is a directory" in err


def test_malformed_env_is_usage_error(tmp_path: Path) -> None:
    code, _, err = run(str(write(tmp_path, SERVICE)), "--env", "TOKEN")
    assert code == 2
    assert "'TOKEN' is not KEY=VALUE" in err
    code, _, err = run(str(write(tmp_path, SERVICE)), "--secret", "=x")
    assert code == 2 and "is not KEY=VALUE" in err


def test_json_errors_on_stdout_and_text_on_stderr() -> None:
    path = FIXTURES / "many_errors.yaml"
    code, out, err = run(str(path), "--json")
    assert code == 2
    doc = json.loads(out)
    assert doc["file"] == str(path) and doc["valid"] is False
    assert len(doc["errors"]) == 5
    first = doc["errors"][0]
    assert first == {
        "file": str(path), "line": 2, "column": 1, "field": "resource",
        "message": "Invalid task YAML: Instead of 'resource', did you mean 'resources'?",
    }
    assert all(set(e) == {"file", "line", "column", "field", "message"} for e in doc["errors"])
    # The same problems as text on stderr, one line each, then the count.
    text = err.strip().splitlines()
    assert text[0] == f"{path}:2:1: resource: {first['message']}"
    assert len(text) == 6 and text[-1] == f"{path}: invalid service YAML (5 problems)"


def test_json_unreadable_file_is_json_too(tmp_path: Path) -> None:
    code, out, err = run(str(tmp_path / "nope.yaml"), "--json")
    assert code == 1
    assert json.loads(out) == {"file": str(tmp_path / "nope.yaml"), "valid": False,
                               "error": f"{tmp_path / 'nope.yaml'}: no such file"}
    assert err == f"error: {tmp_path / 'nope.yaml'}: no such file\n"
