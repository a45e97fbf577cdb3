"""Start-up rendering: the jinja2 templates in ``templates/`` turned into user data and
scripts.

This module owns the boot contract between a replica or controller VM/pod and the agent:
what is written where, which envs are set (``SKYPILOT_NUM_GPUS_PER_NODE``,
``SKYPILOT_SERVE_REPLICA_ID``, ``SKYPILOT_NODE_RANK``, ``SKYPILOT_NODE_IPS``,
``SKYPILOT_NUM_NODES``), and how secrets arrive (fetched at boot from the secret store,
never embedded). It renders plain strings; the cloud modules wrap them in Outputs.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import jinja2

from lb_agent.contract import PUBLIC_FD_NAME, AgentConfigFile, constants, dump, parse_group

#: The templates are package data (the top-level ``templates`` package), so a wheel carries them.
TEMPLATES_PACKAGE = "templates"

#: AWS rejects user data over 16 KiB; larger documents are sent gzip-compressed (cloud-init
#: detects gzip by its magic bytes).
AWS_USER_DATA_LIMIT = 16 * 1024

#: How often a replica re-registers with the agent.
HEARTBEAT_SECONDS = 20


def replica_id_base(group: str, groups_in_service: int) -> int:
    """SkyPilot's integer replica id is ``index + base``: 1 for the spot (or only) group and
    1001 for the on-demand group of a spot service, so ids never collide."""
    return 1001 if group == "ondemand" and groups_in_service > 1 else 1


@dataclass(frozen=True)
class Download:
    """A workdir or file mount the replica fetches at boot.

    ``kind``: ``archive`` (a zip of a local folder uploaded by the program; on Kubernetes a
    tar.gz in the files ConfigMap, checked by digest), ``file`` (one object), ``tree`` (a
    bucket prefix, copied recursively) or ``git`` (clone ``source`` at ``ref``).
    """

    source: str
    dest: str
    kind: Literal["archive", "file", "tree", "git"] = "tree"
    ref: str | None = None


def credential_kind(group: str) -> str:
    """``spot``/``ondemand`` of a replica group of any generation (the group itself when it
    is not one): the key its registration credential is stored under."""
    parsed = parse_group(group)
    return parsed[0] if parsed else group


@dataclass(frozen=True)
class ReplicaBoot:
    """Everything a replica's start-up needs (no secret values, only where to fetch them)."""

    cloud: str
    service_name: str
    group: str
    #: None on Kubernetes: the pod reads its ordinal from its hostname.
    index: int | None
    replica_id_base: int
    spot: bool
    accelerator: str | None
    num_gpus: int
    service_port: int
    #: The agent's admin URL the replica registers with first; on VMs the others of
    #: ``fallback_controller_urls`` (every controller slot, components/clouds/controllers.py)
    #: are tried in turn when it does not answer.
    controller_url: str
    #: Where the replica's registration credential is (never the agent token): the
    #: secret-store id of the replica credentials JSON (``{kind: credential}``), or on
    #: Kubernetes the env var (``CREDENTIAL_ENV``) set from its kind's key of the Secret.
    credential_id: str
    #: Secret-store id of the service secrets JSON, or None when the service has none.
    secret_id: str | None = None
    region: str | None = None
    envs: Mapping[str, str] = field(default_factory=dict)
    setup: str | None = None
    run: str | None = None
    downloads: tuple[Download, ...] = ()
    workdir: str = "/opt/skyform/workdir"
    docker_image: str | None = None
    #: Multi-node replicas: nodes per replica; this node's rank (None on Kubernetes: the pod
    #: ordinal); the nodes' DNS names (Kubernetes) or the secret-store id of their IP list
    #: (VMs, written once every node exists). Rank 0 is the head: it alone registers.
    num_nodes: int = 1
    node_rank: int | None = 0
    node_hosts: tuple[str, ...] = ()
    node_ips_secret: str | None = None
    #: Kubernetes: the ServiceAccount the pod runs as (bucket mounts use its credentials).
    service_account: str = "default"
    heartbeat_seconds: int = HEARTBEAT_SECONDS
    stop_timeout_seconds: int = int(constants.DEFAULT_DRAIN_SECONDS)
    #: The other controllers' admin URLs, in the order they are tried after
    #: ``controller_url`` (none: one controller, or a Kubernetes Service).
    fallback_controller_urls: tuple[str, ...] = ()

    @property
    def controller_urls(self) -> tuple[str, ...]:
        """Every admin URL the replica may register with, in the order it tries them."""
        return (self.controller_url, *self.fallback_controller_urls)

    @property
    def env_names(self) -> list[str]:
        return sorted(self.envs)

    @property
    def credential_kind(self) -> str:
        """The replica kind whose registration credential this replica gets (every
        generation of a kind shares it: ``lb_agent.credentials``)."""
        return credential_kind(self.group)


