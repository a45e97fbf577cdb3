"""SkyServe service YAML -> ``ServiceTask``, with SkyPilot-parity validation.

Stable API (other parts of skyform depend on it):

- ``load_service(path, *, env_overrides=None, secret_overrides=None) -> ServiceTask``
- ``parse_service_text(text, source, *, env_overrides=None, secret_overrides=None)``

Both raise ``components.errors.SpecError`` (every located problem) for an invalid service;
``load_service`` raises ``SpecFileError`` (an ``OSError``) when the file cannot be read.

Modules: ``yamlload`` (YAML with positions, duplicate keys), ``context`` (problem collection),
``schema`` (SkyPilot-worded schema checks), ``envs`` (envs/secrets, overrides, ``$VAR``),
``accelerators`` / ``fields`` / ``resources`` (candidates), ``service`` (the service section),
``serving`` (the ``sky serve up`` checks), ``task`` (the order of it all).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from components.errors import SpecError, SpecIssue
from components.parser.task import parse_document
from components.parser.yamlload import YAMLProblem, decode
from components.spec import ServiceTask

__all__ = ["SpecError", "SpecFileError", "load_service", "parse_service_text"]


class SpecFileError(OSError):
    """The service file is missing or cannot be read (the CLI exits 1, not 2)."""


def parse_service_text(
    text: str,
    source: str,
    *,
    env_overrides: Mapping[str, str] | None = None,
    secret_overrides: Mapping[str, str] | None = None,
) -> ServiceTask:
    """Parse and validate a service YAML given as text; ``source`` names it in errors."""
    return parse_document(
        text, source, env_overrides=env_overrides, secret_overrides=secret_overrides
    )


def load_service(
    path: str | os.PathLike[str],
    *,
    env_overrides: Mapping[str, str] | None = None,
    secret_overrides: Mapping[str, str] | None = None,
) -> ServiceTask:
    """Read, parse and validate the service YAML at ``path``."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise SpecFileError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise SpecFileError(f"{source}: is a directory, not a service YAML file") from None
    except OSError as exc:
        raise SpecFileError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    try:
        text = decode(raw)
    except YAMLProblem as exc:
        raise SpecError([SpecIssue(source, exc.line, exc.column, "", exc.message)]) from None
    return parse_service_text(
        text, source, env_overrides=env_overrides, secret_overrides=secret_overrides
    )
