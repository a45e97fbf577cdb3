"""``skyform status [SERVICE] [--stack S] [--endpoint] [--json]``: like ``sky serve status``.

Without ``--stack`` it shows every ``skyform local`` running on this machine (or the one named
SERVICE); with ``--stack`` the deployed stack (``service_view``). One block per service
(endpoint, version, replicas ready/total, QPS, target) and one row per replica (id, version,
spot/on-demand, instance type, address, state, in-flight, age). ``--endpoint`` prints only the
endpoint, for ``curl $(skyform status --endpoint)``; ``--json`` prints a list of services.

Exit codes: 0 shown; 1 no service found, or its agent cannot be read; 2 usage errors (also
``--endpoint`` when several services match).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from components.commands.service_view import Target, TargetError, fetch_status, targets


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def summarize(target: Target, status: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The service and its replicas as one JSON-ready dict (the agent's status snapshot,
    lb_agent.status, when available, else the stack's planned replicas)."""
    planned = {(r.get("group"), r.get("index")): r
               for r in target.outputs.get("replicas") or [] if isinstance(r, dict)}
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {
        "service": target.name, "kind": target.kind, "cloud": target.cloud,
        "endpoint": target.endpoint, "version": None, "ready": None, "total": None,
        "qps": None, "target": None, "replicas": rows, "agent_error": None,
        "placer": None, "locations": [],
    }
    if status is not None:
        auto = status.get("autoscaler") or {}
        summary.update(version=auto.get("version"), qps=status.get("qps"),
                       target=auto.get("final_target"), ready=status.get("ready_replicas"),
                       placer=status.get("placer"),
                       locations=[_location_row(e, now) for e in status.get("locations") or []])
        for rec in status.get("replicas") or []:
            plan = planned.get((rec.get("group"), rec.get("index"))) or {}
            registered = rec.get("registered_at")
            where = rec.get("location") or {}
            rows.append({
                "id": rec.get("replica_id"), "version": rec.get("version"),
                "market": "spot" if rec.get("spot") else "on-demand",
                "region": where.get("region") or plan.get("region"),
                "zone": where.get("zone") or plan.get("zone"),
                "accelerator": (where.get("accelerator") or rec.get("accelerator")
                                or plan.get("accelerator")),
                "instance_type": ("local process" if target.kind == "local"
                                  else plan.get("instanceType")),
                "address": rec.get("url"), "state": rec.get("state"),
                "draining": bool(rec.get("draining")),
                "in_flight": rec.get("in_flight"),
                "age_seconds": round(now - registered, 1) if registered else None,
                "detail": rec.get("detail") or "",
            })
        summary["total"] = len(rows)
    else:
        summary["agent_error"] = target.no_agent_reason
        for plan in planned.values():
            rows.append({
                "id": f"{plan.get('group')}-{plan.get('index')}", "version": None,
                "market": "spot" if plan.get("spot") else "on-demand",
                "region": plan.get("region"), "zone": plan.get("zone"),
                "accelerator": plan.get("accelerator"),
                "instance_type": plan.get("instanceType"), "address": plan.get("address"),
                "state": None, "draining": False, "in_flight": None, "age_seconds": None,
                "detail": "",
            })
        summary["total"] = target.outputs.get("replicaCount", len(rows))
    return summary


def _location_row(entry: dict[str, Any], now: float) -> dict[str, Any]:
    """One location of the agent's book as ``skyform status`` shows it."""
    loc = entry.get("location") or {}
    until = entry.get("blocked_until")
    return {"key": entry.get("key"), "region": loc.get("region") or None,
            "zone": loc.get("zone"), "candidate": loc.get("candidate"),
            "market": "spot" if loc.get("spot") else "on-demand", "price": loc.get("price"),
            "state": entry.get("state"), "replicas": entry.get("replicas", 0),
            "blocked_for_seconds": None if until is None else round(until - now, 1),
            "counts": entry.get("counts") or {}}


def rollout_text(rollout: dict[str, Any] | None) -> str:
    """One phrase for the current rollout: its versions, mode, progress or why it failed."""
    if not rollout:
        return ""
    head = f"rollout v{rollout['from']}->v{rollout['to']} ({rollout['mode']}) {rollout['status']}"
    if rollout["status"] == "failed":
        return f"{head}: {rollout['reason']}"
    return (f"{head}: new {rollout.get('new_ready', 0)}/{rollout.get('target')} ready, "
            f"{rollout.get('old_live', 0)} old left")


_STATE_STYLE = {"READY": "green", "STARTING": "yellow", "PROVISIONING": "yellow",
                "SHUTTING_DOWN": "magenta", "NOT_READY": "red"}