@dataclass(frozen=True)
class ControllerBoot:
    """Everything the controller's start-up needs."""

    cloud: str
    service_name: str
    #: The agent's config file (lb_agent.contract), written to the controller as JSON.
    agent_config: AgentConfigFile
    token_id: str
    pulumi_version: str
    region: str | None = None
    deployer_env: Mapping[str, str] = field(default_factory=dict)
    #: Secret-store id of ``{"keyfile": PEM, "certfile": PEM}`` for ``service.tls``.
    tls_secret_id: str | None = None
    #: Secret-store id of the service secrets JSON (the agent fills ``${NAME}`` in the
    #: readiness probe from it), or None when the service has none.
    service_secret_id: str | None = None
    #: VM controllers: secret-store id of the controller config (``{"agent", "bundle": {"url",
    #: "sha256"}}``, components/clouds/common.py ``controller_config``). The user data holds
    #: neither the agent config nor the project: the controller fetches the config at boot
    #: and polls it, downloads the project bundle it names from the files bucket, checks its
    #: sha256 and installs it, so user data stays the same across commits.
    config_secret_id: str | None = None
    #: Kubernetes: the project bundle (components/bundle.py) as a file the pod mounts.
    bundle_file: str | None = None
    #: Kubernetes: the sha256 the mounted bundle must have (the plan's bundle digest, in the
    #: script's ConfigMap, an object apart from the bundle's Secret); another is refused.
    bundle_sha256: str | None = None
    #: Install gcc (and Python's headers when missing) so the bundle's install builds
    #: prefix_aware's C helper. VMs install once at boot, so always; a pod installs at every
    #: start, so only when the service routes with prefix_aware.
    build_native: bool = True


#: Where the controller writes the TLS key and certificate of ``service.tls``.
TLS_KEYFILE = "/etc/skyform/tls/key.pem"
TLS_CERTFILE = "/etc/skyform/tls/cert.pem"
#: Where the controller keeps its Pulumi credentials, one 0400 file each (never in env files,
#: user data or the agent config): the agent's deployer reads them when it opens the stack.
PULUMI_CREDENTIALS_DIR = "/run/skyform/pulumi"
PULUMI_CREDENTIAL_FILES = {"PULUMI_CONFIG_PASSPHRASE": "passphrase",
                           "PULUMI_ACCESS_TOKEN": "access-token"}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _template_source(name: str) -> str:
    """A template's text, read from the package's resources (importlib.resources)."""
    return resources.files(TEMPLATES_PACKAGE).joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shq"] = lambda value: shlex.quote(str(value))
    env.filters["b64"] = _b64
    return env


def _render(template: str, **context: Any) -> str:
    return _env().get_template(template).render(**context)


def env_script(envs: Mapping[str, str]) -> str:
    """``export NAME='value'`` lines, shell-quoted."""
    lines = ["# Non-secret envs of the service, generated by skyform."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(envs.items())]
    return "\n".join(lines) + "\n"


def _user_script(kind: str, body: str | None) -> str:
    header = f"#!/usr/bin/env bash\n# The service's {kind} command, as written in the YAML.\n"
    return header + (body or "true") + "\n"


def render_replica_script(boot: ReplicaBoot) -> str:
    """The replica's ``replica.sh``: setup, run, register, heartbeat, deregister."""
    return _render("replica.sh.j2", b=boot)


def render_replica_cloud_init(boot: ReplicaBoot) -> str:
    """``#cloud-config`` user data for a replica VM (AWS, GCP)."""
    return _render(
        "replica-cloud-init.yaml.j2",
        b=boot,
        replica_script=render_replica_script(boot).rstrip("\n"),
        env_script=env_script(boot.envs),
        setup_script=_user_script("setup", boot.setup),
        run_script=_user_script("run", boot.run),
    )


def render_replica_bootstrap(boot: ReplicaBoot) -> str:
    """A shell start-up script for a replica VM whose image has no cloud-init (GCP's
    deep-learning images run ``startup-script`` metadata instead)."""
    files = [
        (f"/opt/skyform/{file}", "0755" if file.endswith(".sh") and file != "env.sh" else "0644",
         content)
        for file, content in replica_files(boot).items()
    ]
    return _render("replica-bootstrap.sh.j2", b=boot, files=files)


def replica_files(boot: ReplicaBoot) -> dict[str, str]:
    """The files a Kubernetes replica pod mounts at /opt/skyform (from a ConfigMap)."""
    return {
        "replica.sh": render_replica_script(boot),
        "env.sh": env_script(boot.envs),
        "setup.sh": _user_script("setup", boot.setup),
        "run.sh": _user_script("run", boot.run),
    }


def agent_config_json(config: AgentConfigFile) -> str:
    """The agent config file's text on the controller."""
    return json.dumps(dump(config), indent=2, sort_keys=True) + "\n"


def render_controller_script(boot: ControllerBoot) -> str:
    """The controller's ``controller.sh`` (install the project, fetch the token)."""
    return _render("controller.sh.j2", c=boot, tls_keyfile=TLS_KEYFILE,
                   tls_certfile=TLS_CERTFILE, credentials_dir=PULUMI_CREDENTIALS_DIR,
                   service_secrets_file=boot.agent_config.secrets_file)


def render_controller_cloud_init(boot: ControllerBoot) -> str:
    """``#cloud-config`` user data for the controller VM (AWS, GCP)."""
    public = boot.agent_config.public
    return _render(
        "controller-cloud-init.yaml.j2",
        c=boot,
        controller_script=render_controller_script(boot).rstrip("\n"),
        agent_config_json=agent_config_json(boot.agent_config),
        # systemd holds the public port for the agent (lb_agent/socket_activation.py).
        public_listen=(_listen_address(public.host, public.port)
                       if "public" in boot.agent_config.model_fields_set else None),
        public_fd_name=PUBLIC_FD_NAME,
    )


def _listen_address(host: str, port: int) -> str:
    """``host:port`` as systemd's ``ListenStream=`` reads it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def aws_user_data_base64(user_data: str) -> str:
    """User data for EC2 as base64: plain when it fits AWS's 16 KiB, else gzip-compressed."""
    raw = user_data.encode()
    if len(raw) > AWS_USER_DATA_LIMIT:
        raw = gzip.compress(raw, mtime=0)
    return base64.b64encode(raw).decode()
