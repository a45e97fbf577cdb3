"""The VM controller takes its project from the bundle the controller config names:
``controller.sh sync`` (its timer) downloads the object with the VM's identity, checks
its sha256, unpacks and installs it into a release of its own and restarts the agent, only
when something changed; a wrong digest is refused and the installed project kept.

The rendered script runs under bash against stand-ins on PATH: ``aws``/``gcloud`` (the secret
store and the bucket are local files), ``python3 -m venv`` (a venv whose ``pip`` logs what it
installs), ``systemctl`` (logs restarts) and ``curl`` (fails: nothing leaves this machine, no
request reaches 169.254.169.254).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.startup import ControllerBoot, render_controller_script
from lb_agent.contract import AgentConfigFile

FAKE_AWS = """#!/usr/bin/env bash
case "$1 $2" in
  "secretsmanager get-secret-value") cat "$FAKE_ROOT/config.json" ;;
  "s3 cp")
    shift 2
    while [ "${1#--}" != "$1" ]; do [ "$1" = --region ] && shift; shift; done
    echo "$1" >>"$FAKE_ROOT/downloads.log"
    cp "$FAKE_ROOT/bucket/${1#s3://*/}" "$2" ;;
  *) echo "fake aws: unexpected $*" >&2; exit 2 ;;
esac
"""
FAKE_GCLOUD = """#!/usr/bin/env bash
case "$1 $2" in
  "secrets versions") cat "$FAKE_ROOT/config.json" ;;
  "storage cp")
    shift 2
    while [ "${1#--}" != "$1" ]; do shift; done
    echo "$1" >>"$FAKE_ROOT/downloads.log"
    cp "$FAKE_ROOT/bucket/${1#gs://*/}" "$2" ;;
  *) echo "fake gcloud: unexpected $*" >&2; exit 2 ;;
esac
"""
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/usr/bin/env bash\\necho "$*" >>"$FAKE_ROOT/pip.log"\\nexit "${PIP_FAIL:-0}"\\n' \\
    >"$3/bin/pip"
  chmod +x "$3/bin/pip"
  exit 0
fi
exec REAL_PYTHON "$@"
"""
FAKE_SYSTEMCTL = """#!/usr/bin/env bash
echo "$*" >>"$FAKE_ROOT/systemctl.log"
"""
FAKE_CURL = """#!/usr/bin/env bash
echo "fake curl: no network in this test ($*)" >&2
exit 7
"""


