"""The package is self-contained: a wheel built from the project, installed in a fresh
virtual environment, runs ``skyform synth`` on an example (templates and the Pulumi program
are package data and modules, not files of the checkout).

The wheel is built from a copy of the package's sources (a stale ``build/`` in the checkout
cannot leak into it) with ``pip wheel --no-deps``; its build backend comes from pip's cache or
the package index, as for any ``pip wheel``. The fresh environment gets skyform from the wheel
only, and the dependencies by a path entry to this environment's site-packages (whose own
``.pth`` files, such as the editable install of this checkout, are not processed there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("components", "lb_agent", "templates", "pyproject.toml", "setup.py", "README.md")


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with skyform installed from a wheel; returns its bin directory."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = base / "dist"
    built = _run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", dist,
                 cwd=src)
    assert built.returncode == 0, built.stderr
    wheels = list(dist.glob("skyform-*.whl"))
    assert len(wheels) == 1
    venv = base / "venv"
    made = _run(sys.executable, "-m", "venv", venv)
    assert made.returncode == 0, made.stderr
    bin_dir = venv / "bin"
    purelib = _run(bin_dir / "python", "-c",
                   "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    Path(purelib, "zz-skyform-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    put = _run(bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
               wheels[0])
    assert put.returncode == 0, put.stderr
    return bin_dir


def test_the_installed_package_is_the_wheel_not_this_checkout(installed: Path,
                                                               tmp_path: Path) -> None:
    where = _run(installed / "python", "-c",
                 "import components.startup as s, lb_agent; print(s.__file__, lb_agent.__file__)",
                 cwd=tmp_path)  # not this checkout, which ``python -c`` would put first
    assert where.returncode == 0, where.stderr
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout


@pytest.mark.parametrize("cloud", ["kubernetes", "aws"])
def test_skyform_synth_runs_from_the_wheel(installed: Path, tmp_path: Path, cloud: str) -> None:
    shutil.copy2(ROOT / "examples" / "hello.yaml", tmp_path / "hello.yaml")
    out = _run(installed / "skyform", "synth", "hello.yaml", "--cloud", cloud, "--json",
               cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    resources = json.loads(out.stdout)["resources"]
    assert [r["name"] for r in resources if r["type"] == "skyform:index:SkyService"] == [
        "service"]
    if cloud == "kubernetes":
        # The controller's script is rendered from the packaged templates.
        files = next(r for r in resources if r["name"] == "service-controller-files")
        script = files["inputs"]["data"]["controller.sh"]
        assert script.startswith("#!/usr/bin/env bash\n# skyform controller set-up for "
                                 "service hello (kubernetes)")
