"""`skyform synth`: JSON and human output, manifests, exit 2 for bad or unplaceable specs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import kubernetes_validate
import yaml
from click.testing import CliRunner
from program_support import CONFIG_SECRET, FIXTURES, YAML_SECRET
from rich.console import Console

from components.commands.synth import planning_progress, synth
from components.synth import stack_config, synthesize


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(synth, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_json_lists_resources_and_outputs() -> None:
    code, out, _ = _invoke(str(FIXTURES / "gpu_spot.yaml"), "--cloud", "aws", "--json",
                           "--replicas", "3", "--secret", f"EXTRA={CONFIG_SECRET}")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"resources", "outputs", "placeholders"}
    assert "placeholders from the mock runtime" in doc["placeholders"]
    types = {r["type"] for r in doc["resources"]}
    assert {"skyform:index:SkyService", "skyform:aws:ReplicaGroup", "skyform:aws:Firewall",
            "skyform:aws:Controller", "aws:ec2/instance:Instance"} <= types
    assert all(set(r) == {"type", "name", "parent", "inputs"} for r in doc["resources"])
    assert doc["outputs"]["replicaCount"] == 3
    assert doc["outputs"]["endpoint"].endswith(":30001")
    assert YAML_SECRET not in out and CONFIG_SECRET not in out


def test_human_output_has_tree_cost_and_outputs() -> None:
    code, out, _ = _invoke(str(FIXTURES / "cpu_http.yaml"), "--cloud", "gcp")
    assert code == 0
    assert "skyform:gcp:ReplicaGroup" in out
    assert "cost estimate" in out and "/h" in out
    assert "endpoint" in out


def test_env_override_reaches_replicas() -> None:
    code, out, _ = _invoke(str(FIXTURES / "cpu_post.yaml"), "--cloud", "kubernetes", "--json",
                           "--env", "GREETING=hello-from-cli")
    assert code == 0
    assert "export GREETING=hello-from-cli" in out


def test_unplaceable_exits_2_with_reason() -> None:
    # GCP sells no A10G (a Kubernetes cluster may have one, so only a VM cloud refuses it).
    code, _, err = _invoke(str(FIXTURES / "gpu_spot.yaml"), "--cloud", "gcp")
    assert code == 2
    assert "cannot deploy on gcp" in err and "A10G" in err


def test_invalid_spec_exits_2_with_located_issue() -> None:
    code, _, err = _invoke(str(FIXTURES / "invalid.yaml"), "--cloud", "aws")
    assert code == 2
    assert "invalid.yaml:3:" in err and "service.replicas" in err


def test_missing_secret_value_is_a_spec_error_and_secret_flag_fixes_it() -> None:
    code, _, err = _invoke(str(FIXTURES / "t4_spot.yaml"), "--cloud", "aws")
    assert code == 2 and "HF_TOKEN" in err
    code, _, _ = _invoke(str(FIXTURES / "t4_spot.yaml"), "--cloud", "aws", "--secret",
                         "HF_TOKEN=abc")
    assert code == 0


def test_manifests_are_written_and_valid(tmp_path: Path) -> None:
    code, _, err = _invoke(str(FIXTURES / "t4_spot.yaml"), "--cloud", "kubernetes",
                           "--secret", f"HF_TOKEN={CONFIG_SECRET}", "--manifests",
                           str(tmp_path / "out"), "--json")
    assert code == 0, err
    files = sorted((tmp_path / "out").glob("*.yaml"))
    assert len(files) >= 10
    for file in files:
        text = file.read_text()
        assert text.startswith("# skyform synth plan (t4_spot.yaml, offline): NOT for "
                               "`kubectl apply`.")
        assert CONFIG_SECRET not in text
        kubernetes_validate.validate(yaml.safe_load(text), "1.30.0", strict=True)


def test_manifests_only_for_kubernetes(tmp_path: Path) -> None:
    code, _, _ = _invoke(str(FIXTURES / "cpu_http.yaml"), "--cloud", "aws", "--manifests",
                         str(tmp_path))
    assert code == 2  # click usage error


def test_replicas_outside_min_max_is_said_to_be_clipped() -> None:
    # gpu_spot.yaml: min_replicas 2, max_replicas 5: ask far beyond.
    code, out, err = _invoke(str(FIXTURES / "gpu_spot.yaml"), "--cloud", "aws", "--json",
                             "--replicas", "50", "--secret", f"EXTRA={CONFIG_SECRET}")
    assert code == 0, err
    doc = json.loads(out)
    planned = doc["outputs"]["replicaCount"]
    assert planned < 50
    message = f"--replicas 50 is outside [min_replicas, max_replicas]: clipped to {planned}"
    assert doc["notes"] == [f"{message} (max_replicas)"]
    assert message in err
    code, out, err = _invoke(str(FIXTURES / "gpu_spot.yaml"), "--cloud", "aws", "--json",
                             "--replicas", "3", "--secret", f"EXTRA={CONFIG_SECRET}")
    assert "notes" not in json.loads(out) and "clipped" not in err


def test_human_output_labels_mock_values_as_placeholders() -> None:
    code, out, _ = _invoke(str(FIXTURES / "cpu_http.yaml"), "--cloud", "aws")
    assert code == 0
    assert "offline plan: ids, IP addresses, ARNs, endpoints and generated tokens are " \
           "placeholders" in " ".join(out.split())


SYNTH_50_RUNS = """
import asyncio, atexit, gc, sys
from click.testing import CliRunner
from components.commands.synth import synth

