"""The engine's own process: where the agent's ``up``, ``refresh`` and ``preview`` run.

The agent never runs the program, the Pulumi SDK or a cloud SDK itself, so they neither fill
its memory nor take the proxy's CPU. ``EngineStack`` (a deployer ``StackLike``) speaks JSON
lines to one long-lived child, ``python -m lb_agent.control.deployers.engine_worker``, which
opens the stack through ``workspace.open_stack`` (the Automation API path ``skyform up``
takes), runs each operation, streams the engine's output lines back and answers with the
result or the engine's whole error text (``EngineError``).

The child runs at a lower CPU priority (``ENGINE_NICE``) and, when the agent may use more
than one CPU, on CPUs the agent does not use: while the child lives the agent pins itself to
one CPU and the child takes the others (``cpu_split``). The CLI and the providers the engine
starts inherit both. On a single CPU the two share it and the priority alone keeps the proxy
ahead. Nothing here imports ``pulumi``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

log = logging.getLogger(__name__)

#: The niceness the engine's processes run at (the agent keeps its own, usually 0).
ENGINE_NICE = 10
WORKER_MODULE = "lb_agent.control.deployers.engine_worker"


@dataclass(frozen=True)
class ConfigValue:
    """A stack config value to set (the fields of ``pulumi.automation.ConfigValue``)."""

    value: str
    secret: bool = False


@dataclass(frozen=True)
class OutputValue:
    """A stack output (the fields of ``pulumi.automation.OutputValue``)."""

    value: Any
    secret: bool = False


@dataclass(frozen=True)
class EngineResult:
    """What an operation returned: the CLI's output, the stack's outputs (``up``), the
    update summary (``up``, ``refresh``: ``result``, ``resource_changes``) and the preview's
    ``change_summary`` (operation name to count)."""

    stdout: str = ""
    stderr: str = ""
    outputs: dict[str, OutputValue] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    change_summary: dict[str, int] = field(default_factory=dict)


class EngineError(Exception):
    """The engine failed; ``str()`` is its whole error text (the CLI's stdout and stderr, as
    ``pulumi.automation.CommandError`` has it)."""


class EngineConflictError(EngineError):
    """Another update holds the stack's lock (``pulumi.automation.ConcurrentUpdateError``)."""


class EngineWorkerError(Exception):
    """The worker failed outside the engine: it died, or could not open the stack."""


def cpu_split(allowed: Collection[int]) -> tuple[frozenset[int], frozenset[int]]:
    """(the agent's CPUs, the engine's CPUs) out of the CPUs the agent may use: with more
    than one, the agent keeps the lowest and the engine gets the rest; with one, both share
    it."""
    cpus = frozenset(allowed)
    if len(cpus) < 2:
        return cpus, cpus
    agent = frozenset({min(cpus)})
    return agent, cpus - agent


def _process_affinity() -> frozenset[int] | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    return frozenset(os.sched_getaffinity(0))


