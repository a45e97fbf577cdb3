"""The project bundle: what the controller needs to run the same ``pulumi up`` as the user.

The agent on the controller scales by running ``up`` on this stack, so it needs the same
program, the same stack config file and the same local files the user's ``up`` read: the
project file and program, skyform's own source (installed from the bundle, so no git clone of
a possibly private or unpushed repository), the stack's config file (secrets in it stay
ciphertext), the service YAML, its local workdir and file mounts and the TLS files. The user
commits none of them anywhere.

The bundle is a deterministic tar.gz (sorted names, zero times and owners), so an unchanged
project gives the same bytes and digest and no diff. This module also owns that writer
(``deterministic_tgz``) and what it leaves out (``SKIP_PARTS``), which the Kubernetes
replicas' archives (components/clouds/packing.py) share. Local paths outside the project
directory are not shipped; ``outside`` lists them and the program warns (the controller's
``up`` would then refuse the service with a missing-path error). A symbolic link inside a
shipped tree that resolves outside the project is refused (``LinkOutsideError`` names the
link and its target): following it would carry an outside file's content into the bundle.

On AWS and GCP the program uploads the bundle from a file it writes at
``.skyform/bundles/<stack>/<sha256>.tgz`` in the project (``bundle_file``): content-addressed,
so the upload's asset is the same path with the same hash on every machine and every run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

import yaml

from components.errors import PlacementError

#: What of the project the controller needs, besides the stack's own files.
PROJECT_FILES = ("Pulumi.yaml", "__main__.py", "pyproject.toml", "setup.py", "README.md")
PROJECT_TREES = ("components", "lb_agent")
#: Where ``bundle_file`` writes the bundle, relative to the project (never bundled itself).
BUNDLE_CACHE_DIR = ".skyform/bundles"
#: Never archived, in the bundle or a replica's files (nor counted in the files' digest):
#: version control, caches, virtualenvs and skyform's own bundle cache, at any depth. One
#: list, so the controller, which runs ``up`` from the bundle, packs a service's files to the
#: same bytes as the user's machine did.
SKIP_PARTS = frozenset({"__pycache__", ".git", ".venv", ".mypy_cache", ".ruff_cache",
                        ".pytest_cache", "node_modules", ".skyform"})
#: Compiled Python, rebuilt wherever it runs.
SKIP_SUFFIXES = (".pyc", ".pyo")
#: Compiled extensions in skyform's own trees: an editable install builds lb_agent's C helper
#: in place, for this machine only; the controller builds its own from the source (setup.py).
#: A service's own files keep theirs.
_BUILT_IN_PLACE = (".so", ".pyd")


@dataclass(frozen=True)
class Bundle:
    """The archive's bytes, their sha256, the files in it and the paths left out."""

    data: bytes
    digest: str
    names: tuple[str, ...]
    outside: tuple[str, ...]


def skipped(rel: PurePath) -> bool:
    """True when a path (relative to the folder being archived) is never archived."""
    return bool(SKIP_PARTS.intersection(rel.parts)) or rel.name.endswith(SKIP_SUFFIXES)


class LinkOutsideError(PlacementError):
    """A symbolic link in a tree to be shipped resolves outside the tree's boundary."""


def check_link(path: Path, boundary: Path, what: str) -> None:
    """Refuse ``path`` when it is a symbolic link that resolves outside ``boundary``."""
    if not path.is_symlink():
        return
    target = path.resolve()
    if not target.is_relative_to(boundary.resolve()):
        raise LinkOutsideError(
            f"{path}: a symbolic link to {target}, outside {what} {boundary}; skyform does "
            "not ship files from outside it: copy the file in, or remove the link")


def tree(path: Path, *, dirs: bool = False, boundary: Path | None = None,
         what: str = "the folder") -> Iterator[tuple[str, Path]]:
    """The files under ``path`` (and its folders too with ``dirs``), sorted, as (name
    relative to ``path``, path), without the skipped ones; a file is itself. A symbolic
    link that resolves outside ``boundary`` (``path`` itself by default; ``what`` names it)
    is refused (``LinkOutsideError``); one inside is followed (its content is archived)."""
    if path.is_file():
        yield path.name, path
        return
    for child in sorted(path.rglob("*")):
        rel = child.relative_to(path)
        if skipped(rel):
            continue
        check_link(child, boundary or path, what)
        if child.is_file() or (dirs and child.is_dir()):
            yield str(rel), child


