"""The exit-code table of docs/cli.md, the same in every subcommand:

0 success; 1 a file that is missing, a directory or unreadable (``error: PATH: ...``), or a
runtime failure; 2 invalid input (every problem listed), and click's usage errors (2, with
``Usage:``); 3 ``skyform local``: every replica failed (tests/test_local_explain.py).
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from components.cli import main

ROOT = Path(__file__).resolve().parents[1]
INVALID_SPEC = ROOT / "tests" / "fixtures" / "specs" / "cross_field.yaml"

#: Each subcommand that reads a file, as argv with {} for the file.
READERS = {
    "validate": ["validate", "{}"],
    "synth": ["synth", "{}", "--cloud", "aws"],
    "local": ["local", "{}"],
    "agent --config": ["agent", "--config", "{}"],
}


def _run(argv: list[str], path: Path | str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(path) if a == "{}" else a for a in argv])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("command", sorted(READERS))
def test_missing_file_is_exit_1_error(command: str, tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    code, _, err = _run(READERS[command], path)
    assert code == 1
    assert err == f"error: {path}: no such file\n"


@pytest.mark.parametrize("command", sorted(READERS))
def test_directory_is_exit_1_error(command: str, tmp_path: Path) -> None:
    code, _, err = _run(READERS[command], tmp_path)
    assert code == 1
    assert err.startswith(f"error: {tmp_path}: is a directory, not a")
    assert "Usage:" not in err


@pytest.mark.parametrize("command", sorted(READERS))
def test_unreadable_file_is_exit_1_error(command: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("service: {}\n")
    real_open = builtins.open

    def no_permission(file: Any, *args: Any, **kwargs: Any) -> Any:
        # As for a mode-000 file (root would read one anyway, so the OS cannot be used).
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_permission)
    code, _, err = _run(READERS[command], path)
    assert code == 1 and err.startswith(f"error: {path}: cannot read the file")


@pytest.mark.parametrize("command", ["validate", "synth", "local"])
def test_invalid_service_yaml_is_exit_2_with_located_problems(command: str) -> None:
    code, _, err = _run(READERS[command], INVALID_SPEC)
    assert code == 2
    assert f"{INVALID_SPEC}:6:10: service.ports: Port must be between 1 and 65535" in err


def test_invalid_agent_config_is_exit_2_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("token: short\nproxy: {max_attempts: 0}\npublic: {port: 70000}\n")
    code, _, err = _run(READERS["agent --config"], path)
    assert code == 2
    lines = err.splitlines()
    assert lines == [
        f"error: {path}: public.port: must be <= 65535, got 70000",
        f"{path}: proxy.max_attempts: must be >= 1, got 0",
        f"{path}: token: the token must be at least 8 characters",
    ]


@pytest.mark.parametrize(
    "argv",
    [["validate"], ["synth", str(INVALID_SPEC)], ["local", "x.yaml", "--bogus"],
     ["agent"], ["status", "--nope"], ["logs", "1", "--agent"], ["nosuchcommand"]],
)
def test_usage_errors_are_clicks_exit_2(argv: list[str]) -> None:
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert "Usage:" in result.stderr or "Error:" in result.stderr


def test_quick_mode_names_the_option_not_the_config_field() -> None:
    result = CliRunner().invoke(main, ["agent", "--replicas", "http://127.0.0.1:9",
                                       "--port", "70000"])
    assert result.exit_code == 2 and "'--port'" in result.stderr
    assert "public.port" not in result.stderr
    result = CliRunner().invoke(main, ["agent", "--replicas", "http://127.0.0.1:9",
                                       "--probe", "health"])
    assert result.exit_code == 2
    assert result.stderr == "error: --probe: expected a path starting with '/', got 'health'\n"
