"""SkyServe's autoscaling algorithm as pure code: no I/O, the clock is passed in.

Owns: the choice of autoscaler class from the normalized replica policy, QPS over the arrival
window, the ceil-then-clip raw target, hysteresis counters (``int(delay / 20)`` with jump
semantics), immediate scale from zero, ``num_overprovision``, spot/on-demand fallback (base and
dynamic), the instance-aware variant, the fail-fast guard and SkyServe's scale-down ordering
(SkyServe's ``sky/serve/autoscalers.py``). Its dynamic state (target, counters,
arrival times, service version) round-trips through JSON so the scaler can persist it and a
restarted agent continues without churn (SkyServe #8562).

Deliberate differences from SkyServe, each explained in docs/differences.md#autoscaler:
* a hard cap (``max_replicas + num_overprovision`` per group, SkyServe #3255) trims scale-ups;
* the state is persisted and restored (SkyServe #8562);
* an update recomputes the target with the new ``target_qps_per_replica`` (SkyServe: the old
  one when the class stays the same); a policy that needs another class is refused;
* the instance-aware target counts live latest-version replicas (capacity, READY list and
  count), not every record of every version, and its scale-down ranks status first (SkyServe's
  sort key ignores status);
* fallback with ``base_ondemand_fallback_replicas`` above the final target keeps spot at 0
  (SkyServe's tick fails an assertion); fallback with a per-accelerator target is refused;
* the fail-fast guard also counts a replica that was READY between two decisions;
* the QPS window, decision intervals and the delay-to-tick divisor are configurable (their
  defaults are SkyServe's).
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lb_agent import constants as C
from lb_agent.control.rollout import BLUE_GREEN, ROLLING, check_mode
from lb_agent.control.states import ReplicaState

#: Scale-down preference: the least-progressed replicas go first.
SCALE_DOWN_ORDER: tuple[ReplicaState, ...] = (
    ReplicaState.PENDING,
    ReplicaState.PROVISIONING,
    ReplicaState.STARTING,
    ReplicaState.NOT_READY,
    ReplicaState.READY,
)
#: Replicas whose capacity counts in the instance-aware variant.
_CAPACITY_STATES = (ReplicaState.READY, ReplicaState.STARTING, ReplicaState.PROVISIONING)
#: Terminal states that mean "the user's app is broken" (fail-fast guard).
_UNRECOVERABLE = (ReplicaState.FAILED, ReplicaState.FAILED_INITIAL_DELAY)

STATE_FORMAT = 1


class Operator(enum.StrEnum):
    """SkyServe's AutoscalerDecisionOperator."""

    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"


@dataclass(frozen=True)
class Decision:
    """SCALE_UP with an optional resource override, or SCALE_DOWN of one replica id."""

    operator: Operator
    override: Mapping[str, Any] | None = None
    replica_id: str | None = None

    @classmethod
    def up(cls, override: Mapping[str, Any] | None = None) -> Decision:
        return cls(Operator.SCALE_UP, override=dict(override) if override else None)

    @classmethod
    def down(cls, replica_id: str) -> Decision:
        return cls(Operator.SCALE_DOWN, replica_id=replica_id)

    @property
    def spot(self) -> bool | None:
        """The override's ``use_spot`` (None: the service's own resources decide)."""
        if self.override is None or "use_spot" not in self.override:
            return None
        return bool(self.override["use_spot"])


@dataclass(frozen=True)
class ReplicaView:
    """What the autoscaler needs to know about one replica.

    ``seq`` is the launch order (SkyServe's integer replica id); scale-down prefers the
    highest ``seq`` within a status and version.
    """

    replica_id: str
    seq: int
    state: ReplicaState
    version: int = C.INITIAL_VERSION
    spot: bool = False
    accelerator: str | None = None
    #: Passed a readiness probe at some point (even if it is not READY now).
    ready_once: bool = False
    #: When its launch was issued, while it is not READY, if the deployer knows.
    launched_at: float | None = None

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal


