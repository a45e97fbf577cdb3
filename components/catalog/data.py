"""The catalog's facts: machines per cloud, their accelerators, sizes and hourly prices.

Every number in this module is a fact with a source and a date; nothing else in skyform
hard-codes a machine or a price.

Sources and dates
-----------------
* AWS: on-demand list price for Linux in ``us-east-1`` as published by the AWS EC2 pricing
  pages (aws.amazon.com/ec2/pricing/on-demand), retrieved 2025-06 (the author's snapshot).
* GCP: on-demand list price in ``us-central1`` as published by the GCP Compute Engine pricing
  pages (cloud.google.com/compute/vm-instance-pricing and /gpus-pricing; machine price plus the
  attached GPU price for N1), retrieved 2025-06.
* Spot: AWS spot is a market price that changes hourly and GCP spot list prices may change up
  to once a month, so ``spot`` is an *estimate*: the on-demand price times the typical spot
  ratio of the machine family observed on the same pricing pages in 2025-06
  (``SPOT_RATIO`` below). Treat it as a planning figure, not a quote.
* Kubernetes: there is no list price for a pod, and a cluster offers whatever its nodes have,
  so there are no Kubernetes rows: any accelerator name and count becomes a pod request
  (``catalog.lookup``). The plan's hourly cost is "unknown" unless the stack selects a price
  table (``skyform:priceTable: gke``): then a GPU pod is priced as the equivalent GKE node
  (the cheapest GCP row with the same GPU type and count) and a CPU-only pod per requested
  vCPU and GB at GCP's N2 per-resource rates.

Prices change; update the table and the dates together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PRICE_SOURCE: Final = {
    "aws": "list price as published by AWS EC2 on-demand pricing pages (us-east-1), "
    "retrieved 2025-06",
    "gcp": "list price as published by GCP Compute Engine / GPU pricing pages (us-central1), "
    "retrieved 2025-06",
    "kubernetes": "estimate: the GCP price of the equivalent GKE node (us-central1), "
    "retrieved 2025-06",
}
SPOT_SOURCE: Final = (
    "estimate: on-demand price x typical spot ratio of the family (pricing pages, 2025-06)"
)
PRICE_DATE: Final = "2025-06"

DEFAULT_REGION: Final = {"aws": "us-east-1", "gcp": "us-central1", "kubernetes": ""}


@dataclass(frozen=True)
class AcceleratorInfo:
    """One accelerator model: canonical name, vendor, memory per device (GB)."""

    name: str
    vendor: str
    memory_gb: float
    #: GCP guest-accelerator type and GKE ``cloud.google.com/gke-accelerator`` value.
    gcp_type: str | None = None


#: Canonical accelerator names (SkyPilot's spelling) and their device memory.
ACCELERATORS: Final[tuple[AcceleratorInfo, ...]] = (
    AcceleratorInfo("T4", "nvidia", 16, "nvidia-tesla-t4"),
    AcceleratorInfo("L4", "nvidia", 24, "nvidia-l4"),
    AcceleratorInfo("A10G", "nvidia", 24),
    AcceleratorInfo("A10", "nvidia", 24),
    AcceleratorInfo("L40S", "nvidia", 48),
    AcceleratorInfo("L40", "nvidia", 48),
    AcceleratorInfo("A40", "nvidia", 48),
    AcceleratorInfo("V100", "nvidia", 16, "nvidia-tesla-v100"),
    AcceleratorInfo("V100-32GB", "nvidia", 32),
    AcceleratorInfo("P100", "nvidia", 16, "nvidia-tesla-p100"),
    AcceleratorInfo("A100", "nvidia", 40, "nvidia-tesla-a100"),
    AcceleratorInfo("A100-80GB", "nvidia", 80, "nvidia-a100-80gb"),
    AcceleratorInfo("H100", "nvidia", 80, "nvidia-h100-80gb"),
    AcceleratorInfo("H200", "nvidia", 141, "nvidia-h200-141gb"),
    AcceleratorInfo("B100", "nvidia", 192),
    AcceleratorInfo("B200", "nvidia", 180, "nvidia-b200"),
    AcceleratorInfo("GB200", "nvidia", 186),
    AcceleratorInfo("Inferentia2", "aws", 32),
    AcceleratorInfo("Trainium", "aws", 32),
)

#: Other spellings users write (lower-cased key -> canonical name).
ALIASES: Final[dict[str, str]] = {
    "a100-40gb": "A100",
    "a100-80g": "A100-80GB",
    "h100-80gb": "H100",
    "h100-sxm": "H100",
    "h200-141gb": "H200",
    "l40s-48gb": "L40S",
    "inf2": "Inferentia2",
    "trn1": "Trainium",
}

#: Typical spot / on-demand ratio per machine family (see module docstring).
SPOT_RATIO: Final[dict[str, float]] = {
    "g4dn": 0.32, "g5": 0.38, "g6": 0.40, "g6e": 0.45, "p3": 0.32, "p4d": 0.45,
    "p4de": 0.45, "p5": 0.50, "p5e": 0.55, "p5en": 0.55, "p6-b200": 0.60,
    "m6i": 0.40, "c6i": 0.40, "r6i": 0.35,
    "n1": 0.30, "g2": 0.40, "a2": 0.40, "a3": 0.45, "a4": 0.50,
    "n2": 0.25,
}

# (instance type, vCPUs, memory GB, accelerator or None, count, on-demand USD/h)
_AWS_GPU: Final = (
    ("g4dn.xlarge", 4, 16, "T4", 1, 0.526),
    ("g4dn.2xlarge", 8, 32, "T4", 1, 0.752),
    ("g4dn.4xlarge", 16, 64, "T4", 1, 1.204),
    ("g4dn.12xlarge", 48, 192, "T4", 4, 3.912),
    ("g4dn.metal", 96, 384, "T4", 8, 7.824),
    ("g5.xlarge", 4, 16, "A10G", 1, 1.006),
    ("g5.2xlarge", 8, 32, "A10G", 1, 1.212),
    ("g5.4xlarge", 16, 64, "A10G", 1, 1.624),
    ("g5.12xlarge", 48, 192, "A10G", 4, 5.672),
    ("g5.48xlarge", 192, 768, "A10G", 8, 16.288),
    ("g6.xlarge", 4, 16, "L4", 1, 0.8048),
    ("g6.2xlarge", 8, 32, "L4", 1, 0.9776),
    ("g6.4xlarge", 16, 64, "L4", 1, 1.3232),
    ("g6.12xlarge", 48, 192, "L4", 4, 4.6016),
    ("g6.48xlarge", 192, 768, "L4", 8, 13.3504),
    ("g6e.xlarge", 4, 32, "L40S", 1, 1.861),
    ("g6e.2xlarge", 8, 64, "L40S", 1, 2.24208),
    ("g6e.12xlarge", 48, 384, "L40S", 4, 10.49264),
    ("g6e.48xlarge", 192, 1536, "L40S", 8, 30.13118),
    ("p3.2xlarge", 8, 61, "V100", 1, 3.06),
    ("p3.8xlarge", 32, 244, "V100", 4, 12.24),
    ("p3.16xlarge", 64, 488, "V100", 8, 24.48),
    ("p4d.24xlarge", 96, 1152, "A100", 8, 32.7726),
    ("p4de.24xlarge", 96, 1152, "A100-80GB", 8, 40.9657),
    ("p5.48xlarge", 192, 2048, "H100", 8, 98.32),
    ("p5e.48xlarge", 192, 2048, "H200", 8, 63.296),
    ("p5en.48xlarge", 192, 2048, "H200", 8, 63.296),
    ("p6-b200.48xlarge", 192, 2048, "B200", 8, 113.9328),
    ("inf2.xlarge", 4, 16, "Inferentia2", 1, 0.7582),
    ("inf2.8xlarge", 32, 128, "Inferentia2", 1, 1.9679),
    ("inf2.24xlarge", 96, 384, "Inferentia2", 6, 6.4906),
    ("inf2.48xlarge", 192, 768, "Inferentia2", 12, 12.9813),
)

_AWS_CPU: Final = (
    ("c6i.large", 2, 4, 0.085), ("c6i.xlarge", 4, 8, 0.17), ("c6i.2xlarge", 8, 16, 0.34),
    ("c6i.4xlarge", 16, 32, 0.68), ("c6i.8xlarge", 32, 64, 1.36), ("c6i.16xlarge", 64, 128, 2.72),
    ("m6i.large", 2, 8, 0.096), ("m6i.xlarge", 4, 16, 0.192), ("m6i.2xlarge", 8, 32, 0.384),
    ("m6i.4xlarge", 16, 64, 0.768), ("m6i.8xlarge", 32, 128, 1.536),
    ("m6i.16xlarge", 64, 256, 3.072),
    ("r6i.large", 2, 16, 0.126), ("r6i.xlarge", 4, 32, 0.252), ("r6i.2xlarge", 8, 64, 0.504),
    ("r6i.4xlarge", 16, 128, 1.008), ("r6i.8xlarge", 32, 256, 2.016),
    ("r6i.16xlarge", 64, 512, 4.032),
)

# GCP machines with built-in GPUs: (machine type, vCPUs, memory GB, accelerator, count, USD/h)
_GCP_GPU_BUILTIN: Final = (
    ("g2-standard-4", 4, 16, "L4", 1, 0.70683228),
    ("g2-standard-8", 8, 32, "L4", 1, 0.85362),
    ("g2-standard-16", 16, 64, "L4", 1, 1.14720),
    ("g2-standard-24", 24, 96, "L4", 2, 2.0008),
    ("g2-standard-48", 48, 192, "L4", 4, 4.0016),
    ("g2-standard-96", 96, 384, "L4", 8, 8.0032),
    ("a2-highgpu-1g", 12, 85, "A100", 1, 3.673385),
    ("a2-highgpu-2g", 24, 170, "A100", 2, 7.34677),
    ("a2-highgpu-4g", 48, 340, "A100", 4, 14.69354),
    ("a2-highgpu-8g", 96, 680, "A100", 8, 29.38708),
    ("a2-megagpu-16g", 96, 1360, "A100", 16, 55.739504),
    ("a2-ultragpu-1g", 12, 170, "A100-80GB", 1, 5.06879789),
    ("a2-ultragpu-2g", 24, 340, "A100-80GB", 2, 10.13759578),
    ("a2-ultragpu-4g", 48, 680, "A100-80GB", 4, 20.27519156),
    ("a2-ultragpu-8g", 96, 1360, "A100-80GB", 8, 40.55038312),
    ("a3-highgpu-1g", 26, 234, "H100", 1, 11.06125),
    ("a3-highgpu-2g", 52, 468, "H100", 2, 22.1225),
    ("a3-highgpu-4g", 104, 936, "H100", 4, 44.245),
    ("a3-highgpu-8g", 208, 1872, "H100", 8, 88.49),
    ("a3-ultragpu-8g", 224, 2952, "H200", 8, 84.806908),
    ("a4-highgpu-8g", 224, 3968, "B200", 8, 107.9),
)

# N1 machines that take attached GPUs (machine type, vCPUs, memory GB, USD/h).
_GCP_N1: Final = (
    ("n1-standard-4", 4, 15, 0.189999),
    ("n1-standard-8", 8, 30, 0.379998),
    ("n1-standard-16", 16, 60, 0.759996),
    ("n1-standard-32", 32, 120, 1.519992),
    ("n1-highmem-8", 8, 52, 0.473212),
    ("n1-highmem-16", 16, 104, 0.946424),
    ("n1-highmem-32", 32, 208, 1.892848),
)
# Attached GPU price per device (USD/h) and the N1 machines allowed per count
# (GCP limits vCPUs per GPU count).
_GCP_ATTACHED: Final = {
    "T4": (0.35, {1: 24, 2: 48, 4: 96}),
    "V100": (2.48, {1: 12, 2: 24, 4: 48, 8: 96}),
    "P100": (1.46, {1: 16, 2: 32, 4: 64}),
}

_GCP_CPU: Final = (
    ("n2-highcpu-2", 2, 2, 0.071696), ("n2-highcpu-4", 4, 4, 0.143392),
    ("n2-highcpu-8", 8, 8, 0.286784), ("n2-highcpu-16", 16, 16, 0.573568),
    ("n2-highcpu-32", 32, 32, 1.147136),
    ("n2-standard-2", 2, 8, 0.097118), ("n2-standard-4", 4, 16, 0.194236),
    ("n2-standard-8", 8, 32, 0.388472), ("n2-standard-16", 16, 64, 0.776944),
    ("n2-standard-32", 32, 128, 1.553888), ("n2-standard-64", 64, 256, 3.107776),
    ("n2-highmem-2", 2, 16, 0.13101), ("n2-highmem-4", 4, 32, 0.26202),
    ("n2-highmem-8", 8, 64, 0.52404), ("n2-highmem-16", 16, 128, 1.04808),
    ("n2-highmem-32", 32, 256, 2.09616),
)

#: GCP N2 per-resource on-demand rates in us-central1 (USD per vCPU-hour, per GB-hour):
#: the basis of the Kubernetes CPU-only pod estimate.
N2_VCPU_HOUR: Final = 0.031611
N2_GB_HOUR: Final = 0.004237

#: SkyPilot's Kubernetes pod defaults (kubernetes_catalog): 2 vCPUs without a GPU, 4 with
#: one, and 4 GB of memory per vCPU.
K8S_DEFAULT_CPUS: Final = 2.0
K8S_DEFAULT_CPUS_WITH_GPU: Final = 4.0

#: CPU-only default when a candidate gives neither cpus nor memory (SkyPilot's default
#: instance: 8 vCPUs with 4 GB per vCPU).
DEFAULT_CPUS: Final = "8+"
DEFAULT_MEMORY_PER_CPU: Final = 4.0

#: SkyServe's controller resources (serve/constants.py CONTROLLER_RESOURCES).
CONTROLLER_CPUS: Final = "4+"
CONTROLLER_MEMORY: Final = "8+"


@dataclass(frozen=True)
class Row:
    """One catalog row, before it becomes a ``MachineOffer``."""

    cloud: str
    instance_type: str
    vcpus: float
    memory_gb: float
    accelerator: str | None
    count: float
    accelerator_type: str | None
    ondemand: float
    spot: float


def _family(instance_type: str) -> str:
    if instance_type.startswith("p6-b200"):
        return "p6-b200"
    return instance_type.split(".")[0].split("-")[0]


def _spot(instance_type: str, ondemand: float) -> float:
    return round(ondemand * SPOT_RATIO.get(_family(instance_type), 0.4), 4)


def _gcp_type(name: str) -> str | None:
    for info in ACCELERATORS:
        if info.name == name:
            return info.gcp_type
    return None


def build_rows() -> tuple[Row, ...]:
    """Every machine the catalog knows, on every target cloud."""
    rows: list[Row] = []
    for it, cpu, mem, acc, n, price in _AWS_GPU:
        rows.append(Row("aws", it, cpu, mem, acc, n, None, price, _spot(it, price)))
    for it, cpu, mem, price in _AWS_CPU:
        rows.append(Row("aws", it, cpu, mem, None, 0, None, price, _spot(it, price)))
    gcp_gpu: list[Row] = []
    for it, cpu, mem, acc, n, price in _GCP_GPU_BUILTIN:
        gcp_gpu.append(Row("gcp", it, cpu, mem, acc, n, _gcp_type(acc), price, _spot(it, price)))
    for acc, (gpu_price, max_vcpus) in _GCP_ATTACHED.items():
        for n, limit in max_vcpus.items():
            for it, cpu, mem, price in _GCP_N1:
                if cpu > limit:
                    continue
                total = round(price + gpu_price * n, 6)
                gcp_gpu.append(
                    Row("gcp", it, cpu, mem, acc, n, _gcp_type(acc), total, _spot("n1", total))
                )
    rows.extend(gcp_gpu)
    for it, cpu, mem, price in _GCP_CPU:
        rows.append(Row("gcp", it, cpu, mem, None, 0, None, price, _spot(it, price)))
    return tuple(rows)


#: The extended resource a pod requests per accelerator vendor (device plugins' names).
K8S_DEVICE_RESOURCE: Final[dict[str, str]] = {
    "nvidia": "nvidia.com/gpu",
    "amd": "amd.com/gpu",
    "aws": "aws.amazon.com/neuron",
    "google": "google.com/tpu",
}

#: GKE's node label for GPUs, the default ``skyform:acceleratorLabel``.
GKE_ACCELERATOR_LABEL: Final = "cloud.google.com/gke-accelerator"
#: GKE's node labels for TPU slices (a TPU pod needs both).
GKE_TPU_LABEL: Final = "cloud.google.com/gke-tpu-accelerator"
GKE_TPU_TOPOLOGY_LABEL: Final = "cloud.google.com/gke-tpu-topology"
#: Single-host GKE TPU slices: (TPU name, chips) -> topology (GKE's TPU docs, 2025-06).
GKE_TPU_TOPOLOGY: Final[dict[tuple[str, int], str]] = {
    ("tpu-v5-lite-podslice", 1): "1x1", ("tpu-v5-lite-podslice", 4): "2x2",
    ("tpu-v5-lite-podslice", 8): "2x4", ("tpu-v5-lite-device", 1): "1x1",
    ("tpu-v5-lite-device", 4): "2x2", ("tpu-v5-lite-device", 8): "2x4",
    ("tpu-v6e-slice", 1): "1x1", ("tpu-v6e-slice", 4): "2x2", ("tpu-v6e-slice", 8): "2x4",
    ("tpu-v4-podslice", 4): "2x2x1", ("tpu-v5p-slice", 4): "2x2x1",
}
