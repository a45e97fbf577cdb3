"""Readiness prober: SkyServe's probe and replica state machine (``sky/serve/replica_managers.py``).

Every ``interval_seconds`` all launched, non-terminal replicas are probed in parallel: GET
``path``, or POST with ``post_data`` as JSON, with the spec's headers and timeout; only HTTP
200 is a success. Before the first success the initial-delay clock starts at the first
failed probe (launch time is not counted); after it, a failure makes the replica NOT_READY
and failures spanning ``failure_window_seconds`` (180 s) make it FAILED_PROBING.

Time to first answer: until a replica is READY for the first time it is probed quickly (from
``FAST_FIRST_SECONDS``, backing off by ``FAST_BACKOFF`` to ``FAST_MAX_SECONDS``, never slower
than the interval), and a newly registered replica wakes the prober at once; replicas that
were READY once are probed every ``interval_seconds`` as SkyServe does. The initial delay is a
span of time, so probing sooner does not make a replica fail sooner.

Each probe's outcome (``HTTP 200``, ``HTTP 404``, ``timeout after 5s``, ``connection refused``)
is kept in ``runtime.probe_results`` so the status display can say why a replica is not ready.

Divergence, on purpose: static replicas (from the config file) have nobody to relaunch them,
so they stay probed in FAILED_INITIAL_DELAY/FAILED_PROBING and return to READY on success.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from lb_agent.contract import ProbeConfig
from lb_agent.control.registry import ReplicaRecord
from lb_agent.control.states import ReplicaState
from lb_agent.runtime import AgentRuntime

log = logging.getLogger("lb_agent.control.prober")

_STATIC_RECOVERABLE = (ReplicaState.FAILED_INITIAL_DELAY, ReplicaState.FAILED_PROBING)
FAST_FIRST_SECONDS = 0.1
FAST_BACKOFF = 1.5
FAST_MAX_SECONDS = 1.0


class Prober:
    """Probes replicas and moves them through SkyServe's states."""

    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self._session: aiohttp.ClientSession | None = None
        self._registered = asyncio.Event()

    @property
    def cfg(self) -> ProbeConfig:
        """The probe settings, read each time: a service update may change them."""
        return self.runtime.config.probe

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        """Close the probe client."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _due(self, rec: ReplicaRecord) -> bool:
        if rec.state.is_probed:
            return True
        return rec.static and rec.state in _STATIC_RECOVERABLE

    async def check(self, rec: ReplicaRecord) -> bool:
        """One probe of ``rec``: True only for an HTTP 200 within the timeout."""
        session = await self._get_session()
        cfg = self.cfg
        try:
            async with session.request(
                cfg.method,
                rec.url + cfg.path,
                json=cfg.post_data if cfg.post_data is not None else None,
                headers=dict(cfg.headers),
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_seconds),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                self.runtime.probe_results[rec.replica_id] = f"HTTP {resp.status}"
                return resp.status == 200
        except TimeoutError:
            self.runtime.probe_results[rec.replica_id] = (
                f"timeout after {cfg.timeout_seconds:g}s"
            )
            return False
        except (aiohttp.ClientError, OSError) as exc:
            log.debug("probe of %s failed: %s", rec.replica_id, exc)
            self.runtime.probe_results[rec.replica_id] = _describe_error(exc)
            return False

    def apply(self, rec: ReplicaRecord, ok: bool, now: float) -> None:
        """Apply one probe result to ``rec`` (the state machine; pure apart from the registry)."""
        rt = self.runtime
        rec.last_probe_at = now
        if ok:
            rec.ready_once = True
            rec.first_failure_at = None
            rec.last_failure_at = None
            rec.state = ReplicaState.READY
            rt.ejected.discard(rec.replica_id)
        elif rec.state in (ReplicaState.STARTING, ReplicaState.FAILED_INITIAL_DELAY):
            if rec.first_failure_at is None:
                rec.first_failure_at = now
            elif now - rec.first_failure_at > self.cfg.initial_delay_seconds:
                log.warning("replica %s never became ready within %ss", rec.replica_id,
                            self.cfg.initial_delay_seconds)
                rec.state = ReplicaState.FAILED_INITIAL_DELAY
            rec.last_failure_at = now
        else:
            if rec.first_failure_at is None:
                rec.first_failure_at = now
            rec.last_failure_at = now
            if now - rec.first_failure_at >= self.cfg.failure_window_seconds:
                rec.state = ReplicaState.FAILED_PROBING
            elif rec.state is not ReplicaState.FAILED_PROBING:
                rec.state = ReplicaState.NOT_READY
        rt.registry.update(rec)

    async def probe_once(self, *, only_new: bool = False) -> None:
        """Probe every due replica once, in parallel, and apply the results.

        ``only_new``: only replicas still STARTING, never READY yet (the fast rounds)."""
        records = [r for r in self.runtime.registry.list() if self._due(r)
                   and not (only_new and not _first_ready_pending(r))]
        if not records:
            return
        results = await asyncio.gather(*(self.check(r) for r in records))
        now = self.runtime.clock()
        for rec, ok in zip(records, results, strict=True):
            # The record may have been removed or replaced while the probe ran.
            if self.runtime.registry.get(rec.replica_id) is rec and self._due(rec):
                self.apply(rec, ok, now)

    def _waiting_for_first_ready(self) -> bool:
        return any(_first_ready_pending(r) for r in self.runtime.registry.list())

    async def run(self) -> None:
        """Probe forever: every ``interval_seconds``, faster for never-READY replicas."""
        loop = asyncio.get_running_loop()
        self.runtime.registry.add_listener(self._registered.set)
        interval = self.cfg.interval_seconds
        fast = FAST_FIRST_SECONDS
        next_full = loop.time()
        try:
            while True:
                full = loop.time() >= next_full
                try:
                    await self.probe_once(only_new=not full)
                except Exception:  # keep probing whatever one round did
                    log.exception("probe round failed")
                if full:
                    next_full = loop.time() + interval
                if self._waiting_for_first_ready():
                    delay = min(fast, interval)
                    fast = min(fast * FAST_BACKOFF, FAST_MAX_SECONDS)
                else:
                    delay = next_full - loop.time()
                    fast = FAST_FIRST_SECONDS
                self._registered.clear()
                try:
                    await asyncio.wait_for(self._registered.wait(), max(0.0, delay))
                    fast = FAST_FIRST_SECONDS  # a registry change: maybe a new replica
                except TimeoutError:
                    pass
        finally:
            await self.close()


def _first_ready_pending(rec: ReplicaRecord) -> bool:
    """A launched replica that has not answered its first successful probe yet."""
    return rec.state is ReplicaState.STARTING and not rec.ready_once


def _describe_error(exc: BaseException) -> str:
    """A short reason for a failed probe connection."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection failed: {exc.os_error.strerror or exc.os_error}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