def view(summary: dict[str, Any], status: dict[str, Any] | None = None) -> Group:
    """The one rendering of a service: its block, its replica table and, from the agent's
    snapshot ``status`` when given, the rollout, the replicas whose process exited (with
    their last log lines) and the scaler's error. ``skyform status`` prints it, ``skyform
    local`` shows it live."""
    dash = "-"
    where = summary["cloud"] or summary["kind"]
    auto = (status or {}).get("autoscaler") or {}
    target = dash if summary["target"] is None else str(summary["target"])
    if auto.get("min_replicas") is not None:
        target += f" (min {auto['min_replicas']}, max {auto.get('max_replicas', dash)})"
    ready = dash if summary["ready"] is None else summary["ready"]
    parts: list[Any] = [
        Text.assemble((summary["service"], "bold"), f" ({where})  endpoint: ",
                      (summary["endpoint"] or dash, "cyan")),
        Text(f"  version {summary['version'] or dash}   replicas ready/total: "
             f"{ready}/{summary['total'] if summary['total'] is not None else dash}   "
             f"QPS {dash if summary['qps'] is None else format(summary['qps'], '.2f')}   "
             f"target {target}"),
    ]
    if status is not None and auto.get("version") is not None:
        parts.append(Text(f"  update mode {auto.get('update_mode')}   active "
                          f"{status.get('active_versions')}   "
                          + rollout_text(auto.get("rollout"))))
    if summary["agent_error"]:
        parts.append(Text.assemble(("  agent status unavailable", "yellow"),
                                   f": {summary['agent_error']}"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    # Where each replica runs, when anything says (a cloud stack; not local processes).
    placed = any(r.get("zone") or r.get("region") or r.get("accelerator")
                 for r in summary["replicas"])
    columns = ["REPLICA", "VERSION", "MARKET", *(["ZONE", "ACCELERATOR"] if placed else []),
               "INSTANCE", "ADDRESS", "STATE", "IN-FLIGHT", "AGE"]
    detail = any(r["detail"] for r in summary["replicas"])
    for col in columns + (["DETAIL"] if detail else []):
        table.add_column(col)
    for r in summary["replicas"]:
        state = str(r["state"] or dash) + (" (draining)" if r["draining"] else "")
        zone = r.get("zone") or r.get("region")
        where = [str(zone or dash), str(r.get("accelerator") or dash)] if placed else []
        cells: list[Any] = [
            str(r["id"]), str(r["version"] or dash), r["market"], *where,
            str(r["instance_type"] or dash),
            str(r["address"] or dash), Text(state, style=_STATE_STYLE.get(r["state"] or "", "")),
            dash if r["in_flight"] is None else str(r["in_flight"]), _age(r["age_seconds"]),
        ]
        if detail:
            cells.append(Text(r["detail"], style="dim"))
        table.add_row(*cells)
    parts.append(table)
    if summary.get("locations"):
        parts.append(Text(f"  locations (placer {summary.get('placer') or dash}):"))
        places = Table(box=None, header_style="bold", pad_edge=False)
        for col in ("REGION", "ZONE", "CANDIDATE", "MARKET", "PRICE/H", "REPLICAS", "STATE",
                    "FAILED", "PREEMPTED"):
            places.add_column(col)
        for loc in summary["locations"]:
            loc_state = str(loc["state"] or dash)
            if loc["blocked_for_seconds"] is not None:
                loc_state += f" ({_age(loc['blocked_for_seconds'])} left)"
            places.add_row(
                str(loc["region"] or dash), str(loc["zone"] or dash), str(loc["candidate"]),
                loc["market"], dash if loc["price"] is None else f"{loc['price']:.3f}",
                str(loc["replicas"]), loc_state, str(loc["counts"].get("failures", 0)),
                str(loc["counts"].get("preemptions", 0)))
        parts.append(places)
    for rid, info in sorted(((status or {}).get("exited") or {}).items()):
        parts.append(Text(f"{rid}: {info['step']} exited with code {info['exit_code']}",
                          style="red"))
        parts.append(Text(f"  log: {info['log']}", style="red"))
        parts.extend(Text(f"  | {line}", style="dim") for line in info.get("tail") or [])
    if auto.get("error"):
        parts.append(Text(f"error: {auto['error']}", style="red"))
    return Group(*parts)


@click.command(name="status")
@click.argument("service", required=False)
@click.option("--stack", default=None, help="A deployed stack (Pulumi Automation API).")
@click.option("--endpoint", "endpoint_only", is_flag=True, help="Print only the endpoint URL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def status(service: str | None, stack: str | None, endpoint_only: bool, as_json: bool) -> None:
    """Show a service: `skyform local` on this machine, or a deployed --stack."""
    try:
        found = targets(stack)
    except TargetError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if service is not None:
        found = [t for t in found if t.name == service]
        if not found:
            click.echo(f"error: no running service named {service!r}", err=True)
            sys.exit(1)
    if endpoint_only:
        if len(found) > 1:
            names = ", ".join(t.name for t in found)
            raise click.UsageError(f"several services run ({names}): name one, or use --stack")
        if not found[0].endpoint:
            click.echo("error: the service has no endpoint yet", err=True)
            sys.exit(1)
        click.echo(found[0].endpoint)
        return
    summaries = []
    code = 0
    for target in found:
        agent: dict[str, Any] | None = None
        if target.admin:
            try:
                agent = fetch_status(target)
            except TargetError as exc:
                target.no_agent_reason = str(exc)
                code = 1
        summaries.append((summarize(target, agent, time.time()), agent))
    if as_json:
        click.echo(json.dumps([summary for summary, _ in summaries], indent=2))
    else:
        # Piped output is not cut to 80 columns: addresses stay whole.
        console = Console(highlight=False, soft_wrap=True,
                          width=None if sys.stdout.isatty() else 200)
        for summary, agent in summaries:
            console.print(view(summary, agent))
    sys.exit(code)
