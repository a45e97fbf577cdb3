"""The local "stack": what several ``skyform local --lbs N`` agents share about the replicas.

On a cloud the Pulumi stack holds the replicas and its lock keeps two ``up``s apart; locally
this JSON file plays both parts. It holds the next replica number, every replica the leaders
launched (port, URL, version, directory and the process groups to end) and a journal of
every launch and removal with the leader's identity and lease term. Every change is made
under an ``flock`` of ``<file>.lock`` (the stack lock) and written atomically; a change whose
term is lower than one already journaled is refused (``StaleLeader``), so a leader that lost
its lease cannot launch after its successor did. A newly elected leader's deployer adopts the
replicas recorded here (lb_agent.control.deployers.local), so none is replaced or lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from typing import Any


class StaleLeader(RuntimeError):
    """A leader of an older term tried to change the stack after a newer one did."""


class LocalStack:
    """The shared file at ``path`` (created on first use)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"

    def read(self) -> dict[str, Any]:
        """The stack as last written (no lock needed: writes replace the file whole)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        data.setdefault("next_id", 1)
        data.setdefault("replicas", {})
        data.setdefault("journal", [])
        return data

    @contextlib.contextmanager
    def change(self, holder: str, term: int) -> Iterator[dict[str, Any]]:
        """The stack to change in place, under the stack lock, by ``holder`` of lease
        ``term``; written back when the block ends without an error. StaleLeader when a
        newer term already changed it."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self.read()
            newest = max((int(e.get("term", 0)) for e in data["journal"]), default=0)
            if term < newest:
                raise StaleLeader(f"{holder} leads term {term}, but term {newest} already "
                                  "changed the local stack: this leader is stale")
            yield data
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.path)
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @staticmethod
    def journal(data: dict[str, Any], op: str, replica_id: str, holder: str,
                term: int) -> None:
        """Record one launch (``up``), removal (``down``) or cleanup (``gone``)."""
        data["journal"].append({"op": op, "replica": replica_id, "holder": holder,
                                "term": term, "pid": os.getpid(), "at": time.time()})


def double_ups(journal: list[dict[str, Any]]) -> int:
    """Launches two leaders made at once, read from the journal: an ``up`` by a leader whose
    term is older than one already journaled (a stale leader acting after its successor),
    or by a second holder in the same term."""
    newest = 0
    holders: dict[int, str] = {}
    count = 0
    for entry in journal:
        term = int(entry.get("term", 0))
        holder = str(entry.get("holder"))
        stale = term < newest or holders.setdefault(term, holder) != holder
        if entry.get("op") == "up" and stale:
            count += 1
        newest = max(newest, term)
    return count
