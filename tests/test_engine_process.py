"""The engine in its own process (lb_agent.control.deployers.engine_process/engine_worker).

Without the engine: the CPU split, the worker's priority, CPUs and protocol errors, and the
parent's side of the protocol against a stand-in worker (lines streamed in order, the engine's
errors as ``EngineError``/``EngineConflictError`` with their whole text, a dead worker
reported and started again, the agent pinned while the worker lives), and the deployer's
handling of those errors. With the engine (marker ``engine``): an agent-side deployer in a
fresh interpreter runs a real targeted ``up`` through the worker and never loads ``pulumi``,
``components`` or a cloud SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lb_agent.control.deployers.engine_process import (
    ConfigValue,
    EngineConflictError,
    EngineError,
    EngineStack,
    EngineWorkerError,
    OutputValue,
    cpu_split,
)
from lb_agent.control.deployers.pulumi import PulumiDeployer
from lb_agent.control.registry import Registry
from lb_agent.control.store import StateStore

ROOT = Path(__file__).resolve().parent.parent
#: The example stack (stacks/): the Kubernetes cloud, rendered to a directory.
STACK = "kubernetes-example"

#: A stand-in worker: the same protocol, scripted answers. It records every request in the
#: file named by $FAKE_LOG and dies (exit 3) on set_config.
FAKE_WORKER = textwrap.dedent("""\
    import json, os, sys
    log = open(os.environ["FAKE_LOG"], "a")
    def send(m):
        sys.stdout.write(json.dumps(m) + "\\n"); sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        log.write(json.dumps({"pid": os.getpid(), **req}) + "\\n"); log.flush()
        op = req["op"]
        if op == "open":
            send({"result": None})
        elif op == "up":
            for text in ("Updating (dev):", "", "Resources:", "    ~ 1 updated"):
                send({"output": text})
            send({"result": {"stdout": "out", "stderr": "", "outputs": {
                "replicas": {"value": [{"index": 0}], "secret": False},
                "token": {"value": "s3cret", "secret": True}},
                "summary": {"result": "succeeded", "resource_changes": {"update": 1}}}})
        elif op == "refresh":
            send({"error": {"kind": "conflict",
                            "text": "code: 255\\n stderr: error: [409] Conflict"}})
        elif op == "preview":
            send({"error": {"kind": "engine", "text": "code: 255\\n stdout: line one\\n"
                            "error: quota exceeded for n2 in us-east1\\n"}})
        elif op == "outputs":
            send({"error": {"kind": "worker", "text": "RuntimeError: outputs: no stack open"}})
        else:
            sys.exit(3)
    """)


def test_cpu_split_keeps_one_cpu_for_the_agent() -> None:
    assert cpu_split({0, 1}) == ({0}, {1})
    assert cpu_split({2, 5, 7, 3}) == ({2}, {3, 5, 7})
    # One CPU: shared (the engine's priority is all that keeps the proxy ahead).
    assert cpu_split({4}) == ({4}, {4})


def _fake_stack(tmp_path: Path, **kw: Any) -> tuple[EngineStack, Path]:
    log = tmp_path / "requests.jsonl"
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    stack = EngineStack(str(tmp_path), "dev", {"PULUMI_CONFIG_PASSPHRASE": "pw"},
                        command=[sys.executable, str(script)], **kw)
    return stack, log


def _requests(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_engine_stack_streams_lines_and_keeps_the_engines_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "requests.jsonl"))
    before = os.sched_getaffinity(0)
    stack, log = _fake_stack(tmp_path)
    try:
        lines: list[str] = []
        result = stack.up(target=["urn:a"], target_dependents=True, on_output=lines.append)
        assert lines == ["Updating (dev):", "", "Resources:", "    ~ 1 updated"]
        assert result.outputs == {"replicas": OutputValue([{"index": 0}], False),
                                  "token": OutputValue("s3cret", True)}
        assert result.summary == {"result": "succeeded", "resource_changes": {"update": 1}}
        first = stack.pid
        if len(before) > 1:
            # The agent keeps one CPU while the worker lives; the worker gets the others.
            agent, engine = cpu_split(before)
            assert os.sched_getaffinity(0) == agent
            assert stack.engine_cpus == engine
        with pytest.raises(EngineConflictError, match=r"\[409\] Conflict"):
            stack.refresh()
        with pytest.raises(EngineError) as failed:
            stack.preview()
        # The whole text, as the Automation API's CommandError has it.
        assert str(failed.value) == ("code: 255\n stdout: line one\n"
                                     "error: quota exceeded for n2 in us-east1\n")
        assert not isinstance(failed.value, EngineConflictError)
        with pytest.raises(EngineWorkerError, match="no stack open"):
            stack.outputs()
        with pytest.raises(EngineWorkerError, match="exited with 3 during set_config"):
            stack.set_config("skyform:fleet", ConfigValue("{}"))
        assert stack.pid is None
        with pytest.raises(EngineConflictError):
            stack.refresh()  # a new worker, opened again
        assert stack.pid is not None and stack.pid != first
    finally:
        stack.close()
    assert os.sched_getaffinity(0) == before
    seen = _requests(log)
    opens = [r for r in seen if r["op"] == "open"]
    # The stack's secrets reach the worker over its pipe (not its argv or environment).
    assert [(r["work_dir"], r["stack"], r["env"]) for r in opens] == [
        (str(tmp_path), "dev", {"PULUMI_CONFIG_PASSPHRASE": "pw"})] * 2
    ups = [r for r in seen if r["op"] == "up"]
    assert ups[0]["kwargs"] == {"target": ["urn:a"], "target_dependents": True}


def test_on_event_cannot_cross_the_boundary(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "requests.jsonl"))
    stack, _ = _fake_stack(tmp_path)
    with pytest.raises(TypeError, match="on_event"):
        stack.up(on_event=print)
    assert stack.pid is None  # refused before any worker started


def test_worker_runs_niced_on_its_cpus_and_answers_errors() -> None:
    allowed = os.sched_getaffinity(0)
    engine = cpu_split(allowed)[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lb_agent.control.deployers.engine_worker", "--nice", "7",
         "--cpus", ",".join(map(str, sorted(engine)))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps({"op": "outputs"}) + "\n")
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline())
        assert answer == {"error": {"kind": "worker",
                                    "text": "RuntimeError: outputs: no stack open"}}
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == max(
            7, os.getpriority(os.PRIO_PROCESS, 0))
        assert os.sched_getaffinity(proc.pid) == engine
        proc.stdin.write(json.dumps({"op": "open", "work_dir": str(ROOT / "nowhere"),
                                     "stack": "dev", "env": {}}) + "\n")
        proc.stdin.flush()
        opened = json.loads(proc.stdout.readline())
        assert opened["error"]["kind"] == "worker"
        assert "nowhere" in opened["error"]["text"]
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0  # stdin closed: the worker ends


class _Double:
    """A stack whose ups fail as the engine worker reports failures, then succeed."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.dep: PulumiDeployer | None = None
        #: The deployer's last_error as each up began (what the previous one left).
        self.errors: list[str | None] = []

    def set_config(self, key: str, value: ConfigValue, *, path: bool = False) -> None:
        assert isinstance(value, ConfigValue)

    def outputs(self) -> dict[str, Any]:
        return {"replicaGroupUrns": OutputValue(["urn:x::svc-ondemand"], False)}

    def refresh(self, **kwargs: Any) -> None:
        return None

    def up(self, **kwargs: Any) -> Any:
        assert self.dep is not None
        self.errors.append(self.dep.last_error)
        if self.failures:
            raise self.failures.pop(0)
        return None


