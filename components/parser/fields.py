"""Single resources fields with SkyPilot's normalisation: infra, cpus, memory, disk, ports,
labels, image_id, job_recovery.

Each parser takes the raw YAML value and its path, reports problems through the context,
and returns the normalised value (``None`` after a problem).
"""

from __future__ import annotations

import math
import re
from typing import Any

from components.parser.context import Context
from components.parser.yamlload import Path

CLOUDS = (
    "aws", "azure", "gcp", "ibm", "lambda", "scp", "oci", "kubernetes", "runpod", "vast",
    "vsphere", "cudo", "fluidstack", "paperspace", "primeintellect", "do", "nebius", "ssh",
    "slurm", "hyperbolic", "seeweb", "shadeform",
)
DISK_TIERS = ("low", "medium", "high", "ultra", "best")
NETWORK_TIERS = ("standard", "best")
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
_PLUS_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(\+?)\s*$")
# Units to GB (SkyPilot's parse_memory_resource: k/m/g/t/p with b or i, any case).
_UNITS = {
    "kb": 1 / 1024 / 1024, "mb": 1 / 1024, "gb": 1, "tb": 1024, "pb": 1024 * 1024,
    "ki": 1 / 1024 / 1024, "mi": 1 / 1024, "gi": 1, "ti": 1024, "pi": 1024 * 1024,
    "k": 1 / 1024 / 1024, "m": 1 / 1024, "g": 1, "t": 1024, "p": 1024 * 1024,
}
_WITH_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]{1,2})\s*(\+?)\s*$")


