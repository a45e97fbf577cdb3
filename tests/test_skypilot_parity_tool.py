"""scripts/skypilot_parity.py's own logic: the variants it writes and how it judges a verdict
(SkyPilot itself is not installed here; the tool runs it where it is)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from components.parser import load_service

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "skypilot_parity.py"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("skypilot_parity", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["skypilot_parity"] = module
    spec.loader.exec_module(module)
    return module


def _truth_from(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """What SkyPilot would record for a file it accepts, built from skyform's parse."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    mine = load_service(path).to_json(reveal_secrets=True)
    return {"parse": "ok", "cli_check": "ok", "serve_validate": "ok",
            "service_port": str(mine["service_port"]),
            **{k: mine[k] for k in ("service_spec", "load_balancing_policy", "num_nodes",
                                    "use_ondemand_fallback", "resources_container",
                                    "resources")}}


def test_each_variant_changes_only_its_field() -> None:
    tool = _tool()
    seen = 0
    for label, doc in tool.variants():
        field, _, _ = label.partition("=")
        top = field.split(".")[0]
        assert {k: v for k, v in doc.items() if k != top} == {
            k: v for k, v in tool.BASE.items() if k != top}, label
        seen += 1
    assert seen == sum(len(values) for _, values in tool.VARIANTS)


def test_agreement_and_each_kind_of_disagreement(tmp_path: Path) -> None:
    tool = _tool()
    path = tmp_path / "svc.yaml"
    truth = _truth_from(tool.BASE, path)
    assert tool.skyform_says(path, "as_is", truth) is None
    other = {**truth, "service_spec": {**truth["service_spec"], "ports": 9}}
    assert "parsed spec differs" in tool.skyform_says(path, "as_is", other)
    refused = {"parse": "error", "error": "Something SkyPilot refuses."}
    assert "skyform accepts" in tool.skyform_says(path, "as_is", refused)
    offline = {"parse": "error", "error": "HTTPSConnectionPool(host='raw.githubusercontent.com')"}
    assert tool.skyform_says(path, "as_is", offline) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("service:\n  replicas: 1\nresources:\n  ports: 8080\n  memory: '32x+'\n")
    said = {"parse": "error", "error": "The \"memory\" field should be either a number or a "
            "string \"<number>+\". Found: '32+x'"}
    assert tool.skyform_says(bad, "as_is", said) is None
    assert "SkyPilot says" in tool.skyform_says(bad, "as_is", {**said, "error": "other"})
    crash = {"parse": "error", "error": "'int' object has no attribute 'strip'",
             "error_type": "AttributeError"}
    assert tool.skyform_says(bad, "as_is", crash).startswith(tool.CRASHED)
    assert "skyform accepts" in tool.skyform_says(path, "as_is", crash)  # still a difference
    stated = {**crash, "error_type": "ValueError"}  # a rule SkyPilot states is matched
    assert "SkyPilot says" in tool.skyform_says(bad, "as_is", stated)


def test_corpus_variants_vary_each_service_file_and_skip_the_rest(tmp_path: Path) -> None:
    tool = _tool()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(tool.BASE))
    (tmp_path / "not-a-service.yaml").write_text("run: echo\n")
    got = list(tool.corpus_variants(tmp_path, 5, seed=1))
    assert len(got) == 5 and all(label.startswith("a.yaml: ") for label, _ in got)
    assert [label for label, _ in got] == [label for label, _ in
                                           tool.corpus_variants(tmp_path, 5, seed=1)]
