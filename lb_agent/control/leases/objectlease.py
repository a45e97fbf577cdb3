"""The leader lease as one JSON object in a bucket, written only conditionally.

This module owns the lease algorithm the bucket stores share (``s3.py``, ``gcs.py``): read
the object and its version (S3 ETag, GCS generation), decide, and write back only if the
version is still the one read (create only if the object is absent). Two load balancers
that race for a free or expired lease both read version ``v``; the bucket accepts the
first write conditioned on ``v`` and refuses the other (HTTP 412), so exactly one wins.

The object holds ``{"holder", "address", "term", "expires_at"}``. ``expires_at`` is
wall-clock time (seconds since the epoch) of the holder's machine: the controllers' clocks
are NTP-synchronised cloud VMs, and the lease duration (15 s) is far above their skew.
A release writes the record with no holder (and ``expires_at`` 0), keeping the term, so the
stores need no delete permission on S3. ``open_bucket_store`` is the one path from an agent
config's ``lease:`` section (bucket, object key, duration) to either store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from lb_agent.contract import LeaseConfig
from lb_agent.control.leadership import LeaseState, LeaseUnavailable
from lb_agent.control.leases import LeaseStoreError


@dataclass(frozen=True)
class Versioned:
    """The object's body and the version a conditional write names."""

    body: bytes
    version: str


class ObjectBackend(Protocol):
    """One object in one bucket, with the bucket's conditional writes."""

    async def read(self) -> Versioned | None:
        """The object, or None when it does not exist; ``LeaseUnavailable`` on errors."""
        ...

    async def write(self, body: bytes, version: str | None) -> bool:
        """Write ``body`` if the object's version is still ``version`` (``None``: only if
        the object does not exist). False when the precondition failed (another writer
        won); ``LeaseUnavailable`` on any other error."""
        ...


@dataclass(frozen=True)
class Record:
    holder: str | None
    address: str | None
    term: int
    expires_at: float

    def encode(self) -> bytes:
        return json.dumps({"holder": self.holder, "address": self.address, "term": self.term,
                           "expires_at": self.expires_at}, sort_keys=True).encode()

    @classmethod
    def decode(cls, body: bytes) -> Record:
        try:
            raw = json.loads(body)
            holder, address = raw.get("holder"), raw.get("address")
            return cls(holder=str(holder) if holder is not None else None,
                       address=str(address) if address is not None else None,
                       term=int(raw.get("term") or 0),
                       expires_at=float(raw.get("expires_at") or 0.0))
        except (ValueError, TypeError, AttributeError) as exc:
            # A record nobody can parse is taken over like a free one, at a fresh term.
            del exc
            return cls(None, None, 0, 0.0)


class ObjectLease:
    """A ``LeaseStore`` (lb_agent/control/leadership.py) over an ``ObjectBackend``."""

    def __init__(self, backend: ObjectBackend, duration_seconds: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.duration_seconds = duration_seconds
        self._clock = clock

    def _state(self, record: Record) -> LeaseState:
        if record.holder is None or record.expires_at <= self._clock():
            return LeaseState(None, None, record.expires_at, record.term)
        return LeaseState(record.holder, record.address, record.expires_at, record.term)

    async def _current(self) -> LeaseState:
        """What the object holds now (after a lost write: the winner's record)."""
        found = await self.backend.read()
        return LeaseState(None, None, 0.0, 0) if found is None \
            else self._state(Record.decode(found.body))

    async def acquire_or_renew(self, identity: str, address: str) -> LeaseState:
        found = await self.backend.read()
        now = self._clock()
        expires = now + self.duration_seconds
        if found is None:
            mine = Record(identity, address, 1, expires)
            if await self.backend.write(mine.encode(), None):
                return self._state(mine)
            return await self._current()
        record = Record.decode(found.body)
        free = record.holder is None or record.expires_at <= now
        if record.holder == identity:
            # Renewal (also of a lapsed claim nobody took yet): the same term.
            mine = Record(identity, address, record.term, expires)
        elif free:
            mine = Record(identity, address, record.term + 1, expires)
        else:
            return self._state(record)
        if await self.backend.write(mine.encode(), found.version):
            return self._state(mine)
        return await self._current()

    async def release(self, identity: str) -> None:
        found = await self.backend.read()
        if found is None:
            return
        record = Record.decode(found.body)
        if record.holder != identity:
            return
        # A lost precondition means someone else wrote meanwhile: nothing left to release.
        await self.backend.write(Record(None, None, record.term, 0.0).encode(), found.version)


Store = TypeVar("Store", bound=ObjectLease)


def open_bucket_store(config: LeaseConfig, store: Callable[[str, str, float], Store]) -> Store:
    """A bucket store (``s3``, ``gcs``) of the ``lease:`` section: ``store(bucket, object key,
    duration)``; both names are required."""
    if not config.bucket or not config.name:
        raise LeaseStoreError(f"lease.bucket, lease.name: kind {config.kind} needs the files "
                              "bucket and the lease object's key")
    return store(config.bucket, config.name, config.duration_seconds)


__all__ = ["LeaseUnavailable", "ObjectBackend", "ObjectLease", "Record", "Versioned",
           "open_bucket_store"]