def no_open_loop_left():
    # Registered first, so it runs after skyform's own exit hook (atexit is LIFO): nothing
    # may be left for an event loop's __del__ to close during interpreter teardown.
    gc.collect()
    left = [o for o in gc.get_objects()
            if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed()]
    print(f"open loops at exit: {len(left)}", file=sys.stderr)

atexit.register(no_open_loop_left)
for i in range(50):
    result = CliRunner().invoke(synth, ["examples/hello.yaml", "--cloud", "kubernetes", "--json"])
    assert result.exit_code == 0, (i, result.output)
print("50 runs")
"""


def test_no_traceback_at_exit_over_50_runs() -> None:
    """`synth --cloud kubernetes --json` 50 times in one process, then interpreter exit:
    stderr stays free of tracebacks (such as an event loop __del__ ValueError)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-X", "dev", "-c", SYNTH_50_RUNS], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "50 runs"
    assert "open loops at exit: 0" in out.stderr, out.stderr[-3000:]
    # (-X dev also shows a ResourceWarning when Pulumi drops a thread's loop mid-run; that is
    # closed by its __del__ while its sockets are intact: a warning, not the exit traceback.)
    for marker in ("Traceback", "Exception ignored", "Invalid file descriptor"):
        assert marker not in out.stderr, out.stderr[-3000:]


def test_progress_counts_every_resource_on_a_terminal_and_is_silent_elsewhere() -> None:
    counts: list[int] = []
    config, secret_keys = stack_config(FIXTURES / "cpu_http.yaml", "gcp", replicas=3)
    result = synthesize(config, secret_keys, on_resource=counts.append)
    assert sorted(counts) == list(range(1, len(result.resources) + 1))

    for count, said in [(1, "planning: 1 resource\n"),
                        (len(result.resources), f"planning: {len(result.resources)} resources\n")]:
        terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
        with planning_progress(terminal) as on_resource:
            assert on_resource is not None
            on_resource(count)
        assert said in terminal.file.getvalue()  # type: ignore[attr-defined]

    piped = Console(file=io.StringIO(), force_terminal=False)
    with planning_progress(piped) as on_resource:
        assert on_resource is None
    assert piped.file.getvalue() == ""  # type: ignore[attr-defined]
