"""The accelerator catalog: names, counts, CPU sizing, prices, placement."""

from __future__ import annotations

import pytest

from components import catalog
from components.catalog import data
from components.errors import PlacementError
from components.spec import TARGET_CLOUDS, Candidate, ServiceSpec, ServiceTask


def gpu(name: str, count: float = 1, **kw: object) -> Candidate:
    return Candidate(accelerator=name, accelerator_count=count, **kw)  # type: ignore[arg-type]


def task(*cands: Candidate, ordered: bool = False) -> ServiceTask:
    return ServiceTask(
        source="svc.yaml", service=ServiceSpec(), candidates=cands, ordered=ordered,
        service_port=8080,
    )


@pytest.mark.parametrize(
    ("written", "canonical"),
    [("A10g", "A10G"), ("a100-80gb", "A100-80GB"), ("h100", "H100"), ("l40s", "L40S"),
     ("A100-40GB", "A100"), ("nope", None)],
)
def test_canonical_names(written: str, canonical: str | None) -> None:
    assert catalog.canonical_accelerator(written) == canonical


@pytest.mark.parametrize(
    ("cand", "cloud", "instance", "acc_type"),
    [
        (gpu("T4"), "aws", "g4dn.xlarge", None),
        (gpu("T4", 0.5), "aws", "g4dn.xlarge", None),
        (gpu("A10g"), "aws", "g5.xlarge", None),
        (gpu("L4"), "gcp", "g2-standard-4", "nvidia-l4"),
        (gpu("T4"), "gcp", "n1-standard-4", "nvidia-tesla-t4"),
        (gpu("A100-80GB", 8), "gcp", "a2-ultragpu-8g", "nvidia-a100-80gb"),
        (gpu("A100", 8), "aws", "p4d.24xlarge", None),
        (gpu("H100", 8), "gcp", "a3-highgpu-8g", "nvidia-h100-80gb"),
        (gpu("H200", 8), "aws", "p5e.48xlarge", None),
        (gpu("L40S", 4), "aws", "g6e.12xlarge", None),
        (gpu("V100", 4), "aws", "p3.8xlarge", None),
        (gpu("T4"), "kubernetes", "4CPU--16GB--T4:1", "nvidia-tesla-t4"),
    ],
)
def test_gpu_offers(cand: Candidate, cloud: str, instance: str, acc_type: str | None) -> None:
    offer = catalog.offer_for(cand, cloud)  # type: ignore[arg-type]
    assert offer is not None
    assert offer.instance_type == instance
    assert offer.accelerator_type == acc_type
    assert offer.ondemand_hourly_usd > offer.spot_hourly_usd > 0
    assert offer.price_source


def test_count_must_match_exactly() -> None:
    assert catalog.offer_for(gpu("A100-80GB", 4), "aws") is None  # AWS only sells 8
    assert catalog.offer_for(gpu("T4", 3), "aws") is None


def test_cpu_and_memory_bounds_filter_gpu_machines() -> None:
    offer = catalog.offer_for(gpu("A10G", 1, cpus="8+"), "aws")
    assert offer is not None and offer.instance_type == "g5.2xlarge"
    offer = catalog.offer_for(gpu("T4", 1, memory="32.0+"), "aws")
    assert offer is not None and offer.memory_gb >= 32


def test_cpu_only_sizes() -> None:
    offer = catalog.offer_for(Candidate(cpus="4+", memory="32.0+"), "aws")
    assert offer is not None and (offer.vcpus, offer.memory_gb) == (4, 32)
    assert offer.accelerator is None
    exact = catalog.offer_for(Candidate(cpus="2"), "gcp")
    assert exact is not None and exact.vcpus == 2
    default = catalog.offer_for(Candidate(), "aws")
    assert default is not None and default.instance_type == "m6i.2xlarge"
    pod = catalog.offer_for(Candidate(cpus="3", memory="10"), "kubernetes")
    assert pod is not None and pod.instance_type == "3CPU--10GB"
    expected = 3 * data.N2_VCPU_HOUR + 10 * data.N2_GB_HOUR
    assert pod.ondemand_hourly_usd == pytest.approx(expected)


def test_instance_type_only_on_its_cloud() -> None:
    cand = Candidate(instance_type="g5.12xlarge")
    offer = catalog.offer_for(cand, "aws")
    assert offer is not None and offer.accelerator == "A10G" and offer.accelerator_count == 4
    assert catalog.offer_for(cand, "gcp") is None
    assert catalog.clouds_offering(cand) == ["aws"]
    assert "aws type" in catalog.why_no_offer(cand, "gcp")
    assert catalog.offer_for(Candidate(instance_type="g5.xlarge", accelerator="T4",
                                       accelerator_count=1), "aws") is None


