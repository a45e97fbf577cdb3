"""Rendered start-up: cloud-init passes `cloud-init schema`, shell passes `bash -n`, and the
boot contract (envs, replica ids, registration, deregistration) is in the scripts."""

from __future__ import annotations

import base64
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from program_support import bash_syntax, cloud_init_schema

from components.startup import (
    ControllerBoot,
    Download,
    ReplicaBoot,
    aws_user_data_base64,
    render_controller_cloud_init,
    render_controller_script,
    render_replica_bootstrap,
    render_replica_cloud_init,
    render_replica_script,
    replica_id_base,
)
from lb_agent import socket_activation
from lb_agent.contract import AgentConfigFile, Listen

BOOT = ReplicaBoot(
    cloud="aws", service_name="svc", group="ondemand", index=3, replica_id_base=1001,
    spot=False, accelerator="L4", num_gpus=2, service_port=8000,
    controller_url="http://10.0.0.9:20001", credential_id="arn:aws:secretsmanager:credentials",
    secret_id="arn:aws:secretsmanager:secrets", region="us-east-1",
    envs={"MODEL": "a b 'c'", "EMPTY": ""}, setup="echo 'setup: {x}'\n  indented: yes",
    run="python3 -m http.server 8000",
    downloads=(Download("s3://bucket/0-app.zip", "/opt/skyform/workdir", "archive"),
               Download("https://github.com/x/y.git", "/src", "git", "v1"),
               Download("s3://data/prefix", "/data", "tree")),
)

