"""``skyform agent``: run the controller agent (load balancer, prober, admin API, autoscaler).

Either ``--config FILE`` (JSON or YAML, see README "The agent"), or quick mode with no file:
``--replicas URL,URL --port PORT [--policy NAME] [--probe PATH] [--admin-port PORT]``, which
balances a fixed replica list and prints a freshly generated admin token.
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


@click.command(name="agent")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Agent config file (JSON or YAML).")
@click.option("--replicas", default=None, help="Quick mode: comma-separated replica URLs.")
@click.option("--port", type=int, default=None, help="Quick mode: public (proxy) port.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Quick mode: listen address.")
@click.option("--admin-port", type=int, default=None,
              help="Quick mode: admin port (default port+1).")
@click.option("--policy", default=None, help="Quick mode: load-balancing policy.")
@click.option("--probe", "probe_path", default=None, help="Quick mode: readiness path (default /).")
@click.option("--probe-interval", type=float, default=None,
              help="Quick mode: seconds between probes.")
@click.option("--state-file", default=None, help="Quick mode: SQLite state file.")
def agent(
    config_path: str | None,
    replicas: str | None,
    port: int | None,
    host: str,
    admin_port: int | None,
    policy: str | None,
    probe_path: str | None,
    probe_interval: float | None,
    state_file: str | None,
) -> None:
    """Start the controller agent (proxy on the public port, admin API on its own port)."""
    from lb_agent.config import AgentConfig, ConfigError

    try:
        if config_path is not None:
            if replicas is not None:
                raise click.UsageError("give either --config or --replicas, not both")
            config = AgentConfig.load(config_path)
        elif replicas is not None:
            config = AgentConfig.from_dict(
                _quick_config(replicas, port, host, admin_port, policy, probe_path,
                              probe_interval, state_file),
                source="<command line>",
            )
            click.echo(
                f"skyform agent: proxy on {config.public.host}:{config.public.port}, "
                f"admin on {config.admin.host}:{config.admin.port}\n"
                f"admin token: {config.token}",
                err=True,
            )
        else:
            raise click.UsageError("give --config FILE, or --replicas URL,URL --port PORT")
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    _run(config)


def _quick_config(
    replicas: str,
    port: int | None,
    host: str,
    admin_port: int | None,
    policy: str | None,
    probe_path: str | None,
    probe_interval: float | None,
    state_file: str | None,
) -> dict[str, Any]:
    urls = [u.strip() for u in replicas.split(",") if u.strip()]
    public_port = C.LOAD_BALANCER_PORT if port is None else port
    probe: dict[str, Any] = {"path": probe_path or C.DEFAULT_READINESS_PATH}
    if probe_interval is not None:
        probe["interval_seconds"] = probe_interval
    return {
        "public": {"host": host, "port": public_port},
        "admin": {"host": host, "port": admin_port if admin_port is not None else public_port + 1},
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


def _run(config: Any) -> None:
    from lb_agent.server import serve

    _tune_process()

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(config)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(main())
    except RuntimeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
