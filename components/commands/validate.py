"""``skyform validate FILE``: check a service YAML and show what it would deploy.

Exit codes: 0 valid (a short summary, or the normalized spec with ``--json``), 2 invalid
(every problem on stderr as ``FILE:LINE:COL: field.path: message``, and with ``--json`` also
on stdout as ``{"file", "valid": false, "errors": [{file, line, column, field, message}]}``;
also a malformed ``--env``/``--secret``), 1 the file is missing or unreadable.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from components import catalog
from components.commands.common import load_service_or_exit, parse_pairs
from components.errors import PlacementError
from components.spec import TARGET_CLOUDS, ServiceTask


def placements_json(task: ServiceTask) -> list[dict[str, Any]]:
    """Per candidate, per target cloud: the catalog offer (or null and why not)."""
    out: list[dict[str, Any]] = []
    for cand in task.candidates:
        entry: dict[str, Any] = {}
        for cloud in TARGET_CLOUDS:
            offer = catalog.offer_for(cand, cloud)
            if offer is None:
                entry[cloud] = {"offer": None, "reason": catalog.why_no_offer(cand, cloud)}
            else:
                entry[cloud] = {
                    "offer": dataclasses.asdict(offer),
                    "hourly_usd": offer.hourly_usd(cand.spot),
                }
        out.append(entry)
    return out


def chosen_json(task: ServiceTask) -> dict[str, int | None]:
    """The candidate ``place`` picks on each target cloud (null when none fits)."""
    out: dict[str, int | None] = {}
    for cloud in TARGET_CLOUDS:
        try:
            out[cloud] = catalog.place(task, cloud).candidate_index
        except PlacementError:
            out[cloud] = None
    return out


def _summary(task: ServiceTask, console: Console) -> None:
    spec = task.service
    named = f"  (name: {task.name})" if task.name else ""
    console.print(f"[bold green]valid[/] {task.source}{named}")
    console.print(f"  replicas:      {spec.autoscaling_policy_str()}")
    console.print(f"  spot policy:   {spec.spot_policy_str()}")
    probe = spec.readiness_probe
    shown = spec.probe_str()
    if len(shown) > 90:
        shown = shown[:87] + "..."
    console.print(
        f"  probe:         {shown} (initial delay {probe.initial_delay_seconds:g} s, "
        f"timeout {probe.timeout_seconds:g} s)"
    )
    console.print(f"  service port:  {task.service_port}")
    console.print(f"  load balancer: {task.load_balancing_policy}")
    kind = "preference order" if task.ordered else "any of (cheapest first)"
    table = Table(title=f"Candidates ({kind})", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("resources")
    for cloud in TARGET_CLOUDS:
        table.add_column(cloud)
    chosen = chosen_json(task)
    nowhere: list[int] = []
    for index, cand in enumerate(task.candidates):
        cells: list[str] = []
        for cloud in TARGET_CLOUDS:
            offer = catalog.offer_for(cand, cloud)
            if offer is None:
                cells.append("[dim]no offer[/]")
                continue
            mark = " [bold]*[/]" if chosen[cloud] == index else ""
            price = offer.hourly_usd(cand.spot)
            spot = " spot" if cand.spot else ""
            shown = "price unknown" if price is None else f"${price:.2f}/h"
            cells.append(f"{offer.instance_type} {shown}{spot}{mark}")
        if all(catalog.offer_for(cand, c) is None for c in TARGET_CLOUDS):
            nowhere.append(index)
        table.add_row(str(index), catalog.describe_candidate(cand), *cells)
    console.print(table)
    console.print("  [bold]*[/] = the candidate placed on that cloud; prices per replica, "
                  "on-demand list price (spot: estimate); see components/catalog/data.py.")
    for index in nowhere:
        cand = task.candidates[index]
        reason = catalog.why_no_offer(cand, "aws")
        if "not in the catalog" not in reason:
            reason = "no machine on any of them matches"
        console.print(
            f"  [yellow]note[/]: candidate {index} ({catalog.describe_candidate(cand)}) exists on "
            f"no target cloud ({', '.join(TARGET_CLOUDS)}): {reason}"
        )
    for cloud_name, picked in chosen.items():
        if picked is None:
            console.print(f"  [yellow]note[/]: no candidate can run on {cloud_name}.")


@click.command(name="validate")
@click.argument("file", type=str)
@click.option("--env", "envs", multiple=True, callback=parse_pairs, metavar="K=V",
              help="Set or override an env (needed for null envs in the YAML).")
@click.option("--secret", "secrets", multiple=True, callback=parse_pairs, metavar="K=V",
              help="Set or override a secret (needed for null secrets in the YAML).")
@click.option("--json", "as_json", is_flag=True, help="Print the normalized spec as JSON.")
def validate(file: str, envs: dict[str, str], secrets: dict[str, str], as_json: bool) -> None:
    """Check a SkyServe service YAML the way `sky serve up` does, and show its placement."""
    task = load_service_or_exit(file, envs, secrets, as_json=as_json)
    if as_json:
        out = task.to_json()
        out["placements"] = placements_json(task)
        out["chosen_candidate"] = chosen_json(task)
        click.echo(json.dumps(out, indent=2, sort_keys=False, default=str))
        return
    _summary(task, Console(highlight=False))
