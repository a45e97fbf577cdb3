"""Catalog lookups: which machine satisfies a candidate on a cloud, and where to place a task.

Rules (SkyPilot's, simplified to the three target clouds):
* the accelerator name is matched case-insensitively (``A10g`` is ``A10G``), aliases included;
* the count must match the machine's GPU count exactly; a fractional count below one
  (``T4:0.5``) takes the one-GPU machine;
* ``cpus`` / ``memory`` are ``"N"`` (exactly N) or ``"N+"`` (at least N); ``memory`` may also
  be ``"Rx"``: at least R GB per vCPU;
* ``instance_type`` picks that machine, and exists only on the cloud that has it;
* among the machines that fit, the cheapest (spot price for spot candidates) wins;
* Kubernetes has no fixed catalog: a cluster offers whatever its nodes have, so any
  accelerator name and count becomes a pod (device request + node selector), ``cpus`` and
  ``memory`` become requests (their minimums; SkyPilot's pod defaults otherwise). Refused only
  for a real reason: a TPU on a cluster that is not GKE, or a multi-host TPU slice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

from components import catalog
from components.catalog import data
from components.errors import PlacementError
from components.spec import TARGET_CLOUDS, Candidate, ServiceTask, TargetCloud


@lru_cache(maxsize=1)
def _rows() -> tuple[data.Row, ...]:
    return data.build_rows()


@lru_cache(maxsize=1)
def _names() -> dict[str, str]:
    out = {info.name.lower(): info.name for info in data.ACCELERATORS}
    out.update(data.ALIASES)
    return out


def known_accelerators() -> tuple[str, ...]:
    """Every canonical accelerator name the catalog knows."""
    return tuple(info.name for info in data.ACCELERATORS)


def canonical_accelerator(name: str) -> str | None:
    """The catalog spelling of an accelerator (``a10g`` -> ``A10G``), or ``None`` if unknown."""
    return _names().get(name.strip().lower())


def accelerator_memory_gb(name: str) -> float | None:
    canonical = canonical_accelerator(name)
    for info in data.ACCELERATORS:
        if info.name == canonical:
            return info.memory_gb
    return None


_SELECTOR = re.compile(
    r"^(?:(?P<vendor>[A-Za-z]+):)?(?P<mem>\d+(?:\.\d+)?)GB(?P<plus>\+)?(?::(?P<count>\d+(?:\.\d+)?))?$",
    re.IGNORECASE,
)


def parse_memory_selector(text: str) -> tuple[str | None, float, bool, float] | None:
    """``[vendor:]<N>GB[+][:count]`` -> (vendor, memory GB, at-least, count); else ``None``."""
    match = _SELECTOR.match(text.strip())
    if match is None:
        return None
    count = float(match["count"]) if match["count"] else 1.0
    vendor = match["vendor"].lower() if match["vendor"] else None
    return vendor, float(match["mem"]), bool(match["plus"]), count


def expand_memory_selector(text: str) -> list[tuple[str, float]] | None:
    """Every (accelerator, count) a memory selector stands for, or ``None`` if ``text`` is not
    a selector. ``80GB+`` -> every device with at least 80 GB; ``24GB:2`` -> devices with
    exactly 24 GB, two of them; ``nvidia:80GB+:2`` restricts the vendor."""
    parsed = parse_memory_selector(text)
    if parsed is None:
        return None
    vendor, mem, plus, count = parsed
    out: list[tuple[str, float]] = []
    for info in data.ACCELERATORS:
        if vendor is not None and info.vendor != vendor:
            continue
        if (info.memory_gb >= mem) if plus else math.isclose(info.memory_gb, mem):
            out.append((info.name, count))
    return out


def _bound(text: str | None) -> tuple[float, bool] | None:
    """``"4"`` -> (4, exact); ``"4+"`` / ``"32.0+"`` -> (4, at least)."""
    if text is None:
        return None
    text = text.strip()
    plus = text.endswith("+")
    return float(text.rstrip("+")), plus


def _memory_bound(text: str | None, vcpus: float) -> tuple[float, bool] | None:
    """Memory as ``_bound`` reads it, plus SkyPilot's ``"Rx"``: at least R GB per vCPU."""
    if text is not None and text.strip().endswith("x"):
        return float(text.strip()[:-1]) * vcpus, True
    return _bound(text)


