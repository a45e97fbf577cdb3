"""The launch-error classifier on the texts AWS, GCP, Kubernetes and the Pulumi providers return."""

from __future__ import annotations

import pytest

from lb_agent.control.launch_errors import KINDS, LaunchFailure, classify

AWS_ICE = (
    "We currently do not have sufficient p3.2xlarge capacity in the Availability Zone you "
    "requested (us-east-1a). Our system will be working on provisioning additional capacity. "
    "You can currently get p3.2xlarge capacity by not specifying an Availability Zone in your "
    "request or choosing us-east-1b, us-east-1c, us-east-1d, us-east-1f."
)
PULUMI_AWS_ICE = (
    "error: 1 error occurred:\n\t* creating EC2 Instance: operation error EC2: RunInstances, "
    "https response error StatusCode: 500, RequestID: 3f6d1c2e-8f7a-4b1e-9c43-0a1b2c3d4e5f, "
    "api error InsufficientInstanceCapacity: " + AWS_ICE
)
AWS_UNSUPPORTED = (
    "creating EC2 Instance: operation error EC2: RunInstances, https response error "
    "StatusCode: 400, RequestID: 7c1e0f7a-0000-4000-8000-000000000000, api error Unsupported: "
    "Your requested instance type (p4d.24xlarge) is not supported in your requested "
    "Availability Zone (us-west-2d). Please retry your request by not specifying an "
    "Availability Zone or choosing us-west-2a, us-west-2b, us-west-2c."
)
AWS_VCPU = (
    "api error VcpuLimitExceeded: You have requested more vCPU capacity than your current "
    "vCPU limit of 0 allows for the instance bucket that the specified instance type belongs "
    "to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an adjustment "
    "to this limit."
)
AWS_MAX_SPOT = ("api error MaxSpotInstanceCountExceeded: Max spot instance count exceeded")
AWS_PRICE = (
    "api error SpotMaxPriceTooLow: Your Spot request price of 0.1 is lower than the minimum "
    "required Spot request fulfillment price of 0.918."
)
AWS_VPC_LIMIT = (
    "error: 1 error occurred:\n\t* creating EC2 VPC: operation error EC2: CreateVpc, https "
    "response error StatusCode: 400, RequestID: 0d3c6c55-0000-4000-8000-000000000000, api "
    "error VpcLimitExceeded: The maximum number of VPCs has been reached."
)
GCP_STOCKOUT = (
    "The zone 'projects/p/zones/us-central1-a' does not have enough resources available to "
    "fulfill the request. Try a different zone, or try again later."
)
GCP_POOL = ("Error waiting for instance to create: ZONE_RESOURCE_POOL_EXHAUSTED: " + GCP_STOCKOUT)
GCP_POOL_DETAILS = (
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: The zone 'projects/p/zones/europe-west4-a' "
    "does not have enough resources available to fulfill the request. '(resource type:compute)'."
)
GCP_QUOTA = (
    "error: 1 error occurred:\n\t* Error creating instance: googleapi: Error 403: "
    "Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 0.0 in region us-central1., quotaExceeded"
)
GCP_QUOTA_CODE = (
    "QUOTA_EXCEEDED: Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 0.0 in region us-central1."
)
K8S_GPU = (
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are "
    "available: 3 No preemption victims found for incoming pod."
)
K8S_UNSCHEDULABLE = "PodScheduled=False reason=Unschedulable: 0/2 nodes are available"


@pytest.mark.parametrize(
    ("text", "kind", "code", "where"),
    [
        (AWS_ICE, "capacity", "InsufficientInstanceCapacity", "us-east-1a"),
        (PULUMI_AWS_ICE, "capacity", "InsufficientInstanceCapacity", "us-east-1a"),
        (AWS_UNSUPPORTED, "unsupported", "Unsupported", "us-west-2d"),
        (AWS_VCPU, "quota", "VcpuLimitExceeded", None),
        (AWS_MAX_SPOT, "quota", "MaxSpotInstanceCountExceeded", None),
        (AWS_PRICE, "price", "SpotMaxPriceTooLow", None),
        (AWS_VPC_LIMIT, "quota", "VpcLimitExceeded", None),
        (GCP_STOCKOUT, "capacity", "resources-unavailable", "us-central1-a"),
        (GCP_POOL, "capacity", "ZONE_RESOURCE_POOL_EXHAUSTED", "us-central1-a"),
        (GCP_POOL_DETAILS, "capacity", "ZONE_RESOURCE_POOL_EXHAUSTED", "europe-west4-a"),
        (GCP_QUOTA, "quota", "QUOTA_EXCEEDED", "us-central1"),
        (GCP_QUOTA_CODE, "quota", "QUOTA_EXCEEDED", "us-central1"),
        (K8S_GPU, "unschedulable", "Insufficient", None),
        (K8S_UNSCHEDULABLE, "unschedulable", "Unschedulable", None),
    ],
)
def test_provider_texts_classify(text: str, kind: str, code: str, where: str | None) -> None:
    assert classify(text) == LaunchFailure(kind, code, where)
    assert kind in KINDS


@pytest.mark.parametrize(
    "text",
    [
        # A typo'd AMI, as the Pulumi AWS provider reports it.
        "creating EC2 Instance: operation error EC2: RunInstances, https response error "
        "StatusCode: 400, RequestID: 1, api error InvalidAMIID.NotFound: The image id "
        "'[ami-0abc]' does not exist",
        # Credentials.
        "operation error EC2: RunInstances, https response error StatusCode: 401, RequestID: 2, "
        "api error AuthFailure: AWS was not able to validate the provided access credentials",
        # A GCP permission error wraps the same way as a quota error but is not one.
        "googleapi: Error 403: Required 'compute.instances.create' permission for "
        "'projects/p/zones/us-central1-a/instances/r1', forbidden",
        "googleapi: Error 404: The resource 'projects/p/global/images/no-such-image' was not "
        "found, notFound",
        "",
        None,
    ],
)
def test_unrelated_errors_are_not_location_problems(text: str | None) -> None:
    assert classify(text) is None
