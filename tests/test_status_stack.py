"""`skyform status --stack` / `skyform logs --stack` through the Automation API path, against
a recorded stack double (tests/fixtures/stacks/aws-dev.json), never a real pulumi CLI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pulumi import automation as auto

from components.cli import main
from components.commands import service_view

RECORDED = Path(__file__).parent / "fixtures" / "stacks" / "aws-dev.json"
TOKEN = "admin-token-0123456789"


class StackDouble:
    """The two Automation API calls skyform makes: outputs() and get_config()."""

    def __init__(self, recorded: dict[str, Any]) -> None:
        self.recorded = recorded

    def outputs(self) -> dict[str, auto.OutputValue]:
        return {k: auto.OutputValue(v["value"], v["secret"])
                for k, v in self.recorded["outputs"].items()}

    def get_config(self, key: str) -> auto.ConfigValue:
        return auto.ConfigValue(self.recorded["config"][key])


def _use_stack(monkeypatch: pytest.MonkeyPatch, recorded: dict[str, Any]) -> list[str]:
    opened: list[str] = []

    def open_stack(name: str) -> StackDouble:
        opened.append(name)
        if name != "dev":
            raise auto.StackNotFoundError(auto.CommandResult("", f"no stack named '{name}'", 255))
        return StackDouble(recorded)

    monkeypatch.setattr(service_view, "open_stack", open_stack)
    return opened


@pytest.fixture
def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDED.read_text())
    return data


@pytest.fixture
def fake_agent() -> Iterator[str]:
    """A stand-in for a deployed agent's admin API: GET /status with the bearer token."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            body = json.dumps({
                "qps": 1.5, "ready_replicas": 1,
                "autoscaler": {"version": 2, "final_target": 2},
                "replicas": [
                    {"replica_id": "ondemand-0", "url": "http://10.0.1.11:8080", "state": "READY",
                     "version": 2, "spot": False, "group": "ondemand", "index": 0,
                     "registered_at": 1.0, "in_flight": 3},
                    {"replica_id": "spot-0", "url": "http://10.0.1.12:8080",
                     "state": "STARTING", "version": 2, "spot": True, "group": "spot",
                     "index": 0, "registered_at": 2.0, "in_flight": 0,
                     "location": {"region": "us-east-1", "zone": "us-east-1c",
                                  "candidate": "g5.xlarge", "accelerator": "A10G",
                                  "market": "spot"}},
                ],
                "placer": "skyform",
                "locations": [
                    {"key": "aws-us-east-1a-g5-xlarge-s", "state": "blocked",
                     "blocked_until": time.time() + 600, "replicas": 0,
                     "location": {"cloud": "aws", "region": "us-east-1", "zone": "us-east-1a",
                                  "candidate": "g5.xlarge", "spot": True, "price": 0.4},
                     "counts": {"launches": 1, "ready": 0, "failures": 1, "preemptions": 0}},
                    {"key": "aws-us-east-1c-g5-xlarge-s", "state": "active",
                     "blocked_until": None, "replicas": 1,
                     "location": {"cloud": "aws", "region": "us-east-1", "zone": "us-east-1c",
                                  "candidate": "g5.xlarge", "spot": True, "price": 0.41},
                     "counts": {"launches": 1, "ready": 0, "failures": 0, "preemptions": 2}},
                ],
            } if ok else {"detail": "missing or invalid bearer token"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_status_from_outputs_when_the_agent_is_private(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[str, Any]
) -> None:
    opened = _use_stack(monkeypatch, recorded)
    out = CliRunner().invoke(main, ["status", "--stack", "dev", "--json"])
    assert out.exit_code == 0, out.output
    assert opened == ["dev"]
    [svc] = json.loads(out.stdout)
    assert (svc["kind"], svc["cloud"], svc["endpoint"], svc["total"]) == (
        "stack", "aws", "http://203.0.113.10:30001", 2)
    assert [(r["id"], r["market"], r["instance_type"], r["address"]) for r in svc["replicas"]] == [
        ("ondemand-0", "on-demand", "m6i.large", "10.0.1.11"),
        ("spot-0", "spot", "m6i.large", "10.0.1.12"),
    ]
    assert "adminUrl/adminToken" in svc["agent_error"]


def test_status_endpoint_alone(monkeypatch: pytest.MonkeyPatch,
                               recorded: dict[str, Any]) -> None:
    _use_stack(monkeypatch, recorded)
    out = CliRunner().invoke(main, ["status", "--stack", "dev", "--endpoint"])
    assert out.exit_code == 0 and out.stdout == "http://203.0.113.10:30001\n"


def test_status_reads_the_agent_through_the_secret_admin_outputs(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[str, Any], fake_agent: str
) -> None:
    recorded["outputs"]["adminUrl"] = {"value": fake_agent, "secret": False}
    recorded["outputs"]["adminToken"] = {"value": TOKEN, "secret": True}
    _use_stack(monkeypatch, recorded)
    out = CliRunner().invoke(main, ["status", "--stack", "dev", "--json"])
    assert out.exit_code == 0, out.output
    [svc] = json.loads(out.stdout)
    assert (svc["version"], svc["ready"], svc["total"], svc["qps"], svc["target"]) == (
        2, 1, 2, 1.5, 2)
    assert [(r["id"], r["state"], r["market"], r["instance_type"], r["in_flight"])
            for r in svc["replicas"]] == [
        ("ondemand-0", "READY", "on-demand", "m6i.large", 3),
        ("spot-0", "STARTING", "spot", "m6i.large", 0),
    ]
    assert TOKEN not in out.stdout  # the secret output is used, never printed
    text = CliRunner().invoke(main, ["status", "--stack", "dev"])
    assert "ondemand-0" in text.stdout and "replicas ready/total: 1/2" in text.stdout
    assert TOKEN not in text.stdout


def test_status_shows_each_replicas_location_and_the_locations_state(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[str, Any], fake_agent: str
) -> None:
    recorded["outputs"]["adminUrl"] = {"value": fake_agent, "secret": False}
    recorded["outputs"]["adminToken"] = {"value": TOKEN, "secret": True}
    _use_stack(monkeypatch, recorded)
    out = CliRunner().invoke(main, ["status", "--stack", "dev", "--json"])
    assert out.exit_code == 0, out.output
    [svc] = json.loads(out.stdout)
    spot = next(r for r in svc["replicas"] if r["id"] == "spot-0")
    assert (spot["region"], spot["zone"], spot["accelerator"], spot["market"]) == (
        "us-east-1", "us-east-1c", "A10G", "spot")
    assert svc["placer"] == "skyform"
    blocked, active = svc["locations"]
    assert (blocked["zone"], blocked["state"], blocked["market"]) == (
        "us-east-1a", "blocked", "spot")
    assert 500 < blocked["blocked_for_seconds"] <= 600
    assert (active["state"], active["replicas"], active["counts"]["preemptions"]) == (
        "active", 1, 2)
    text = CliRunner().invoke(main, ["status", "--stack", "dev"], terminal_width=200).stdout
    row = next(line for line in text.splitlines() if line.startswith("spot-0"))
    assert "us-east-1c" in row and "A10G" in row
    place = next(line for line in text.splitlines() if "us-east-1a" in line)
    assert "blocked (" in place and "left)" in place and "0.400" in place


def test_wrong_token_is_exit_1_with_the_url(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[str, Any], fake_agent: str
) -> None:
    recorded["outputs"]["adminUrl"] = {"value": fake_agent, "secret": False}
    recorded["outputs"]["adminToken"] = {"value": "not-the-token", "secret": True}
    _use_stack(monkeypatch, recorded)
    out = CliRunner().invoke(main, ["status", "--stack", "dev"])
    assert out.exit_code == 1
    assert f"{fake_agent}/status answered HTTP 401" in out.stdout


def test_unknown_stack_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                        recorded: dict[str, Any]) -> None:
    _use_stack(monkeypatch, recorded)
    out = CliRunner().invoke(main, ["status", "--stack", "prod"])
    assert out.exit_code == 1
    assert out.stderr.startswith("error: no stack 'prod'") and "Traceback" not in out.output