def test_cloud_pinned_candidate() -> None:
    cand = gpu("L4", cloud="gcp")
    assert catalog.clouds_offering(cand) == ["gcp"]
    assert catalog.offer_for(cand, "aws") is None
    assert "names cloud 'gcp'" in catalog.why_no_offer(cand, "aws")


def test_unknown_and_unplaceable_accelerators() -> None:
    # A VM cloud sells a fixed list; a Kubernetes cluster offers whatever its nodes have.
    assert catalog.clouds_offering(gpu("A10")) == ["kubernetes"]
    assert "offered on: kubernetes" in catalog.why_no_offer(gpu("A10"), "aws")
    assert "not in the catalog" in catalog.why_no_offer(gpu("Z9"), "gcp")


def test_kubernetes_takes_any_accelerator_name_and_count() -> None:
    for name, count, selector in [("Z9", 3, "nvidia-z9"), ("A10G", 4, "nvidia-a10g"),
                                  ("T4", 1, "nvidia-tesla-t4")]:
        pod = catalog.offer_for(gpu(name, count), "kubernetes")
        assert pod is not None, name
        assert (pod.accelerator, pod.accelerator_count) == (name, count)
        assert pod.accelerator_type == selector
        assert pod.instance_type == f"4CPU--16GB--{name}:{count}"  # SkyPilot's GPU pod default
    # cpus and memory become the requests (their minimums), no machine table in between.
    pod = catalog.offer_for(gpu("T4", 1, cpus="7+", memory="32+"), "kubernetes")
    assert pod is not None and (pod.vcpus, pod.memory_gb) == (7, 32)
    # A SkyPilot Kubernetes instance type gives the shape directly.
    shape = catalog.offer_for(Candidate(instance_type="6CPU--24GB--L4:2"), "kubernetes")
    assert shape is not None and (shape.vcpus, shape.memory_gb, shape.accelerator,
                                  shape.accelerator_count) == (6, 24, "L4", 2)
    assert catalog.offer_for(Candidate(instance_type="g5.xlarge"), "kubernetes") is None
    assert "not a Kubernetes pod shape" in catalog.why_no_offer(
        Candidate(instance_type="g5.xlarge"), "kubernetes")


def test_kubernetes_node_selector_and_device_per_label_and_vendor() -> None:
    assert catalog.k8s_node_selector("A100-80GB", 2, data.GKE_ACCELERATOR_LABEL) == {
        data.GKE_ACCELERATOR_LABEL: "nvidia-a100-80gb"}
    assert catalog.k8s_node_selector("a100-80gb", 2, "nvidia.com/gpu.product") == {
        "nvidia.com/gpu.product": "a100-80gb"}
    assert catalog.k8s_node_selector("H100", 8, "none") == {}
    assert catalog.k8s_device_resource("H100") == "nvidia.com/gpu"
    assert catalog.k8s_device_resource("Inferentia2") == "aws.amazon.com/neuron"
    assert catalog.k8s_device_resource("tpu-v5-lite-podslice") == "google.com/tpu"
    assert catalog.k8s_node_selector("tpu-v5-lite-podslice", 4, data.GKE_ACCELERATOR_LABEL) == {
        data.GKE_TPU_LABEL: "tpu-v5-lite-podslice", data.GKE_TPU_TOPOLOGY_LABEL: "2x2"}


def test_kubernetes_refuses_only_for_real_reasons() -> None:
    tpu = gpu("tpu-v5-lite-podslice", 4)
    assert catalog.offer_for(tpu, "kubernetes") is not None  # GKE (the default label)
    assert catalog.offer_for(tpu, "kubernetes", accelerator_label="nvidia.com/gpu.product") \
        is None
    assert "only GKE clusters offer" in catalog.why_no_offer(
        tpu, "kubernetes", accelerator_label="nvidia.com/gpu.product")
    assert "not a single-host GKE TPU slice" in catalog.why_no_offer(
        gpu("tpu-v5-lite-podslice", 64), "kubernetes")


def test_kubernetes_price_is_the_gke_node_or_unknown() -> None:
    known = catalog.offer_for(gpu("L4", 1), "kubernetes")
    assert known is not None and known.ondemand_hourly_usd == pytest.approx(0.70683228)
    unknown = catalog.offer_for(gpu("A10G", 1), "kubernetes")  # GCP has no A10G node
    assert unknown is not None and unknown.ondemand_hourly_usd is None
    assert unknown.price_source.startswith("unknown")


def test_every_required_and_corpus_accelerator_is_known() -> None:
    names = [
        "T4", "L4", "A10G", "A10", "L40S", "V100", "A100", "A100-80GB", "H100", "H200",
        "L40", "A40", "B100", "B200", "GB200",
    ]
    for name in names:
        assert catalog.canonical_accelerator(name) == name
        assert catalog.accelerator_memory_gb(name)
    for name in ["T4", "L4", "A10G", "L40S", "V100", "A100", "A100-80GB", "H100", "H200"]:
        assert catalog.clouds_offering(gpu(name, 8 if name in {"H200"} else 1))


