"""What every ``skyform`` subcommand does with its input the same way: ``K=V`` options, and
loading a service YAML with the exit codes the README promises (1 unreadable, 2 invalid)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

import click

from components.errors import SpecError
from components.parser import SpecFileError, load_service
from components.spec import ServiceTask
from lb_agent.config import describe_file_error


def parse_pairs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """``K=V`` pairs (the value may be empty or contain ``=``); no ``=`` is a usage error."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        out[key] = value
    return out


def print_spec_error(file: str, exc: SpecError) -> None:
    """Every problem as ``FILE:LINE:COL: field.path: message`` on stderr, then a count."""
    for issue in exc.issues:
        click.echo(str(issue), err=True)
    n = len(exc.issues)
    click.echo(f"{file}: invalid service YAML ({n} problem{'' if n == 1 else 's'})", err=True)


def readable_file_or_exit(path: str | os.PathLike[str], what: str = "service YAML file") -> None:
    """Exit 1 with ``error: PATH: ...`` when ``path`` is missing, a directory or unreadable
    (the same words as ``load_service``'s and the agent config's)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        click.echo(f"error: {path}: {describe_file_error(exc, what)}", err=True)
        sys.exit(1)


def load_service_or_exit(
    file: str, envs: Mapping[str, str], secrets: Mapping[str, str], *, as_json: bool = False
) -> ServiceTask:
    """The parsed service, or exit 1 (missing/unreadable file) or 2 (invalid YAML).

    ``as_json``: the problems also go to stdout as ``{"file", "valid": false, "errors": [{file,
    line, column, field, message}]}`` (the text stays on stderr); an unreadable file gives
    ``{"file", "valid": false, "error": message}``."""
    try:
        return load_service(file, env_overrides=envs, secret_overrides=secrets)
    except SpecFileError as exc:
        if as_json:
            click.echo(json.dumps({"file": file, "valid": False, "error": str(exc)}, indent=2))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except SpecError as exc:
        if as_json:
            errors = [issue.to_json() for issue in exc.issues]
            click.echo(json.dumps({"file": file, "valid": False, "errors": errors}, indent=2))
        print_spec_error(file, exc)
        sys.exit(2)