@dataclass(frozen=True)
class PolicyParams:
    """The replica policy, read from the normalized spec's ``replica_policy`` dict."""

    min_replicas: int = C.DEFAULT_MIN_REPLICAS
    max_replicas: int = C.DEFAULT_MIN_REPLICAS
    target_qps_per_replica: float | Mapping[str, float] | None = None
    upscale_delay_seconds: float = C.AUTOSCALER_DEFAULT_UPSCALE_DELAY_SECONDS
    downscale_delay_seconds: float = C.AUTOSCALER_DEFAULT_DOWNSCALE_DELAY_SECONDS
    num_overprovision: int = 0
    base_ondemand_fallback_replicas: int = 0
    dynamic_ondemand_fallback: bool = False

    @property
    def use_ondemand_fallback(self) -> bool:
        return self.dynamic_ondemand_fallback or self.base_ondemand_fallback_replicas > 0

    @classmethod
    def from_policy(cls, policy: Mapping[str, Any] | None) -> PolicyParams:
        """From ``service_spec.replica_policy`` (missing keys take SkyServe's defaults)."""
        p = dict(policy or {})
        min_r = int(p.get("min_replicas", C.DEFAULT_MIN_REPLICAS))
        max_r = p.get("max_replicas")
        tq = p.get("target_qps_per_replica")
        target: float | dict[str, float] | None
        if isinstance(tq, Mapping):
            target = {str(k): float(v) for k, v in tq.items()}
        else:
            target = None if tq is None else float(tq)
        up = p.get("upscale_delay_seconds")
        down = p.get("downscale_delay_seconds")
        return cls(
            min_replicas=min_r,
            max_replicas=min_r if max_r is None else int(max_r),
            target_qps_per_replica=target,
            upscale_delay_seconds=(
                C.AUTOSCALER_DEFAULT_UPSCALE_DELAY_SECONDS if up is None else float(up)
            ),
            downscale_delay_seconds=(
                C.AUTOSCALER_DEFAULT_DOWNSCALE_DELAY_SECONDS if down is None else float(down)
            ),
            num_overprovision=int(p.get("num_overprovision") or 0),
            base_ondemand_fallback_replicas=int(p.get("base_ondemand_fallback_replicas") or 0),
            dynamic_ondemand_fallback=bool(p.get("dynamic_ondemand_fallback") or False),
        )

    @classmethod
    def from_service(cls, service: Mapping[str, Any] | None) -> PolicyParams:
        """From the normalized spec JSON (``service_spec.replica_policy``)."""
        spec = (service or {}).get("service_spec") or {}
        return cls.from_policy(spec.get("replica_policy"))

    def group_caps(self, uses_spot: bool) -> dict[str, int]:
        """The most replicas each group may ever have: the one rule the autoscaler applies
        and the Pulumi program clips to (so the program never deletes a replica the agent
        did not drain). Without spot every replica is on-demand, at most ``max_replicas +
        num_overprovision`` (SkyServe #3255 guard). With spot: spot at most that cap minus
        the on-demand base, or twice ``max_replicas`` minus the base when that is more (room
        for the backup copy a placement policy may hold while spot is unstable,
        ``Placer.fallback_counts``); on-demand at most ``max_replicas`` (the base plus dynamic
        cover, which never covers overprovisioned capacity)."""
        cap = self.max_replicas + self.num_overprovision
        if not uses_spot:
            return {"spot": 0, "ondemand": cap}
        base = self.base_ondemand_fallback_replicas
        return {"spot": max(0, cap - base, 2 * (self.max_replicas - base)),
                "ondemand": self.max_replicas}

    def fingerprint(self) -> dict[str, Any]:
        """A JSON form used to notice a policy change across restarts."""
        d = dataclasses.asdict(self)
        if isinstance(self.target_qps_per_replica, Mapping):
            d["target_qps_per_replica"] = dict(self.target_qps_per_replica)
        return d


