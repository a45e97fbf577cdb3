"""Offline synthesis: run the real Pulumi program under Pulumi's mock runtime and capture it.

This module owns the mock engine for ``skyform synth``, the bench and the program tests: a
``Mocks`` that answers resources and invokes deterministically (ids, private/public IPs,
AMI and project look-ups, LoadBalancer addresses), a monitor that records every registered
resource (type token, name, parent, inputs with secrets masked), and ``synthesize`` which
resets the runtime and runs the program (components/program.py) once per call, so many runs
fit in one process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import runpy
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

#: The project directory of a checkout (Pulumi.yaml, stacks/); in an installed package, the
#: folder holding the package, where no stack file is found (synth needs none).
PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT_NAME = "skyform"
MASK = "[secret]"


@dataclass(frozen=True)
class CapturedResource:
    """One registered resource: type token, logical name, parent's name, masked inputs."""

    type: str
    name: str
    parent: str | None
    urn: str
    inputs: dict[str, Any]
    #: Inputs with secrets revealed; only for tests that check where secrets go.
    raw_inputs: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)
    #: Resource options the engine would act on: ``ignoreChanges``, ``dependsOn`` (URNs),
    #: ``deleteBeforeReplace``, ``replaceOnChanges``.
    options: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "parent": self.parent,
                "inputs": self.inputs}


@dataclass
class SynthResult:
    resources: list[CapturedResource]
    #: Stack outputs, secrets masked.
    outputs: dict[str, Any]
    #: Names of the outputs that are secret.
    secret_outputs: set[str]
    warnings: list[str]
    #: Every invoke the program made: (token, arguments).
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: The provider reference of each invoke, in the same order (empty: the default).
    invoke_providers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"resources": [r.to_json() for r in self.resources], "outputs": self.outputs}

    def of_type(self, token: str) -> list[CapturedResource]:
        return [r for r in self.resources if r.type == token]

    def named(self, name: str) -> CapturedResource:
        for resource in self.resources:
            if resource.name == name:
                return resource
        raise KeyError(name)


def _mask(value: Any, *, reveal: bool = False) -> Any:
    if rpc.is_rpc_secret(value):
        return _mask(rpc.unwrap_rpc_secret(value), reveal=True) if reveal else MASK
    if isinstance(value, Mapping):
        return {str(k): _mask(v, reveal=reveal) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v, reveal=reveal) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # protobuf numbers are doubles; Kubernetes wants integers
    if isinstance(value, pulumi.FileArchive | pulumi.FileAsset):
        return {"path": value.path}
    if value == rpc.UNKNOWN:
        return "<unknown>"
    return value


def _ip(name: str, prefix: str) -> str:
    digest = zlib.crc32(name.encode())
    return f"{prefix}.{(digest >> 8) % 250 + 1}.{digest % 250 + 2}"


