"""The parser: every accepted form, every error path, with exact locations."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from components.errors import SpecError, SpecIssue
from components.parser import SpecFileError, load_service, parse_service_text
from components.service import placer_name
from components.spec import SECRET_MASK, ServiceTask

FIXTURES = Path(__file__).parent / "fixtures" / "specs"
PORT = "resources:\n  ports: 8080\n"


def parse(text: str, **kw: Any) -> ServiceTask:
    return parse_service_text(textwrap.dedent(text), "svc.yaml", **kw)


def issues(text: str, **kw: Any) -> list[SpecIssue]:
    with pytest.raises(SpecError) as info:
        parse(text, **kw)
    return info.value.issues


def one(text: str, **kw: Any) -> SpecIssue:
    got = issues(text, **kw)
    assert len(got) == 1, got
    return got[0]


def fixture_issues(name: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(SpecError) as info:
        load_service(FIXTURES / name)
    for issue in info.value.issues:
        assert issue.file == str(FIXTURES / name)
    return [(i.line, i.column, i.field, i.message) for i in info.value.issues]


# --- fixtures: every error path, exact line and column --------------------------------------

EXPECTED: dict[str, list[tuple[int, int, str, str]]] = {
    "many_errors.yaml": [
        (2, 1, "resource", "Invalid task YAML: Instead of 'resource', did you mean 'resources'?"),
        (5, 3, "envs.1BAD", "'1BAD' does not match any of the regexes"),
        (9, 22, "service.readiness_probe.timeout_seconds", "'10' is not of type 'number'"),
        (12, 5, "service.replica_policy.max_replica", "did you mean 'max_replicas'?"),
        (13, 26, "service.load_balancing_policy", "'random' is not one of ['round_robin'"),
    ],
    "cross_field.yaml": [
        (4, 20, "service.readiness_probe",
         "readiness_path must start with a slash (/). Got: health"),
        (5, 13, "service.replicas", "replicas must be >= 0. Got: -2"),
        (6, 10, "service.ports", "Port must be between 1 and 65535."),
    ],
    "policy_rules.yaml": [
        (6, 19, "service.replica_policy.max_replicas",
         "max_replicas must be greater than or equal to min_replicas. Found: min_replicas=3, "
         "max_replicas=1"),
        (7, 29, "service.replica_policy.target_qps_per_replica",
         "target_qps_per_replica must be > 0"),
        (8, 28, "service.replica_policy.upscale_delay_seconds",
         "upscale_delay_seconds must be >= 0"),
    ],
    "resources_errors.yaml": [
        (3, 17, "resources.accelerators",
         "The \"accelerators\" field as a str should be <name> or <name>:<cnt>. Found: 'A100:abc'"),
        (8, 10, "resources.infra", "'aws//x' does not match '^(?:(?i:(aws|"),
        (4, 9, "resources.cpus", 'The "cpus" field should be either a number or a string'),
        (5, 11, "resources.memory", '"memory" field should be a ^[0-9]+(kb|ki'),
        (6, 14, "resources.disk_size",
         "is not valid under any of the given schemas. Check problematic field(s): $.disk_size"),
        (7, 14, "resources.disk_tier",
         "Invalid disk_tier 'fast'. Disk tier must be one of low, medium, high, ultra, best."),
        (2, 17, "resources.ports[1]", "Invalid port 70000"),
    ],
    "duplicate_key.yaml": [
        (7, 3, "resources.ports", "duplicate key 'ports' (first defined on line 5)"),
    ],
    "tab_indent.yaml": [(4, 1, "", "use spaces")],
    "binary_junk.yaml": [(4, 14, "", "unacceptable character #x0000")],
    "not_utf8.yaml": [(3, 12, "", "not UTF-8")],
    "empty.yaml": [(1, 1, "", "the file is empty")],
    "top_level_list.yaml": [(1, 1, "", "must be a mapping (key: value), found a list")],
    "env_port.yaml": [
        (7, 10, "service.ports", "Invalid service YAML: '8080' is not of type 'integer'. "
         "Check problematic field(s): $.ports"),
    ],
    "null_env.yaml": [
        (2, 13, "envs.HF_TOKEN", "Environment variable 'HF_TOKEN' is None. Please set a value "
         "for it in task YAML or with --env flag."),
        (4, 11, "secrets.API_KEY", "Secret variable 'API_KEY' is None."),
    ],
    "spot_mixed.yaml": [
        (6, 17, "resources.any_of[1].use_spot", "Resources must either all use spot or none"),
        (3, 17, "resources.job_recovery", "job_recovery is disabled for SkyServe."),
    ],
    "ports_mismatch.yaml": [
        (4, 14, "resources.any_of[1].ports", "Got multiple ports: 8081 and 8080 in different"),
    ],
    "service_port_missing.yaml": [
        (2, 10, "resources.ports", "The service port 7000 specified in the service section is "
         "not found in some resources."),
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_errors_are_located(name: str) -> None:
    got = fixture_issues(name)
    want = EXPECTED[name]
    assert len(got) == len(want), got
    for (line, col, field, message), (wline, wcol, wfield, wmsg) in zip(got, want, strict=True):
        assert (line, col, field) == (wline, wcol, wfield), message
        assert wmsg in message


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in FIXTURES.glob("*.yaml")}
    assert names == set(EXPECTED) | {"valid_full.yaml"}


def test_issue_text_format() -> None:
    issue = fixture_issues("cross_field.yaml")
    assert issue[0][:3] == (4, 20, "service.readiness_probe")
    with pytest.raises(SpecError) as info:
        load_service(FIXTURES / "cross_field.yaml")
    first = str(info.value).splitlines()[0]
    assert first == (
        f"{FIXTURES / 'cross_field.yaml'}:4:20: service.readiness_probe: "
        "readiness_path must start with a slash (/). Got: health"
    )


def test_valid_full_fixture() -> None:
    task = load_service(FIXTURES / "valid_full.yaml", env_overrides={"TOKEN": "tok"},
                        secret_overrides={"API_KEY": "key-1234"})
    spec = task.service
    assert task.name == "full-svc" and task.num_nodes == 2
    assert spec.readiness_probe.post_data == {"model": "m1"}  # $MODEL substituted, JSON loaded
    assert spec.readiness_probe.headers == {"Authorization": "Bearer key-1234"}
    assert spec.readiness_probe.initial_delay_seconds == 30
    assert spec.load_balancing_policy == "round_robin"
    assert spec.tls is not None and spec.tls.keyfile == "/keys/m1.key"
    assert spec.ports == 8081 and task.service_port == 8081
    policy = spec.replica_policy
    assert (policy.min_replicas, policy.max_replicas, policy.target_qps_per_replica) == (1, 4, 2.5)
    assert policy.use_ondemand_fallback
    assert task.file_mounts == {"/data": "./data-m1"}
    assert task.run == "vllm serve $MODEL --port 8081"  # run is not substituted
    assert task.envs["TOKEN"] == "tok" and task.secrets["API_KEY"] == "key-1234"
    assert [(c.cloud, c.region, c.zone, c.accelerator, c.accelerator_count)
            for c in task.candidates] == [
        ("aws", "us-east-1", None, "L4", 1), ("aws", "us-east-1", None, "A10g", 2),
        ("gcp", None, "us-central1-a", "L4", 1),
    ]
    first, _, last = task.candidates
    assert first.memory == "64.0+" and first.cpus == "8+" and first.disk_size == 1024
    assert first.disk_tier == "best" and first.ports == ("8081", "9090-9091")
    assert last.labels == {"team": "ml", "tier": "gold"}
    assert first.image_id == {"us-east-1": "docker:vllm/vllm-openai:latest"}
    out = task.to_json()
    assert out["secrets"] == {"API_KEY": SECRET_MASK}
    assert out["service_spec"]["readiness_probe"]["headers"] == {
        "Authorization": f"Bearer {SECRET_MASK}"
    }
    revealed = task.to_json(reveal_secrets=True)
    assert revealed["service_spec"]["readiness_probe"]["headers"]["Authorization"].endswith("1234")


# --- files ---------------------------------------------------------------------------------

def test_missing_file_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(SpecFileError, match="no such file"):
        load_service(tmp_path / "nope.yaml")
    with pytest.raises(SpecFileError, match="is a directory"):
        load_service(tmp_path)
    assert issubclass(SpecFileError, OSError)


# --- defaults and service section ----------------------------------------------------------

def test_defaults() -> None:
    task = parse("service:\n  readiness_probe: /\n" + PORT)
    assert task.service.to_json() == {
        "readiness_probe": {"path": "/", "initial_delay_seconds": 1200, "timeout_seconds": 15},
        "replica_policy": {"min_replicas": 1},
    }
    assert task.load_balancing_policy == "least_load"
    assert task.candidates[0].disk_size == 256
    assert task.service_port == 8080 and task.ordered is False


@pytest.mark.parametrize("policy", ["round_robin", "least_load", "prefix_aware"])
def test_lb_policy_by_name(policy: str) -> None:
    task = parse(f"service:\n  load_balancing_policy: {policy}\n" + PORT)
    assert task.service.load_balancing_policy == policy


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "Least_Load"])
def test_lb_policy_in_another_case_is_refused_as_skyserve_does(policy: str) -> None:
    # SkyPilot's schema enum ignores case, SkyServiceSpec's policy lookup does not.
    got = one(f"service:\n  load_balancing_policy: {policy}\n" + PORT)
    assert got.field == "service.load_balancing_policy"
    assert got.message == (f"Unknown load balancing policy: {policy}. Available policies: "
                           "['round_robin', 'least_load', 'instance_aware_least_load']")


def test_instance_aware_policy() -> None:
    task = parse("""\
        service:
          load_balancing_policy: instance_aware_least_load
          replica_policy:
            min_replicas: 1
            max_replicas: 3
            target_qps_per_replica: {"A100:1": 2, "L4": 0.5}
        resources:
          ports: 8080
          accelerators: {A100, L4}
        """)
    assert task.service.replica_policy.target_qps_per_replica == {"A100:1": 2, "L4": 0.5}
    bad = one("""\
        service:
          load_balancing_policy: instance_aware_least_load
          replica_policy:
            min_replicas: 1
            max_replicas: 3
            target_qps_per_replica: {"a100": 2}
        resources:
          ports: 8080
        """)
    assert (bad.line, bad.field) == (6, "service.replica_policy.target_qps_per_replica.a100")
    assert "does not match any of the regexes" in bad.message


@pytest.mark.parametrize(
    ("service", "field", "message"),
    [
        ("replicas: 2\n  replica_policy:\n    min_replicas: 1", "service.replica_policy",
         "Cannot specify both `replicas` and `replica_policy`"),
        ("replica_policy:\n    min_replicas: 1\n    target_qps_per_replica: 2",
         "service.replica_policy.target_qps_per_replica",
         "max_replicas must be set where target_qps_per_replica is set."),
        ("replica_policy:\n    min_replicas: 1\n    max_replicas: 2",
         "service.replica_policy.max_replicas",
         "Detected different min_replicas and max_replicas while target_qps_per_replica"),
        ("replica_policy:\n    max_replicas: 2", "service.replica_policy",
         "'min_replicas' is a required property"),
        ("replica_policy:\n    min_replicas: -1", "service.replica_policy.min_replicas",
         "-1 is less than the minimum of 0"),
        ("tls:\n    keyfile: k.pem", "service.tls", "'certfile' is a required property"),
        ("readiness_probe:\n    initial_delay_seconds: 5", "service.readiness_probe",
         "'path' is a required property"),
        ("readiness_probe:\n    path: /x\n    post_data: '{bad'",
         "service.readiness_probe.post_data",
         "Invalid JSON string for `post_data`"),
        ("readiness_probe:\n    path: /x\n    headers: {X-N: 1}",
         "service.readiness_probe.headers.X-N", "1 is not of type 'string'"),
        ("readiness_probe:\n    path: /x\n    timeout_seconds: 0",
         "service.readiness_probe.timeout_seconds", "timeout_seconds must be > 0"),
        ("port: 8080", "service.port", "Instead of 'port', did you mean 'ports'?"),
        ("zzzzzz: 1", "service.zzzzzz", "Found unsupported field 'zzzzzz'."),
        ("pool: true", "service.pool", "cluster pools"),
        ("replica_policy:\n    min_replicas: 1\n    max_replicas: 2\n    target_qps_per_replica:"
         " {A100: 1}", "service.replica_policy.target_qps_per_replica",
         'load_balancing_policy must be "instance_aware_least_load"'),
        ("load_balancing_policy: instance_aware_least_load", "service.load_balancing_policy",
         "target_qps_per_replica must be a dict"),
        ("replica_policy:\n    min_replicas: 1\n    spot_placer: nope",
         "service.replica_policy.spot_placer", "'nope' is not one of ['dynamic_fallback']"),
    ],
)
def test_service_rules(service: str, field: str, message: str) -> None:
    got = issues(f"service:\n  {service}\n" + PORT)
    assert any(i.field == field and message in i.message for i in got), got


def test_replicas_zero_and_scale_to_zero_ok() -> None:
    assert parse("service:\n  replicas: 0\n" + PORT).service.replica_policy.min_replicas == 0
    task = parse("service:\n  replica_policy:\n    min_replicas: 0\n    max_replicas: 3\n"
                 "    target_qps_per_replica: 0.5\n" + PORT)
    assert task.service.autoscaling_policy_str() == (
        "Autoscaling from 0 to 3 replicas (target QPS per replica: 0.5)"
    )


def test_display_strings() -> None:
    task = parse("service:\n  replicas: 2\n  readiness_probe:\n    path: /h\n    post_data: "
                 "{a: 1}\n    headers: {X: y}\n" + PORT)
    assert task.service.autoscaling_policy_str() == "Fixed 2 replicas"
    assert task.service.probe_str() == 'POST /h {"a": 1} with custom headers'
    assert task.service.spot_policy_str() == "No spot policy"
    spot = parse("service:\n  replica_policy:\n    min_replicas: 1\n    max_replicas: 2\n"
                 "    target_qps_per_replica: 1\n    num_overprovision: 1\n"
                 "    dynamic_ondemand_fallback: true\n    base_ondemand_fallback_replicas: 1\n"
                 "resources:\n  ports: 8080\n  use_spot: true\n")
    assert spot.service.spot_policy_str() == (
        "Dynamic on-demand fallback with 1 base on-demand replicas"
    )
    assert spot.service.autoscaling_policy_str() == (
        "Autoscaling from 1 to 2 replicas with 1 overprovisioned replicas "
        "(target QPS per replica: 1)"
    )
    static = parse("service:\n  replica_policy:\n    min_replicas: 1\n"
                   "    base_ondemand_fallback_replicas: 1\n"
                   "resources:\n  ports: 8080\n  use_spot: true\n")
    assert static.service.spot_policy_str() == "Static spot mixture with 1 base on-demand replica"
    one_max = parse("service:\n  replica_policy:\n    min_replicas: 0\n    max_replicas: 1\n"
                    "    target_qps_per_replica: 1\n" + PORT)
    assert one_max.service.autoscaling_policy_str() == (
        "Autoscaling from 0 to 1 replica (target QPS per replica: 1)"
    )


# --- env substitution ----------------------------------------------------------------------

def test_substitution_rules() -> None:
    task = parse("""\
        envs:
          P: /health
          T: envtoken
        secrets:
          T: secrettoken
        service:
          readiness_probe:
            path: ${P}
            headers:
              Authorization: Bearer $T
              Other: $UNKNOWN and ${ALSO_UNKNOWN}
        resources:
          ports: 8080
          labels:
            x: $P
        """)
    probe = task.service.readiness_probe
    assert probe.path == "/health"
    assert probe.headers == {"Authorization": "Bearer secrettoken",
                             "Other": "$UNKNOWN and ${ALSO_UNKNOWN}"}
    assert task.candidates[0].labels == {"x": "$P"}  # resources are not substituted


def test_overrides_fill_nulls_and_add_keys() -> None:
    text = "envs:\n  HF: null\nservice:\n  readiness_probe: /$HF\n" + PORT
    task = parse(text, env_overrides={"HF": "x", "NEW": "1"})
    assert task.envs == {"HF": "x", "NEW": "1"}
    assert task.service.readiness_probe.path == "/x"
    empty = parse(text, env_overrides={"HF": ""})
    assert empty.envs["HF"] == ""


def test_env_values_become_strings_as_skypilot_does() -> None:
    # Task.from_yaml_config str()s every non-null value before the schema check.
    task = parse("envs:\n  N: 3\n  B: true\n  L: [1]\nsecrets:\n  S: 1.5\n"
                 "service:\n  replicas: 1\n" + PORT)
    assert task.envs == {"N": "3", "B": "True", "L": "[1]"}
    assert task.secrets == {"S": "1.5"}


# --- resources ------------------------------------------------------------------------------

def accs(task: ServiceTask) -> list[tuple[str | None, int | float | None]]:
    return [(c.accelerator, c.accelerator_count) for c in task.candidates]


@pytest.mark.parametrize(
    ("form", "expected", "ordered"),
    [
        ("A100", [("A100", 1)], False),
        ("A100:4", [("A100", 4)], False),
        ("T4:0.5", [("T4", 0.5)], False),
        ("{A100: 4}", [("A100", 4)], False),
        ("{A100: 4, H100: 8}", [("A100", 4), ("H100", 8)], False),
        ("{L4, A10g:2}", [("L4", 1), ("A10g", 2)], False),
        ("[H100:1, A100:1, L4]", [("H100", 1), ("A100", 1), ("L4", 1)], True),
    ],
)
def test_accelerator_forms(form: str, expected: list[tuple[str, float]], ordered: bool) -> None:
    task = parse(f"service:\n  replicas: 1\nresources:\n  ports: 8080\n  accelerators: {form}\n")
    assert accs(task) == expected
    assert task.ordered is ordered
    gpus = parse(f"service:\n  replicas: 1\nresources:\n  ports: 8080\n  gpus: {form}\n")
    assert accs(gpus) == expected


def test_memory_selector_expands_through_catalog() -> None:
    task = parse("service:\n  replicas: 1\nresources:\n  ports: 8080\n  accelerators: 80GB+\n")
    names = {a for a, _ in accs(task)}
    assert {"A100-80GB", "H100", "H200"} <= names and "A100" not in names
    two = parse("service:\n  replicas: 1\nresources:\n  ports: 8080\n  accelerators: 24GB:2\n")
    assert accs(two) == [("L4", 2), ("A10G", 2), ("A10", 2)]


def test_any_of_cross_product_and_ordered() -> None:
    task = parse("""\
        service:
          replicas: 1
        resources:
          ports: 8080
          accelerators: {A100, H100}
          any_of:
            - infra: aws
            - infra: gcp
        """)
    assert [(c.cloud, c.accelerator) for c in task.candidates] == [
        ("aws", "A100"), ("aws", "H100"), ("gcp", "A100"), ("gcp", "H100")]
    ordered = parse("""\
        service:
          replicas: 1
        resources:
          ports: 8080
          ordered:
            - accelerators: V100
            - accelerators: T4
              use_spot: false
        """)
    assert ordered.ordered and accs(ordered) == [("V100", 1), ("T4", 1)]


@pytest.mark.parametrize(
    ("resources", "line", "field", "message"),
    [
        ("accelerators: [A100, H100]\n  any_of:\n    - infra: aws", 4,
         "resources.accelerators", 'Cannot specify multiple "accelerators" with preferred order'),
        ("any_of:\n    - infra: aws\n  ordered:\n    - infra: gcp", 6, "resources.ordered",
         'Cannot specify both "any_of" and "ordered" in resources.'),
        ("infra: aws\n  cloud: gcp", 5, "resources.cloud", "Cannot specify both `infra` and"),
        ("accelerators: A100\n  gpus: H100", 5, "resources.gpus", "Cannot specify both"),
        ("spot_recovery: failover", 4, "resources.spot_recovery",
         "Invalid resources YAML: Instead of 'spot_recovery', did you mean"),
        ("infra: mars", 4, "resources.infra", "'mars' does not match '^(?:(?i:(aws|azure|"),
        ("accelerators: {A100: -1}", 4, "resources.accelerators.A100", "positive"),
        ("accelerators: a:b:c", 4, "resources.accelerators",
         "invalid literal for int() with base 10: 'c'"),
        ("cpus: 0", 4, "resources.cpus", "should be positive"),
        ("use_spot: maybe", 4, "resources.use_spot", "'maybe' is not of type 'boolean'"),
        ("ports: 9000-8000", 4, "resources.ports", "Invalid port range 9000-8000."),
        ("network_tier: fast", 4, "resources.network_tier", "Invalid network_tier 'fast'"),
        ("any_of:\n    - any_of: []", 5, "resources.any_of[0].any_of", "Found unsupported field"),
    ],
)
def test_resources_rules(resources: str, line: int, field: str, message: str) -> None:
    got = issues(f"service:\n  replicas: 1\nresources:\n  {resources}\n")
    match = [i for i in got if i.field == field and message in i.message]
    assert match, got
    assert match[0].line == line


def test_resource_normalisation() -> None:
    task = parse("""\
        service:
          replicas: 1
          ports: 9000
        resources:
          ports: [8081, 8080, "8082-8085", 9000]
          cpus: 4
          memory: 32
          disk_size: 512GB
          cloud: AWS
          region: us-east-1
          zone: us-east-1a
          image_id: ami-123
          job_recovery: none
        """ + "  \n").candidates[0]
    assert task.ports == ("8080-8085", "9000")
    assert (task.cpus, task.memory, task.disk_size) == ("4", "32", 512)
    assert task.infra == "aws/us-east-1/us-east-1a"
    assert task.image_id == {"us-east-1": "ami-123"}
    assert task.job_recovery is None


@pytest.mark.parametrize(
    ("infra", "expected"),
    [
        ("k8s", ("kubernetes", None, None)),
        ("kubernetes/ctx/with/slashes", ("kubernetes", "ctx/with/slashes", None)),
        ("'*/us-east-1'", (None, "us-east-1", None)),
        ("aws/*/us-east-1a", ("aws", None, "us-east-1a")),
        ("GCP/us-central1", ("gcp", "us-central1", None)),
    ],
)
def test_infra_forms(infra: str, expected: tuple[str | None, ...]) -> None:
    cand = parse(f"service:\n  replicas: 1\nresources:\n  ports: 8080\n  infra: {infra}\n"
                 ).candidates[0]
    assert (cand.cloud, cand.region, cand.zone) == expected


# --- serving checks -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("resources", "service", "message"),
    [
        ("cpus: 2", "", "Must specify at least one ports in resources."),
        ("ports: [8080, 8081]", "", "Multiple ports specified in resources."),
        ("ports: 8000-8001", "", "Multiple ports specified in resources."),
        ("cpus: 2", "\n  ports: 8080", "Must specify at least one ports in every replica"),
        ("ports: 8080", "\n  replica_policy:\n    min_replicas: 1\n    dynamic_ondemand_fallback:"
         " true", "`use_ondemand_fallback` is only supported for spot resources."),
        ("ports: 8080", "\n  replica_policy:\n    min_replicas: 1\n    spot_placer: "
         "dynamic_fallback", "`spot_placer` is only supported for spot resources."),
        ("ports: 8080\n  use_spot: true\n  any_of:\n    - accelerators: T4\n    - accelerators: L4",
         "\n  replica_policy:\n    min_replicas: 1\n    spot_placer: dynamic_fallback",
         "must have the same configuration except for cloud/region/zone"),
        ("ports: 8080\n  use_spot: true\n  job_recovery: {strategy: failover}", "",
         "job_recovery is disabled for SkyServe."),
    ],
)
def test_serving_rules(resources: str, service: str, message: str) -> None:
    head = service if service else "\n  replicas: 1"
    got = issues(f"service:{head}\nresources:\n  {resources}\n")
    assert any(message in i.message for i in got), got


def test_service_port_chosen_from_several() -> None:
    task = parse("service:\n  replicas: 1\n  ports: 8081\nresources:\n  ports: [8080, 8081]\n")
    assert task.service_port == 8081


def test_spot_hedge_ok_across_locations() -> None:
    task = parse("""\
        service:
          replica_policy:
            min_replicas: 1
            spot_placer: DYNAMIC_FALLBACK
        resources:
          ports: 8080
          use_spot: true
          accelerators: L4
          any_of:
            - infra: aws
            - infra: gcp/*/us-central1-a
        """)
    # Kept as written, as SkyPilot keeps it (its spec and display); the agent still runs
    # SpotHedge for it, since the schema's enum is case-insensitive.
    assert task.service.replica_policy.spot_placer == "DYNAMIC_FALLBACK"
    assert task.to_json()["service_spec"]["replica_policy"]["spot_placer"] == "DYNAMIC_FALLBACK"
    assert task.service.spot_policy_str() == "Spot placement with DYNAMIC_FALLBACK placer"
    assert placer_name(task) == "spothedge"


# --- task level -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("num_nodes: 0\nservice:\n  replicas: 1\n" + PORT, 1, "num_nodes",
         "num_nodes should be a positive int. Got: 0"),
        ("name: 1bad\nservice:\n  replicas: 1\n" + PORT, 1, "name", "Invalid service name"),
        (PORT, 1, "service", "Service section not found"),
        ("service: 3\n" + PORT, 1, "service", "3 is not of type 'dict'"),
        ("run: [a]\nservice:\n  replicas: 1\n" + PORT, 1, "run", "is not of type 'string'"),
        ("resources: [a]\nservice:\n  replicas: 1\n", 1, "resources", "is not of type 'dict'"),
    ],
)
def test_task_rules(text: str, line: int, field: str, message: str) -> None:
    got = issues(text)
    match = [i for i in got if i.field == field and message in i.message]
    assert match, got
    assert match[0].line == line


def test_independent_errors_reported_together() -> None:
    got = issues("""\
        resourcez: {}
        service:
          replicas: -1
          readines_probe: /
        """)
    fields = [i.field for i in got]
    assert fields == ["resourcez", "service.readines_probe", "service.replicas"]


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("service: [\n", 2, 1, "invalid YAML"),
        ("service: {}\n---\na: 1\n", 2, 1, "expected a single document"),
        ("? [a]\n: 1\n", 1, 3, "a mapping key must be a plain value"),
        ("a: &x [*x]\n", 1, 4, ""),
        ("service:\n  replicas: 1\n  replicas: 1\n", 3, 3, "duplicate key 'replicas'"),
        ("42\n", 1, 1, "must be a mapping"),
        ("# only a comment\n", 1, 1, "the file is empty"),
    ],
)
def test_malformed_yaml(text: str, line: int, col: int, message: str) -> None:
    got = issues(text)
    assert (got[0].line, got[0].column) == (line, col)
    assert message in got[0].message


def test_override_names_must_be_valid() -> None:
    got = issues("service:\n  replicas: 1\n" + PORT, env_overrides={"1BAD": "x"})
    assert got[0].field == "envs" and "--env '1BAD'" in got[0].message
    got = issues("service:\n  replicas: 1\n" + PORT, secret_overrides={"A-B": "x"})
    assert "--secret 'A-B'" in got[0].message


def test_required_key_points_at_the_parent_key() -> None:
    got = one("service:\n  readiness_probe: /\n  tls:\n    keyfile: /k.pem\n" + PORT)
    assert (got.line, got.column, got.field) == (3, 3, "service.tls")
    assert got.message == ("Invalid service YAML: 'certfile' is a required property. "
                           "Check problematic field(s): $.tls")


def test_spot_hedge_display_with_dynamic_fallback() -> None:
    task = parse("service:\n  replica_policy:\n    min_replicas: 1\n    spot_placer: "
                 "dynamic_fallback\n    dynamic_ondemand_fallback: true\n"
                 "resources:\n  ports: 8080\n  use_spot: true\n")
    assert task.service.spot_policy_str() == "SpotHedge"


def test_job_recovery_none_is_unset_and_disk_size_whole() -> None:
    for form in ("none", "{strategy: none}"):
        task = parse(f"service:\n  replicas: 1\n{PORT}  job_recovery: {form}\n")
        assert task.candidates[0].job_recovery is None
    bad = one(f"service:\n  replicas: 1\n{PORT}  disk_size: 100.5\n")
    assert (bad.line, bad.field) == (5, "resources.disk_size")
    assert "100.5 is not valid under any of the given schemas" in bad.message


def test_unknown_resources_key_does_not_hide_other_resource_errors() -> None:
    got = issues("service:\n  replicas: 1\nresources:\n  port: 8080\n  cpus: four\n")
    assert [(i.line, i.field) for i in got] == [(4, "resources.port"), (5, "resources.cpus")]
    assert "did you mean 'ports'?" in got[0].message


def test_pool_false_is_accepted_pool_true_rejected() -> None:
    assert parse("service:\n  replicas: 1\n  pool: false\n" + PORT).service_port == 8080
    bad = one("service:\n  replicas: 1\n  workers: 2\n" + PORT)
    assert (bad.line, bad.field) == (3, "service.workers") and "cluster pools" in bad.message


def test_tpu_forces_gcp_and_accelerator_args_kept() -> None:
    task = parse(f"service:\n  replicas: 1\n{PORT}  accelerators: tpu-v2-8\n"
                 "  accelerator_args: {runtime_version: tpu-vm-base}\n")
    cand = task.candidates[0]
    assert (cand.cloud, cand.accelerator) == ("gcp", "tpu-v2-8")
    assert cand.to_json()["accelerator_args"] == {"runtime_version": "tpu-vm-base"}
    bad = one(f"service:\n  replicas: 1\n{PORT}  accelerator_args: {{tpu_vmm: true}}\n")
    assert bad.field == "resources.accelerator_args.tpu_vmm"
    assert "did you mean 'tpu_vm'" in bad.message
    bad = one(f"service:\n  replicas: 1\n{PORT}  accelerator_args: {{tpu_vm: 'yes'}}\n")
    assert bad.field == "resources.accelerator_args.tpu_vm"
    assert "'yes' is not of type 'boolean'" in bad.message


@pytest.mark.parametrize(
    ("accelerator", "args", "expected"),
    [
        ("tpu-v2-8", "", ("gcp", {"runtime_version": "tpu-vm-base"})),
        ("tpu-v5litepod-8", "", ("gcp", {"runtime_version": "v2-alpha-tpuv5"})),
        ("tpu-v6e-8", "", ("gcp", {"runtime_version": "v2-alpha-tpuv6e"})),
        ("tpu-v3-8", "  accelerator_args: {tpu_vm: false}\n",
         ("gcp", {"tpu_vm": False, "runtime_version": "2.12.0"})),
        ("tpu-v5-lite-podslice:4", "", ("kubernetes", {})),
    ],
)
def test_tpu_picks_its_cloud_and_default_runtime(
    accelerator: str, args: str, expected: tuple[str, dict[str, Any]]
) -> None:
    cand = parse(f"service:\n  replicas: 1\n{PORT}  accelerators: {accelerator}\n{args}"
                 ).candidates[0]
    assert (cand.cloud, cand.to_json()["accelerator_args"]) == expected


def test_tpu_refuses_another_cloud_and_an_instance_type() -> None:
    bad = one(f"service:\n  replicas: 1\n{PORT}  accelerators: tpu-v2-8\n  infra: aws\n")
    assert (bad.line, bad.field) == (6, "resources.infra")
    assert "Cloud must be GCP or Kubernetes for TPU accelerators." in bad.message
    bad = one(f"service:\n  replicas: 1\n{PORT}  accelerators: tpu-v2-8\n"
              "  instance_type: n2-standard-8\n")
    assert (bad.line, bad.field) == (6, "resources.instance_type")
    assert "Cannot specify instance type (got 'n2-standard-8') for TPU VM." in bad.message


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        # Stripped, keyed by the region (None when there is none).
        ("  infra: aws/us-east-1\n  image_id: ' ami-1 '\n", {"us-east-1": "ami-1"}),
        # A null key means any region: narrowed to it and keyed by the candidate's region.
        ("  infra: aws/us-east-1\n  image_id: {null: ami-1, us-west-2: ami-2}\n",
         {"us-east-1": "ami-1"}),
        ("  infra: aws\n  image_id: {' us-west-2 ': ami-2}\n", {"us-west-2": "ami-2"}),
        # Kubernetes adds the docker: prefix; other clouds keep a machine image as written.
        ("  infra: k8s\n  image_id: python:3.11\n", {None: "docker:python:3.11"}),
        ("  infra: k8s\n  image_id: docker:python:3.11\n", {None: "docker:python:3.11"}),
        ("  infra: gcp\n  image_id: projects/x/global/images/y\n",
         {None: "projects/x/global/images/y"}),
    ],
)
def test_image_id_is_normalised_as_skypilot_stores_it(
    resources: str, expected: dict[str | None, str]
) -> None:
    cand = parse(f"service:\n  replicas: 1\n{PORT}{resources}").candidates[0]
    assert cand.image_id == expected


# --- parity with SkyPilot's resources parsing (resources.py / resources_utils.py) ----------

@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("cpus", "-1", "The \"cpus\" field should be positive. Found: '-1'"),
        ("cpus", "[1]", "Invalid resources YAML: [1] is not valid under any of the given schemas. "
         "Check problematic field(s): $.cpus"),
        ("memory", "32g", '"memory" field should be a ^[0-9]+(kb|ki|mb|mi|gb|gi|tb|ti|pb|pi|KB|KI|'
         'MB|MI|GB|GI|TB|TI|PB|PI|Kb|Ki|Mb|Mi|Gb|Gi|Tb|Ti|Pb|Pi)?$+?, got 32g'),
        ("memory", "'-5'", "The \"memory\" field should be positive. Found: '-5'"),
        ("memory", "0", "The \"memory\" field should be positive. Found: '0'"),
        ("disk_size", "1KB", '"disk_size" field should be a ^[0-9]+(kb|'),
        ("disk_size", "1.5TB", "Invalid resources YAML: '1.5TB' is not valid under any of the "
         "given schemas. Check problematic field(s): $.disk_size"),
    ],
)
def test_cpus_memory_disk_errors_match_skypilot(field: str, value: str, expected: str) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  {field}: {value}\n")
    assert got.field == f"resources.{field}" and expected in got.message


def test_cpus_memory_disk_normalised_as_skypilot() -> None:
    cand = parse(f"service:\n  replicas: 1\n{PORT}  cpus: '.5'\n  memory: 512MB+\n"
                 "  disk_size: 1Ti\n").candidates[0]
    assert (cand.cpus, cand.memory, cand.disk_size) == (".5", "0.5+", 1024)
    cand = parse(f"service:\n  replicas: 1\n{PORT}  cpus: 4.0\n  memory: 16x\n"
                 ).candidates[0]
    assert (cand.cpus, cand.memory) == ("4.0", "16x")


@pytest.mark.parametrize(
    ("resources", "field", "expected"),
    [
        ("infra: ' aws'", "resources.infra", "Invalid resources YAML: ' aws' does not match "
         "'^(?:(?i:(aws|azure|gcp|ibm|lambda|scp|oci|runpod|vast|vsphere|cudo|fluidstack|"
         "paperspace|primeintellect|do|nebius|ssh|slurm|hyperbolic|seeweb|shadeform))"
         "(?:/[^/]+(?:/[^/]+)?)?|\\\\*(?:/[^/]+(?:/[^/]+)?)?|(?i:kubernetes|k8s)(?:/.+)?)$'. "
         "Check problematic field(s): $.infra"),
        ("infra: k8s/", "resources.infra", "'k8s/' does not match"),
        ("cloud: k8s", "resources.cloud", "Invalid resources YAML: 'k8s' is not one of ['aws', "
         "'azure', 'gcp', 'ibm', 'lambda', 'scp', 'oci', 'kubernetes', 'runpod', 'vast', "
         "'vsphere', 'cudo', 'fluidstack', 'paperspace', 'primeintellect', 'do', 'nebius', "
         "'ssh', 'slurm', 'hyperbolic', 'seeweb', 'shadeform']. Check problematic field(s): "
         "$.cloud"),
        ("infra: aws\n  region: us-east-1", "resources.region",
         "Cannot specify both `infra` and `cloud`, `region`, or `zone` parameters."),
    ],
)
def test_infra_and_cloud_follow_skypilot_schema(resources: str, field: str, expected: str
                                                ) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  {resources}\n")
    assert got.field == field and expected in got.message, got


def test_ssh_infra_keeps_the_pool_path() -> None:
    cand = parse(f"service:\n  replicas: 1\n{PORT}  infra: SSH/my-pool\n").candidates[0]
    assert (cand.cloud, cand.region, cand.infra) == ("ssh", "my-pool", "ssh/my-pool")


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ("0", "Invalid port 0. Please use a port number between 1 and 65535."),
        ("8000-70000", "Invalid port 70000. Please use a port number between 1 and 65535."),
        ("' 8080'", 'Invalid port range  8080. Please use the format "from-to", in which '
         'from <= to. e.g. "1-3".'),
        ("true", "Invalid resources YAML: True is not valid under any of the given schemas. "
         "Check problematic field(s): $.ports"),
    ],
)
def test_port_errors_match_skypilot(ports: str, expected: str) -> None:
    got = one(f"service:\n  replicas: 1\nresources:\n  ports: {ports}\n")
    assert got.field == "resources.ports" and got.message == expected


@pytest.mark.parametrize(
    ("resources", "field", "expected"),
    [
        ("gpus: A100\n  accelerators: A100", "resources.gpus",
         "Cannot specify both gpus and accelerators in config."),
        ("accelerators: [A100, H100]\n  ordered:\n    - infra: aws", "resources.accelerators",
         'Cannot specify multiple "accelerators" with "ordered" in resources.'),
        ("any_of:\n    - accelerators: {A100: 1, H100: 1}", "resources.any_of[0].accelerators",
         "Invalid resources YAML: {'A100': 1, 'H100': 1} is not valid under any of the given "
         "schemas. Check problematic field(s): $.any_of[0].accelerators"),
        ("any_of:\n    - accelerators: {L4}", "resources.any_of[0].accelerators",
         "{'L4': None} is not valid under any of the given schemas"),
    ],
)
def test_accelerator_combinations_follow_skypilot(resources: str, field: str, expected: str
                                                  ) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  {resources}\n")
    assert got.field == field and expected in got.message, got


def test_single_item_list_with_any_of_and_alias_override() -> None:
    task = parse(f"service:\n  replicas: 1\n{PORT}  accelerators: [A100]\n"
                 "  any_of:\n    - infra: aws\n    - infra: gcp\n")
    assert accs(task) == [("A100", 1), ("A100", 1)] and not task.ordered
    task = parse(f"service:\n  replicas: 1\n{PORT}  gpus: A100\n"
                 "  any_of:\n    - accelerators: H100\n    - infra: aws\n")
    assert accs(task) == [("H100", 1), ("A100", 1)]


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("pool:\n  workers: 1\nservice:\n  replicas: 1\n" + PORT, "pool",
         "Cannot set both service and pool in the same task."),
        ("file_mounts:\n  /a: 1\nservice:\n  replicas: 1\n" + PORT, "file_mounts./a",
         "Unable to parse file_mount /a:1"),
        ("num_nodes: 2.0\nservice:\n  replicas: 1\n" + PORT, "num_nodes",
         "num_nodes should be a positive int. Got: 2.0"),
        ("service:\n  replicas:\n  replica_policy:\n    min_replicas: 1\n" + PORT,
         "service.replica_policy", "Cannot specify both `replicas` and `replica_policy`"),
    ],
)
def test_task_level_rules_of_task_from_yaml_config(text: str, field: str, expected: str
                                                   ) -> None:
    got = one(text)
    assert got.field == field and expected in got.message, got


def test_null_service_fields_mean_unset() -> None:
    task = parse("service:\n  readiness_probe: /h\n  replicas:\n  ports:\n  tls:\n"
                 "  load_balancing_policy:\n" + PORT)
    assert task.service.replica_policy.min_replicas == 1 and task.service.tls is None
    assert task.service_port == 8080 and task.load_balancing_policy == "least_load"


def test_serving_messages_match_validate_service_task() -> None:
    got = one("service:\n  replicas: 1\nresources:\n  any_of:\n    - ports: 8080\n"
              "    - ports: 8081\n")
    # The CLI's check first, then validate_service_task's (SkyServe reports both).
    assert got.message == ("Got multiple ports: 8080 and 8081 in different resources. "
                           "Please specify the same port in all replicas, or explicitly set "
                           "the service port in the `service.ports` section. "
                           "Got multiple ports: 8081 and 8080 in different resources. "
                           "Please specify the same port instead.")
    got = one("service:\n  replicas: 1\nresources:\n  cpus: 2\n")
    assert got.message == (
        "Must specify at least one ports in resources. Each replica will use the port "
        "specified as application ingress port if only one port is specified in the replica "
        "resources. If there are multiple ports opened in the replica, please set the "
        "`service.ports` field in the service config. To open multiple ports on the replica, "
        "please set the `service.ports` field to specify a main service port. Must only "
        "specify one port in resources otherwise. Each replica will use the port specified as "
        "application ingress port.")
    got = one("service:\n  replicas: 1\n  ports: 8080\nresources:\n  ports: 9000\n")
    assert got.message == ("The service port 8080 specified in the service section is not "
                           "found in some resources. Please check if the service port is "
                           "correct or add the service port to replica resources.")
    got = one("service:\n  replica_policy:\n    min_replicas: 1\n    max_replicas: 2\n"
              "    target_qps_per_replica: 1\n    dynamic_ondemand_fallback: true\n"
              f"{PORT}  use_spot: true\n  job_recovery: failover\n")
    assert got.message == ("job_recovery is disabled for SkyServe. SkyServe will replenish "
                           "preempted spot with on-demand instances.")


@pytest.mark.parametrize(
    ("resources", "field", "expected"),
    [
        ("labels:\n    team: 1", "resources.labels.team",
         "Invalid resources YAML: 1 is not of type 'string'. Check problematic field(s): "
         "$.labels.team"),
        ("disk_tier: FAST", "resources.disk_tier",
         "Invalid disk_tier 'fast'. Disk tier must be one of low, medium, high, ultra, best."),
        ("priority: 2000", "resources.priority", "2000 is greater than the maximum of 1000"),
        ("use_spot: true\n  job_recovery: NONE", "resources.job_recovery",
         "job_recovery is disabled for SkyServe."),
    ],
)
def test_labels_tiers_priority_job_recovery_as_skypilot(resources: str, field: str,
                                                        expected: str) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  {resources}\n")
    assert got.field == field and expected in got.message, got


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ("  cpus: inf\n", "resources.cpus", 'The "cpus" field should be a finite number'),
        ("  cpus: nan+\n", "resources.cpus", 'The "cpus" field should be a finite number'),
        ("  memory: nan\n", "resources.memory", 'The "memory" field should be a finite number'),
        ("  accelerators: A100:0\n", "resources.accelerators",
         "Accelerator count must be a positive number"),
        ("  accelerators: {A100: -1}\n", "resources.accelerators.A100",
         "Accelerator count must be a positive number"),
    ],
)
def test_stricter_than_skyserve_on_unplaceable_sizes(line: str, field: str, message: str) -> None:
    """docs/differences.md#stricter-finite and #stricter-accelerator-count."""
    bad = one(f"service:\n  replicas: 1\n{PORT}{line}")
    assert (bad.line, bad.field) == (5, field)
    assert message in bad.message
    assert "(skyform is stricter than SkyServe here: see docs/differences.md#stricter-" \
        in bad.message
    assert parse(f"service:\n  replicas: 1\n{PORT}  accelerators: T4:0.5\n"
                 ).candidates[0].accelerator_count == 0.5


def test_docker_login_variables_come_together_in_one_place() -> None:
    head = f"service:\n  replicas: 1\n{PORT}  image_id: docker:private/img\n"
    full = ("  SKYPILOT_DOCKER_USERNAME: u\n  SKYPILOT_DOCKER_PASSWORD: p\n"
            "  SKYPILOT_DOCKER_SERVER: registry.example.com\n")
    assert parse(f"{head}envs:\n{full}").envs["SKYPILOT_DOCKER_SERVER"] == "registry.example.com"
    assert parse(f"{head}secrets:\n{full}").secrets["SKYPILOT_DOCKER_USERNAME"] == "u"
    bad = one(f"{head}envs:\n  SKYPILOT_DOCKER_USERNAME: u\n")
    assert (bad.line, bad.field) == (7, "envs.SKYPILOT_DOCKER_USERNAME")
    assert ("Docker login variables must be specified together in envs. Missing from envs: "
            "['SKYPILOT_DOCKER_PASSWORD', 'SKYPILOT_DOCKER_SERVER']") in bad.message
    bad = one(f"{head}envs:\n  SKYPILOT_DOCKER_USERNAME: u\n  SKYPILOT_DOCKER_SERVER: s\n"
              "secrets:\n  SKYPILOT_DOCKER_PASSWORD: p\n")
    assert (bad.line, bad.field) == (10, "secrets.SKYPILOT_DOCKER_PASSWORD")
    assert "not split across both" in bad.message
    # --secret overrides count as secrets.
    bad = one(f"{head}envs:\n{full}", secret_overrides={"SKYPILOT_DOCKER_PASSWORD": "x"})
    assert "not split across both" in bad.message


@pytest.mark.parametrize(
    ("workdir", "field", "message"),
    [
        ("{ref: main}", "workdir", "'url' is a required property"),
        ("{url: x, rf: main}", "workdir.rf", "Instead of 'rf', did you mean 'ref'?"),
        ("{url: 3}", "workdir.url", "3 is not of type 'string'"),
        ("3", "workdir", "3 is not valid under any of the given schemas"),
    ],
)
def test_workdir_is_a_path_or_a_git_repository(workdir: str, field: str, message: str) -> None:
    bad = one(f"service:\n  replicas: 1\n{PORT}workdir: {workdir}\n")
    assert bad.field == field and message in bad.message
    task = parse(f"service:\n  replicas: 1\n{PORT}workdir: {{url: 'https://g/x.git', ref: v1}}\n")
    assert task.workdir == {"url": "https://g/x.git", "ref": "v1"}


# --- audit against SkyPilot's source (sky/utils/common_utils.validate_schema, schemas.py) ----

@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        # validate_schema rewrites jsonschema's "type 'object'" as "type 'dict'".
        (PORT + "service:\n  readiness_probe: /\n  tls: abc\n", "service.tls",
         "Invalid service YAML: 'abc' is not of type 'dict'. Check problematic field(s): $.tls"),
        (PORT + "service:\n  replica_policy: 3\n", "service.replica_policy",
         "Invalid service YAML: 3 is not of type 'dict'. Check problematic field(s): "
         "$.replica_policy"),
        (PORT + "service:\n  readiness_probe: {path: /, headers: [a]}\n",
         "service.readiness_probe.headers", "['a'] is not of type 'dict'"),
        (PORT + "service:\n  replicas: 1\nenvs: [a]\n", "envs",
         "Invalid task YAML: ['a'] is not of type 'dict'. Check problematic field(s): $.envs"),
        # The task schema types `service` and `resources` as objects before either section
        # is parsed, so the error is the task's.
        (PORT + "service: 3\n", "service",
         "Invalid task YAML: 3 is not of type 'dict'. Check problematic field(s): $.service"),
        ("service:\n  replicas: 1\nresources: [a]\n", "resources",
         "Invalid task YAML: ['a'] is not of type 'dict'. Check problematic field(s): "
         "$.resources"),
    ],
)
def test_object_type_errors_say_dict_as_skypilot(text: str, field: str, message: str) -> None:
    bad = one(text)
    assert bad.field == field
    assert message in bad.message


QPS_HEAD = (PORT + "service:\n  load_balancing_policy: instance_aware_least_load\n"
            "  replica_policy:\n    min_replicas: 1\n    max_replicas: 2\n")
ANY_OF = "is not valid under any of the given schemas. Check problematic field(s): "


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        # `readiness_probe`, `target_qps_per_replica` and `workdir` are JSON-schema anyOf: a
        # value matching no branch gets jsonschema's anyOf message on the field itself.
        (PORT + "service:\n  readiness_probe: 5\n", "service.readiness_probe",
         f"Invalid service YAML: 5 {ANY_OF}$.readiness_probe"),
        (PORT + "service:\n  readiness_probe: [/a]\n", "service.readiness_probe",
         f"Invalid service YAML: ['/a'] {ANY_OF}$.readiness_probe"),
        (QPS_HEAD + "    target_qps_per_replica: abc\n",
         "service.replica_policy.target_qps_per_replica",
         f"Invalid service YAML: 'abc' {ANY_OF}$.replica_policy.target_qps_per_replica"),
        (QPS_HEAD + "    target_qps_per_replica: -1\n",
         "service.replica_policy.target_qps_per_replica",
         f"Invalid service YAML: -1 {ANY_OF}$.replica_policy.target_qps_per_replica"),
        (QPS_HEAD + "    target_qps_per_replica: {a100: 1}\n",
         "service.replica_policy.target_qps_per_replica.a100",
         f"Invalid service YAML: {{'a100': 1}} {ANY_OF}$.replica_policy.target_qps_per_replica"),
        (QPS_HEAD + "    target_qps_per_replica: {A100: x}\n",
         "service.replica_policy.target_qps_per_replica.A100",
         f"Invalid service YAML: {{'A100': 'x'}} {ANY_OF}$.replica_policy.target_qps_per_replica"),
        (QPS_HEAD + "    target_qps_per_replica: {A100: -2}\n",
         "service.replica_policy.target_qps_per_replica.A100",
         f"Invalid service YAML: {{'A100': -2}} {ANY_OF}$.replica_policy.target_qps_per_replica"),
        ("service:\n  replicas: 1\n" + PORT + "workdir: {ref: main}\n", "workdir",
         f"Invalid task YAML: {{'ref': 'main'}} {ANY_OF}$.workdir"),
        ("service:\n  replicas: 1\n" + PORT + "workdir: {url: x, rf: main}\n", "workdir.rf",
         f"Invalid task YAML: {{'url': 'x', 'rf': 'main'}} {ANY_OF}$.workdir"),
        ("service:\n  replicas: 1\n" + PORT + "workdir: {url: 3}\n", "workdir.url",
         f"Invalid task YAML: {{'url': 3}} {ANY_OF}$.workdir"),
    ],
)
def test_any_of_fields_fail_with_skypilots_any_of_message(text: str, field: str,
                                                          message: str) -> None:
    bad = one(text)
    assert bad.field == field
    assert message in bad.message


def test_service_port_written_as_a_float_is_rejected() -> None:
    # The schema's 'integer' takes 8080.0 (Draft 7), but SkyServiceSpec.from_yaml_config then
    # asserts isinstance(ports, int), so SkyPilot rejects it.
    bad = one(PORT + "service:\n  readiness_probe: /\n  ports: 8080.0\n")
    assert (bad.line, bad.field) == (5, "service.ports")
    assert "Port must be an integer" in bad.message and "8080.0" in bad.message
    assert parse(PORT + "service:\n  readiness_probe: /\n  ports: 8080\n").service.ports == 8080


def test_several_unknown_keys_carry_skypilots_joined_message() -> None:
    # validate_schema lists every unknown key of the mapping in one message, joined without a
    # separator; skyform gives that message at the first key and still locates each key.
    got = issues(PORT + "service:\n  readiness_probe: /\n  port: 1\n  foo: 2\n")
    assert [(i.line, i.field) for i in got] == [(5, "service.port"), (6, "service.foo")]
    assert ("Invalid service YAML: Instead of 'port', did you mean 'ports'?"
            "Found unsupported field 'foo'.") in got[0].message
    assert got[1].message.startswith("Invalid service YAML: Found unsupported field 'foo'.")
    single = one(PORT + "service:\n  readiness_probe: /\n  port: 1\n")
    assert single.message == "Invalid service YAML: Instead of 'port', did you mean 'ports'?"


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ("readiness_probe: {path: /, initial_delay_seconds: .inf}",
         "service.readiness_probe.initial_delay_seconds"),
        ("readiness_probe: {path: /, timeout_seconds: .nan}",
         "service.readiness_probe.timeout_seconds"),
        ("replica_policy: {min_replicas: 1, upscale_delay_seconds: .inf}",
         "service.replica_policy.upscale_delay_seconds"),
        ("replica_policy: {min_replicas: 1, max_replicas: 2, target_qps_per_replica: .inf}",
         "service.replica_policy.target_qps_per_replica"),
    ],
)
def test_non_finite_service_numbers_are_a_documented_stricter_rule(policy: str,
                                                                   field: str) -> None:
    # jsonschema's 'number' takes inf and nan, so SkyServe accepts these; skyform does not,
    # and says so (docs/differences.md#stricter-finite) instead of borrowing a SkyServe message.
    bad = one(PORT + f"service:\n  {policy}\n")
    assert bad.field == field
    assert "is not a finite number" in bad.message
    assert "docs/differences.md" in bad.message
    assert "is not valid under any of the given schemas" not in bad.message


@pytest.mark.parametrize(
    ("body", "field", "json_path"),
    [
        # get_resources_schema: accelerators, image_id and job_recovery are anyOf; a value
        # matching no branch fails Resources.from_yaml_config's validate_schema with the anyOf
        # message, before any field is interpreted.
        ("  accelerators: 5\n", "resources.accelerators", "$.accelerators"),
        ("  accelerators: [1]\n", "resources.accelerators", "$.accelerators"),
        ("  accelerators: {A100: '2'}\n", "resources.accelerators", "$.accelerators"),
        ("  image_id: 5\n", "resources.image_id", "$.image_id"),
        ("  image_id: [a]\n", "resources.image_id", "$.image_id"),
        ("  job_recovery: 5\n", "resources.job_recovery", "$.job_recovery"),
        ("  job_recovery: {max_restarts_on_errors: -1}\n", "resources.job_recovery",
         "$.job_recovery"),
        ("  job_recovery: {strategy: 3}\n", "resources.job_recovery", "$.job_recovery"),
        ("  job_recovery: {recover_on_exit_codes: 256}\n", "resources.job_recovery",
         "$.job_recovery"),
        ("  job_recovery: {recover_on_exit_codes: [1, 1]}\n", "resources.job_recovery",
         "$.job_recovery"),
        ("  any_of:\n    - image_id: 5\n", "resources.any_of[0].image_id",
         "$.any_of[0].image_id"),
        ("  any_of:\n    - job_recovery: 5\n", "resources.any_of[0].job_recovery",
         "$.any_of[0].job_recovery"),
    ],
)
def test_resources_any_of_fields_fail_with_skypilots_message(body: str, field: str,
                                                             json_path: str) -> None:
    bad = one("service:\n  replicas: 1\nresources:\n  ports: 8080\n" + body)
    assert bad.field == field
    assert "Invalid resources YAML: " in bad.message
    assert f" is not valid under any of the given schemas. Check problematic field(s): " \
           f"{json_path}" in bad.message


def test_resources_any_of_fields_accept_every_branch() -> None:
    head = "service:\n  replicas: 1\nresources:\n  ports: 8080\n  use_spot: true\n"
    # A well-shaped job_recovery passes the schema and is refused later, for services only.
    bad = one(head + "  job_recovery: {strategy: failover, max_restarts_on_errors: 2.0,"
              " recover_on_exit_codes: [1, 255]}\n")
    assert bad.message.startswith("job_recovery is disabled for SkyServe")
    assert parse(head + "  image_id: {us-east-1: ami-1}\n  infra: aws\n").candidates
    assert parse(head + "  accelerators: {A100: null, L4: 1}\n").candidates
    assert parse(head + "  any_of:\n    - image_id: null\n      infra: aws\n").candidates


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        # schemas.get_task_schema types every top-level field; Task.from_yaml_config validates
        # it before anything else.
        ("event_callback: 5", "event_callback", "5 is not of type 'string'. Check problematic "
         "field(s): $.event_callback"),
        ("inputs: {a: 1, b: 2}", "inputs", "{'a': 1, 'b': 2} has too many properties. Check "
         "problematic field(s): $.inputs"),
        ("outputs: {a: x}", "outputs.a", "'x' is not of type 'number'. Check problematic "
         "field(s): $.outputs.a"),
        ("inputs: [a]", "inputs", "['a'] is not of type 'dict'"),
        ("volumes: [a]", "volumes", "['a'] is not of type 'dict'. Check problematic field(s): "
         "$.volumes"),
        ("volume_mounts: {a: 1}", "volume_mounts", "{'a': 1} is not of type 'array'"),
        ("_metadata: [a]", "_metadata", "['a'] is not of type 'dict'"),
        ("file_mounts_mapping: 3", "file_mounts_mapping", "3 is not of type 'dict'"),
        ("config: [a]", "config", "['a'] is not of type 'dict'"),
    ],
)
def test_task_schema_types_every_top_level_field(line: str, field: str, message: str) -> None:
    bad = one(f"service:\n  replicas: 1\n{PORT}{line}\n")
    assert bad.field == field
    assert bad.message.startswith("Invalid task YAML: ") and message in bad.message
    assert parse(f"service:\n  replicas: 1\n{PORT}inputs: {{s3://b: 1.5}}\n"
                 "event_callback: echo hi\n").service_port == 8080


@pytest.mark.parametrize(("memory", "parsed"), [("'16x'", "16x"), ("'16GB+'", "16.0+")])
def test_memory_suffixes_as_skypilot(memory: str, parsed: str) -> None:
    task = parse(f"service:\n  replicas: 1\n{PORT}  memory: {memory}\n")
    assert task.candidates[0].memory == parsed


def test_memory_with_both_suffixes_is_refused_as_skypilot_does() -> None:
    # '32x+' loses its '+' and then its 'x', and Resources._set_memory cannot read '32+x'.
    got = one(f"service:\n  replicas: 1\n{PORT}  memory: '32x+'\n")
    assert got.field == "resources.memory"
    assert got.message == ('The "memory" field should be either a number or a string '
                           "\"<number>+\". Found: '32+x'")


def test_infra_beside_legacy_fields_is_refused_with_skypilots_words() -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  infra: gcp\n  cloud: aws\n  region: us-east-1\n")
    assert got.field == "resources.cloud"
    assert got.message == ("Cannot specify both `infra` and `cloud`, `region`, or `zone` "
                           "parameters. Got: infra=gcp, cloud=AWS, region=us-east-1, zone=None")
    # The schema speaks first: an unknown legacy cloud is a schema error, not the pair.
    got = one(f"service:\n  replicas: 1\n{PORT}  infra: gcp\n  cloud: bogus\n")
    assert got.message.startswith("Invalid resources YAML: 'bogus' is not one of ['aws'")


@pytest.mark.parametrize("group", ["any_of", "ordered"])
def test_an_empty_group_is_no_group_as_in_skypilot(group: str) -> None:
    task = parse(f"service:\n  replicas: 1\n{PORT}  accelerators: [A100, L4]\n  {group}: []\n")
    assert [c.accelerator for c in task.candidates] == ["A100", "L4"] and task.ordered
    got = one(f"service:\n  replicas: 1\n{PORT}  any_of: []\n  ordered: []\n")
    assert got.message == 'Cannot specify both "any_of" and "ordered" in resources.'


def test_a_bad_probe_mapping_gets_skyservers_anyof_message_at_the_problem() -> None:
    got = one("service:\n  readiness_probe:\n    path: /\n    timeout_seconds: '10'\n" + PORT)
    assert got.field == "service.readiness_probe.timeout_seconds" and got.line == 4
    assert got.message == (
        "Invalid service YAML: {'path': '/', 'timeout_seconds': '10'} is not valid under any "
        "of the given schemas. Check problematic field(s): $.readiness_probe "
        "('10' is not of type 'number')")


def test_job_recovery_with_an_unknown_key_is_a_schema_anyof_error() -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  job_recovery: {{a: 1}}\n")
    assert got.message.startswith(
        "Invalid resources YAML: {'a': 1} is not valid under any of the given schemas. "
        "Check problematic field(s): $.job_recovery (")


def test_empty_region_and_labels_as_skypilot_serialises_them() -> None:
    task = parse(f"service:\n  replicas: 1\n{PORT}  region: ''\n  labels: {{}}\n")
    candidate = task.candidates[0]
    assert candidate.region is None and "infra" not in candidate.to_json()
    assert candidate.to_json()["labels"] == {}


def test_mapping_keys_that_are_not_strings_are_read_as_text_as_skypilot_takes_them() -> None:
    """SkyPilot's schema checks the values of labels, probe headers, a QPS mapping and an
    accelerators mapping, not the type of their keys, and serialises ``1:`` as ``"1"``."""
    task = parse(f"service:\n  replicas: 1\n{PORT}  labels: {{2: a, true: b, team: ml}}\n")
    assert task.candidates[0].labels == {"2": "a", "true": "b", "team": "ml"}
    qps = parse("service:\n  load_balancing_policy: instance_aware_least_load\n"
                "  replica_policy:\n    min_replicas: 1\n    max_replicas: 2\n"
                f"    target_qps_per_replica: {{1: 2, L4: 3}}\n{PORT}")
    assert qps.service.replica_policy.target_qps_per_replica == {"1": 2, "L4": 3}
    probe = parse(f"service:\n  readiness_probe: {{path: /, headers: {{1: a}}}}\n"
                  f"  replicas: 1\n{PORT}")
    assert probe.service.readiness_probe.headers == {"1": "a"}
    accelerator = parse(f"service:\n  replicas: 1\n{PORT}  accelerators: {{1: 2}}\n")
    assert accelerator.candidates[0].to_json()["accelerators"] == {"1": 2}
    label = one(f"service:\n  replicas: 1\n{PORT}  labels: {{1: 2}}\n")
    assert (label.field, label.message) == (
        "resources.labels.1",
        "Invalid resources YAML: 2 is not of type 'string'. Check problematic field(s): "
        "$.labels.1")


def test_a_bad_ordered_beside_any_of_is_a_schema_error_first() -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  any_of: [{{cpus: 2}}]\n  ordered: 3\n")
    assert got.message == ("Invalid resources YAML: 3 is not of type 'array'. Check "
                           "problematic field(s): $.ordered")


@pytest.mark.parametrize(("accelerators", "anchor"), [
    ("':2'", "The accelerator name is empty. Found: ':2'"),
    ("A100:0", "Accelerator count must be a positive number. Found: 'A100:0'"),
])
def test_skyforms_own_accelerator_rules_point_at_their_entry(accelerators: str,
                                                            anchor: str) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  accelerators: {accelerators}\n")
    assert got.message == (f"{anchor} (skyform is stricter than SkyServe here: see "
                           "docs/differences.md#stricter-accelerator-count)")
    assert 'id="stricter-accelerator-count"' in (
        Path(__file__).resolve().parents[1] / "docs" / "differences.md").read_text()


@pytest.mark.parametrize(("resources", "message"), [
    ("accelerators: 'L4:1:1'", "If specifying a GPU manufacturer, you must alsospecify the memory "
     "size"),
    ("accelerators: 'L4:1:x'", "invalid literal for int() with base 10: 'x'"),
    ("accelerators: '24GB:1.5'", "invalid literal for int() with base 10: '1.5'"),
    ("accelerators: '80GB+:x'", "invalid literal for int() with base 10: 'x'"),
    ("accelerators: '24GB:0'", "Accelerator count must be a positive number. Found: '24GB:0' "
     "(skyform is stricter than SkyServe here"),
    # The section's own value that every item replaces is read as SkyPilot reads it: a memory
    # selector is checked there.
    ("accelerators: '24GB:x'\n  any_of: [{accelerators: A100}]",
     "invalid literal for int() with base 10: 'x'"),
    ("volumes: {/d: x}", "Invalid resources YAML: {'/d': 'x'} is not of type 'array'. Check "
     "problematic field(s): $.volumes"),
])
def test_resources_refused_with_skypilots_words(resources: str, message: str) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  {resources}\n")
    assert message in got.message


@pytest.mark.parametrize("base", ["A100:abc", "':2'", "A100:0", "{A100: -1}"])
def test_a_base_accelerator_every_item_replaces_is_not_checked_as_skypilot(base: str) -> None:
    for group in ("any_of", "ordered"):
        task = parse(f"service:\n  replicas: 1\n{PORT}  accelerators: {base}\n"
                     f"  {group}: [{{accelerators: L4}}, {{accelerators: A100}}]\n")
        assert [c.accelerator for c in task.candidates] == ["L4", "A100"]


def test_secret_names_are_the_schemas_unsupported_fields() -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}secrets:\n  1S: x\n")
    assert got.message == "Invalid task YAML: Found unsupported field '1S'."


def test_a_duplicate_accelerator_in_a_list_is_one_candidate_and_priority_is_kept() -> None:
    task = parse(f"service:\n  replicas: 1\n{PORT}  accelerators: [L4, L4, A100]\n"
                 "  priority: 5\n")
    assert [c.accelerator for c in task.candidates] == ["L4", "A100"]
    assert task.candidates[0].to_json()["priority"] == 5


def test_skyforms_policy_extension_is_spelled_exactly() -> None:
    got = one("service:\n  replicas: 1\n  load_balancing_policy: PREFIX_AWARE\n" + PORT)
    assert got.message.startswith("Invalid service YAML: 'PREFIX_AWARE' is not one of "
                                  "['round_robin', 'least_load', 'instance_aware_least_load']")


@pytest.mark.parametrize(("resources", "field", "message"), [
    # SkyPilot validates the whole section before the items override the base ...
    ("infra: /aws\n  any_of:\n    - infra: aws\n    - infra: gcp", "resources.infra",
     "Invalid resources YAML: '/aws' does not match"),
    # ... and parses the base's accelerators even where every item overrides them.
    ("accelerators: 'L4:1:1'\n  ordered:\n    - accelerators: A100\n    - accelerators: L4",
     "resources.accelerators", "If specifying a GPU manufacturer"),
    # The alias is checked as the field it stands for, located where it is written.
    ("gpus: 1", "resources.gpus", "Invalid resources YAML: 1 is not valid under any of the "
     "given schemas. Check problematic field(s): $.accelerators"),
], ids=["shadowed-infra", "shadowed-accelerators", "gpus-alias"])
def test_resources_problems_skypilot_sees_before_the_candidates(resources: str, field: str,
                                                                message: str) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  {resources}\n")
    assert got.field == field and got.message.startswith(message), got


def test_a_bad_priority_beside_several_candidates_is_one_error_not_a_crash() -> None:
    got = issues(f"service:\n  replicas: 1\n{PORT}  priority: x\n  any_of:\n"
                 "    - infra: aws\n    - infra: gcp\n")
    assert [i.message for i in got] == ["Invalid resources YAML: 'x' is not of type 'integer'. "
                                        "Check problematic field(s): $.priority"]


def test_a_schema_problem_is_reported_beside_the_one_that_stops_the_candidates() -> None:
    got = issues(f"service:\n  replicas: 1\n{PORT}  accelerators: [A100, L4]\n  use_spot: 0\n"
                 "  disk_size: x\n  any_of:\n    - cpus: 2\n")
    messages = [i.message for i in got]
    assert ("Invalid resources YAML: 0 is not of type 'boolean'. Check problematic field(s): "
            "$.use_spot") in messages
    assert ("Invalid resources YAML: 'x' is not valid under any of the given schemas. Check "
            "problematic field(s): $.disk_size") in messages
    assert any("with \"any_of\" in resources" in m for m in messages)


def test_max_below_min_is_reported_with_the_values_as_written() -> None:
    got = issues("service:\n  replica_policy:\n    min_replicas: 2\n    max_replicas: 1.0\n"
                 "    target_qps_per_replica: 1\n" + PORT)
    assert any(i.message == "max_replicas must be greater than or equal to min_replicas. "
               "Found: min_replicas=2, max_replicas=1.0" for i in got), got


@pytest.mark.parametrize(("autostop", "dumped"), [
    ("true", {"idle_minutes": 0, "down": False}),
    ("false", False),
    ("10", {"idle_minutes": 10, "down": False}),
    ("'2h'", {"idle_minutes": 120, "down": False}),
    ("{idle_minutes: 5, wait_for: JOBS}", {"idle_minutes": 5, "down": False, "wait_for": "jobs"}),
])
def test_autostop_is_kept_as_skypilot_reserialises_it(autostop: str, dumped: Any) -> None:
    task = parse(f"service:\n  replicas: 1\n{PORT}  autostop: {autostop}\n")
    assert task.candidates[0].to_json()["autostop"] == dumped


@pytest.mark.parametrize("autostop", ["x", "'2y'", "{idle_minutes: -1}", "{down: 1}",
                                      "{wait_for: never}", "{x: 1}", "[1]"])
def test_autostop_of_no_schema_branch_is_the_anyof_error(autostop: str) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}  autostop: {autostop}\n")
    assert got.field == "resources.autostop" and "is not valid under any of the given " \
        "schemas. Check problematic field(s): $.autostop" in got.message


def test_pool_false_is_kept_in_the_parsed_spec_as_skypilot_keeps_it() -> None:
    task = parse("service:\n  replicas: 1\n  pool: false\n" + PORT)
    assert task.service.to_json()["pool"] is False
    assert "pool" not in parse("service:\n  replicas: 1\n" + PORT).service.to_json()


@pytest.mark.parametrize(("mount", "field", "message"), [
    ("{name: b, mode: x}", "file_mounts./a.mode",
     "Invalid storage YAML: 'x' is not one of ['MOUNT', 'COPY', 'MOUNT_CACHED']. Check "
     "problematic field(s): $.mode"),
    ("{name: b, store: foo}", "file_mounts./a.store", "'foo' is not one of ['S3', 'GCS'"),
    ("{source: []}", "file_mounts./a.source",
     "Invalid storage YAML: [] is not valid under any of the given schemas. Check problematic "
     "field(s): $.source"),
    ("{name: b, x: 1}", "file_mounts./a.x", "Invalid storage YAML: Found unsupported field 'x'."),
    ("{name: b, config: {disk_size: x}}", "file_mounts./a.config.disk_size",
     "$.config.disk_size"),
])
def test_a_storage_mount_is_checked_against_skypilots_storage_schema(
        mount: str, field: str, message: str) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}file_mounts:\n  /a: {mount}\n")
    assert got.field == field and message in got.message, got


def test_storage_mounts_skypilot_accepts_stay_valid() -> None:
    for mount in ("{name: b, mode: mount, store: s3}", "{source: [s3://a]}", "s3://b/p"):
        parse(f"service:\n  replicas: 1\n{PORT}file_mounts:\n  /a: {mount}\n")


@pytest.mark.parametrize(("config", "message"), [
    ("{x: 1}", "Invalid task YAML: Found unsupported field 'x'."),
    ("{kubernets: {}}", "Invalid task YAML: Instead of 'kubernets', did you mean 'kubernetes'?"),
    ("{kubernetes: {provision_timeout: x}}",
     "Invalid task YAML: 'x' is not of type 'integer'. Check problematic field(s): "
     "$.config.kubernetes.provision_timeout"),
    ("{docker: {run_options: [--a, 1]}}",
     "Invalid task YAML: ['--a', 1] is not valid under any of the given schemas. Check "
     "problematic field(s): $.config.docker.run_options"),
])
def test_task_config_takes_only_the_overridable_keys(config: str, message: str) -> None:
    got = one(f"service:\n  replicas: 1\n{PORT}config: {config}\n")
    assert message in got.message, got


def test_task_config_skypilot_accepts_stays_valid() -> None:
    parse(f"service:\n  replicas: 1\n{PORT}config: {{kubernetes: {{pod_config: {{spec: {{}}}}}},"
          " docker: {run_options: --a}}\n")
