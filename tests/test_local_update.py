"""End to end: service updates on `skyform local` (SIGHUP) under continuous load.

examples/hello.yaml is v1; each test writes a v2 over the same file and sends SIGHUP:
* rolling: answers move from v1 to v2, every v1 replica is drained and its process is gone;
* blue-green: no v2 answer while fewer than v2's min_replicas v2 replicas are READY (the
  second one is held back by the test), only v2 answers after the switch;
* a v2 whose run exits at once: v1 keeps serving, the rollout is reported failed with why;
* a service-section-only change: the same replicas (same processes) take version 2.
Zero failed client requests in every one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from agent_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
SKYFORM = [sys.executable, "-c", "from components.cli import main; main()"]
HELLO = (ROOT / "examples" / "hello.yaml").read_text()


def v2_of(hello: str, *, answer: str = "Hello v2 from replica", run: str | None = None,
          policy: tuple[str, str] | None = None) -> str:
    """hello.yaml changed: another answer, another run, or (policy) a service-only edit."""
    text = hello.replace('"Hello from replica', f'"{answer}')
    if run is not None:
        text = text.replace("run: python3 -m http.server 8080", f"run: {run}")
    if policy is not None:
        assert policy[0] in text
        text = text.replace(policy[0], policy[1])
    return text


class Local:
    """`skyform local FILE --json` as a subprocess; its status events and the load on it."""

    def __init__(self, tmp: Path, text: str, mode: str = "rolling") -> None:
        self.file = tmp / "hello.yaml"
        self.file.write_text(text)
        self.port = free_port()
        self.log_dir = tmp / "logs"
        self.proc = subprocess.Popen(
            [*SKYFORM, "local", str(self.file), "--port", str(self.port), "--json",
             "--decision-interval", "1", "--qps-window", "4", "--probe-interval", "0.3",
             "--drain-timeout", "10", "--status-interval", "0.2", "--update-mode", mode,
             "--log-dir", str(self.log_dir)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: list[tuple[float, dict[str, Any]]] = []
        #: (start, end, status or error name, body)
        self.answers: list[tuple[float, float, int | str, str]] = []
        self._stop = threading.Event()
        self._clients: list[threading.Thread] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append((time.monotonic(), json.loads(line)))
            except ValueError:
                continue

    def last(self) -> dict[str, Any]:
        for _, ev in reversed(self.events):
            if ev.get("event") == "status":
                return ev
        return {}

    def replicas(self) -> list[dict[str, Any]]:
        return list(self.last().get("replicas", []))

    def wait(self, cond: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""  # type: ignore[union-attr]
                raise AssertionError(f"timed out waiting for {what}; last={self.last()} {err}")
            time.sleep(0.05)

    def load(self, clients: int = 1, pause: float = 0.1) -> None:
        url = f"http://127.0.0.1:{self.port}/"

        def client() -> None:
            with httpx.Client(timeout=30) as c:
                while not self._stop.is_set():
                    t0 = time.monotonic()
                    try:
                        r = c.get(url)
                        self.answers.append((t0, time.monotonic(), r.status_code, r.text))
                    except httpx.HTTPError as exc:
                        self.answers.append((t0, time.monotonic(), type(exc).__name__, ""))
                    time.sleep(pause)

        for _ in range(clients):
            t = threading.Thread(target=client, daemon=True)
            t.start()
            self._clients.append(t)

    def update(self, text: str) -> float:
        self.file.write_text(text)
        t = time.monotonic()
        self.proc.send_signal(signal.SIGHUP)
        return t

    def update_event(self) -> dict[str, Any]:
        self.wait(lambda: any(ev.get("event", "").startswith("update") for _, ev in self.events),
                  60, "the update event")
        return next(ev for _, ev in self.events if ev.get("event", "").startswith("update"))

    def stop(self) -> int:
        self._stop.set()
        for t in self._clients:
            t.join(timeout=30)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def failed(self) -> list[tuple[float, float, int | str, str]]:
        return [a for a in self.answers if a[2] != 200]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def v1_ready(local: Local) -> bool:
    return any(r["state"] == "READY" for r in local.replicas())


def test_rolling_update_moves_answers_to_v2_and_retires_v1(tmp_path: Path) -> None:
    local = Local(tmp_path, HELLO)
    try:
        local.wait(lambda: v1_ready(local), 90, "v1 READY")
        local.load()
        local.wait(lambda: len(local.answers) > 10, 60, "v1 answers")
        v1_ids = {r["id"] for r in local.replicas()}
        v1_pids = {p for rid, ps in local.last()["pids"].items() if rid in v1_ids for p in ps}
        assert v1_pids and all(r["version"] == 1 for r in local.replicas())
        local.update(v2_of(HELLO))
        assert local.update_event() == {"event": "update", "file": str(local.file),
                                        "changed": True, "version": 2, "mode": "rolling",
                                        "reused": []}
        local.wait(lambda: (local.last().get("rollout") or {}).get("status") == "done", 60,
                   "the rollout done")
        after = local.replicas()
        assert after and all(r["version"] == 2 for r in after)
        assert not v1_ids & {r["id"] for r in after}, "every v1 replica is gone"
        done_at = time.monotonic()
        local.wait(lambda: sum(1 for a in local.answers if a[0] > done_at) >= 5, 60,
                   "answers after the rollout")
    finally:
        code = local.stop()
    assert code == 0
    assert local.failed() == [], f"{len(local.failed())} failed of {len(local.answers)}"
    bodies = [a[3] for a in local.answers]
    assert bodies[0].startswith("Hello from replica")
    assert any(b.startswith("Hello v2") for b in bodies)
    late = [a[3] for a in local.answers if a[0] > done_at]
    assert late and all(b.startswith("Hello v2") for b in late)
    # Drained before removal, then the processes ended.
    assert any(set(ev.get("draining") or []) & v1_ids for _, ev in local.events)
    assert not [p for p in v1_pids if alive(p)]
    statuses = [ev for _, ev in local.events if ev.get("event") == "status"]
    assert any(ev.get("rollout") and ev["rollout"]["status"] == "in_progress"
               and ev["rollout"]["old_live"] >= 1 for ev in statuses)


def test_blue_green_switches_only_when_min_replicas_of_v2_are_ready(tmp_path: Path) -> None:
    # v2 needs 2 READY replicas; one of its two (the odd replica id) starts serving only once
    # the test creates the gate file, so the test decides when the second one is READY.
    gate = tmp_path / "gate"
    v2 = v2_of(HELLO, run=f"if [ $(( SKYPILOT_SERVE_REPLICA_ID % 2 )) = 1 ]; then "
                          f"while [ ! -e {gate} ]; do sleep 0.1; done; fi; "
                          "exec python3 -m http.server 8080",
               policy=("min_replicas: 1", "min_replicas: 2"))
    local = Local(tmp_path, HELLO, mode="blue_green")

    def v2_ready() -> int:
        return sum(1 for r in local.replicas() if r["version"] == 2 and r["state"] == "READY")

    try:
        local.wait(lambda: v1_ready(local), 90, "v1 READY")
        local.load()
        local.wait(lambda: len(local.answers) > 10, 60, "v1 answers")
        local.update(v2)
        assert local.update_event()["mode"] == "blue_green"
        local.wait(lambda: v2_ready() == 1, 120, "one v2 replica READY")
        # With one v2 replica READY (of min_replicas 2) traffic stays on v1.
        seen = len(local.answers)
        local.wait(lambda: len(local.answers) >= seen + 10, 60,
                   "answers while one v2 replica is READY")
        held = local.answers[seen:]
        assert v2_ready() == 1
        gate.touch()
        local.wait(lambda: (local.last().get("rollout") or {}).get("status") == "done", 120,
                   "the rollout done")
        local.wait(lambda: any(a[3].startswith("Hello v2") for a in local.answers), 60,
                   "a v2 answer")
        first_v2_end = min(a[1] for a in local.answers if a[3].startswith("Hello v2"))
        local.wait(lambda: sum(1 for a in local.answers if a[0] > first_v2_end) >= 5, 60,
                   "answers after the switch")
    finally:
        code = local.stop()
    assert code == 0
    assert local.failed() == [], f"{len(local.failed())} failed of {len(local.answers)}"
    assert held and all(a[3].startswith("Hello from replica") for a in held), \
        [a[3] for a in held if not a[3].startswith("Hello from replica")][:3]
    # After the switch only v2 answers.
    after = [a for a in local.answers if a[0] > first_v2_end]
    assert after and all(a[3].startswith("Hello v2") for a in after), \
        [a[3] for a in after if not a[3].startswith("Hello v2")][:3]


def test_failing_v2_stops_the_rollout_and_v1_keeps_serving(tmp_path: Path) -> None:
    local = Local(tmp_path, HELLO)
    try:
        local.wait(lambda: v1_ready(local), 90, "v1 READY")
        local.load()
        local.wait(lambda: len(local.answers) > 10, 60, "v1 answers")
        v1_ids = {r["id"] for r in local.replicas() if r["version"] == 1}
        local.update(v2_of(HELLO, run="exit 1"))
        local.wait(lambda: (local.last().get("rollout") or {}).get("status") == "failed", 120,
                   "the rollout failed")
        rollout = local.last()["rollout"]
        # The failed rollout stays put: statuses and answers keep coming, all from v1.
        seen_events, seen_answers = len(local.events), len(local.answers)
        local.wait(lambda: len(local.events) >= seen_events + 5
                   and len(local.answers) >= seen_answers + 10, 60,
                   "statuses and answers after the failure")
        last = local.last()
    finally:
        code = local.stop()
    assert code == 0
    assert "run exited with code 1" in rollout["reason"]
    assert "old version keeps serving" in rollout["reason"]
    assert (rollout["from"], rollout["to"]) == (1, 2)
    assert local.failed() == [], f"{len(local.failed())} failed of {len(local.answers)}"
    assert local.answers and all(a[3].startswith("Hello from replica") for a in local.answers)
    still = {r["id"] for r in last["replicas"] if r["version"] == 1 and r["state"] == "READY"}
    assert still == v1_ids
    assert last["active_versions"] == [1]


def test_service_only_change_reuses_the_running_replicas(tmp_path: Path) -> None:
    v2 = v2_of(HELLO, answer="Hello from replica",
               policy=("downscale_delay_seconds: 60", "downscale_delay_seconds: 80"))
    assert v2 != HELLO
    local = Local(tmp_path, HELLO)
    try:
        local.wait(lambda: v1_ready(local), 90, "v1 READY")
        local.load(clients=1, pause=0.3)
        local.wait(lambda: len(local.answers) > 5, 60, "v1 answers")
        before = {r["id"]: r for r in local.replicas()}
        pids_before = dict(local.last()["pids"])
        local.update(v2)
        event = local.update_event()
        local.wait(lambda: all(r["version"] == 2 for r in local.replicas()), 60, "relabelled")
        local.wait(lambda: (local.last().get("rollout") or {}).get("status") == "done", 60,
                   "the rollout done")
        after = {r["id"]: r for r in local.replicas()}
        pids_after = dict(local.last()["pids"])
    finally:
        code = local.stop()
    assert code == 0
    assert event["changed"] and event["version"] == 2 and event["reused"] == sorted(before)
    assert set(after) == set(before), "no replica was launched or removed"
    assert all(after[rid]["url"] == before[rid]["url"] for rid in before)
    assert {rid: pids_after[rid] for rid in before} == {rid: pids_before[rid] for rid in before}
    assert local.failed() == []


def test_unchanged_and_invalid_files_change_nothing(tmp_path: Path) -> None:
    local = Local(tmp_path, HELLO)
    try:
        local.wait(lambda: v1_ready(local), 90, "v1 READY")
        local.update(HELLO)
        first = local.update_event()
        local.update("service:\n  replicas: -1\nresources: {ports: 8080}\nrun: x\n")
        local.wait(lambda: sum(1 for _, ev in local.events
                               if ev.get("event", "").startswith("update")) >= 2, 60,
                   "the second update event")
        second = [ev for _, ev in local.events if ev.get("event", "").startswith("update")][1]
        last = local.last()
    finally:
        code = local.stop()
    assert code == 0
    assert first == {"event": "update", "file": str(local.file), "changed": False,
                     "version": 1, "mode": "rolling"}
    assert second["event"] == "update_rejected" and "replicas" in second["error"]
    assert last["version"] == 1 and all(r["version"] == 1 for r in last["replicas"])
    assert os.path.exists(local.file)
