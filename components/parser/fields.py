"""Single resources fields with SkyPilot's normalisation: infra, cpus, memory, disk, ports,
labels, image_id, job_recovery.

Each parser takes the raw YAML value and its path, reports problems through the context,
and returns the normalised value (``None`` after a problem).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from components.parser.context import Context
from components.parser.schema import stricter
from components.parser.yamlload import Path, dotted

#: SkyPilot's clouds, in its schema's order: the name a YAML gives (any case) -> the name
#: SkyPilot prints (``str`` of its ``Cloud``).
CLOUD_NAMES = {
    "aws": "AWS", "azure": "Azure", "gcp": "GCP", "ibm": "IBM", "lambda": "Lambda",
    "scp": "SCP", "oci": "OCI", "kubernetes": "Kubernetes", "runpod": "RunPod", "vast": "Vast",
    "vsphere": "vSphere", "cudo": "Cudo", "fluidstack": "Fluidstack",
    "paperspace": "Paperspace", "primeintellect": "PrimeIntellect", "do": "DO",
    "nebius": "Nebius", "ssh": "SSH", "slurm": "Slurm", "hyperbolic": "Hyperbolic",
    "seeweb": "Seeweb", "shadeform": "Shadeform",
}
CLOUDS = tuple(CLOUD_NAMES)
#: The keys of the schema's ``job_recovery`` mapping (it allows no others).
JOB_RECOVERY_KEYS = ("strategy", "max_restarts_on_errors", "recover_on_exit_codes")
DISK_TIERS = ("low", "medium", "high", "ultra", "best")
NETWORK_TIERS = ("standard", "best")
#: SkyPilot's ``MEMORY_SIZE_UNITS`` (bytes), in its order, and the schema pattern built from it.
MEMORY_SIZE_UNITS = {
    "kb": 2**10, "ki": 2**10, "mb": 2**20, "mi": 2**20, "gb": 2**30, "gi": 2**30,
    "tb": 2**40, "ti": 2**40, "pb": 2**50, "pi": 2**50,
}
MEMORY_SIZE_PATTERN = (
    "^[0-9]+("
    + "|".join(MEMORY_SIZE_UNITS) + "|"
    + "|".join(u.upper() for u in MEMORY_SIZE_UNITS) + "|"
    + "|".join(u[0].upper() + u[1:] for u in MEMORY_SIZE_UNITS)
    + ")?$"
)


def _infra_pattern() -> str:
    """SkyPilot's schema pattern for ``infra`` (``schemas._get_infra_pattern``)."""
    clouds = "|".join(c for c in CLOUDS if c != "kubernetes")
    region_zone = "(?:/[^/]+(?:/[^/]+)?)?"
    return (f"^(?:(?i:({clouds})){region_zone}|\\*{region_zone}|"
            "(?i:kubernetes|k8s)(?:/.+)?)$")


INFRA_PATTERN = _infra_pattern()


def parse_infra(
    ctx: Context, path: Path, raw: Any
) -> tuple[str | None, str | None, str | None] | None:
    """``cloud[/region[/zone]]`` with ``*`` wildcards; ``k8s`` -> ``kubernetes``, whose rest is
    the context (SkyPilot's schema pattern, then ``InfraInfo.from_str``)."""
    if not isinstance(raw, str):
        schema_error(ctx, path, f"{raw!r} is not of type 'string'")
        return None
    if not re.search(INFRA_PATTERN, raw):
        schema_error(ctx, path, f"{raw!r} does not match {INFRA_PATTERN!r}")
        return None
    parts = [p.strip() for p in raw.strip().strip("/").split("/")]
    cloud: str | None = parts[0].lower()
    region: str | None = None
    zone: str | None = None
    if cloud in ("k8s", "kubernetes"):
        cloud = "kubernetes"
        region = "/".join(parts[1:]) or None
    elif cloud == "ssh":
        region = "/".join(parts[1:]) or None
    else:
        region = parts[1] if len(parts) > 1 else None
        zone = parts[2] if len(parts) > 2 else None
    return (None if cloud == "*" else cloud, None if region == "*" else region,
            None if zone == "*" else zone)


def parse_cloud(ctx: Context, path: Path, raw: Any) -> str | None:
    """The legacy ``cloud:`` field: SkyPilot's case-insensitive enum of its clouds."""
    if not isinstance(raw, str):
        schema_error(ctx, path, f"{raw!r} is not of type 'string'")
        return None
    if raw.lower() not in CLOUDS:
        schema_error(ctx, path, f"{raw!r} is not one of {list(CLOUDS)!r}")
        return None
    return raw.lower()