@dataclass(frozen=True)
class Tuning:
    """Timings; SkyServe's values by default, shorter ones for tests and demos."""

    decision_interval_seconds: float = C.AUTOSCALER_DEFAULT_DECISION_INTERVAL_SECONDS
    no_replica_interval_seconds: float = C.AUTOSCALER_NO_REPLICA_DECISION_INTERVAL_SECONDS
    qps_window_seconds: float = C.AUTOSCALER_QPS_WINDOW_SIZE_SECONDS
    #: Delays are turned into tick counts by dividing by this (SkyServe: always 20).
    delay_divisor_seconds: float = C.AUTOSCALER_DEFAULT_DECISION_INTERVAL_SECONDS

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> Tuning:
        s = dict(section or {})
        kwargs: dict[str, float] = {}
        for f in dataclasses.fields(cls):
            if s.get(f.name) is not None:
                value = float(s[f.name])
                if value <= 0:
                    raise ValueError(f"autoscaler.{f.name}: must be > 0, got {s[f.name]!r}")
                kwargs[f.name] = value
        return cls(**kwargs)


@dataclass
class AutoscalerState:
    """The dynamic state that is persisted between decisions and across restarts."""

    target: int
    upscale_counter: int = 0
    downscale_counter: int = 0
    latest_version: int = C.INITIAL_VERSION
    latest_version_ever_ready: int = C.INITIAL_VERSION - 1
    #: How old versions give way to the latest: ``rolling`` or ``blue_green``
    #: (lb_agent.control.rollout).
    update_mode: str = ROLLING
    #: Arrival times in the window, sorted; doubles in an array (8 bytes each, not a float
    #: object each: 60 s at 15k req/s is ~7 MB).
    request_timestamps: array.array[float] = field(default_factory=lambda: array.array("d"))
    last_collected: float = float("-inf")


