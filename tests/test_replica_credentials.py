"""Replicas hold a credential of their own, never the admin token (lb_agent/credentials.py,
lb_agent/admin.py): it registers, heartbeats and deregisters its own id only, from its own
address only; drain, /status and /metrics need the admin token. An API key admission checked
is not forwarded to replicas unless ``admission.forward_api_key`` says so."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_helpers import (
    TOKEN,
    Replica,
    agent_config,
    auth,
    free_port,
    in_flight_back_to_zero,  # noqa: F401  (autouse fixture)
    running_agent,
)

from lb_agent import credentials
from lb_agent.control.states import ReplicaState

ROOT = Path(__file__).resolve().parents[1]


def _as(cred: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {cred}"}


def test_credentials_are_per_scope_and_do_not_reveal_the_token() -> None:
    key = credentials.registration_key(TOKEN)
    own = credentials.replica_credential(TOKEN, "spot-0")
    assert credentials.covers(key, own, "spot-0")
    assert not credentials.covers(key, own, "spot-1")
    assert not credentials.covers(key, own, "ondemand-0")
    group = credentials.group_credential(TOKEN, "spot")
    assert credentials.covers(key, group, "spot-0") and credentials.covers(key, group, "spot-7")
    assert not credentials.covers(key, group, "spotty-0")
    # A kind's credential covers its later generations (a rollout changes no credential).
    assert credentials.covers(key, group, "spot-g2-3")
    assert not credentials.covers(key, group, "ondemand-g2-3")
    assert not credentials.covers(key, group, "ondemand-0")
    assert not credentials.covers(key, TOKEN, "spot-0")  # the admin token is not one
    assert TOKEN not in own and credentials.replica_credential("another-token", "spot-0") != own


async def test_a_replica_credential_acts_on_its_own_id_only(tmp_path: Any) -> None:
    reps = [await Replica(n).start() for n in "ab"]
    try:
        async with (
            running_agent(agent_config(tmp_path, [])) as agent,
            httpx.AsyncClient(base_url=agent.admin_url) as admin,
        ):
            rt = agent.runtime
            a_cred = credentials.replica_credential(TOKEN, "g-0")
            b_cred = credentials.replica_credential(TOKEN, "g-1")
            for rid, rep, cred in (("g-0", reps[0], a_cred), ("g-1", reps[1], b_cred)):
                r = await admin.post("/replicas", headers=_as(cred), json={
                    "replica_id": rid, "url": rep.url, "group": "g", "index": int(rid[-1])})
                assert r.status_code == 200, r.text
            await agent.wait_ready(2)
            before = {r.replica_id: r.to_json() for r in rt.registry.list()}
            # Replica g-0 (its own credential) against g-1: nothing of it changes.
            r = await admin.post("/replicas", headers=_as(a_cred), json={
                "replica_id": "g-1", "url": reps[0].url})
            assert r.status_code == 401, r.text
            r = await admin.delete("/replicas/g-1", headers=_as(a_cred))
            assert r.status_code == 401, r.text
            for path in ("/replicas/g-1/drain", "/replicas/g-0/drain"):
                r = await admin.post(path, headers=_as(a_cred))
                assert r.status_code == 401, r.text
            for path in ("/status", "/metrics"):
                assert (await admin.get(path, headers=_as(a_cred))).status_code == 401
            # A new id (a rogue registration) needs a credential for that id.
            r = await admin.post("/replicas", headers=_as(a_cred), json={
                "replica_id": "rogue-0", "url": reps[0].url})
            assert r.status_code == 401, r.text
            # Its own id moved to another host: refused (not its address).
            r = await admin.post("/replicas", headers=_as(a_cred), json={
                "replica_id": "g-0", "url": "http://10.9.9.9:8080"})
            assert r.status_code == 403 and "own address" in r.json()["detail"], r.text
            after = {r.replica_id: r.to_json() for r in rt.registry.list()}
            assert after.keys() == before.keys() == {"g-0", "g-1"}
            assert not any(r.draining for r in rt.registry.list())
            assert len(rt.routable) == 2
            # Heartbeat and deregister of its own id work.
            r = await admin.post("/replicas", headers=_as(a_cred), json={
                "replica_id": "g-0", "url": reps[0].url, "group": "g", "index": 0})
            assert r.status_code == 200 and r.json()["state"] == "READY", r.text
            r = await admin.delete("/replicas/g-0", headers=_as(a_cred))
            assert r.status_code == 200, r.text
            assert [x.replica_id for x in rt.registry.list()] == ["g-1"]
            # The operator's admin token still does everything.
            r = await admin.post("/replicas/g-1/drain", headers=auth())
            assert r.status_code == 200, r.text
    finally:
        for rep in reps:
            await rep.stop()


async def test_a_group_credential_cannot_take_over_a_routable_sibling(tmp_path: Any) -> None:
    rep = await Replica("a").start()
    try:
        async with (
            running_agent(agent_config(tmp_path, [], probe={"interval_seconds": 60})) as agent,
            httpx.AsyncClient(base_url=agent.admin_url) as admin,
        ):
            rt = agent.runtime
            rt.registry.register("web-1", "http://10.0.0.7:8080", state=ReplicaState.READY)
            assert [t.replica_id for t in rt.routable] == ["web-1"]
            group = credentials.group_credential(TOKEN, "web")
            # Another pod of the group (its own address, the group's credential) cannot
            # take the routable id over, nor deregister it from elsewhere.
            r = await admin.post("/replicas", headers=_as(group), json={
                "replica_id": "web-1", "url": rep.url})
            assert r.status_code == 409, r.text
            r = await admin.delete("/replicas/web-1", headers=_as(group))
            assert r.status_code == 403, r.text  # not from 10.0.0.7
            assert rt.registry.get("web-1") is not None
            assert rt.registry.get("web-1").url == "http://10.0.0.7:8080"  # type: ignore[union-attr]
    finally:
        await rep.stop()


@pytest.mark.parametrize("forward", [False, True])
async def test_an_api_key_admission_checked_stays_at_the_agent(tmp_path: Any,
                                                               forward: bool) -> None:
    rep = await Replica("a").start()
    key = "client-api-key-0123456789"
    try:
        config = agent_config(tmp_path, [rep.url], admission={
            "api_keys": [key], "forward_api_key": forward})
        async with (
            running_agent(config) as agent,
            httpx.AsyncClient(base_url=agent.url) as client,
        ):
            await agent.wait_ready(1)
            r = await client.get("/x", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            seen = r.json()["headers"].get("authorization")
            assert seen == (f"Bearer {key}" if forward else None)
    finally:
        await rep.stop()


LOCAL_SERVICE = """\
service:
  readiness_probe: /
  replicas: 2
