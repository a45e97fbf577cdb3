"""workdir and file_mounts on VMs (uploaded to a bucket, fetched at boot), and candidate pins."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
from program_support import decode_user_data, run

from components.errors import PlacementError


def test_aws_uploads_workdir_and_fetches_mounts_at_boot() -> None:
    result = run("workdir_mounts.yaml", "aws")
    objects = [o for o in result.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
               if o.name != "service-access-bundle"]
    assert len(objects) == 1
    assert objects[0].inputs["source"]["path"].endswith("tests/fixtures/program/app")
    assert objects[0].inputs["key"].endswith(".zip")
    assert result.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    instance = next(r for r in result.of_type("aws:ec2/instance:Instance")
                    if r.parent == "service-ondemand")
    user_data = decode_user_data(instance.inputs["userDataBase64"])
    # replica.sh is inline in the cloud-config
    assert "python3 -m zipfile -e" in user_data
    assert "aws s3 cp --quiet --recursive s3://my-bucket/prefix /data" in user_data
    assert "aws s3 cp --quiet --recursive s3://my-models /models" in user_data
    # The replica role may read its secrets and exactly the uploaded objects (never the
    # project bundle in the same bucket).
    policy = json.loads(next(
        r for r in result.of_type("aws:iam/rolePolicy:RolePolicy")
        if r.name == "service-access-replica").inputs["policy"])
    actions = sorted(a for s in policy["Statement"] for a in s["Action"])
    assert actions == ["s3:GetObject", "secretsmanager:GetSecretValue"]
    s3 = next(s for s in policy["Statement"] if s["Action"] == ["s3:GetObject"])
    assert s3["Resource"] == [f"arn:aws:s3:::service-access-files/{objects[0].inputs['key']}"]


def test_gcp_refuses_an_s3_mount_with_a_hint() -> None:
    with pytest.raises(pulumi.RunError) as caught:
        run("workdir_mounts.yaml", "gcp")
    assert isinstance(caught.value.__cause__, PlacementError)
    assert "copy it to a gs:// bucket" in str(caught.value)


def test_ordered_candidates_and_pin() -> None:
    first = run("workdir_mounts.yaml", "aws")
    assert first.outputs["replicas"][0]["instanceType"] == "g6.xlarge"  # L4 first (ordered)
    pinned = run("workdir_mounts.yaml", "aws", candidate=1)
    assert pinned.outputs["replicas"][0]["instanceType"] == "g4dn.xlarge"  # T4
    with pytest.raises(pulumi.RunError) as caught:
        run("workdir_mounts.yaml", "aws", candidate=5)
    assert "candidate index 5 is out of range" in str(caught.value)


def test_missing_workdir_is_a_warning_in_synth(tmp_path: Path) -> None:
    from components.synth import stack_config, synthesize

    spec = tmp_path / "missing.yaml"
    spec.write_text("service:\n  readiness_probe: /\nresources:\n  ports: 8080\n"
                    "workdir: no/such/folder\nrun: python3 -m http.server 8080\n")
    config, keys = stack_config(spec, "aws")
    result = synthesize(config, keys)
    assert any("no/such/folder" in w and "pulumi up" in w for w in result.warnings)


HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello-workdir"


@pytest.mark.parametrize("cloud", ["aws", "gcp", "kubernetes"])
def test_the_tutorial_workdir_service_synthesizes_on_every_cloud(cloud: str) -> None:
    """The SkyServe tutorial's service (workdir: . with an index.html): the workdir is the
    YAML's folder on every cloud; on Kubernetes its objects pass kubernetes-validate."""
    import base64
    import io
    import tarfile

    import kubernetes_validate

    from components.synth import k8s_manifests, stack_config, synthesize

    result = synthesize(*stack_config(HELLO / "service.yaml", cloud))
    assert result.outputs["replicaCount"] == 2
    if cloud == "aws":
        (obj,) = [o for o in result.of_type("aws:s3/bucketObjectv2:BucketObjectv2")
                  if o.name != "service-access-bundle"]
        # Relative to the project: the same input on every machine (and the controller).
        assert obj.inputs["source"]["path"] == "examples/hello-workdir"
    elif cloud == "gcp":
        (obj,) = [o for o in result.of_type("gcp:storage/bucketObject:BucketObject")
                  if o.name != "service-access-bundle"]
        # Relative to the project: the same input on every machine (and the controller).
        assert obj.inputs["source"]["path"] == "examples/hello-workdir"
    else:
        objects = k8s_manifests(result)
        files = next(o for o in objects if o["metadata"]["name"] == "service-workdir")
        (archive,) = files["binaryData"].values()
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(archive)), mode="r:gz") as tar:
            assert sorted(tar.getnames()) == ["index.html", "service.yaml"]
        for obj in objects:
            kubernetes_validate.validate(obj, "1.30.0", strict=True)
