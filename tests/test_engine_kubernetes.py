"""The real Pulumi engine on the project: the CLI built from Go modules, the real Kubernetes
provider in render mode, a local file backend and the passphrase secrets provider.

Marked ``engine``; a quick local run can leave them out with ``-m 'not engine'``. CI runs them
(``.ci/run`` builds or reuses the toolchain first).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pulumi.automation as auto
import pytest
import yaml
from engine_support import (
    AGENT_TOKEN,
    PASSPHRASE,
    ROOT,
    EngineProject,
    objects_by_kind,
    rendered_objects,
)

pytestmark = pytest.mark.engine

K8S_STACK = "kubernetes-example"
K8S_VERSION = "1.30.0"
HF_SECRET = "hf_engine_secret_7d1e0c55"
RENDER_DIR = "rendered"


def _init_k8s(project: EngineProject) -> None:
    """The README's commands for the Kubernetes example on a machine without a cluster and
    without the random provider: the example file gives service, cloud and namespace."""
    project.cli("stack", "init", K8S_STACK)
    project.cli("config", "set", "--secret", "skyform:agentToken", AGENT_TOKEN)
    project.cli("config", "set", "skyform:renderYamlToDirectory", RENDER_DIR)


def _changes(result: Any) -> dict[str, int]:
    """The steps of an update that touch resources. Left out: "read", the program reading
    its own stack's last outputs (a StackReference) when the stack file has no
    skyform:fleet, and "discard", the engine dropping that read from the state when the
    file has one (the controller's copy)."""
    return {k: v for k, v in (result.summary.resource_changes or {}).items()
            if v and k not in ("read", "discard")}


@pytest.fixture
def project(tmp_path: Path) -> EngineProject:
    return EngineProject.create(tmp_path)


def test_config_set_as_the_readme_says_then_preview(project: EngineProject) -> None:
    _init_k8s(project)
    project.cli("config", "set", "--path", "skyform:envs.GREETING", "hello-from-config")
    project.cli("config", "set", "--secret", "--path", "skyform:secrets.HF_TOKEN", HF_SECRET)
    project.cli("config", "set", "--path", "skyform:storageClasses.medium", "fast-ssd")
    project.cli("config", "set", "--path", "skyform:allowedCidrs[0]", "203.0.113.0/24")
    stored = project.stack_config_file(K8S_STACK)["config"]
    # --path writes real objects (not JSON strings), and --secret keeps the leaf encrypted.
    assert stored["skyform:envs"] == {"GREETING": "hello-from-config"}
    assert set(stored["skyform:secrets"]["HF_TOKEN"]) == {"secure"}
    assert stored["skyform:storageClasses"] == {"medium": "fast-ssd"}
    assert stored["skyform:allowedCidrs"] == ["203.0.113.0/24"]
    assert set(stored["skyform:agentToken"]) == {"secure"}

    stack = project.stack(K8S_STACK)
    events: list[auto.EngineEvent] = []
    preview = stack.preview(on_event=events.append)
    creates = preview.change_summary.get(auto.OpType.CREATE, 0)
    assert creates >= 15, preview.change_summary
    assert set(preview.change_summary) == {auto.OpType.CREATE}
    # Unknown outputs during a real preview (secret names, LoadBalancer status) did not
    # break the program: every resource was planned and nothing errored.
    diagnostics = [e.diagnostic_event for e in events if e.diagnostic_event]
    assert not [d for d in diagnostics if d.severity == "error"], diagnostics


def test_up_renders_is_stable_scales_keeps_secrets_and_destroys(
    project: EngineProject,
) -> None:
    _init_k8s(project)
    project.cli("config", "set", "--secret", "--path", "skyform:secrets.HF_TOKEN", HF_SECRET)
    project.cli("config", "set", "--path", "skyform:storageClasses.medium", "fast-ssd")
    rendered = project.dir / RENDER_DIR
    stack = project.stack(K8S_STACK)

    first = stack.up()
    assert first.summary.result == "succeeded"
    objects = rendered_objects(rendered)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Secret", "ConfigMap", "NetworkPolicy", "ServiceAccount", "Role",
            "RoleBinding", "Deployment", "Service", "StatefulSet"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # Pod Security baseline on the namespace, and the admission policy that pins what the
    # controller's ServiceAccount creates, as the real provider renders them.
    [namespace] = objects_by_kind(objects, "Namespace").values()
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    [policy] = objects_by_kind(objects, "ValidatingAdmissionPolicy").values()
    [binding] = objects_by_kind(objects, "ValidatingAdmissionPolicyBinding").values()
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert any("privileged" in v["expression"] for v in policy["spec"]["validations"])
    sets = objects_by_kind(objects, "StatefulSet")
    assert [s["spec"]["replicas"] for s in sets.values()] == [1]
    claim = next(iter(sets.values()))["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["storageClassName"] == "fast-ssd"

    outputs = json.loads(project.cli("stack", "output", "--json").stdout)
    assert set(outputs) == {"endpoint", "controllerAddress", "replicaCount",
                            "controllerReplicas", "hourlyCost",
                            "replicas", "replicaGroupUrns", "adminUrl", "adminToken", "fleet",
                            "locations"}
    assert outputs["adminToken"] == "[secret]"  # the agent token stays a secret output
    assert outputs["endpoint"].endswith(":30001")
    assert outputs["replicaCount"] == 1
    assert [r["index"] for r in outputs["replicas"]] == [0]
    assert all(u.startswith("urn:pulumi:") for u in outputs["replicaGroupUrns"])

    # Nothing changed: the engine finds no diff (no perpetual diff, nothing replaced).
    again = stack.up()
    assert set(_changes(again)) == {"same"}, _changes(again)

    urns_before = _resource_urns(project)
    digest = outputs["fleet"]["generations"][0]["digest"]
    for count in (2, 3, 2):
        # What the agent writes before its targeted up.
        project.cli("config", "set", "skyform:fleet", json.dumps({"version": 1, "generations": [
            {"generation": 1, "digest": digest, "spot": 0, "ondemand": count}]}))
        step = stack.up()
        changes = _changes(step)
        # Only the StatefulSet's replica count moves: no create, delete or replace.
        assert changes.get("update") == 1 and set(changes) == {"same", "update"}, changes
        sets = objects_by_kind(rendered_objects(rendered), "StatefulSet")
        assert [s["spec"]["replicas"] for s in sets.values()] == [count]
        listed = step.outputs["replicas"].value
        assert sorted(r["index"] for r in listed) == list(range(count))
    assert _resource_urns(project) == urns_before
    # A `pulumi up` from a checkout whose stack file has no skyform:fleet (the user's, not
    # the controller's) reads the counts from the stack's last output: nothing changes.
    project.cli("config", "rm", "skyform:fleet")
    assert set(_changes(stack.up())) == {"same"}
    sets = objects_by_kind(rendered_objects(rendered), "StatefulSet")
    assert [s["spec"]["replicas"] for s in sets.values()] == [2]

    # Secrets set with --secret never show in plain text in the state or in any rendered
    # object other than the Secret itself.
    state_text = project.cli("stack", "export").stdout
    for value in (AGENT_TOKEN, HF_SECRET):
        encoded = base64.b64encode(value.encode()).decode()
        assert value not in state_text and encoded not in state_text
        for path in rendered.rglob("*.yaml"):
            doc = yaml.safe_load(path.read_text())
            if doc.get("kind") != "Secret":
                assert value not in path.read_text(), path
                assert encoded not in path.read_text(), path

    project.cli("destroy", "--yes", "--skip-preview")
    assert list(rendered.rglob("*.yaml")) == []
    assert not _export(project)["deployment"].get("resources")


def _resource_urns(project: EngineProject) -> set[str]:
    """The URNs of the stack's resources, without its read of its own outputs (and the
    builtin provider of that read), which come and go with skyform:fleet in the file."""
    return {r["urn"] for r in _export(project)["deployment"]["resources"]
            if r["type"] not in ("pulumi:pulumi:StackReference", "pulumi:providers:pulumi")}


def _export(project: EngineProject) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(project.cli("stack", "export").stdout)
    return data


@pytest.mark.parametrize("stack_file", sorted((ROOT / "stacks").glob("Pulumi.*-example.yaml")),
                         ids=lambda p: p.name)
def test_example_stacks_pass_config_validation(project: EngineProject, stack_file: Path
                                               ) -> None:
    """Each example stack with only the keys the README says are required: the engine
    accepts its config (no "missing configuration values"). Kubernetes previews fully; AWS
    and GCP stop only where their provider plugin is needed, which cannot be built here."""
    name = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")
    project.cli("stack", "init", name)
    if name == K8S_STACK:
        project.cli("config", "set", "--secret", "skyform:agentToken", AGENT_TOKEN)
        project.cli("config", "set", "skyform:renderYamlToDirectory", RENDER_DIR)
        result = project.stack(name).preview()
        assert result.change_summary.get(auto.OpType.CREATE, 0) >= 15
        return
    with pytest.raises(auto.CommandError) as caught:
        project.stack(name).preview()
    text = str(caught.value)
    assert "missing configuration" not in text
    assert "no resource plugin 'pulumi-resource-" in text, text[-2000:]


def test_missing_workdir_is_a_clear_preview_error(tmp_path: Path) -> None:
    service = (ROOT / "examples" / "hello.yaml").read_text() + "\nworkdir: ./no-such-dir\n"
    project = EngineProject.create(tmp_path, extra_files={"svc/missing.yaml": service})
    project.cli("stack", "init", "aws-example")
    project.cli("config", "set", "skyform:service", "svc/missing.yaml")
    with pytest.raises(auto.CommandError) as caught:
        project.stack("aws-example").preview()
    text = str(caught.value)
    assert "workdir: local path './no-such-dir' does not exist (resolved to " in text
    assert "archive" not in text.lower() and "Traceback" not in text


def test_synth_plans_the_same_resources_as_a_real_preview(project: EngineProject) -> None:
    _init_k8s(project)
    events: list[auto.EngineEvent] = []
    project.stack(K8S_STACK).preview(on_event=events.append)
    engine = {(e.resource_pre_event.metadata.type, e.resource_pre_event.metadata.urn
               .rsplit("::", 1)[-1])
              for e in events if e.resource_pre_event is not None}
    engine.discard(("pulumi:pulumi:Stack", f"skyform-{K8S_STACK}"))
    engine = {(t, n) for t, n in engine if not n.startswith("default")}
    example = project.stack_config_file(K8S_STACK)["config"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "skyform"), "synth",
         str(ROOT / example["skyform:service"]), "--cloud", example["skyform:cloud"],
         "--config", f"namespace={example['skyform:namespace']}",
         "--config", f"agentToken={AGENT_TOKEN}",
         "--config", f"renderYamlToDirectory={RENDER_DIR}", "--json"],
        capture_output=True, text=True, check=True, cwd=ROOT)
    synth = {(r["type"], r["name"]) for r in json.loads(done.stdout)["resources"]}
    synth.discard(("pulumi:pulumi:Stack", "synth"))
    # The program's read of its own stack names the stack (synth's is called "synth").
    synth = {(t, n.replace("/synth", f"/{K8S_STACK}")) for t, n in synth}
    assert ("pulumi:providers:kubernetes", "render") in engine
    assert len(engine) >= 20
    assert synth == engine


