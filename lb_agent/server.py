"""Run the agent: the public proxy and the admin API, two uvicorn servers on one event loop.

``serve(config)`` runs until cancelled. The proxy app's lifespan starts the prober and, when
the config enables the autoscaler or names a deployer, ``lb_agent.control.scaler.run_scaler``. Each
port enforces its own client limits (values from ``limits``): the public port's connections
are ``lb_agent.dataplane.public_http``'s protocol, the admin port's
``lb_agent.dataplane.client_guard``'s.

With a leader lease (``lease.kind`` other than ``none``: several load balancers) the lifespan
starts the election (lb_agent.control.election) instead of the scaler: the scaler runs only
while this load balancer leads (lb_agent.control.cluster.lead), and the cluster client syncs
from the leader and reports arrivals to it while it follows. Every load balancer probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any, Literal

import uvicorn

from lb_agent import socket_activation
from lb_agent.admin import build_admin_app
from lb_agent.config import AgentConfig
from lb_agent.control.leadership import LeaseState, LeaseStore
from lb_agent.control.leases import LeaseStoreError, open_store
from lb_agent.control.prober import Prober
from lb_agent.dataplane.client_guard import guarded_protocol
from lb_agent.dataplane.limits import connection_cap
from lb_agent.dataplane.proxy import ProxyApp
from lb_agent.dataplane.public_http import public_protocol
from lb_agent.runtime import AgentRuntime

log = logging.getLogger("lb_agent")


def start_cluster(runtime: AgentRuntime, store: LeaseStore) -> list[asyncio.Task[Any]]:
    """The election and the cluster client of one of several load balancers."""
    from lb_agent.control.cluster import ClusterClient, lead
    from lb_agent.control.election import Election
    from lb_agent.control.leadership import CANDIDATE, resolve_address

    cfg = runtime.config
    runtime.leadership.role, runtime.leadership.holder = CANDIDATE, None
    client = ClusterClient(runtime)
    runtime.cluster = client

    def address() -> str | None:
        port = runtime.bound_ports.get("admin") or cfg.admin.port
        return resolve_address(cfg.lease.address, cfg.admin.host, port)

    async def lead_term(state: LeaseState) -> None:
        await lead(runtime, state)

    election = Election(store, runtime.leadership, address, lead_term,
                        renew_seconds=cfg.lease.renew_seconds,
                        duration_seconds=cfg.lease.duration_seconds)
    client.on_unreachable = election.poke
    return [asyncio.create_task(election.run(), name="skyform-election"),
            asyncio.create_task(client.run(), name="skyform-cluster")]


def build_runtime(config: AgentConfig) -> AgentRuntime:
    """The shared runtime for ``config`` (opens the SQLite state file, loads the registry)."""
    return AgentRuntime(config)


def build_proxy_app(runtime: AgentRuntime, store: LeaseStore | None = None) -> ProxyApp:
    """The proxy ASGI app with the agent's background tasks bound to its lifespan
    (``store``: the leader lease's, opened by the caller; None: a lone agent)."""
    app = ProxyApp(runtime)
    tasks: list[asyncio.Task[Any]] = []

    async def startup() -> None:
        prober = Prober(runtime)
        tasks.append(asyncio.create_task(prober.run(), name="skyform-prober"))
        if store is not None:
            tasks.extend(start_cluster(runtime, store))
            # The proxy listens (joins a SO_REUSEPORT group) once the replicas are known.
            assert runtime.cluster is not None
            await runtime.cluster.wait_known(runtime.config.lease.duration_seconds)
        elif runtime.config.autoscaler_enabled or runtime.config.deployer is not None:
            from lb_agent.control.scaler import run_scaler

            tasks.append(asyncio.create_task(run_scaler(runtime), name="skyform-scaler"))

    async def shutdown() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        tasks.clear()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app


#: Seconds between closing a passed listener (lb_agent/socket_activation.py) and closing idle
#: connections at shutdown. An agent that owns its listener has no successor waiting on it
#: and shuts down at once.
SHUTDOWN_GRACE_SECONDS = 0.5


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to whoever runs the loop (two servers share it)
    and gives just-accepted connections a moment before its graceful shutdown."""

    #: Set to SHUTDOWN_GRACE_SECONDS when the listener was passed to this process.
    shutdown_grace = 0.0

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn closes every connection without a request in progress at once, including
        one accepted a moment ago whose request is still on its way: that client sees the
        connection closed with no response (measured across restarts with a passed socket,
        tests/test_supervisor.py). Stop accepting first (the next agent, or nobody, takes
        new connections), let such requests arrive and start, then shut down as uvicorn does:
        requests in progress finish, idle connections close."""
        if self.shutdown_grace:
            for server in self.servers:
                server.close()
            await asyncio.sleep(self.shutdown_grace)
        await super().shutdown(sockets)


def _uvicorn_config(
    app: Any, host: str, port: int, *, lifespan: Literal["on", "off"],
    protocol: type[asyncio.Protocol], **extra: Any
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        loop="none",
        lifespan=lifespan,
        access_log=False,
        log_level="warning",
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
        backlog=4096,
        proxy_headers=False,
        **extra,
    )


async def serve(
    config: AgentConfig,
    *,
    started: asyncio.Event | None = None,
    runtime: AgentRuntime | None = None,
) -> None:
    """Run the proxy (``config.public``) and the admin API (``config.admin``) until cancelled.

    ``started`` is set once both ports accept connections; ``runtime`` lets a caller (tests)
    share the runtime it inspects. The bound ports are stored on ``runtime.bound_ports``.
    """
    rt = runtime or build_runtime(config)
    try:
        store = open_store(config.lease)
    except LeaseStoreError as bad:
        raise AgentStartError(str(bad)) from None
    tls: dict[str, Any] = {}
    if config.tls is not None:
        tls = {"ssl_keyfile": config.tls.keyfile, "ssl_certfile": config.tls.certfile}
    limits = config.limits
    app = build_proxy_app(rt, store)
    # The public port's connections are the agent's own protocol (no ASGI cycle per
    # request); uvicorn runs its listener, lifespan and graceful shutdown.
    proxy = _Server(
        _uvicorn_config(app, config.public.host, config.public.port,
                        lifespan="on", server_header=False, date_header=False,
                        protocol=public_protocol(app.handle_http, limits.public,
                                                 connection_cap(limits)), **tls)
    )
    admin = _Server(
        _uvicorn_config(build_admin_app(rt), config.admin.host, config.admin.port,
                        lifespan="off", protocol=guarded_protocol(limits.admin))
    )
    # Bind here, not in uvicorn: a busy port is then a clear error instead of uvicorn's exit.
    # A socket systemd passes (lb_agent/socket_activation.py) is taken instead.
    passed = socket_activation.passed()
    taken = socket_activation.take(passed, socket_activation.PUBLIC, config.public.host,
                                   config.public.port)
    public_sock = taken or bind_listener(config.public.host, config.public.port, "public",
                                         reuse_port=config.public.reuse_port)
    proxy.shutdown_grace = SHUTDOWN_GRACE_SECONDS if taken else 0.0
    try:
        taken = socket_activation.take(passed, socket_activation.ADMIN, config.admin.host,
                                       config.admin.port)
        admin_sock = taken or bind_listener(config.admin.host, config.admin.port, "admin")
        admin.shutdown_grace = SHUTDOWN_GRACE_SECONDS if taken else 0.0
    except AgentStartError:
        public_sock.close()
        raise
    tasks = [
        asyncio.create_task(proxy.serve(sockets=[public_sock]), name="skyform-proxy"),
        asyncio.create_task(admin.serve(sockets=[admin_sock]), name="skyform-admin"),
    ]
    try:
        while not (proxy.started and admin.started):
            done = [t for t in tasks if t.done()]
            if done:
                exc = done[0].exception()
                raise RuntimeError(f"agent failed to start: {exc or 'server exited'}")
            await asyncio.sleep(0.01)
        rt.bound_ports = {
            "public": int(public_sock.getsockname()[1]),
            "admin": int(admin_sock.getsockname()[1]),
        }
        if started is not None:
            started.set()
        # asyncio.wait (unlike gather) does not cancel the servers when this task is cancelled:
        # they get a graceful shutdown below instead.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for server in (proxy, admin):
            server.should_exit = True
        await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            if not task.done():
                task.cancel()
        public_sock.close()
        admin_sock.close()
        if runtime is None:
            rt.close()


class AgentStartError(RuntimeError):
    """The agent could not start (for example, a port is already in use)."""


def bind_listener(host: str, port: int, what: str, *, reuse_port: bool = False
                  ) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening); AgentStartError naming the
    ``what`` port when that fails. ``reuse_port``: SO_REUSEPORT, the port shared with other
    agents that set it too (the kernel spreads new connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AgentStartError(
            f"cannot listen on {host}:{port} ({what} port): {exc.strerror or exc}"
        ) from None
    # Not inheritable: uvloop's subprocesses keep every inheritable descriptor, and a
    # replica or engine process holding the listener would keep the port (a SO_REUSEPORT
    # member nobody accepts on) after the agent died. The supervisor passes its copies
    # explicitly (lb_agent/supervisor.py).
    return sock