def _fits(value: float, bound: tuple[float, bool] | None) -> bool:
    if bound is None:
        return True
    need, plus = bound
    return value >= need - 1e-9 if plus else math.isclose(value, need)


def _gpus_needed(count: float | None) -> int:
    if count is None:
        return 1
    return max(1, math.ceil(count - 1e-9))


def _candidate_clouds(candidate: Candidate) -> tuple[TargetCloud, ...]:
    if candidate.cloud is None:
        return TARGET_CLOUDS
    cloud = candidate.cloud.lower()
    if cloud == "k8s":
        cloud = "kubernetes"
    return tuple(c for c in TARGET_CLOUDS if c == cloud)


def _offer(row: data.Row, candidate: Candidate, cloud: TargetCloud) -> catalog.MachineOffer:
    memory = accelerator_memory_gb(row.accelerator) if row.accelerator else None
    return catalog.MachineOffer(
        cloud=cloud,
        instance_type=row.instance_type,
        vcpus=row.vcpus,
        memory_gb=row.memory_gb,
        accelerator=row.accelerator,
        accelerator_count=row.count,
        gpu_memory_gb=(memory or 0) * row.count,
        accelerator_type=row.accelerator_type,
        ondemand_hourly_usd=row.ondemand,
        spot_hourly_usd=row.spot,
        region=candidate.region or data.DEFAULT_REGION[cloud],
        price_source=data.PRICE_SOURCE[cloud],
    )


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def gke_node_price(accelerator: str, count: int) -> tuple[float, float] | None:
    """(on-demand, spot) USD/h of the cheapest GKE node with ``count`` of ``accelerator``
    (the GCP catalog row), or None when GCP has no such node."""
    name = canonical_accelerator(accelerator)
    rows = [r for r in _rows() if r.cloud == "gcp" and r.accelerator == name
            and math.isclose(r.count, count)]
    if not rows:
        return None
    best = min(rows, key=lambda r: r.ondemand)
    return best.ondemand, best.spot


def is_tpu(accelerator: str | None) -> bool:
    return bool(accelerator) and str(accelerator).lower().startswith("tpu-")


def k8s_device_resource(accelerator: str) -> str:
    """The extended resource a pod requests for ``accelerator`` (``nvidia.com/gpu``...)."""
    if is_tpu(accelerator):
        return data.K8S_DEVICE_RESOURCE["google"]
    canonical = canonical_accelerator(accelerator)
    vendor = next((i.vendor for i in data.ACCELERATORS if i.name == canonical), "nvidia")
    return data.K8S_DEVICE_RESOURCE.get(vendor, data.K8S_DEVICE_RESOURCE["nvidia"])


def k8s_node_selector(accelerator: str, count: int, label: str) -> dict[str, str]:
    """The node selector for ``count`` x ``accelerator`` when nodes carry ``label``.

    GKE's label takes GKE's value (``nvidia-tesla-t4``; an accelerator GCP does not list gets
    ``nvidia-<name>``); any other label (``skypilot.co/accelerator``, a custom one) takes the
    lower-cased name, as SkyPilot's GPU labeler writes it. ``label == "none"``: no selector
    (the device request alone places the pod). TPUs use GKE's TPU labels."""
    if is_tpu(accelerator):
        topology = data.GKE_TPU_TOPOLOGY.get((accelerator, count))
        out = {data.GKE_TPU_LABEL: accelerator}
        if topology:
            out[data.GKE_TPU_TOPOLOGY_LABEL] = topology
        return out
    if label == "none":
        return {}
    canonical = canonical_accelerator(accelerator)
    if label == data.GKE_ACCELERATOR_LABEL:
        value = next((i.gcp_type for i in data.ACCELERATORS
                      if i.name == canonical and i.gcp_type), None)
        return {label: value or f"nvidia-{(canonical or accelerator).lower()}"}
    return {label: (canonical or accelerator).lower()}


