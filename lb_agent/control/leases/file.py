"""A leader lease on one machine: an ``flock`` on a lock file (``skyform local --lbs N``).

The leader takes ``fcntl.flock(LOCK_EX)`` on ``<name>`` and holds it for as long as it leads,
so the kernel frees it the moment the process ends, even by ``kill -9``: a successor does not
wait for an expiry. Beside the lock, ``<name>.holder`` (JSON, written atomically by the
holder only) says who holds it for the followers to read: identity, cluster address, term,
expiry and pid. The term grows by one each time the lock changes hands.

The lock file descriptor is opened close-on-exec, so replica processes the leader starts never
inherit it (an inherited lock would outlive the leader).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable
from typing import Any

from lb_agent.contract import LeaseConfig
from lb_agent.control.leadership import LeaseState, LeaseUnavailable

HOLDER_SUFFIX = ".holder"


class FileLeaseStore:
    """The lease as an flock on ``path``; the holder record in ``path + ".holder"``."""

    def __init__(self, path: str, duration_seconds: float = 15.0, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = os.path.abspath(path)
        self.holder_path = self.path + HOLDER_SUFFIX
        self.duration_seconds = duration_seconds
        self.clock = clock
        self._fd: int | None = None
        self._term = 0

    @property
    def held(self) -> bool:
        """True while this store object holds the lock."""
        return self._fd is not None

    async def acquire_or_renew(self, identity: str, address: str) -> LeaseState:
        try:
            if self._fd is None and not self._try_lock():
                return self.read()
            if self._fd is not None and self._term == 0:
                self._term = self.read_record().get("term", 0) + 1
            state = LeaseState(identity, address, self.clock() + self.duration_seconds,
                               self._term)
            self._write(state)
            return state
        except OSError as exc:
            raise LeaseUnavailable(f"lease file {self.path}: {exc.strerror or exc}") from None

    async def release(self, identity: str) -> None:
        if self._fd is None:
            return
        try:
            self._write(LeaseState(None, None, 0.0, self._term))
        except OSError:
            pass  # the lock below is what counts
        finally:
            fd, self._fd, self._term = self._fd, None, 0
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- files ---------------------------------------------------------------------------
    def _try_lock(self) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        self._term = 0
        return True

    def read_record(self) -> dict[str, Any]:
        """The holder record as written (empty when there is none or it is unreadable)."""
        try:
            with open(self.holder_path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        if not isinstance(data.get("term"), int):
            data["term"] = 0
        return data

    def read(self) -> LeaseState:
        """The lease as the followers see it: the holder record, holder None once expired."""
        rec = self.read_record()
        expires = float(rec.get("expires_at") or 0.0)
        holder = rec.get("holder") if expires > self.clock() else None
        if not isinstance(holder, str):
            return LeaseState(None, None, expires, int(rec.get("term", 0)))
        address = rec.get("address")
        return LeaseState(holder, address if isinstance(address, str) else None, expires,
                          int(rec["term"]))

    def _write(self, state: LeaseState) -> None:
        tmp = f"{self.holder_path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"holder": state.holder, "address": state.address,
                       "expires_at": state.expires_at, "term": state.term,
                       "pid": os.getpid() if state.holder else None}, fh)
        os.replace(tmp, self.holder_path)


def open_store(config: LeaseConfig) -> FileLeaseStore:
    """The file lease ``config`` names (``name``: the lock file's path)."""
    return FileLeaseStore(os.path.expanduser(config.name), config.duration_seconds)
