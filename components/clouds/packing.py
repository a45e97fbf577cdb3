"""Packing a local workdir or file mount for a Kubernetes replica: a deterministic tar.gz and
its sha256 digest.

This module owns the bytes that go into the service's files ConfigMap: the same tree always
packs to the same bytes (components.bundle.deterministic_tgz: sorted names, zero times and
owners, two modes), so the digest changes exactly
when the files do; the digest is a pod-template annotation, so a change rolls the replicas.
An object holds at most 1 MiB, so the archives of one service must fit ``SECRET_LIMIT``
together (headroom is left for the object's metadata); larger trees are refused with a hint.
A symbolic link in a folder that resolves outside it is refused, naming the link
(``components.bundle.check_link``): the replica gets the folder, nothing from outside it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from components.bundle import ArchiveTooLarge, deterministic_tgz, tree
from components.errors import PlacementError

#: Kubernetes stores an object of at most 1 MiB; keep 64 KiB for metadata and the digests.
SECRET_LIMIT = 1024 * 1024 - 64 * 1024


@dataclass(frozen=True)
class Packed:
    key: str
    data: bytes
    digest: str


def pack(path: Path, key: str, what: str = "") -> Packed:
    """``path`` (a folder: its contents, folders included; a file: one member) as a
    deterministic tar.gz (components.bundle's writer and skip list). Stops
    (``PlacementError``) as soon as the archive outgrows ``SECRET_LIMIT``, so a large tree is
    refused quickly instead of compressed in full."""
    members = list(tree(path, dirs=True)) if path.exists() else []
    try:
        data = deterministic_tgz(members, limit=SECRET_LIMIT)
    except ArchiveTooLarge as exc:
        raise PlacementError(_too_large(what or str(path), f"{path} (so far)",
                                        exc.size)) from None
    return Packed(key, data, hashlib.sha256(data).hexdigest())


def _too_large(what: str, sizes: str, total: int) -> str:
    return (
        f"{what}: the workdir and file mounts pack to {total / 1024:.0f} KiB ({sizes}), "
        f"more than a Kubernetes object holds ({SECRET_LIMIT // 1024} KiB): put the large "
        "files in a bucket and mount it (file_mounts from s3:// or gs://), or bake them "
        "into a container image (image_id: docker:<image>)"
    )


def check_size(packed: list[Packed], what: str) -> None:
    """Refuse archives that do not fit one Secret, naming each one's size."""
    total = sum(len(p.data) for p in packed)
    if total > SECRET_LIMIT:
        sizes = ", ".join(f"{p.key} {len(p.data) / 1024:.0f} KiB" for p in packed)
        raise PlacementError(_too_large(what, sizes, total))


def combined_digest(packed: list[Packed]) -> str:
    """One digest of every archive (the pod-template annotation)."""
    h = hashlib.sha256()
    for p in packed:
        h.update(f"{p.key}={p.digest}\n".encode())
    return h.hexdigest()
