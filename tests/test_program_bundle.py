"""The project bundle on AWS and GCP: the program uploads it to the stack's
files bucket under a content-addressed key, names it (URL and sha256) in the controller config
secret and never in user data, and only the controller may read it.

Each test runs the real program under mocks from a project of its own (a copy of Pulumi.yaml
and __main__.py next to a service with a workdir), so the bundle holds files the test edits.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
from program_support import decode_user_data

from components.clouds.common import BUNDLE_PREFIX, bundle_key
from components.synth import CapturedResource, SynthResult, stack_config, synthesize

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hf_in_the_yaml_0042"
OBJECT = {"aws": "aws:s3/bucketObjectv2:BucketObjectv2",
          "gcp": "gcp:storage/bucketObject:BucketObject"}
SERVICE = f"""\
service:
  readiness_probe: /
  replicas: 1
resources:
  ports: 8080
workdir: app
envs:
  MODEL: tiny
secrets:
  HF_TOKEN: {SECRET}
run: python3 -m http.server 8080
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A Pulumi project: the program files, a stack file and svc/ (service YAML, workdir)."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copy(ROOT / name, root / name)
    (root / "stacks").mkdir()
    (root / "stacks" / "Pulumi.synth.yaml").write_text(
        "config:\n  skyform:minReplicas: '1'\n  skyform:fleet: '{\"generations\": []}'\n")
    (root / "svc" / "app").mkdir(parents=True)
    (root / "svc" / "app" / "index.html").write_text("v1")
    (root / "svc" / "service.yaml").write_text(SERVICE)
    return root


def _synth(project: Path, cloud: str) -> SynthResult:
    config, keys = stack_config(project / "svc" / "service.yaml", cloud)
    return synthesize(config, keys, program=project / "__main__.py")


def _bundle(result: SynthResult, cloud: str) -> CapturedResource:
    (bundle,) = [o for o in result.of_type(OBJECT[cloud]) if o.name == "service-access-bundle"]
    return bundle


def _key(cloud: str, bundle: CapturedResource) -> str:
    return str(bundle.inputs["key" if cloud == "aws" else "name"])


def _config(result: SynthResult, cloud: str) -> dict[str, Any]:
    kind = ("aws:secretsmanager/secretVersion:SecretVersion" if cloud == "aws"
            else "gcp:secretmanager/secretVersion:SecretVersion")
    version = next(r for r in result.of_type(kind) if r.name == "service-controller-config")
    field = "secretString" if cloud == "aws" else "secretData"
    return dict(json.loads(version.raw_inputs[field]))


def _controller_user_data(result: SynthResult, cloud: str) -> str:
    vm = result.named("service-controller-vm")
    if cloud == "aws":
        return decode_user_data(vm.inputs["userDataBase64"])
    return str(vm.inputs["metadata"]["user-data"])


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_the_bundle_is_an_object_keyed_by_its_digest(project: Path, cloud: str) -> None:
    """The object's source is the bundle file the program wrote in the project (owner-only:
    the YAML's secret values are in it); its key carries that file's sha256."""
    result = _synth(project, cloud)
    bundle = _bundle(result, cloud)
    relative = bundle.inputs["source"]["path"]
    assert not Path(relative).is_absolute()  # the same input on every machine
    path = project / relative
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert _key(cloud, bundle) == bundle_key(digest) == f"controller/bundle-{digest}.tgz"
    assert relative == f".skyform/bundles/synth/{digest}.tgz"
    assert path.stat().st_mode & 0o777 == 0o600
    with tarfile.open(path, mode="r:gz") as tar:
        names = tar.getnames()
        service = tar.extractfile("svc/service.yaml")
        assert service is not None and SECRET in service.read().decode()
        stack = tar.extractfile("stacks/Pulumi.synth.yaml")
        assert stack is not None
        text = stack.read().decode()  # the agent's own key stays out, the user's stay in
        assert "skyform:fleet" not in text and "skyform:minReplicas" in text
    assert {"Pulumi.yaml", "__main__.py", "svc/app/index.html", "svc/service.yaml",
            "stacks/Pulumi.synth.yaml"} <= set(names)
    assert not any(name.startswith(".skyform") for name in names)
    if cloud == "aws":
        assert bundle.inputs["serverSideEncryption"] == "AES256"
        (sse,) = result.of_type(
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
        assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"] == {
            "sseAlgorithm": "AES256"}
        (block,) = result.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        assert all(block.inputs[k] for k in ("blockPublicAcls", "blockPublicPolicy",
                                             "ignorePublicAcls", "restrictPublicBuckets"))
    else:
        (bucket,) = result.of_type("gcp:storage/bucket:Bucket")
        assert bucket.inputs["uniformBucketLevelAccess"] is True
        assert bucket.inputs["publicAccessPrevention"] == "enforced"


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_the_config_secret_names_the_bundle_and_user_data_does_not(
        project: Path, cloud: str) -> None:
    result = _synth(project, cloud)
    bundle = _bundle(result, cloud)
    key = _key(cloud, bundle)
    digest = key.removeprefix("controller/bundle-").removesuffix(".tgz")
    config = _config(result, cloud)
    scheme = "s3" if cloud == "aws" else "gs"
    assert config["bundle"] == {"url": f"{scheme}://service-access-files/{key}",
                                "sha256": digest}
    assert set(config) == {"agent", "bundle"}  # no git repository, no commit
    user_data = _controller_user_data(result, cloud)
    assert digest not in user_data and key not in user_data
    assert "git clone" not in user_data and "skyform-config.timer" in user_data
    # The secret in the YAML reaches the bucket inside the bundle, never a plain input.
    assert SECRET not in json.dumps(result.to_json(), default=str)


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_the_config_is_written_after_the_object_it_names(project: Path, cloud: str) -> None:
    """A new bundle is a replacement (its key changes): created first, then the controller
    config that names it, then the old object deleted. The config secret depends on the
    object, so a controller never reads a URL whose object is not there yet."""
    result = _synth(project, cloud)
    kind = ("aws:secretsmanager/secretVersion:SecretVersion" if cloud == "aws"
            else "gcp:secretmanager/secretVersion:SecretVersion")
    version = next(r for r in result.of_type(kind) if r.name == "service-controller-config")
    assert _bundle(result, cloud).urn in version.options["dependsOn"]


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_an_unchanged_project_gives_the_same_object(project: Path, cloud: str) -> None:
    """Two synths of the same project: the same object inputs (no re-upload, no replacement)
    and the same controller config (the controller sees nothing new)."""
    one, two = _synth(project, cloud), _synth(project, cloud)
    assert _bundle(one, cloud).raw_inputs == _bundle(two, cloud).raw_inputs
    assert _config(one, cloud) == _config(two, cloud)
    # One bundle file per stack: the older ones are gone.
    assert len(list((project / ".skyform" / "bundles" / "synth").glob("*.tgz"))) == 1


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_a_workdir_edit_is_a_new_bundle_and_the_same_controller(
        project: Path, cloud: str) -> None:
    """An edit of a workdir file changes the bundle's digest (a new object key, a new config)
    and nothing of the controller VM: its user data and every other input stay the same, so
    the VM is neither replaced nor updated; its timer takes the new bundle."""
    before = _synth(project, cloud)
    (project / "svc" / "app" / "index.html").write_text("v2")
    after = _synth(project, cloud)
    old_key, new_key = _key(cloud, _bundle(before, cloud)), _key(cloud, _bundle(after, cloud))
    assert old_key != new_key and new_key.startswith(BUNDLE_PREFIX)
    assert _config(before, cloud)["bundle"] != _config(after, cloud)["bundle"]
    assert before.named("service-controller-vm").raw_inputs == after.named(
        "service-controller-vm").raw_inputs
    assert _controller_user_data(before, cloud) == _controller_user_data(after, cloud)