def _fmt(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def parse_infra(
    ctx: Context, path: Path, raw: Any
) -> tuple[str | None, str | None, str | None] | None:
    """``cloud[/region[/zone]]`` with ``*`` wildcards; ``k8s`` -> ``kubernetes``, whose rest is
    the context."""
    if not isinstance(raw, str):
        ctx.error(path, f"infra should be a string such as 'aws/us-east-1'. Found: {raw!r}")
        return None
    text = raw.strip()
    if not text:
        ctx.error(path, "infra should not be empty: use e.g. 'aws', 'gcp/us-central1', 'k8s'.")
        return None
    head, _, rest = text.partition("/")
    cloud = head.lower()
    if cloud == "k8s":
        cloud = "kubernetes"
    if cloud == "kubernetes":
        if rest == "" and text.endswith("/"):
            ctx.error(path, f"Invalid infra {raw!r}: empty Kubernetes context after '/'.")
            return None
        return "kubernetes", (rest or None), None
    parts = [cloud, *rest.split("/")] if rest or text.endswith("/") else [cloud]
    if len(parts) > 3 or any(p == "" for p in parts):
        ctx.error(path, f"Invalid infra {raw!r}: expected cloud, cloud/region or "
                  "cloud/region/zone, with '*' for any, and no empty parts.")
        return None
    if cloud != "*" and cloud not in CLOUDS:
        ctx.error(path, f"Invalid cloud {head!r} in infra {raw!r}. Valid clouds: "
                  f"{', '.join(CLOUDS)}.")
        return None
    out = [None if p == "*" else p for p in parts] + [None] * (3 - len(parts))
    return out[0], out[1], out[2]


def parse_cloud(ctx: Context, path: Path, raw: Any) -> str | None:
    if not isinstance(raw, str) or raw.lower() not in (*CLOUDS, "k8s"):
        ctx.error(path, f"Invalid cloud {raw!r}. Valid clouds: {', '.join(CLOUDS)}.")
        return None
    return "kubernetes" if raw.lower() == "k8s" else raw.lower()


def parse_cpus(ctx: Context, path: Path, raw: Any) -> str | None:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        text = str(raw)
    elif isinstance(raw, str):
        text = raw.strip()
    else:
        text = None
    match = _PLUS_NUMBER.match(text) if text is not None else None
    if match is None:
        ctx.error(path, 'The "cpus" field should be either a number or a string "<number>+". '
                  f"Found: {raw!r}")
        return None
    if not 0 < float(match.group(1)) < float("inf"):
        ctx.error(path, f'The "cpus" field should be positive. Found: {raw!r}')
        return None
    assert text is not None
    return text


def parse_memory(ctx: Context, path: Path, raw: Any) -> str | None:
    """``16`` / ``"16+"`` stay as written; with a unit (``32GB+``) the value becomes GB as a
    float (``"32.0+"``), as SkyPilot normalises it."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value, text = float(raw), str(raw)
    elif isinstance(raw, str) and _PLUS_NUMBER.match(raw):
        value, text = float(_PLUS_NUMBER.match(raw).group(1)), raw.strip()  # type: ignore[union-attr]
    elif isinstance(raw, str) and (m := _WITH_UNIT.match(raw)) and m.group(2).lower() in _UNITS:
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
        text = f"{value!r}{m.group(3)}"
    else:
        ctx.error(path, 'The "memory" field should be a number of GB or a string such as '
                  f'"16", "16+", "32GB+" (units kb, mb, gb, tb, pb). Found: {raw!r}')
        return None
    if not value > 0 or not math.isfinite(value):
        ctx.error(path, f'The "memory" field should be a positive number. Found: {raw!r}')
        return None
    return text


def parse_disk_size(ctx: Context, path: Path, raw: Any) -> int | None:
    """GB as an int; strings may carry a unit (``1TB`` -> 1024)."""
    if isinstance(raw, float) and math.isfinite(raw) and not raw.is_integer():
        ctx.error(path, f"disk_size should be a whole number of GB. Found: {raw!r}")
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str) and (m := _NUMBER.match(raw)):
        value = float(m.group(1))
    elif isinstance(raw, str) and (m := _WITH_UNIT.match(raw)) and not m.group(3) \
            and m.group(2).lower() in _UNITS and len(m.group(2)) == 2:
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        ctx.error(path, "disk_size should be a number of GB or a string such as '100', "
                  f"'100GB', '1TB' (units kb, mb, gb, tb, pb, ki, mi, gi, ti, pi). Found: {raw!r}")
        return None
    if not value > 0 or not math.isfinite(value):
        ctx.error(path, f"disk_size should be positive. Found: {raw!r}")
        return None
    return math.ceil(value - 1e-9)


def parse_tier(ctx: Context, path: Path, raw: Any, kind: str) -> str | None:
    options = DISK_TIERS if kind == "disk_tier" else NETWORK_TIERS
    if isinstance(raw, str) and raw.lower() in options:
        return raw.lower()
    label = "Disk tier" if kind == "disk_tier" else "Network tier"
    ctx.error(path, f"Invalid {kind} {raw!r}. {label} must be one of {', '.join(options)}.")
    return None


def _one_port(ctx: Context, path: Path, item: Any) -> tuple[int, int] | None:
    if isinstance(item, int) and not isinstance(item, bool):
        lo = hi = item
    elif isinstance(item, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", item):
        first, _, second = item.partition("-")
        lo, hi = int(first), int(second or first)
    else:
        ctx.error(path, f"Invalid port {item!r}: use a port number such as 8080 or a range "
                  "such as '8000-8010'.")
        return None
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        ctx.error(path, f"Invalid port {item!r}: ports must be between 1 and 65535.")
        return None
    if lo > hi:
        ctx.error(path, f"Invalid port range {item!r}: the start must not exceed the end.")
        return None
    return lo, hi


def parse_ports(ctx: Context, path: Path, raw: Any) -> tuple[str, ...] | None:
    """Sorted, merged ranges as strings: ``[8080, 8081]`` -> ``("8080-8081",)``."""
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    ranges: list[tuple[int, int]] = []
    ok = True
    for i, item in enumerate(items):
        got = _one_port(ctx, (*path, i) if isinstance(raw, list) else path, item)
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


def parse_labels(ctx: Context, path: Path, raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        ctx.error(path, f"labels should be a mapping of strings to strings. Found: {raw!r}")
        return None
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str):
            ctx.error((*path, str(key)), "labels should map strings to strings. "
                      f"Found: {key!r}: {value!r}")
            continue
        out[key] = value
    return out


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
        return None if raw.lower() == "none" else {"strategy": raw.upper()}
    if isinstance(raw, dict):
        unknown = set(raw) - {"strategy", "max_restarts_on_errors", "recover_on_exit_codes"}
        if unknown:
            ctx.error(path, f"Invalid job_recovery field(s) {sorted(map(str, unknown))}: use "
                      "strategy, max_restarts_on_errors, recover_on_exit_codes.")
            return None
        out = dict(raw)
        strategy = out.get("strategy")
        if isinstance(strategy, str):
            if strategy.lower() == "none":
                return None
            out["strategy"] = strategy.upper()
        return out
    ctx.error(path, f"job_recovery should be a string or a mapping. Found: {raw!r}")
    return None
