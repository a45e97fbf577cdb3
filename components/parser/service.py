"""The ``service:`` section: SkyServe's schema, then its cross-field rules, then skyform's
stricter rules (see docs/differences.md).

Order follows ``SkyServiceSpec.from_yaml_config``: schema first (every schema problem is
reported), then ``replicas`` vs ``replica_policy``, the probe, the policy bounds, the port and
the load-balancing policy rules. Independent problems are all reported.
"""

from __future__ import annotations

import json
import re
from typing import Any

from components.parser import fields
from components.parser.context import Context
from components.parser.schema import Section, as_int, stricter
from components.parser.yamlload import Path
from components.spec import ReadinessProbe, ReplicaPolicy, ServiceSpec, TLSConfig
from lb_agent.contract import constants

ROOT: Path = ("service",)
SERVICE_KEYS = (
    "readiness_probe", "replicas", "replica_policy", "ports", "load_balancing_policy", "tls",
    "pool", "workers",
)
PROBE_KEYS = ("path", "initial_delay_seconds", "timeout_seconds", "post_data", "headers")
POLICY_KEYS = (
    "min_replicas", "max_replicas", "target_qps_per_replica", "upscale_delay_seconds",
    "downscale_delay_seconds", "num_overprovision", "base_ondemand_fallback_replicas",
    "dynamic_ondemand_fallback", "spot_placer",
)
TLS_KEYS = ("keyfile", "certfile")
LB_POLICIES = ("round_robin", "least_load", "instance_aware_least_load")
#: skyform's own policies, accepted on top of SkyServe's (docs/differences.md); the error for
#: an unknown policy keeps SkyServe's wording and list.
LB_EXTENSIONS = ("prefix_aware",)
SPOT_PLACERS = ("dynamic_fallback",)
QPS_KEY = re.compile(r"^[A-Z0-9]+(?::[0-9]+)?$")


def _schema(sec: Section, raw: dict[str, Any]) -> bool:
    """The service JSON schema, every problem reported; True when the values have the
    right shape (unknown keys alone do not stop the cross-field checks)."""
    sec.unknown_keys(raw, ROOT, SERVICE_KEYS)
    if "pool" in raw:
        sec.typed(raw["pool"], (*ROOT, "pool"), "boolean")
    for key in ("pool", "workers"):
        if key in raw and raw[key] is not False:
            sec.shape_errors += 1
            sec.fail((*ROOT, key), f"{key!r} belongs to SkyPilot cluster pools, which skyform "
                     "does not serve; remove it to deploy a service.")
    probe: Any = raw.get("readiness_probe")
    probe_path = (*ROOT, "readiness_probe")
    if "readiness_probe" in raw and not isinstance(probe, str | dict):
        sec.any_of_fail(probe, probe_path, "a path such as '/health', or a mapping with 'path'")
    elif isinstance(probe, dict):
        # The mapping is the second branch of the schema's anyOf: SkyServe's message, at the
        # problem inside it, named after it (docs/differences.md#anyof-messages).
        def check_probe(s: Section) -> None:
            s.unknown_keys(probe, probe_path, PROBE_KEYS)
            s.required(probe, probe_path, "path")
            if "path" in probe:
                s.typed(probe["path"], (*probe_path, "path"), "string")
            for key in ("initial_delay_seconds", "timeout_seconds"):
                if key in probe:
                    s.typed(probe[key], (*probe_path, key), "number")
            if "post_data" in probe:
                s.typed(probe["post_data"], (*probe_path, "post_data"), "string", "object")
            headers: Any = probe.get("headers")
            if "headers" in probe and s.typed(headers, (*probe_path, "headers"), "object"):
                for name, value in headers.items():  # the schema checks values only
                    s.typed(value, (*probe_path, "headers", fields.mapping_key(name)), "string")

        sec.any_of(probe, probe_path, check_probe)
    if "replicas" in raw:
        sec.typed(raw["replicas"], (*ROOT, "replicas"), "integer")
    policy: Any = raw.get("replica_policy")
    ppath = (*ROOT, "replica_policy")
    if "replica_policy" in raw and sec.typed(policy, ppath, "object"):
        sec.unknown_keys(policy, ppath, POLICY_KEYS)
        sec.required(policy, ppath, "min_replicas")
        for key in ("min_replicas", "max_replicas", "num_overprovision",
                    "base_ondemand_fallback_replicas"):
            if key in policy and sec.typed(policy[key], (*ppath, key), "integer"):
                sec.minimum(policy[key], (*ppath, key), 0)
        for key in ("upscale_delay_seconds", "downscale_delay_seconds"):
            if key in policy:
                sec.typed(policy[key], (*ppath, key), "number")
        if "dynamic_ondemand_fallback" in policy:
            sec.typed(policy["dynamic_ondemand_fallback"], (*ppath, "dynamic_ondemand_fallback"),
                      "boolean")
        if "spot_placer" in policy:
            sec.one_of(policy["spot_placer"], (*ppath, "spot_placer"), SPOT_PLACERS)
        if "target_qps_per_replica" in policy:
            qpath = (*ppath, "target_qps_per_replica")
            qps = policy["target_qps_per_replica"]

            def check_qps(s: Section) -> None:
                if isinstance(qps, dict):
                    for acc, value in qps.items():
                        key = fields.mapping_key(acc)
                        apath = (*qpath, key)
                        if not QPS_KEY.match(key):
                            s.schema_fail(
                                apath, f"{key!r} does not match any of the regexes: "
                                f"{QPS_KEY.pattern!r}; accelerator keys are upper case, "
                                "optionally with a count: 'A100:1'",
                            )
                        elif s.typed(value, apath, "number"):
                            s.minimum(value, apath, 0)
                elif s.typed(qps, qpath, "number", "object"):
                    s.minimum(qps, qpath, 0)

            sec.any_of(qps, qpath, check_qps)
    if "ports" in raw:
        sec.typed(raw["ports"], (*ROOT, "ports"), "integer")
    lb_raw = raw.get("load_balancing_policy")
    if "load_balancing_policy" in raw and not (
            isinstance(lb_raw, str) and lb_raw in LB_EXTENSIONS):
        sec.one_of(lb_raw, (*ROOT, "load_balancing_policy"), LB_POLICIES)
    tls: Any = raw.get("tls")
    tpath = (*ROOT, "tls")
    if "tls" in raw and sec.typed(tls, tpath, "object"):
        sec.unknown_keys(tls, tpath, TLS_KEYS)
        sec.required(tls, tpath, *TLS_KEYS)
        for key in TLS_KEYS:
            if key in tls:
                sec.typed(tls[key], (*tpath, key), "string")
    return sec.shape_errors == 0