def test_aws_only_the_controller_reads_the_bundle(project: Path) -> None:
    """The controller's role: s3:GetObject on exactly the bundle prefix. The replicas' role:
    exactly their upload keys, nothing under the prefix."""
    result = _synth(project, "aws")
    controller = json.loads(result.named("service-controller-pulumi-up").inputs["policy"])
    s3 = [s for s in controller["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    assert s3 == [{"Sid": "ReadProjectBundle", "Effect": "Allow", "Action": ["s3:GetObject"],
                   "Resource": f"arn:aws:s3:::service-access-files/{BUNDLE_PREFIX}*"}]
    replica = json.loads(next(r for r in result.of_type("aws:iam/rolePolicy:RolePolicy")
                              if r.name == "service-access-replica").inputs["policy"])
    resources = [r for s in replica["Statement"] if "s3:GetObject" in s["Action"]
                 for r in s["Resource"]]
    uploads = [o.inputs["key"] for o in result.of_type(OBJECT["aws"])
               if o.name != "service-access-bundle"]
    assert uploads and resources == [f"arn:aws:s3:::service-access-files/{k}" for k in uploads]
    assert not any(BUNDLE_PREFIX in r or r.endswith("*") for r in resources)


def test_gcp_only_the_controller_reads_the_bundle(project: Path) -> None:
    """The controller's service account: objectViewer conditioned on the bundle prefix. The
    replicas': objectViewer conditioned on exactly their upload names."""
    result = _synth(project, "gcp")
    grants = {r.name: r.inputs for r in
              result.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")}
    base = "projects/_/buckets/service-access-files/objects/"
    controller = grants["service-controller-bundle"]
    assert controller["role"] == "roles/storage.objectViewer"
    assert controller["member"].endswith("-cont@synth.iam.gserviceaccount.com")
    assert controller["condition"]["expression"] == (
        f"resource.name.startsWith('{base}{BUNDLE_PREFIX}')")
    replica = grants["service-access-files-replica"]
    assert replica["member"].endswith("-repl@synth.iam.gserviceaccount.com")
    uploads = [o.inputs["name"] for o in result.of_type(OBJECT["gcp"])
               if o.name != "service-access-bundle"]
    assert uploads and replica["condition"]["expression"] == " || ".join(
        f"resource.name == '{base}{name}'" for name in uploads)
    assert BUNDLE_PREFIX not in replica["condition"]["expression"]
    # The controller VM waits for its read grant.
    deps = result.named("service-controller-vm").options["dependsOn"]
    assert any(u.endswith("::service-controller-bundle") for u in deps)
