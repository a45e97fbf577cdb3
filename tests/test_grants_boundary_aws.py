"""The AWS controller's grant, evaluated, not read: every call the controller's own targeted
``up``/``refresh`` makes for this plan is allowed, and the same calls on another stack's
instances (even one with the same stack name), other security groups and VPCs, other
secrets, other buckets' objects and other stacks' state are denied.

The requests are derived from the synthesized plan (its replica instances' tags, security
groups, volumes, role, secrets, bundle object and state backend). The policy is evaluated by
``tests/iam_eval.py``, a small evaluator of IAM's documented rules (no PyPI package
evaluates conditions offline; see its docstring).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from iam_eval import Request, allowed
from program_support import run

from components.synth import PROJECT_NAME, SynthResult

ACCOUNT = "123456789012"
REGION = "us-east-1"
BACKEND = "s3://state-bucket/team"


@pytest.fixture(scope="module")
def plan() -> SynthResult:
    return run("gpu_spot.yaml", "aws", backendUrl=BACKEND)


def _policy(result: SynthResult) -> dict[str, Any]:
    return json.loads(result.named("service-controller-pulumi-up").raw_inputs["policy"])


def _ec2(kind: str, name: str) -> str:
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{name}"


def _replicas(result: SynthResult) -> list[Any]:
    return [r for r in result.of_type("aws:ec2/instance:Instance")
            if "skyform:group" in r.inputs["tags"]]


def _controller_calls(result: SynthResult) -> list[Request]:
    """Every call the controller's targeted up (launch, retag, stop, terminate a replica),
    refresh, bundle sync and state backend make for this plan."""
    vpc = _ec2("vpc", result.named("service-firewall-replica").raw_inputs.get(
        "vpcId", "vpc-synth"))
    calls: list[Request] = [
        Request("ec2:DescribeInstances", "*"), Request("ec2:DescribeVolumes", "*"),
        Request("ec2:DescribeImages", "*"), Request("ec2:DescribeSubnets", "*"),
        Request("ec2:DescribeInstanceAttribute", "*"), Request("ec2:DescribeTags", "*"),
    ]
    replicas = _replicas(result)
    assert replicas
    for r in replicas:
        tags, volume_tags = r.inputs["tags"], r.inputs["volumeTags"]
        launch = [
            Request("ec2:RunInstances", _ec2("instance", "*"),
                    {f"aws:RequestTag/{k}": v for k, v in tags.items()}),
            Request("ec2:RunInstances", _ec2("volume", "*"),
                    {f"aws:RequestTag/{k}": v for k, v in volume_tags.items()}),
            Request("ec2:RunInstances", f"arn:aws:ec2:{REGION}::image/ami-0123"),
            Request("ec2:RunInstances", _ec2("subnet", "subnet-default-a"), {"ec2:Vpc": vpc}),
            Request("ec2:RunInstances", _ec2("network-interface", "*"), {"ec2:Vpc": vpc}),
            *[Request("ec2:RunInstances", _ec2("security-group", sg))
              for sg in r.raw_inputs["vpcSecurityGroupIds"]],
            Request("ec2:CreateTags", _ec2("instance", "i-new"),
                    {"ec2:CreateAction": "RunInstances"}),
            Request("iam:PassRole", "arn:aws:synth:::role/service-access-replica"),
        ]
        if r.inputs.get("instanceMarketOptions"):
            launch.append(Request("ec2:RunInstances", _ec2("spot-instances-request", "*")))
        own = {f"ec2:ResourceTag/{k}": v for k, v in tags.items()}
        manage = [Request(action, _ec2("instance", "i-replica"), own) for action in (
            "ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances",
            "ec2:ModifyInstanceAttribute", "ec2:CreateTags")]
        calls += launch + manage
    bundle_key = result.named("service-access-bundle").inputs["key"]
    calls += [
        *[Request("secretsmanager:GetSecretValue", f"arn:aws:synth:::secret/{name}")
          for name in ("service-access-agent-token", "service-controller-config")],
        Request("s3:GetObject", f"arn:aws:s3:::service-access-files/{bundle_key}"),
    ]
    state = f"team/.pulumi/stacks/{PROJECT_NAME}/synth.json"
    calls += [
        Request("s3:GetObject", "arn:aws:s3:::state-bucket/team/.pulumi/meta.yaml"),
        *[Request(a, f"arn:aws:s3:::state-bucket/{o}") for a in (
            "s3:GetObject", "s3:PutObject", "s3:DeleteObject") for o in (
            state, state + ".bak",
            f"team/.pulumi/history/{PROJECT_NAME}/synth/synth-1733450000.history.json",
            f"team/.pulumi/backups/{PROJECT_NAME}/synth/synth.1733450000.json",
            f"team/.pulumi/locks/{PROJECT_NAME}/synth/5f0c.json")],
        *[Request("s3:ListBucket", "arn:aws:s3:::state-bucket", {"s3:prefix": p}) for p in (
            f"team/.pulumi/locks/{PROJECT_NAME}/synth/",
            f"team/.pulumi/history/{PROJECT_NAME}/synth/", state)],
    ]
    return calls


def test_every_call_of_the_controllers_own_up_is_allowed(plan: SynthResult) -> None:
    policy = _policy(plan)
    refused = [str(c) for c in _controller_calls(plan) if not allowed(policy, c)]
    assert refused == []


def test_the_same_calls_on_anything_else_are_denied(plan: SynthResult) -> None:
    policy = _policy(plan)
    replica = _replicas(plan)[0].inputs["tags"]
    # Another deployment in the account, same stack and service names, another project or
    # backend: only its stack id differs.
    other = {**replica, "skyform:stack-id": "0" * 20}
    other_ctx = {f"ec2:ResourceTag/{k}": v for k, v in other.items()}
    controller_ctx = {f"ec2:ResourceTag/{k}": v
                      for k, v in plan.named("service-controller-vm").inputs["tags"].items()}
    foreign_vpc = _ec2("vpc", "vpc-other")
    denied = [
        *[Request(a, _ec2("instance", "i-other"), other_ctx) for a in (
            "ec2:TerminateInstances", "ec2:StopInstances", "ec2:ModifyInstanceAttribute",
            "ec2:CreateTags", "ec2:DeleteTags")],
        Request("ec2:TerminateInstances", _ec2("instance", "i-controller"), controller_ctx),
        Request("ec2:RunInstances", _ec2("instance", "*"),
                {f"aws:RequestTag/{k}": v for k, v in other.items()}),
        Request("ec2:RunInstances", _ec2("instance", "*")),  # untagged
        Request("ec2:RunInstances", _ec2("security-group", "sg-someone-elses")),
        Request("ec2:RunInstances",
                _ec2("security-group", plan.named("service-firewall-controller").inputs.get(
                    "name", "service-firewall-controller-id"))),
        Request("ec2:RunInstances", _ec2("subnet", "subnet-x"), {"ec2:Vpc": foreign_vpc}),
        Request("ec2:RunInstances", _ec2("network-interface", "eni-x"),
                {"ec2:Vpc": foreign_vpc}),
        Request("ec2:RunInstances", "arn:aws:ec2:eu-west-1::image/ami-0123"),
        Request("ec2:CreateTags", _ec2("instance", "i-other")),
        Request("ec2:DeleteVolume", _ec2("volume", "vol-1"), other_ctx),
        Request("ec2:CreateImage", _ec2("instance", "i-replica"),
                {f"ec2:ResourceTag/{k}": v for k, v in replica.items()}),
        Request("iam:PassRole", "arn:aws:iam::123456789012:role/admin"),
        Request("secretsmanager:GetSecretValue", "arn:aws:secretsmanager:us-east-1:1:secret:x"),
        Request("secretsmanager:GetSecretValue",
                "arn:aws:synth:::secret/service-access-replica-credentials"),
        Request("s3:GetObject", "arn:aws:s3:::service-access-files/0-workdir.zip"),
        Request("s3:GetObject", "arn:aws:s3:::another-bucket/controller/bundle-x.tgz"),
        # Other stacks' state in the same backend bucket, and other buckets.
        *[Request(a, f"arn:aws:s3:::state-bucket/{o}") for a in (
            "s3:GetObject", "s3:PutObject", "s3:DeleteObject") for o in (
            f"team/.pulumi/stacks/{PROJECT_NAME}/prod.json",
            f"team/.pulumi/stacks/{PROJECT_NAME}/synth-2.json",
            "team/.pulumi/stacks/other-project/synth.json",
            f"team/.pulumi/history/{PROJECT_NAME}/synth-2/x.history.json",
            f"team/.pulumi/locks/{PROJECT_NAME}/prod/1.json",
            f"other-team/.pulumi/stacks/{PROJECT_NAME}/synth.json")],
        Request("s3:PutObject", "arn:aws:s3:::state-bucket/team/.pulumi/meta.yaml"),
        Request("s3:GetObject", f"arn:aws:s3:::other-state/team/.pulumi/stacks/{PROJECT_NAME}/"
                "synth.json"),
        *[Request("s3:ListBucket", "arn:aws:s3:::state-bucket", {"s3:prefix": p}) for p in (
            "", "team/.pulumi/stacks/", f"team/.pulumi/stacks/{PROJECT_NAME}/",
            f"team/.pulumi/locks/{PROJECT_NAME}/prod/")],
        Request("s3:ListBucket", "arn:aws:s3:::state-bucket"),  # no prefix: everything
        Request("s3:ListBucket", "arn:aws:s3:::other-state",
                {"s3:prefix": f"team/.pulumi/locks/{PROJECT_NAME}/synth/"}),
    ]
    let_through = [str(c) for c in denied if allowed(policy, c)]
    assert let_through == []


def test_the_replicas_role_reads_no_admin_token(plan: SynthResult) -> None:
    """Replicas read their groups' registration credentials, never the agent token."""
    [grant] = [r for r in plan.of_type("aws:iam/rolePolicy:RolePolicy")
               if r.name == "service-access-replica"]
    policy = json.loads(grant.raw_inputs["policy"])
    token = "arn:aws:synth:::secret/service-access-agent-token"
    creds = "arn:aws:synth:::secret/service-access-replica-credentials"
    assert not allowed(policy, Request("secretsmanager:GetSecretValue", token))
    assert allowed(policy, Request("secretsmanager:GetSecretValue", creds))