class RequestRateAutoscaler:
    """SkyServe's RequestRateAutoscaler: one pool of replicas, target = ceil(qps / target_qps)."""

    kind = "request_rate"
    #: Whether this class takes the per-accelerator (mapping) form of target_qps_per_replica.
    takes_mapping = False

    def __init__(self, params: PolicyParams, tuning: Tuning | None = None) -> None:
        self._check_params(params)
        self.params = params
        self.tuning = tuning or Tuning()
        self.state = AutoscalerState(target=params.min_replicas)
        #: Why the last decision could not make room for the new version (None: it could).
        self.blocked: str | None = None

    # -- thresholds and targets -------------------------------------------------------
    @property
    def scale_up_threshold(self) -> int:
        return int(self.params.upscale_delay_seconds / self.tuning.delay_divisor_seconds)

    @property
    def scale_down_threshold(self) -> int:
        return int(self.params.downscale_delay_seconds / self.tuning.delay_divisor_seconds)

    @property
    def target(self) -> int:
        return self.state.target

    @property
    def final_target(self) -> int:
        """Target plus ``num_overprovision``."""
        return self.state.target + self.params.num_overprovision

    @property
    def cap(self) -> int:
        """Never more live latest-version replicas than this (SkyServe #3255)."""
        return self.params.max_replicas + self.params.num_overprovision

    @property
    def total_cap(self) -> int:
        """Never more live replicas of all versions together than this: ``cap``, plus the
        on-demand cover SkyServe's fallback adds for spot that is not ready (the per-group
        caps the Pulumi program clips to, ``PolicyParams.group_caps``)."""
        fallback = self.params.use_ondemand_fallback
        return sum(self.params.group_caps(uses_spot=fallback).values())

    def decision_interval(self) -> float:
        """Seconds until the next decision: shorter while the final target is 0."""
        if self.final_target == 0:
            return self.tuning.no_replica_interval_seconds
        return self.tuning.decision_interval_seconds

    def _check_params(self, params: PolicyParams) -> None:
        """Refuse a policy this class cannot compute a target for (SkyServe raises every tick)."""
        mapping = isinstance(params.target_qps_per_replica, Mapping)
        if mapping == self.takes_mapping:
            return
        if self.takes_mapping:
            raise ValueError(
                "the instance-aware autoscaler needs target_qps_per_replica as a mapping of "
                "accelerator to QPS"
            )
        if params.use_ondemand_fallback:
            raise ValueError(
                "on-demand fallback (base_ondemand_fallback_replicas, dynamic_ondemand_fallback) "
                "cannot be combined with a per-accelerator target_qps_per_replica: SkyServe's "
                "FallbackRequestRateAutoscaler does not support it"
            )
        raise ValueError(
            "RequestRateAutoscaler does not support dict target_qps_per_replica. "
            "Should use InstanceAwareRequestRateAutoscaler instead."
        )

    def _clip(self, n: int) -> int:
        return max(self.params.min_replicas, min(self.params.max_replicas, n))

    # -- QPS ----------------------------------------------------------------------------
    def collect(self, timestamps: Iterable[float], now: float) -> None:
        """Take new arrival times (any already seen are skipped) and drop old ones."""
        st = self.state
        fresh = sorted(t for t in timestamps if t > st.last_collected)
        if fresh:
            st.request_timestamps.extend(fresh)
            if len(st.request_timestamps) > len(fresh) and st.request_timestamps[
                -len(fresh) - 1
            ] > fresh[0]:
                st.request_timestamps = array.array("d", sorted(st.request_timestamps))
            st.last_collected = max(st.last_collected, fresh[-1])
        cut = bisect.bisect_left(st.request_timestamps, now - self.tuning.qps_window_seconds)
        if cut:
            del st.request_timestamps[:cut]

    def qps(self) -> float:
        return len(self.state.request_timestamps) / self.tuning.qps_window_seconds

    def raw_target(self, replicas: Sequence[ReplicaView]) -> int:
        """ceil(qps / target_qps_per_replica) clipped to [min, max]; min when not autoscaling."""
        tq = self.params.target_qps_per_replica
        if tq is None:
            return self.params.min_replicas
        assert not isinstance(tq, Mapping)
        return self._clip(math.ceil(self.qps() / tq))

    def _apply_hysteresis(self, raw: int) -> None:
        st = self.state
        if st.target == 0:
            st.target = raw  # no delay when scaling up from zero
        elif raw > st.target:
            st.upscale_counter += 1
            st.downscale_counter = 0
            if st.upscale_counter >= self.scale_up_threshold:
                st.upscale_counter = 0
                st.target = raw
        elif raw < st.target:
            st.downscale_counter += 1
            st.upscale_counter = 0
            if st.downscale_counter >= self.scale_down_threshold:
                st.downscale_counter = 0
                st.target = raw
        else:
            st.upscale_counter = st.downscale_counter = 0

    def _update_target(self, replicas: Sequence[ReplicaView]) -> None:
        # A fixed-size service too (raw = min_replicas): its target is min_replicas, so this
        # only resets the counters, and a target that is not min (a restored or corrupt one)
        # converges like any other: at once from 0, else after the delay.
        self._apply_hysteresis(self.raw_target(replicas))

    # -- decisions ----------------------------------------------------------------------
    def _latest_live(self, replicas: Iterable[ReplicaView]) -> list[ReplicaView]:
        v = self.state.latest_version
        return [r for r in replicas if r.version == v and not r.is_terminal]

    def failing(self, replicas: Sequence[ReplicaView]) -> bool:
        """The fail-fast guard: the latest version was never READY and one of its replicas
        failed for good (its app, or the initial delay). No decision is made then."""
        return self._fail_fast(replicas)

    def _fail_fast(self, replicas: Sequence[ReplicaView]) -> bool:
        st = self.state
        latest = [r for r in replicas if r.version == st.latest_version]
        # SkyServe samples READY at decision time; a replica that was READY only between two
        # decisions counts too (its record remembers it), so a quick crash is not mistaken
        # for an app that never worked.
        if any(r.state is ReplicaState.READY or r.ready_once for r in latest):
            st.latest_version_ever_ready = st.latest_version
        if st.latest_version_ever_ready < st.latest_version:
            return any(r.state in _UNRECOVERABLE for r in latest)
        return False

    def _outdated_to_scale_down(self, replicas: Sequence[ReplicaView]) -> list[str]:
        """Old-version replicas to drop now (SkyServe's ``sky serve update`` semantics).

        Rolling: keep ``final_target - latest_ready`` old replicas (all go once the latest
        version has ``final_target`` READY), the least progressed go first. Blue-green: keep
        every old replica until the latest version has ``min_replicas`` (at least 1) READY,
        the moment the load balancer switches to it; then all of them go.
        """
        v = self.state.latest_version
        ready_new = sum(1 for r in replicas if r.version == v and r.state is ReplicaState.READY)
        old = [r for r in replicas if r.version != v and not r.is_terminal]
        if not old:
            return []
        if self.state.update_mode == BLUE_GREEN:
            switched = ready_new >= max(1, self.params.min_replicas)
            return [r.replica_id for r in old] if switched else []
        if ready_new >= self.final_target:
            return [r.replica_id for r in old]
        keep = self.final_target - ready_new
        return select_scale_down(max(0, len(old) - keep), old)

    def _within_total_cap(
        self, replicas: Sequence[ReplicaView], downs: Sequence[str], decisions: list[Decision]
    ) -> list[Decision]:
        """Trim scale-ups so that every live replica of every version together never exceeds
        ``max_replicas + num_overprovision`` (SkyServe #3255 over-scaled after updates).

        When an update leaves no room (the service already runs at its cap) and every latest
        replica is READY, one more old replica (the least progressed) is retired so the next
        decision can launch its successor: a full-size service rolls one replica at a time.
        """
        self.blocked = None
        v = self.state.latest_version
        gone = set(downs) | {d.replica_id for d in decisions if d.replica_id is not None}
        live = [r for r in replicas if not r.is_terminal and r.replica_id not in gone]
        old = [r for r in live if r.version != v]
        if not old:
            return decisions  # one version: the per-group caps in _generate hold
        ups = [d for d in decisions if d.operator is Operator.SCALE_UP]
        room = max(0, self.total_cap - len(live))
        if len(ups) <= room:
            return decisions
        keep_ups = ups[:room]
        out = [d for d in decisions if d.operator is not Operator.SCALE_UP] + keep_ups
        latest_busy = any(r.version == v and r.state is not ReplicaState.READY for r in live)
        if not keep_ups and old and not latest_busy:
            victim = select_scale_down(1, old)
            ready = sum(1 for r in live if r.state is ReplicaState.READY)
            by_id = {r.replica_id: r for r in old}
            if by_id[victim[0]].state is not ReplicaState.READY or ready >= 2:
                out.append(Decision.down(victim[0]))
            else:
                # Retiring the last READY replica would be downtime: wait, and say why.
                self.blocked = (
                    f"no room for a version {v} replica: max_replicas + num_overprovision = "
                    f"{self.total_cap} and the only READY replica is of an old version; "
                    "raise max_replicas to roll out without downtime")
        return out

    def generate_decisions(
        self, replicas: Sequence[ReplicaView], now: float | None = None
    ) -> list[Decision]:
        """One tick: update the target, then SCALE_UP/SCALE_DOWN decisions (SkyServe order)."""
        del now  # decisions depend on the collected arrivals, not on the clock
        if self._fail_fast(replicas):
            return []
        downs = self._outdated_to_scale_down(replicas)
        out = [Decision.down(rid) for rid in downs]
        out.extend(self._within_total_cap(replicas, downs, self._generate(replicas)))
        return out

    def _generate(self, replicas: Sequence[ReplicaView]) -> list[Decision]:
        self._update_target(replicas)
        live = self._latest_live(replicas)
        want = min(self.final_target, self.cap)
        if len(live) < want:
            return [Decision.up() for _ in range(want - len(live))]
        if len(live) > want:
            return [Decision.down(rid) for rid in self._select_down(len(live) - want, live)]
        return []

    def _select_down(self, n: int, live: Sequence[ReplicaView]) -> list[str]:
        return select_scale_down(n, live)

    # -- versions (sky serve update semantics) --------------------------------------------
    def update_policy(
        self, params: PolicyParams, version: int | None = None, mode: str | None = None
    ) -> None:
        """Adopt a new policy: recompute the target at once (no hysteresis), reset counters.

        With a ``version`` this is SkyServe's ``update_version``: a version that is not newer
        than the latest one is refused and changes nothing (policy, target, counters). Without
        one (a restart with a changed policy) the policy is applied to the current version.
        """
        if version is not None and version <= self.state.latest_version:
            return
        self._check_params(params)
        if autoscaler_class(params) is not type(self):
            raise ValueError(
                f"the new policy needs {autoscaler_class(params).__name__}, not "
                f"{type(self).__name__}: build it with build_autoscaler and carry the state "
                "over with dump_state/load_state"
            )
        if version is not None:
            self.state.latest_version = version
        if mode is not None:
            self.state.update_mode = check_mode(mode)
        self.params = params
        self.state.target = self._clip(self.state.target)
        if params.target_qps_per_replica is not None and not isinstance(
            params.target_qps_per_replica, Mapping
        ):
            self.state.target = self.raw_target(())
        elif params.target_qps_per_replica is None:
            self.state.target = params.min_replicas
        self.state.upscale_counter = self.state.downscale_counter = 0

    # -- persistence ----------------------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        """JSON-ready state. Arrival times are bucketed to 10 ms so the size stays bounded."""
        st = self.state
        buckets: list[list[float]] = []
        for t in st.request_timestamps:
            r = round(t, 2)
            if buckets and buckets[-1][0] == r:
                buckets[-1][1] += 1
            else:
                buckets.append([r, 1])
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "policy": self.params.fingerprint(),
            "target": st.target,
            "upscale_counter": st.upscale_counter,
            "downscale_counter": st.downscale_counter,
            "latest_version": st.latest_version,
            "latest_version_ever_ready": st.latest_version_ever_ready,
            "update_mode": st.update_mode,
            "arrivals": buckets,
            "last_collected": None if st.last_collected == float("-inf") else st.last_collected,
        }

    def load_state(self, data: Mapping[str, Any]) -> bool:
        """Restore a dump; returns False (and keeps the fresh state) when it is unusable.

        The version and the target are restored as they were, so the restarted agent keeps
        the replicas it has (SkyServe #8562). When the policy changed meanwhile, the new one
        is applied like an update: re-clip and recompute the target, reset the counters.
        """
        try:
            if int(data.get("format", 0)) != STATE_FORMAT:
                return False
            ts: list[float] = []
            for t, n in data.get("arrivals") or []:
                ts.extend([float(t)] * int(n))
            last = data.get("last_collected")
            self.state = AutoscalerState(
                target=int(data["target"]),
                upscale_counter=int(data.get("upscale_counter", 0)),
                downscale_counter=int(data.get("downscale_counter", 0)),
                latest_version=int(data.get("latest_version", C.INITIAL_VERSION)),
                latest_version_ever_ready=int(
                    data.get("latest_version_ever_ready", C.INITIAL_VERSION - 1)
                ),
                update_mode=check_mode(str(data.get("update_mode", ROLLING))),
                request_timestamps=array.array("d", sorted(ts)),
                last_collected=float("-inf") if last is None else float(last),
            )
        except (KeyError, TypeError, ValueError):
            return False
        if data.get("policy") != self.params.fingerprint():
            self.update_policy(self.params)
        return True

    def info(self) -> dict[str, Any]:
        """Status fields (the scaler adds its own)."""
        st = self.state
        return {
            "autoscaler": self.kind,
            "target": st.target,
            "final_target": self.final_target,
            "min_replicas": self.params.min_replicas,
            "max_replicas": self.params.max_replicas,
            "num_overprovision": self.params.num_overprovision,
            "qps": round(self.qps(), 4),
            "target_qps_per_replica": (
                dict(self.params.target_qps_per_replica)
                if isinstance(self.params.target_qps_per_replica, Mapping)
                else self.params.target_qps_per_replica
            ),
            "upscale_counter": st.upscale_counter,
            "scale_up_threshold": self.scale_up_threshold,
            "downscale_counter": st.downscale_counter,
            "scale_down_threshold": self.scale_down_threshold,
            "version": st.latest_version,
            "update_mode": st.update_mode,
        }


