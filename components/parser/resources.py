"""``resources:``: the schema, ``any_of`` / ``ordered`` overrides and accelerator expansion into
candidates (one accelerator type and count each).

A set of accelerators with ``any_of`` gives their cross product (override-major, as SkyPilot
lists them); a list of accelerators is a preference order and cannot be combined with
``any_of`` or ``ordered``. Each candidate remembers where each of its fields was written so
later (serving) checks can point at the right line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from components.parser import fields
from components.parser.accelerators import group_base_names, parse_accelerators
from components.parser.context import Context
from components.parser.schema import Section, as_int
from components.parser.yamlload import Path
from components.spec import Candidate
from lb_agent.contract import constants

ROOT: Path = ("resources",)
PUBLIC_KEYS = (
    "infra", "cloud", "region", "zone", "accelerators", "gpus", "accelerator_args", "cpus",
    "memory", "instance_type", "use_spot", "job_recovery", "disk_size", "disk_tier",
    "network_tier", "ports", "labels", "image_id", "autostop", "priority", "volumes",
    "any_of", "ordered",
)
#: SkyPilot-internal keys it accepts (and skyform ignores).
PRIVATE_KEYS = (
    "_docker_login_config", "_docker_username_for_runpod", "_is_image_managed",
    "_requires_fuse", "_cluster_config_overrides", "_no_missing_accel_warnings",
)
KEYS = PUBLIC_KEYS + PRIVATE_KEYS
ITEM_KEYS = tuple(k for k in KEYS if k not in ("any_of", "ordered"))
#: ``accelerator_args`` keys and their schema types.
ACCELERATOR_ARGS = {"runtime_version": "string", "tpu_name": "string", "tpu_vm": "boolean",
                    "gcp_queued_resource": "boolean"}
#: TPU names that live on GKE (SkyPilot's GKE_TPU_ACCELERATOR_TO_GENERATION, matched exactly).
GKE_TPU_NAMES = frozenset({
    "tpu-v4-podslice", "tpu-v5-lite-device", "tpu-v5-lite-podslice", "tpu-v5p-slice",
    "tpu-v6e-slice",
})


@dataclass(frozen=True)
class Located:
    """A candidate and the path where each of its fields was written."""

    candidate: Candidate
    origin: dict[str, Path]
    #: The mapping the candidate came from (``resources`` or ``resources.any_of[i]``).
    path: Path

    def at(self, field: str) -> Path:
        return self.origin.get(field, self.path)


def _dealias(ctx: Context, mapping: dict[str, Any], path: Path) -> dict[str, Any]:
    """SkyPilot's ``_apply_resource_config_aliases``: ``gpus`` becomes ``accelerators``."""
    if "gpus" not in mapping:
        return mapping
    if "accelerators" in mapping:
        ctx.error((*path, "gpus"), "Cannot specify both gpus and accelerators in config.",
                  key=True)
        return {k: v for k, v in mapping.items() if k != "gpus"}
    return {("accelerators" if k == "gpus" else k): v for k, v in mapping.items()}


def _key_path(mapping: dict[str, Any], path: Path, key: str) -> Path:
    """Where ``key`` was written (``gpus`` when the alias was used)."""
    if key == "accelerators" and "gpus" in mapping and "accelerators" not in mapping:
        return (*path, "gpus")
    return (*path, key)


def _merge(
    raw_base: dict[str, Any], base: dict[str, Any], item: tuple[dict[str, Any], dict[str, Any],
                                                                 Path] | None
) -> tuple[dict[str, Any], dict[str, Path]]:
    merged = dict(base)
    origin: dict[str, Path] = {k: _key_path(raw_base, ROOT, k) for k in base}
    if item is not None:
        raw_item, item_spec, item_path = item
        for key, value in item_spec.items():
            if key == "labels" and isinstance(value, dict) and isinstance(base.get("labels"), dict):
                merged["labels"] = {**base["labels"], **value}
            else:
                merged[key] = value
            origin[key] = _key_path(raw_item, item_path, key)
    return merged, origin


