"""skyform's parser beside the real SkyPilot, on one-field variants of a valid service YAML.

The corpus parity test (tests/test_corpus_parity.py) checks the files SkyPilot's verdicts were
recorded for. This tool finds the rules those files do not reach: it writes a valid service
and, for each field, variants with other values (valid and not), runs SkyPilot's own parser and
``sky serve up`` checks on each (in an interpreter that has SkyPilot installed) and skyform's
parser on the same file, and prints every variant where they disagree: the verdict, the
message (SkyPilot's must be among skyform's) or the parsed spec.

Make the SkyPilot interpreter once (it needs PyPI): the nightly of the day the corpus's
ground truth was recorded from::

    python3 -m venv /tmp/skypilot && /tmp/skypilot/bin/pip install \\
        'skypilot-nightly==1.0.0.dev20260125' greenlet

Run: ``.venv/bin/python scripts/skypilot_parity.py --skypilot-python /tmp/skypilot/bin/python``.
Disagreements that docs/differences.md explains (skyform's stricter rules, the service name,
pools) are counted apart, and so are files where SkyPilot's parser crashed (an
AttributeError or TypeError on a malformed value) and skyform refuses them with a message.
Exit code 1 when any other disagreement is found.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT), str(PROJECT / "tests")]

from test_corpus_parity import assert_same_spec, filled_overrides, skypilot_verdict  # noqa: E402

from components.errors import SpecError  # noqa: E402
from components.parser import load_service  # noqa: E402
from components.spec import ServiceTask  # noqa: E402

#: Run by the SkyPilot interpreter: each file's verdict in GROUND_TRUTH.json's shape.
TRUTH = r'''
import contextlib, copy, io, json, os, sys
os.environ.setdefault("HOME", os.environ.get("TMPDIR", "/tmp"))
import sky, yaml
from sky.client.cli import command
from sky.serve import serve_utils
from sky.utils import yaml_utils

def truth(path, env, secrets):
    try:
        text = open(path).read()
        config = yaml_utils.safe_load(text)
        if isinstance(config, str):
            raise ValueError("YAML loaded as str, not as dict.")
        config = config or {}
        config["_user_specified_yaml"] = text
        task = sky.Task.from_yaml_config(config, env_overrides=list(env.items()) or None,
                                         secrets_overrides=list(secrets.items()) or None)
    except BaseException as exc:
        return {"parse": "error", "error": str(exc), "error_type": type(exc).__name__}
    if task.service is None:
        return {"parse": "error", "error": "no service section"}
    try:
        out = {"parse": "ok", "num_nodes": task.num_nodes,
               "resources_container": "list" if isinstance(task.resources, list) else "set",
               "resources": [r.to_yaml_config() for r in task.resources],
               "service_spec": task.service.to_yaml_config(),
               "load_balancing_policy": task.service.load_balancing_policy,
               "use_ondemand_fallback": task.service.use_ondemand_fallback}
    except BaseException as exc:  # printing what it parsed needed its catalog (the network)
        return {"parse": "error", "error": str(exc)}
    try:
        serve_utils.validate_service_task(copy.deepcopy(task), pool=False)
        out["serve_validate"] = "ok"
    except BaseException as exc:
        out.update(serve_validate="error", serve_error=str(exc))
    try:
        done = command._generate_task_with_service(
            service_name="svc", service_yaml_args=(path,), workdir=None, cloud=None,
            region=None, zone=None, num_nodes=None, use_spot=None, image_id=None,
            env_file=None, env=list(env.items()), secret_file=None,
            secret=list(secrets.items()), gpus=None, instance_type=None, ports=None,
            cpus=None, memory=None, disk_size=None, disk_tier=None, network_tier=None,
            not_supported_cmd="sky serve up", pool=False)
        out.update(cli_check="ok", service_port=done.service.ports)
    except BaseException as exc:
        out.update(cli_check="error", cli_error=str(exc))
    return out

for line in sys.stdin:
    job = json.loads(line)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        got = truth(job["path"], job["env"], job["secrets"])
    print(json.dumps({"path": job["path"], "kind": job["kind"], "truth": got}, default=str),
          flush=True)
'''

BASE: dict[str, Any] = {
    "name": "svc",
    "service": {"readiness_probe": "/", "replica_policy": {
        "min_replicas": 1, "max_replicas": 3, "target_qps_per_replica": 2}},
    "resources": {"ports": 8080, "accelerators": "L4:1", "use_spot": True},
    "envs": {"MODEL": "m"},
    "run": "python -m http.server 8080",
}
NUMBERS: list[Any] = [0, 1, -1, 2.5, 1.0, "1", True, None, "x", [], {}]
#: (path to the field, values to try); None removes the field.
VARIANTS: list[tuple[tuple[str, ...], list[Any]]] = [
    (("service", "replica_policy", "min_replicas"), NUMBERS),
    (("service", "replica_policy", "max_replicas"), NUMBERS),
    (("service", "replica_policy", "target_qps_per_replica"),
     [*NUMBERS, {"L4": 1}, {"l4": 1}, {"L4:1": 2}, {"L4": "1"}, {"L4": 0}, {1: 2}]),
    (("service", "replica_policy", "num_overprovision"), NUMBERS),
    (("service", "replica_policy", "base_ondemand_fallback_replicas"), [*NUMBERS, 3, 4]),
    (("service", "replica_policy", "dynamic_ondemand_fallback"), [*NUMBERS, "true", False]),
    (("service", "replica_policy", "upscale_delay_seconds"), NUMBERS),
    (("service", "replicas"), NUMBERS),
    (("service", "readiness_probe"),
     ["/", "", "x", 5, None, [], {"path": "/", "post_data": {"a": 1}},
      {"path": "/", "post_data": "{bad"}, {"path": "/", "headers": {"A": 1}},
      {"path": "/", "headers": {1: "a"}},
      {"path": "/", "initial_delay_seconds": 2.5}, {"path": "/", "timeout_seconds": "10"},
      {"initial_delay_seconds": 5}, {"path": "x"}, {"a": 1}]),
    (("service", "ports"), [8080, 8081, "8080", 8080.0, 0, 65536, True, [8080]]),
    (("service", "tls"), [{"keyfile": "k", "certfile": "c"}, {"keyfile": "k"}, "x"]),
    (("service", "load_balancing_policy"),
     ["round_robin", "Least_Load", "instance_aware_least_load", "PREFIX_AWARE", "x", 1]),
    (("resources", "use_spot"), [True, False, None, "yes", 0]),
    (("resources", "ports"),
     [8080, "8080", [8080], [8080, 8081], "8080-8081", "8081-8080", "a-b", 0, 65536, [],
      None]),
    (("resources", "accelerators"),
     ["L4", "L4:2.0", "L4:0.5", "l4", "L4:1:1", "a:b:c", {"L4": 1.5}, {"L4": "1"},
      ["L4", "L4"], ["L4:1", "A100:2"], {"L4": 1, "A100": 8}, "24GB+", "nvidia:24GB+",
      "tpu-v2-8", ":2", "A100:0", {1: 1}, "24GB:x", "24GB:1.5", "L4:1:0"]),
    (("resources", "cpus"), [1, 0, "2+", "0+", "x", "2++", True, 1.5]),
    (("resources", "memory"), [1, 0, "8+", "8GB", "8gb+", "8Gi", "8x", "8x+", "x", True]),
    (("resources", "disk_size"), [100, "100GB", "1TB", "1.5TB", 100.5, "0", "x"]),
    (("resources", "disk_tier"), ["low", "best", "HIGH", "x", 1]),
    (("resources", "infra"),
     ["aws", "k8s", "aws/us-east-1/us-east-1a", "*/us-east-1", "AWS", "aws/", 1, ""]),
    (("resources", "cloud"), ["aws", "AWS", "k8s", "x", 1]),
    (("resources", "region"), ["us-east-1", 1, ""]),
    (("resources", "image_id"),
     ["docker:vllm/vllm-openai", {"us-east-1": "ami-1"}, 1, {1: "ami-1"}]),
    (("resources", "labels"), [{"a": "b"}, {"a": 1}, "x", {}, {1: "a"}, {True: "a"}]),
    (("resources", "priority"), [0, 1000, 1001, 1.5, "x"]),
    (("resources", "job_recovery"), ["none", "failover", {"a": 1}, {"strategy": 5}, []]),
    (("resources", "any_of"),
     [[{"infra": "aws"}, {"infra": "gcp"}], [{"accelerators": "A100"}], [], [{"x": 1}], 3]),
    (("resources", "ordered"), [[{"infra": "aws"}, {"infra": "gcp"}], [], 3]),
    (("resources", "volumes"), [{"/d": "x"}]),
    (("resources", "autostop"), [True, False, 10, "2h", "1.5h", "x", {"idle_minutes": 5},
                                 {"wait_for": "JOBS"}, {"x": 1}]),
    (("service", "pool"), [False]),
    (("num_nodes",), [1, 2, 0, -1, "2", 1.5]),
    (("envs",), [{}, {"A": None}, {"A": 1}, {"1A": "x"}, [], "x"]),
    (("secrets",), [{"S": None}, {"S": 1}, {"1S": "x"}, {1: "x"}]),
    (("workdir",), [1, {"url": 1}, {"ref": "main"}]),
    (("file_mounts",), [{"/a": {"name": "b", "mode": "x"}}, {"/a": {"source": []}},
                        {"/a": {"name": "b", "store": "s3"}}, {"/a": {"name": "b", "x": 1}},
                        {"/a": "s3://b/p"}, {1: "/x"}]),
    (("setup",), [1, ["a"]]),
    (("config",), [{"x": 1}, {"kubernetes": {"provision_timeout": "x"}},
                   {"docker": {"run_options": ["--a", 1]}}, {"kubernetes": {"pod_config": {}}}]),
]
#: Errors that only say SkyPilot needed the network (its catalog, a git repository).
OFFLINE = ("HTTPSConnectionPool", "Failed to access repository",
           "Failed to import dependencies")  # the last: its Kubernetes extra is not installed
CRASHED = "SkyPilot crashed"
#: Exceptions that are SkyPilot's parser crashing on a value, not a rule it states
#: (``'int' object has no attribute 'strip'``): skyform refusing the file agrees.
CRASHES = ("AttributeError", "TypeError", "KeyError", "IndexError")
#: Disagreements docs/differences.md explains.
DOCUMENTED = ("skyform is stricter than SkyServe here", "Invalid service name",
              "belongs to SkyPilot cluster pools")


def _with(base: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """``base`` with the field at ``path`` set to ``value`` (removed for None)."""
    doc = copy.deepcopy(base)
    target = doc
    for part in path[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    if value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return doc


def variants() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every value of ``VARIANTS`` in ``BASE``."""
    for path, values in VARIANTS:
        for value in values:
            yield f"{'.'.join(path)}={value!r}", _with(BASE, path, value)