def pin_process(cpus: Collection[int]) -> None:
    """Pin every thread of this process to ``cpus`` (Linux affinity is per thread; threads
    started later inherit the starting thread's)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        # A thread may just have ended, or be one we may not move.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(tid, cpus)


def _public(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    for name in ("on_event", "on_error"):
        if kwargs.get(name) is not None:
            raise TypeError(f"{name} does not cross the engine process boundary")
    return {k: v for k, v in kwargs.items() if k not in ("on_output", "on_event", "on_error")}


class EngineStack:
    """A stack of the project in ``work_dir``, run by the engine worker (started on first
    use, started again if it died). Blocking calls, one at a time: the deployer calls them
    from a thread."""

    def __init__(
        self, work_dir: str, stack_name: str, env: Mapping[str, str] | None = None, *,
        nice: int = ENGINE_NICE, isolate_cpus: bool = True,
        command: Sequence[str] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.stack_name = stack_name
        self._env = dict(env or {})
        self.nice = nice
        self.isolate_cpus = isolate_cpus
        #: How to start the worker (tests start a stand-in speaking the same protocol).
        self.command = list(command or [sys.executable, "-m", WORKER_MODULE])
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._agent_cpus_before: frozenset[int] | None = None
        #: The CPUs the worker runs on (None: as the agent, e.g. off Linux).
        self.engine_cpus: frozenset[int] | None = None

    # -- the StackLike surface ----------------------------------------------------------
    def set_config(self, key: str, value: ConfigValue, *, path: bool = False) -> None:
        self._call({"op": "set_config", "key": key, "value": value.value,
                    "secret": value.secret, "path": path})

    def outputs(self) -> dict[str, OutputValue]:
        return _outputs(self._call({"op": "outputs"}))

    def up(self, **kwargs: Any) -> EngineResult:
        return self._operation("up", kwargs)

    def refresh(self, **kwargs: Any) -> EngineResult:
        return self._operation("refresh", kwargs)

    def preview(self, **kwargs: Any) -> EngineResult:
        return self._operation("preview", kwargs)

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        """Stop the worker (it finishes nothing: an update it ran is cut short, as a
        stopped ``pulumi up`` is) and give the agent its CPUs back. A call waiting on the
        worker then fails with ``EngineWorkerError``."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        with self._lock:
            self._stop()

    # -- the worker -----------------------------------------------------------------------
    def _operation(self, op: str, kwargs: Mapping[str, Any]) -> EngineResult:
        on_output: Callable[[str], Any] | None = kwargs.get("on_output")
        raw = self._call({"op": op, "kwargs": _public(kwargs)}, on_output)
        return EngineResult(
            stdout=str(raw.get("stdout") or ""), stderr=str(raw.get("stderr") or ""),
            outputs=_outputs(raw.get("outputs")), summary=raw.get("summary"),
            change_summary={str(k): int(v) for k, v in (raw.get("change_summary") or {}).items()},
        )

    def _call(self, request: dict[str, Any],
              on_output: Callable[[str], Any] | None = None) -> Any:
        with self._lock:
            proc = self._ensure()
            return self._exchange(proc, request, on_output)

    def _ensure(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop()
        argv = [*self.command, "--nice", str(self.nice)]
        allowed = _process_affinity()
        if self.isolate_cpus and allowed is not None and len(allowed) > 1:
            agent, engine = cpu_split(allowed)
            self._agent_cpus_before = allowed
            pin_process(agent)
            self.engine_cpus = engine
            argv += ["--cpus", ",".join(str(c) for c in sorted(engine))]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, encoding="utf-8", bufsize=1, cwd=self.work_dir)
            self._proc = proc
            self._exchange(proc, {"op": "open", "work_dir": self.work_dir,
                                  "stack": self.stack_name, "env": self._env}, None)
        except BaseException:
            self._stop()
            raise
        log.info("engine worker %d for stack %s (nice %d, CPUs %s)", proc.pid,
                 self.stack_name, self.nice,
                 "shared" if self.engine_cpus is None else sorted(self.engine_cpus))
        return proc

    def _exchange(self, proc: subprocess.Popen[str], request: dict[str, Any],
                  on_output: Callable[[str], Any] | None) -> Any:
        stdin: IO[str] | None = proc.stdin
        stdout: IO[str] | None = proc.stdout
        assert stdin is not None and stdout is not None
        op = request["op"]
        try:
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
        except OSError as exc:
            self._stop()
            raise EngineWorkerError(f"engine worker gone before {op}: {exc}") from exc
        for line in stdout:
            message = json.loads(line)
            if "output" in message:
                if on_output is not None:
                    on_output(str(message["output"]))
                continue
            error = message.get("error")
            if error is not None:
                text = str(error.get("text") or "")
                kind = error.get("kind")
                if kind == "conflict":
                    raise EngineConflictError(text)
                if kind == "engine":
                    raise EngineError(text)
                raise EngineWorkerError(text)
            return message.get("result")
        code = proc.wait()
        self._stop()
        raise EngineWorkerError(f"engine worker exited with {code} during {op}")

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._agent_cpus_before is not None:
            pin_process(self._agent_cpus_before)
            self._agent_cpus_before = None
            self.engine_cpus = None


def _outputs(raw: Any) -> dict[str, OutputValue]:
    return {str(k): OutputValue(v.get("value"), bool(v.get("secret")))
            for k, v in (raw or {}).items()}