def _exit_code(value: Any) -> bool:
    return fields.is_integer(value) and 0 <= value <= 255


def _job_recovery_shape(value: Any) -> bool:
    """The dict branch of the schema's ``job_recovery`` (``additionalProperties: false``)."""
    if not isinstance(value, dict) or not set(value) <= set(fields.JOB_RECOVERY_KEYS):
        return False
    strategy = value.get("strategy")
    restarts = value.get("max_restarts_on_errors", 0)
    codes = value.get("recover_on_exit_codes", 0)
    codes_ok = _exit_code(codes) or (
        isinstance(codes, list) and all(_exit_code(c) for c in codes)
        and len({float(c) for c in codes}) == len(codes))
    return ((strategy is None or isinstance(strategy, str))
            and fields.is_integer(restarts) and restarts >= 0 and codes_ok)


def _any_of_shapes(sec: Section, mapping: dict[str, Any], path: Path, *, top: bool,
                   written: dict[str, Any] | None = None) -> None:
    """The anyOf fields of ``get_resources_schema`` (``top``) or of one ``any_of`` /
    ``ordered`` item: a value matching no branch gets jsonschema's anyOf message, as
    ``Resources.from_yaml_config`` reports it, before the field is interpreted.
    ``mapping`` has its aliases applied (``gpus`` is ``accelerators``, as the schema sees
    it); ``written`` is the mapping as written, to locate the alias."""
    acc = mapping.get("accelerators")
    if top and acc is not None and not (
            isinstance(acc, str)
            or (isinstance(acc, list) and all(isinstance(a, str) for a in acc))
            or (isinstance(acc, dict)
                and all(v is None or fields.is_number(v) for v in acc.values()))):
        sec.any_of_fail(acc, (*path, "accelerators"),
                        "a string, a list of strings, or a mapping of name to count",
                        at=_key_path(written or mapping, path, "accelerators"))
    image = mapping.get("image_id")
    if image is not None and not isinstance(image, str | dict):  # null is a branch too
        sec.any_of_fail(image, (*path, "image_id"), "an image, or a mapping of region to image")
    autostop = mapping.get("autostop")
    if autostop is not None and not fields.autostop_shape_ok(autostop):
        sec.any_of_fail(autostop, (*path, "autostop"),
                        "true or false, minutes (10, '2h'), or a mapping of idle_minutes, "
                        "down, wait_for, hook and hook_timeout")
    recovery = mapping.get("job_recovery")
    if (recovery is not None or ("job_recovery" in mapping and not top)) \
            and not isinstance(recovery, str) and not _job_recovery_shape(recovery):
        sec.any_of_fail(recovery, (*path, "job_recovery"),
                        "a strategy name, or a mapping of strategy, max_restarts_on_errors "
                        "(an integer >= 0) and recover_on_exit_codes (0-255, or a list of "
                        "distinct ones)")


def _typed_fields(sec: Section, spec: dict[str, Any], origin: dict[str, Path]) -> bool:
    mark = sec.ctx.mark()
    for key in ("instance_type", "region", "zone"):
        if spec.get(key) is not None:
            sec.typed(spec[key], origin[key], "string")
    if spec.get("use_spot") is not None:
        sec.typed(spec["use_spot"], origin["use_spot"], "boolean")
    volumes = spec.get("volumes")
    if volumes is not None and sec.typed(volumes, origin["volumes"], "array"):
        for i, volume in enumerate(volumes):
            sec.typed(volume, (*origin["volumes"], i), "object")
    priority = spec.get("priority")
    if priority is not None and sec.typed(priority, origin["priority"], "integer") \
            and sec.minimum(priority, origin["priority"], -1000) and priority > 1000:
        sec.schema_fail(origin["priority"], f"{priority!r} is greater than the maximum of 1000")
    return not sec.ctx.failed_since(mark)