class ArchiveTooLarge(Exception):
    """``deterministic_tgz`` passed its ``limit``; ``size`` is the compressed size so far."""

    def __init__(self, size: int) -> None:
        super().__init__(f"archive over its limit at {size} bytes")
        self.size = size


def deterministic_tgz(members: Iterable[tuple[str, Path | bytes]], *,
                      limit: int | None = None) -> bytes:
    """The one tar.gz writer: ``members`` (name, then a file, a folder or the bytes) in the
    order given, with zero times and owners and only two modes (0755 for folders and
    executables, 0644 otherwise), so the same files give the same bytes on every machine.
    Raises ``ArchiveTooLarge`` as soon as the compressed archive passes ``limit`` bytes."""
    buffer = io.BytesIO()
    # mtime=0 in the gzip header and in every member: the same files, the same bytes.
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, source in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if isinstance(source, Path) and source.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                data = source if isinstance(source, bytes) else source.read_bytes()
                info.size = len(data)
                executable = not isinstance(source, bytes) and source.stat().st_mode & 0o111
                info.mode = 0o755 if executable else 0o644
                tar.addfile(info, io.BytesIO(data))
            if limit is not None and buffer.tell() > limit:
                raise ArchiveTooLarge(buffer.tell())
    return buffer.getvalue()


def stack_file_for_bundle(path: Path, agent_keys: Iterable[str]) -> bytes:
    """The stack config file without the keys the agent owns (it writes them before each of
    its `up`s): otherwise every scale event would change the bundle and restart the
    controller that runs it."""
    data = yaml.safe_load(path.read_text()) or {}
    config = data.get("config")
    if isinstance(config, dict):
        for key in agent_keys:
            config.pop(key, None)
    return yaml.safe_dump(data, sort_keys=True).encode()


def project_bundle(project_dir: Path, *, stack_file: Path | None,
                   local_paths: Iterable[Path] = (),
                   agent_keys: Iterable[str] = ()) -> Bundle:
    """The bundle of ``project_dir`` with ``stack_file`` (less ``agent_keys``) and the
    service's ``local_paths`` (the YAML, workdir, file mounts, TLS files), each kept at its
    path in the project."""
    root = project_dir.resolve()
    wanted: dict[str, Path | bytes] = {}
    outside: list[str] = []
    candidates: list[Path] = [root / name for name in PROJECT_FILES]
    candidates += [root / tree for tree in PROJECT_TREES]
    if stack_file is not None and stack_file.resolve().is_file():
        resolved = stack_file.resolve()
        if resolved.is_relative_to(root):
            wanted[str(resolved.relative_to(root))] = stack_file_for_bundle(resolved, agent_keys)
        else:
            outside.append(str(stack_file))
    candidates += list(local_paths)
    for candidate in candidates:
        path = candidate.resolve()
        if not path.exists():
            continue
        if not path.is_relative_to(root):
            outside.append(str(candidate))
            continue
        own = path.parent == root and path.name in PROJECT_TREES
        for _, file in tree(path, boundary=root, what="the project directory"):
            if not (own and file.name.endswith(_BUILT_IN_PLACE)):
                wanted.setdefault(str(file.relative_to(root)), file)
    data = deterministic_tgz((name, wanted[name]) for name in sorted(wanted))
    return Bundle(data, hashlib.sha256(data).hexdigest(), tuple(sorted(wanted)),
                  tuple(outside))


def bundle_file(project_dir: Path, stack: str, bundle: Bundle) -> Path:
    """``bundle`` as ``<project>/.skyform/bundles/<stack>/<digest>.tgz``, written once and
    readable by its owner only (the service YAML in it may hold secret values); the stack's
    older bundles are removed (another stack's never). Returns the path."""
    folder = project_dir / BUNDLE_CACHE_DIR / stack
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{bundle.digest}.tgz"
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != bundle.digest:
        partial = folder / f".{bundle.digest}.{os.getpid()}.part"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(bundle.data)
        os.replace(partial, path)
    path.chmod(0o600)
    for old in folder.glob("*.tgz"):
        if old != path:
            old.unlink(missing_ok=True)
    return path
