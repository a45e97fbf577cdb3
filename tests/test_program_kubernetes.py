"""The real Pulumi program on Kubernetes, run under mocks; objects pass kubernetes-validate."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shlex
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pulumi
import pytest
from program_support import (
    CONFIG_SECRET,
    FIXTURES,
    bash_syntax,
    decode_user_data,
    everything_visible,
    run,
)

from components.errors import PlacementError
from components.synth import MASK, SynthResult, k8s_manifests, stack_config, synthesize
from lb_agent import credentials

K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def t4() -> SynthResult:
    return run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": CONFIG_SECRET})


def _objects(result: SynthResult, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_manifests(result) if o["kind"] == kind}


def test_every_object_passes_kubernetes_validate(t4: SynthResult) -> None:
    objects = k8s_manifests(t4)
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "Deployment", "Service", "NetworkPolicy", "Role", "RoleBinding",
            "ServiceAccount", "Secret", "ConfigMap", "Namespace"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_statefulsets_spot_gpu_and_disk(t4: SynthResult) -> None:
    sets = _objects(t4, "StatefulSet")
    spot, ondemand = sets["t4-spot-spot"], sets["t4-spot-ondemand"]
    assert spot["spec"]["replicas"] == 1 and ondemand["spec"]["replicas"] == 1
    pod = spot["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4",
                                   "cloud.google.com/gke-spot": "true"}
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true",
            "effect": "NoSchedule"} in pod["tolerations"]
    od_pod = ondemand["spec"]["template"]["spec"]
    assert "cloud.google.com/gke-spot" not in od_pod["nodeSelector"]
    claim = spot["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["resources"]["requests"]["storage"] == "120Gi"
    assert "storageClassName" not in claim


def test_storage_class_per_tier_from_config() -> None:
    result = run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": "x"},
                 storageClasses={"low": "standard-hdd"})
    claim = _objects(result, "StatefulSet")["t4-spot-spot"]["spec"][
        "volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "standard-hdd"


def test_readiness_probe_from_spec(t4: SynthResult) -> None:
    container = _objects(t4, "StatefulSet")["t4-spot-spot"]["spec"]["template"]["spec"][
        "containers"][0]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health" and probe["port"] == 8080
    assert probe["httpHeaders"] == [{"name": "X-Probe", "value": "skyform"}]


def test_post_probe_becomes_exec() -> None:
    result = run("cpu_post.yaml", "kubernetes")
    container = _objects(result, "StatefulSet")["cpu-post-ondemand"]["spec"]["template"][
        "spec"]["containers"][0]
    command = container["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    assert "method='POST'" in command[2]
    assert command[3:5] == ["http://127.0.0.1:8080/predict", '{"x": 1}']
    assert json.loads(command[5]) == {"Content-Type": "application/json"}
    assert "limits" not in container["resources"]


def test_network_policy_and_rbac(t4: SynthResult) -> None:
    policy = _objects(t4, "NetworkPolicy")["t4-spot-replicas"]["spec"]
    rule = policy["ingress"][0]
    assert rule["from"] == [{"podSelector": {"matchLabels": {
        "skyform-service": "t4-spot", "skyform-role": "controller"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    role = _objects(t4, "Role")["t4-spot-controller"]
    # Every object a targeted up/refresh of the replica groups touches is allowed, and
    # nothing else is writable.
    kinds = {"StatefulSet": ("apps", "statefulsets"), "Service": ("", "services"),
             "ConfigMap": ("", "configmaps")}
    owned = {(o["kind"], o["metadata"]["name"]) for o in _group_objects(t4)}
    assert len(owned) == 6  # two groups: a StatefulSet, a Service, a ConfigMap each
    for kind, name in owned:
        api_group, resource = kinds[kind]
        for verb in ("get", "create", "update", "patch", "delete", "list", "watch"):
            assert _allows(role["rules"], api_group, resource, name, verb), (kind, name, verb)
    others = [o for o in k8s_manifests(t4) if (o["kind"], o["metadata"]["name"]) not in owned]
    assert {"Secret", "Deployment", "Role", "NetworkPolicy"} <= {o["kind"] for o in others}
    for obj in others:
        api_group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        resource = obj["kind"].lower() + "s"
        for verb in ("update", "patch", "delete"):
            assert not _allows(role["rules"], api_group, resource, obj["metadata"]["name"],
                               verb), (obj["kind"], obj["metadata"]["name"], verb)


def _group_objects(result: SynthResult) -> list[dict[str, Any]]:
    """The Kubernetes objects parented by a ReplicaGroup component."""
    groups = {r.name for r in result.of_type("skyform:kubernetes:ReplicaGroup")}
    return [r.inputs for r in result.resources
            if r.parent in groups and r.type.startswith("kubernetes:")]


def _allows(rules: list[dict[str, Any]], api_group: str, resource: str, name: str,
            verb: str) -> bool:
    return any(api_group in r.get("apiGroups", []) and resource in r.get("resources", [])
               and verb in r.get("verbs", [])
               and ("resourceNames" not in r or name in r["resourceNames"]) for r in rules)


def test_controller_and_endpoint(t4: SynthResult) -> None:
    services = _objects(t4, "Service")
    assert services["t4-spot-controller"]["spec"]["type"] == "LoadBalancer"
    assert services["t4-spot-controller-admin"]["spec"]["type"] == "ClusterIP"
    assert "t4-spot-controller" in _objects(t4, "Deployment")
    assert t4.outputs["endpoint"] == f"http://{t4.outputs['controllerAddress']}:30001"
    addresses = [r["address"] for r in t4.outputs["replicas"]]
    assert addresses == ["t4-spot-spot-0.t4-spot-spot.t4-spot.svc.cluster.local",
                         "t4-spot-ondemand-0.t4-spot-ondemand.t4-spot.svc.cluster.local"]


def test_secrets_are_secret(t4: SynthResult, tmp_path: Path) -> None:
    assert CONFIG_SECRET not in everything_visible(t4)
    secret = _objects(t4, "Secret")["t4-spot-secrets"]
    # service-secrets.json: the same values as one JSON key, mounted into the controller pod.
    assert secret["stringData"] == {"agent-token": MASK, "HF_TOKEN": MASK,
                                    "service-secrets.json": MASK,
                                    "replica-credential-spot": MASK,
                                    "replica-credential-ondemand": MASK}
    env = _objects(t4, "StatefulSet")["t4-spot-spot"]["spec"]["template"]["spec"][
        "containers"][0]["env"]
    hf = next(e for e in env if e["name"] == "HF_TOKEN")
    assert hf["valueFrom"]["secretKeyRef"] == {"name": "t4-spot-secrets", "key": "HF_TOKEN"}
    # A replica gets its group's registration credential, never the agent token.
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in env
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert "agent-token" not in refs and "replica-credential-spot" in refs
    assert "replica-credential-ondemand" not in refs
    revealed = next(r for r in t4.resources if r.type == "kubernetes:core/v1:Secret"
                    and r.raw_inputs.get("metadata", {}).get("name") == "t4-spot-secrets")
    data = revealed.raw_inputs["stringData"]
    assert credentials.covers(credentials.registration_key(data["agent-token"]),
                              data["replica-credential-spot"], "spot-0")
    files = _objects(t4, "ConfigMap")["t4-spot-spot-files"]["data"]
    assert CONFIG_SECRET not in str(files)
    bash_syntax(tmp_path, files["replica.sh"])
    assert 'INDEX="${HOSTNAME##*-}"' in files["replica.sh"]


def _workdir_files(result: SynthResult) -> dict[str, bytes]:
    files = next(o for o in k8s_manifests(result) if o["kind"] == "ConfigMap"
                 and o["metadata"]["name"].endswith("-workdir"))
    return {**{k: base64.b64decode(v) for k, v in files["binaryData"].items()},
            **{k: v.encode() for k, v in files["data"].items()}}


def test_workdir_and_mounts_reach_the_pod_through_a_config_map_checked_by_digest() -> None:
    result = run("workdir_mounts.yaml", "kubernetes")
    files = _workdir_files(result)
    (key,) = [k for k in files if not k.endswith(".sha256")]
    assert files[f"{key}.sha256"].decode() == hashlib.sha256(files[key]).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(files[key]), mode="r:gz") as tar:
        assert tar.getnames() == ["server.py"]
        member = tar.extractfile("server.py")
        assert member is not None
        assert member.read() == (FIXTURES / "app" / "server.py").read_bytes()
    sset = _objects(result, "StatefulSet")["workdir-mounts-ondemand"]
    pod = sset["spec"]["template"]
    assert pod["metadata"]["annotations"]["skyform.dev/files-digest"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["uploads"]["configMap"]["name"] == "workdir-mounts-workdir"
    script = _objects(result, "ConfigMap")["workdir-mounts-ondemand-files"]["data"]["replica.sh"]
    assert f"skyform_unpack /opt/skyform-files/{key} /opt/sky_workdir" in script
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    # Neither inside the read-only start-up files mount (/opt/skyform).
    assert mounts == {"files": "/opt/skyform", "data": "/data", "workdir": "/opt/sky_workdir",
                      "uploads": "/opt/skyform-files"}
    assert volumes["workdir"] == {"name": "workdir", "emptyDir": {}}
    # Bucket mounts: copied with the pod's ServiceAccount credentials, a named bucket in the
    # default store (skyform:bucketStore, gcs).
    assert "skyform_bucket_copy s3://my-bucket/prefix /data" in script
    assert "skyform_bucket_copy gs://my-models /models" in script
    assert pod["spec"]["serviceAccountName"] == "default"
    for obj in k8s_manifests(result):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_change_in_the_workdir_rolls_the_replicas(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "index.html").write_text("v1")
    spec = tmp_path / "svc.yaml"
    spec.write_text("service:\n  readiness_probe: /\nresources:\n  ports: 8080\n"
                    "workdir: app\nrun: python3 -m http.server 8080\n")

    def digest() -> str:
        config, keys = stack_config(spec, "kubernetes")
        sset = _objects(synthesize(config, keys), "StatefulSet")["svc-ondemand"]
        return str(sset["spec"]["template"]["metadata"]["annotations"][
            "skyform.dev/files-digest"])

    first, same = digest(), digest()
    (tmp_path / "app" / "index.html").write_text("v2")
    assert first == same != digest()


def test_a_workdir_too_large_for_one_object_is_refused_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob.bin").write_bytes(os.urandom(1200 * 1024))
    spec = tmp_path / "svc.yaml"
    spec.write_text("service:\n  readiness_probe: /\nresources:\n  ports: 8080\n"
                    "workdir: big\nrun: python3 -m http.server 8080\n")
    config, keys = stack_config(spec, "kubernetes")
    with pytest.raises(pulumi.RunError) as caught:
        synthesize(config, keys)
    assert isinstance(caught.value.__cause__, PlacementError)
    assert "more than a Kubernetes object holds" in str(caught.value)
    assert "file_mounts from s3:// or gs://" in str(caught.value)


def test_any_accelerator_with_a_custom_label_and_unknown_cost(tmp_path: Path) -> None:
    spec = tmp_path / "a10g.yaml"
    spec.write_text("service:\n  readiness_probe: /\nresources:\n  ports: 8080\n"
                    "  accelerators: A10G:2\n  cpus: 6+\n  memory: 40+\nrun: serve\n")
    config, keys = stack_config(spec, "kubernetes",
                                extra={"acceleratorLabel": "nvidia.com/gpu.product"})
    result = synthesize(config, keys)
    pod = _objects(result, "StatefulSet")["a10g-ondemand"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "a10g"}
    resources = pod["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "6", "memory": "40Gi"},
                         "limits": {"nvidia.com/gpu": "2"}}
    assert result.outputs["hourlyCost"] == "unknown"
    priced = synthesize(*stack_config(spec, "kubernetes", extra={"priceTable": "gke"}))
    assert priced.outputs["hourlyCost"] == "unknown"  # GCP has no A10G node to price it as


def test_gke_price_table_prices_pods_as_gke_nodes(t4: SynthResult) -> None:
    assert t4.outputs["hourlyCost"] == "unknown"
    priced = run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": "x"}, priceTable="gke")
    assert isinstance(priced.outputs["hourlyCost"], float) and priced.outputs["hourlyCost"] > 0


def test_a_tpu_needs_gke(tmp_path: Path) -> None:
    spec = tmp_path / "tpu.yaml"
    spec.write_text("service:\n  readiness_probe: /\nresources:\n  ports: 8080\n"
                    "  accelerators: tpu-v5-lite-podslice:4\nrun: serve\n")
    config, keys = stack_config(spec, "kubernetes",
                                extra={"acceleratorLabel": "nvidia.com/gpu.product"})
    with pytest.raises(pulumi.RunError) as caught:
        synthesize(config, keys)
    assert "only GKE clusters offer" in str(caught.value)


def test_missing_local_workdir_is_a_clear_error_outside_synth(tmp_path: Path) -> None:
    from unittest import mock

    from components import service

    spec = tmp_path / "svc.yaml"
    spec.write_text("service:\n  readiness_probe: /\nresources:\n  ports: 8080\n"
                    "workdir: nowhere\nrun: python3 -m http.server 8080\n")
    config, keys = stack_config(spec, "kubernetes")
    with mock.patch.object(service, "offline_plan", return_value=False), \
            pytest.raises(pulumi.RunError) as caught:
        synthesize(config, keys)
    assert isinstance(caught.value.__cause__, PlacementError)
    assert "workdir: local path 'nowhere' does not exist" in str(caught.value)


def test_replica_sets_skip_the_provider_await_and_the_lb_port_is_open_to_the_lb() -> None:
    """pulumi-kubernetes waits up to 10 minutes for a StatefulSet's pods to be ready, which a
    GPU replica loading a model exceeds: the replica sets carry pulumi.com/skipAwait (the
    agent probes readiness). LoadBalancer traffic reaches the pods SNATed to node addresses,
    so the LB port's NetworkPolicy rule admits any source and allowedCidrs is enforced by
    loadBalancerSourceRanges."""
    result = run("t4_spot.yaml", "kubernetes", secrets={"HF_TOKEN": CONFIG_SECRET},
                 allowedCidrs=["203.0.113.0/24"])
    for obj in _objects(result, "StatefulSet").values():
        assert obj["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
    ingress = _objects(result, "NetworkPolicy")["t4-spot-controller"]["spec"]["ingress"]
    lb_rule = next(r for r in ingress if r["ports"] == [{"protocol": "TCP", "port": 30001}])
    assert "from" not in lb_rule
    service = _objects(result, "Service")["t4-spot-controller"]["spec"]
    assert service["loadBalancerSourceRanges"] == ["203.0.113.0/24"]


@pytest.mark.parametrize("policy", ["prefix_aware", "least_load"])
def test_the_controller_pod_builds_the_c_helper_only_for_prefix_aware(
        policy: str, tmp_path: Path) -> None:
    """A pod installs at every start, so gcc (for the data plane's C helpers) only when the
    service routes with prefix_aware; a VM installs once at boot, so always."""
    service = (FIXTURES / "cpu_http.yaml").read_text().replace(
        "  replicas: 2\n", f"  replicas: 2\n  load_balancing_policy: {policy}\n")
    (tmp_path / "service.yaml").write_text(service)
    config, secret_keys = stack_config(tmp_path / "service.yaml", "kubernetes")
    result = synthesize(config, secret_keys)
    files = next(o for o in k8s_manifests(result) if o["kind"] == "ConfigMap"
                 and "controller.sh" in o.get("data", {}))["data"]
    assert json.loads(files["agent.json"])["policy"] == policy
    builds = "apt-get install -y -q gcc" in files["controller.sh"]
    assert builds == (policy == "prefix_aware")
    # The script (a ConfigMap, apart from the bundle's Secret) names the bundle's sha256.
    assert re.search(r"expected=[0-9a-f]{64}\b", files["controller.sh"])
    bash_syntax(tmp_path, files["controller.sh"], "controller.sh")
    aws = run("cpu_http.yaml", "aws")
    [controller] = [r for r in aws.of_type("aws:ec2/instance:Instance")
                    if r.parent == "service-controller"]
    assert "apt-get install -y -q gcc" in decode_user_data(controller.raw_inputs["userDataBase64"])


def test_the_controller_pod_runs_the_agent_under_its_supervisor(
        t4: SynthResult, tmp_path: Path) -> None:
    """A commit or a config change reaches the running pod as updated mounted files: the
    pod template carries nothing per commit (no digest that would replace the pod), and the
    container runs lb_agent.supervisor, which installs a changed bundle and restarts the
    agent for it and for each file the agent reads at start, holding the ports meanwhile."""
    deployment = _objects(t4, "Deployment")["t4-spot-controller"]
    template = deployment["spec"]["template"]
    assert not template["metadata"].get("annotations")
    [container] = template["spec"]["containers"]
    shell, flag, script = container["command"]
    assert (shell, flag) == ("bash", "-c")
    bash_syntax(tmp_path, script, "command.sh")
    install, _, supervise = script.partition(" && exec ")
    assert install.endswith("bash /etc/skyform/controller.sh install")
    words = shlex.split(supervise)
    assert words[:3] == ["/opt/skyform/project/.venv/bin/python", "-m", "lb_agent.supervisor"]
    argv, agent = words[3:words.index("--")], words[words.index("--") + 1:]
    assert agent == ["skyform", "agent", "--config", "/etc/skyform/agent.json"]
    pairs = list(zip(argv[::2], argv[1::2], strict=True))
    assert ("--config", "/etc/skyform/agent.json") in pairs
    assert ("--install-when-changed", "/opt/skyform-bundle/project.tgz") in pairs
    assert ("--install", "bash /etc/skyform/controller.sh install") in pairs
    watched = {value for key, value in pairs if key == "--restart-when-changed"}
    files = _objects(t4, "ConfigMap")["t4-spot-controller-files"]["data"]
    secrets_file = json.loads(files["agent.json"])["secrets_file"]  # t4 has a secret env
    assert watched == {"/etc/skyform/agent.json", secrets_file}
    # They are where the pod mounts them.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/etc/skyform" in mounts and "/opt/skyform-bundle" in mounts


def test_the_supervisor_watches_api_keys_tls_and_secrets_when_they_are_mounted(
        tmp_path: Path) -> None:
    from components.clouds.kubernetes import API_KEYS_FILE, controller_command

    words = shlex.split(controller_command("/b/project.tgz", [
        "/etc/skyform/agent.json", API_KEYS_FILE])[2].partition(" && exec ")[2])
    watched = [words[i + 1] for i, w in enumerate(words) if w == "--restart-when-changed"]
    assert watched == ["/etc/skyform/agent.json", API_KEYS_FILE]