class SynthMocks(pulumi.runtime.Mocks):
    """Deterministic answers for every resource and invoke the program uses."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        state = dict(args.inputs)
        rid = f"{args.name}-id"
        typ = args.typ
        if typ == "aws:ec2/securityGroup:SecurityGroup":
            state.setdefault("vpcId", "vpc-synth")  # the default VPC, as the provider reads it
        if typ == "aws:ec2/instance:Instance":
            state.update(privateIp=_ip(args.name, "10.0"), publicIp=_ip(args.name, "203.0"),
                         arn=f"arn:aws:ec2:us-east-1:123456789012:instance/{rid}")
        elif typ == "aws:ec2/networkInterface:NetworkInterface":
            # A fixed address (``private_ips``) is the interface's primary one, as EC2 does.
            state.update(privateIp=(state.get("privateIps") or [_ip(args.name, "10.0")])[0])
        elif typ == "aws:lb/loadBalancer:LoadBalancer":
            state.update(dnsName=f"{state.get('name', args.name)}-0123456789abcdef.elb."
                                 "us-east-1.amazonaws.com",
                         arn=f"arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                             f"loadbalancer/net/{args.name}/0123456789abcdef")
        elif typ == "aws:ec2/eip:Eip":
            state.update(publicIp=_ip(args.name, "203.0"))
        elif typ == "gcp:compute/address:Address":
            internal = state.get("addressType") == "INTERNAL"
            state.setdefault("address", _ip(args.name, "10.128" if internal else "34.1"))
        elif typ == "aws:s3/bucket:Bucket":
            state.setdefault("bucket", args.name)
            state.update(arn=f"arn:aws:s3:::{state['bucket']}", name=args.name)
        elif typ.startswith("aws:") and "arn" not in state:
            kind = typ.split(":")[-1].lower()
            state["arn"] = f"arn:aws:synth:::{kind}/{args.name}"
            state.setdefault("name", args.name)
        elif typ == "gcp:compute/instance:Instance":
            nics = [dict(n) for n in state.get("networkInterfaces", [{}])]
            nics[0]["networkIp"] = _ip(args.name, "10.128")
            if nics[0].get("accessConfigs") is not None:
                nics[0]["accessConfigs"] = [{"natIp": _ip(args.name, "34.0")}]
            state["networkInterfaces"] = nics
            zone = state.get("zone", "us-central1-a")
            state["selfLink"] = ("https://www.googleapis.com/compute/v1/projects/synth-project/"
                                 f"zones/{zone}/instances/{state.get('name', args.name)}")
        elif typ == "gcp:compute/instanceGroup:InstanceGroup":
            state["selfLink"] = ("https://www.googleapis.com/compute/v1/projects/synth-project/"
                                 f"zones/{state.get('zone')}/instanceGroups/{state.get('name')}")
        elif typ == "gcp:compute/regionBackendService:RegionBackendService":
            state["selfLink"] = ("https://www.googleapis.com/compute/v1/projects/synth-project/"
                                 f"regions/{state.get('region')}/backendServices/"
                                 f"{state.get('name')}")
        elif typ == "gcp:serviceaccount/account:Account":
            state.update(email=f"{state.get('accountId')}@synth.iam.gserviceaccount.com",
                         name=f"projects/synth/serviceAccounts/{state.get('accountId')}")
        elif typ == "gcp:storage/bucket:Bucket":
            state.setdefault("name", args.name)
        elif typ == "kubernetes:core/v1:Service":
            spec = state.get("spec") or {}
            if isinstance(spec, Mapping) and spec.get("type") == "LoadBalancer":
                state["status"] = {"loadBalancer": {"ingress": [{"ip": _ip(args.name,
                                                                            "198.51")}]}}
        elif typ == "random:index/randomId:RandomId":
            state["hex"] = f"{zlib.crc32(args.name.encode()) & 0xFFFFFF:06x}"
        elif typ == "random:index/randomPassword:RandomPassword":
            state["result"] = f"synth-token-{zlib.crc32(args.name.encode()):08x}"
        return rid, state

    def __init__(self) -> None:
        self.invokes: list[tuple[str, dict[str, Any]]] = []
        self.invoke_providers: list[str] = []

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        self.invokes.append((args.token, dict(args.args)))
        self.invoke_providers.append(str(getattr(args, "provider", "") or ""))
        if args.token == "aws:ec2/getSubnet:getSubnet":
            # One default subnet per zone (the first zone's is ``subnet-0synth``).
            zone = str(args.args.get("availabilityZone") or "us-east-1a")
            suffix = "" if zone == "us-east-1a" else f"-{zone}"
            return {"id": f"subnet-0synth{suffix}", "vpcId": "vpc-0synth",
                    "availabilityZone": zone}, []
        if args.token == "aws:ec2/getVpc:getVpc":  # a default VPC
            return {"id": args.args.get("id") or "vpc-synth", "cidrBlock": "172.31.0.0/16",
                    "default": True}, []
        if args.token == "aws:ec2/getRouteTable:getRouteTable":  # its main route table
            return {"id": "rtb-0synth", "routeTableId": "rtb-0synth",
                    "vpcId": args.args.get("vpcId") or "vpc-synth"}, []
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0synth0000000000", "name": "synth-ami",
                    "architecture": "x86_64"}, []
        if args.token == "gcp:organizations/getProject:getProject":
            return {"projectId": "synth-project", "number": "123456789", "id": "synth"}, []
        return {}, []


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: pulumi.runtime.Mocks,
                 on_resource: Callable[[int], None] | None = None) -> None:
        super().__init__(mocks)
        self.captured: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = []
        self._on_resource = on_resource

    def _captured(self, entry: tuple[str, str, str, dict[str, Any], dict[str, Any]]) -> None:
        self.captured.append(entry)
        if self._on_resource is not None:
            self._on_resource(len(self.captured))

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object)
            options = {
                "ignoreChanges": list(request.ignoreChanges),
                "dependsOn": list(request.dependencies),
                "deleteBeforeReplace": bool(request.deleteBeforeReplace),
                "replaceOnChanges": list(request.replaceOnChanges),
                # The provider reference (``<provider urn>::<id>``); empty: the default.
                "provider": request.provider,
            }
            self._captured((request.type, request.name, request.parent, inputs, options))
        return response

    def ReadResource(self, request: Any) -> Any:
        # A read (the program's StackReference to its own stack) is a step of the plan too.
        response = super().ReadResource(request)
        inputs = rpc.deserialize_properties(request.properties)
        self._captured((request.type, request.name, request.parent, inputs, {"read": True}))
        return response


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def stack_config(
    service: str | Path, cloud: str, *, replicas: int | None = None,
    envs: Mapping[str, str] | None = None, secrets: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """The ``skyform:*`` config (and secret keys) a synth run uses."""
    config: dict[str, str] = {
        "skyform:service": str(Path(service).resolve()),
        "skyform:cloud": cloud,
    }
    if replicas is not None:
        config["skyform:replicas"] = str(replicas)
    if envs:
        config["skyform:envs"] = json.dumps(dict(envs))
    secret_keys: list[str] = []
    if secrets:
        config["skyform:secrets"] = json.dumps(dict(secrets))
        secret_keys.append("skyform:secrets")
    for key, value in (extra or {}).items():
        full = key if ":" in key else f"skyform:{key}"
        config[full] = value if isinstance(value, str) else json.dumps(value)
    return config, secret_keys


def synthesize(
    config: Mapping[str, str], secret_keys: list[str] | None = None, *, stack: str = "synth",
    program: Path | None = None, on_resource: Callable[[int], None] | None = None,
) -> SynthResult:
    """Run the program once under mocks with ``config``; exceptions from the program
    propagate (``pulumi.RunError`` with the original as ``__cause__``). ``program`` is a
    project's ``__main__.py`` to run instead (tests run copies of the project);
    ``on_resource`` is called with the count so far as each resource is registered (from
    the mock runtime's threads), for progress."""
    _ensure_event_loop()
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_all_config(dict(config), secret_keys or [])
    logger = logging.getLogger(f"skyform.synth.{stack}")
    logger.propagate = False
    logger.handlers.clear()
    collector = _Collector()
    logger.addHandler(collector)
    mocks = SynthMocks()
    monitor = _RecordingMonitor(mocks, on_resource)
    # "organization": what the engine reports on the file and bucket backends.
    pulumi.runtime.set_mocks(mocks, project=PROJECT_NAME, stack=stack, preview=True,
                             logger=logger, monitor=monitor, organization="organization")
    root = pulumi_settings.get_root_resource()
    assert root is not None

    def run() -> None:
        if program is None:
            from components.program import main

            main(PROJECT_DIR)
        else:
            runpy.run_path(str(program), run_name="__main__")

    _sync_await(run_pulumi_func(run))
    outputs: dict[str, Any] = {}
    secret_outputs: set[str] = set()
    for key, value in getattr(root, "outputs", {}).items():
        output = pulumi.Output.from_input(value)
        resolved = _sync_await(output.future())
        if _sync_await(output.is_secret()):
            secret_outputs.add(key)
            resolved = MASK
        outputs[key] = resolved
    resources = [
        CapturedResource(typ, name, parent.split("::")[-1] if parent else None,
                         _urn(monitor, parent, typ, name), _mask(inputs),
                         _mask(inputs, reveal=True), options)
        for typ, name, parent, inputs, options in monitor.captured
    ]
    return SynthResult(resources, outputs, secret_outputs, collector.messages, mocks.invokes,
                       mocks.invoke_providers)


def _ensure_event_loop() -> None:
    """Give this thread an open event loop: Pulumi's runtime calls ``get_event_loop()``, which
    fails once an earlier user (an async test, ``asyncio.run``) has closed or unset the loop."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())


def _urn(monitor: pulumi_mocks.MockMonitor, parent: str, typ: str, name: str) -> str:
    return monitor.make_urn(parent, typ, name)


K8S_PREFIX = "kubernetes:"


def k8s_manifests(result: SynthResult) -> list[dict[str, Any]]:
    """The Kubernetes objects of a synth run (secret values masked), as API objects."""
    out: list[dict[str, Any]] = []
    for resource in result.resources:
        if not resource.type.startswith(K8S_PREFIX) or resource.type.startswith(
            "pulumi:providers"
        ):
            continue
        body = {k: v for k, v in resource.inputs.items() if not k.startswith("__")}
        if "apiVersion" not in body or "kind" not in body:
            continue
        for key_field in ("stringData", "data"):
            if body["kind"] == "Secret" and body.get(key_field) == MASK:
                # The whole map is one secret Output: show its keys, never its values.
                keys = resource.raw_inputs.get(key_field) or {}
                body[key_field] = {key: MASK for key in keys}
        out.append(body)
    return out


def required_values(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Placeholder values for the envs and secrets a YAML leaves null (``HF_TOKEN: null``):
    what a user passes with ``--env`` / ``--secret``. Used by the corpus bench and tests."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}, {}
    if not isinstance(doc, Mapping):
        return {}, {}

    def nulls(section: str) -> dict[str, str]:
        values = doc.get(section)
        if not isinstance(values, Mapping):
            return {}
        return {str(k): f"synth-{str(k).lower()}" for k, v in values.items() if v is None}

    return nulls("envs"), nulls("secrets")
