"""LocalDeployer: replicas as local process groups on 127.0.0.1 (``skyform local``).

Each replica gets a directory ``<log_dir>/local-<n>/`` holding its scripts and ``replica.log``.
It runs the service's own ``setup`` (once per replica, like each SkyServe replica does) and then
``run``, both with ``bash`` in the service ``workdir`` (resolved next to the YAML) or, without
one, in the replica directory. The environment is this process's, plus the service ``envs`` and
secrets, ``SKYPILOT_SERVE_REPLICA_ID=<n>``, ``SKYPILOT_NUM_GPUS_PER_NODE=0`` and a free port:
``PORT`` / ``SKYPILOT_SERVE_PORT`` hold it, and the service port number is replaced by it
wherever it appears as a whole token in ``setup``/``run`` (SkyServe YAMLs hard-code the port,
e.g. ``python3 -m http.server 8080``). ``file_mounts`` are not applied locally.

Multi-node services (``num_nodes > 1``): a replica is a head and ``num_nodes - 1`` workers,
each its own process group with its own port and directory (``local-<n>/node-<rank>/``), all
running setup and run with ``SKYPILOT_NODE_RANK``, ``SKYPILOT_NUM_NODES`` and
``SKYPILOT_NODE_IPS`` (one ``127.0.0.1`` line per node, as SkyPilot lists one IP per node).
Only the head is registered (routed to and probed); a worker that fails fails its replica,
and removal ends every node of the group.

A replica is registered in the agent's registry as PROVISIONING while setup runs and as
STARTING once ``run`` starts; the prober takes it from there. A replica whose setup or run
process exits is marked FAILED at once (a watcher awaits the process), and ``failures`` keeps
what the user needs to fix it: the step, the exit code, the log path and the log's last lines.
Removal ends the whole process group: SIGTERM, then SIGKILL after a grace period. Every pid
is tracked and ``close`` ends them all, so no process outlives the agent.

Several agents (``skyform local --lbs N``): the replicas are shared, recorded in the local
stack file (lb_agent.control.deployers.local_stack) with every launch and removal journaled
under the stack lock with the leader's identity and term. Only the leader's deployer runs;
when it starts it adopts the replicas the file records (their process groups are ended by
pgid, since they are another process's children), and ``close`` leaves them running for
the next leader (``skyform local`` ends them all when it stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from lb_agent import constants as C
from lb_agent import credentials
from lb_agent.control.deployers.base import PlannedReplica
from lb_agent.control.deployers.local_stack import LocalStack
from lb_agent.control.leadership import Leadership
from lb_agent.control.placement.policy import Placer
from lb_agent.control.registry import Registry
from lb_agent.control.states import ReplicaState
from lb_agent.control.store import StateStore

log = logging.getLogger(__name__)

PREFIX = "local-"
_NEXT_ID_KEY = "local_deployer.next_id"
#: Lines of a crashed replica's log shown to the user.
TAIL_LINES = 5


def log_tail(path: str, lines: int = TAIL_LINES, max_bytes: int = 16384) -> list[str]:
    """The last ``lines`` lines of the file at ``path`` (empty if it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").rstrip("\n")
    return text.splitlines()[-lines:] if text else []


def free_port(host: str = "127.0.0.1", taken: Collection[int] = ()) -> int:
    """A TCP port nobody listens on right now and not in ``taken`` (ports given to replicas
    that may not listen yet: the kernel offers a port again once its probe socket closes)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


def substitute_port(text: str, old: int, new: int) -> str:
    """Replace ``old`` by ``new`` where it is a whole token (not part of a number or name)."""
    return re.sub(rf"(?<![\w.]){old}(?![\w])", str(new), text)


@dataclass(frozen=True)
class LocalSpec:
    """What a replica of one service version runs: its scripts, env, directory and nodes."""

    version: int
    setup: str
    run: str
    env: dict[str, str]
    work_dir: str | None
    service_port: int
    num_nodes: int

    @classmethod
    def of(cls, service: Mapping[str, Any], version: int, env: Mapping[str, str] | None,
           work_dir: str | None) -> LocalSpec:
        base = {str(k): str(v) for k, v in (service.get("envs") or {}).items()}
        base.update({str(k): str(v) for k, v in (env or {}).items()})
        return cls(
            version=version,
            setup=str(service.get("setup") or ""),
            run=str(service.get("run") or ""),
            env=base,
            work_dir=_resolve_workdir(service, work_dir),
            service_port=int(service.get("service_port") or 8080),
            num_nodes=max(1, int(service.get("num_nodes") or 1)),
        )


@dataclass
class LocalReplica:
    """One local replica's processes and files."""

    replica_id: str
    number: int
    port: int
    spot: bool
    directory: str
    log_path: str
    spec: LocalSpec
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    removing: bool = False
    log_file: IO[bytes] | None = None
    #: This node's rank in its replica (0: the head, the registered one).
    rank: int = 0
    #: The head's worker nodes (ranks 1..num_nodes-1); empty for single-node services.
    workers: list[LocalReplica] = field(default_factory=list)
    exit_code: int | None = None
    #: Process groups of a replica another leader launched (adopted from the local stack).
    adopted: list[int] = field(default_factory=list)

    @property
    def run_proc(self) -> asyncio.subprocess.Process | None:
        return self.procs[1] if len(self.procs) > 1 else None


class LocalDeployer:
    """Runs replicas of one service as process groups on this machine."""

    kind = "local"
    #: Replicas of several service versions run side by side (``set_version``).
    runs_versions = True
    #: Nothing records a version for local replicas, and they have one place.
    recorded_version: int | None = None
    placer: Placer | None = None

    def __init__(
        self,
        registry: Registry,
        service: Mapping[str, Any],
        *,
        log_dir: str,
        work_dir: str | None = None,
        env: Mapping[str, str] | None = None,
        store: StateStore | None = None,
        grace_seconds: float = 5.0,
        host: str = "127.0.0.1",
        credential_key: bytes | None = None,
        stack: LocalStack | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.registry = registry
        #: The local stack several agents share (None: this agent alone owns its replicas).
        self.stack = stack
        self.leadership = leadership
        #: Makes each head's registration credential (``SKYFORM_REPLICA_CREDENTIAL``, its own
        #: id only, lb_agent.credentials), as the clouds give their replicas; never the token.
        self.credential_key = credential_key
        self.service = service
        self.log_dir = os.path.abspath(log_dir)
        self._extra_env = dict(env or {})
        self._work_dir_override = work_dir
        #: What new replicas run: the latest version's spec (``set_version``).
        self.spec = LocalSpec.of(service, C.INITIAL_VERSION, self._extra_env, work_dir)
        self.store = store
        self.grace_seconds = grace_seconds
        self.host = host
        self.replicas: dict[str, LocalReplica] = {}
        self._next = int((store.get_json(_NEXT_ID_KEY) if store else None) or 1)
        self.launched = 0
        self.removed = 0
        self.crashed = 0
        #: replica id -> {step, exit_code, log, tail}: every replica whose process exited.
        self.failures: dict[str, dict[str, Any]] = {}

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        os.makedirs(self.log_dir, exist_ok=True)
        if self.stack is not None:
            self._adopt(self.stack.read())

    def _fence(self) -> tuple[str, int]:
        lead = self.leadership
        return ("", 0) if lead is None else (lead.identity, lead.term)

    def _adopt(self, data: dict[str, Any]) -> None:
        """Take over the replicas a previous leader launched (they keep running)."""
        self._next = max(self._next, int(data.get("next_id", 1)))
        for rid, item in sorted(data.get("replicas", {}).items()):
            if rid in self.replicas:
                continue
            rep = LocalReplica(rid, int(item["number"]), int(item["port"]), bool(item["spot"]),
                               str(item["directory"]), str(item["log_path"]), self.spec,
                               adopted=[int(p) for p in item.get("pgids", [])])
            self.replicas[rid] = rep
            if self.registry.get(rid) is None:
                self.registry.register(rid, str(item["url"]), spot=rep.spot, index=rep.number,
                                       version=int(item.get("version", self.spec.version)),
                                       state=ReplicaState.STARTING)
            log.info("adopted replica %s (process groups %s)", rid, rep.adopted)

    async def close(self) -> None:
        """End every replica (its setup or run process group) and wait for them. Replicas
        in a shared local stack keep running for the next leader."""
        if self.stack is not None:
            for rep in self.replicas.values():
                for node in (rep, *rep.workers):
                    if node.task is not None:
                        node.task.cancel()
                    if node.log_file is not None:
                        node.log_file.close()
                        node.log_file = None
            self.replicas.clear()
            return
        await asyncio.gather(
            *(self._stop(rep) for rep in list(self.replicas.values())), return_exceptions=True
        )
        self.replicas.clear()

    @property
    def service_port(self) -> int:
        """The port the latest version's YAML serves on (replaced by a free one per replica)."""
        return self.spec.service_port

    def set_version(self, version: int, service: Mapping[str, Any]) -> None:
        """New replicas run ``service`` as ``version``; running ones keep what they run."""
        self.service = service
        self.spec = LocalSpec.of(service, version, self._extra_env, self._work_dir_override)

    # -- the Deployer protocol --------------------------------------------------------
    def replica_failure(self, replica_id: str) -> dict[str, Any] | None:
        return self.failures.get(replica_id)

    def _ports(self) -> set[int]:
        """The ports given to this deployer's replicas and their workers."""
        return {node.port for rep in self.replicas.values() for node in (rep, *rep.workers)}

    async def scale_up(self, spot: bool | None) -> str:
        port = free_port(self.host, self._ports())
        if self.stack is not None:
            holder, term = self._fence()
            with self.stack.change(holder, term) as data:
                self._adopt(data)
                number = self._next
                self._next += 1
                data["next_id"] = self._next
                rid = f"{PREFIX}{number}"
                directory = os.path.join(self.log_dir, rid)
                data["replicas"][rid] = {
                    "number": number, "port": port, "spot": bool(spot),
                    "url": f"http://{self.host}:{port}", "version": self.spec.version,
                    "directory": directory, "log_path": os.path.join(directory, "replica.log"),
                    "pgids": []}
                LocalStack.journal(data, "up", rid, holder, term)
        else:
            number = self._next
            self._next += 1
        if self.store is not None:
            self.store.put_json(_NEXT_ID_KEY, self._next)
        rid = f"{PREFIX}{number}"
        directory = os.path.join(self.log_dir, rid)
        os.makedirs(directory, exist_ok=True)
        spec = self.spec
        rep = LocalReplica(
            rid, number, port, bool(spot), directory, os.path.join(directory, "replica.log"),
            spec,
        )
        self.replicas[rid] = rep
        for rank in range(1, spec.num_nodes):
            node_dir = os.path.join(directory, f"node-{rank}")
            os.makedirs(node_dir, exist_ok=True)
            rep.workers.append(LocalReplica(
                f"{rid}/node-{rank}", number,
                free_port(self.host, self._ports()),
                rep.spot, node_dir,
                os.path.join(node_dir, "replica.log"), spec, rank=rank,
            ))
        self.registry.register(
            rid, f"http://{self.host}:{port}", spot=rep.spot, state=ReplicaState.PROVISIONING,
            index=number, version=spec.version,
        )
        rep.task = asyncio.create_task(self._launch(rep), name=f"skyform-launch-{rid}")
        for worker in rep.workers:
            worker.task = asyncio.create_task(self._launch(worker, head=rep),
                                              name=f"skyform-launch-{worker.replica_id}")
        self.launched += 1
        return rid

    def choose_removal(self, replica_id: str) -> str:
        return replica_id

    async def remove(self, replica_id: str) -> None:
        rep = self.replicas.pop(replica_id, None)
        if rep is not None:
            await self._stop(rep)
            self.removed += 1
        self._forget(replica_id, "down")
        self.registry.remove(replica_id)

    async def replace(self, replica_id: str, reason: str) -> None:
        """End what is left of a vanished replica; the autoscaler launches a new one."""
        rep = self.replicas.pop(replica_id, None)
        if rep is not None:
            log.info("replica %s vanished (%s): ending its processes", replica_id, reason)
            await self._stop(rep)
        self._forget(replica_id, "gone")

    def _forget(self, replica_id: str, op: str) -> None:
        """Drop a replica from the shared local stack (journaled)."""
        if self.stack is None:
            return
        holder, term = self._fence()
        with self.stack.change(holder, term) as data:
            if data["replicas"].pop(replica_id, None) is not None:
                LocalStack.journal(data, op, replica_id, holder, term)

    def _record_pgid(self, rep: LocalReplica, pgid: int) -> None:
        """Note a started process group in the shared local stack (the next leader ends it)."""
        if self.stack is None:
            return
        holder, term = self._fence()
        with self.stack.change(holder, term) as data:
            item = data["replicas"].get(rep.replica_id.split("/")[0])
            if item is not None:
                item["pgids"] = [*item.get("pgids", []), pgid]

    def owns(self, replica_id: str) -> bool:
        return replica_id.startswith(PREFIX)

    def pending(self) -> list[PlannedReplica]:
        return []  # replicas are registered (PROVISIONING) the moment they are launched

    def launch_time(self, replica_id: str) -> float | None:
        del replica_id
        return None  # one numbering, in launch order: seq orders them

    def poll(self) -> None:
        for rep in list(self.replicas.values()):
            if rep.removing:
                continue
            # The head's run ending, or a worker's ending in an error (SkyPilot's job fails),
            # fails the replica.
            node = rep if _ended(rep) else next(
                (w for w in rep.workers if _ended(w, errors_only=True)), None)
            code = None if node is None or node.run_proc is None else node.run_proc.returncode
            if node is None or code is None:
                continue
            if node.exit_code is None:
                self._exited(node, "run", code, head=None if node is rep else rep)

    def status(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "log_dir": self.log_dir,
            "running": len(self.replicas),
            "launched": self.launched,
            "removed": self.removed,
            "crashed": self.crashed,
            "failures": dict(self.failures),
            "ports": {rid: rep.port for rid, rep in self.replicas.items()},
            "pids": {
                rid: [p.pid for node in (rep, *rep.workers) for p in node.procs if p.pid > 0]
                + rep.adopted for rid, rep in self.replicas.items()
            },
        }

    def pids(self) -> list[int]:
        """Process-group ids of every replica process (every node's) still tracked."""
        return [p.pid for rep in self.replicas.values() for node in (rep, *rep.workers)
                for p in node.procs]

    # -- processes ----------------------------------------------------------------------
    def _env(self, rep: LocalReplica) -> dict[str, str]:
        env = dict(os.environ)
        env.update(rep.spec.env)
        env.update(
            {
                C.REPLICA_ID_ENV_VAR: str(rep.number),
                C.NUM_GPUS_PER_NODE_ENV_VAR: "0",
                "SKYPILOT_NODE_RANK": str(rep.rank),
                "SKYPILOT_NUM_NODES": str(rep.spec.num_nodes),
                "SKYPILOT_NODE_IPS": "\n".join([self.host] * rep.spec.num_nodes),
                "SKYPILOT_SERVE_PORT": str(rep.port),
                "PORT": str(rep.port),
            }
        )
        env.pop(credentials.CREDENTIAL_ENV, None)
        if self.credential_key is not None and rep.rank == 0:
            env[credentials.CREDENTIAL_ENV] = credentials.credential(
                self.credential_key, f"id:{rep.replica_id}")
        return env

    async def _spawn(self, rep: LocalReplica, script: str, name: str) -> asyncio.subprocess.Process:
        path = os.path.join(rep.directory, f"{name}.sh")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(substitute_port(script, rep.spec.service_port, rep.port) + "\n")
        if rep.log_file is None:
            rep.log_file = open(rep.log_path, "ab")  # noqa: SIM115 - closed in _stop
        rep.log_file.write(f"--- {name}: bash {shlex.quote(path)}\n".encode())
        rep.log_file.flush()
        proc = await asyncio.create_subprocess_exec(
            "bash", path,
            cwd=rep.spec.work_dir or rep.directory,
            env=self._env(rep),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=rep.log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        rep.procs.append(proc)
        self._record_pgid(rep, proc.pid)
        return proc

    async def _launch(self, rep: LocalReplica, head: LocalReplica | None = None) -> None:
        """Run setup then run on one node; ``head`` is set for a worker node, whose failure
        is its head's (the registered replica's)."""
        replica_id = (head or rep).replica_id
        try:
            if rep.spec.setup.strip():
                proc = await self._spawn(rep, rep.spec.setup, "setup")
                code = await proc.wait()
                if code != 0:
                    if not rep.removing:
                        self._exited(rep, "setup", code, head)
                    return
            else:
                rep.procs.append(_DONE)  # keeps run_proc at index 1
            if rep.removing:
                return
            proc = await self._spawn(rep, rep.spec.run, "run")
            rec = self.registry.get(replica_id)
            if head is None and rec is not None and rec.state is ReplicaState.PROVISIONING:
                self.registry.set_state(replica_id, ReplicaState.STARTING)
            # Watch the process: a crash shows at once, not at the next autoscaler tick. A
            # worker that ends without an error does not fail its replica (SkyPilot's rule).
            code = await proc.wait()
            if not rep.removing and rep.exit_code is None and (head is None or code != 0):
                self._exited(rep, "run", code, head)
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            log.error("replica %s: cannot start: %s", rep.replica_id, exc)
            self.registry.set_state(replica_id, ReplicaState.FAILED_PROVISION)

    def _exited(self, rep: LocalReplica, step: str, code: int,
                head: LocalReplica | None = None) -> None:
        """Record that node ``rep``'s ``step`` process exited with ``code``: its replica (the
        head, for a worker node) is FAILED, with what the user needs to fix it."""
        rep.exit_code = code
        if rep.log_file is not None:
            rep.log_file.flush()
        replica = head or rep
        tail = log_tail(rep.log_path)
        log.warning("replica %s: %s exited with code %s (log: %s)", rep.replica_id, step, code,
                    rep.log_path)
        self.failures[replica.replica_id] = {
            "step": step, "exit_code": code, "log": rep.log_path, "tail": tail,
            "node_rank": rep.rank,
        }
        rec = self.registry.get(replica.replica_id)
        if rec is not None and not rec.state.is_terminal:
            self.registry.set_state(replica.replica_id, ReplicaState.FAILED)
            self.crashed += 1

    async def _stop(self, rep: LocalReplica) -> None:
        if rep.workers:  # a multi-node replica ends as a whole group
            await asyncio.gather(*(self._stop(w) for w in rep.workers),
                                 return_exceptions=True)
        rep.removing = True
        if rep.task is not None and not rep.task.done():
            rep.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rep.task
        for proc in rep.procs:
            if proc is _DONE:
                continue
            await terminate_group(proc, self.grace_seconds)
        for pgid in rep.adopted:
            await terminate_pgid(pgid, self.grace_seconds)
        if rep.log_file is not None:
            rep.log_file.close()
            rep.log_file = None


def _ended(node: LocalReplica, *, errors_only: bool = False) -> bool:
    proc = node.run_proc
    if proc is None or proc.returncode is None:
        return False
    return proc.returncode != 0 or not errors_only


class _Done:
    """Placeholder for a setup step that did not run."""

    pid = -1
    returncode = 0


_DONE: Any = _Done()


async def terminate_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` s, and reap the leader."""
    pgid = proc.pid
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    # Children in the group may outlive the leader: always make sure the group is gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)


def _group_alive(pgid: int) -> bool:
    """True while a process of group ``pgid`` is running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pgid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # the leader exited; others of its group may run


async def terminate_pgid(pgid: int, grace: float) -> None:
    """SIGTERM a process group this process did not start, SIGKILL it after ``grace`` s."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while _group_alive(pgid) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _resolve_workdir(service: Mapping[str, Any], override: str | None) -> str | None:
    workdir = service.get("workdir")
    if not isinstance(workdir, str) or not workdir:
        return os.path.abspath(override) if override else None
    workdir = os.path.expanduser(workdir)
    if not os.path.isabs(workdir):
        source = service.get("source")
        base = override or (os.path.dirname(os.path.abspath(source)) if source else os.getcwd())
        workdir = os.path.join(base, workdir)
    return workdir
