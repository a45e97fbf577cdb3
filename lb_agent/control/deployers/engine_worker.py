"""The engine worker: runs one stack's operations for the agent, in a process of its own.

``python -m lb_agent.control.deployers.engine_worker [--nice N] [--cpus 1,2]`` lowers its
CPU priority and moves to the given CPUs first (the CLI and providers it starts inherit
both), then reads JSON requests from stdin, one a line, and answers each on stdout: any
number of ``{"output": line}`` (the engine's output lines, as they come), then one
``{"result": ...}`` or ``{"error": {"kind": "engine"|"conflict"|"worker", "text": ...}}``.
``text`` of an engine error is the Automation API's whole ``CommandError`` text.

Requests: ``open`` (``work_dir``, ``stack``, ``env``: the stack is opened through
``workspace.open_stack``, its program run inline here), ``set_config``, ``outputs``, ``up``,
``refresh``, ``preview`` (``kwargs`` for the Automation API call). The program's own prints
go to stderr: stdout carries only the protocol. The parent is
``lb_agent.control.deployers.engine_process``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from typing import IO, Any


def lower_priority(nice: int) -> None:
    """Run at niceness ``nice`` (never raise the priority: a higher one needs privileges)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def move_to(cpus: set[int]) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


class Worker:
    """One stack, one request at a time."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._write = threading.Lock()
        self._stack: Any = None

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, default=str)
        with self._write:
            self._out.write(line + "\n")
            self._out.flush()

    def handle(self, request: dict[str, Any]) -> Any:
        import pulumi.automation as auto

        op = request.get("op")
        if op == "open":
            from lb_agent.control.deployers.workspace import open_stack

            env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
            self._stack = open_stack(str(request["work_dir"]), str(request["stack"]), env=env)
            return None
        if self._stack is None:
            raise RuntimeError(f"{op}: no stack open")
        stack = self._stack
        if op == "set_config":
            stack.set_config(str(request["key"]),
                             auto.ConfigValue(value=str(request["value"]),
                                              secret=bool(request.get("secret"))),
                             path=bool(request.get("path")))
            return None
        if op == "outputs":
            return _outputs(stack.outputs())
        if op in ("up", "refresh", "preview"):
            kwargs = dict(request.get("kwargs") or {})
            result = getattr(stack, op)(**kwargs, on_output=self._output)
            out: dict[str, Any] = {"stdout": result.stdout, "stderr": result.stderr}
            if op == "up":
                out["outputs"] = _outputs(result.outputs)
            if op == "preview":
                out["change_summary"] = {str(getattr(k, "value", k)): int(v)
                                         for k, v in (result.change_summary or {}).items()}
            else:
                summary = result.summary
                out["summary"] = {"result": summary.result,
                                  "resource_changes": summary.resource_changes}
            return out
        raise ValueError(f"unknown request {op!r}")

    def _output(self, line: str) -> None:
        self.send({"output": line})

    def error(self, exc: BaseException) -> dict[str, str]:
        import pulumi.automation as auto

        if isinstance(exc, auto.ConcurrentUpdateError):
            return {"kind": "conflict", "text": str(exc)}
        if isinstance(exc, auto.CommandError):
            return {"kind": "engine", "text": str(exc)}
        traceback.print_exception(exc, file=sys.stderr)
        return {"kind": "worker", "text": f"{type(exc).__name__}: {exc}"}

    def serve(self, requests: IO[str]) -> None:
        for line in requests:
            if not line.strip():
                continue
            try:
                result = self.handle(json.loads(line))
            except Exception as exc:
                self.send({"error": self.error(exc)})
            else:
                self.send({"result": result})


def _outputs(outputs: Any) -> dict[str, dict[str, Any]]:
    return {str(k): {"value": v.value, "secret": bool(v.secret)}
            for k, v in (outputs or {}).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine_worker", description=__doc__)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--cpus", default="", help="comma-separated CPU numbers")
    args = parser.parse_args(argv)
    lower_priority(args.nice)
    move_to({int(c) for c in args.cpus.split(",") if c.strip()})
    # The protocol keeps the original stdout; anything else printed goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    Worker(protocol).serve(sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