def corpus_variants(folder: Path, per_file: int, seed: int
                    ) -> Iterator[tuple[str, dict[str, Any]]]:
    """``per_file`` variants (drawn with ``seed``) of each service YAML under ``folder``:
    real files reach combinations the one base does not."""
    rng = random.Random(seed)
    pairs = [(path, value) for path, values in VARIANTS for value in values]
    for file in sorted(folder.rglob("*.y*ml")):
        base = yaml.safe_load(file.read_text())
        if not isinstance(base, dict) or "service" not in base:
            continue
        for path, value in rng.sample(pairs, min(per_file, len(pairs))):
            yield f"{file.name}: {'.'.join(path)}={value!r}", _with(base, path, value)


def skyform_says(path: Path, kind: str, truth: dict[str, Any]) -> str | None:
    """None when skyform agrees with SkyPilot's ``truth`` on ``path``, else how it differs."""
    envs, secrets = filled_overrides(path) if kind == "with_env_filled" else ({}, {})
    try:
        mine: ServiceTask | SpecError = load_service(path, env_overrides=envs,
                                                     secret_overrides=secrets)
    except SpecError as exc:
        mine = exc
    verdict = skypilot_verdict(truth)
    said = " ".join(str(truth.get(k)) for k in ("error", "cli_error", "serve_error"))
    if any(text in said for text in OFFLINE):
        return None  # SkyPilot could not check this without the network
    if verdict in ("ok", "skipped"):
        if isinstance(mine, SpecError):
            return "SkyPilot accepts; skyform: " + " | ".join(i.message for i in mine.issues)
        try:
            assert_same_spec(mine, truth)
        except AssertionError:
            return f"parsed spec differs: skyform {mine.to_json(reveal_secrets=True)}"
        return None
    if isinstance(mine, ServiceTask):
        return f"SkyPilot refuses ({said.strip()}); skyform accepts"
    messages = [i.message for i in mine.issues]
    if truth.get("error_type") in CRASHES:
        return f"{CRASHED} ({truth['error_type']}: {truth['error']}); skyform says {messages}"
    for text in (truth.get("error"), truth.get("cli_error"), truth.get("serve_error")):
        # A message SkyPilot prints over several lines (an envs key) is matched by its last.
        if text and not any(text in m or text.splitlines()[-1] in m for m in messages):
            return f"SkyPilot says {text!r}; skyform says {messages}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skypilot-python", required=True,
                    help="a Python interpreter with skypilot-nightly installed")
    ap.add_argument("--corpus", type=Path, default=None,
                    help="also vary the service YAMLs under this folder (e.g. ../shared/corpus)")
    ap.add_argument("--per-file", type=int, default=25, help="variants per corpus file (25)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    docs = list(variants())
    if args.corpus is not None:
        docs += corpus_variants(args.corpus, args.per_file, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        jobs, labels = [], {}
        for i, (label, doc) in enumerate(docs):
            path = Path(tmp) / f"v{i:04d}.yaml"
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
            labels[str(path)] = label
            jobs.append({"path": str(path), "kind": "as_is", "env": {}, "secrets": {}})
            if not all(isinstance(doc.get(k), dict | None) for k in ("envs", "secrets")):
                continue  # no null values to fill
            envs, secrets = filled_overrides(path)
            if envs or secrets:
                jobs.append({"path": str(path), "kind": "with_env_filled", "env": envs,
                             "secrets": secrets})
        run = subprocess.run([args.skypilot_python, "-c", TRUTH], check=False, text=True,
                             capture_output=True,
                             input="".join(json.dumps(j) + "\n" for j in jobs))
        if run.returncode != 0:
            print(f"{args.skypilot_python} failed:\n{run.stderr[-2000:]}", file=sys.stderr)
            return 2
        documented = crashed = other = 0
        for line in run.stdout.splitlines():
            if not line.startswith("{"):
                continue  # SkyPilot's own prints
            got = json.loads(line)
            differs = skyform_says(Path(got["path"]), got["kind"], got["truth"])
            if differs is None:
                continue
            kind = ("crashed" if differs.startswith(CRASHED)
                    else "documented" if any(d in differs for d in DOCUMENTED) else "DIFFERS")
            documented += kind == "documented"
            crashed += kind == "crashed"
            other += kind == "DIFFERS"
            print(f"{kind:10} {labels[got['path']]} ({got['kind']}): {differs}")
        print(f"{len(jobs)} checks: {len(jobs) - documented - crashed - other} agree, "
              f"{documented} differ as docs/differences.md says, {crashed} where SkyPilot "
              f"crashed and skyform refuses, {other} differ otherwise")
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(main())
