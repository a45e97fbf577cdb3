"""Parity with SkyPilot on every corpus file: same verdict, same parsed spec, same message.

The corpus is reference material kept outside this repository (``external.CORPUS``); its
``GROUND_TRUTH.json`` files record what SkyPilot's own parser and ``sky serve up`` checks did
with each file, as written (``as_is``) and with every null env/secret filled
(``with_env_filled``). If the corpus is absent, these tests are skipped and say where they
looked.

Where skyform is deliberately stricter, the case is listed in ``STRICTER`` with the
docs/differences.md entry that explains it; the test then asserts skyform rejects it.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from external import CORPUS, needs_corpus

from components.errors import SpecError
from components.parser import load_service
from components.spec import ServiceTask

pytestmark = needs_corpus

PROJECT = Path(__file__).resolve().parents[1]
CORPORA = ("skypilot", "edge")
DIFFERENCES = PROJECT / "docs" / "differences.md"

#: (corpus, file) -> the docs/differences.md anchor explaining why skyform rejects what
#: SkyPilot accepts (or could not check offline).
STRICTER: dict[tuple[str, str], str] = {
    ("edge", "policy_qps_zero.yaml"): "stricter-qps",
    ("edge", "probe_negative_delay.yaml"): "stricter-delays",
    ("edge", "spot_placer_without_spot.yaml"): "spot-placer-checked",
}


def _cases() -> list[Any]:
    out: list[Any] = []
    for corpus in CORPORA:
        truth_file = CORPUS / corpus / "GROUND_TRUTH.json"
        if not truth_file.is_file():
            out.append(pytest.param(corpus, None, None, None, id=f"{corpus}-MISSING"))
            continue
        truth = json.loads(truth_file.read_text())
        for name, entry in sorted(truth.items()):
            for kind in ("as_is", "with_env_filled"):
                if kind in entry:
                    out.append(pytest.param(corpus, name, kind, entry[kind],
                                            id=f"{corpus}/{name}/{kind}"))
    return out


def filled_overrides(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The corpus README's rule: null env K -> ``<K>`` (``/tmp/x.pem`` when K contains TLS),
    null secret K -> ``<K>``."""
    doc = yaml.safe_load(path.read_text())
    envs = {
        k: ("/tmp/x.pem" if "TLS" in k else f"<{k}>")
        for k, v in (doc.get("envs") or {}).items()
        if v is None
    }
    secrets = {k: f"<{k}>" for k, v in (doc.get("secrets") or {}).items() if v is None}
    return envs, secrets


def skypilot_verdict(truth: dict[str, Any]) -> str:
    """``ok`` needs parse, the CLI check and serve validation all ok; ``skipped`` when
    SkyPilot could not run serve validation offline."""
    if truth.get("parse") != "ok" or truth.get("cli_check") != "ok":
        return "error"
    serve = str(truth.get("serve_validate"))
    if serve.startswith("skipped"):
        return "skipped"
    return "ok" if serve == "ok" else "error"


def _strip_private(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in resources]


def _multiset(resources: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True) for r in resources)


def _parse(corpus: str, name: str, kind: str) -> ServiceTask | SpecError:
    path = CORPUS / corpus / name
    envs, secrets = filled_overrides(path) if kind == "with_env_filled" else ({}, {})
    try:
        return load_service(path, env_overrides=envs, secret_overrides=secrets)
    except SpecError as exc:
        return exc


def assert_same_spec(task: ServiceTask, truth: dict[str, Any]) -> None:
    mine = task.to_json(reveal_secrets=True)
    assert mine["service_spec"] == truth["service_spec"]
    assert mine["service_port"] == int(truth["service_port"])
    assert mine["load_balancing_policy"] == truth["load_balancing_policy"]
    assert mine["use_ondemand_fallback"] == truth["use_ondemand_fallback"]
    assert mine["num_nodes"] == truth["num_nodes"]
    assert mine["resources_container"] == truth["resources_container"]
    theirs = truth["resources"]
    if isinstance(theirs, list):  # one file's candidates could not be dumped offline
        if truth["resources_container"] == "set":
            assert _multiset(mine["resources"]) == _multiset(_strip_private(theirs))
        else:
            assert mine["resources"] == _strip_private(theirs)


@pytest.mark.parametrize(("corpus", "name", "kind", "truth"), _cases())
def test_corpus_file_matches_skypilot(
    corpus: str, name: str | None, kind: str | None, truth: dict[str, Any] | None
) -> None:
    if name is None or kind is None or truth is None:
        pytest.fail(f"{CORPUS / corpus / 'GROUND_TRUTH.json'} is missing", pytrace=False)
    result = _parse(corpus, name, kind)
    verdict = skypilot_verdict(truth)
    key = (corpus, name)
    if key in STRICTER:
        assert isinstance(result, SpecError), f"skyform should reject {name} (stricter rule)"
        assert "docs/differences.md" in str(result) or verdict == "skipped"
        return
    if verdict in ("ok", "skipped"):
        assert isinstance(result, ServiceTask), f"SkyPilot accepts {name}, skyform said:\n{result}"
        assert_same_spec(result, truth)
        return
    assert isinstance(result, SpecError), f"SkyPilot rejects {name}, skyform accepted it"
    messages = [issue.message for issue in result.issues]
    for issue in result.issues:
        assert issue.file.endswith(name) and issue.line >= 1 and issue.column >= 1
    expected = [m for m in (truth.get("error"), truth.get("cli_error"), truth.get("serve_error"))
                if m]
    for text in expected:
        assert any(text in m for m in messages), f"{text!r} not among {messages!r}"


def test_corpus_present_and_complete() -> None:
    for corpus in CORPORA:
        truth = json.loads((CORPUS / corpus / "GROUND_TRUTH.json").read_text())
        files = {p.name for p in (CORPUS / corpus).iterdir() if p.suffix in (".yaml", ".yml")}
        assert files == set(truth), f"{corpus}: files and GROUND_TRUTH.json disagree"
    assert len(_cases()) >= 87 + 43


def test_stricter_cases_are_documented() -> None:
    text = DIFFERENCES.read_text()
    for (_corpus, name), anchor in STRICTER.items():
        assert f'id="{anchor}"' in text, f"docs/differences.md lacks the {anchor} entry ({name})"
        assert name in text, f"docs/differences.md should name the corpus file {name}"
    for corpus, name in STRICTER:
        truth = json.loads((CORPUS / corpus / "GROUND_TRUTH.json").read_text())[name]
        assert skypilot_verdict(truth["as_is"]) in ("ok", "skipped"), (
            f"{name} is rejected by SkyPilot too; it does not belong in STRICTER"
        )