def schema_error(ctx: Context, path: Path, message: str) -> None:
    """A resources JSON-schema problem, worded as SkyPilot's ``validate_schema``."""
    ctx.error(path, f"Invalid resources YAML: {message}. Check problematic field(s): "
              f"{dotted(path[1:], '$')}")


def is_number(raw: Any) -> bool:
    return isinstance(raw, int | float) and not isinstance(raw, bool)


def is_integer(raw: Any) -> bool:
    """JSON-schema (Draft 7) ``integer``: integral floats count, booleans do not."""
    return (isinstance(raw, int) and not isinstance(raw, bool)) or (
        isinstance(raw, float) and raw.is_integer())


def parse_memory_resource(text: str, field: str, *, as_float: bool, allow_plus: bool
                          ) -> str:
    """SkyPilot's ``resources_utils.parse_memory_resource``: a bare number stays as written,
    a number with a unit (kb..pb, ki..pi, any case) becomes GB; raises ``ValueError`` with
    SkyPilot's message."""
    error = f'"{field}" field should be a {MEMORY_SIZE_PATTERN}+?, got {text}'
    kind = float if as_float else int
    plus = x = ""
    if text.endswith("+"):
        if not allow_plus:
            raise ValueError(error)
        text, plus = text[:-1], "+"
    if text.endswith("x"):
        if not allow_plus:  # 'x' is allowed exactly where '+' is (memory)
            raise ValueError(error)
        text, x = text[:-1], "x"
    try:
        kind(text)
        return f"{text}{plus}{x}"
    except ValueError:
        pass
    lowered = text.lower()
    for unit, multiplier in MEMORY_SIZE_UNITS.items():
        if lowered.endswith(unit):
            try:
                value = kind(lowered[:-len(unit)])
            except ValueError:
                continue
            converted = value * multiplier / MEMORY_SIZE_UNITS["gb"]
            if kind(converted) != converted:
                continue
            return f"{kind(converted)}{plus}{x}"
    raise ValueError(error)


def _positive_finite(ctx: Context, path: Path, field: str, value: float, text: str) -> bool:
    """SkyPilot's "should be positive" check, then skyform's own: ``float()`` takes inf and
    nan, which no machine has (docs/differences.md#stricter-finite)."""
    if value <= 0:
        ctx.error(path, f'The "{field}" field should be positive. Found: {text!r}')
        return False
    if not math.isfinite(value):
        ctx.error(path, f'The "{field}" field should be a finite number. Found: {text!r}'
                  f"{stricter('stricter-finite')}")
        return False
    return True


def is_disk_size(raw: Any) -> bool:
    """The schema's anyOf for a disk size: an integer, or ``<digits>[unit]``."""
    return is_integer(raw) or (isinstance(raw, str)
                               and re.match(MEMORY_SIZE_PATTERN, raw) is not None)


def shape_ok(ctx: Context, path: Path, key: str, raw: Any) -> bool:
    """The resources schema's check of ``key`` alone (its type or pattern), reported with the
    schema's message; True for a key this does not cover. The parse functions below start
    with it, and the whole-section schema pass runs it on its own."""
    any_of = "is not valid under any of the given schemas"
    if key in ("cpus", "memory"):
        ok, said = isinstance(raw, str) or is_number(raw), any_of
    elif key == "disk_size":
        ok, said = is_disk_size(raw), any_of
    elif key in ("disk_tier", "network_tier"):
        ok, said = isinstance(raw, str), "is not of type 'string'"
    elif key == "labels":
        if isinstance(raw, dict):  # then every value a string, each reported where it is
            bad = [(k, v) for k, v in raw.items() if not isinstance(v, str)]
            for name, value in bad:
                schema_error(ctx, (*path, mapping_key(name)), f"{value!r} is not of type 'string'")
            return not bad
        ok, said = False, "is not of type 'dict'"
    else:
        return True
    if not ok:
        schema_error(ctx, path, f"{raw!r} {said}")
    return ok


def parse_cpus(ctx: Context, path: Path, raw: Any) -> str | None:
    """``str(cpus)``, as SkyPilot stores it; a string may end with ``+``."""
    if not shape_ok(ctx, path, "cpus", raw):
        return None
    text = str(raw)
    try:
        value = float(text[:-1] if text.endswith("+") else text)
    except ValueError:
        ctx.error(path, 'The "cpus" field should be either a number or a string "<number>+". '
                  f"Found: {text!r}")
        return None
    return text if _positive_finite(ctx, path, "cpus", value, text) else None