def test_skyform_stack_commands_run_the_engine(project: EngineProject, tmp_path: Path) -> None:
    """`skyform preview|up|destroy --stack`: the engine's output, exit 1 with one `error:`
    line when it fails, exit 1 outside a project."""
    _init_k8s(project)
    skyform = str(Path(sys.executable).parent / "skyform")
    env = {**os.environ, **project.env}

    def run(*args: str, cwd: Path = project.dir) -> subprocess.CompletedProcess[str]:
        return subprocess.run([skyform, *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300, check=False)

    done = run("up", "--stack", K8S_STACK)
    assert done.returncode == 0, done.stderr
    # The engine's output as the CLI prints it: its lines (not one run-on line), the
    # header, one line per resource, the summary; no colour codes into a pipe.
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Updating (") and lines[0].endswith(":"), lines[:3]
    assert "Resources:" in lines
    assert any(re.fullmatch(r"\s+\+ \d+ created", line)
               for line in lines[lines.index("Resources:"):]), lines
    assert any(line.startswith("Duration: ") for line in lines), lines
    created = [line for line in lines if "kubernetes:apps/v1:StatefulSet" in line]
    assert created and all(len(line) < 200 for line in created), created
    assert "\x1b[" not in done.stdout
    assert objects_by_kind(rendered_objects(project.dir / RENDER_DIR), "StatefulSet")
    project.cli("config", "set", "skyform:cloud", "azure")
    failed = run("preview", "--stack", K8S_STACK)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: pulumi preview failed: skyform:cloud: must be one of aws, gcp, kubernetes, "
        "got 'azure'")
    project.cli("config", "set", "skyform:cloud", "kubernetes")
    assert run("destroy", "--stack", K8S_STACK).returncode == 0
    assert list((project.dir / RENDER_DIR).rglob("*.yaml")) == []
    elsewhere = run("preview", "--stack", K8S_STACK, cwd=tmp_path)
    assert elsewhere.returncode == 1
    assert "no Pulumi project here" in elsewhere.stderr


def test_the_controllers_own_up_from_the_bundle_changes_nothing(
    project: EngineProject, tmp_path: Path,
) -> None:
    """The controller runs `up` from the project bundle the program ships in a Secret
    (program, skyform's source, the stack file, the service YAML), with the passphrase from
    its Secret: on an unchanged stack that `up` reports no changes. The user committed none
    of it anywhere (the copy has no git history at all)."""
    _init_k8s(project)
    project.cli("config", "set", "--secret", "skyform:pulumiPassphrase", PASSPHRASE)
    project.cli("config", "set", "skyform:backendUrl", project.env["PULUMI_BACKEND_URL"])
    assert project.stack(K8S_STACK).up().summary.result == "succeeded"
    objects = rendered_objects(project.dir / RENDER_DIR)
    secrets = objects_by_kind(objects, "Secret")
    bundle = base64.b64decode(secrets["hello-controller-project"]["data"]["project.tgz"])
    controller_dir = tmp_path / "controller" / "project"
    controller_dir.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        tar.extractall(controller_dir, filter="data")
    assert not (controller_dir / ".git").exists()
    assert (controller_dir / "stacks" / f"Pulumi.{K8S_STACK}.yaml").is_file()
    # The passphrase the controller mounts, and the agent config's way to it.
    passphrase = base64.b64decode(secrets["hello-secrets"]["data"]["pulumi-passphrase"])
    assert passphrase.decode() == PASSPHRASE
    config = objects_by_kind(objects, "ConfigMap")["hello-controller-files"]["data"]
    deployer = json.loads(config["agent.json"])["deployer"]
    assert deployer["env_files"] == {"PULUMI_CONFIG_PASSPHRASE": "/run/skyform/pulumi/passphrase"}
    assert PASSPHRASE not in config["agent.json"]

    passfile = tmp_path / "controller" / "passphrase"
    passfile.write_bytes(passphrase)
    env = {k: v for k, v in project.env.items() if k != "PULUMI_CONFIG_PASSPHRASE_FILE"}
    from lb_agent.control.deployers.pulumi import local_stack_factory

    stack: Any = local_stack_factory(str(controller_dir), K8S_STACK, env,
                                     {"PULUMI_CONFIG_PASSPHRASE": str(passfile)})()
    try:
        result = stack.preview(diff=True)
    finally:
        stack.close()  # the engine worker, and this process's CPUs back
    changed = [line for line in result.stdout.splitlines()
               if line.lstrip().startswith(("+-", "~", "-", "+")) or "=>" in line]
    # "read": the program reads its own stack's last outputs; nothing is changed. (The
    # engine worker reports the operations by their names.)
    assert set(result.change_summary) - {auto.OpType.READ.value} == {auto.OpType.SAME.value}, \
        "\n".join(changed)


def test_seed_tutorial_workdir_service_renders_and_is_stable(project: EngineProject) -> None:
    """The SkyServe tutorial's `workdir: .` service (examples/hello-workdir) through the real
    engine: its files travel in a ConfigMap whose digest annotates the pods, every rendered
    object passes kubernetes-validate, a second `up` changes nothing, and an edit of
    index.html rolls the replicas (the StatefulSet's pod template changes; no workload is
    replaced, and the controller's Deployment is left as it is)."""
    _init_k8s(project)
    project.cli("config", "set", "skyform:service", "examples/hello-workdir/service.yaml")
    stack = project.stack(K8S_STACK)
    assert stack.up().summary.result == "succeeded"
    objects = rendered_objects(project.dir / RENDER_DIR)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    sets = objects_by_kind(objects, "StatefulSet")
    assert [s["spec"]["replicas"] for s in sets.values()] == [2]
    template = next(iter(sets.values()))["spec"]["template"]["metadata"]
    digest = next(v for k, v in template["annotations"].items() if "digest" in k)
    assert any(name.endswith("-workdir") for name in objects_by_kind(objects, "ConfigMap"))
    assert set(_changes(stack.up())) == {"same"}
    index = project.dir / "examples" / "hello-workdir" / "index.html"
    index.write_text(index.read_text().replace("Hello", "Hello again"))
    changed = stack.up()
    # pulumi-kubernetes replaces a ConfigMap or Secret whose data changes (they are immutable
    # to it); nothing that holds a replica or the controller's address and state is replaced.
    # The new files are a new generation of replicas (a StatefulSet of their own).
    # The controller's Deployment is not even updated: its pod keeps running, and its
    # supervisor installs the new bundle from the re-created Secret (lb_agent/supervisor.py).
    def touched(verb: str) -> set[str]:
        return {line.split()[1] for line in changed.stdout.splitlines() if f" {verb} (" in line}

    assert touched("replaced") <= {"kubernetes:core/v1:ConfigMap",
                                   "kubernetes:core/v1:Secret"}, changed.stdout
    assert "kubernetes:apps/v1:StatefulSet" in touched("created") | touched("updated")
    assert "kubernetes:apps/v1:Deployment" not in touched("updated") | touched("replaced")
    sets = objects_by_kind(rendered_objects(project.dir / RENDER_DIR), "StatefulSet")
    new_digest = next(v for k, v in next(iter(sets.values()))["spec"]["template"]["metadata"][
        "annotations"].items() if "digest" in k)
    assert new_digest != digest


async def test_a_changed_yaml_rolls_counts_from_the_old_generation_to_the_new(
    project: EngineProject,
) -> None:
    """A rolling update through the real engine: the user's `up` of a changed YAML adds
    generation 2 with no replicas and leaves generation 1's pods untouched; the agent's
    deployer then moves the counts with targeted `up`s (2+0 -> 2+1 -> 1+1 -> 0+2), and the
    emptied generation 1 is deleted. No step replaces anything."""
    from lb_agent.control.deployers.pulumi import PulumiDeployer
    from lb_agent.control.registry import Registry
    from lb_agent.control.store import StateStore

    _init_k8s(project)
    project.cli("config", "set", "skyform:backendUrl", project.env["PULUMI_BACKEND_URL"])
    rendered = project.dir / RENDER_DIR
    stack = project.stack(K8S_STACK)
    stack.up()
    v1 = stack.outputs()["fleet"].value["generations"][0]
    project.cli("config", "set", "skyform:fleet", json.dumps({"version": 1, "generations": [
        {**v1, "ondemand": 2}]}))
    stack.up()
    before = objects_by_kind(rendered_objects(rendered), "StatefulSet")["hello-ondemand"]
    v1_files = objects_by_kind(rendered_objects(rendered), "ConfigMap")["hello-ondemand-files"]

    # The user edits the YAML and runs `up` from a checkout without the agent's key.
    service = project.dir / "examples" / "hello.yaml"
    service.write_text(service.read_text().replace("Hello from", "Hello v2 from"))
    project.cli("config", "rm", "skyform:fleet")
    events: list[auto.EngineEvent] = []
    stack.up(on_event=events.append)
    touched = {(e.resource_pre_event.metadata.op, e.resource_pre_event.metadata.urn
                .rsplit("::", 1)[-1]) for e in events if e.resource_pre_event is not None
               and e.resource_pre_event.metadata.op not in (auto.OpType.SAME,
                                                            auto.OpType.READ)}
    # Only generation 2's new objects, and the controller's: its config (the new spec) and
    # bundle are replaced, so the pod restarts with them; nothing of generation 1 moves.
    # ("default": the builtin provider of the program's read of its own stack.)
    assert {n for op, n in touched if op == auto.OpType.CREATE} - {"default"} == {
        "service-ondemand-g2", "service-ondemand-g2-files", "service-ondemand-g2-headless",
        "service-ondemand-g2-set"}, touched
    assert not [n for _, n in touched if n.startswith("service-ondemand") and "g2" not in n]
    assert not [op for op, _ in touched if op == auto.OpType.DELETE], touched
    objects = rendered_objects(rendered)
    sets = objects_by_kind(objects, "StatefulSet")
    assert {n: s["spec"]["replicas"] for n, s in sets.items()} == {
        "hello-ondemand": 2, "hello-ondemand-g2": 0}
    assert sets["hello-ondemand"]["spec"]["template"] == before["spec"]["template"]
    maps = objects_by_kind(objects, "ConfigMap")
    assert maps["hello-ondemand-files"]["data"] == v1_files["data"], "generation 1 is frozen"
    assert "Hello v2 from" in json.dumps(maps["hello-ondemand-g2-files"]["data"])
    assert "Hello v2 from" not in json.dumps(maps["hello-ondemand-files"]["data"])
    agent = json.loads(maps["hello-controller-files"]["data"]["agent.json"])
    assert (agent["deployer"]["generation"], agent["deployer"]["digest"]) == (
        2, stack.outputs()["fleet"].value["generations"][1]["digest"])

    # The agent (restarted with generation 2 in its config) moves the counts.
    registry = Registry(StateStore(":memory:"))
    deployer = PulumiDeployer(registry, stack_factory=lambda: project.stack(K8S_STACK),
                              stack_name=K8S_STACK, generation=2,
                              digest=agent["deployer"]["digest"], retry_initial_seconds=0.1)
    await deployer.start()
    assert deployer.desired == {"spot-g2": 0, "ondemand-g2": 0, "ondemand": 2}
    seen: list[dict[str, int]] = []

    async def applied() -> None:
        done = deployer.updates_ok + 1
        while deployer.updates_ok < done:
            assert deployer.failures == 0, deployer.last_error
            await asyncio.sleep(0.05)
        sets = objects_by_kind(rendered_objects(rendered), "StatefulSet")
        seen.append({n: s["spec"]["replicas"] for n, s in sets.items()})

    try:
        assert await deployer.scale_up(False) == "ondemand-g2-0"
        await applied()
        await deployer.remove(deployer.choose_removal("ondemand-0"))  # drained by the scaler
        await applied()
        assert await deployer.scale_up(False) == "ondemand-g2-1"
        await deployer.remove(deployer.choose_removal("ondemand-0"))
        await applied()
    finally:
        await deployer.close()
    assert seen == [{"hello-ondemand": 2, "hello-ondemand-g2": 1},
                    {"hello-ondemand": 1, "hello-ondemand-g2": 1},
                    {"hello-ondemand-g2": 2}]
    fleet = stack.outputs()["fleet"].value
    assert [(g["generation"], g["ondemand"]) for g in fleet["generations"]] == [(2, 2)]
    # And the user's next `up` (no agent key) keeps exactly that.
    project.cli("config", "rm", "skyform:fleet")
    events = []
    stack.up(on_event=events.append)
    touched = {(e.resource_pre_event.metadata.op, e.resource_pre_event.metadata.urn
                .rsplit("::", 1)[-1]) for e in events if e.resource_pre_event is not None
               and e.resource_pre_event.metadata.op not in (auto.OpType.SAME,
                                                            auto.OpType.READ)}
    # Only the controller's Role and its admission policy move (in place): they no longer
    # name generation 1's objects.
    assert touched == {(auto.OpType.UPDATE, "service-controller-role"),
                       (auto.OpType.UPDATE, "service-controller-policy")}, touched
    role = objects_by_kind(rendered_objects(rendered), "Role")["hello-controller"]
    named = {n for rule in role["rules"] for n in rule.get("resourceNames", [])}
    assert "hello-ondemand-g2" in named and "hello-ondemand" not in named


def test_api_keys_set_with_the_real_cli_stay_secret_and_reach_the_agent_as_digests(
    project: EngineProject,
) -> None:
    """`pulumi config set --secret --path 'skyform:apiKeys...'` as the README says, then a
    real `up`: the keys are ciphertext in the stack file, absent from the state and from every
    rendered object, and the controller's Secret carries exactly their SHA-256 digests with
    the per-key limit."""
    import hashlib

    alice, bob = "sk-alice-engine-0123456789", "sk-bob-engine-9876543210"
    _init_k8s(project)
    project.cli("config", "set", "--secret", "--path", "skyform:apiKeys.alice", alice)
    project.cli("config", "set", "--secret", "--path", "skyform:apiKeys.bob.key", bob)
    project.cli("config", "set", "--path", "skyform:apiKeys.bob.rateLimitRps", "0.5")
    stored = project.stack_config_file(K8S_STACK)["config"]["skyform:apiKeys"]
    assert set(stored["alice"]) == {"secure"} and set(stored["bob"]["key"]) == {"secure"}
    assert project.stack(K8S_STACK).up().summary.result == "succeeded"

    state = project.cli("stack", "export").stdout
    objects = rendered_objects(project.dir / RENDER_DIR)
    everything = state + json.dumps(objects)
    for key in (alice, bob):
        assert key not in everything
        assert base64.b64encode(key.encode()).decode() not in everything
    secret = objects_by_kind(objects, "Secret")["hello-secrets"]["data"]
    entries = json.loads(base64.b64decode(secret["api-keys.json"]))
    by_name = {e["name"]: e for e in entries}
    assert by_name["alice"]["sha256"] == hashlib.sha256(alice.encode()).hexdigest()
    assert by_name["bob"]["sha256"] == hashlib.sha256(bob.encode()).hexdigest()
    assert by_name["bob"]["rate_limit_rps"] == 0.5
    agent = json.loads(objects_by_kind(objects, "ConfigMap")["hello-controller-files"]
                       ["data"]["agent.json"])
    assert agent["admission"]["api_keys_file"] == "/run/skyform-api-keys/api-keys.json"
