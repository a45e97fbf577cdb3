"""The checks ``sky serve up`` adds once task and service parse: the replica port, spot
consistency, on-demand fallback and spot placer needing spot, and ``job_recovery`` being
forbidden. Messages are SkyServe's.
"""

from __future__ import annotations

import json

from components.parser.context import Context
from components.parser.resources import Located
from components.spec import ServiceSpec

#: What ``serve_utils.validate_service_task`` says of a replica without exactly one port when
#: ``service.ports`` is unset; the CLI's own port check runs first with its own words, so the
#: messages below carry the CLI's sentence and then this one (SkyServe reports both).
ONE_PORT = (
    "To open multiple ports on the replica, please set the `service.ports` field to specify a "
    "main service port. Must only specify one port in resources otherwise. Each replica will "
    "use the port specified as application ingress port."
)
MULTIPLE_PORTS = (
    "Multiple ports specified in resources. Please specify the main port in the "
    "`service.ports` field. " + ONE_PORT
)
NO_PORTS = (
    "Must specify at least one ports in resources. Each replica will use the port specified "
    "as application ingress port if only one port is specified in the replica resources. If "
    "there are multiple ports opened in the replica, please set the `service.ports` field in "
    "the service config. " + ONE_PORT
)


def service_port(ctx: Context, spec: ServiceSpec, cands: list[Located]) -> int | None:
    """The port the load balancer sends traffic to (the CLI's port rules)."""
    if spec.ports is not None:
        ok = True
        for located in cands:
            numbers = located.candidate.port_numbers()
            if not numbers:
                ctx.error(located.at("ports"),
                          "Must specify at least one ports in every replica resources.")
                ok = False
            elif spec.ports not in numbers:
                ctx.error(located.at("ports"),
                          f"The service port {spec.ports} specified in the service section is "
                          "not found in some resources. Please check if the service port is "
                          "correct or add the service port to replica resources.")
                ok = False
        return spec.ports if ok else None
    found: int | None = None
    for located in cands:
        numbers = located.candidate.port_numbers()
        if not numbers:
            ctx.error(located.at("ports"), NO_PORTS)
            return None
        if len(numbers) > 1:
            ctx.error(located.at("ports"), MULTIPLE_PORTS)
            return None
        if found is not None and numbers[0] != found:
            ctx.error(located.at("ports"),
                      f"Got multiple ports: {found} and {numbers[0]} in different resources. "
                      "Please specify the same port in all replicas, or explicitly set the "
                      "service port in the `service.ports` section. "
                      f"Got multiple ports: {numbers[0]} and {found} in different resources. "
                      "Please specify the same port instead.")
            return None
        found = numbers[0]
    return found


def check_serving(ctx: Context, spec: ServiceSpec, cands: list[Located]) -> None:
    """``serve_utils.validate_service_task``: spot, fallback, spot placer, job_recovery."""
    spots = {bool(c.candidate.use_spot) for c in cands}
    if len(spots) > 1:
        first_on_demand = next(c for c in cands if not c.candidate.use_spot)
        ctx.error(first_on_demand.at("use_spot"),
                  "Resources must either all use spot or none use spot. To use on-demand and "
                  "spot instances together, use `dynamic_ondemand_fallback` or set "
                  "base_ondemand_fallback_replicas.")
    policy = spec.replica_policy
    not_spot = [c for c in cands if not c.candidate.use_spot]
    if policy.use_ondemand_fallback and not_spot and len(spots) == 1:
        ctx.error(not_spot[0].at("use_spot"),
                  "`use_ondemand_fallback` is only supported for spot resources. Please "
                  "explicitly specify `use_spot: true` in resources for on-demand fallback.")
    if policy.spot_placer is not None:
        if not_spot and len(spots) == 1:
            ctx.error(("service", "replica_policy", "spot_placer"),
                      "`spot_placer` is only supported for spot resources. Please explicitly "
                      "specify `use_spot: true` in resources.")
        shapes = {
            json.dumps({k: v for k, v in c.candidate.to_json().items() if k != "infra"},
                       sort_keys=True, default=str)
            for c in cands
        }
        if len(shapes) > 1:
            ctx.error(("service", "replica_policy", "spot_placer"),
                      "Different resource configurations are not supported for spot "
                      "placement. All resources must have the same configuration except for "
                      "cloud/region/zone.")
    replacement = "on-demand" if policy.dynamic_ondemand_fallback else "spot"
    for located in cands:
        if located.candidate.job_recovery is not None:
            ctx.error(located.at("job_recovery"),
                      "job_recovery is disabled for SkyServe. SkyServe will replenish preempted "
                      f"spot with {replacement} instances.")
            break
