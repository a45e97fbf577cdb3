"""AWS: a SkyServe service as EC2 replica groups, security groups and a controller VM.

Components (all children of ``skyform:index:SkyService``):

- ``skyform:aws:Access``: Secrets Manager secrets (agent token, service secrets), the
  stack's S3 files bucket (the controller's project bundle under ``controller/``, the
  workdir/file mounts), and the replicas' instance role (those secrets and exactly the upload
  objects; never the bundle, which holds the service YAML's secret values).
- ``skyform:aws:Firewall``: the controller's and the replicas' security groups.
- ``skyform:aws:Controller``: an on-demand CPU instance running ``skyform agent``, with an
  instance role allowed to run ``pulumi up`` on this stack's replicas and nothing more.
- ``skyform:aws:ReplicaGroup``: one EC2 instance per replica index (``<name>-<group>-<i>``),
  spot via instance market options.
- ``skyform:aws:NetworkLoadBalancer`` (aws_lb.py): only with ``skyform:controllerReplicas``
  >= 2, the endpoint of that many controllers (components/clouds/controllers.py).

Disk tiers (``disk_tier`` -> root EBS volume; unset means ``medium``, as in SkyPilot):
``low`` gp3 at its 3000 IOPS / 125 MiB/s baseline, ``medium`` gp3 up to 6000 IOPS / 250 MiB/s,
``high`` gp3 up to 16000 IOPS / 1000 MiB/s, ``ultra`` and ``best`` io2 at 500 IOPS per GB (at
most 64000). gp3 takes at most 500 IOPS per GiB and 0.25 MiB/s per IOPS, so a small disk gets
the most its size allows. Root volumes must be SSD, so SkyPilot's magnetic ``low`` is not used.

Stability: the replicas' and the controller's image is resolved by ``get_ami`` unless
``skyform:imageId`` (or the YAML's ``image_id``) names one, and instances ignore later changes
of ``ami``, so a new DLAMI release never replaces a running VM. The controller sits behind its
own network interface (a fixed private IP the replicas register with) and an Elastic IP (the
endpoint), and its user data never changes per commit: the per-deploy agent config and the
project bundle's URL and sha256 are a Secrets Manager secret the controller polls.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from components.bundle import Bundle
from components.clouds import aws_lb, controllers
from components.clouds.aws_regions import (
    ControllerNetwork,
    ReplicaRegion,
    ReplicaRegionArgs,
    admin_rule,
    check_ranges,
    controller_vpc,
    port_ranges,
    region_image,
    replica_regions,
    used_zones,
)
from components.clouds.common import (
    BUNDLE_PREFIX,
    PULUMI_CLI_VERSION,
    CloudDeployment,
    DeploymentPlan,
    DeploymentSecrets,
    GroupPlan,
    agent_config,
    bundle_asset,
    bundle_key,
    controller_config_secret,
    downloads_for,
    plan_bundle,
    replica_credentials,
    replica_entry,
    stack_identity,
    state_objects,
    upload_source,
)
from components.startup import (
    ControllerBoot,
    ReplicaBoot,
    aws_user_data_base64,
    render_controller_cloud_init,
    render_replica_cloud_init,
)
from lb_agent.contract import LeaseConfig

#: Deep Learning Base AMI (NVIDIA driver, CUDA, Docker, AWS CLI), looked up by name.
DLAMI_OWNER = "amazon"
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
#: NVIDIA's open kernel modules (the OSS-driver DLAMI) need Turing or later: Volta (V100, P3)
#: and older GPUs need the proprietary-driver DLAMI, which AWS publishes for Amazon Linux 2
#: ("supported_ec2_instances: G3, P3, P3dn" in its release notes).
DLAMI_PROPRIETARY_NAME = "Deep Learning Base Proprietary Nvidia Driver AMI (Amazon Linux 2) *"
#: Inferentia/Trainium need the Neuron driver and SDK: the Neuron DLAMI.
NEURON_NAME = "Deep Learning AMI Neuron (Ubuntu 22.04) *"
#: Accelerators of GPUs older than Turing (the OSS-driver DLAMI does not support them).
PRE_TURING_GPUS = frozenset({"V100", "V100-32GB", "K80", "M60"})
NEURON_ACCELERATORS = frozenset({"Inferentia", "Inferentia2", "Trainium", "Trainium2"})
#: The controller runs plain Ubuntu (Canonical's account): 24.04, whose python3 (3.12) meets
#: skyform's requires-python (>= 3.11); 22.04's 3.10 would refuse to install the bundle.
UBUNTU_OWNER = "099720109477"
UBUNTU_NAME = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"


#: gp3's documented limits (EBS volume types): 3000 IOPS / 125 MiB/s baseline at any size,
#: at most 500 IOPS per GiB and 16000 IOPS, at most 0.25 MiB/s per provisioned IOPS and
#: 1000 MiB/s.
GP3_BASE_IOPS, GP3_BASE_THROUGHPUT = 3000, 125
GP3_IOPS_PER_GIB, GP3_MAX_IOPS, GP3_MAX_THROUGHPUT = 500, 16000, 1000
#: Each gp3 tier's target (IOPS, MiB/s), clipped to what the size allows.
GP3_TIERS = {"low": (3000, 125), "medium": (6000, 250), "high": (16000, 1000)}


def gp3_performance(tier: str, size_gb: int) -> tuple[int, int]:
    """(IOPS, MiB/s) of a gp3 tier for a volume of ``size_gb`` within gp3's limits."""
    want_iops, want_throughput = GP3_TIERS[tier]
    iops = max(GP3_BASE_IOPS, min(want_iops, GP3_IOPS_PER_GIB * size_gb, GP3_MAX_IOPS))
    throughput = max(GP3_BASE_THROUGHPUT, min(want_throughput, iops // 4, GP3_MAX_THROUGHPUT))
    return iops, throughput


def root_volume(tier: str, size_gb: int) -> Any:
    """The root EBS volume settings for a SkyPilot disk tier (see the module docstring)."""
    volume: dict[str, Any] = {"volume_size": size_gb, "delete_on_termination": True,
                              "encrypted": True}
    if tier in GP3_TIERS:
        iops, throughput = gp3_performance(tier, size_gb)
        volume.update(volume_type="gp3", iops=iops, throughput=throughput)
    else:  # ultra, best
        volume.update(volume_type="io2", iops=max(100, min(64000, 500 * size_gb)))
    return volume


def replica_image_filter(accelerator: str | None) -> tuple[str, str]:
    """(owner, name filter) of the default replica image for an accelerator family."""
    if accelerator in NEURON_ACCELERATORS:
        return DLAMI_OWNER, NEURON_NAME
    if accelerator in PRE_TURING_GPUS:
        return DLAMI_OWNER, DLAMI_PROPRIETARY_NAME
    return DLAMI_OWNER, DLAMI_NAME


def _tags(plan: DeploymentPlan, **extra: str) -> dict[str, str]:
    return {**plan.labels, "skyform:service": plan.name, "skyform:stack": plan.stack,
            "skyform:stack-id": stack_identity(plan), **extra}


def _ami(owner: str, name_filter: str, opts: pulumi.InvokeOutputOptions) -> pulumi.Output[str]:
    result = aws.ec2.get_ami_output(
        most_recent=True,
        owners=[owner],
        # Amazon Linux 2 reached its end of support in June 2026: once AWS deprecates the
        # proprietary-driver DLAMI (the only one for V100), the newest one still launches.
        include_deprecated=name_filter == DLAMI_PROPRIETARY_NAME,
        filters=[
            {"name": "name", "values": [name_filter]},
            {"name": "architecture", "values": ["x86_64"]},
        ],
        opts=opts,
    )
    return result.id


@dataclass
class AccessArgs:
    plan: DeploymentPlan
    secrets: DeploymentSecrets
    #: The project bundle the controller runs its own ``up`` from (components/bundle.py).
    bundle: Bundle


class Access(pulumi.ComponentResource):
    """Secrets, the files bucket (project bundle, uploads) and the replica instance role."""

    token_secret_arn: pulumi.Output[str]
    #: The replicas' registration credentials (``{group: credential}``).
    credential_secret_arn: pulumi.Output[str]
    service_secret_arn: pulumi.Output[str] | None
    bucket_url: pulumi.Output[str]
    #: ``s3://<bucket>/controller/bundle-<sha256>.tgz`` and the ARN pattern the controller
    #: may read (``arn:aws:s3:::<bucket>/controller/*``).
    bundle_url: pulumi.Output[str]
    bundle_arn_prefix: pulumi.Output[str]
    replica_role_arn: pulumi.Output[str]
    replica_profile_name: pulumi.Output[str]
    #: The replicas' IAM grants: replicas depend on them, so a replica never boots before it
    #: may read its secrets and files.
    replica_grants: list[pulumi.Resource]

    def __init__(
        self, name: str, args: AccessArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:aws:Access", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        tags = _tags(plan)
        token = aws.secretsmanager.Secret(
            f"{name}-agent-token", description=f"skyform agent token of {plan.name}",
            recovery_window_in_days=0, tags=tags, opts=child,
        )
        aws.secretsmanager.SecretVersion(
            f"{name}-agent-token", secret_id=token.id,
            secret_string=args.secrets.agent_token, opts=child,
        )
        self.token_secret_arn = token.arn
        # The replicas read their kinds' registration credentials, never the agent token.
        credential = aws.secretsmanager.Secret(
            f"{name}-replica-credentials",
            description=f"skyform replica registration credentials of {plan.name}",
            recovery_window_in_days=0, tags=tags, opts=child,
        )
        aws.secretsmanager.SecretVersion(
            f"{name}-replica-credentials", secret_id=credential.id,
            secret_string=replica_credentials(plan, args.secrets.agent_token).apply(
                lambda c: json.dumps(c, sort_keys=True)),
            opts=child,
        )
        self.credential_secret_arn = credential.arn
        readable: list[pulumi.Output[str]] = [credential.arn]
        self.service_secret_arn = None
        if args.secrets.service_secrets is not None:
            service_secret = aws.secretsmanager.Secret(
                f"{name}-service-secrets", description=f"secrets of {plan.name}",
                recovery_window_in_days=0, tags=tags, opts=child,
            )
            aws.secretsmanager.SecretVersion(
                f"{name}-service-secrets", secret_id=service_secret.id,
                # service_secrets is a secret Output; apply keeps it secret.
                secret_string=args.secrets.service_secrets.apply(
                    lambda values: json.dumps(values, sort_keys=True)
                ),
                opts=child,
            )
            self.service_secret_arn = service_secret.arn
            readable.append(service_secret.arn)

        self.tls_secret_arn: pulumi.Output[str] | None = None
        if args.secrets.tls is not None:
            tls = aws.secretsmanager.Secret(
                f"{name}-tls", description=f"service.tls key and certificate of {plan.name}",
                recovery_window_in_days=0, tags=tags, opts=child,
            )
            aws.secretsmanager.SecretVersion(
                f"{name}-tls", secret_id=tls.id,
                secret_string=args.secrets.tls.apply(lambda pem: json.dumps(pem)), opts=child,
            )
            self.tls_secret_arn = tls.arn
        statements: list[pulumi.Output[dict[str, Any]]] = [
            pulumi.Output.all(*readable).apply(
                lambda arns: {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                              "Resource": list(arns)}
            )
        ]
        if plan.task.num_nodes > 1:  # each multi-node group's IP list (ReplicaGroup)
            statements.append(pulumi.Output.from_input({
                "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                "Resource": [f"arn:aws:secretsmanager:{plan.region}:*:secret:"
                             f"{node_ips_prefix(plan)}*"],
            }))
        # The stack's files bucket: the project bundle (the controller's alone) and the
        # workdir/file mounts (the replicas'). Private, encrypted at rest (SSE-S3).
        bucket = aws.s3.Bucket(f"{name}-files", force_destroy=True, tags=tags, opts=child)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-files", bucket=bucket.id, block_public_acls=True,
            block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-files", bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=child,
        )
        # Content-addressed: an unchanged bundle is the same object, a new one a new object
        # (the key forces a replacement: created, named in the controller config, then the
        # old one deleted).
        key = bundle_key(args.bundle.digest)
        bundle = aws.s3.BucketObjectv2(
            f"{name}-bundle", bucket=bucket.id, key=key,
            source=bundle_asset(plan, args.bundle), server_side_encryption="AES256",
            content_type="application/gzip", opts=child,
        )
        # From the object's own output: the controller config that names it is written only
        # once the object exists.
        self.bundle_url = pulumi.Output.all(bucket.bucket, bundle.key).apply(
            lambda a: f"s3://{a[0]}/{a[1]}")
        self.bundle_arn_prefix = bucket.arn.apply(lambda arn: f"{arn}/{BUNDLE_PREFIX}*")
        for upload in plan.uploads:
            aws.s3.BucketObjectv2(
                f"{name}-{upload.key}", bucket=bucket.id, key=upload.key,
                source=upload_source(plan, upload),
                server_side_encryption="AES256", opts=child,
            )
        self.bucket_url = bucket.bucket.apply(lambda b: f"s3://{b}")
        #: Several controllers keep their leader lease in this bucket (controllers.py).
        self.bucket_name: pulumi.Output[str] = bucket.bucket
        self.bucket_arn: pulumi.Output[str] = bucket.arn
        if plan.uploads:
            # Exactly the uploaded objects: never the bundle under BUNDLE_PREFIX.
            keys = [upload.key for upload in plan.uploads]
            statements.append(bucket.arn.apply(
                lambda arn: {"Effect": "Allow", "Action": ["s3:GetObject"],
                             "Resource": [f"{arn}/{k}" for k in keys]}
            ))
        role = aws.iam.Role(
            f"{name}-replica", assume_role_policy=_assume("ec2.amazonaws.com"), tags=tags,
            opts=child,
        )
        grant = aws.iam.RolePolicy(
            f"{name}-replica", role=role.id,
            policy=pulumi.Output.all(*statements).apply(
                lambda s: json.dumps({"Version": "2012-10-17", "Statement": list(s)})
            ),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-replica", role=role.name, opts=child)
        self.replica_role_arn = role.arn
        self.replica_profile_name = profile.name
        self.replica_grants = [grant, profile]
        self.register_outputs({
            "token_secret_arn": self.token_secret_arn,
            "replica_role_arn": self.replica_role_arn,
        })


def _assume(service: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service},
                       "Action": "sts:AssumeRole"}],
    })


