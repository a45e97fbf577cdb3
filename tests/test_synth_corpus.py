"""Every corpus file the parser accepts synthesizes on every cloud, or is refused with a
clear placement reason (exit 2 in the CLI). Reads ../shared/corpus; fails if it is absent."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
from program_support import CORPUS

from components.errors import PlacementError, SpecError
from components.parser import load_service
from components.synth import required_values, stack_config, synthesize


def _corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.glob("*/*.y*ml") if p.is_file())


def test_corpus_is_present() -> None:
    assert CORPUS.is_dir(), f"corpus folder {CORPUS} is missing (expected ../shared/corpus)"
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


@pytest.mark.parametrize("cloud", ["aws", "gcp", "kubernetes"])
def test_every_accepted_corpus_file_synthesizes(cloud: str) -> None:
    assert CORPUS.is_dir(), f"corpus folder {CORPUS} is missing (expected ../shared/corpus)"
    accepted = _accepted()
    assert len(accepted) > 60
    placed, refused, failures = 0, 0, []
    for path, envs, secrets in accepted:
        config, keys = stack_config(path, cloud, envs=envs, secrets=secrets)
        try:
            result = synthesize(config, keys)
        except pulumi.RunError as exc:
            if isinstance(exc.__cause__, PlacementError) and str(exc.__cause__).strip():
                refused += 1
                continue
            failures.append(f"{path.name}: {exc!r} caused by {exc.__cause__!r}")
            continue
        placed += 1
        if not result.outputs["endpoint"].endswith(":30001"):
            failures.append(f"{path.name}: endpoint {result.outputs['endpoint']}")
        for secret in secrets.values():
            if secret in str(result.to_json()):
                failures.append(f"{path.name}: secret value visible in the plan")
    assert not failures, "\n".join(failures)
    assert placed > refused, f"{cloud}: only {placed} placed, {refused} refused"
