"""``skyform preview|up|refresh|destroy`` print the engine's output as the CLI printed it.

The Automation API hands ``on_output`` each line of the CLI's stdout without its line end;
the command must put the line ends back (one line per callback, blank lines kept) and ask
for colour only when its own stdout is a terminal. The real engine's output through the
command is checked in tests/test_engine_kubernetes.py (marker ``engine``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from components.commands import stack as stack_cmd

#: Lines as the Automation API passes them (``line.rstrip()`` of the CLI's stdout).
ENGINE_LINES = [
    "Updating (dev):",
    "    pulumi:pulumi:Stack skyform-dev running",
    " +  kubernetes:apps/v1:StatefulSet hello-ondemand created (0.01s)",
    "",
    "Resources:",
    "    + 1 created",
    "    9 unchanged",
    "",
    "Duration: 3s",
]


class _Stack:
    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def up(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        for line in ENGINE_LINES:
            kwargs["on_output"](line)


def test_up_prints_the_engines_lines_with_their_line_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: skyform\nruntime: python\n")
    stack = _Stack()
    opened: list[tuple[Path, str]] = []

    def open_stack(work_dir: Path, name: str) -> _Stack:
        opened.append((work_dir, name))
        return stack

    monkeypatch.setattr(stack_cmd, "open_stack", open_stack)
    result = CliRunner().invoke(stack_cmd.up, ["--stack", "dev", "--cwd", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert opened == [(tmp_path, "dev")]
    assert result.output == "\n".join(ENGINE_LINES) + "\n"
    assert result.output.splitlines() == ENGINE_LINES
    # CliRunner's stdout is no terminal: the CLI's own default (no colour into a pipe).
    assert "color" not in stack.kwargs


def test_line_printer_restores_each_line_end() -> None:
    out = io.StringIO()
    emit = stack_cmd.line_printer(out)
    for line in ENGINE_LINES:
        emit(line)
    assert out.getvalue().split("\n") == [*ENGINE_LINES, ""]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert stack_cmd.engine_color(_Terminal()) == "always"
    assert stack_cmd.engine_color(io.StringIO()) is None
    monkeypatch.setenv("NO_COLOR", "1")
    assert stack_cmd.engine_color(_Terminal()) is None