_K8S_INSTANCE = re.compile(
    r"^(?P<cpus>\d+(?:\.\d+)?)CPU--(?P<mem>\d+(?:\.\d+)?)GB(?:--(?P<acc>[^:]+):(?P<n>\d+))?$"
)


def k8s_tpu_problem(candidate: Candidate, accelerator_label: str) -> str | None:
    """Why a TPU candidate cannot run on the stack's Kubernetes cluster, or None."""
    name = candidate.accelerator
    if not is_tpu(name):
        return None
    assert name is not None
    if accelerator_label != data.GKE_ACCELERATOR_LABEL:
        return (f"{name} is a TPU, which only GKE clusters offer, and skyform:acceleratorLabel "
                f"is {accelerator_label!r} (not GKE's {data.GKE_ACCELERATOR_LABEL})")
    count = _gpus_needed(candidate.accelerator_count)
    if (name, count) not in data.GKE_TPU_TOPOLOGY:
        slices = ", ".join(f"{n}:{c}" for n, c in sorted(data.GKE_TPU_TOPOLOGY))
        return (f"{name}:{count} is not a single-host GKE TPU slice (multi-host slices are "
                f"not supported; single-host: {slices})")
    return None


def _k8s_offer(candidate: Candidate) -> catalog.MachineOffer | None:
    """A pod for ``candidate``: requests equal to the minimums asked for (SkyPilot's Kubernetes
    defaults otherwise), any accelerator name and count, the GKE node selector value. A
    SkyPilot Kubernetes instance type (``4CPU--16GB--L4:1``) gives the sizes directly."""
    accelerator = candidate.accelerator
    count = _gpus_needed(candidate.accelerator_count) if accelerator else 0
    cpus_b = _bound(candidate.cpus)
    cpus = cpus_b[0] if cpus_b else None
    memory: float | None = None
    if candidate.instance_type is not None:
        match = _K8S_INSTANCE.match(candidate.instance_type)
        if match is None:
            return None
        cpus, memory = float(match["cpus"]), float(match["mem"])
        if match["acc"]:
            if accelerator is not None and (
                (canonical_accelerator(accelerator) or accelerator).lower()
                != (canonical_accelerator(match["acc"]) or match["acc"]).lower()
                or count != int(match["n"])
            ):
                return None
            accelerator, count = match["acc"], int(match["n"])
    if accelerator is not None:
        accelerator = canonical_accelerator(accelerator) or accelerator
    if cpus is None:
        cpus = data.K8S_DEFAULT_CPUS_WITH_GPU if accelerator else data.K8S_DEFAULT_CPUS
    if memory is None:
        mem_b = _memory_bound(candidate.memory, cpus)
        memory = mem_b[0] if mem_b else cpus * data.DEFAULT_MEMORY_PER_CPU
    name = f"{_fmt(cpus)}CPU--{_fmt(memory)}GB"
    ondemand: float | None
    spot: float | None
    if accelerator is None:
        ondemand = round(cpus * data.N2_VCPU_HOUR + memory * data.N2_GB_HOUR, 6)
        spot = round(ondemand * data.SPOT_RATIO["n2"], 6)
        source = data.PRICE_SOURCE["kubernetes"] + " (N2 per-vCPU and per-GB rates)"
    else:
        name += f"--{accelerator}:{count}"
        price = gke_node_price(accelerator, count)
        ondemand, spot = price if price else (None, None)
        source = data.PRICE_SOURCE["kubernetes"] if price else "unknown: GCP has no such node"
    memory_each = accelerator_memory_gb(accelerator) if accelerator else None
    selector = k8s_node_selector(accelerator, count, data.GKE_ACCELERATOR_LABEL) \
        if accelerator else {}
    return catalog.MachineOffer(
        cloud="kubernetes", instance_type=name, vcpus=cpus, memory_gb=memory,
        accelerator=accelerator, accelerator_count=count,
        gpu_memory_gb=(memory_each or 0) * count,
        accelerator_type=next(iter(selector.values()), None),
        ondemand_hourly_usd=ondemand, spot_hourly_usd=spot,
        region=candidate.region or "", price_source=source,
    )