@dataclass
class FirewallArgs:
    plan: DeploymentPlan


class Firewall(pulumi.ComponentResource):
    """Security groups: LB port to the allowed CIDRs, replica ports only from the controller,
    the admin (registration) port only from replicas, SSH only when ``sshCidrs`` is set."""

    controller_sg_id: pulumi.Output[str]
    replica_sg_id: pulumi.Output[str]
    vpc_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: FirewallArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:aws:Firewall", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        controller = aws.ec2.SecurityGroup(
            f"{name}-controller", description=f"skyform controller of {plan.name}",
            tags=_tags(plan), opts=child,
        )
        replica = aws.ec2.SecurityGroup(
            f"{name}-replica", description=f"skyform replicas of {plan.name}",
            tags=_tags(plan), opts=child,
        )
        for i, cidr in enumerate(plan.allowed_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-lb-{i}", security_group_id=controller.id, ip_protocol="tcp",
                from_port=plan.lb_port, to_port=plan.lb_port, cidr_ipv4=cidr,
                description="clients to the load balancer", opts=child,
            )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-admin", security_group_id=controller.id, ip_protocol="tcp",
            from_port=plan.admin_port, to_port=plan.admin_port,
            referenced_security_group_id=replica.id,
            description="replica registration with the agent", opts=child,
        )
        for region in replica_regions(plan):
            # Replicas in another region register over the peering from their region's
            # range (a security group cannot reference a group in another region).
            admin_rule(f"{name}-admin-{region}", plan, region, controller.id, child)
        for i, cidr in enumerate(plan.admin_cidrs):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-admin-{i}", security_group_id=controller.id, ip_protocol="tcp",
                from_port=plan.admin_port, to_port=plan.admin_port, cidr_ipv4=cidr,
                description="skyform status from skyform:adminCidrs", opts=child,
            )
        for lo, hi in port_ranges(plan.replica_ports):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-service-{lo}" if lo == hi else f"{name}-service-{lo}-{hi}",
                security_group_id=replica.id, ip_protocol="tcp", from_port=lo, to_port=hi,
                referenced_security_group_id=controller.id,
                description="controller to the replicas' service ports", opts=child,
            )
        if plan.task.num_nodes > 1:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-nodes", security_group_id=replica.id, ip_protocol="-1",
                referenced_security_group_id=replica.id,
                description="the nodes of a multi-node replica to each other", opts=child,
            )
        for i, cidr in enumerate(plan.ssh_cidrs):
            for role, group in (("controller", controller), ("replica", replica)):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-ssh-{role}-{i}", security_group_id=group.id, ip_protocol="tcp",
                    from_port=22, to_port=22, cidr_ipv4=cidr, description="SSH", opts=child,
                )
        for role, group in (("controller", controller), ("replica", replica)):
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-egress-{role}", security_group_id=group.id, ip_protocol="-1",
                cidr_ipv4="0.0.0.0/0", description="outbound", opts=child,
            )
        self.controller_sg_id = controller.id
        self.replica_sg_id = replica.id
        #: The (default) VPC the groups are in: the controller launches replicas in it only.
        self.vpc_id = replica.vpc_id
        self.register_outputs({
            "controller_sg_id": self.controller_sg_id,
            "replica_sg_id": self.replica_sg_id,
        })


