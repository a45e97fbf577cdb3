"""StateStore: the agent's SQLite file (WAL), holding the registry and JSON state of other parts.

One connection per process, guarded by a lock; every write commits at once so a crash or
restart loses nothing that was acknowledged. ``:memory:`` works for tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from typing import Any


class StateStore:
    """A small SQLite key/value store plus the ``replicas`` table the registry uses."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
        self.lock = threading.RLock()
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self.lock:
            if path != ":memory:":
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS replicas ("
                " replica_id TEXT PRIMARY KEY, record TEXT NOT NULL)"
            )

    def get_json(self, key: str) -> Any | None:
        """The JSON value stored under ``key``, or None."""
        with self.lock:
            row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_json(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``key``, replacing what was there."""
        text = json.dumps(value)
        with self.lock:
            self.conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, text),
            )

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        with self.lock:
            self.conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self.lock, contextlib.suppress(sqlite3.Error):
            self.conn.close()
