"""The project bundle the controller runs its own `up` from (components/bundle.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from components.bundle import LinkOutsideError, project_bundle
from components.clouds import packing

ROOT = Path(__file__).resolve().parent.parent


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "components" / "__pycache__").mkdir(parents=True)
    (project / "components" / "a.py").write_text("A = 1\n")
    (project / "components" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    # An editable install's in-place build of a C helper: this machine's, not the controller's.
    (project / "components" / "_native.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (project / "Pulumi.yaml").write_text("name: skyform\nstackConfigDir: stacks\n")
    (project / "__main__.py").write_text("print('program')\n")
    (project / "stacks").mkdir()
    (project / "stacks" / "Pulumi.dev.yaml").write_text("config: {}\n")
    (project / "stacks" / "Pulumi.other.yaml").write_text("config: {}\n")
    (project / "svc").mkdir()
    (project / "svc" / "service.yaml").write_text("run: echo hi\n")
    (project / "svc" / "site").mkdir()
    (project / "svc" / "site" / "index.html").write_text("<h1>hi</h1>\n")
    (project / ".venv").mkdir()
    (project / ".venv" / "big").write_text("x")
    return project


def test_bundle_holds_what_the_controllers_up_reads_and_nothing_else(tmp_path: Path) -> None:
    project = _project(tmp_path)
    outside = tmp_path / "elsewhere.pem"
    outside.write_text("pem")
    bundle = project_bundle(project, stack_file=project / "stacks" / "Pulumi.dev.yaml",
                            local_paths=[project / "svc" / "service.yaml",
                                         project / "svc" / "site", outside])
    assert bundle.names == ("Pulumi.yaml", "__main__.py", "components/a.py",
                            "stacks/Pulumi.dev.yaml", "svc/service.yaml", "svc/site/index.html")
    assert bundle.outside == (str(outside),)
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        assert tar.getnames() == list(bundle.names)
        member = tar.getmember("svc/site/index.html")
        assert member.mtime == 0 and member.uid == 0
        extracted = tar.extractfile(member)
        assert extracted is not None and extracted.read() == b"<h1>hi</h1>\n"


def test_same_files_same_digest_and_a_change_changes_it(tmp_path: Path) -> None:
    project = _project(tmp_path)
    first = project_bundle(project, stack_file=None)
    (project / "components" / "a.py").touch()  # a new mtime alone changes nothing
    assert project_bundle(project, stack_file=None).digest == first.digest
    (project / "components" / "a.py").write_text("A = 2\n")
    assert project_bundle(project, stack_file=None).digest != first.digest


def test_this_projects_bundle_fits_a_kubernetes_secret() -> None:
    from components.clouds.kubernetes import MAX_BUNDLE_BYTES

    bundle = project_bundle(ROOT, stack_file=None)
    assert "components/bundle.py" in bundle.names and "lb_agent/dataplane/proxy.py" in bundle.names
    assert "pyproject.toml" in bundle.names and "README.md" in bundle.names
    # The controller builds the data plane's C helpers from their source, never takes ours.
    assert "setup.py" in bundle.names
    assert "lb_agent/dataplane/policies/_prefix_native.c" in bundle.names
    assert "lb_agent/dataplane/_http1_native.c" in bundle.names
    assert not any(name.endswith(".so") for name in bundle.names)
    assert len(bundle.data) < MAX_BUNDLE_BYTES


def test_the_agents_own_keys_stay_out_of_the_stack_file(tmp_path: Path) -> None:
    """The agent writes skyform:fleet before each of its `up`s; in the bundle it would change
    the digest (and restart the controller) on every scale event."""
    from lb_agent.contract import AGENT_OWNED_KEYS

    project = _project(tmp_path)
    stack = project / "stacks" / "Pulumi.dev.yaml"
    fleet = '{"version":1,"generations":[{"generation":1,"digest":"d","spot":0,"ondemand":%d}]}'
    stack.write_text(f"config:\n  skyform:fleet: '{fleet % 2}'\n  skyform:cloud: kubernetes\n")
    first = project_bundle(project, stack_file=stack, agent_keys=AGENT_OWNED_KEYS)
    stack.write_text(f"config:\n  skyform:fleet: '{fleet % 3}'\n  skyform:cloud: kubernetes\n")
    second = project_bundle(project, stack_file=stack, agent_keys=AGENT_OWNED_KEYS)
    assert first.digest == second.digest
    with tarfile.open(fileobj=io.BytesIO(second.data), mode="r:gz") as tar:
        member = tar.extractfile("stacks/Pulumi.dev.yaml")
        assert member is not None
        assert member.read() == b"config:\n  skyform:cloud: kubernetes\n"


def test_the_controller_packs_a_services_files_to_the_bytes_the_user_did(tmp_path: Path) -> None:
    """One writer and one skip list: the workdir the controller unpacks from the bundle packs
    (components/clouds/packing.py) and digests (files_digest) exactly as on the user's
    machine, so the controller's own ``up`` rolls no replica."""
    from components.clouds.common import LocalUpload, files_digest
    from components.clouds.packing import pack

    project = _project(tmp_path)
    site = project / "svc" / "site"
    (site / "run.sh").write_text("#!/bin/sh\n")
    (site / "run.sh").chmod(0o775)
    (site / "lib").mkdir()
    (site / "lib" / "ext.so").write_bytes(b"\x7fELF")  # the service's own: kept
    (site / "__pycache__").mkdir()
    (site / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (site / "node_modules").mkdir()
    (site / "node_modules" / "x.js").write_text("x")
    bundle = project_bundle(project, stack_file=None, local_paths=[site])
    assert "svc/site/lib/ext.so" in bundle.names
    controller = tmp_path / "controller"
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        tar.extractall(controller, filter="data")
    unpacked = controller / "svc" / "site"
    assert pack(unpacked, "k").data == pack(site, "k").data
    with tarfile.open(fileobj=io.BytesIO(pack(site, "k").data), mode="r:gz") as tar:
        names = tar.getnames()
    assert "lib/ext.so" in names and not any("__pycache__" in n or "node_modules" in n
                                             for n in names)

    def digest(path: Path) -> str:
        return files_digest((LocalUpload(path=path, dest="/app", key="0-app.tgz",
                                         is_dir=True),))

    assert digest(unpacked) == digest(site)


def test_a_symlink_out_of_the_project_is_refused_naming_the_link(tmp_path: Path) -> None:
    project = _project(tmp_path)
    secret = tmp_path / "home-ssh-key"
    secret.write_text("PRIVATE KEY")
    link = project / "svc" / "site" / "key.txt"
    link.symlink_to(secret)
    with pytest.raises(LinkOutsideError) as info:
        project_bundle(project, stack_file=project / "stacks" / "Pulumi.dev.yaml",
                       local_paths=[project / "svc" / "site"])
    assert str(link) in str(info.value) and str(secret) in str(info.value)
    # A link that stays inside the project is shipped with its content.
    link.unlink()
    link.symlink_to(project / "svc" / "service.yaml")
    bundle = project_bundle(project, stack_file=None, local_paths=[project / "svc" / "site"])
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        member = tar.extractfile("svc/site/key.txt")
        assert member is not None and member.read() == b"run: echo hi\n"


def test_a_symlink_out_of_a_packed_workdir_is_refused(tmp_path: Path) -> None:
    workdir = tmp_path / "workdir"
    (workdir / "sub").mkdir(parents=True)
    (workdir / "a.txt").write_text("a")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "token").write_text("secret")
    (workdir / "sub" / "t").symlink_to(tmp_path / "outside" / "token")
    with pytest.raises(LinkOutsideError) as info:
        packing.pack(workdir, "workdir")
    assert str(workdir / "sub" / "t") in str(info.value)
    (workdir / "sub" / "t").unlink()
    (workdir / "sub" / "d").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(LinkOutsideError):
        packing.pack(workdir, "workdir")
    (workdir / "sub" / "d").unlink()
    (workdir / "sub" / "t").symlink_to(workdir / "a.txt")  # inside: kept
    assert packing.pack(workdir, "workdir").data