@dataclass
class ControllerArgs:
    plan: DeploymentPlan
    instance_type: str
    security_group_id: pulumi.Input[str]
    token_secret_arn: pulumi.Input[str]
    replica_role_arn: pulumi.Input[str]
    tls_secret_arn: pulumi.Input[str] | None = None
    #: The service secrets (the agent fills ``${NAME}`` in the readiness probe from them).
    service_secret_arn: pulumi.Input[str] | None = None
    #: The controller's Pulumi credentials (``skyform:pulumiPassphrase`` / ``AccessToken``).
    pulumi_credentials: pulumi.Output[dict[str, str]] | None = None
    #: The project bundle: its object URL, sha256 and the ARN pattern of its prefix.
    bundle_url: pulumi.Input[str] = ""
    bundle_digest: str = ""
    bundle_arn_prefix: pulumi.Input[str] | None = None
    #: The API keys' digests for the agent config (``skyform:apiKeys``), a secret.
    api_key_digests: pulumi.Output[list[dict[str, Any]]] | None = None
    #: The replicas' security group and its VPC: the only network replicas launch into.
    replica_sg_id: pulumi.Input[str] | None = None
    vpc_id: pulumi.Input[str] | None = None
    #: The controller VPC's main route table (replica regions route back through it).
    route_table_id: pulumi.Input[str] | None = None
    #: Several controllers (components/clouds/controllers.py): their zones (the first is the
    #: one controller's), the ``lease:`` section they share and the lease object's ARN.
    zones: list[str] | None = None
    lease: pulumi.Output[LeaseConfig] | None = None
    lease_arn: pulumi.Input[str] | None = None


