"""The agent's own command line (``python -m lb_agent``; ``skyform agent`` is a door to it).

Either ``--config FILE`` (JSON or YAML, see docs/agent.md), or quick mode with no file:
``--replicas URL,URL --port PORT [--host H] [--policy NAME] [--probe PATH] [--admin-port PORT]``,
which balances a fixed replica list.

Safe by default: quick mode listens on 127.0.0.1 unless ``--host`` says otherwise, and the
admin API listens on 127.0.0.1 unless ``--admin-host`` says otherwise. The addresses (and, in
quick mode, the freshly generated admin token) are printed only once both sockets are bound.

Exit codes: 0 stopped by a signal, 1 the config file is missing or unreadable or the agent
cannot start (a busy port), 2 the config is invalid, click's usage code (2) for bad options.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
from typing import Any

import click

from lb_agent import constants as C
from lb_agent.dataplane.policies import prefix_aware

_PORT = click.IntRange(0, 65535)


@click.command(name="agent")
@click.option("--config", "config_path", default=None, metavar="FILE",
              help="Agent config file (JSON or YAML).")
@click.option("--replicas", default=None, help="Quick mode: comma-separated replica URLs.")
@click.option("--port", type=_PORT, default=None, help="Quick mode: public (proxy) port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Quick mode: proxy listen address (0.0.0.0 to accept other machines).")
@click.option("--admin-port", type=_PORT, default=None,
              help="Quick mode: admin port (default port+1).")
@click.option("--admin-host", default="127.0.0.1", show_default=True,
              help="Quick mode: admin API listen address.")
@click.option("--policy", default=None, help="Quick mode: load-balancing policy.")
@click.option("--probe", "probe_path", default=None, help="Quick mode: readiness path (default /).")
@click.option("--probe-interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Quick mode: seconds between probes.")
@click.option("--state-file", default=None, help="Quick mode: SQLite state file.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True, help="What the agent logs to stderr.")
def agent(
    config_path: str | None,
    replicas: str | None,
    port: int | None,
    host: str,
    admin_port: int | None,
    admin_host: str,
    policy: str | None,
    probe_path: str | None,
    probe_interval: float | None,
    state_file: str | None,
    log_level: str,
) -> None:
    """Start the controller agent (proxy on the public port, admin API on its own port)."""
    import logging

    from lb_agent.config import AgentConfig, ConfigError, ConfigFileError

    if log_level != "warning":
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("lb_agent").setLevel(log_level.upper())

    quick = False
    try:
        if config_path is not None:
            if replicas is not None:
                raise click.UsageError("give either --config or --replicas, not both")
            config = AgentConfig.load(config_path)
        elif replicas is not None:
            quick = True
            config = AgentConfig.from_dict(
                quick_config(replicas, port, host, admin_port, admin_host, policy, probe_path,
                             probe_interval, state_file),
                source="<command line>",
            )
        else:
            raise click.UsageError("give --config FILE, or --replicas URL,URL --port PORT")
    except ConfigFileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except ConfigError as exc:
        if quick:
            # Name the option the user typed, not the internal config field.
            for field_path, message in exc.issues:
                option = QUICK_OPTION_NAMES.get(field_path.split("[")[0], field_path)
                click.echo(f"error: {option}: {message}", err=True)
        else:
            click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    run(config, show_token=quick)


#: Quick-mode config fields and the option that sets them (errors name the option).
QUICK_OPTION_NAMES = {
    "public.port": "--port", "public.host": "--host", "admin.port": "--admin-port",
    "admin.host": "--admin-host", "policy": "--policy", "probe.path": "--probe",
    "probe.interval_seconds": "--probe-interval", "state_file": "--state-file",
    "replicas": "--replicas",
}


def quick_config(
    replicas: str,
    port: int | None,
    host: str,
    admin_port: int | None,
    admin_host: str,
    policy: str | None,
    probe_path: str | None,
    probe_interval: float | None,
    state_file: str | None,
) -> dict[str, Any]:
    """The config mapping quick mode runs with."""
    urls = [u.strip() for u in replicas.split(",") if u.strip()]
    public_port = C.LOAD_BALANCER_PORT if port is None else port
    probe: dict[str, Any] = {"path": probe_path or C.DEFAULT_READINESS_PATH}
    if probe_interval is not None:
        probe["interval_seconds"] = probe_interval
    return {
        "public": {"host": host, "port": public_port},
        "admin": {
            "host": admin_host,
            "port": admin_port if admin_port is not None else public_port + 1,
        },
        "token": secrets.token_urlsafe(24),
        "policy": policy,
        "replicas": [{"url": u, "replica_id": f"static-{i}"} for i, u in enumerate(urls)],
        "probe": probe,
        "state_file": state_file
        or os.path.join(tempfile.gettempdir(), f"skyform-agent-{public_port}.db"),
    }


def _tune_process() -> None:
    """Raise the open-file limit (two sockets per proxied stream) and calm the GC.

    The agent allocates many short-lived objects per request; freezing start-up objects and
    a higher gen-0 threshold keep collector pauses out of the p99 latency.
    """
    import gc
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _announce(config: Any, runtime: Any, show_token: bool) -> None:
    """Say where the agent listens: called only after both sockets are bound."""
    ports = runtime.bound_ports
    lines = [
        f"skyform agent: proxy listening on {config.public.host}:{ports['public']}, "
        f"admin API on {config.admin.host}:{ports['admin']}"
    ]
    if runtime.policy.name == "prefix_aware" and not prefix_aware.NATIVE:
        why = ("its C helper is older than this source (reinstall skyform: pip install -e .)"
               if prefix_aware.STALE_NATIVE else "its C helper was not built (install gcc and "
               "Python's headers, then reinstall skyform)")
        lines.append(f"prefix_aware runs in pure Python: {why}")
    if show_token:
        lines.append(f"admin token: {config.token}")
    click.echo("\n".join(lines), err=True)


def run(config: Any, *, show_token: bool = False) -> None:
    """Serve ``config`` until SIGINT/SIGTERM; exit 1 with ``error: ...`` if it cannot start."""
    from lb_agent.server import build_runtime, serve

    _tune_process()

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        runtime = build_runtime(config)
        started = asyncio.Event()

        async def announce() -> None:
            await started.wait()
            _announce(config, runtime, show_token)

        announcer = asyncio.create_task(announce())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await serve(config, started=started, runtime=runtime)
        finally:
            announcer.cancel()
            runtime.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(main())
    except RuntimeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