def parse_memory(ctx: Context, path: Path, raw: Any) -> str | None:
    """``16`` / ``"16+"`` stay as written; with a unit (``32GB+``) the value becomes GB as a
    float (``"32.0+"``), as SkyPilot normalises it."""
    if not shape_ok(ctx, path, "memory", raw):
        return None
    try:
        text = parse_memory_resource(str(raw), "memory", as_float=True, allow_plus=True)
    except ValueError as exc:
        ctx.error(path, str(exc))
        return None
    # Resources._set_memory: one '+' or 'x' comes off, the rest must be a number ('32x+'
    # parses to '32+x', which is not).
    try:
        value = float(text[:-1] if text.endswith(("+", "x")) else text)
    except ValueError:
        ctx.error(path, 'The "memory" field should be either a number or a string '
                  f'"<number>+". Found: {text!r}')
        return None
    return text if _positive_finite(ctx, path, "memory", value, text) else None


def parse_disk_size(ctx: Context, path: Path, raw: Any) -> int | None:
    """GB as an int: an integer, or a string ``<digits>[unit]`` (``1TB`` -> 1024)."""
    if not shape_ok(ctx, path, "disk_size", raw):
        return None
    try:
        value = int(parse_memory_resource(str(raw), "disk_size", as_float=False,
                                          allow_plus=False))
    except ValueError as exc:
        ctx.error(path, str(exc))
        return None
    if value <= 0:
        ctx.error(path, f"disk_size should be positive. Found: {raw!r}{stricter('stricter-disk')}")
        return None
    return value


def parse_tier(ctx: Context, path: Path, raw: Any, kind: str) -> str | None:
    options = DISK_TIERS if kind == "disk_tier" else NETWORK_TIERS
    if not shape_ok(ctx, path, kind, raw):
        return None
    if raw.lower() in options:
        return raw.lower()
    label = "Disk tier" if kind == "disk_tier" else "Network tier"
    ctx.error(path, f"Invalid {kind} {raw.lower()!r}. {label} must be one of "
              f"{', '.join(options)}.")
    return None


_PORT_HINT = "Invalid port {}. Please use a port number between 1 and 65535."
_PORT_RANGE_HINT = ('Invalid port range {}. Please use the format "from-to", in which '
                    'from <= to. e.g. "1-3".')


def _one_port(ctx: Context, path: Path, item: str) -> tuple[int, int] | None:
    """SkyPilot's ``check_port_str`` / ``check_port_range_str`` on ``str(port)``."""
    if item.isdigit():
        if not 1 <= int(item) <= 65535:
            ctx.error(path, _PORT_HINT.format(item))
            return None
        return int(item), int(item)
    bounds = item.split("-")
    if len(bounds) != 2:
        ctx.error(path, _PORT_RANGE_HINT.format(item))
        return None
    for bound in bounds:
        if not bound.isdigit() or not 1 <= int(bound) <= 65535:
            ctx.error(path, _PORT_HINT.format(bound))
            return None
    lo, hi = int(bounds[0]), int(bounds[1])
    if lo > hi:
        ctx.error(path, _PORT_RANGE_HINT.format(item))
        return None
    return lo, hi


def parse_ports(ctx: Context, path: Path, raw: Any) -> tuple[str, ...] | None:
    """Sorted, merged ranges as strings: ``[8080, 8081]`` -> ``("8080-8081",)``."""
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(i, str) or is_integer(i) for i in items):
        schema_error(ctx, path, f"{raw!r} is not valid under any of the given schemas")
        return None
    ranges: list[tuple[int, int]] = []
    ok = True
    for i, item in enumerate(items):
        got = _one_port(ctx, (*path, i) if isinstance(raw, list) else path, str(item))
        if got is None:
            ok = False
        else:
            ranges.append(got)
    if not ok:
        return None
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merged)


#: SkyPilot's ``TIME_UNITS`` (minutes) and the schema pattern of an autostop time.
TIME_UNITS = {"m": 1, "h": 60, "d": 24 * 60, "w": 7 * 24 * 60}
TIME_PATTERN = f"^[0-9]+({'|'.join([*TIME_UNITS, *(u.upper() for u in TIME_UNITS)])})?$"
AUTOSTOP_WAIT_FOR = ("jobs_and_ssh", "jobs", "none")


