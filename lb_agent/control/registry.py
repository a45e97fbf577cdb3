"""Replica registry: who the replicas are, where they listen and their SkyServe state.

Held in memory for the hot path and written through to the SQLite ``replicas`` table of the
shared StateStore, so registrations and states survive an agent restart. Listeners (the
runtime's routing table) are called after every change.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lb_agent.constants import INITIAL_VERSION
from lb_agent.control.states import ReplicaState
from lb_agent.control.store import StateStore


@dataclass
class ReplicaRecord:
    """One replica as the agent knows it."""

    replica_id: str
    url: str
    state: ReplicaState = ReplicaState.STARTING
    version: int = INITIAL_VERSION
    spot: bool = False
    accelerator: str | None = None
    group: str | None = None
    index: int | None = None
    registered_at: float = 0.0
    last_heartbeat: float = 0.0
    draining: bool = False
    # Probe bookkeeping (SkyServe's replica_managers semantics).
    first_failure_at: float | None = None
    last_failure_at: float | None = None
    ready_once: bool = False
    last_probe_at: float | None = None
    static: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (state as its name)."""
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReplicaRecord:
        """Inverse of to_json; unknown keys are ignored so older files still load."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs["state"] = ReplicaState(kwargs.get("state", ReplicaState.UNKNOWN.value))
        return cls(**kwargs)


class Registry:
    """The replica table, persisted in ``store``; ``clock`` is injectable for tests."""

    def __init__(self, store: StateStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._records: dict[str, ReplicaRecord] = {}
        self._listeners: list[Callable[[], None]] = []
        with store.lock:
            rows = store.conn.execute("SELECT record FROM replicas").fetchall()
        for (text,) in rows:
            rec = ReplicaRecord.from_json(json.loads(text))
            self._records[rec.replica_id] = rec

    # -- observers -----------------------------------------------------------------
    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every change."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[], None]) -> None:
        """Stop calling ``fn`` (a scaler whose term ended)."""
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _changed(self, rec: ReplicaRecord | None, removed_id: str | None = None) -> None:
        with self.store.lock:
            if rec is not None:
                self.store.conn.execute(
                    "INSERT INTO replicas (replica_id, record) VALUES (?, ?) "
                    "ON CONFLICT(replica_id) DO UPDATE SET record = excluded.record",
                    (rec.replica_id, json.dumps(rec.to_json())),
                )
            if removed_id is not None:
                self.store.conn.execute("DELETE FROM replicas WHERE replica_id = ?", (removed_id,))
        for fn in self._listeners:
            fn()

    # -- reads ---------------------------------------------------------------------
    def list(self) -> list[ReplicaRecord]:
        """All records, sorted by replica id."""
        return [self._records[k] for k in sorted(self._records)]

    def get(self, replica_id: str) -> ReplicaRecord | None:
        """The record for ``replica_id`` or None."""
        return self._records.get(replica_id)

    # -- writes --------------------------------------------------------------------
    def register(
        self,
        replica_id: str,
        url: str,
        *,
        version: int | None = None,
        spot: bool = False,
        accelerator: str | None = None,
        group: str | None = None,
        index: int | None = None,
        state: ReplicaState | None = None,
        static: bool = False,
    ) -> ReplicaRecord:
        """Register a replica, or refresh it (heartbeat).

        A heartbeat with the same URL keeps the state and the probe history; a new URL is a
        new process, so it starts over as STARTING. A replica that registers itself has
        finished launching, so a new record starts in STARTING (probed, not yet routed).
        """
        now = self.clock()
        url = url.rstrip("/")
        rec = self._records.get(replica_id)
        if rec is not None and rec.url == url:
            rec.last_heartbeat = now
            rec.spot = spot
            rec.accelerator = accelerator
            if version is not None:
                rec.version = version
            if group is not None:
                rec.group = group
            if index is not None:
                rec.index = index
            if state is not None:
                rec.state = state
            rec.static = rec.static or static
        else:
            rec = ReplicaRecord(
                replica_id=replica_id,
                url=url,
                state=state or ReplicaState.STARTING,
                version=INITIAL_VERSION if version is None else version,
                spot=spot,
                accelerator=accelerator,
                group=group,
                index=index,
                registered_at=now,
                last_heartbeat=now,
                static=static,
            )
            self._records[replica_id] = rec
        self._changed(rec)
        return rec

    def set_state(self, replica_id: str, state: ReplicaState) -> ReplicaRecord | None:
        """Set a replica's state; returns the record (None when unknown)."""
        rec = self._records.get(replica_id)
        if rec is None:
            return None
        if rec.state is not state:
            rec.state = state
            self._changed(rec)
        return rec

    def set_version(self, replica_id: str, version: int) -> ReplicaRecord | None:
        """Relabel a replica with another service version (in-place reuse on an update)."""
        rec = self._records.get(replica_id)
        if rec is None:
            return None
        if rec.version != version:
            rec.version = version
            self._changed(rec)
        return rec

    def update(self, rec: ReplicaRecord) -> None:
        """Persist a record whose fields the caller (the prober) changed in place."""
        if self._records.get(rec.replica_id) is rec:
            self._changed(rec)

    def mark_draining(self, replica_id: str, draining: bool = True) -> ReplicaRecord | None:
        """Stop (or resume) routing new requests to a replica."""
        rec = self._records.get(replica_id)
        if rec is None:
            return None
        if rec.draining != draining:
            rec.draining = draining
            self._changed(rec)
        return rec

    def remove(self, replica_id: str) -> ReplicaRecord | None:
        """Forget a replica; returns the removed record (None when unknown)."""
        rec = self._records.pop(replica_id, None)
        if rec is not None:
            self._changed(None, removed_id=replica_id)
        return rec