class FallbackCounts(Protocol):
    """Refines the fallback counts: (spot, on-demand) from SkyServe's (spot, on-demand),
    also told how many spot replicas are STARTING, how many on-demand ones are READY, and how
    many on-demand ones not READY were launched before the newest STARTING spot replica."""

    def __call__(self, *, target: int, spot_wanted: int, ondemand_wanted: int,
                 ready_spot: int, live_spot: int, dynamic: bool, base: int,
                 now: float, starting_spot: int = 0,
                 ready_ondemand: int = 0, ondemand_ahead: int = 0) -> tuple[int, int]: ...


def launched_before(replicas: Sequence[ReplicaView], others: Sequence[ReplicaView]) -> int:
    """How many of ``replicas`` were launched before the newest of ``others``: by launch
    time where every one of them has it, else by ``seq`` (launch order within a deployer's
    numbering)."""
    if not others:
        return 0
    timed = all(r.launched_at is not None for r in (*replicas, *others))

    def key(r: ReplicaView) -> float:
        return r.launched_at if timed and r.launched_at is not None else float(r.seq)

    newest = max(key(r) for r in others)
    return sum(1 for r in replicas if key(r) < newest)


class FallbackRequestRateAutoscaler(RequestRateAutoscaler):
    """Spot replicas with on-demand fallback: a base number, plus dynamic cover for spot."""

    kind = "fallback"
    SPOT_OVERRIDE: Mapping[str, Any] = {"use_spot": True}
    ONDEMAND_OVERRIDE: Mapping[str, Any] = {"use_spot": False}
    #: A placement policy that may refine SkyServe's spot/on-demand counts
    #: (``lb_agent.control.placement.Placer.fallback_counts``); None: SkyServe's counts.
    counts_hook: FallbackCounts | None = None
    #: The clock value the hook sees (the scaler or the benchmark sets it before a decision).
    now: float = 0.0

    def _generate(self, replicas: Sequence[ReplicaView]) -> list[Decision]:
        self._update_target(replicas)
        live = self._latest_live(replicas)
        spot = [r for r in live if r.spot]
        od = [r for r in live if not r.spot]
        ready_spot = sum(1 for r in spot if r.state is ReplicaState.READY)
        starting = [r for r in spot if r.state is ReplicaState.STARTING]
        base = self.params.base_ondemand_fallback_replicas
        caps = self.params.group_caps(uses_spot=True)

        spot_wanted = self.final_target - base
        # #3255 guard: never more spot replicas than the cap leaves room for.
        spot_wanted = min(spot_wanted, max(0, self.cap - base))
        od_wanted = base
        if self.params.dynamic_ondemand_fallback:
            od_wanted += max(0, spot_wanted - ready_spot)
        if self.counts_hook is not None:
            # A placement policy may hold fewer spot replicas or less on-demand cover, and
            # more spot than SkyServe's count only up to the spot cap (a backup copy while
            # spot is unstable).
            hook_spot, od_wanted = self.counts_hook(
                target=self.state.target, spot_wanted=spot_wanted, ondemand_wanted=od_wanted,
                ready_spot=ready_spot, live_spot=len(spot),
                dynamic=self.params.dynamic_ondemand_fallback,
                base=base, now=self.now,
                starting_spot=len(starting),
                ready_ondemand=sum(1 for r in od if r.state is ReplicaState.READY),
                ondemand_ahead=launched_before(
                    [r for r in od if r.state is not ReplicaState.READY], starting))
            spot_wanted = max(0, min(caps["spot"], hook_spot))
        # On-demand never covers overprovisioned capacity.
        od_wanted = min(od_wanted, self.state.target, caps["ondemand"])

        ups: list[Decision] = []
        downs: list[str] = []
        if len(spot) < spot_wanted:
            ups.extend(Decision.up(self.SPOT_OVERRIDE) for _ in range(spot_wanted - len(spot)))
        elif len(spot) > spot_wanted:
            downs.extend(select_scale_down(len(spot) - spot_wanted, spot))
        if od_wanted > len(od):
            ups.extend(Decision.up(self.ONDEMAND_OVERRIDE) for _ in range(od_wanted - len(od)))
        else:
            downs.extend(select_scale_down(len(od) - od_wanted, od))
        return ups + [Decision.down(rid) for rid in downs]


