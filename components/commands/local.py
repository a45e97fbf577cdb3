"""``skyform local FILE``: the whole service on this machine (agent + replicas as processes).

Parses the YAML like ``skyform validate`` (exit 2 with the located problems when invalid),
builds an agent config in memory (local deployer, SQLite state and replica logs in a temp
directory, a random admin token, the admin API on a free port), runs the agent in-process
and shows a live status table (rich when stdout is a terminal, one line per interval
otherwise, JSON lines with ``--json``). Ctrl-C or SIGTERM shuts everything down: the agent
stops, every replica process group is ended and nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from components.commands.common import parse_pairs
from lb_agent import constants as C

_POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command(name="local")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--port", type=int, default=C.LOCAL_LB_PORT, show_default=True,
              help="Port of the local endpoint (the load balancer).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--admin-port", type=int, default=None, help="Admin API port (default: a free one).")
@click.option("--env", "envs", multiple=True, callback=parse_pairs, metavar="K=V",
              help="Override or add an env (repeatable).")
@click.option("--secret", "secret_values", multiple=True, callback=parse_pairs, metavar="K=V",
              help="Set a secret (repeatable); passed to replicas, never printed.")
@click.option("--decision-interval", type=_POSITIVE, default=None,
              help="Seconds between autoscaler decisions (SkyServe: 20).")
@click.option("--no-replica-interval", type=_POSITIVE, default=None,
              help="Decision interval while the target is 0 (SkyServe: 5).")
@click.option("--qps-window", type=_POSITIVE, default=None,
              help="Seconds of arrivals the QPS is computed over (SkyServe: 60).")
@click.option("--probe-interval", type=_POSITIVE, default=None,
              help="Seconds between readiness probes (SkyServe: 10).")
@click.option("--drain-timeout", type=_POSITIVE, default=None,
              help="Longest wait for in-flight requests before a replica is removed (120).")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None,
              help="Where replica logs go (default: a new temp directory).")
@click.option("--status-interval", type=_POSITIVE, default=2.0, show_default=True,
              help="Seconds between status updates.")
@click.option("--json", "as_json", is_flag=True, help="Print status as JSON lines.")
def local(
    file: str,
    port: int,
    host: str,
    admin_port: int | None,
    envs: dict[str, str],
    secret_values: dict[str, str],
    decision_interval: float | None,
    no_replica_interval: float | None,
    qps_window: float | None,
    probe_interval: float | None,
    drain_timeout: float | None,
    log_dir: str | None,
    status_interval: float,
    as_json: bool,
) -> None:
    """Run the service in FILE on this machine: agent, autoscaler and replicas."""
    from components.commands.common import load_service_or_exit

    task = load_service_or_exit(file, envs, secret_values)

    from lb_agent.config import AgentConfig, ConfigError
    from lb_agent.deployers.local import free_port

    base = tempfile.mkdtemp(prefix="skyform-local-")
    replica_logs = os.path.abspath(log_dir) if log_dir else os.path.join(base, "replicas")
    autoscaler: dict[str, Any] = {"enabled": True}
    for key, value in (
        ("decision_interval_seconds", decision_interval),
        ("no_replica_interval_seconds", no_replica_interval),
        ("qps_window_seconds", qps_window),
        ("drain_timeout_seconds", drain_timeout),
    ):
        if value is not None:
            autoscaler[key] = value
    raw: dict[str, Any] = {
        # Secrets substituted into the probe stay ${NAME} references in the config; the agent
        # fills them from a 0600 file in this run's private (0700) temp dir.
        "service": task.to_json(secret_refs=True),
        "public": {"host": host, "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port or free_port("127.0.0.1")},
        "token": secrets.token_urlsafe(24),
        "state_file": os.path.join(base, "agent.db"),
        "autoscaler": autoscaler,
        "deployer": {
            "kind": "local",
            "log_dir": replica_logs,
            # Real secret values go to the replicas' environment only (in memory).
            "env": dict(task.secrets),
        },
    }
    secrets_path: str | None = None
    if task.secrets:
        secrets_path = os.path.join(base, "service-secrets.json")
        fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(task.secrets), fh)
        raw["secrets_file"] = secrets_path
    if probe_interval is not None:
        raw["probe"] = {"interval_seconds": probe_interval}
    try:
        config = AgentConfig.from_dict(raw, source=file)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        # Read once by from_dict: the values must not stay on disk for the run and after it.
        if secrets_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(secrets_path)
    name = task.name or os.path.splitext(os.path.basename(file))[0]
    code = asyncio.run(_run(config, name, replica_logs, status_interval, as_json))
    sys.exit(code)


async def _run(
    config: Any, name: str, log_dir: str, status_interval: float, as_json: bool
) -> int:
    from lb_agent.server import build_runtime, serve

    runtime = build_runtime(config)
    started = asyncio.Event()
    server = asyncio.create_task(serve(config, started=started, runtime=runtime))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console = Console(highlight=False)
    out_err = Console(stderr=True, highlight=False)
    code = 0
    try:
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            waiter.cancel()
            exc = server.exception()
            out_err.print(f"error: the agent did not start: {exc}")
            return 1
        endpoint = f"http://{_display_host(config.public.host)}:{runtime.bound_ports['public']}"
        header = {
            "event": "started", "service": name, "endpoint": endpoint,
            "admin": f"http://127.0.0.1:{runtime.bound_ports['admin']}", "logs": log_dir,
        }
        if as_json:
            print(json.dumps(header), flush=True)
        else:
            console.print(f"[bold]{name}[/] is starting. Endpoint: [bold cyan]{endpoint}[/]")
            console.print(f"Replica logs: {log_dir}    (Ctrl-C to stop)")
        t0 = time.monotonic()
        if console.is_terminal and not as_json:
            with Live(_render(runtime, endpoint), console=console, refresh_per_second=4) as live:
                while not stop.is_set() and not server.done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), min(status_interval, 0.5))
                    live.update(_render(runtime, endpoint))
        else:
            while not stop.is_set() and not server.done():
                snap = _snapshot(runtime, time.monotonic() - t0)
                if as_json:
                    print(json.dumps(snap), flush=True)
                else:
                    print(_line(snap), flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), status_interval)
        if server.done() and not stop.is_set():
            exc = server.exception() if not server.cancelled() else None
            out_err.print(f"error: the agent stopped: {exc}")
            code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        # uvicorn reports the cancelled lifespan as an error: it is the expected way down.
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await server
        for task in asyncio.all_tasks():
            if task.get_name() in ("skyform-scaler", "skyform-prober"):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        # The agent's shutdown ends the replicas; make sure even if it timed out.
        scaler = getattr(runtime, "scaler", None)
        if scaler is not None and scaler.deployer is not None:
            await scaler.deployer.close()
        runtime.close()
        if as_json:
            print(json.dumps({"event": "stopped"}), flush=True)
        else:
            console.print("Stopped: agent and replicas are down.")
    return code


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _snapshot(runtime: Any, elapsed: float) -> dict[str, Any]:
    status = runtime.autoscaler_status or {}
    scaler = getattr(runtime, "scaler", None)
    live = scaler.deployer.status() if scaler is not None and scaler.deployer else None
    deployer = live or status.get("deployer") or {}
    return {
        "event": "status",
        "elapsed": round(elapsed, 1),
        "qps": status.get("qps"),
        "target": status.get("final_target"),
        "min": status.get("min_replicas"),
        "max": status.get("max_replicas"),
        "draining": status.get("draining", []),
        "pids": deployer.get("pids", {}),
        "replicas": [
            {
                "id": r.replica_id, "state": r.state.value, "url": r.url,
                "in_flight": runtime.in_flight(r.replica_id), "draining": r.draining,
            }
            for r in runtime.registry.list()
        ],
        "error": status.get("error"),
    }


def _line(snap: dict[str, Any]) -> str:
    reps = ", ".join(f"{r['id']} {r['state']}" for r in snap["replicas"]) or "none"
    return (
        f"[{snap['elapsed']:>6.1f}s] qps={snap['qps']} target={snap['target']} "
        f"replicas: {reps}"
    )


_STATE_STYLE = {"READY": "green", "STARTING": "yellow", "PROVISIONING": "yellow",
                "SHUTTING_DOWN": "magenta", "NOT_READY": "red"}


def _render(runtime: Any, endpoint: str) -> Group:
    status = runtime.autoscaler_status or {}
    table = Table(box=None, header_style="bold")
    for col in ("REPLICA", "STATE", "URL", "IN-FLIGHT"):
        table.add_column(col)
    for r in runtime.registry.list():
        state = r.state.value + (" (draining)" if r.draining else "")
        style = _STATE_STYLE.get(r.state.value, "red")
        table.add_row(r.replica_id, Text(state, style=style), r.url,
                      str(runtime.in_flight(r.replica_id)))
    head = Text.assemble(
        ("Endpoint ", "bold"), (endpoint, "cyan"),
        f"   QPS {status.get('qps', 0)}   target {status.get('final_target', '-')}"
        f" (min {status.get('min_replicas', '-')}, max {status.get('max_replicas', '-')})"
        f"   up {status.get('upscale_counter', 0)}/{status.get('scale_up_threshold', '-')}"
        f"   down {status.get('downscale_counter', 0)}/{status.get('scale_down_threshold', '-')}",
    )
    parts: list[Any] = [head, table]
    if status.get("error"):
        parts.append(Text(f"error: {status['error']}", style="red"))
    return Group(*parts)
