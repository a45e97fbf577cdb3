"""The rendered replica script on Kubernetes really runs the new start-up paths: a multi-node
replica's nodes get their rank and the group's IPs and only the head registers; the workdir
archive is unpacked after its digest is checked, and a tampered one stops the start-up."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from replica_script import WAIT_SECONDS, RecordingAgent, start_recording_agent, start_replica_script

from components.clouds import packing
from components.startup import Download, ReplicaBoot


@pytest.fixture()
def agent() -> Iterator[RecordingAgent]:
    started = start_recording_agent()
    yield started
    started.stop()


def _run(boot: ReplicaBoot, tmp_path: Path, hostname: str,
         extra: dict[str, bytes] | None = None) -> subprocess.CompletedProcess[str]:
    process = start_replica_script(tmp_path / hostname, boot, hostname=hostname,
                                   credential="tok", extra_files=extra)
    stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _boot(controller: str, workdir: Path, **extra: Any) -> ReplicaBoot:
    return ReplicaBoot(
        cloud="kubernetes", service_name="svc", group="ondemand",
        index=extra.pop("index", None), replica_id_base=1, spot=False, accelerator=None,
        num_gpus=0, service_port=8080, controller_url=controller,
        credential_id="SKYFORM_REPLICA_CREDENTIAL", workdir=str(workdir), heartbeat_seconds=1,
        **extra,
    )


def test_each_node_gets_its_rank_and_the_ips_and_only_the_head_registers(
        agent: RecordingAgent, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    boot = _boot(agent.url, work, index=3, num_nodes=2, node_rank=None,
                 node_hosts=("localhost", "localhost"),
                 run='echo "$SKYPILOT_NODE_RANK $SKYPILOT_NUM_NODES $SKYPILOT_SERVE_REPLICA_ID '
                     '$(echo "$SKYPILOT_NODE_IPS" | paste -sd,)" > "rank-$SKYPILOT_NODE_RANK"; '
                     "sleep 1.5")
    head = _run(boot, tmp_path, "svc-ondemand-3-0")
    assert head.returncode == 0, head.stderr
    registrations = [c for c in agent.calls if c.method == "POST"]
    assert registrations and json.loads(registrations[0].body)["replica_id"] == "ondemand-3"
    agent.calls.clear()
    worker = _run(boot, tmp_path, "svc-ondemand-3-1")
    assert worker.returncode == 0, worker.stderr
    assert agent.calls == []  # a worker never registers nor deregisters
    assert (work / "rank-0").read_text() == "0 2 4 127.0.0.1,127.0.0.1\n"
    assert (work / "rank-1").read_text() == "1 2 4 127.0.0.1,127.0.0.1\n"


def test_workdir_archive_is_checked_then_unpacked(agent: RecordingAgent,
                                                  tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "static").mkdir(parents=True)
    (app / "static" / "index.html").write_text("hello")
    packed = packing.pack(app, "0-app.tgz")
    work = tmp_path / "work"
    work.mkdir()
    boot = _boot(agent.url, work, run="cat static/index.html > seen; sleep 1")

    def start(host: str, digest: bytes) -> subprocess.CompletedProcess[str]:
        archive = tmp_path / host / "files" / "0-app.tgz"  # where _run writes it
        with_files = dataclasses.replace(
            boot, downloads=(Download(str(archive), str(work), "archive"),))
        return _run(with_files, tmp_path, host,
                    {"0-app.tgz": packed.data, "0-app.tgz.sha256": digest})

    ok = start("good-0", packed.digest.encode())
    assert ok.returncode == 0, ok.stderr
    assert (work / "seen").read_text() == "hello"
    bad = start("bad-0", b"0" * 64)
    assert bad.returncode != 0
    assert "does not match its digest" in bad.stderr