def _matching_rows(candidate: Candidate, cloud: TargetCloud) -> list[data.Row]:
    rows = [r for r in _rows() if r.cloud == cloud]
    if candidate.instance_type is not None:
        rows = [r for r in rows if r.instance_type == candidate.instance_type]
    if candidate.accelerator is not None:
        name = canonical_accelerator(candidate.accelerator)
        if name is None:
            return []
        need = _gpus_needed(candidate.accelerator_count)
        rows = [r for r in rows if r.accelerator == name and math.isclose(r.count, need)]
    elif candidate.instance_type is None:
        rows = [r for r in rows if r.accelerator is None]
    cpus = _bound(candidate.cpus)
    if (
        candidate.accelerator is None
        and candidate.instance_type is None
        and cpus is None
        and candidate.memory is None
    ):
        cpus = _bound(data.DEFAULT_CPUS)
        assert cpus is not None
        default = (cpus[0] * data.DEFAULT_MEMORY_PER_CPU, True)
        return [r for r in rows if _fits(r.vcpus, cpus) and _fits(r.memory_gb, default)]
    return [r for r in rows if _fits(r.vcpus, cpus)
            and _fits(r.memory_gb, _memory_bound(candidate.memory, r.vcpus))]


def offer_for(candidate: Candidate, cloud: TargetCloud, *,
              accelerator_label: str = data.GKE_ACCELERATOR_LABEL
              ) -> catalog.MachineOffer | None:
    """The cheapest machine on ``cloud`` that satisfies ``candidate``, or ``None``.
    ``accelerator_label``: the Kubernetes cluster's GPU node label (a TPU needs GKE's)."""
    if cloud not in _candidate_clouds(candidate):
        return None
    if cloud == "kubernetes":
        if k8s_tpu_problem(candidate, accelerator_label):
            return None
        return _k8s_offer(candidate)
    rows = _matching_rows(candidate, cloud)
    if not rows:
        return None
    price = (lambda r: r.spot) if candidate.spot else (lambda r: r.ondemand)
    best = min(rows, key=lambda r: (price(r), r.vcpus, r.instance_type))
    return _offer(best, candidate, cloud)


def clouds_offering(candidate: Candidate) -> list[TargetCloud]:
    """The target clouds with at least one machine for ``candidate``."""
    return [c for c in TARGET_CLOUDS if offer_for(candidate, c) is not None]


def controller_offer(cloud: TargetCloud) -> catalog.MachineOffer:
    """The controller VM: SkyServe's default controller resources (4+ vCPUs, 8+ GB)."""
    offer = offer_for(Candidate(cpus=data.CONTROLLER_CPUS, memory=data.CONTROLLER_MEMORY), cloud)
    assert offer is not None, f"catalog has no controller machine on {cloud}"
    return offer


def describe_candidate(candidate: Candidate) -> str:
    """A short human label: ``A100:4``, ``cpus 4+, memory 32.0+``, ``aws g5.xlarge``..."""
    parts: list[str] = []
    if candidate.infra:
        parts.append(candidate.infra)
    if candidate.accelerator is not None:
        count = candidate.accelerator_count
        label = candidate.accelerator
        parts.append(f"{label}:{count:g}" if count is not None else label)
    if candidate.instance_type:
        parts.append(candidate.instance_type)
    if candidate.cpus:
        parts.append(f"cpus {candidate.cpus}")
    if candidate.memory:
        parts.append(f"memory {candidate.memory}")
    if candidate.use_spot:
        parts.append("spot")
    return ", ".join(parts) if parts else "CPU-only (default size)"