class InstanceAwareRequestRateAutoscaler(RequestRateAutoscaler):
    """``target_qps_per_replica`` per accelerator: capacity is summed over the replicas."""

    kind = "instance_aware"
    takes_mapping = True

    def _table(self) -> Mapping[str, float]:
        tq = self.params.target_qps_per_replica
        assert isinstance(tq, Mapping)
        return tq

    def capacity_of(self, accelerator: str | None) -> float:
        """Exact key, then base name (``A100`` matches ``A100:1``), then the minimum value."""
        table = self._table()
        acc = accelerator or "unknown"
        if acc in table:
            return table[acc]
        for key, value in table.items():
            if key.split(":")[0] == acc:
                return value
        return min(table.values())

    def raw_target(self, replicas: Sequence[ReplicaView]) -> int:
        table = self._table()
        qps = self.qps()
        live = self._latest_live(replicas)
        total = sum(self.capacity_of(r.accelerator) for r in live if r.state in _CAPACITY_STATES)
        if total <= 0:
            return self._clip(self.params.min_replicas)
        if qps >= total:
            return self._clip(len(live) + math.ceil((qps - total) / max(table.values())))
        ready = sorted(
            (self.capacity_of(r.accelerator) for r in live if r.state is ReplicaState.READY),
            reverse=True,
        ) or [max(table.values())]
        n, acc = 0, 0.0
        for cap in ready:
            n += 1
            acc += cap
            if acc > qps:
                break
        return self._clip(n)

    def _select_down(self, n: int, live: Sequence[ReplicaView]) -> list[str]:
        ordered = sorted(
            live,
            key=lambda r: (
                _status_rank(r.state),
                self.capacity_of(r.accelerator),
                r.version,
                -r.seq,
            ),
        )
        return [r.replica_id for r in ordered[:n]]



Autoscaler = RequestRateAutoscaler


def _status_rank(state: ReplicaState) -> int:
    try:
        return SCALE_DOWN_ORDER.index(state)
    except ValueError:
        return len(SCALE_DOWN_ORDER)


def select_scale_down(n: int, replicas: Iterable[ReplicaView]) -> list[str]:
    """SkyServe's order: status (least progressed first), version ascending, newest first."""
    if n <= 0:
        return []
    ordered = sorted(replicas, key=lambda r: (_status_rank(r.state), r.version, -r.seq))
    return [r.replica_id for r in ordered[:n]]


def autoscaler_class(params: PolicyParams) -> type[RequestRateAutoscaler]:
    """The class SkyServe picks: fallback, else instance-aware (mapping target), else plain."""
    if params.use_ondemand_fallback:
        return FallbackRequestRateAutoscaler
    if isinstance(params.target_qps_per_replica, Mapping):
        return InstanceAwareRequestRateAutoscaler
    return RequestRateAutoscaler


def build_autoscaler(
    params: PolicyParams, tuning: Tuning | None = None
) -> RequestRateAutoscaler:
    """An autoscaler of the class SkyServe picks for ``params`` (see ``autoscaler_class``)."""
    return autoscaler_class(params)(params, tuning)