def test_memory_selectors() -> None:
    big = catalog.expand_memory_selector("80GB+")
    assert big is not None
    assert {n for n, _ in big} >= {"A100-80GB", "H100", "H200"}
    assert "A100" not in {n for n, _ in big}
    assert catalog.expand_memory_selector("24GB:2") == [("L4", 2.0), ("A10G", 2.0), ("A10", 2.0)]
    two = catalog.expand_memory_selector("nvidia:80GB+:2")
    assert two is not None and all(c == 2.0 for _, c in two)
    assert catalog.expand_memory_selector("A100:2") is None
    assert catalog.parse_memory_selector("nvidia:80GB+:2") == ("nvidia", 80.0, True, 2.0)


def test_controller_offer_meets_skyserve_minimum() -> None:
    for cloud in TARGET_CLOUDS:
        offer = catalog.controller_offer(cloud)
        assert offer.vcpus >= 4 and offer.memory_gb >= 8
        assert offer.accelerator is None


def test_place_ordered_takes_first_feasible() -> None:
    t = task(gpu("A10"), gpu("H100", 8), gpu("T4"), ordered=True)
    placed = catalog.place(t, "aws")
    assert placed.candidate_index == 1 and placed.offer.instance_type == "p5.48xlarge"


def test_place_set_takes_cheapest_and_spot_prices() -> None:
    t = task(gpu("H100", 8), gpu("T4"), gpu("L4"))
    placed = catalog.place(t, "aws")
    assert placed.candidate_index == 1
    spot = catalog.place(task(gpu("T4", use_spot=True)), "aws")
    assert spot.spot and spot.hourly_usd == spot.offer.spot_hourly_usd


def test_place_pin_and_errors() -> None:
    t = task(gpu("T4"), gpu("L4", cloud="gcp"))
    assert catalog.place(t, "gcp", pin=1).candidate_index == 1
    with pytest.raises(PlacementError, match="out of range"):
        catalog.place(t, "gcp", pin=5)
    with pytest.raises(PlacementError, match="pinned candidate 1"):
        catalog.place(t, "aws", pin=1)
    with pytest.raises(PlacementError) as info:
        catalog.place(task(gpu("A10"), gpu("L4", cloud="gcp")), "aws")
    text = str(info.value)
    assert "candidate 0 (A10:1)" in text and "candidate 1 (gcp, L4:1)" in text


def test_catalog_rows_are_consistent() -> None:
    rows = data.build_rows()
    known = set(catalog.known_accelerators())
    for row in rows:
        assert row.cloud in TARGET_CLOUDS
        assert row.vcpus > 0 and row.memory_gb > 0
        assert 0 < row.spot < row.ondemand, row
        if row.accelerator is not None:
            assert row.accelerator in known and row.count >= 1
            if row.cloud in ("gcp", "kubernetes"):
                assert row.accelerator_type and row.accelerator_type.startswith("nvidia-")
    types = [(r.cloud, r.instance_type, r.accelerator, r.count) for r in rows]
    assert len(types) == len(set(types)), "duplicate catalog rows"
    for cloud in TARGET_CLOUDS:
        assert data.PRICE_SOURCE[cloud] and data.PRICE_DATE in data.PRICE_SOURCE[cloud]


def test_kubernetes_gpu_pod_priced_as_gke_node() -> None:
    pod = catalog.offer_for(gpu("L4", 4), "kubernetes")
    node = catalog.offer_for(gpu("L4", 4), "gcp")
    assert pod is not None and node is not None
    assert pod.ondemand_hourly_usd == node.ondemand_hourly_usd
    assert pod.accelerator_type == node.accelerator_type == "nvidia-l4"
    assert pod.vcpus < node.vcpus and pod.memory_gb < node.memory_gb  # requests fit the node
    assert "GCP price of the equivalent GKE node" in pod.price_source


def test_memory_per_vcpu_ratio() -> None:
    # SkyPilot's "Rx": at least R GB per vCPU (it used to crash the lookup with a ValueError).
    offer = catalog.offer_for(Candidate(cpus="4+", memory="8x"), "aws")
    assert offer is not None and offer.memory_gb >= 8 * offer.vcpus
    lean = catalog.offer_for(Candidate(cpus="4+", memory="2x"), "aws")
    assert lean is not None and lean.memory_gb >= 2 * lean.vcpus
    assert lean.ondemand_hourly_usd < offer.ondemand_hourly_usd
    pod = catalog.offer_for(Candidate(cpus="3", memory="5x"), "kubernetes")
    assert pod is not None and pod.instance_type == "3CPU--15GB"