def why_no_offer(candidate: Candidate, cloud: TargetCloud, *,
                 accelerator_label: str = data.GKE_ACCELERATOR_LABEL) -> str:
    """Why ``offer_for(candidate, cloud)`` is ``None``, in words a user can act on."""
    wanted = _candidate_clouds(candidate)
    if cloud not in wanted:
        return f"it names cloud {candidate.cloud!r}, not {cloud}"
    if cloud == "kubernetes":
        problem = k8s_tpu_problem(candidate, accelerator_label)
        if problem:
            return problem
        if candidate.instance_type is not None and not _K8S_INSTANCE.match(
                candidate.instance_type):
            return (f"instance type {candidate.instance_type!r} is not a Kubernetes pod shape "
                    "(<cpus>CPU--<memory>GB[--<accelerator>:<count>])")
        return (f"instance type {candidate.instance_type!r} names another accelerator than "
                f"{candidate.accelerator}")
    if candidate.accelerator is not None and canonical_accelerator(candidate.accelerator) is None:
        return (
            f"accelerator {candidate.accelerator!r} is not in the catalog "
            f"(known: {', '.join(known_accelerators())})"
        )
    if candidate.instance_type is not None and not any(
        r.instance_type == candidate.instance_type and r.cloud == cloud for r in _rows()
    ):
        elsewhere = sorted({r.cloud for r in _rows() if r.instance_type == candidate.instance_type})
        where = f"it is a {'/'.join(elsewhere)} type" if elsewhere else "it is not in the catalog"
        return f"instance type {candidate.instance_type!r} does not exist on {cloud} ({where})"
    others = [c for c in TARGET_CLOUDS if c != cloud and offer_for(candidate, c) is not None]
    where = f"offered on: {', '.join(others)}" if others else "offered on no target cloud"
    return f"no {cloud} machine has {describe_candidate(candidate)} ({where})"


def place(task: ServiceTask, cloud: TargetCloud, pin: int | None = None, *,
          accelerator_label: str = data.GKE_ACCELERATOR_LABEL) -> catalog.Placement:
    """Choose the candidate and machine for ``cloud``.

    ``ordered`` tasks take the first feasible candidate in preference order; sets take the
    cheapest feasible one. ``pin`` forces a candidate index.
    """
    candidates: Sequence[Candidate] = task.candidates
    if pin is not None:
        if not 0 <= pin < len(candidates):
            raise PlacementError(
                f"{task.source}: candidate index {pin} is out of range: the service has "
                f"{len(candidates)} candidate(s), valid indexes are 0..{len(candidates) - 1}"
            )
        offer = offer_for(candidates[pin], cloud, accelerator_label=accelerator_label)
        if offer is None:
            raise PlacementError(
                f"{task.source}: pinned candidate {pin} ({describe_candidate(candidates[pin])}) "
                f"cannot run on {cloud}: "
                f"{why_no_offer(candidates[pin], cloud, accelerator_label=accelerator_label)}"
            )
        return catalog.Placement(pin, offer, candidates[pin].spot)
    feasible: list[catalog.Placement] = []
    reasons: list[str] = []
    for index, candidate in enumerate(candidates):
        offer = offer_for(candidate, cloud, accelerator_label=accelerator_label)
        if offer is None:
            reasons.append(
                f"  candidate {index} ({describe_candidate(candidate)}): "
                f"{why_no_offer(candidate, cloud, accelerator_label=accelerator_label)}"
            )
            continue
        placement = catalog.Placement(index, offer, candidate.spot)
        if task.ordered:
            return placement
        feasible.append(placement)
    if not feasible:
        raise PlacementError(
            f"{task.source}: no resources candidate can run on {cloud}:\n" + "\n".join(reasons)
        )
    # An unknown price (a Kubernetes GPU GCP does not sell) sorts after every known one.
    return min(feasible, key=lambda p: (math.inf if p.hourly_usd is None else p.hourly_usd,
                                        p.candidate_index))