def _base_schema(ctx: Context, sec: Section, raw: dict[str, Any], base: dict[str, Any]) -> None:
    """The schema checks of ``base`` (fields of the section itself), which SkyPilot runs on
    the whole section before anything else; the candidates run them again on the fields
    they carry (a repeated problem is reported once)."""
    present = {k: v for k, v in base.items() if v is not None}
    origin = {k: _key_path(raw, ROOT, k) for k in present}
    _typed_fields(sec, present, origin)
    for key, value in present.items():
        fields.shape_ok(ctx, origin[key], key, value)
    if "infra" in present:
        fields.parse_infra(ctx, origin["infra"], present["infra"])
    if "cloud" in present:
        fields.parse_cloud(ctx, origin["cloud"], present["cloud"])


def _place_name(value: Any) -> str | None:
    """A region or zone as written; an empty one (or a non-string) names none, as
    SkyPilot's infra drops it."""
    return value if isinstance(value, str) and value else None


def _candidates(
    ctx: Context, sec: Section, spec: dict[str, Any], origin: dict[str, Path], path: Path
) -> tuple[list[Located], bool] | None:
    mark = ctx.mark()
    typed = _typed_fields(sec, spec, origin)
    accs = parse_accelerators(ctx, origin.get("accelerators", path), spec.get("accelerators"))
    cloud = region = zone = None
    if "infra" in spec and spec["infra"] is not None:
        legacy = [k for k in ("cloud", "region", "zone") if spec.get(k) is not None]
        got = fields.parse_infra(ctx, origin["infra"], spec["infra"])
        legacy_cloud = (fields.parse_cloud(ctx, origin["cloud"], spec["cloud"])
                        if spec.get("cloud") is not None else None)
        schema_ok = got is not None and (spec.get("cloud") is None or legacy_cloud is not None)
        if legacy and typed and schema_ok:
            # SkyPilot's schema passed, so Resources() refuses the pair, naming its cloud.
            shown = fields.CLOUD_NAMES[legacy_cloud] if legacy_cloud else None
            ctx.error(origin[legacy[0]], "Cannot specify both `infra` and `cloud`, `region`, or "
                      f"`zone` parameters. Got: infra={spec['infra']}, cloud={shown}, "
                      f"region={spec.get('region')}, zone={spec.get('zone')}")
        if got is not None:
            cloud, region, zone = got
    else:
        if spec.get("cloud") is not None:
            cloud = fields.parse_cloud(ctx, origin["cloud"], spec["cloud"])
        region, zone = _place_name(spec.get("region")), _place_name(spec.get("zone"))
    cpus = memory = None
    if spec.get("cpus") is not None:
        cpus = fields.parse_cpus(ctx, origin["cpus"], spec["cpus"])
    if spec.get("memory") is not None:
        memory = fields.parse_memory(ctx, origin["memory"], spec["memory"])
    disk_size: int | None = constants.DEFAULT_DISK_SIZE_GB
    if spec.get("disk_size") is not None:
        disk_size = fields.parse_disk_size(ctx, origin["disk_size"], spec["disk_size"])
    disk_tier = network_tier = None
    if spec.get("disk_tier") is not None:
        disk_tier = fields.parse_tier(ctx, origin["disk_tier"], spec["disk_tier"], "disk_tier")
    if spec.get("network_tier") is not None:
        network_tier = fields.parse_tier(ctx, origin["network_tier"], spec["network_tier"],
                                         "network_tier")
    ports = fields.parse_ports(ctx, origin.get("ports", path), spec.get("ports"))
    labels = fields.parse_labels(ctx, origin.get("labels", path), spec.get("labels"))
    image = fields.parse_image_id(ctx, origin.get("image_id", path), spec.get("image_id"),
                                  region, cloud)
    recovery = fields.parse_job_recovery(ctx, origin.get("job_recovery", path),
                                         spec.get("job_recovery"))
    acc_args = spec.get("accelerator_args")
    if acc_args is not None and sec.typed(acc_args, origin["accelerator_args"], "object"):
        sec.unknown_keys(acc_args, origin["accelerator_args"], tuple(ACCELERATOR_ARGS))
        for key, kind in ACCELERATOR_ARGS.items():
            if acc_args.get(key) is not None:
                sec.typed(acc_args[key], (*origin["accelerator_args"], key), kind)
    if ctx.failed_since(mark) or accs is None or disk_size is None or ports is None:
        return None
    names, ordered = accs
    base = Candidate(
        cloud=cloud, region=region, zone=zone, cpus=cpus, memory=memory,
        instance_type=spec.get("instance_type"), use_spot=spec.get("use_spot"),
        disk_size=disk_size, disk_tier=disk_tier, network_tier=network_tier, ports=ports,
        labels=labels, image_id=image, job_recovery=recovery,
        accelerator_args=dict(acc_args) if isinstance(acc_args, dict) else None,
        # (a bad priority was reported at the first candidate; a later one sees no new error)
        priority=as_int(spec["priority"]) if fields.is_integer(spec.get("priority")) else None,
        autostop=(fields.parse_autostop(spec["autostop"])
                  if spec.get("autostop") is not None else None),
    )
    if not names:
        return [Located(base, origin, path)], False
    out: list[Located] = []
    for name, count in names:
        candidate = _with_accelerator(ctx, origin, path, base, name, count)
        if candidate is not None:
            out.append(Located(candidate, origin, path))
    if ctx.failed_since(mark):
        return None
    return out, ordered