def _probe(ctx: Context, raw: dict[str, Any]) -> ReadinessProbe:
    section = raw.get("readiness_probe", constants.DEFAULT_READINESS_PATH)
    base = (*ROOT, "readiness_probe")
    if isinstance(section, str):
        path, delay, timeout = section, None, None
        post_data: Any = None
        headers = None
        path_at: Path = base
    else:
        path = section["path"]
        path_at = (*base, "path")
        delay = section.get("initial_delay_seconds")
        timeout = section.get("timeout_seconds")
        post_data = section.get("post_data")
        headers = section.get("headers")
        if isinstance(post_data, str):
            try:
                post_data = json.loads(post_data)
            except json.JSONDecodeError as exc:
                ctx.error(
                    (*base, "post_data"),
                    "Invalid JSON string for `post_data` in the `readiness_probe` section of "
                    f"your service YAML. ({exc.msg} at character {exc.pos})",
                )
                post_data = None
    if not path.startswith("/"):
        ctx.error(path_at, f"readiness_path must start with a slash (/). Got: {path}")
    if delay is None:
        delay = constants.DEFAULT_INITIAL_DELAY_SECONDS
    elif delay < 0:
        ctx.error((*base, "initial_delay_seconds"),
                  f"initial_delay_seconds must be >= 0. Got: {delay}{stricter('stricter-delays')}")
    if timeout is None:
        timeout = constants.DEFAULT_READINESS_PROBE_TIMEOUT_SECONDS
    elif timeout <= 0:
        ctx.error((*base, "timeout_seconds"),
                  f"timeout_seconds must be > 0 (a probe cannot answer in no time). "
                  f"Got: {timeout}{stricter('stricter-delays')}")
    return ReadinessProbe(
        path=path, initial_delay_seconds=delay, timeout_seconds=timeout,
        post_data=post_data, headers=fields.text_keys(headers) if headers is not None else None,
    )


