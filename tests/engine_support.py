"""Helpers for the real-engine tests: the Pulumi CLI and Kubernetes provider that
``scripts/pulumi-toolchain.sh`` builds, a throw-away copy of the project, a local file backend
and the passphrase secrets provider.

Nothing here is a stand-in: ``pulumi`` is the CLI built from ``github.com/pulumi/pulumi/pkg/v3``
and the Kubernetes provider is the real plugin, found by the engine on ``PATH`` (an ambient
plugin). The program runs as an Automation API inline program
(``lb_agent.control.deployers.workspace``), because the Python language plugin cannot be built here.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401 - see below
import pulumi.automation as auto
import yaml

from lb_agent.control.deployers.workspace import TOOLCHAIN_BIN_ENV, open_stack

# hypothesis is imported above, before any engine run: its pytest plugin imports it at the end
# of the session otherwise, and CPython 3.11.7's parser then fails ("SystemError: AST
# constructor recursion depth mismatch") after the inline programs' gRPC threads have run.

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"
#: The agent token every engine test sets with --secret (the random provider, which would
#: generate one, cannot be built here); it must never show in plain text.
AGENT_TOKEN = "tok-engine-4f1c9a7e2b6d0358"


@functools.cache
def toolchain_bin() -> Path:
    """The toolchain's bin directory: ``$SKYFORM_PULUMI_BIN`` (set by .ci/run), else built or
    reused by ``scripts/pulumi-toolchain.sh`` (seconds when cached; a cold build takes minutes
    and prints its progress)."""
    given = os.environ.get(TOOLCHAIN_BIN_ENV)
    if given:
        path = Path(given)
    else:
        done = subprocess.run(["bash", str(ROOT / "scripts" / "pulumi-toolchain.sh")],
                              stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError("scripts/pulumi-toolchain.sh failed (see its output above); "
                               "deselect these tests with -m 'not engine'")
        path = Path(done.stdout.strip().splitlines()[-1])
    for binary in ("pulumi", "pulumi-resource-kubernetes"):
        if not (path / binary).is_file():
            raise RuntimeError(f"{path / binary} is missing: run scripts/pulumi-toolchain.sh")
    return path


@dataclass
class EngineProject:
    """A copy of the project in a temp dir with its own backend, Pulumi home and passphrase."""

    root: Path
    dir: Path
    state: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, tmp: Path, *, extra_files: dict[str, str] | None = None) -> EngineProject:
        project = tmp / "project"
        project.mkdir(parents=True)
        for name in ("Pulumi.yaml", "__main__.py"):
            shutil.copy(ROOT / name, project / name)
        shutil.copytree(ROOT / "examples", project / "examples")
        shutil.copytree(ROOT / "stacks", project / "stacks")
        for rel, text in (extra_files or {}).items():
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            (project / rel).write_text(text)
        # A git checkout with an origin, as a user's clone is (the program needs neither: the
        # controller installs from the project bundle).
        git = ["git", "-C", str(project), "-c", "user.email=t@example.com", "-c", "user.name=t"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "remote", "add", "origin",
                        "https://github.com/example/skyform.git"], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "project copy"], check=True)
        state = tmp / "state"
        state.mkdir()
        home = tmp / "pulumi-home"
        home.mkdir()
        passfile = tmp / "passphrase"
        passfile.write_text(PASSPHRASE)
        passfile.chmod(0o600)
        bin_dir = toolchain_bin()
        env = {
            TOOLCHAIN_BIN_ENV: str(bin_dir),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PULUMI_HOME": str(home),
            "PULUMI_BACKEND_URL": f"file://{state}",
            # The controller gets the passphrase as a 0600 file, never as plain env or args.
            "PULUMI_CONFIG_PASSPHRASE_FILE": str(passfile),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        }
        return cls(tmp, project, state, env)

    def cli(self, *args: str, check: bool = True, input_text: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run the real ``pulumi`` CLI in the project directory."""
        full_env = {**os.environ, **self.env}
        full_env.pop("PULUMI_CONFIG_PASSPHRASE", None)
        done = subprocess.run(["pulumi", "--non-interactive", *args], cwd=self.dir,
                              env=full_env, capture_output=True, text=True, input=input_text,
                              check=False, timeout=600)
        if check and done.returncode != 0:
            raise AssertionError(f"pulumi {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def stack(self, name: str) -> auto.Stack:
        return open_stack(self.dir, name, env=self.env)

    def stack_config_file(self, name: str) -> dict[str, Any]:
        data = yaml.safe_load((self.dir / "stacks" / f"Pulumi.{name}.yaml").read_text())
        return data if isinstance(data, dict) else {}


def rendered_objects(directory: Path) -> list[dict[str, Any]]:
    """Every object the provider rendered (render mode writes one YAML file per object)."""
    out: list[dict[str, Any]] = []
    for path in sorted(directory.rglob("*.yaml")):
        out.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def objects_by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o.get("kind") == kind}
