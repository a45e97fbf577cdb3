"""Find the service ``skyform status`` / ``skyform logs`` talk about, and read its agent.

Two kinds of target:

* a ``skyform local`` running on this machine (no ``--stack``): its state file
  (``localstate``) gives the endpoint, the admin URL, the admin token and the log paths;
* a deployed stack (``--stack NAME``): the Pulumi Automation API (``select_stack`` in this
  project directory, then ``outputs()``) gives the endpoint and the planned replicas. When the
  stack also exports ``adminUrl`` and the secret ``adminToken`` (docs/cli.md, "skyform status on a
  stack": the admin port is reachable only from ``skyform:adminCidrs``), the agent's live
  ``/status`` is read too; otherwise the outputs alone are shown and the reason is said.

The agent is read with the standard library (no extra client), with a bearer token, and every
failure is a ``TargetError`` with a message for the user, never a traceback.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.commands import localstate

PROJECT_DIR = Path(__file__).resolve().parents[2]
#: Stack outputs that give the way in to a deployed agent (see docs/cli.md).
ADMIN_URL_OUTPUT = "adminUrl"
ADMIN_TOKEN_OUTPUT = "adminToken"


class TargetError(Exception):
    """The service cannot be found or read; the message says what to do."""


@dataclass
class Target:
    """One service: where it answers, how to reach its agent, where its logs are."""

    kind: str  # "local" or "stack"
    name: str
    endpoint: str | None
    admin: str | None = None
    token: str | None = field(default=None, repr=False)
    cloud: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict, repr=False)
    local: localstate.LocalService | None = None
    #: Why the agent's live status is not available (stacks without an admin output).
    no_agent_reason: str | None = None


def open_stack(name: str) -> Any:
    """The Automation API stack ``name`` of this project (tests replace this function)."""
    from pulumi import automation as auto

    return auto.select_stack(stack_name=name, work_dir=str(PROJECT_DIR))


def local_targets() -> list[Target]:
    """Every ``skyform local`` running on this machine, oldest first."""
    return [
        Target("local", e.service, e.endpoint, e.admin, e.token, "local", local=e)
        for e in localstate.running()
    ]


def stack_target(name: str) -> Target:
    """The stack ``name`` through the Automation API; TargetError when it cannot be read."""
    from pulumi import automation as auto

    try:
        stack = open_stack(name)
        outputs = {k: v.value for k, v in stack.outputs().items()}
        cloud_value = stack.get_config("skyform:cloud")
    except auto.StackNotFoundError:
        raise TargetError(
            f"no stack {name!r} in {PROJECT_DIR} (see `pulumi stack ls`)"
        ) from None
    except auto.CommandError as exc:
        first = str(exc).strip().splitlines()[-1:] or ["pulumi failed"]
        raise TargetError(f"cannot read stack {name!r}: {first[0]}") from None
    except FileNotFoundError:
        raise TargetError("the pulumi CLI is not on PATH (scripts/pulumi-toolchain.sh)") from None
    cloud = getattr(cloud_value, "value", None)
    target = Target("stack", name, outputs.get("endpoint"), cloud=cloud, outputs=outputs)
    admin, token = outputs.get(ADMIN_URL_OUTPUT), outputs.get(ADMIN_TOKEN_OUTPUT)
    if admin and token:
        target.admin, target.token = str(admin), str(token)
    else:
        target.no_agent_reason = (
            f"the stack exports no {ADMIN_URL_OUTPUT}/{ADMIN_TOKEN_OUTPUT}: the agent's admin "
            "API is private (docs/cli.md: skyform status on a stack)"
        )
    return target


def targets(stack: str | None) -> list[Target]:
    """The stack given, else the local services; TargetError when there is none."""
    if stack is not None:
        return [stack_target(stack)]
    found = local_targets()
    if not found:
        raise TargetError(
            "no `skyform local` service is running on this machine; start one, or give "
            "--stack NAME for a deployed service"
        )
    return found


def fetch_status(target: Target, timeout: float = 5.0) -> dict[str, Any]:
    """The agent's ``GET /status`` (bearer token); TargetError naming the URL on failure."""
    if not target.admin or not target.token:
        raise TargetError(target.no_agent_reason or "no admin URL for this service")
    url = target.admin.rstrip("/") + "/status"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {target.token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise TargetError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TargetError(f"cannot read {url}: {reason}") from None
    if not isinstance(data, dict):
        raise TargetError(f"{url} did not answer a JSON object")
    return data
