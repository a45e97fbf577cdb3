"""Drain under load, in-process with the real proxy and real local replicas.

Two replicas serve slow requests through the agent's proxy. The policy shrinks to one
(like an update to ``replicas: 1``) while requests are in flight on the newest replica: it
must stop getting new requests at once, its in-flight requests must finish, and only then may
the deployer end it. No client request may fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from lb_agent.config import AgentConfig
from lb_agent.control.autoscaler import PolicyParams
from lb_agent.control.states import ReplicaState as S
from lb_agent.server import build_runtime, serve

RUN = f"""\
cat > server.py <<'PY'
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
RID = os.environ["SKYPILOT_SERVE_REPLICA_ID"].encode()
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        self.send_response(200)
        self.send_header("Content-Length", str(len(RID)))
        self.end_headers()
        self.wfile.write(RID)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
exec {sys.executable} server.py 8080
"""


async def until(cond: Any, timeout: float, what: str) -> None:
    """Poll ``cond`` until true; the deadline is generous (at least 60 s) for a busy machine."""
    deadline = time.monotonic() + max(timeout, 60)
    while not cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)


async def test_scale_down_under_load_loses_no_request(tmp_path: Path) -> None:
    config = AgentConfig.from_dict({
        "token": "x" * 16,
        "state_file": str(tmp_path / "agent.db"),
        "public": {"host": "127.0.0.1", "port": 0},
        "admin": {"host": "127.0.0.1", "port": 0},
        "service": {
            "service_spec": {"readiness_probe": {"path": "/"},
                             "replica_policy": {"min_replicas": 2}},
            "service_port": 8080, "load_balancing_policy": "least_load", "run": RUN,
        },
        "probe": {"interval_seconds": 0.2},
        "autoscaler": {"decision_interval_seconds": 0.3, "drain_timeout_seconds": 20},
        "deployer": {"kind": "local", "log_dir": str(tmp_path / "logs"), "grace_seconds": 1},
    })
    runtime = build_runtime(config)
    started = asyncio.Event()
    server = asyncio.create_task(serve(config, started=started, runtime=runtime))
    results: list[Any] = []
    stop = asyncio.Event()
    try:
        await asyncio.wait_for(started.wait(), 20)
        url = f"http://127.0.0.1:{runtime.bound_ports['public']}/slow"
        await until(lambda: len(runtime.routable) == 2, 30, "2 READY replicas")
        scaler: Any = runtime.scaler
        removals: list[tuple[str, int, float]] = []
        real_remove = scaler.deployer.remove

        async def remove(rid: str) -> None:
            removals.append((rid, runtime.in_flight(rid), time.monotonic()))
            await real_remove(rid)

        scaler.deployer.remove = remove

        async def client() -> None:
            async with httpx.AsyncClient(timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = await c.get(url)
                        results.append((r.status_code, r.text, time.monotonic()))
                    except httpx.HTTPError as exc:
                        results.append((type(exc).__name__, "", time.monotonic()))

        clients = [asyncio.create_task(client()) for _ in range(6)]
        await until(lambda: runtime.in_flight("local-2") >= 2, 10, "load on local-2")
        scaler.autoscaler.update_policy(PolicyParams.from_policy({"min_replicas": 1}))
        await until(
            lambda: (rec := runtime.registry.get("local-2")) is None
            or rec.state is S.SHUTTING_DOWN, 5, "scale-down decision")
        decided = time.monotonic()
        in_flight_at_decision = runtime.in_flight("local-2")
        assert all(t.replica_id != "local-2" for t in runtime.routable)
        await until(lambda: bool(removals), 20, "removal")
        await until(lambda: runtime.registry.get("local-2") is None, 10, "record removed")
        answered = len(results)
        await until(lambda: len(results) >= answered + 10, 30, "answers after the removal")
        stop.set()
        await asyncio.gather(*clients)
    finally:
        stop.set()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        sc = getattr(runtime, "scaler", None)
        if sc is not None and sc.deployer is not None:
            await sc.deployer.close()
        runtime.close()
    assert in_flight_at_decision >= 1, "the test must catch requests in flight"
    (rid, in_flight_at_remove, _removed_at) = removals[0]
    assert (rid, in_flight_at_remove) == ("local-2", 0)
    # Requests that were running on local-2 when it was chosen completed (with a 200, below)
    # after the decision, and none was in flight when it was removed (above).
    finished_on_2 = [r for r in results if r[1] == "2" and r[2] > decided]
    assert len(finished_on_2) >= 1
    failed = [r for r in results if r[0] != 200]
    assert failed == [] and len(results) >= 10
    assert runtime.autoscaler_status is not None
    assert runtime.autoscaler_status["drains"]["clean"] >= 1
