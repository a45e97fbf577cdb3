"""``skyform synth``: print the resources ``pulumi up`` would create, offline.

It runs the real Pulumi program (components/program.py) under Pulumi's mock runtime
(``components.synth``) and prints every resource (type, name, parent, inputs with secrets
masked) as a tree with the cost estimate, or ``--json`` for machines. Exit 1 when the file is
missing or unreadable, 2 when the YAML is invalid or the service cannot be placed on the
chosen cloud.

It is a plan, not a deployment: ids, addresses, ARNs and generated tokens come from the mock
runtime and are labelled as placeholders (``placeholders`` in ``--json``), the files written by
``--manifests`` start with a header saying they are not for ``kubectl apply``, and a
``--replicas`` outside [min_replicas, max_replicas] is reported as clipped. On a terminal a
spinner on stderr counts the resources planned so far. The event loop the
mock runtime used is closed before exit, so no ``__del__`` traceback appears at shutdown.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import gc
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pulumi
import yaml
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from components.commands.common import parse_pairs, readable_file_or_exit
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
    table.add_row("controller (load balancers)", str(result.outputs.get("controllerReplicas", 1)),
                  "(see Controller)", "on-demand")
    cost = result.outputs.get("hourlyCost")
    table.add_row("[bold]total[/]", str(result.outputs.get("replicaCount")), "",
                  f"[bold]{'$' + str(cost) + '/h' if isinstance(cost, float | int) else cost}[/]")
    return table


def locations_table(result: SynthResult) -> Table | None:
    """The candidate locations the agent's placer chooses from, with their hourly price;
    ``first`` is where the first deploy's replicas go (the stack's home location)."""
    locations = result.outputs.get("locations") or []
    if not locations:
        return None
    table = Table(title="Candidate locations (the agent places each new replica)")
    for col in ("location", "accelerator", "machine", "market", "USD/h", "placement"):
        table.add_column(col, no_wrap=True)
    for loc in locations:
        price = loc.get("price")
        where = loc.get("zone") or f"{loc.get('region') or 'cluster'} (any zone)"
        table.add_row(where, str(loc.get("accelerator") or "-"),
                      str(loc.get("instance_type") or "-"),
                      "spot" if loc.get("spot") else "on-demand",
                      "-" if price is None else f"{price:.4f}",
                      "first" if loc.get("first") else "")
    return table


def regions_table(result: SynthResult) -> Table | None:
    """AWS/GCP: every region of the candidate locations, and how replicas there reach the
    controller (AWS: the region's own network and its range, created when the agent first
    places a replica there; docs/locations.md)."""
    locations = result.outputs.get("locations") or []
    regions = list(dict.fromkeys(str(loc["region"]) for loc in locations if loc.get("region")))
    if not regions:
        return None
    home = next((loc.get("region") for loc in locations if loc.get("first")), regions[0])
    from components.clouds.aws_regions import region_cidr  # pulumi_aws: only when printing

    aws = {r.name.rsplit("-region-", 1)[1]: r for r in result.of_type(
        "skyform:aws:ReplicaRegion")}
    used = {r.parent for r in result.resources if r.type == "aws:ec2/vpc:Vpc"}
    table = Table(title="Regions (where replicas may run)")
    for col in ("region", "locations", "network"):
        table.add_column(col, no_wrap=True)
    for region in regions:
        count = sum(1 for loc in locations if loc.get("region") == region)
        if region == home:
            network = "the controller's (controller here)"
        elif region in aws:
            state = "in use" if aws[region].name in used else "on first placement"
            network = f"VPC {region_cidr(region)}, peered ({state})"
        else:
            network = "the controller's (global)"
        table.add_row(region, str(count), network)
    return table


#: Why the synthesized values are not real (shown with the plan and in --json).
PLACEHOLDER_NOTE = (
    "offline plan: ids, IP addresses, ARNs, endpoints and generated tokens are placeholders "
    "from the mock runtime, not real values"
)
#: The header of every file --manifests writes.
MANIFEST_HEADER = (
    "# skyform synth plan ({source}, offline): NOT for `kubectl apply`.\n"
    "# Ids, addresses and secret values are mock placeholders and the Secret objects hold no\n"
    "# real values. Deploy with `pulumi up` (README \"Deploy in three steps\").\n"
)


def write_manifests(result: SynthResult, directory: Path, source: str = "") -> list[Path]:
    """Every Kubernetes object as a YAML file, each headed by ``MANIFEST_HEADER``."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    header = MANIFEST_HEADER.format(source=source or "skyform synth")
    for i, obj in enumerate(k8s_manifests(result)):
        name = obj.get("metadata", {}).get("name", "object")
        path = directory / f"{i:02d}-{obj['kind'].lower()}-{name}.yaml"
        path.write_text(header + yaml.safe_dump(obj, sort_keys=False))
        written.append(path)
    return written


