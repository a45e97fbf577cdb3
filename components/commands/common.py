"""What every ``skyform`` subcommand does with its input the same way: ``K=V`` options, and
loading a service YAML with the exit codes the README promises (1 unreadable, 2 invalid)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import click

from components.errors import SpecError
from components.parser import SpecFileError, load_service
from components.spec import ServiceTask


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


def load_service_or_exit(
    file: str, envs: Mapping[str, str], secrets: Mapping[str, str]
) -> ServiceTask:
    """The parsed service, or exit 1 (missing/unreadable file) or 2 (invalid YAML)."""
    try:
        return load_service(file, env_overrides=envs, secret_overrides=secrets)
    except SpecFileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except SpecError as exc:
        print_spec_error(file, exc)
        sys.exit(2)