def _tpu_runtime_version(name: str, tpu_vm: bool) -> str:
    """SkyPilot's default ``runtime_version`` for a Cloud TPU."""
    if not tpu_vm:
        return "2.12.0"
    if name.startswith("tpu-v5"):
        return "v2-alpha-tpuv5"
    if name.startswith("tpu-v6e"):
        return "v2-alpha-tpuv6e"
    return "tpu-vm-base"


def _with_accelerator(
    ctx: Context, origin: dict[str, Path], path: Path, base: Candidate, name: str, count: float
) -> Candidate | None:
    """``base`` with one accelerator; a TPU name picks its cloud and fills TPU defaults.

    As SkyPilot does: a GKE TPU name (``tpu-v5-lite-podslice``) means Kubernetes, any other
    name containing ``tpu`` means GCP; another cloud is an error. A Cloud TPU (GCP) gets a
    default ``runtime_version`` and, as a TPU VM, cannot name an instance type.
    """
    if "tpu" not in name.lower():
        return dataclasses.replace(base, accelerator=name, accelerator_count=count)
    on_gke = name in GKE_TPU_NAMES
    cloud = base.cloud or ("kubernetes" if on_gke else "gcp")
    if cloud not in ("gcp", "kubernetes"):
        where = "infra" if "infra" in origin else "cloud"
        ctx.error(origin.get(where, path), "Cloud must be GCP or Kubernetes for TPU "
                  f"accelerators. Found {name!r} on {cloud}.")
        return None
    args = dict(base.accelerator_args or {})
    if cloud == "gcp" and not on_gke:
        tpu_vm = args.get("tpu_vm", True)
        args.setdefault("runtime_version", _tpu_runtime_version(name, bool(tpu_vm)))
        if base.instance_type is not None and tpu_vm and base.instance_type != "TPU-VM":
            ctx.error(origin.get("instance_type", path), "Cannot specify instance type (got "
                      f"{base.instance_type!r}) for TPU VM.")
            return None
    return dataclasses.replace(base, accelerator=name, accelerator_count=count, cloud=cloud,
                               accelerator_args=args)


