"""``skyform preview|up|refresh|destroy``: the real Pulumi engine on a stack of this project.

They do what ``pulumi preview`` (etc.) does in the project directory, through the Automation
API with the program run inline (``lb_agent.control.deployers.workspace``), so they need the
``pulumi``
CLI and the providers but not the ``pulumi-language-python`` plugin. The agent's deployer opens
stacks the same way, so these commands run exactly what the controller runs.

The engine's output is printed as the CLI prints it: line by line as it comes (the Automation
API hands each line over without its line end), in colour on a terminal, with the summary.

Exit codes: 0 done; 1 the engine failed (its message on stderr as ``error: ...``); click's 2
for usage errors.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click
import pulumi.automation as auto

from lb_agent.control.deployers.workspace import engine_error, open_stack

_OPTIONS = [
    click.option("--stack", "-s", "stack_name", required=True, help="Stack name."),
    click.option("--cwd", "work_dir", type=click.Path(file_okay=False, path_type=Path),
                 default=Path("."), show_default=True,
                 help="The project directory (holds Pulumi.yaml)."),
    click.option("--target", "targets", multiple=True, metavar="URN",
                 help="Only these resources (and, with --target-dependents, what depends "
                      "on them)."),
    click.option("--target-dependents", is_flag=True, help="Include dependents of --target."),
]


def _with_options(fn: Any) -> Any:
    for option in reversed(_OPTIONS):
        fn = option(fn)
    return fn


def line_printer(out: TextIO | None = None) -> Callable[[str], None]:
    """An ``on_output`` callback printing each of the engine's lines to ``out`` (default:
    stdout) with its line end back, flushed, so the output keeps the engine's lines."""

    def emit(line: str) -> None:
        click.echo(line, file=out)

    return emit


def engine_color(out: TextIO | None = None) -> str | None:
    """``always`` when ``out`` (default: stdout) is a terminal and ``NO_COLOR`` is unset: the
    CLI's own stdout is a pipe to us, so its ``auto`` would never colour. None otherwise
    (the CLI's default, plain text into a pipe or file)."""
    stream = out if out is not None else sys.stdout
    if os.environ.get("NO_COLOR") or not stream.isatty():
        return None
    return "always"


def _run(operation: str, stack_name: str, work_dir: Path, targets: tuple[str, ...],
         target_dependents: bool) -> None:
    if not (work_dir / "Pulumi.yaml").is_file():
        click.echo(f"error: {work_dir / 'Pulumi.yaml'}: no Pulumi project here (use --cwd)",
                   err=True)
        sys.exit(1)
    kwargs: dict[str, Any] = {"on_output": line_printer()}
    color = engine_color()
    if color is not None:
        kwargs["color"] = color
    if targets:
        kwargs["target"] = list(targets)
        kwargs["target_dependents"] = target_dependents or None
    try:
        stack = open_stack(work_dir, stack_name)
        getattr(stack, operation)(**kwargs)
    except auto.CommandError as exc:
        # The engine already printed its diagnostics through on_output; say what failed.
        click.echo(f"error: pulumi {operation} failed: "
                   f"{engine_error(str(exc)).removeprefix('error: ')}", err=True)
        sys.exit(1)
    except FileNotFoundError as exc:  # no `pulumi` on PATH
        click.echo(f"error: {exc.strerror}: {exc.filename} (install the Pulumi CLI, or set "
                   "SKYFORM_PULUMI_BIN to scripts/pulumi-toolchain.sh's output)", err=True)
        sys.exit(1)


def _command(operation: str, help_text: str) -> click.Command:
    @click.command(name=operation, help=help_text)
    @_with_options
    def command(stack_name: str, work_dir: Path, targets: tuple[str, ...],
                target_dependents: bool) -> None:
        _run(operation, stack_name, work_dir, targets, target_dependents)

    return command


preview = _command("preview", "Show what `up` would change (pulumi preview).")
up = _command("up", "Create or update the stack's resources (pulumi up --yes).")
refresh = _command("refresh", "Read the resources' real state into the stack "
                   "(pulumi refresh --yes).")
destroy = _command("destroy", "Delete every resource of the stack (pulumi destroy --yes).")