def autostop_shape_ok(raw: Any) -> bool:
    """The schema's anyOf for ``autostop``: a boolean, a time (``10``, ``"2h"``), or a
    mapping of idle_minutes, down, wait_for, hook, hook_timeout."""
    if isinstance(raw, bool) or is_integer(raw):
        return True
    if isinstance(raw, str):
        return re.match(TIME_PATTERN, raw) is not None
    if not isinstance(raw, dict) or not set(raw) <= {"idle_minutes", "down", "wait_for", "hook",
                                                       "hook_timeout"}:
        return False
    idle, timeout = raw.get("idle_minutes", 0), raw.get("hook_timeout", 1)
    wait_for = raw.get("wait_for", "none")
    return (is_integer(idle) and idle >= 0 and isinstance(raw.get("down", False), bool)
            and isinstance(wait_for, str) and wait_for.lower() in AUTOSTOP_WAIT_FOR
            and isinstance(raw.get("hook", ""), str) and is_integer(timeout) and timeout >= 1)


def parse_autostop(raw: Any) -> dict[str, Any] | Literal[False] | None:
    """``AutostopConfig.from_yaml_config`` then ``to_yaml_config`` on a value of the right
    shape: ``false`` stays False, anything else is a mapping with idle_minutes and down."""
    if isinstance(raw, bool):
        return {"idle_minutes": 0, "down": False} if raw else False
    if isinstance(raw, int):
        return {"idle_minutes": raw, "down": False}
    if isinstance(raw, str):
        if raw.isdecimal():
            return {"idle_minutes": int(raw), "down": False}
        value, unit = raw[:-1], raw[-1].lower()
        return {"idle_minutes": int(value) * TIME_UNITS[unit], "down": False}
    if isinstance(raw, dict):
        out: dict[str, Any] = {"idle_minutes": raw.get("idle_minutes", 0),
                               "down": raw.get("down", False)}
        if "wait_for" in raw:
            out["wait_for"] = raw["wait_for"].lower()
        for key in ("hook", "hook_timeout"):
            if key in raw:
                out[key] = raw[key]
        return out
    return None  # an integral float passes the schema and SkyPilot then ignores it


def mapping_key(key: Any) -> str:
    """A YAML mapping key as text: ``1:`` is ``"1"``, ``true:`` ``"true"`` (JSON's spelling,
    which SkyPilot's serialised spec shows). The schema checks only the values of such a
    mapping, so SkyPilot takes a key that is not a string."""
    return key if isinstance(key, str) else json.dumps(key, default=str)


def text_keys(mapping: dict[Any, Any]) -> dict[str, Any]:
    """``mapping`` with every key as ``mapping_key`` writes it."""
    return {mapping_key(key): value for key, value in mapping.items()}


def parse_labels(ctx: Context, path: Path, raw: Any) -> dict[str, str] | None:
    if raw is None or not shape_ok(ctx, path, "labels", raw):
        return None
    return text_keys(raw)


def parse_image_id(
    ctx: Context, path: Path, raw: Any, region: str | None, cloud: str | None
) -> dict[str | None, str] | None:
    """``{region or None: image}``, stripped, as SkyPilot stores it.

    A mapping with a ``null`` key means "any region" and is narrowed to that one entry, keyed
    by the candidate's region. On Kubernetes an image without ``docker:`` gets the prefix.
    """
    if raw is None:
        return None
    image: dict[str | None, str]
    if isinstance(raw, str):
        image = {region: raw.strip()}
    elif isinstance(raw, dict) and all(
        (k is None or isinstance(k, str)) and isinstance(v, str) for k, v in raw.items()
    ):
        if None in raw:
            image = {region: raw[None].strip()}
        else:
            image = {str(k).strip(): v.strip() for k, v in raw.items()}
    else:
        ctx.error(path, "image_id should be a string (an image, or docker:<image>) or a mapping "
                  f"of region to image. Found: {raw!r}")
        return None
    if cloud == "kubernetes":
        image = {k: v if v.startswith("docker:") else f"docker:{v}" for k, v in image.items()}
    return image


def parse_job_recovery(ctx: Context, path: Path, raw: Any) -> dict[str, Any] | None:
    """``'none'`` (or null) means unset; the strategy is upper-cased."""
    if raw is None:
        return None
    if isinstance(raw, str):
        # SkyPilot compares with 'none' exactly: 'NONE' is upper-cased and kept.
        return None if raw == "none" else {"strategy": raw.upper()}
    if isinstance(raw, dict):
        out = dict(raw)
        strategy = out.get("strategy")
        if isinstance(strategy, str):
            if strategy == "none":
                return None
            out["strategy"] = strategy.upper()
        return out
    ctx.error(path, f"job_recovery should be a string or a mapping. Found: {raw!r}")
    return None
