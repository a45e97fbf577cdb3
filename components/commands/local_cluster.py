"""``skyform local FILE --lbs N``: N load balancers on one endpoint port, one elected leader.

The failover path of several load balancers on one machine. Each load balancer is an agent
process (``python -m lb_agent``) with its own admin port and state file; they all bind the
endpoint port with SO_REUSEPORT, so the kernel spreads connections over them. The leader is
whoever holds the file lease (an flock on ``leader.lock`` in the run's directory,
lb_agent.control.leases.file): it alone autoscales and launches or removes replicas, recorded
in the shared local stack (``local-stack.json``, lb_agent.control.deployers.local_stack). The
followers serve traffic, probe the replicas, mirror the replica set from the leader and
report their arrivals to it. A load balancer that dies is started again (as a Deployment
would); when the leader dies another takes the lease within its renew interval and carries
on from the local stack and its own probes.

The agents get their config on stdin (the service's secrets never touch the disk); each logs
to ``agent-<i>.log`` beside the replica logs. The status shown is the leader's ``/status``.
Ctrl-C or SIGTERM stops every load balancer, then every replica the local stack records.
SIGHUP (a service update) is not supported with several load balancers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
from rich.console import Console

from components.commands import localstate
from lb_agent.control.deployers.local import free_port, log_tail, terminate_pgid
from lb_agent.control.deployers.local_stack import LocalStack
from lb_agent.control.leases.file import FileLeaseStore

#: Seconds before a load balancer that exited is started again.
RESTART_SECONDS = 1.0
#: Seconds a load balancer may take to answer its first /health.
START_SECONDS = 60.0
LEASE_FILE = "leader.lock"
STACK_FILE = "local-stack.json"


@dataclass
class _Agent:
    """One load balancer process."""

    index: int
    admin_port: int
    log_path: str
    proc: asyncio.subprocess.Process | None = None
    log: IO[bytes] | None = None
    starts: int = 0

    @property
    def identity(self) -> str:
        return f"lb-{self.index}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"


@dataclass
class LocalCluster:
    """One ``skyform local --lbs N`` run."""

    raw: dict[str, Any]
    lbs: int
    name: str
    file: str
    base: str
    log_dir: str
    token: str
    as_json: bool
    port: int
    host: str
    agents: list[_Agent] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.lease_path = os.path.join(self.base, LEASE_FILE)
        self.stack_path = os.path.join(self.base, STACK_FILE)
        self.agents = []
        taken = {self.port}  # one admin port per agent, none of them the endpoint's
        for i in range(self.lbs):
            admin_port = free_port("127.0.0.1", taken)
            taken.add(admin_port)
            self.agents.append(_Agent(i, admin_port,
                                      os.path.join(self.log_dir, f"agent-{i}.log")))
        self.console = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def agent_config(self, agent: _Agent) -> dict[str, Any]:
        """The config load balancer ``agent`` runs with."""
        raw = json.loads(json.dumps(self.raw))
        raw["public"] = {"host": self.host, "port": self.port, "reuse_port": True}
        raw["admin"] = {"host": "127.0.0.1", "port": agent.admin_port}
        raw["state_file"] = os.path.join(self.base, f"agent-{agent.index}.db")
        raw["lease"] = {"kind": "file", "name": self.lease_path, "identity": agent.identity,
                        "address": f"127.0.0.1:{agent.admin_port}"}
        raw["deployer"]["stack_file"] = self.stack_path
        return raw

    async def _start(self, agent: _Agent) -> None:
        if agent.log is None:
            agent.log = open(agent.log_path, "ab")  # noqa: SIM115 - closed in _stop_all
        agent.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lb_agent", "--config", "/dev/stdin", "--log-level", "info",
            stdin=asyncio.subprocess.PIPE, stdout=agent.log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        assert agent.proc.stdin is not None
        agent.proc.stdin.write(json.dumps(self.agent_config(agent)).encode())
        await agent.proc.stdin.drain()
        agent.proc.stdin.close()
        agent.starts += 1

    async def _healthy(self, session: aiohttp.ClientSession, agent: _Agent) -> bool:
        try:
            async with session.get(agent.admin + "/health") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _wait_started(self, session: aiohttp.ClientSession) -> str | None:
        """None once every load balancer answers /health; else why one did not start."""
        deadline = time.monotonic() + START_SECONDS
        pending = list(self.agents)
        while pending:
            for agent in list(pending):
                assert agent.proc is not None
                if agent.proc.returncode is not None:
                    tail = "\n".join(log_tail(agent.log_path, 10))
                    return (f"load balancer {agent.identity} exited with code "
                            f"{agent.proc.returncode}:\n{tail}")
                if await self._healthy(session, agent):
                    pending.remove(agent)
            if time.monotonic() > deadline:
                return f"load balancer {pending[0].identity} did not start within " \
                       f"{START_SECONDS:.0f} s (log: {pending[0].log_path})"
            await asyncio.sleep(0.1)
        return None

    def leader(self) -> tuple[_Agent | None, dict[str, Any]]:
        """The agent holding the lease (None when none does) and the lease record."""
        record = FileLeaseStore(self.lease_path).read_record()
        holder = record.get("holder")
        agent = next((a for a in self.agents if a.identity == holder), None)
        return agent, record

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        """The leader's /status (any load balancer's while none leads)."""
        leader, _record = self.leader()
        for agent in ([leader] if leader else []) + self.agents:
            try:
                async with session.get(agent.admin + "/status", headers={
                        "Authorization": f"Bearer {self.token}"}) as resp:
                    if resp.status == 200:
                        data: dict[str, Any] = await resp.json()
                        return data
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
        return None

    def _emit(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps(event), flush=True)

    async def main(self, status_interval: float) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._no_update)
        state_path = None
        timeout = aiohttp.ClientTimeout(total=2)
        try:
            # A new connection per call: nothing stale after a load balancer restarted.
            async with aiohttp.ClientSession(
                    timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as session:
                for agent in self.agents:
                    await self._start(agent)
                problem = await self._wait_started(session)
                if problem is not None:
                    self.err.print(f"error: {problem}", markup=False)
                    return 1
                endpoint = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}" \
                           f":{self.port}"
                state_path = localstate.publish(localstate.LocalService(
                    pid=os.getpid(), service=self.name, file=self.file, endpoint=endpoint,
                    admin=self.agents[0].admin, token=self.token, log_dir=self.log_dir,
                    agent_log=self.agents[0].log_path, started_at=time.time()))
                self._emit({
                    "event": "started", "service": self.name, "endpoint": endpoint,
                    "admin": self.agents[0].admin, "token_file": str(state_path),
                    "logs": self.log_dir, "pid": os.getpid(), "lease_file": self.lease_path,
                    "stack_file": self.stack_path,
                    "lbs": [{"identity": a.identity, "admin": a.admin, "log": a.log_path,
                             "pid": a.proc.pid if a.proc else None} for a in self.agents]})
                if not self.as_json:
                    self.console.print(
                        f"[bold]{self.name}[/] is starting on {self.lbs} load balancers. "
                        f"Endpoint: [bold cyan]{endpoint}[/]")
                    for a in self.agents:
                        self.console.print(f"  {a.identity}: admin {a.admin}, log {a.log_path}")
                    self.console.print(f"Bearer token in {state_path} (mode 0600). "
                                       "Ctrl-C to stop")
                return await self._watch(session, stop, status_interval)
        finally:
            if state_path is not None:
                localstate.withdraw(state_path)
            await self._stop_all()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._emit({"event": "stopped"})
            if not self.as_json:
                self.console.print("Stopped: load balancers and replicas are down.")

    def _no_update(self) -> None:
        self.err.print("SIGHUP: updating the service is not supported with --lbs > 1; "
                       "stop and start `skyform local` with the new file")

    async def _watch(self, session: aiohttp.ClientSession, stop: asyncio.Event,
                     status_interval: float) -> int:
        """Show the leader's status until Ctrl-C (0) or every replica failed (3)."""
        from components.commands.local import EXIT_ALL_FAILED, _event, _line, failed_fast
        from lb_agent.control.states import ReplicaState

        t0 = time.monotonic()
        next_status = 0.0
        while not stop.is_set():
            for agent in self.agents:
                assert agent.proc is not None
                if agent.proc.returncode is not None:
                    code = agent.proc.returncode
                    self._emit({"event": "lb_exited", "identity": agent.identity,
                                "exit_code": code})
                    if not self.as_json:
                        self.err.print(f"load balancer {agent.identity} exited ({code}); "
                                       f"starting it again in {RESTART_SECONDS:g} s")
                    await asyncio.sleep(RESTART_SECONDS)
                    await self._start(agent)
                    self._emit({"event": "lb_started", "identity": agent.identity,
                                "pid": agent.proc.pid})
            now = time.monotonic()
            if now >= next_status:
                snap = await self.status(session)
                if snap is not None:
                    event = _event(snap, now - t0)
                    event["leadership"] = snap.get("leadership")
                    if self.as_json:
                        print(json.dumps(event), flush=True)
                    else:
                        lead = snap.get("leadership") or {}
                        print(f"leader={lead.get('holder')} term={lead.get('term')} "
                              + _line(event), flush=True)
                    if failed_fast([(bool(r.get("ready_once")), ReplicaState(r["state"]))
                                    for r in snap["replicas"] if not r.get("static")]):
                        self.err.print(
                            f"error: every replica of {self.name} failed and none was ever "
                            "ready, so no new replica is launched (SkyServe's fail-fast "
                            f"guard); see the replica logs in {self.log_dir}", markup=False)
                        self._emit({"event": "all_failed"})
                        return EXIT_ALL_FAILED
                next_status = now + status_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(0.5, status_interval))
        return 0

    async def _stop_all(self) -> None:
        """SIGTERM every load balancer (SIGKILL after 15 s), then end every replica."""
        self.stopping = True
        procs = [a.proc for a in self.agents if a.proc is not None and a.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        data = LocalStack(self.stack_path).read()
        await asyncio.gather(*(terminate_pgid(int(pgid), 5.0)
                               for item in data["replicas"].values()
                               for pgid in item.get("pgids", [])))
        for agent in self.agents:
            if agent.log is not None:
                agent.log.close()
                agent.log = None