def parse_resources(ctx: Context, raw: Any) -> tuple[list[Located], bool] | None:
    """The candidates and whether their order is a preference; ``None`` after a problem."""
    if raw is None:
        return [Located(Candidate(), {}, ROOT)], False
    sec = Section(ctx, "Invalid resources YAML: ", ROOT)
    if not isinstance(raw, dict):  # the task schema's error (task._top_level)
        return None
    start = ctx.mark()
    # Unknown keys are reported but do not stop the field checks; the candidates are then
    # not used for the serving checks (they would only repeat the same mistake).
    sec.unknown_keys(raw, ROOT, KEYS)
    mark = ctx.mark()
    group_key = "any_of" if "any_of" in raw else "ordered" if "ordered" in raw else None
    items: list[tuple[dict[str, Any], Path]] = []
    for key in ("any_of", "ordered"):
        if key not in raw:
            continue
        gpath = (*ROOT, key)
        group = raw[key]
        if sec.typed(group, gpath, "array"):
            for i, item in enumerate(group):
                ipath = (*gpath, i)
                if sec.typed(item, ipath, "object"):
                    unknown = sec.ctx.mark()
                    sec.unknown_keys(item, ipath, ITEM_KEYS)
                    mark += sec.ctx.mark() - unknown
                    if key == group_key:
                        items.append((item, ipath))
    if "any_of" in raw and "ordered" in raw and not ctx.failed_since(mark):
        # The schema allows both; Resources.from_yaml_config does not.
        ctx.error((*ROOT, "ordered"),
                  'Cannot specify both "any_of" and "ordered" in resources.', key=True)
    base_spec = _dealias(ctx, raw, ROOT)
    _any_of_shapes(sec, base_spec, ROOT, top=True, written=raw)
    dealiased: list[tuple[dict[str, Any], dict[str, Any], Path]] = []
    for item, ipath in items:
        _any_of_shapes(sec, item, ipath, top=False)
        spec = _dealias(ctx, item, ipath)
        acc = spec.get("accelerators")
        if acc is not None and not (isinstance(acc, str) or (
                isinstance(acc, dict) and len(acc) <= 1
                and all(fields.is_number(v) for v in acc.values()))):
            fields.schema_error(ctx, _key_path(item, ipath, "accelerators"),
                                f"{acc!r} is not valid under any of the given schemas")
        dealiased.append((item, spec, ipath))
    acc_raw = base_spec.get("accelerators")
    # An empty any_of/ordered list is no group at all (SkyPilot tests it for truth).
    if items and acc_raw is not None:
        at = _key_path(raw, ROOT, "accelerators")
        # SkyPilot reads the base's accelerators even where every item overrides them, but
        # only a memory selector or three parts is checked there (a problem is reported once:
        # a candidate's own parse repeats it unseen).
        names = group_base_names(ctx, at, acc_raw)
        count = len(names) if names is not None else 0
        if count > 1 and group_key == "ordered":
            ctx.error(at, 'Cannot specify multiple "accelerators" with "ordered" in resources.')
        elif count > 1 and isinstance(acc_raw, list):
            ctx.error(at, 'Cannot specify multiple "accelerators" with preferred order (i.e., '
                      'list of accelerators) with "any_of" in resources.')
    if ctx.failed_since(mark):
        _base_schema(ctx, sec, raw, base_spec)  # beside the problem that stops the candidates
        return None
    # A base field every item overrides reaches no candidate; SkyPilot's schema checks it.
    _base_schema(ctx, sec, raw, {k: v for k, v in base_spec.items()
                                 if dealiased and all(k in spec for _, spec, _ in dealiased)})
    unknown_keys = ctx.mark() - start
    base = {k: v for k, v in base_spec.items() if k not in ("any_of", "ordered")}
    if not items:
        merged, origin = _merge(raw, base, None)
        single = _candidates(ctx, sec, merged, origin, ROOT)
        return None if unknown_keys else single
    out: list[Located] = []
    ok = True
    for item, spec, ipath in dealiased:
        merged, origin = _merge(raw, base, (item, spec, ipath))
        got = _candidates(ctx, sec, merged, origin, ipath)
        if got is None:
            ok = False
        else:
            out.extend(got[0])
    if not ok or unknown_keys:
        return None
    return out, group_key == "ordered"
