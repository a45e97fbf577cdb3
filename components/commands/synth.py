"""``skyform synth``: print the resources ``pulumi up`` would create, offline.

It runs the real Pulumi program (``__main__.py``) under Pulumi's mock runtime
(``components.synth``) and prints every resource (type, name, parent, inputs with secrets
masked) as a tree with the cost estimate, or ``--json`` for machines. Exit 2 when the YAML is
invalid or the service cannot be placed on the chosen cloud.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import pulumi
import yaml
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from components.commands.common import parse_pairs
from components.errors import PlacementError, SpecError
from components.spec import TARGET_CLOUDS
from components.stack_config import StackConfigError
from components.synth import SynthResult, k8s_manifests, stack_config, synthesize

#: Long input strings (user data, scripts) are shortened in the human view.
MAX_VALUE_CHARS = 100


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return f"{value[:60]}… ({len(value)} chars)"
    if isinstance(value, dict):
        return {k: _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value]
    return value


def render_tree(result: SynthResult, title: str) -> Tree:
    """Resources nested under their parents, inputs shortened."""
    tree = Tree(f"[bold]{title}[/]")
    nodes: dict[str, Tree] = {}
    for resource in result.resources:
        parent = nodes.get(resource.parent or "", tree)
        node = parent.add(f"[bold cyan]{resource.name}[/] [dim]{resource.type}[/]")
        nodes[resource.name] = node
        for key, value in sorted(resource.inputs.items()):
            if key.startswith("__") or value in (None, {}, []):
                continue
            node.add(f"[green]{key}[/] = {json.dumps(_short(value), default=str)}")
    return tree


def cost_table(result: SynthResult) -> Table:
    """Replicas per group with their machine, and the hourly estimate."""
    table = Table(title="Plan and cost estimate (catalog prices, USD/hour)")
    table.add_column("group")
    table.add_column("replicas", justify="right")
    table.add_column("machine")
    table.add_column("market")
    groups: dict[tuple[str, str, bool], int] = {}
    for replica in result.outputs.get("replicas") or []:
        key = (replica["group"], replica["instanceType"], replica["spot"])
        groups[key] = groups.get(key, 0) + 1
    for (group, machine, spot), count in sorted(groups.items()):
        table.add_row(group, str(count), machine, "spot" if spot else "on-demand")
    table.add_row("controller", "1", "(see Controller)", "on-demand")
    cost = result.outputs.get("hourlyCost")
    table.add_row("[bold]total[/]", str(result.outputs.get("replicaCount")), "",
                  f"[bold]{'$' + str(cost) + '/h' if isinstance(cost, float | int) else cost}[/]")
    return table


def write_manifests(result: SynthResult, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, obj in enumerate(k8s_manifests(result)):
        name = obj.get("metadata", {}).get("name", "object")
        path = directory / f"{i:02d}-{obj['kind'].lower()}-{name}.yaml"
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        written.append(path)
    return written


def _fail(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cloud", type=click.Choice(TARGET_CLOUDS), required=True,
              help="Target cloud.")
@click.option("--replicas", type=click.IntRange(min=0), default=None,
              help="Desired replica count (skyform:replicas); default: min_replicas.")
@click.option("--env", "envs", multiple=True, callback=parse_pairs, metavar="KEY=VALUE",
              help="Override or supply an env (skyform:envs).")
@click.option("--secret", "secrets", multiple=True, callback=parse_pairs, metavar="KEY=VALUE",
              help="Supply a secret (skyform:secrets); masked in the output.")
@click.option("--config", "extra", multiple=True, callback=parse_pairs, metavar="KEY=VALUE",
              help="Any other skyform:<KEY> stack config value (JSON for lists/objects).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.option("--manifests", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Kubernetes only: also write the objects as YAML files into this folder.")
def synth(file: Path, cloud: str, replicas: int | None, envs: dict[str, str],
          secrets: dict[str, str], extra: dict[str, str], as_json: bool,
          manifests: Path | None) -> None:
    """Print the resource plan for FILE on --cloud, offline (Pulumi mock runtime)."""
    err = Console(stderr=True)
    if manifests is not None and cloud != "kubernetes":
        raise click.UsageError("--manifests is only for --cloud kubernetes")
    if not file.is_file():
        _fail(err, [f"{file}: no such file"])
    extra_config: dict[str, Any] = {}
    for key, value in extra.items():
        try:
            extra_config[key] = json.loads(value) if value[:1] in "[{" else value
        except json.JSONDecodeError:
            raise click.BadParameter(f"{key}: {value!r} is not valid JSON",
                                     param_hint="--config") from None
    config, secret_keys = stack_config(
        file, cloud, replicas=replicas, envs=envs,
        secrets=secrets, extra=extra_config,
    )
    try:
        result = synthesize(config, secret_keys)
    except pulumi.RunError as exc:
        cause = exc.__cause__
        if isinstance(cause, SpecError):
            _fail(err, [str(issue) for issue in cause.issues])
        if isinstance(cause, PlacementError | StackConfigError | OSError):
            _fail(err, [f"cannot deploy on {cloud}: {cause}"])
        raise
    if manifests is not None:
        written = write_manifests(result, manifests)
        err.print(f"wrote {len(written)} manifests to {manifests}")
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    out = Console()
    out.print(render_tree(result, f"{file.name} on {cloud}: {len(result.resources)} resources"))
    out.print(cost_table(result))
    outputs = Table(title="Stack outputs")
    outputs.add_column("name")
    outputs.add_column("value")
    for key, value in result.outputs.items():
        outputs.add_row(key, json.dumps(value, default=str))
    out.print(outputs)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