@pytest.mark.parametrize(
    ("cloud", "expected"),
    [("aws", "journalctl -u skyform-replica"), ("gcp", "get-serial-port-output"),
     ("kubernetes", "kubectl logs -n <namespace> -l skyform-role=replica")],
)
def test_logs_of_a_stack_say_where_they_are(
    monkeypatch: pytest.MonkeyPatch, recorded: dict[str, Any], cloud: str, expected: str
) -> None:
    recorded["config"]["skyform:cloud"] = cloud
    _use_stack(monkeypatch, recorded)
    out = CliRunner().invoke(main, ["logs", "--stack", "dev", "ondemand-0"])
    assert out.exit_code == 0, out.output
    assert expected in out.stdout


def _rendered(replica: dict[str, Any]) -> str:
    from rich.console import Console

    from components.commands.status import view

    row = {"id": "r-0", "version": 1, "market": "spot", "instance_type": "local process",
           "address": "http://127.0.0.1:1", "state": "READY", "draining": False,
           "in_flight": 0, "age_seconds": 1.0, "detail": "", **replica}
    summary = {"service": "svc", "cloud": None, "kind": "local", "endpoint": None,
               "version": 1, "ready": 1, "total": 1, "qps": 1 / 60, "target": 1,
               "agent_error": None, "replicas": [row], "locations": [], "placer": None}
    console = Console(width=200, record=True)
    console.print(view(summary))
    return console.export_text()


def test_the_view_shows_zone_columns_only_where_replicas_have_a_location() -> None:
    local = _rendered({})
    assert "ZONE" not in local and "ACCELERATOR" not in local
    assert "QPS 0.02 " in local  # rounded, not 0.016666666666666666
    placed = _rendered({"zone": "us-east-1c", "accelerator": "A10G"})
    header = next(line for line in placed.splitlines() if line.startswith("REPLICA"))
    assert header.split()[:5] == ["REPLICA", "VERSION", "MARKET", "ZONE", "ACCELERATOR"]
    assert "us-east-1c" in placed and "A10G" in placed