resources:
  ports: 8080
run: |
  printf '%s' "$SKYFORM_REPLICA_CREDENTIAL" > "CREDS/credential-$SKYPILOT_SERVE_REPLICA_ID"
  exec python3 -m http.server 8080 --bind 127.0.0.1
"""


async def test_skyform_local_replica_cannot_steer_another(tmp_path: Path) -> None:
    """End to end: under `skyform local`, replica local-1's own credential (from its
    environment) cannot register, drain or deregister local-2, nor add a rogue replica."""
    (tmp_path / "creds").mkdir()
    (tmp_path / "svc.yaml").write_text(LOCAL_SERVICE.replace("CREDS", str(tmp_path / "creds")))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from components.cli import main; main()", "local",
         str(tmp_path / "svc.yaml"), "--port", str(port), "--json", "--probe-interval", "0.3",
         "--status-interval", "0.25", "--log-dir", str(tmp_path / "logs")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))

    threading.Thread(target=read, daemon=True).start()

    def ready() -> list[str]:
        status = [e for e in events if e.get("event") == "status"]
        return sorted(r["id"] for r in (status[-1]["replicas"] if status else [])
                      if r["state"] == "READY")

    async def until(cond: Any, what: str) -> None:
        for _ in range(600):
            if cond():
                return
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {events[-1:]}")

    try:
        await until(lambda: ready() == ["local-1", "local-2"], "two READY replicas")
        started = next(e for e in events if e.get("event") == "started")
        token = json.loads(Path(started["token_file"]).read_text())["token"]
        creds = sorted((tmp_path / "creds").iterdir())
        assert creds, "the replicas wrote the credential they were given"
        own = {p.read_text() for p in creds}
        assert token not in own and all(c.startswith(credentials.PREFIX) for c in own)
        key = credentials.registration_key(token)
        local1 = next(c for c in own if credentials.covers(key, c, "local-1"))
        async with httpx.AsyncClient(base_url=started["admin"],
                                     headers=_as(local1)) as admin:
            status = (await admin.get("/status", headers={"Authorization": f"Bearer {token}"})
                      ).json()
            urls = {r["replica_id"]: r["url"] for r in status["replicas"]}
            attempts = [
                await admin.post("/replicas/local-2/drain"),
                await admin.delete("/replicas/local-2"),
                await admin.post("/replicas", json={"replica_id": "local-2",
                                                    "url": urls["local-1"]}),
                await admin.post("/replicas", json={"replica_id": "rogue-9",
                                                    "url": urls["local-1"]}),
                await admin.get("/status"),
            ]
            assert [r.status_code for r in attempts] == [401] * 5, [r.text for r in attempts]
            # Its own id, from its own address: a heartbeat is accepted.
            beat = await admin.post("/replicas", json={"replica_id": "local-1",
                                                       "url": urls["local-1"]})
            assert beat.status_code == 200, beat.text
            # A group credential (as a Kubernetes pod holds) covers local-9 too, but the
            # deployer registers what it launches: a replica adds no id of its own.
            group = credentials.group_credential(token, "local")
            rogue = await admin.post("/replicas", headers=_as(group), json={
                "replica_id": "local-9", "url": urls["local-1"]})
            assert rogue.status_code == 403 and "unknown replica" in rogue.text, rogue.text
            after = (await admin.get("/status", headers={"Authorization": f"Bearer {token}"})
                     ).json()
        assert {r["replica_id"]: r["url"] for r in after["replicas"]} == urls
        assert not any(r["draining"] for r in after["replicas"])
        async with httpx.AsyncClient() as client:  # both still serve
            assert (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