#: What the agent's ``up`` creates in a replica region (aws_regions.ReplicaRegion), each
#: tagged with the stack id at creation.
REGION_CREATE_ACTIONS = (
    "ec2:CreateVpc", "ec2:CreateInternetGateway", "ec2:CreateRouteTable", "ec2:CreateSubnet",
    "ec2:CreateSecurityGroup", "ec2:CreateVpcPeeringConnection",
)
#: What it does to those resources once they exist (and on the VPC a create names).
REGION_MANAGE_ACTIONS = (
    *REGION_CREATE_ACTIONS[2:],
    "ec2:ModifyVpcAttribute", "ec2:AttachInternetGateway", "ec2:DetachInternetGateway",
    "ec2:CreateRoute", "ec2:DeleteRoute", "ec2:AssociateRouteTable",
    "ec2:DisassociateRouteTable", "ec2:ModifySubnetAttribute",
    "ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress",
    "ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress",
    "ec2:DeleteVpc", "ec2:DeleteSubnet", "ec2:DeleteRouteTable", "ec2:DeleteInternetGateway",
    "ec2:DeleteSecurityGroup", "ec2:DeleteVpcPeeringConnection", "ec2:CreateTags",
    "ec2:DeleteTags",
)


def _region_statements(stack_id: str, region: str, replica_regions: list[str],
                       vpc_id: str | None, route_table_id: str | None) -> list[dict[str, Any]]:
    """The grants of a replica region's network (docs/locations.md): create it tagged with
    this stack's id, manage only what carries that id, launch replicas into its subnets and
    security group only, peer with the controller's VPC, route back in its main table."""
    def arns(kind: str) -> list[str]:
        return [f"arn:aws:ec2:{r}:*:{kind}" for r in replica_regions]

    mine = {"StringEquals": {"ec2:ResourceTag/skyform:stack-id": stack_id}}
    statements: list[dict[str, Any]] = [
        {"Sid": "CreateRegionNetworks", "Effect": "Allow",
         "Action": list(REGION_CREATE_ACTIONS), "Resource": arns("*"),
         "Condition": {"StringEquals": {"aws:RequestTag/skyform:stack-id": stack_id}}},
        {"Sid": "ManageRegionNetworks", "Effect": "Allow",
         "Action": list(REGION_MANAGE_ACTIONS), "Resource": arns("*"), "Condition": mine},
        {"Sid": "TagRegionNetworksOnCreate", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": arns("*"), "Condition": {"StringEquals": {
             "ec2:CreateAction": [a.removeprefix("ec2:") for a in REGION_CREATE_ACTIONS]}}},
        {"Sid": "LaunchInRegionNetworks", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": [*arns("subnet/*"), *arns("security-group/*")], "Condition": mine},
        # The interface RunInstances creates carries no tag: its subnet and security group,
        # authorized in the same call, are the stack's.
        {"Sid": "LaunchRegionInterfaces", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": arns("network-interface/*")},
    ]
    if vpc_id:
        home_vpc = f"arn:aws:ec2:{region}:*:vpc/{vpc_id}"
        statements += [
            {"Sid": "PeerWithControllerVpc", "Effect": "Allow",
             "Action": ["ec2:CreateVpcPeeringConnection", "ec2:AcceptVpcPeeringConnection"],
             "Resource": home_vpc},
            {"Sid": "AcceptRegionPeerings", "Effect": "Allow",
             "Action": ["ec2:AcceptVpcPeeringConnection"],
             "Resource": f"arn:aws:ec2:{region}:*:vpc-peering-connection/*",
             "Condition": {"ArnLike": {"ec2:AccepterVpc": home_vpc}}},
        ]
    if route_table_id:
        statements.append({
            "Sid": "RouteControllerVpcToRegions", "Effect": "Allow",
            "Action": ["ec2:CreateRoute", "ec2:DeleteRoute"],
            "Resource": f"arn:aws:ec2:{region}:*:route-table/{route_table_id}"})
    return statements


def controller_policy(
    stack_id: str, region: str, token_arn: str, replica_role_arn: str, backend_url: str | None,
    tls_arn: str | None = None, service_secret_arn: str | None = None,
    config_arn: str | None = None, bundle_arn_prefix: str | None = None, *,
    project: str = "", stack: str = "", replica_sg_id: str | None = None,
    vpc_id: str | None = None, replica_regions: list[str] | None = None,
    route_table_id: str | None = None, lease_arn: str | None = None,
) -> dict[str, Any]:
    """Least privilege for the agent's targeted ``pulumi up`` and ``refresh`` (``target`` =
    the replica groups, ``target_dependents``, ``run_program``) of this stack.

    What those read and write, and the statement that grants it:

    - ``Describe``: reading instances and their volumes (refresh, and the diff of up:
      DescribeInstances, DescribeInstanceAttribute, DescribeVolumes, DescribeTags,
      DescribeInstanceCreditSpecifications), and the program's invokes under ``run_program``
      (``get_ami``: DescribeImages; ``get_subnet``: DescribeSubnets).
    - ``LaunchTaggedReplicas``: RunInstances creates the instance and its root volume; both
      carry this stack's unique id tag at launch (``skyform:stack-id``, ``stack_identity``:
      backend, organization, project and stack; never the bare stack name).
    - ``LaunchWithStackNetwork``: the network RunInstances uses: the replicas' security group
      (this stack's, by id), subnets and the new network interface in its VPC only.
    - ``LaunchFromSharedResources``: the region's images and, for spot launches, the
      ``spot-instances-request`` RunInstances creates (the provider does not tag it).
    - ``SpotServiceLinkedRole``: the first spot launch of an account creates
      AWSServiceRoleForEC2Spot.
    - ``TagOnLaunch`` / ``ManageOwnReplicas``: tags at launch; terminate, stop/start, modify and
      retag only instances and volumes with this stack's id that carry a ``skyform:group``
      tag (replicas; never the controller itself).
    - ``PassReplicaRole``: the replicas' instance profile.
    - ``ReadControllerSecrets``: the agent token, the controller config, TLS and service
      secrets (boot and the agent; not the engine).
    - ``ReadProjectBundle``: ``s3:GetObject`` on the bundle prefix of the stack's files bucket
      (``arn:aws:s3:::<bucket>/controller/*``): the controller's sync downloads the bundle.
      Nothing else of the bucket (the replicas' uploads are not the controller's business).
    - ``PulumiBackendList`` / ``PulumiBackendObjects`` / ``PulumiBackendLayout``: in an
      ``s3://`` backend, this stack's objects only (``state_objects``: its stack file,
      history, backups and locks) and the layout marker; no other stack's state.
    - With replica regions (other menu regions, ``replica_regions``): the launch grants
      above in those regions too, and ``_region_statements``.
    - ``LeaderLease`` (several controllers only): ``s3:GetObject`` and ``s3:PutObject`` on
      the one lease object of the files bucket (lb_agent/control/leases/s3.py: read, and
      conditional create/replace); no delete, no list, no other key.
    """
    regions = [region, *(replica_regions or [])]

    def each(kind: str) -> list[str]:
        return [f"arn:aws:ec2:{r}:*:{kind}" for r in regions]

    tag = {"aws:RequestTag/skyform:stack-id": stack_id}
    own = {"StringEquals": {"ec2:ResourceTag/skyform:stack-id": stack_id},
           "StringLike": {"ec2:ResourceTag/skyform:group": "*"}}
    readable = [arn for arn in (token_arn, config_arn, tls_arn, service_secret_arn) if arn]
    network: list[dict[str, Any]] = []
    if replica_sg_id:
        network.append({"Sid": "LaunchWithStackNetwork", "Effect": "Allow",
                        "Action": ["ec2:RunInstances"],
                        "Resource": f"arn:aws:ec2:{region}:*:security-group/{replica_sg_id}"})
    if vpc_id:
        network.append({"Sid": "LaunchInStackVpc", "Effect": "Allow",
                        "Action": ["ec2:RunInstances"],
                        "Resource": [f"arn:aws:ec2:{region}:*:subnet/*",
                                     f"arn:aws:ec2:{region}:*:network-interface/*"],
                        "Condition": {"ArnLike": {
                            "ec2:Vpc": f"arn:aws:ec2:{region}:*:vpc/{vpc_id}"}}})
    statements: list[dict[str, Any]] = [
        {"Sid": "Describe", "Effect": "Allow",
         "Action": ["ec2:Describe*"], "Resource": "*"},
        {"Sid": "LaunchTaggedReplicas", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": [*each("instance/*"), *each("volume/*")],
         "Condition": {"StringEquals": tag}},
        *network,
        {"Sid": "LaunchFromSharedResources", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": [*(f"arn:aws:ec2:{r}::image/*" for r in regions),
                      *each("spot-instances-request/*")]},
        {"Sid": "SpotServiceLinkedRole", "Effect": "Allow",
         "Action": ["iam:CreateServiceLinkedRole"], "Resource": "*",
         "Condition": {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}}},
        {"Sid": "TagOnLaunch", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": "*", "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}},
        {"Sid": "ManageOwnReplicas", "Effect": "Allow",
         "Action": ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances",
                    "ec2:ModifyInstanceAttribute", "ec2:CreateTags", "ec2:DeleteTags"],
         "Resource": [*each("instance/*"), *each("volume/*")],
         "Condition": own},
        {"Sid": "PassReplicaRole", "Effect": "Allow", "Action": ["iam:PassRole"],
         "Resource": replica_role_arn},
        {"Sid": "ReadControllerSecrets", "Effect": "Allow",
         "Action": ["secretsmanager:GetSecretValue"],
         "Resource": readable if len(readable) > 1 else token_arn},
    ]
    if replica_regions:
        statements += _region_statements(stack_id, region, replica_regions, vpc_id,
                                         route_table_id)
    if bundle_arn_prefix:
        statements.append({"Sid": "ReadProjectBundle", "Effect": "Allow",
                           "Action": ["s3:GetObject"], "Resource": bundle_arn_prefix})
    if lease_arn:
        statements.append({"Sid": "LeaderLease", "Effect": "Allow",
                           "Action": ["s3:GetObject", "s3:PutObject"], "Resource": lease_arn})
    state = state_objects(backend_url, project, stack) if backend_url else None
    if state is not None and backend_url and backend_url.startswith("s3://"):
        bucket = f"arn:aws:s3:::{state.bucket}"
        statements += [
            {"Sid": "PulumiBackendList", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": bucket,
             "Condition": {"StringLike": {"s3:prefix": [
                 *(f"{p}*" for p in state.prefixes), *state.read_only]}}},
            {"Sid": "PulumiBackendObjects", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": [f"{bucket}/{p}*" for p in state.prefixes]},
            {"Sid": "PulumiBackendLayout", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": [f"{bucket}/{name}" for name in state.read_only]},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


class Controller(pulumi.ComponentResource):
    """The controller VM: on-demand, public IP, runs the agent (LB on 30001, admin on 20001).
    With ``zones`` of several controllers, one VM (network interface, Elastic IP) per zone
    entry sharing role, config and grant; the first keeps the one controller's names."""

    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    #: Every controller's instance id and private IP (the first is ``private_ip``'s).
    instance_ids: list[pulumi.Output[str]]
    private_ips: list[pulumi.Output[str]]

    def __init__(
        self, name: str, args: ControllerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:aws:Controller", name, None, opts)
        plan = args.plan
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{name}-role", assume_role_policy=_assume("ec2.amazonaws.com"),
            tags=_tags(plan), opts=child,
        )
        # What changes per commit or YAML edit (agent config, project bundle) is a secret the
        # controller polls, not user data: a commit never replaces the controller.
        config = aws.secretsmanager.Secret(
            f"{name}-config", description=f"skyform controller config of {plan.name}",
            recovery_window_in_days=0, tags=_tags(plan), opts=child,
        )
        aws.secretsmanager.SecretVersion(
            f"{name}-config", secret_id=config.id,
            secret_string=controller_config_secret(
                plan, args.bundle_url, args.bundle_digest, args.pulumi_credentials,
                args.api_key_digests, args.lease),
            opts=child,
        )
        grant = aws.iam.RolePolicy(
            f"{name}-pulumi-up", role=role.id,
            policy=pulumi.Output.all(
                args.token_secret_arn, args.replica_role_arn, args.tls_secret_arn,
                args.service_secret_arn, config.arn, args.bundle_arn_prefix,
                args.replica_sg_id, args.vpc_id, args.route_table_id, args.lease_arn,
            ).apply(
                lambda a: json.dumps(controller_policy(
                    stack_identity(plan), plan.region, a[0], a[1], plan.backend_url, a[2], a[3],
                    a[4], a[5], project=pulumi.get_project(), stack=plan.stack,
                    replica_sg_id=a[6], vpc_id=a[7], replica_regions=replica_regions(plan),
                    route_table_id=a[8], lease_arn=a[9],
                ))
            ),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, opts=child)
        user_data = pulumi.Output.all(
            args.token_secret_arn, args.tls_secret_arn, args.service_secret_arn, config.arn,
        ).apply(
            lambda a: aws_user_data_base64(render_controller_cloud_init(ControllerBoot(
                cloud="aws", service_name=plan.name, agent_config=agent_config(plan),
                token_id=a[0], pulumi_version=PULUMI_CLI_VERSION, region=plan.region,
                deployer_env=_deployer_env(plan), tls_secret_id=a[1],
                service_secret_id=a[2], config_secret_id=a[3],
            )))
        )
        # A network interface of its own keeps the controller's private IP (the replicas'
        # user data) across a replacement of the VM; an Elastic IP keeps the endpoint.
        zones = args.zones or [plan.zone or f"{plan.region}a"]
        ami = _ami(UBUNTU_OWNER, UBUNTU_NAME, pulumi.InvokeOutputOptions(parent=self))
        self.instance_ids, self.private_ips, public_ips = [], [], []
        for index, zone in enumerate(zones):
            # The first controller keeps the one controller's names: adding controllers
            # replaces nothing.
            each = name if index == 0 else f"{name}-{index}"
            if index == 0:
                subnet_id = aws.ec2.get_subnet_output(
                    default_for_az=True, availability_zone=zone,
                    opts=pulumi.InvokeOutputOptions(parent=self),
                ).id
                nic = aws.ec2.NetworkInterface(
                    f"{each}-nic", subnet_id=subnet_id,
                    security_groups=[args.security_group_id],
                    description=f"skyform controller of {plan.name}", tags=_tags(plan),
                    opts=child,
                )
            else:
                # Slot ``index``: a fixed address in a /28 of its own (controllers.slot), the
                # address every replica's user data already names.
                place = controllers.slot(plan, index)
                slot_subnet = aws.ec2.Subnet(
                    f"{each}-subnet", vpc_id=args.vpc_id, cidr_block=place.subnet,
                    availability_zone=zone,
                    tags=_tags(plan, Name=f"{plan.name}-controller-{index}",
                               **{"skyform:role": "controller"}),
                    opts=child,
                )
                nic = aws.ec2.NetworkInterface(
                    f"{each}-nic", subnet_id=slot_subnet.id, private_ips=[place.address],
                    security_groups=[args.security_group_id],
                    description=f"skyform controller {index} of {plan.name}",
                    tags=_tags(plan),
                    # A fixed address: the old interface goes before its replacement.
                    opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
                )
            vm = aws.ec2.Instance(
                f"{each}-vm",
                ami=ami,
                instance_type=args.instance_type,
                iam_instance_profile=profile.name,
                primary_network_interface={"network_interface_id": nic.id},
                availability_zone=zone,
                user_data_base64=user_data,
                user_data_replace_on_change=False,
                metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
                root_block_device=root_volume("medium", 50),
                volume_tags=_tags(plan, **{"skyform:role": "controller"}),
                tags=_tags(plan, Name=f"{plan.name}-controller" + (f"-{index}" if index else ""),
                           **{"skyform:role": "controller"}),
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[grant, profile],
                    # A newer AMI or a newer skyform's user data never replaces (or stops) the
                    # controller; `pulumi up --replace` takes them. Replacement frees the
                    # network interface first.
                    ignore_changes=["ami", "userDataBase64"], delete_before_replace=True,
                ),
            )
            eip = aws.ec2.Eip(
                f"{each}-eip", domain="vpc", network_interface=nic.id, tags=_tags(plan),
                # No dependency on the VM: replacing the VM must not replace (re-allocate) the
                # address. It is associated with the interface, which outlives the VM.
                opts=child,
            )
            self.instance_ids.append(vm.id)
            self.private_ips.append(nic.private_ip)
            public_ips.append(eip.public_ip)
        self.public_ip = public_ips[0]
        self.private_ip = self.private_ips[0]
        self.register_outputs({"public_ip": self.public_ip, "private_ip": self.private_ip})


def _deployer_env(plan: DeploymentPlan) -> dict[str, str]:
    return {"PULUMI_BACKEND_URL": plan.backend_url} if plan.backend_url else {}


@dataclass
class ReplicaGroupArgs:
    plan: DeploymentPlan
    group: GroupPlan
    ami: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    #: The first controller's private IP (slot 0; the user data names slots 1..9 too).
    controller_private_ip: pulumi.Input[str]
    credential_secret_arn: pulumi.Input[str]
    service_secret_arn: pulumi.Input[str] | None
    bucket_url: pulumi.Input[str] | None
    #: IAM grants the replicas use (they are created first).
    grants: list[pulumi.Resource] | None = None
    #: A group in another region than the controller's (aws_regions.ReplicaRegion): its
    #: subnet per zone, the controller region's provider (the node-IP secrets live there
    #: with the other secrets) and the region's network, created first.
    subnet_ids: dict[str, pulumi.Output[str]] | None = None
    home_provider: aws.Provider | None = None
    network: pulumi.Resource | None = None


#: What a frozen replica group's instances keep (lb_agent.control.fleet): every input that comes
#: from
#: the service YAML or the machine choice.
FROZEN_INSTANCE_FIELDS = (
    "ami", "instance_type", "user_data_base64", "root_block_device",
    "instance_market_options", "availability_zone", "placement_group", "tags", "volume_tags",
)


class ReplicaGroup(pulumi.ComponentResource):
    """``count`` replicas indexed 0..count-1; scaling down removes the highest index. A replica
    is one EC2 instance, or (``num_nodes > 1``) a head and ``num_nodes - 1`` workers in one
    cluster placement group, removed together."""

    addresses: list[pulumi.Output[str]]
    instance_ids: list[pulumi.Output[str]]
    indices: list[int]

    def __init__(
        self, name: str, args: ReplicaGroupArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("skyform:aws:ReplicaGroup", name, None, opts)
        plan, group = args.plan, args.group
        child = pulumi.ResourceOptions(parent=self)
        secret_opts = pulumi.ResourceOptions(parent=self, provider=args.home_provider) \
            if args.home_provider is not None else child
        instance_opts = pulumi.ResourceOptions(
            parent=self, depends_on=[*(args.grants or []),
                                     *([args.network] if args.network else [])],
            # The image is resolved at the first up; a newer one never replaces a replica, nor
            # does a newer skyform's start-up script (the generation's digest covers what the
            # YAML asks; a new script reaches the replicas launched from then on).
            # A frozen group (an older generation, being rolled out) keeps everything its
            # instances were launched with; only its count changes.
            ignore_changes=list(FROZEN_INSTANCE_FIELDS) if group.frozen
            else ["ami", "user_data_base64"],
        )
        market: Any = (
            {"market_type": "spot", "spot_options": {
                "instance_interruption_behavior": "terminate",
                "spot_instance_type": "one-time"}}
            if group.spot else None
        )
        self.addresses = []
        self.instance_ids = []
        nodes = plan.task.num_nodes

        offer = plan.group_offer(group)
        group_zone = plan.group_zone(group) if group.placed else plan.zone
        if args.subnet_ids and group_zone is None:  # aws_regions.used_zones' choice
            group_zone = f"{plan.group_region(group)}a"

        def instance(index: int, rank: int, placement: pulumi.Input[str] | None,
                     ips_secret: str | None, zone: pulumi.Input[str] | None = group_zone
                     ) -> aws.ec2.Instance:
            user_data = pulumi.Output.all(
                args.controller_private_ip, args.credential_secret_arn,
                args.service_secret_arn, args.bucket_url,
            ).apply(functools.partial(_replica_user_data, plan, group, index, rank, ips_secret))
            return aws.ec2.Instance(
                f"{name}-{index}" if rank == 0 else f"{name}-{index}-node{rank}",
                ami=args.ami,
                instance_type=offer.instance_type,
                iam_instance_profile=args.instance_profile,
                vpc_security_group_ids=[args.security_group_id],
                associate_public_ip_address=True,
                availability_zone=zone,
                subnet_id=(args.subnet_ids or {}).get(str(zone)) if args.subnet_ids else None,
                placement_group=placement,
                instance_market_options=market,
                user_data_base64=user_data,
                user_data_replace_on_change=True,
                metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
                root_block_device=root_volume(plan.disk_tier, plan.candidate.disk_size),
                # The root volume carries the stack tag at launch: the controller's
                # RunInstances permission is conditioned on it for volumes too.
                volume_tags=_tags(plan, **{"skyform:group": group.group,
                                           "skyform:index": str(index)}),
                tags=_tags(plan, Name=f"{plan.name}-{group.group}-{index}"
                           + (f"-node{rank}" if rank else ""),
                           **{"skyform:group": group.group, "skyform:index": str(index),
                              "skyform:node-rank": str(rank)}),
                opts=instance_opts,
            )

        self.indices = group.indices()
        for index in self.indices:
            if nodes == 1:
                head = instance(index, 0, None, None)
            else:
                # One replica = a group of nodes in one cluster placement group; the IP list
                # goes to the secret store once every node exists (no cycle in user data).
                placement = aws.ec2.PlacementGroup(
                    f"{name}-{index}", strategy="cluster", tags=_tags(plan), opts=child)
                ips = aws.secretsmanager.Secret(
                    f"{name}-{index}-nodes", name=f"{node_ips_prefix(plan)}{group.group}-{index}",
                    description=f"node IPs of replica {group.group}-{index} of {plan.name}",
                    recovery_window_in_days=0, tags=_tags(plan), opts=secret_opts,
                )
                secret_name = f"{node_ips_prefix(plan)}{group.group}-{index}"
                # A cluster placement group lives in one zone: the group's nodes all go to
                # skyform:zone, else the region's first zone (<region>a), as GCP's default.
                zone = group_zone or f"{plan.region}a"
                members = [instance(index, rank, placement.name, secret_name, zone)
                           for rank in range(nodes)]
                head = members[0]
                aws.secretsmanager.SecretVersion(
                    f"{name}-{index}-nodes", secret_id=ips.id,
                    secret_string=pulumi.Output.all(*[m.private_ip for m in members]).apply(
                        lambda addresses: "\n".join(addresses)),
                    opts=secret_opts,
                )
            self.addresses.append(head.private_ip)
            self.instance_ids.append(head.id)
        self.register_outputs({"addresses": self.addresses, "instance_ids": self.instance_ids})


def node_ips_prefix(plan: DeploymentPlan) -> str:
    """Secrets Manager name prefix of the multi-node groups' IP lists."""
    return f"skyform/{plan.stack}/{plan.name}/nodes/"


def _replica_user_data(plan: DeploymentPlan, group: GroupPlan, index: int, rank: int,
                       ips_secret: str | None, resolved: list[Any]) -> str:
    controller_ip, credential_arn, secret_arn, bucket_url = resolved
    return aws_user_data_base64(render_replica_cloud_init(_boot(
        plan, group, index, controller_ip=controller_ip, credential_arn=credential_arn,
        secret_arn=secret_arn, bucket_url=bucket_url, rank=rank, ips_secret=ips_secret,
    )))


def _boot(
    plan: DeploymentPlan, group: GroupPlan, index: int, *, controller_ip: str,
    credential_arn: str,
    secret_arn: str | None, bucket_url: str | None, rank: int = 0,
    ips_secret: str | None = None,
) -> ReplicaBoot:
    # Every controller slot, the first controller's address first (controllers.py).
    urls = controllers.controller_urls(controller_ip, plan)
    return ReplicaBoot(
        cloud="aws", service_name=plan.name, group=group.group, index=index,
        replica_id_base=group.replica_id_base, spot=group.spot,
        accelerator=plan.group_offer(group).accelerator, num_gpus=plan.num_gpus,
        service_port=plan.service_port,
        controller_url=urls[0], fallback_controller_urls=urls[1:],
        credential_id=credential_arn, secret_id=secret_arn, region=plan.region,
        envs=plan.envs,
        setup=plan.task.setup, run=plan.task.run, downloads=downloads_for(plan, bucket_url),
        docker_image=plan.docker_image, num_nodes=plan.task.num_nodes, node_rank=rank,
        node_ips_secret=ips_secret,
    )


def deploy(name: str, plan: DeploymentPlan, secrets: DeploymentSecrets,
           parent: pulumi.ComponentResource, controller_instance_type: str) -> CloudDeployment:
    """Create every AWS component of the service under ``parent``: the controller's region
    with its provider, and a ``ReplicaRegion`` per other region of the menu."""
    provider = aws.Provider(f"{name}-aws", region=plan.region,
                            opts=pulumi.ResourceOptions(parent=parent))
    opts = pulumi.ResourceOptions(parent=parent, providers={"aws": provider})
    bundle = plan_bundle(plan)
    access = Access(f"{name}-access", AccessArgs(plan, secrets, bundle), opts)
    firewall = Firewall(f"{name}-firewall", FirewallArgs(plan), opts)
    others = replica_regions(plan)
    check_ranges(others)
    vpc_cidr: pulumi.Output[str] | None = None
    route_table_id: pulumi.Output[str] | None = None
    if others:
        vpc_cidr, route_table_id = controller_vpc(provider, firewall.vpc_id, parent)
    count = plan.controller_replicas
    several = (aws_lb.several_controllers(plan, count, access.bucket_name, access.bucket_arn)
               if count > 1 else None)
    controller = Controller(f"{name}-controller", ControllerArgs(
        plan, controller_instance_type, firewall.controller_sg_id, access.token_secret_arn,
        access.replica_role_arn, access.tls_secret_arn, access.service_secret_arn,
        secrets.pulumi_credentials, access.bundle_url, bundle.digest, access.bundle_arn_prefix,
        secrets.api_key_digests, firewall.replica_sg_id, firewall.vpc_id, route_table_id,
        zones=None if several is None else several.zones,
        lease=None if several is None else several.lease,
        lease_arn=None if several is None else several.lease_arn,
    ), opts)
    regions: dict[str, ReplicaRegion] = {}
    if vpc_cidr is not None and route_table_id is not None:
        home = ControllerNetwork(provider, firewall.vpc_id, vpc_cidr, route_table_id,
                                 controller.private_ip,
                                 [controllers.slot(plan, i).address for i in range(1, count)])
        regions = {region: ReplicaRegion(f"{name}-region-{region}", ReplicaRegionArgs(
            plan, region, used_zones(plan, region), home, _tags(plan)), opts)
            for region in others}
    images: dict[tuple[str, str, str], pulumi.Output[str]] = {}

    def image(group: GroupPlan, region: str, where: aws.Provider) -> pulumi.Input[str]:
        pinned = region_image(plan, group.site.key) if group.placed and group.site \
            else plan.image
        if pinned:
            return pinned
        owner, name_filter = replica_image_filter(plan.group_offer(group).accelerator)
        key = (region, owner, name_filter)
        if key not in images:
            images[key] = _ami(owner, name_filter,
                               pulumi.InvokeOutputOptions(parent=parent, provider=where))
        return images[key]

    groups: list[pulumi.ComponentResource] = []
    replicas: list[pulumi.Output[dict[str, Any]]] = []
    for group in plan.groups:
        region = plan.group_region(group)
        net = regions.get(region)
        if net is not None and net.provider is not None and net.security_group_id is not None:
            args = ReplicaGroupArgs(
                plan, group, image(group, region, net.provider), net.security_group_id,
                access.replica_profile_name, controller.private_ip,
                access.credential_secret_arn, access.service_secret_arn, access.bucket_url,
                access.replica_grants, subnet_ids=net.subnet_ids, home_provider=provider,
                network=net)
            group_opts = pulumi.ResourceOptions(parent=parent,
                                                providers={"aws": net.provider})
        else:
            args = ReplicaGroupArgs(
                plan, group, image(group, plan.region, provider), firewall.replica_sg_id,
                access.replica_profile_name, controller.private_ip,
                access.credential_secret_arn, access.service_secret_arn, access.bucket_url,
                access.replica_grants)
            group_opts = opts
        component = ReplicaGroup(f"{name}-{group.group}", args, group_opts)
        groups.append(component)
        for index, address in zip(component.indices, component.addresses, strict=True):
            replicas.append(address.apply(functools.partial(replica_entry, plan, group, index)))
    address = controller.public_ip
    if several is not None:
        nlb = aws_lb.NetworkLoadBalancer(f"{name}-nlb", aws_lb.NetworkLoadBalancerArgs(
            plan, several.zones, controller.instance_ids, firewall.controller_sg_id,
            firewall.vpc_id,
        ), opts)
        address = nlb.dns_name
    endpoint = address.apply(lambda host: f"{plan.scheme}://{host}:{plan.lb_port}")
    admin_url = controller.public_ip.apply(lambda ip: f"http://{ip}:{plan.admin_port}")
    return CloudDeployment(endpoint, address, replicas, groups, admin_url,
                           targets=list(regions.values()))
