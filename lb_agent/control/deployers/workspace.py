"""How skyform reaches a stack of its Pulumi project: the one place that opens a workspace.

The workspace is a ``LocalWorkspace`` over the project directory, so the engine reads the
project's ``Pulumi.yaml`` (its config schema and defaults, ``stackConfigDir``) and the stack's
config file exactly as ``pulumi up`` run there would. The program is the project's
``__main__.py``, run in this process as an Automation API *inline* program: the Python SDK
serves the language runtime itself and the CLI connects to it, so no ``pulumi-language-python``
plugin is needed. (This build environment cannot build that plugin: the Go module proxy refuses
its module. docs/deploying.md, "The toolchain".)

The agent's deployer and ``skyform``'s engine commands both open stacks here. Nothing here
imports a cloud provider: the program does, when the engine runs it.
"""

from __future__ import annotations

import os
import re
import runpy
from collections.abc import Callable, Mapping
from pathlib import Path

import pulumi.automation as auto
import yaml

#: Where ``scripts/pulumi-toolchain.sh`` leaves the CLI and the Kubernetes provider; put on
#: ``PATH`` so the engine finds the provider as an ambient plugin.
TOOLCHAIN_BIN_ENV = "SKYFORM_PULUMI_BIN"


def project_program(work_dir: str | Path) -> Callable[[], None]:
    """The project's ``__main__.py`` as an inline program (run afresh on every operation)."""
    main = Path(work_dir).resolve() / "__main__.py"

    def run() -> None:
        runpy.run_path(str(main), run_name="__main__")

    return run


def project_name(work_dir: str | Path) -> str:
    """The ``name`` of the project file in ``work_dir``."""
    path = Path(work_dir) / "Pulumi.yaml"
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError(f"{path}: no project name")
    return data["name"]


def engine_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the CLI: ``env`` plus the toolchain's bin directory first on
    ``PATH`` (when ``SKYFORM_PULUMI_BIN`` names one), and no plugin downloads."""
    out = dict(env or {})
    bin_dir = out.get(TOOLCHAIN_BIN_ENV) or os.environ.get(TOOLCHAIN_BIN_ENV)
    path = out.get("PATH") or os.environ.get("PATH", "")
    if bin_dir:
        out[TOOLCHAIN_BIN_ENV] = bin_dir
        out["PATH"] = f"{bin_dir}{os.pathsep}{path}"
    # Providers come from PATH (ambient plugins) or the plugin cache; the engine must not try
    # to download one at run time (the controller and CI have no route to a plugin server).
    out.setdefault("PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION", "true")
    return out


def open_stack(
    work_dir: str | Path,
    stack_name: str,
    *,
    env: Mapping[str, str] | None = None,
    create: bool = False,
) -> auto.Stack:
    """Select (or, with ``create``, create or select) ``stack_name`` of the project in
    ``work_dir``, its program run inline."""
    full_env = engine_env(env)
    bin_dir = full_env.get(TOOLCHAIN_BIN_ENV)
    command = None
    if bin_dir and (Path(bin_dir) / "pulumi").exists():
        command = auto.PulumiCommand(root=str(Path(bin_dir).parent))
    opts = auto.LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=full_env,
                                      pulumi_command=command)
    open_fn = auto.create_or_select_stack if create else auto.select_stack
    stack: auto.Stack = open_fn(
        stack_name=stack_name, project_name=project_name(work_dir),
        program=project_program(work_dir), opts=opts,
    )
    return stack


#: Engine error lines that only say that something failed, not what.
_GENERIC_ERRORS = re.compile(
    r"^error: (an unhandled error occurred|update failed|preview failed|refresh failed|"
    r"destroy failed|\d+ errors? occurred)",
)


def engine_error(text: str) -> str:
    """The most specific ``error: ...`` line of an Automation API ``CommandError`` (its text
    holds the CLI's stdout, where the program's diagnostics are, and its stderr), else the
    last non-empty line."""
    errors: list[str] = []
    for line in text.splitlines():
        at = line.find("error: ")
        if at >= 0:
            errors.append(line[at:].strip())
    specific = [e for e in errors if not _GENERIC_ERRORS.match(e)]
    if specific:
        return specific[-1]
    if errors:
        return errors[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
