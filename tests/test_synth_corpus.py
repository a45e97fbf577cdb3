"""Every corpus file the parser accepts synthesizes on every cloud, or is refused for a correct
reason. Reads the SkyServe corpus kept outside this repository (``external.CORPUS``); skipped,
naming where it looked, when that is absent.

The refused files are listed per cloud, exactly, each with why the refusal is right, so a new
wrong refusal (or a file that starts placing) fails the test. The only correct reasons are:
* NAMES: every candidate names another cloud (``infra: gcp``, ``cloud: lambda``...);
* NO_MACHINE: that cloud truly sells no machine for a candidate that could go there (the
  others name another cloud); the catalog's facts are dated in ``catalog.data``.
A Kubernetes cluster offers whatever its nodes have, so only NAMES refuses there.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
from external import CORPUS, needs_corpus

from components.errors import PlacementError, SpecError
from components.parser import load_service
from components.synth import required_values, stack_config, synthesize

pytestmark = needs_corpus

NAMES = "it names cloud"
NO_MACHINE = "machine has"

# Files that name one cloud (or only non-target clouds) for every candidate.
_OCI_LAMBDA_AZURE = {
    # Both candidates are Lambda Cloud instances.
    "skypilot/examples__instance-aware-autoscaling__instance-aware_lambda.yml": NAMES,
    # OCI only.
    "skypilot/examples__oci__serve-http-cpu.yaml": NAMES,
    "skypilot/examples__oci__serve-qwen-7b.yaml": NAMES,
    "skypilot/tests__skyserve__http__oci.yaml": NAMES,
    # Azure only.
    "skypilot/tests__skyserve__http__azure.yaml": NAMES,
}
_GCP_ONLY = {
    # Spot on GCP zones/regions (the SkyServe spot-fallback examples and tests).
    "skypilot/examples__serve__spot_policy__dynamic_on_demand_fallback.yaml": NAMES,
    "skypilot/tests__skyserve__spot__dynamic_ondemand_fallback.yaml": NAMES,
    "skypilot/tests__skyserve__spot__recovery.yaml": NAMES,
    # SkyServe's own smoke tests pinned to GCP (`infra: gcp`).
    "skypilot/tests__skyserve__auto_restart.yaml": NAMES,
    "skypilot/tests__skyserve__cancel__cancel.yaml": NAMES,
    "skypilot/tests__skyserve__high_availability__service.yaml": NAMES,
    "skypilot/tests__skyserve__http__gcp.yaml": NAMES,
    "skypilot/tests__skyserve__update__new.yaml": NAMES,
    "skypilot/tests__skyserve__update__num_min_one.yaml": NAMES,
    "skypilot/tests__skyserve__update__num_min_two.yaml": NAMES,
    "skypilot/tests__skyserve__update__old.yaml": NAMES,
}

EXPECTED_REFUSALS: dict[str, dict[str, str]] = {
    "aws": {
        **_OCI_LAMBDA_AZURE,
        **_GCP_ONLY,
        # Pinned to Kubernetes (`infra: kubernetes`).
        "skypilot/tests__skyserve__http__kubernetes.yaml": NAMES,
        "skypilot/tests__skyserve__log_expansion__kubernetes_docker_pull.yaml": NAMES,
        # AWS sells A100 only 8 to a machine (p4d.24xlarge): no A100:1 or A100:4 machine.
        "edge/acc_dict_single.yaml": NO_MACHINE,  # A100:4
        "edge/acc_str_count.yaml": NO_MACHINE,  # A100:4
        "skypilot/examples__serve__gorilla__gorilla.yaml": NO_MACHINE,  # A100:1
        "skypilot/examples__serve__huggingface-tgi.yaml": NO_MACHINE,  # A100:1
        "skypilot/examples__serve__vicuna-v1.5.yaml": NO_MACHINE,  # A100:1
        "skypilot/examples__serve__vllm.yaml": NO_MACHINE,  # A100:1
        "skypilot/llm__tgi__serve.yaml": NO_MACHINE,  # A100:1
        # H100 and H200 are 8 to a machine on AWS (p5/p5e, catalog of 2025-06): no :1.
        "skypilot/llm__gpt-oss__gpt-oss-vllm.sky.yaml": NO_MACHINE,  # H100:1 or H200:1
        # aws H100:1 / A100:1 (no such AWS machine, as above) or the gcp candidates.
        "edge/acc_set_with_any_of.yaml": NO_MACHINE,
    },
    "gcp": {
        **_OCI_LAMBDA_AZURE,
        # `cloud: aws` with an AWS region and zone.
        "edge/legacy_cloud_region_zone.yaml": NAMES,
        "skypilot/tests__skyserve__http__aws.yaml": NAMES,
        "skypilot/tests__skyserve__http__kubernetes.yaml": NAMES,
        "skypilot/tests__skyserve__log_expansion__kubernetes_docker_pull.yaml": NAMES,
    },
    "kubernetes": {
        **_OCI_LAMBDA_AZURE,
        **_GCP_ONLY,
        "edge/legacy_cloud_region_zone.yaml": NAMES,
        "skypilot/tests__skyserve__http__aws.yaml": NAMES,
        # Candidates on aws and gcp only.
        "edge/acc_set_with_any_of.yaml": NAMES,
        # Spot hedging across named clouds: aws and a gcp zone.
        "skypilot/tests__skyserve__spot__spot_hedge.yaml": NAMES,
        "skypilot/tests__skyserve__spot__spot_hedge_T4.yaml": NAMES,
    },
}


def _corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*/*.y*ml") if p.is_file())


def test_corpus_is_present() -> None:
    assert len(_corpus_files()) > 80


def _accepted() -> list[tuple[Path, dict[str, str], dict[str, str]]]:
    out = []
    for path in _corpus_files():
        envs, secrets = required_values(path)
        try:
            load_service(path, env_overrides=envs, secret_overrides=secrets)
        except SpecError:
            continue
        out.append((path, envs, secrets))
    return out


def _candidate_reasons(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.strip().startswith("candidate ")]


@pytest.mark.parametrize("cloud", ["aws", "gcp", "kubernetes"])
def test_every_accepted_corpus_file_synthesizes_or_is_refused_rightly(cloud: str) -> None:
    accepted = _accepted()
    # 97 of the corpus files are valid SkyServe YAMLs (the parser tests pin which ones); a
    # change there must revisit the refusals below.
    assert len(accepted) == 97
    refused: dict[str, str] = {}
    failures: list[str] = []
    for path, envs, secrets in accepted:
        name = f"{path.parent.name}/{path.name}"
        config, keys = stack_config(path, cloud, envs=envs, secrets=secrets)
        try:
            result = synthesize(config, keys)
        except pulumi.RunError as exc:
            if isinstance(exc.__cause__, PlacementError) and str(exc.__cause__).strip():
                refused[name] = str(exc.__cause__)
                continue
            failures.append(f"{name}: {exc!r} caused by {exc.__cause__!r}")
            continue
        if not result.outputs["endpoint"].endswith(":30001"):
            failures.append(f"{name}: endpoint {result.outputs['endpoint']}")
        for secret in secrets.values():
            if secret in str(result.to_json()):
                failures.append(f"{name}: secret value visible in the plan")
    assert not failures, "\n".join(failures)
    expected = EXPECTED_REFUSALS[cloud]
    assert sorted(refused) == sorted(expected), (
        f"{cloud}: newly refused {sorted(set(refused) - set(expected))}, "
        f"newly placed {sorted(set(expected) - set(refused))}\n"
        + "\n".join(f"{n}: {refused[n]}" for n in sorted(set(refused) - set(expected)))
    )
    for name, why in expected.items():
        reasons = _candidate_reasons(refused[name])
        assert reasons, f"{name}: {refused[name]}"
        # Every candidate is refused for a right reason: it names another cloud, or (only
        # where NO_MACHINE is expected) this cloud sells no such machine.
        allowed = (NAMES,) if why == NAMES else (NAMES, f"no {cloud} {NO_MACHINE}")
        for reason in reasons:
            assert any(a in reason for a in allowed), f"{name}: {reason}"
        if why == NO_MACHINE:
            assert any(f"no {cloud} {NO_MACHINE}" in r for r in reasons), refused[name]

