"""``skyform logs [REPLICA] [--agent] [--follow] [--lines N] [--service NAME] [--stack S]``.

Like ``sky serve logs``. For a ``skyform local`` service (found through ``service_view``) it
prints a replica's log (``<log dir>/<replica>/replica.log``; ``1`` means ``local-1``) or, with
``--agent``, the agent's own log, and ``--follow`` keeps printing what is appended until
Ctrl-C. For a deployed ``--stack`` the logs live on the cloud: it says where and the command
that reads them (Kubernetes: ``kubectl logs`` on the pods by their skyform labels; AWS/GCP:
the systemd units ``skyform-agent`` / ``skyform-replica`` in the VM's journal, and the cloud's
serial console output).

Exit codes: 0 printed (with ``--follow``: stopped by Ctrl-C or SIGTERM, or the reader of its
output went away); 1 no service, or no such log; 2 usage (neither REPLICA nor --agent).

Stopping ``--follow``: SIGINT and SIGTERM only set a flag that the follow loop reads between
two looks at the file (installed before anything is printed). No ``KeyboardInterrupt`` is
raised in the middle of a write to stdout, so a Ctrl-C at any moment once the command runs
(from before its first line is printed) ends it with exit code 0, and stdout's buffer stays
consistent for the interpreter's final flush.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import BinaryIO

import click

from components.commands.service_view import Target, TargetError, targets

#: Seconds between two looks at a followed file.
FOLLOW_POLL_SECONDS = 0.25
#: Bytes read at a time when printing a log or finding where its last lines start.
TAIL_BLOCK = 1 << 16


def where_logs_are(target: Target, replica: str | None, agent: bool) -> str:
    """How to read the logs of a deployed service, per cloud."""
    name = target.name
    if target.cloud == "kubernetes":
        role = "controller" if agent or replica is None else "replica"
        return (
            f"{name} runs on Kubernetes: its logs are the pods' logs.\n"
            f"  kubectl logs -n <namespace> -l skyform-role={role} --all-containers "
            "--prefix [-f]\n"
            "(the namespace is skyform:namespace, by default the service name)"
        )
    console = {
        "aws": "aws ec2 get-console-output --instance-id <id> --latest --output text",
        "gcp": "gcloud compute instances get-serial-port-output <instance> --zone <zone>",
    }.get(target.cloud or "", "the cloud console's serial/console output")
    unit = "skyform-agent" if agent or replica is None else "skyform-replica"
    return (
        f"{name} runs on {target.cloud or 'a cloud'} VMs: the agent and each replica log to the "
        f"systemd journal of their VM.\n"
        f"  on the VM: journalctl -u {unit} [-f]   (SSH is closed unless skyform:sshCidrs "
        "allows it)\n"
        f"  boot output without SSH: {console}"
    )


def _replica_log(target: Target, replica: str) -> Path:
    assert target.local is not None
    base = Path(target.local.log_dir)
    rid = f"local-{replica}" if replica.isdigit() else replica
    path = base / rid / "replica.log"
    if not path.is_file():
        known = sorted(p.parent.name for p in base.glob("*/replica.log"))
        raise TargetError(
            f"no replica {replica!r} in {target.name}; replicas with logs: "
            f"{', '.join(known) or 'none yet'}"
        )
    return path


def _tail_start(fh: BinaryIO, end: int, lines: int) -> int:
    """The offset where the last ``lines`` lines before ``end`` start (reading backwards)."""
    if lines == 0:
        return end
    pos, newlines = end, 0
    # A final line without its newline still counts as a line; a newline that ends the
    # file does not start one more.
    fh.seek(max(end - 1, 0))
    if end and fh.read(1) == b"\n":
        pos -= 1
    while pos > 0:
        step = min(TAIL_BLOCK, pos)
        fh.seek(pos - step)
        block = fh.read(step)
        found = block.rfind(b"\n")
        while found != -1:
            newlines += 1
            if newlines == lines:
                return pos - step + found + 1
            found = block.rfind(b"\n", 0, found)
        pos -= step
    return 0


def _print_tail(path: Path, lines: int | None) -> int:
    """Print the file (its last ``lines`` lines when given); return the offset printed to.

    Only the part printed is read, in blocks, so a log of gigabytes costs what is shown.
    """
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        start = 0 if lines is None else _tail_start(fh, end, lines)
        fh.seek(start)
        left = end - start
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # blocks split characters
        while left > 0:
            block = fh.read(min(TAIL_BLOCK, left))
            if not block:
                break
            left -= len(block)
            sys.stdout.write(decoder.decode(block, final=left == 0))
        sys.stdout.flush()
    return end - left


class StopRequest:
    """Set by SIGINT or SIGTERM while ``--follow`` runs; read by the follow loop."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM set the returned flag (no exception) until the block ends."""
    stop = StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _follow(path: Path, offset: int, stop: StopRequest) -> None:
    """Print what is appended to ``path`` until ``stop`` is set or the file goes away."""
    while not stop.requested:
        # A signal handler runs during the sleep, which then sleeps out its time (PEP 475):
        # the flag is seen within one poll interval.
        time.sleep(FOLLOW_POLL_SECONDS)
        if stop.requested:
            return
        try:
            size = os.path.getsize(path)
        except OSError:
            return
        if size < offset:
            offset = 0  # truncated
        if size > offset:
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()


def _reader_gone() -> None:
    """stdout's reader went away (``skyform logs -f | head``): stop quietly, exit 0.

    What is still buffered can never be written, so stdout is pointed at /dev/null for the
    interpreter's final flush instead of failing there.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@click.command(name="logs")
@click.argument("replica", required=False)
@click.option("--agent", "agent_log", is_flag=True, help="The agent's own log.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what is appended.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=None,
              help="Only the last N lines.")
@click.option("--service", default=None, help="Which local service, when several run.")
@click.option("--stack", default=None, help="A deployed stack: say where its logs are.")
def logs(replica: str | None, agent_log: bool, follow: bool, lines: int | None,
         service: str | None, stack: str | None) -> None:
    """Print or follow a replica's log, or the agent's (--agent)."""
    if replica is not None and agent_log:
        raise click.UsageError("give a REPLICA or --agent, not both")
    if not follow:
        _print_log(replica, agent_log, lines, service, stack, None)
        return
    with stop_on_signals() as stop:
        _print_log(replica, agent_log, lines, service, stack, stop)


def _print_log(replica: str | None, agent_log: bool, lines: int | None, service: str | None,
               stack: str | None, stop: StopRequest | None) -> None:
    """Print the log chosen (and, with ``stop``, follow it until ``stop`` is set)."""
    try:
        found = targets(stack)
        if service is not None:
            found = [t for t in found if t.name == service]
            if not found:
                raise TargetError(f"no running service named {service!r}")
        if len(found) > 1:
            names = ", ".join(t.name for t in found)
            raise click.UsageError(f"several services run ({names}): choose one with --service")
        target = found[0]
        if target.kind == "stack":
            click.echo(where_logs_are(target, replica, agent_log))
            return
        assert target.local is not None
        if agent_log:
            path = Path(target.local.agent_log)
        elif replica is not None:
            path = _replica_log(target, replica)
        else:
            known = sorted(p.parent.name for p in Path(target.local.log_dir).glob("*/replica.log"))
            raise click.UsageError(
                f"give a replica ({', '.join(known) or 'none yet'}) or --agent"
            )
        offset = _print_tail(path, lines)
        if stop is not None:
            _follow(path, offset, stop)
    except BrokenPipeError:
        _reader_gone()
    except TargetError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"error: cannot read {exc.filename}: {exc.strerror}", err=True)
        sys.exit(1)