async def test_deployer_counts_worker_reported_conflicts_and_failures() -> None:
    text = ("code: 255\n stdout: \n stderr: error: an unhandled error occurred\n"
            "error: quota exceeded for n2 in us-east1\n")
    double = _Double([EngineConflictError("error: [409] Conflict"), EngineError(text)])
    dep = PulumiDeployer(Registry(StateStore(":memory:")), stack_factory=lambda: double,
                         initial_counts={"spot": 0, "ondemand": 0}, spot_default=False,
                         retry_initial_seconds=0.01, rng=random.Random(1))
    double.dep = dep
    await dep.start()
    try:
        await dep.scale_up(False)
        await asyncio.wait_for(dep.applied_event.wait(), 30)
        assert (dep.conflicts, dep.failures, dep.updates_ok) == (1, 1, 1)
        assert double.errors == [None, "another update is in progress: [409] Conflict",
                                 "pulumi up failed: quota exceeded for n2 in us-east1"]
        assert dep.last_error is None
    finally:
        await dep.close()


#: A fresh interpreter in the agent's place: a deployer runs a real targeted ``up`` through
#: the worker, then reports which modules it loaded and how the worker ran.
AGENT_SIDE = textwrap.dedent("""\
    import asyncio, json, os, sys
    from lb_agent.control.deployers.pulumi import PulumiDeployer, local_stack_factory
    from lb_agent.control.registry import Registry
    from lb_agent.control.store import StateStore

    work_dir, stack_name, env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    before = sorted(os.sched_getaffinity(0))

    async def main():
        dep = PulumiDeployer(Registry(StateStore(":memory:")),
                             stack_factory=local_stack_factory(work_dir, stack_name, env),
                             stack_name=stack_name, retry_initial_seconds=1.0)
        await dep.start()
        applied = dep.applied_event
        await dep.scale_up(False)
        while not applied.is_set() and dep.failures == 0:  # the up, or its first failure
            await asyncio.sleep(0.1)
        stack = dep._stack
        seen = {"pid": stack.pid, "nice": os.getpriority(os.PRIO_PROCESS, stack.pid),
                "worker_cpus": sorted(os.sched_getaffinity(stack.pid)),
                "agent_cpus": sorted(os.sched_getaffinity(0)),
                "desired": dep.desired, "updates": dep.updates_ok,
                "last_error": dep.last_error}
        await dep.close()
        seen["agent_cpus_after"] = sorted(os.sched_getaffinity(0))
        return seen

    seen = asyncio.run(main())
    roots = {"components", "pulumi", "pulumi_aws", "pulumi_gcp", "pulumi_kubernetes", "grpc"}
    seen["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in roots)
    seen["before"] = before
    print(json.dumps(seen))
    """)


