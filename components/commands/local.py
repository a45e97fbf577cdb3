"""``skyform local FILE``: the whole service on this machine (agent + replicas as processes).

Parses the YAML like ``skyform validate`` (exit 2 with the located problems when invalid),
builds an agent config in memory (local deployer, SQLite state and replica logs in a temp
directory, a random admin token, the admin API on a free port of 127.0.0.1), runs the agent
in-process and shows a live status table (rich when stdout is a terminal, one line per
interval otherwise, JSON lines with ``--json``).

It explains itself: the admin URL and where its token is are printed at start (the token is
in the 0600 state file ``skyform status`` reads, see ``localstate``); a replica whose process
exits shows within half a second with its exit code, log path and last log lines; a replica
that is not ready shows its last probe result; when every replica failed and none was ever
ready (SkyServe's fail-fast guard stops launching), it says so and exits 3.

SIGHUP reads FILE again and rolls it out as the next service version (``--update-mode``
rolling or blue_green; lb_agent.control.rollout): an invalid file is refused and the running version
keeps serving. The table shows each replica's version, the active versions and the rollout.

Ctrl-C or SIGTERM shuts everything down: in-flight requests get the agent's graceful
shutdown, a second Ctrl-C stops at once; every replica process group is ended and nothing is
left running. The temp directory is removed unless ``--log-dir`` was given (it is kept) or a
replica failed (then it is kept and its path printed).

Exit codes: 0 stopped by Ctrl-C/SIGTERM, 1 unreadable file or the agent could not start or
stopped, 2 invalid YAML or options, 3 every replica failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live

from components.commands import localstate
from components.commands.common import parse_pairs
from components.commands.service_view import Target
from components.commands.status import rollout_text, summarize, view
from lb_agent import constants as C
from lb_agent.control.states import ReplicaState
from lb_agent.runtime import AgentRuntime
from lb_agent.status import deployer_status, exited, snapshot

_POSITIVE = click.FloatRange(min=0, min_open=True)
#: Exit code when every replica failed (fail-fast).
EXIT_ALL_FAILED = 3
#: How often the display checks for crashed replicas (a crash shows within this).
WATCH_SECONDS = 0.5
_FAILED_STATES = (ReplicaState.FAILED, ReplicaState.FAILED_INITIAL_DELAY)


@click.command(name="local")
@click.argument("file", type=str)
@click.option("--port", type=click.IntRange(0, 65535), default=C.LOCAL_LB_PORT, show_default=True,
              help="Port of the local endpoint (the load balancer).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--admin-port", type=click.IntRange(0, 65535), default=None,
              help="Admin API port (default: a free one).")
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
@click.option("--update-mode", type=click.Choice(["rolling", "blue_green"]), default="rolling",
              show_default=True,
              help="How an updated FILE rolls out on SIGHUP (`kill -HUP PID`).")
@click.option("--lbs", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Load balancers: agent processes sharing the endpoint port (SO_REUSEPORT); "
                   "one, elected by a file lease, autoscales (docs/agent.md).")
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
    update_mode: str,
    lbs: int,
) -> None:
    """Run the service in FILE on this machine: agent, autoscaler and replicas."""
    from components.commands.common import load_service_or_exit

    task = load_service_or_exit(file, envs, secret_values)

    from lb_agent.config import ConfigError
    from lb_agent.control.deployers.local import free_port

    base = tempfile.mkdtemp(prefix="skyform-local-")
    replica_logs = os.path.abspath(log_dir) if log_dir else os.path.join(base, "replicas")
    os.makedirs(replica_logs, exist_ok=True)
    autoscaler: dict[str, Any] = {"enabled": True, "update_mode": update_mode}
    for key, value in (
        ("decision_interval_seconds", decision_interval),
        ("no_replica_interval_seconds", no_replica_interval),
        ("qps_window_seconds", qps_window),
        ("drain_timeout_seconds", drain_timeout),
    ):
        if value is not None:
            autoscaler[key] = value
    settings = _Settings(host=host, port=port,
                         admin_port=admin_port or free_port("127.0.0.1", {port}),
                         token=secrets.token_urlsafe(24), base=base, replica_logs=replica_logs,
                         autoscaler=autoscaler, probe_interval=probe_interval,
                         envs=dict(envs), secret_values=dict(secret_values))
    try:
        config = settings.config(task, file)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        shutil.rmtree(base, ignore_errors=True)
        sys.exit(2)
    name = task.name or os.path.splitext(os.path.basename(file))[0]
    if lbs > 1:
        _run_cluster(settings, task, config, name, os.path.abspath(file), lbs, as_json,
                     status_interval, log_dir)
        return
    agent_log = os.path.join(replica_logs, "agent.log")
    handler = _log_to_file(agent_log)
    try:
        run = _Run(config, name, os.path.abspath(file), replica_logs, agent_log, as_json,
                   settings)
        code = asyncio.run(run.main(status_interval))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    out_err = Console(stderr=True, highlight=False, soft_wrap=True)
    if log_dir is not None:
        shutil.rmtree(base, ignore_errors=True)
        out_err.print(f"Logs are in {replica_logs}")
    elif run.failed:
        out_err.print(f"A replica failed: its logs are kept in {replica_logs}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(code)


def _run_cluster(settings: _Settings, task: Any, config: Any, name: str, file: str, lbs: int,
                 as_json: bool, status_interval: float, log_dir: str | None) -> None:
    """``--lbs N`` (N > 1): N agent processes, one elected leader
    (components/commands/local_cluster.py)."""
    from components.commands.local_cluster import LocalCluster
    from lb_agent.control.deployers.local import free_port

    raw = settings.raw(task)
    # The probe with its secrets filled in (the agents get their config on stdin).
    raw["probe"] = config.probe.model_dump(mode="json")
    port = settings.port or free_port(settings.host)
    cluster = LocalCluster(raw=raw, lbs=lbs, name=name, file=file, base=settings.base,
                           log_dir=settings.replica_logs, token=settings.token,
                           as_json=as_json, port=port, host=settings.host)
    code = asyncio.run(cluster.main(status_interval))
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if log_dir is not None:
        shutil.rmtree(settings.base, ignore_errors=True)
        err.print(f"Logs are in {settings.replica_logs}")
    elif code == EXIT_ALL_FAILED:
        err.print(f"A replica failed: its logs are kept in {settings.replica_logs}")
    else:
        shutil.rmtree(settings.base, ignore_errors=True)
    sys.exit(code)


@dataclass
class _Settings:
    """What ``skyform local`` was started with: enough to rebuild the agent config for an
    updated YAML (SIGHUP) exactly as for the first one."""

    host: str
    port: int
    admin_port: int
    token: str
    base: str
    replica_logs: str
    autoscaler: dict[str, Any]
    probe_interval: float | None
    envs: dict[str, str]
    secret_values: dict[str, str]

    def config(self, task: Any, file: str) -> Any:
        """The agent config for ``task``; raises ConfigError."""
        from lb_agent.config import AgentConfig

        raw = self.raw(task)
        secrets_path: str | None = None
        if task.secrets:
            secrets_path = os.path.join(self.base, f"service-secrets-{secrets.token_hex(4)}.json")
            fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(dict(task.secrets), fh)
            raw["secrets_file"] = secrets_path
        try:
            return AgentConfig.from_dict(raw, source=file)
        finally:
            # Read once by from_dict: the values must not stay on disk for the run and after.
            if secrets_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(secrets_path)

    def raw(self, task: Any) -> dict[str, Any]:
        """The agent config mapping for ``task`` (the probe's secrets still ``${NAME}``)."""
        raw: dict[str, Any] = {
            # Secrets substituted into the probe stay ${NAME} references in the config; the
            # agent fills them from a 0600 file in this run's private (0700) temp dir.
            "service": task.to_json(secret_refs=True),
            "public": {"host": self.host, "port": self.port},
            "admin": {"host": "127.0.0.1", "port": self.admin_port},
            "token": self.token,
            "state_file": os.path.join(self.base, "agent.db"),
            "autoscaler": dict(self.autoscaler),
            "deployer": {
                "kind": "local",
                "log_dir": self.replica_logs,
                # Real secret values go to the replicas' environment only (in memory).
                "env": dict(task.secrets),
            },
        }
        if self.probe_interval is not None:
            raw["probe"] = {"interval_seconds": self.probe_interval}
        return raw


def _log_to_file(path: str) -> logging.Handler:
    """The agent's log (INFO and up) goes to ``path``, not over the status display."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    for name in ("lb_agent", "components"):
        logging.getLogger(name).setLevel(logging.INFO)
    return handler


class _Run:
    """One ``skyform local`` run: the agent task, the display, the signals."""

    def __init__(self, config: Any, name: str, file: str, log_dir: str, agent_log: str,
                 as_json: bool, settings: _Settings) -> None:
        self.config = config
        self.settings = settings
        self.name = name
        self.file = file
        self.log_dir = log_dir
        self.agent_log = agent_log
        self.as_json = as_json
        self.failed = False
        self.signals = 0
        self.reported: set[str] = set()
        self.console = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def _emit(self, event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)

    def _on_signal(self, stop: asyncio.Event) -> None:
        self.signals += 1
        if self.signals == 1:
            stop.set()
            self.err.print("Stopping: finishing in-flight requests. "
                           "Press Ctrl-C again to stop now.")
            return
        self.err.print("Stopping now.")
        for task in asyncio.all_tasks():
            if task.get_name() in ("skyform-proxy", "skyform-admin"):
                task.cancel()

    def _report_failures(self, runtime: AgentRuntime) -> list[dict[str, Any]]:
        """Replica failures not reported yet (printed now, in JSON or as text)."""
        new: list[dict[str, Any]] = []
        for rid, info in _failures(runtime).items():
            if rid in self.reported:
                continue
            self.reported.add(rid)
            self.failed = True
            event = {"event": "replica_failed", "id": rid, **info}
            new.append(event)
            if self.as_json:
                self._emit(event)
            elif not self.console.is_terminal:
                print(_failure_text(event), flush=True)
        return new

    def _on_hup(self, runtime: AgentRuntime) -> None:
        """SIGHUP: read FILE again and roll it out as the next version."""
        from components.errors import SpecError
        from components.parser import SpecFileError, load_service
        from lb_agent.config import ConfigError

        event: dict[str, Any]
        try:
            task = load_service(self.file, env_overrides=self.settings.envs,
                                secret_overrides=self.settings.secret_values)
            config = self.settings.config(task, self.file)
            scaler = runtime.scaler
            if scaler is None:
                raise ValueError("the agent's scaler is not running yet; try again")
            result = scaler.apply_update(config.service, config=config)
            event = {"event": "update", "file": self.file, **result}
        except SpecError as exc:
            event = {"event": "update_rejected", "file": self.file,
                     "error": "; ".join(str(issue) for issue in exc.issues)}
        except (SpecFileError, ConfigError, ValueError) as exc:
            event = {"event": "update_rejected", "file": self.file, "error": str(exc)}
        if self.as_json:
            self._emit(event)
        elif event["event"] == "update_rejected":
            self.err.print(f"update rejected, still running the previous version: "
                           f"{event['error']}", markup=False)
        elif event["changed"]:
            self.err.print(f"update: rolling out version {event['version']} ({event['mode']}"
                           f", {len(event['reused'])} replica(s) reused)")
        else:
            self.err.print(f"update: {self.file} is unchanged (version {event['version']})")

    async def main(self, status_interval: float) -> int:
        from lb_agent.server import build_runtime, serve

        config = self.config
        runtime = build_runtime(config)
        started = asyncio.Event()
        server = asyncio.create_task(serve(config, started=started, runtime=runtime))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup, runtime)
        console, out_err, as_json = self.console, self.err, self.as_json
        code = 0
        state_path = None
        try:
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if server.done():
                waiter.cancel()
                exc = server.exception()
                out_err.print(f"error: the agent did not start: {exc}")
                return 1
            endpoint = f"http://{_display_host(config.public.host)}:{runtime.bound_ports['public']}"
            admin = f"http://127.0.0.1:{runtime.bound_ports['admin']}"
            state_path = localstate.publish(localstate.LocalService(
                pid=os.getpid(), service=self.name, file=self.file, endpoint=endpoint,
                admin=admin, token=config.token, log_dir=self.log_dir,
                agent_log=self.agent_log, started_at=time.time(),
            ))
            header = {
                "event": "started", "service": self.name, "endpoint": endpoint,
                "admin": admin, "token_file": str(state_path), "logs": self.log_dir,
                "agent_log": self.agent_log, "pid": os.getpid(),
            }
            if as_json:
                self._emit(header)
            else:
                console.print(f"[bold]{self.name}[/] is starting. "
                              f"Endpoint: [bold cyan]{endpoint}[/]")
                console.print(f"Admin API: {admin}  (bearer token in {state_path}, mode 0600; "
                              "or run `skyform status`)")
                console.print(f"Logs: {self.log_dir}  (`skyform logs`)    Ctrl-C to stop")
                console.print(f"Update: edit {self.file}, then `kill -HUP {os.getpid()}` "
                              f"({self.settings.autoscaler.get('update_mode')} rollout)")
            code = await self._watch(runtime, endpoint, server, stop, status_interval)
        finally:
            if state_path is not None:
                localstate.withdraw(state_path)
            await self._shutdown(runtime, server)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if as_json:
                self._emit({"event": "stopped", "exit_code": code})
            else:
                console.print("Stopped: agent and replicas are down.")
        return code

    async def _watch(self, runtime: AgentRuntime, endpoint: str, server: asyncio.Task[None],
                     stop: asyncio.Event, status_interval: float) -> int:
        """Show the status until Ctrl-C, the agent stopping, or every replica failed."""
        t0 = time.monotonic()
        next_status = 0.0
        live: Live | None = None
        view_of = Target("local", self.name, endpoint, cloud="local")
        if self.console.is_terminal and not self.as_json:
            live = Live(_render(runtime, view_of), console=self.console, refresh_per_second=4)
            live.start()
        failed_all = False
        try:
            while not stop.is_set() and not server.done():
                self._report_failures(runtime)
                now = time.monotonic()
                if live is not None:
                    live.update(_render(runtime, view_of))
                elif now >= next_status:
                    snap = _snapshot(runtime, now - t0)
                    print(json.dumps(snap) if self.as_json else _line(snap), flush=True)
                    next_status = now + status_interval
                if all_failed(runtime):
                    failed_all = True
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(status_interval, WATCH_SECONDS))
        finally:
            if live is not None:
                live.update(_render(runtime, view_of))
                live.stop()
        if failed_all:
            self._say_all_failed(runtime)
            return EXIT_ALL_FAILED
        if server.done() and not stop.is_set():
            exc = server.exception() if not server.cancelled() else None
            self.err.print(f"error: the agent stopped: {exc}")
            return 1
        return 0

    def _say_all_failed(self, runtime: AgentRuntime) -> None:
        reasons = []
        failures = _failures(runtime)
        for rec in runtime.registry.list():
            if rec.static:
                continue
            info = failures.get(rec.replica_id)
            if info is not None:
                reasons.append(f"  {rec.replica_id}: {info['step']} exited with code "
                               f"{info['exit_code']} (log: {info['log']})")
            else:
                probe = runtime.probe_results.get(rec.replica_id, "no answer")
                reasons.append(f"  {rec.replica_id}: {rec.state.value}, last probe: {probe}")
        message = (
            f"error: every replica of {self.name} failed and none was ever ready, so no new "
            "replica is launched (SkyServe's fail-fast guard).\n" + "\n".join(reasons) +
            "\nFix the service's setup/run commands or its readiness_probe, then run "
            "`skyform local` again."
        )
        self.failed = True
        if self.as_json:
            self._emit({"event": "all_failed", "message": message})
        self.err.print(message, markup=False)

    async def _shutdown(self, runtime: AgentRuntime, server: asyncio.Task[None]) -> None:
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
        scaler = runtime.scaler
        if scaler is not None and scaler.deployer is not None:
            if _failures(runtime):
                self.failed = True
            await scaler.deployer.close()
        runtime.close()


def all_failed(runtime: AgentRuntime) -> bool:
    """Every launched replica is in a terminal state, none was ever READY, and at least one
    failed the way SkyServe's fail-fast guard counts (FAILED or FAILED_INITIAL_DELAY)."""
    return failed_fast([(r.ready_once, r.state) for r in runtime.registry.list()
                        if not r.static])


def failed_fast(replicas: list[tuple[bool, ReplicaState]]) -> bool:
    """``all_failed`` over (ready once, state) of each launched replica (a status snapshot's
    replicas with ``--lbs``)."""
    if not replicas or any(ready for ready, _state in replicas):
        return False
    if any(not state.is_terminal for _ready, state in replicas):
        return False
    return any(state in _FAILED_STATES for _ready, state in replicas)


def _failures(runtime: AgentRuntime) -> dict[str, dict[str, Any]]:
    """Replicas whose process exited: id -> step, exit code, log and its last lines."""
    return exited(deployer_status(runtime))


def _failure_text(event: dict[str, Any]) -> str:
    lines = [f"replica {event['id']}: {event['step']} exited with code {event['exit_code']}"
             f" (log: {event['log']})"]
    lines.extend(f"  | {line}" for line in event.get("tail") or [])
    return "\n".join(lines)


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _snapshot(runtime: AgentRuntime, elapsed: float) -> dict[str, Any]:
    """The status event of ``--json`` and the text lines: the agent's snapshot
    (lb_agent.status, what ``GET /status`` answers) in the event's shape."""
    return _event(snapshot(runtime), elapsed)


def _event(snap: dict[str, Any], elapsed: float) -> dict[str, Any]:
    status = snap["autoscaler"] or {}
    replicas = [{
        "id": r["replica_id"], "state": r["state"], "url": r["url"], "version": r["version"],
        "in_flight": r["in_flight"], "draining": r["draining"], "probe": r["probe"],
        "exit_code": r["exit_code"], "log": r["log"], "detail": r["detail"],
    } for r in snap["replicas"]]
    return {
        "event": "status",
        "elapsed": round(elapsed, 1),
        "qps": status.get("qps"),
        "target": status.get("final_target"),
        "min": status.get("min_replicas"),
        "max": status.get("max_replicas"),
        "draining": status.get("draining", []),
        "pids": snap["deployer"].get("pids", {}),
        "replicas": replicas,
        "version": status.get("version"),
        "active_versions": snap["active_versions"],
        "rollout": status.get("rollout"),
        "error": status.get("error"),
    }


def _line(snap: dict[str, Any]) -> str:
    reps = ", ".join(
        f"{r['id']} v{r['version']} {r['state']}" + (f" ({r['detail']})" if r["detail"] else "")
        for r in snap["replicas"]
    ) or "none"
    rollout = rollout_text(snap.get("rollout"))
    return (
        f"[{snap['elapsed']:>6.1f}s] qps={snap['qps']} target={snap['target']} "
        f"version={snap.get('version')} active={snap.get('active_versions')} "
        + (f"{rollout} " if rollout else "") + f"replicas: {reps}"
    )


def _render(runtime: AgentRuntime, target: Target) -> Group:
    """The live display: the agent's snapshot through ``skyform status``'s renderer."""
    snap = snapshot(runtime)
    return view(summarize(target, snap, time.time()), snap)
