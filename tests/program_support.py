"""Helpers for the Pulumi program tests: run the real program under mocks on a fixture."""

from __future__ import annotations

import base64
import gzip
import subprocess
from pathlib import Path
from typing import Any

from components.synth import SynthResult, stack_config, synthesize

FIXTURES = Path(__file__).parent / "fixtures" / "program"
YAML_SECRET = "hf_plaintext_from_yaml_123"
CONFIG_SECRET = "hf_cfg_secret_999"


def run(fixture: str, cloud: str, *, replicas: int | None = None,
        secrets: dict[str, str] | None = None, **extra: Any) -> SynthResult:
    config, secret_keys = stack_config(FIXTURES / fixture, cloud, replicas=replicas,
                                       secrets=secrets, extra=extra)
    return synthesize(config, secret_keys)


def decode_user_data(value: str) -> str:
    raw = base64.b64decode(value)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode()


def cloud_init_schema(tmp_path: Path, text: str, name: str = "user-data.yaml") -> None:
    path = tmp_path / name
    path.write_text(text)
    done = subprocess.run(["cloud-init", "schema", "--config-file", str(path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout


def bash_syntax(tmp_path: Path, text: str, name: str = "script.sh") -> None:
    path = tmp_path / name
    path.write_text(text)
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def everything_visible(result: SynthResult) -> str:
    """All masked inputs and outputs as text (what synth prints)."""
    import json

    return json.dumps(result.to_json(), default=str)
