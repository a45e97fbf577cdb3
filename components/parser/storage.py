"""A ``file_mounts`` entry that is a mapping (a bucket mount): SkyPilot's storage schema
(``schemas.get_storage_schema``), checked with its messages ("Invalid storage YAML:", paths
relative to the entry), so a YAML valid here is valid for SkyServe. What a valid mount becomes
on each cloud (a copy at boot) is ``components.service.file_transfers``.
"""

from __future__ import annotations

from typing import Any

from components.parser import fields
from components.parser.context import Context
from components.parser.schema import Section
from components.parser.yamlload import Path

STORAGE_KEYS = ("name", "source", "store", "persistent", "mode", "config", "_is_sky_managed",
                "_bucket_sub_path", "_force_delete")
#: SkyPilot's ``StoreType`` and ``StorageMode`` values (matched case-insensitively).
STORES = ("S3", "GCS", "AZURE", "R2", "IBM", "OCI", "NEBIUS", "COREWEAVE", "VOLUME")
MODES = ("MOUNT", "COPY", "MOUNT_CACHED")
CONFIG_STRINGS = ("disk_tier", "storage_type", "attach_mode")


def check_storage(ctx: Context, path: Path, spec: dict[str, Any]) -> None:
    """Report every schema problem of the storage mapping ``spec`` written at ``path``."""
    sec = Section(ctx, "Invalid storage YAML: ", path)
    sec.unknown_keys(spec, path, STORAGE_KEYS)
    for key in ("name", "_bucket_sub_path"):
        if key in spec:
            sec.typed(spec[key], (*path, key), "string")
    for key in ("persistent", "_is_sky_managed", "_force_delete"):
        if key in spec:
            sec.typed(spec[key], (*path, key), "boolean")
    source = spec.get("source")
    if "source" in spec and not (isinstance(source, str) or (
            isinstance(source, list) and source and all(isinstance(s, str) for s in source))):
        sec.any_of_fail(source, (*path, "source"), "a path or URL, or a list of them")
    for key, options in (("store", STORES), ("mode", MODES)):
        if key in spec:
            sec.one_of(spec[key], (*path, key), options)
    config: Any = spec.get("config")
    cpath = (*path, "config")
    if "config" in spec and sec.typed(config, cpath, "object"):
        if "disk_size" in config and not fields.is_disk_size(config["disk_size"]):
            sec.any_of_fail(config["disk_size"], (*cpath, "disk_size"),
                            "an integer (GB) or a size such as '100GB'")
        for key in CONFIG_STRINGS:
            if key in config:
                sec.typed(config[key], (*cpath, key), "string")