@pytest.fixture(scope="module")
def several() -> SynthResult:
    return run("gpu_spot.yaml", "aws", backendUrl=BACKEND, controllerReplicas=2)


LEASE = "arn:aws:s3:::service-access-files/lease/llm-spot.json"


def test_several_controllers_may_read_and_write_their_lease_and_nothing_more(
        several: SynthResult) -> None:
    """The lease store's calls (lb_agent/control/leases/s3.py: GetObject, conditional
    PutObject) on the one lease object are allowed, with every call of the one-controller
    grant; the same calls elsewhere, and any other action on the lease, are denied."""
    policy = _policy(several)
    calls = [*_controller_calls(several), Request("s3:GetObject", LEASE),
             Request("s3:PutObject", LEASE)]
    assert [str(c) for c in calls if not allowed(policy, c)] == []
    bundle_key = several.named("service-access-bundle").inputs["key"]
    denied = [
        Request("s3:DeleteObject", LEASE),
        Request("s3:ListBucket", "arn:aws:s3:::service-access-files",
                {"s3:prefix": "lease/"}),
        Request("s3:PutObject", f"arn:aws:s3:::service-access-files/{bundle_key}"),
        Request("s3:PutObject", "arn:aws:s3:::service-access-files/lease/other-service.json"),
        Request("s3:GetObject", "arn:aws:s3:::service-access-files/lease/llm-spot.json.bak"),
        Request("s3:PutObject", "arn:aws:s3:::other-stack-files/lease/llm-spot.json"),
        Request("s3:PutObject", "arn:aws:s3:::service-access-files/0-workdir.zip"),
    ]
    assert [str(c) for c in denied if allowed(policy, c)] == []


def test_one_controller_has_no_lease_grant(plan: SynthResult) -> None:
    policy = _policy(plan)
    assert not allowed(policy, Request("s3:PutObject", LEASE))
    assert not allowed(policy, Request("s3:GetObject", LEASE))


def test_the_replicas_role_cannot_touch_the_lease(several: SynthResult) -> None:
    [grant] = [r for r in several.of_type("aws:iam/rolePolicy:RolePolicy")
               if r.name == "service-access-replica"]
    policy = json.loads(grant.raw_inputs["policy"])
    assert not allowed(policy, Request("s3:GetObject", LEASE))
    assert not allowed(policy, Request("s3:PutObject", LEASE))
