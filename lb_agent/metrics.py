"""Prometheus metrics of the agent, in a per-runtime CollectorRegistry.

Dependencies go one way: the runtime imports this module; this module only knows the small
``RuntimeView`` protocol the scrape-time gauges read, never ``lb_agent.runtime`` itself.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from lb_agent.control.arrivals import ArrivalWindow
    from lb_agent.control.leadership import Leadership
    from lb_agent.control.registry import Registry
    from lb_agent.dataplane.admission import Breaker
    from lb_agent.dataplane.target import Target


class RuntimeView(Protocol):
    """What the scrape-time gauges read from the agent runtime."""

    registry: Registry
    arrivals: ArrivalWindow
    routable: list[Target]
    clock: Callable[[], float]
    leadership: Leadership

    @property
    def queue(self) -> Sized: ...

    @property
    def breakers(self) -> Mapping[str, Breaker]: ...

    def in_flight_counts(self) -> dict[str, int]: ...

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class LoopHistogram(Collector):
    """A histogram without labels updated only from the event loop's thread: ``observe`` is
    one bisect and two additions (prometheus_client's takes a lock per bucket and per sum
    and walks the buckets in Python); the samples are the same, built at scrape time."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one: above every bound
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, amount: float) -> None:
        """Count one observation of ``amount`` (in the first bucket whose bound it does not
        exceed: Prometheus buckets are ``le``)."""
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation)
        total = 0
        buckets = []
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            total += n
            buckets.append((floatToGoString(bound), float(total)))
        family.add_metric([], buckets, self._sum)
        family.samples.append(Sample(self.name + "_created", {}, self._created))
        yield family


class AgentMetrics:
    """Counters and histograms updated by the proxy; gauges read live from the runtime."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "skyform_lb_requests", "Client requests answered, by HTTP status code.",
            ["code"], registry=registry,
        )
        self.latency = LoopHistogram(
            "skyform_lb_request_duration_seconds",
            "Time from request arrival to the end of the response.",
            LATENCY_BUCKETS, registry,
        )
        self.retries = Counter(
            "skyform_lb_retries", "Attempts retried on another replica.", registry=registry
        )
        self.errors = Counter(
            "skyform_lb_upstream_errors",
            "Upstream failures, by kind: connect (no connection: nothing sent), closed (closed "
            "before a response head), protocol (not valid HTTP/1.1, or over a limit), timeout, "
            "status (a 502/503/504 retried), stream (broke mid-body), client_disconnect.",
            ["kind"], registry=registry,
        )
        self.no_replica = Counter(
            "skyform_lb_no_replica", "Requests answered 503 because no replica was ready.",
            registry=registry,
        )
        self.queue_wait = Histogram(
            "skyform_lb_queue_wait_seconds",
            "Time requests waited in the queue for a replica (queued requests only).",
            buckets=(*LATENCY_BUCKETS, 120.0, 300.0), registry=registry,
        )
        self.rejected = Counter(
            "skyform_lb_rejected",
            "Requests refused by admission, by reason: unauthorized (401), rate_limited (429), "
            "queue_timeout and queue_full (503).",
            ["reason"], registry=registry,
        )
        self._codes: dict[int, Callable[[], None]] = {}

    def count_status(self, code: int) -> None:
        """Count one answered request with ``code`` (label child cached per code)."""
        inc = self._codes.get(code)
        if inc is None:
            inc = self.requests.labels(code=str(code)).inc
            self._codes[code] = inc
        inc()


class RuntimeCollector(Collector):
    """Gauges computed at scrape time: in-flight per replica, replica states, QPS."""

    def __init__(self, runtime: RuntimeView) -> None:
        self.runtime = runtime

    def collect(self) -> Iterable[Metric]:
        rt = self.runtime
        in_flight = GaugeMetricFamily(
            "skyform_lb_in_flight", "Requests in flight per replica.", labels=["replica"]
        )
        for rid, n in sorted(rt.in_flight_counts().items()):
            in_flight.add_metric([rid], n)
        yield in_flight
        states = GaugeMetricFamily(
            "skyform_replica_state", "1 for the state each replica is in.",
            labels=["replica", "state"],
        )
        for rec in rt.registry.list():
            states.add_metric([rec.replica_id, rec.state.value], 1)
        yield states
        ready = GaugeMetricFamily("skyform_lb_routable_replicas", "Replicas receiving traffic.")
        ready.add_metric([], len(rt.routable))
        yield ready
        qps = GaugeMetricFamily("skyform_lb_qps", "Client requests per second over 60 s.")
        qps.add_metric([], rt.arrivals.qps(rt.clock()))
        yield qps
        depth = GaugeMetricFamily("skyform_lb_queue_depth", "Requests waiting for a replica.")
        depth.add_metric([], len(rt.queue))
        yield depth
        breaker = GaugeMetricFamily(
            "skyform_lb_breaker_state",
            "Circuit breaker per replica: 0 closed, 1 half-open, 2 open.", labels=["replica"])
        for rid, b in sorted(rt.breakers.items()):
            breaker.add_metric([rid], b.level)
        yield breaker
        lead = rt.leadership
        leader = GaugeMetricFamily(
            "skyform_lb_leader", "1 while this load balancer holds the leader lease (alone, "
            "it always does), with its role and the holder.", labels=["role", "holder"])
        leader.add_metric([lead.role, lead.holder or ""], 1 if lead.leading else 0)
        yield leader
        term = GaugeMetricFamily("skyform_lb_lease_term",
                                 "The leader lease's term (grows at each change of holder).")
        term.add_metric([], lead.term)
        yield term