def close_event_loops() -> None:
    """Close every event loop left open in this process (run at interpreter exit).

    Pulumi's mock monitor runs in executor threads, and each such thread makes its own event
    loop (``pulumi.runtime.sync_await._ensure_event_loop``) that nobody closes. Left open, a
    loop is closed by its ``__del__`` during interpreter shutdown, when its self-pipe socket
    may already be gone: ``ValueError: Invalid file descriptor: -1``. An ``atexit`` hook runs
    before that teardown, while every socket is intact. (Not after each run: Pulumi reuses a
    thread's loop, so closing them mid-process would break the next in-process synth.)"""
    gc.collect()
    for obj in gc.get_objects():
        if (isinstance(obj, asyncio.AbstractEventLoop) and not obj.is_closed()
                and not obj.is_running()):
            with contextlib.suppress(Exception):
                obj.close()


@functools.cache
def _close_loops_at_exit() -> None:
    atexit.register(close_event_loops)


def clipped_replicas(result: SynthResult, replicas: int | None) -> str | None:
    """The message when ``--replicas`` was clipped to [min_replicas, max_replicas]."""
    planned = result.outputs.get("replicaCount")
    if replicas is None or not isinstance(planned, int) or planned == replicas:
        return None
    bound = "max_replicas" if replicas > planned else "min_replicas"
    return (f"--replicas {replicas} is outside [min_replicas, max_replicas]: clipped to "
            f"{planned} ({bound})")


@contextlib.contextmanager
def planning_progress(console: Console) -> Iterator[Callable[[int], None] | None]:
    """On a terminal, a spinner counting the resources planned so far (a fleet of a thousand
    replicas takes several seconds); elsewhere nothing, and no callback."""
    if not console.is_terminal:
        yield None
        return
    with console.status("planning: running the program under Pulumi's mock runtime") as status:
        def counted(count: int) -> None:
            status.update(f"planning: {count} resource{'' if count == 1 else 's'}")

        yield counted


def _fail(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
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
    readable_file_or_exit(file)
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
        with planning_progress(err) as on_resource:
            result = synthesize(config, secret_keys, on_resource=on_resource)
    except pulumi.RunError as exc:
        cause = exc.__cause__
        if isinstance(cause, SpecError):
            _fail(err, [str(issue) for issue in cause.issues])
        if isinstance(cause, PlacementError | StackConfigError | OSError):
            _fail(err, [f"cannot deploy on {cloud}: {cause}"])
        raise
    finally:
        _close_loops_at_exit()
    clipped = clipped_replicas(result, replicas)
    if clipped:
        err.print(f"note: {clipped}", markup=False, highlight=False, style="yellow")
    if manifests is not None:
        written = write_manifests(result, manifests, file.name)
        err.print(f"wrote {len(written)} manifests to {manifests} (a plan, not for kubectl "
                  "apply: see the header of each file)", highlight=False)
    if as_json:
        out_json = result.to_json()
        out_json["placeholders"] = PLACEHOLDER_NOTE
        if clipped:
            out_json["notes"] = [clipped]
        click.echo(json.dumps(out_json, indent=2, default=str))
        return
    out = Console()
    out.print(render_tree(result, f"{file.name} on {cloud}: {len(result.resources)} resources"))
    out.print(cost_table(result))
    places = locations_table(result)
    if places is not None:
        out.print(places)
    regions = regions_table(result)
    if regions is not None:
        out.print(regions)
    outputs = Table(title="Stack outputs")
    outputs.add_column("name")
    outputs.add_column("value")
    for key, value in result.outputs.items():
        outputs.add_row(key, json.dumps(value, default=str))
    out.print(outputs)
    out.print(f"[dim]{PLACEHOLDER_NOTE}[/]", highlight=False)
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {warning}")