def _tgz(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return buffer.getvalue()


@dataclass
class Controller:
    """A rendered controller.sh and the stand-ins it runs against."""

    root: Path
    cloud: str

    @property
    def skyform_dir(self) -> Path:
        return self.root / "opt"

    def publish(self, files: dict[str, str], *, claimed: str | None = None) -> str:
        """Put a bundle in the bucket and name it in the controller config (with the
        ``claimed`` sha256 instead of the real one, when given). Returns the real digest."""
        data = _tgz(files)
        digest = hashlib.sha256(data).hexdigest()
        key = f"controller/bundle-{claimed or digest}.tgz"
        (self.root / "bucket" / "controller").mkdir(parents=True, exist_ok=True)
        (self.root / "bucket" / key).write_bytes(data)
        scheme = "s3" if self.cloud == "aws" else "gs"
        config = {"agent": {"state_file": "/var/lib/skyform/agent.db"},
                  "bundle": {"url": f"{scheme}://files-bucket/{key}",
                             "sha256": claimed or digest}}
        (self.root / "config.json").write_text(json.dumps(config, sort_keys=True))
        return digest

    def run(self, command: str, **env: str) -> subprocess.CompletedProcess[str]:
        full = {"PATH": f"{self.root / 'bin'}:{os.environ['PATH']}", "HOME": str(self.root),
                "FAKE_ROOT": str(self.root), "SKYFORM_DIR": str(self.skyform_dir),
                "SKYFORM_ETC_DIR": str(self.root / "etc"),
                "SKYFORM_CREDENTIALS_DIR": str(self.root / "creds"),
                "SKYFORM_FETCH_ATTEMPTS": "2", "SKYFORM_FETCH_BASE_DELAY": "0", **env}
        return subprocess.run(["bash", str(self.root / "controller.sh"), command], env=full,
                              capture_output=True, text=True, timeout=60, check=False)

    def log(self, name: str) -> list[str]:
        path = self.root / f"{name}.log"
        return path.read_text().splitlines() if path.exists() else []

    def installed(self) -> str:
        return os.readlink(self.skyform_dir / "project")


def _controller(tmp_path: Path, cloud: str) -> Controller:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_python = shutil.which("python3") or sys.executable
    fakes = {"aws" if cloud == "aws" else "gcloud": FAKE_AWS if cloud == "aws" else FAKE_GCLOUD,
             "python3": FAKE_PYTHON.replace("REAL_PYTHON", real_python),
             "systemctl": FAKE_SYSTEMCTL, "curl": FAKE_CURL}
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    script = render_controller_script(ControllerBoot(
        cloud=cloud, service_name="svc", agent_config=AgentConfigFile(), token_id="token-id",
        pulumi_version="3.0.0", region="us-east-1", config_secret_id="config-id",
    ))
    (tmp_path / "controller.sh").write_text(script)
    return Controller(tmp_path, cloud)


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_sync_installs_the_bundle_the_config_names(tmp_path: Path, cloud: str) -> None:
    ctl = _controller(tmp_path, cloud)
    digest = ctl.publish({"Pulumi.yaml": "name: skyform\n", "svc/service.yaml": "run: x\n"})
    done = ctl.run("sync")
    assert done.returncode == 0, done.stderr
    assert ctl.installed() == f"releases/{digest}"
    release = ctl.skyform_dir / "releases" / digest
    assert (ctl.skyform_dir / "project" / "svc" / "service.yaml").read_text() == "run: x\n"
    assert ctl.log("pip") == [f"install --quiet {release}"]
    assert ctl.log("systemctl") == ["restart skyform-agent.service"]
    assert len(ctl.log("downloads")) == 1
    assert json.loads((tmp_path / "etc" / "agent.json").read_text()) == {
        "state_file": "/var/lib/skyform/agent.db"}
    assert not list((ctl.skyform_dir / "downloads").iterdir())  # the archive is not kept


def test_sync_does_nothing_when_nothing_changed(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, "aws")
    ctl.publish({"Pulumi.yaml": "name: skyform\n"})
    assert ctl.run("sync").returncode == 0
    again = ctl.run("sync")
    assert again.returncode == 0, again.stderr
    assert len(ctl.log("downloads")) == 1
    assert len(ctl.log("pip")) == 1
    assert ctl.log("systemctl") == ["restart skyform-agent.service"]  # the first sync's only
    assert ctl.run("bundle").stdout == "unchanged\n"


def test_a_new_bundle_replaces_the_release_and_restarts_the_agent(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, "aws")
    first = ctl.publish({"index.html": "v1"})
    assert ctl.run("sync").returncode == 0
    second = ctl.publish({"index.html": "v2"})
    done = ctl.run("sync")
    assert done.returncode == 0, done.stderr
    assert f"installed the project bundle {second}" in done.stderr
    assert ctl.installed() == f"releases/{second}"
    assert (ctl.skyform_dir / "project" / "index.html").read_text() == "v2"
    # The release the agent ran until its restart stays; older ones go.
    assert sorted(p.name for p in (ctl.skyform_dir / "releases").iterdir()) == sorted(
        [first, second])
    assert ctl.log("systemctl") == ["restart skyform-agent.service"] * 2
    third = ctl.publish({"index.html": "v3"})
    assert ctl.run("sync").returncode == 0
    assert sorted(p.name for p in (ctl.skyform_dir / "releases").iterdir()) == sorted(
        [second, third])


def test_a_wrong_digest_is_refused_and_the_installed_project_kept(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, "aws")
    good = ctl.publish({"index.html": "v1"})
    assert ctl.run("sync").returncode == 0
    claimed = "0" * 64
    actual = ctl.publish({"index.html": "tampered"}, claimed=claimed)
    done = ctl.run("sync")
    assert done.returncode == 1
    assert (f"refused the project bundle s3://files-bucket/controller/bundle-{claimed}.tgz: "
            f"its sha256 is {actual}, the controller config names {claimed}; keeping the "
            "installed project") in done.stderr
    assert ctl.installed() == f"releases/{good}"
    assert (ctl.skyform_dir / "project" / "index.html").read_text() == "v1"
    assert ctl.log("systemctl") == ["restart skyform-agent.service"]  # not restarted again
    assert len(ctl.log("pip")) == 1  # nothing installed from the refused file
    # The config is forgotten, so the next sync takes it again (and refuses it again).
    assert not (tmp_path / "etc" / "controller.json").exists()
    assert ctl.run("sync").returncode == 1
    assert len(ctl.log("downloads")) == 3


def test_a_failed_install_keeps_the_installed_project(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, "aws")
    good = ctl.publish({"index.html": "v1"})
    assert ctl.run("sync").returncode == 0
    bad = ctl.publish({"index.html": "v2"})
    done = ctl.run("sync", PIP_FAIL="1")
    assert done.returncode == 1
    assert f"installing the project bundle {bad} failed; keeping the installed" in done.stderr
    assert ctl.installed() == f"releases/{good}"
    assert not (ctl.skyform_dir / "releases" / bad).exists()
    assert ctl.log("systemctl") == ["restart skyform-agent.service"]
    # Once pip works again, the next sync installs it and restarts the agent.
    assert ctl.run("sync").returncode == 0
    assert ctl.installed() == f"releases/{bad}"
    assert ctl.log("systemctl") == ["restart skyform-agent.service"] * 2


def test_the_controller_config_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    # The controller config carries the Pulumi passphrase and access token: 0600 files in a
    # 0700 directory, even under a permissive umask and over a directory made 0755 before.
    ctl = _controller(tmp_path, "aws")
    (tmp_path / "etc").mkdir(mode=0o755)
    (tmp_path / "etc").chmod(0o755)
    ctl.publish({"Pulumi.yaml": "name: skyform\n"})
    config = json.loads((tmp_path / "config.json").read_text())
    config["pulumi_credentials"] = {"PULUMI_CONFIG_PASSPHRASE": "hunter2-passphrase"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = subprocess.run(["bash", "-c", 'umask 022 && exec bash "$0" sync',
                           str(tmp_path / "controller.sh")],
                          env={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
                               "HOME": str(tmp_path), "FAKE_ROOT": str(tmp_path),
                               "SKYFORM_DIR": str(ctl.skyform_dir),
                               "SKYFORM_ETC_DIR": str(tmp_path / "etc"),
                               "SKYFORM_CREDENTIALS_DIR": str(tmp_path / "creds"),
                               "SKYFORM_FETCH_ATTEMPTS": "1", "SKYFORM_FETCH_BASE_DELAY": "0"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "hunter2-passphrase" in (tmp_path / "etc" / "controller.json").read_text()
    assert (tmp_path / "etc").stat().st_mode & 0o777 == 0o700
    for name in ("controller.json", "agent.json", "bundle"):
        mode = (tmp_path / "etc" / name).stat().st_mode & 0o777
        assert mode == 0o600, f"{name}: {oct(mode)}"
    assert (tmp_path / "creds" / "PULUMI_CONFIG_PASSPHRASE").stat().st_mode & 0o077 == 0


def _kubernetes_controller(tmp_path: Path, bundle: bytes, expected: str) -> Controller:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_python = shutil.which("python3") or sys.executable
    (bin_dir / "python3").write_text(FAKE_PYTHON.replace("REAL_PYTHON", real_python))
    (bin_dir / "python3").chmod(0o755)
    (tmp_path / "mounted").mkdir()
    (tmp_path / "mounted" / "bundle.tgz").write_bytes(bundle)
    script = render_controller_script(ControllerBoot(
        cloud="kubernetes", service_name="svc", agent_config=AgentConfigFile(),
        token_id="SKYFORM_AGENT_TOKEN",
        pulumi_version="3.0.0", bundle_file=str(tmp_path / "mounted" / "bundle.tgz"),
        bundle_sha256=expected, build_native=False,
    ))
    (tmp_path / "controller.sh").write_text(script)
    return Controller(tmp_path, "kubernetes")


def test_kubernetes_controller_refuses_a_mounted_bundle_with_another_digest(
        tmp_path: Path) -> None:
    good = _tgz({"Pulumi.yaml": "name: skyform\n"})
    digest = hashlib.sha256(good).hexdigest()
    ctl = _kubernetes_controller(tmp_path, _tgz({"Pulumi.yaml": "name: evil\n"}), digest)
    refused = ctl.run("bundle")
    assert refused.returncode == 1
    assert "refused the project bundle" in refused.stderr and digest in refused.stderr
    assert not (ctl.skyform_dir / "project").exists() and ctl.log("pip") == []
    (tmp_path / "mounted" / "bundle.tgz").write_bytes(good)  # the kubelet caught up
    done = ctl.run("bundle")
    assert done.returncode == 0 and done.stdout == "installed\n", done.stderr
    assert ctl.installed() == f"releases/{digest}"
    assert ctl.run("bundle").stdout == "unchanged\n"