def _replicas(rendered: Path) -> list[int]:
    from engine_support import objects_by_kind, rendered_objects

    sets = objects_by_kind(rendered_objects(rendered), "StatefulSet")
    return [s["spec"]["replicas"] for s in sets.values()]


@pytest.mark.engine
def test_agent_runs_a_real_up_without_loading_the_engine(tmp_path: Path) -> None:
    from engine_support import AGENT_TOKEN, EngineProject

    project = EngineProject.create(tmp_path)
    project.cli("stack", "init", STACK)
    project.cli("config", "set", "skyform:service", "examples/hello.yaml")
    project.cli("config", "set", "--secret", "skyform:agentToken", AGENT_TOKEN)
    project.cli("config", "set", "skyform:renderYamlToDirectory", "rendered")
    assert project.stack(STACK).up().summary.result == "succeeded"  # the user's first up
    before = _replicas(project.dir / "rendered")
    done = subprocess.run([sys.executable, "-c", AGENT_SIDE, str(project.dir), STACK,
                           json.dumps(project.env)], cwd=ROOT, capture_output=True, text=True,
                          timeout=280, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["last_error"] is None and seen["updates"] == 1
    assert seen["desired"] == {"spot": 0, "ondemand": before[0] + 1}
    assert _replicas(project.dir / "rendered") == [before[0] + 1]
    # The agent's interpreter never loaded the SDK, the program or a provider's SDK.
    assert seen["loaded"] == []
    assert seen["nice"] >= 10
    if len(seen["before"]) > 1:
        agent, engine = cpu_split(seen["before"])
        assert seen["agent_cpus"] == sorted(agent)
        assert seen["worker_cpus"] == sorted(engine)
    else:
        assert seen["worker_cpus"] == seen["agent_cpus"] == seen["before"]
    assert seen["agent_cpus_after"] == seen["before"]