VARIANTS = {
    "aws-ondemand": BOOT,
    "aws-spot-docker": dataclasses.replace(BOOT, spot=True, group="spot", replica_id_base=1,
                                           docker_image="vllm/vllm-openai:v0.6.0"),
    "gcp-spot": dataclasses.replace(BOOT, cloud="gcp", spot=True, secret_id=None,
                                    downloads=()),
    "kubernetes": dataclasses.replace(BOOT, cloud="kubernetes", index=None, downloads=(),
                                      secret_id=None, credential_id="SKYFORM_REPLICA_CREDENTIAL"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_replica_script_is_valid_bash(name: str, tmp_path: Path) -> None:
    script = render_replica_script(VARIANTS[name])
    bash_syntax(tmp_path, script)
    assert "export SKYPILOT_NUM_GPUS_PER_NODE=2" in script
    assert "SKYPILOT_SERVE_REPLICA_ID=$((INDEX +" in script
    assert "skyform_api POST /replicas" in script
    assert 'skyform_api DELETE "/replicas/${REPLICA_ID}${1:+?reason=$1}"' in script
    assert "trap skyform_stop TERM INT" in script


def test_spot_notice_only_for_spot(tmp_path: Path) -> None:
    assert "spot/instance-action" in render_replica_script(VARIANTS["aws-spot-docker"])
    assert "spot/instance-action" not in render_replica_script(VARIANTS["aws-ondemand"])
    assert "instance/preempted" in render_replica_script(VARIANTS["gcp-spot"])


@pytest.mark.parametrize("name", ["aws-ondemand", "aws-spot-docker", "gcp-spot"])
def test_replica_cloud_init_is_valid(name: str, tmp_path: Path) -> None:
    text = render_replica_cloud_init(VARIANTS[name])
    cloud_init_schema(tmp_path, text)
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    env = base64.b64decode(files["/opt/skyform/env.sh"]["content"]).decode()
    assert "export MODEL='a b '\"'\"'c'\"'\"''" in env
    setup = base64.b64decode(files["/opt/skyform/setup.sh"]["content"]).decode()
    assert "indented: yes" in setup  # user text survives YAML unharmed
    unit = files["/etc/systemd/system/skyform-replica.service"]["content"]
    assert "ExecStop=/opt/skyform/replica.sh deregister" in unit
    bash_syntax(tmp_path, files["/opt/skyform/replica.sh"]["content"], "replica.sh")


def test_bootstrap_script_is_valid_bash(tmp_path: Path) -> None:
    bash_syntax(tmp_path, render_replica_bootstrap(VARIANTS["gcp-spot"]))


def test_downloads_and_docker(tmp_path: Path) -> None:
    script = render_replica_script(VARIANTS["aws-spot-docker"])
    assert "aws s3 cp --quiet s3://bucket/0-app.zip" in script
    assert "git clone --quiet https://github.com/x/y.git /src" in script
    assert "aws s3 cp --quiet --recursive s3://data/prefix /data" in script
    assert "docker run --rm --network host --gpus all" in script


CONTROLLER = ControllerBoot(
    cloud="aws", service_name="svc",
    agent_config=AgentConfigFile(service={"name": "svc"},
                                 public=Listen(host="0.0.0.0", port=30001)),
    token_id="arn:token", pulumi_version="3.200.0", region="us-east-1",
    deployer_env={"PULUMI_BACKEND_URL": "s3://state"},
)


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_controller_cloud_init_is_valid(cloud: str, tmp_path: Path) -> None:
    boot = dataclasses.replace(CONTROLLER, cloud=cloud)
    text = render_controller_cloud_init(boot)
    cloud_init_schema(tmp_path, text)
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc["write_files"]}
    assert base64.b64decode(files["/etc/skyform/agent.json"]["content"]).startswith(b"{")
    assert files["/etc/skyform/agent.json"]["permissions"] == "0600"  # root's only
    unit = files["/etc/systemd/system/skyform-agent.service"]["content"]
    assert "Restart=always" in unit
    assert "Environment=PULUMI_BACKEND_URL=s3://state" in unit
    script = render_controller_script(boot)
    bash_syntax(tmp_path, script, "controller.sh")
    vm = render_controller_script(dataclasses.replace(boot, config_secret_id="arn:config"))
    bash_syntax(tmp_path, vm, "controller-vm.sh")
    # The project comes from its bundle, never a git clone: no git anywhere.
    for text in (script, vm):
        assert "git" not in text.replace("digest", "")


def test_replica_id_bases() -> None:
    assert replica_id_base("spot", 2) == 1
    assert replica_id_base("ondemand", 2) == 1001
    assert replica_id_base("ondemand", 1) == 1


def test_large_user_data_is_gzipped() -> None:
    small = aws_user_data_base64("#cloud-config\n")
    assert base64.b64decode(small) == b"#cloud-config\n"
    big = aws_user_data_base64("#cloud-config\n" + "x" * 20000)
    assert base64.b64decode(big)[:2] == b"\x1f\x8b"


#: What systemd-analyze says of the units here only because the VM's files are absent.
_ABSENT_ON_THIS_MACHINE = re.compile(
    r"Command /opt/skyform/\S+ is not executable: No such file or directory$")


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_controller_units_pass_systemd_analyze_and_hold_the_public_port(
        cloud: str, tmp_path: Path) -> None:
    """The VM's units, checked by systemd's own parser; systemd holds the public port in a
    socket unit named for what the agent takes (lb_agent/socket_activation.py), enabled
    before the agent, which requires it."""
    boot = dataclasses.replace(CONTROLLER, cloud=cloud, config_secret_id="arn:config")
    doc = yaml.safe_load(render_controller_cloud_init(boot))
    units = {Path(f["path"]).name: f["content"] for f in doc["write_files"]
             if f["path"].startswith("/etc/systemd/system/")}
    assert set(units) == {"skyform-agent.socket", "skyform-agent.service",
                          "skyform-config.service", "skyform-config.timer"}
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", *sorted(units)], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and not _ABSENT_ON_THIS_MACHINE.search(line)]
    assert problems == []
    sock = units["skyform-agent.socket"]
    assert "ListenStream=0.0.0.0:30001\n" in sock
    assert f"FileDescriptorName={socket_activation.PUBLIC}\n" in sock
    assert "Service=skyform-agent.service\n" in sock
    assert "Requires=skyform-agent.socket\n" in units["skyform-agent.service"]
    commands = [" ".join(c) for c in doc["runcmd"] if isinstance(c, list)]
    assert (commands.index("systemctl enable --now skyform-agent.socket")
            < commands.index("systemctl enable --now skyform-agent.service"))
    # Without a public section in the agent config there is no socket unit to hold.
    bare = dataclasses.replace(boot, agent_config=AgentConfigFile(service={"name": "svc"}))
    bare_doc = yaml.safe_load(render_controller_cloud_init(bare))
    assert not any(f["path"].endswith(".socket") for f in bare_doc["write_files"])
    assert "skyform-agent.socket" not in " ".join(str(c) for c in bare_doc["runcmd"])
