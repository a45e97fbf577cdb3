"""``envs`` / ``secrets``: key rules, ``--env`` / ``--secret`` overrides, and ``$VAR`` substitution.

SkyPilot's rules: keys match ``^[a-zA-Z_][a-zA-Z0-9_]*$``; values are turned into strings;
a null value must be supplied on the command line. ``$VAR`` / ``${VAR}`` in the ``service``,
``file_mounts``, ``workdir`` and ``volumes`` sections is replaced by the value from envs and
secrets (secrets win); unknown names stay as written, and a substituted value stays a string
(so ``ports: $PORT`` fails the integer check, exactly as in SkyServe).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from components.parser.schema import Section
from components.parser.yamlload import Path

ENV_KEY = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
#: SkyPilot's substitution pattern (``fill_in_env_vars``), used on every string.
VAR = re.compile(r"\$\{?\b([a-zA-Z_][a-zA-Z0-9_]*)\b\}?")

#: Registry login for a ``docker:`` image (SkyPilot's constants.DOCKER_LOGIN_ENV_VARS).
DOCKER_LOGIN_VARS = frozenset(
    {"SKYPILOT_DOCKER_USERNAME", "SKYPILOT_DOCKER_PASSWORD", "SKYPILOT_DOCKER_SERVER"}
)

_NONE_MESSAGE = (
    "{kind} variable {key!r} is None. Please set a value for it in task YAML or with "
    "--{flag} flag. To set it to be empty, use an empty string ({key}: \"\" in task YAML or "
    "--{flag} {key}=\"\" in CLI)."
)


def read_vars(
    section: Section,
    raw: Any,
    path: Path,
    overrides: Mapping[str, str] | None,
    *,
    secret: bool,
) -> dict[str, str]:
    """Validate one of ``envs`` / ``secrets``, apply overrides, require every value."""
    values: dict[str, str | None] = {}
    if raw is not None and section.typed(raw, path, "object"):
        for key, value in raw.items():
            child = (*path, str(key))
            if not isinstance(key, str) or not ENV_KEY.match(key):
                if secret:  # the schema's additionalProperties, as validate_schema words it
                    section.fail(child, f"Found unsupported field {str(key)!r}.", key=True)
                else:  # Task.from_yaml_config checks env names before the schema
                    section.ctx.error(child, f"{str(key)!r} does not match any of the "
                                      f"regexes: {ENV_KEY.pattern!r}", key=True)
                continue
            # SkyPilot turns every non-null value into a string before the schema check.
            values[key] = None if value is None else str(value)
    flag = "--secret" if secret else "--env"
    for key, value in (overrides or {}).items():
        if not ENV_KEY.match(key):
            section.ctx.error(
                path, f"{flag} {key!r}: the name does not match {ENV_KEY.pattern!r}", key=True
            )
            continue
        values[key] = value
    out: dict[str, str] = {}
    for key, maybe in values.items():
        if maybe is None:
            kind, name = ("Secret", "secret") if secret else ("Environment", "env")
            section.ctx.error((*path, key), _NONE_MESSAGE.format(kind=kind, key=key, flag=name))
        else:
            out[key] = maybe
    return out


def check_docker_login(section: Section, envs: Mapping[str, str],
                       secrets: Mapping[str, str]) -> None:
    """SkyPilot's docker login rule: the three ``SKYPILOT_DOCKER_*`` variables come together,
    all in ``envs`` or all in ``secrets``."""
    envs_keys = DOCKER_LOGIN_VARS & set(envs)
    secrets_keys = DOCKER_LOGIN_VARS & set(secrets)
    if envs_keys and secrets_keys:
        section.ctx.error(("secrets", sorted(secrets_keys)[0]), (
            "Docker login variables must be specified together either in envs OR secrets, "
            f"not split across both. Found in envs: {sorted(envs_keys)}, Found in secrets: "
            f"{sorted(secrets_keys)}"), key=True)
        return
    for where, keys in (("envs", envs_keys), ("secrets", secrets_keys)):
        if keys and keys != DOCKER_LOGIN_VARS:
            section.ctx.error((where, sorted(keys)[0]), (
                f"Docker login variables must be specified together in {where}. "
                f"Missing from {where}: {sorted(DOCKER_LOGIN_VARS - keys)}"), key=True)


def substitute(value: Any, variables: Mapping[str, str]) -> Any:
    """Replace ``$VAR`` / ``${VAR}`` in every string (keys included), as SkyServe does."""

    def repl(match: re.Match[str]) -> str:
        return variables.get(match.group(1), match.group(0))

    if isinstance(value, str):
        return VAR.sub(repl, value) if "$" in value else value
    if isinstance(value, list):
        return [substitute(item, variables) for item in value]
    if isinstance(value, dict):
        return {substitute(k, variables): substitute(v, variables) for k, v in value.items()}
    return value
