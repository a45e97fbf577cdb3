"""The rendered replica script really runs: setup, run, registration (with its credential and
the SkyPilot envs), heartbeat and deregistration against a local stand-in for the agent, with
curl and with the python3 fallback of images that lack curl."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from replica_script import WAIT_SECONDS, RecordingAgent, start_recording_agent, start_replica_script

from components.startup import ReplicaBoot


@pytest.fixture()
def agent() -> Iterator[RecordingAgent]:
    started = start_recording_agent()
    yield started
    started.stop()


@pytest.mark.parametrize("with_curl", [True, False])
def test_replica_registers_heartbeats_and_deregisters(agent: RecordingAgent, tmp_path: Path,
                                                       with_curl: bool) -> None:
    boot = ReplicaBoot(
        cloud="kubernetes", service_name="svc", group="spot", index=None, replica_id_base=1,
        spot=True, accelerator="L4", num_gpus=1, service_port=8080, controller_url=agent.url,
        credential_id="SKYFORM_REPLICA_CREDENTIAL", envs={"GREETING": "hi there"},
        setup="echo \"setup $GREETING\" > setup.out",
        run="echo \"$SKYPILOT_SERVE_REPLICA_ID $SKYPILOT_NUM_GPUS_PER_NODE\" > run.out; "
            "echo \"${SKYFORM_REPLICA_CREDENTIAL:-unset}\" > credential.out; sleep 2",
        workdir=str(tmp_path / "work"), heartbeat_seconds=1,
    )
    process = start_replica_script(tmp_path, boot, hostname="svc-spot-2",
                                   credential="skr1.cred-123", with_curl=with_curl)
    _, stderr = process.communicate(timeout=WAIT_SECONDS)
    assert process.returncode == 0, stderr
    assert (tmp_path / "work" / "setup.out").read_text() == "setup hi there\n"
    assert (tmp_path / "work" / "run.out").read_text() == "3 1\n"  # index 2 + 1, one GPU
    # The replica's credential registers it; the user's run does not get it in its env.
    assert (tmp_path / "work" / "credential.out").read_text() == "unset\n"
    posts = [c for c in agent.calls if c.method == "POST"]
    assert len(posts) >= 2  # registration, then at least one heartbeat
    assert all(c.path == "/replicas" and c.authorization == "Bearer skr1.cred-123"
               for c in posts)
    assert json.loads(posts[0].body) == {
        "replica_id": "spot-2", "url": "http://127.0.0.1:8080", "spot": True,
        "accelerator": "L4", "group": "spot", "index": 2}
    assert agent.calls[-1][:3] == ("DELETE", "/replicas/spot-2", "Bearer skr1.cred-123")
