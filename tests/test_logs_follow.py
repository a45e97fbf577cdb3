"""``skyform logs -f`` stops cleanly on Ctrl-C, SIGTERM, or when its reader goes away.

The follower runs as a real process (the ``skyform`` command) against a service published the
way ``skyform local`` publishes itself (a state file naming this test process), so no agent
is needed. A signal arrives at many different moments: while the follower sleeps between two
looks at the log, while it prints a burst of appended lines, right after its first line. Each
time it must exit with the documented code 0, with nothing on stderr (no traceback, no
"Aborted!", no fatal error of the interpreter at shutdown).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest.mock import patch

import pytest
from agent_helpers import SKYFORM_AT_A_TERMINAL
from hypothesis import given, settings
from hypothesis import strategies as st

from components.commands import localstate
from components.commands import logs as logs_command

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], Path]:
    """A published local service whose replica local-1 has a log: (environment, log path)."""
    runtime = tmp_path / "run"
    monkeypatch.setenv("SKYFORM_RUNTIME_DIR", str(runtime))
    log = tmp_path / "logs" / "local-1" / "replica.log"
    log.parent.mkdir(parents=True)
    log.write_text("--- run: bash\nfirst line\n")
    localstate.publish(localstate.LocalService(
        pid=os.getpid(), service="svc", file=str(tmp_path / "svc.yaml"),
        endpoint="http://127.0.0.1:1", admin="http://127.0.0.1:2", token="t" * 16,
        log_dir=str(tmp_path / "logs"), agent_log=str(tmp_path / "logs" / "agent.log"),
        started_at=time.time(),
    ))
    return {**os.environ, "SKYFORM_RUNTIME_DIR": str(runtime)}, log


def _follower(env: dict[str, str], first: str | None = "first line\n") -> subprocess.Popen[str]:
    proc = subprocess.Popen([*SKYFORM_AT_A_TERMINAL, "logs", "1", "-f", "-n", "1"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    # The last line is printed once the command runs, with its signal handling in place.
    line = proc.stdout.readline()
    if not line:  # it ended before printing: say how
        code, _out, err = _finish(proc)
        raise AssertionError(f"the follower exited {code} before its first line: {err}")
    assert line == first if first is not None else line.endswith("\n"), line
    return proc


def _append(log: Path, text: str) -> None:
    with log.open("a") as fh:
        fh.write(text)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab\n\u00e9", max_size=60), lines=st.integers(0, 8),
       block=st.integers(1, 7))
def test_the_tail_is_the_last_lines_read_in_blocks_from_the_end(
        tmp_path_factory: pytest.TempPathFactory, text: str, lines: int, block: int) -> None:
    path = tmp_path_factory.mktemp("tail") / "replica.log"
    path.write_bytes(text.encode())
    out = io.StringIO()
    with patch.object(logs_command, "TAIL_BLOCK", block), patch.object(sys, "stdout", out):
        offset = logs_command._print_tail(path, lines)
    assert out.getvalue() == "".join(text.splitlines(keepends=True)[-lines:] if lines else [])
    assert offset == len(text.encode())
    with patch.object(logs_command, "TAIL_BLOCK", block), patch.object(sys, "stdout", out):
        out.seek(0), out.truncate()
        logs_command._print_tail(path, None)
    assert out.getvalue() == text


def test_follow_prints_what_is_appended_and_ctrl_c_exits_0(
        service: tuple[dict[str, str], Path]) -> None:
    env, log = service
    proc = _follower(env)
    assert proc.stdout is not None
    _append(log, "appended 1\n")
    assert proc.stdout.readline() == "appended 1\n"
    proc.send_signal(signal.SIGINT)
    assert _finish(proc) == (0, "", "")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_any_moment_exits_0_without_an_abort(
        service: tuple[dict[str, str], Path], sig: signal.Signals) -> None:
    env, log = service
    stop_writing = threading.Event()

    def writer() -> None:  # bursts of lines, so some signals land while the follower prints
        n = 0
        while not stop_writing.is_set():
            _append(log, "".join(f"burst {n} line {i} {'x' * 200}\n" for i in range(200)))
            n += 1
            time.sleep(0.01)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for round_ in range(8):
            proc = _follower(env, first=None)
            assert proc.stdout is not None
            for _ in range(round_):  # a different point in the stream each round
                proc.stdout.readline()
            proc.send_signal(sig)
            code, _out, err = _finish(proc)
            assert (code, err) == (0, ""), f"round {round_}: exit {code}, stderr: {err}"
    finally:
        stop_writing.set()
        thread.join(30)


def test_a_reader_that_goes_away_ends_the_follow_quietly(
        service: tuple[dict[str, str], Path]) -> None:
    env, log = service
    proc = _follower(env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `skyform logs -f | head -1`
    _append(log, "nobody reads this\n" * 5000)
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == ""