def _policy(ctx: Context, raw: dict[str, Any]) -> ReplicaPolicy:
    ppath = (*ROOT, "replica_policy")
    policy: Any = raw.get("replica_policy")
    if policy is None or "replicas" in raw:
        replicas = raw.get("replicas")
        if replicas is None:
            return ReplicaPolicy(min_replicas=constants.DEFAULT_MIN_REPLICAS)
        if replicas < 0:
            ctx.error((*ROOT, "replicas"),
                      f"replicas must be >= 0. Got: {replicas}{stricter('stricter-replicas')}")
        return ReplicaPolicy(min_replicas=as_int(replicas))
    mn = as_int(policy["min_replicas"])
    mx = as_int(policy["max_replicas"]) if policy.get("max_replicas") is not None else None
    qps = policy.get("target_qps_per_replica")
    if mx is not None and mx < mn:
        ctx.error((*ppath, "max_replicas"),
                  "max_replicas must be greater than or equal to min_replicas. "
                  f"Found: min_replicas={policy['min_replicas']}, "
                  f"max_replicas={policy['max_replicas']}")  # as written: 1.0 stays 1.0
    qpath = (*ppath, "target_qps_per_replica")
    if qps is not None:
        if mx is None:
            ctx.error(qpath, "max_replicas must be set where target_qps_per_replica is set.")
        values = qps.items() if isinstance(qps, dict) else [(None, qps)]
        for acc, value in values:
            if value <= 0:
                at = qpath if acc is None else (*qpath, fields.mapping_key(acc))
                ctx.error(at, "target_qps_per_replica must be > 0 (0 makes the autoscaler "
                          f"divide by zero). Got: {value}{stricter('stricter-qps')}")
    elif mx is not None and mx != mn:
        ctx.error((*ppath, "max_replicas"),
                  "Detected different min_replicas and max_replicas while "
                  "target_qps_per_replica is not set. To enable autoscaling, please set "
                  "target_qps_per_replica.")
    for key in ("upscale_delay_seconds", "downscale_delay_seconds"):
        value = policy.get(key)
        if value is not None and value < 0:
            ctx.error((*ppath, key),
                      f"{key} must be >= 0. Got: {value}{stricter('stricter-delays')}")

    def opt_int(key: str) -> int | None:
        value = policy.get(key)
        return None if value is None else as_int(value)

    placer = policy.get("spot_placer")
    return ReplicaPolicy(
        min_replicas=mn,
        max_replicas=mx,
        target_qps_per_replica=fields.text_keys(qps) if isinstance(qps, dict) else qps,
        upscale_delay_seconds=policy.get("upscale_delay_seconds"),
        downscale_delay_seconds=policy.get("downscale_delay_seconds"),
        num_overprovision=opt_int("num_overprovision"),
        base_ondemand_fallback_replicas=opt_int("base_ondemand_fallback_replicas"),
        dynamic_ondemand_fallback=policy.get("dynamic_ondemand_fallback"),
        spot_placer=placer if isinstance(placer, str) else None,  # as written, as SkyPilot
    )


def parse_service(ctx: Context, raw: Any) -> ServiceSpec | None:
    """The service section as a ``ServiceSpec``; ``None`` (problems recorded) when invalid."""
    sec = Section(ctx, "Invalid service YAML: ", ROOT)
    if not isinstance(raw, dict):  # the task schema's error (task._top_level)
        return None
    mark = ctx.mark()
    present = raw
    if present.get("readiness_probe", "/") is None:
        ctx.error((*ROOT, "readiness_probe"), "readiness_probe is null: give a path such as "
                  "`/health` or a mapping with `path` (SkyServe fails on a null probe).")
    # SkyPilot's validate_schema drops null top-level values, so `replicas: null` (or
    # `ports:`, `tls:` ...) means "not set".
    raw = {k: v for k, v in raw.items() if v is not None}
    if not _schema(sec, raw):
        return None
    if "replicas" in present and "replica_policy" in present:
        ctx.error((*ROOT, "replica_policy"),
                  "Cannot specify both `replicas` and `replica_policy` in the service YAML. "
                  "Please use one of them.", key=True)
    probe = _probe(ctx, raw)
    policy = _policy(ctx, raw)
    ports = raw.get("ports")
    if isinstance(ports, float):
        # The schema's 'integer' takes 8080.0; SkyServiceSpec.from_yaml_config then asserts
        # isinstance(ports, int) and fails.
        ctx.error((*ROOT, "ports"), f"Port must be an integer, such as 8080. Got: {ports!r}")
        ports = None
    elif ports is not None and not 1 <= ports <= 65535:
        ctx.error((*ROOT, "ports"), f"Port must be between 1 and 65535. Got: {ports}")
    lb = raw.get("load_balancing_policy")
    lb = lb if isinstance(lb, str) else None
    if lb is not None and lb not in (*LB_POLICIES, *LB_EXTENSIONS):
        # The schema's enum ignores case; SkyServiceSpec's policy lookup does not.
        ctx.error((*ROOT, "load_balancing_policy"),
                  f"Unknown load balancing policy: {lb}. Available policies: "
                  f"{list(LB_POLICIES)}")
    qps = policy.target_qps_per_replica
    if isinstance(qps, dict) and lb != "instance_aware_least_load":
        ctx.error((*ROOT, "replica_policy", "target_qps_per_replica"),
                  "When using dict type target_qps_per_replica, load_balancing_policy must be "
                  "\"instance_aware_least_load\".")
    if lb == "instance_aware_least_load" and not isinstance(qps, dict):
        ctx.error((*ROOT, "load_balancing_policy"),
                  "When using \"instance_aware_least_load\" policy, target_qps_per_replica must "
                  "be a dict mapping GPU types to QPS values.")
    tls: Any = raw.get("tls")
    if ctx.failed_since(mark):
        return None
    return ServiceSpec(
        readiness_probe=probe,
        replica_policy=policy,
        load_balancing_policy=lb,
        ports=ports,
        tls=TLSConfig(keyfile=tls["keyfile"], certfile=tls["certfile"]) if tls else None,
        fixed_replicas="replicas" in raw,
        pool_false=raw.get("pool") is False,
    )
