"""Where a running ``skyform local`` tells ``skyform status`` / ``skyform logs`` about itself.

Each ``skyform local`` writes ``local-<pid>.json`` (mode 0600) into a per-user runtime
directory (mode 0700): ``$SKYFORM_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/skyform``, else
``<tmp>/skyform-<uid>``. It holds the service name, endpoint, admin URL, admin token, log
directory and agent log path, and is removed when the service stops. Files of processes that
are gone (a ``kill -9``) are ignored and cleaned up by the readers.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalService:
    """What a running ``skyform local`` publishes about itself."""

    pid: int
    service: str
    file: str
    endpoint: str
    admin: str
    token: str
    log_dir: str
    agent_log: str
    started_at: float


def runtime_dir() -> Path:
    """The per-user directory of state files (created with mode 0700)."""
    base = os.environ.get("SKYFORM_RUNTIME_DIR")
    if base:
        path = Path(base)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "skyform"
    else:
        path = Path(tempfile.gettempdir()) / f"skyform-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise PermissionError(
            f"{path} must be a directory owned by you with mode 0700 (it holds admin tokens)"
        )
    return path


def publish(entry: LocalService) -> Path:
    """Write ``entry`` as this process's state file, mode 0600; returns its path."""
    path = runtime_dir() / f"local-{entry.pid}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(entry), fh)
    os.replace(tmp, path)
    return path


def withdraw(path: Path) -> None:
    """Remove a state file written by ``publish`` (at exit)."""
    with contextlib.suppress(OSError):
        path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running() -> list[LocalService]:
    """Every ``skyform local`` running now, oldest first; stale files are removed."""
    out: list[LocalService] = []
    try:
        directory = runtime_dir()
    except OSError:
        return []
    for path in sorted(directory.glob("local-*.json")):
        try:
            entry = LocalService(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if not _alive(entry.pid):
            withdraw(path)
            continue
        out.append(entry)
    return sorted(out, key=lambda e: e.started_at)
