"""The whole service YAML: the task schema, envs, substitution, then resources, service and
the serving checks, in SkyServe's order, collecting every independent problem.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from components.errors import SpecError, SpecIssue
from components.parser import envs as envmod
from components.parser.context import Context
from components.parser.resources import parse_resources
from components.parser.schema import Section, as_int
from components.parser.service import parse_service
from components.parser.serving import check_serving, service_port
from components.parser.storage import check_storage
from components.parser.yamlload import YAMLProblem, load
from components.spec import ServiceTask

TASK_KEYS = (
    "name", "workdir", "num_nodes", "resources", "file_mounts", "service", "pool", "setup",
    "run", "envs", "secrets", "volumes", "volume_mounts", "config", "event_callback",
    "inputs", "outputs", "file_mounts_mapping", "_metadata",
)
#: The service name skyform deploys under (SkyServe's service-name rule; Pulumi and cloud
#: resource names are derived from it).
SERVICE_NAME = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")


def _problem(source: str, exc: YAMLProblem) -> SpecError:
    return SpecError([SpecIssue(source, exc.line, exc.column, exc.field, exc.message)])


def _top_level(ctx: Context, sec: Section, doc: dict[Any, Any]) -> None:
    sec.unknown_keys(doc, (), TASK_KEYS)
    for key in ("name", "setup", "run", "event_callback"):
        if doc.get(key) is not None:
            sec.typed(doc[key], (key,), "string")
    for key in ("volumes", "_metadata", "file_mounts_mapping", "config"):
        if doc.get(key) is not None:
            sec.typed(doc[key], (key,), "object")
    if isinstance(doc.get("config"), dict):
        _config_override(sec, doc["config"])
    if doc.get("volume_mounts") is not None:
        sec.typed(doc["volume_mounts"], ("volume_mounts",), "array")
    for key in ("inputs", "outputs"):  # experimental: {location: size in GB}, one entry
        value = doc.get(key)
        if value is None or not sec.typed(value, (key,), "object"):
            continue
        if len(value) > 1:
            sec.schema_fail((key,), f"{value!r} has too many properties")
        for name, size in value.items():
            sec.typed(size, (key, str(name)), "number")
    workdir = doc.get("workdir")
    if isinstance(workdir, dict):  # a git repository: {url, ref}

        def check_repo(s: Section) -> None:
            s.unknown_keys(workdir, ("workdir",), ("url", "ref"))
            s.required(workdir, ("workdir",), "url")
            for key in ("url", "ref"):
                if key in workdir:
                    s.typed(workdir[key], ("workdir", key), "string")

        sec.any_of(workdir, ("workdir",), check_repo)
    elif workdir is not None and not isinstance(workdir, str):
        sec.any_of_fail(workdir, ("workdir",), "a path, or a mapping with 'url' and 'ref'")
    # The task schema types these sections before they are parsed on their own.
    for key in ("file_mounts", "resources", "service"):
        if doc.get(key) is not None:
            sec.typed(doc[key], (key,), "object")
    num_nodes = doc.get("num_nodes")
    if num_nodes is not None and sec.typed(num_nodes, ("num_nodes",), "integer") \
            and (not isinstance(num_nodes, int) or num_nodes < 1):
        ctx.error(("num_nodes",), f"num_nodes should be a positive int. Got: {num_nodes}")
    mounts = doc.get("file_mounts")
    if isinstance(mounts, dict):
        for dst, src in mounts.items():
            if isinstance(src, dict):
                check_storage(ctx, ("file_mounts", str(dst)), src)
            elif not isinstance(src, str):
                ctx.error(("file_mounts", str(dst)), f"Unable to parse file_mount {dst}:{src}")
    if doc.get("service") is not None and doc.get("pool") is not None:
        ctx.error(("pool",), "Cannot set both service and pool in the same task.", key=True)
    name = doc.get("name")
    if isinstance(name, str) and not SERVICE_NAME.fullmatch(name):
        ctx.error(("name",), f"Invalid service name {name!r}: it must start with a letter and "
                  "contain only letters, digits, '-', '_' and '.', ending with a letter or "
                  f"digit (regex {SERVICE_NAME.pattern}).")


#: The task's ``config`` (overrides of SkyPilot's config): the keys a task may override
#: (``OVERRIDEABLE_CONFIG_KEYS_IN_TASK``) and their schema types. Mappings inside
#: (``pod_config``, ``kueue``, ...) are left to SkyPilot's own config schema.
TASK_CONFIG: dict[str, str | dict[str, str]] = {
    "docker": {"run_options": "strings"},  # a string, or a list of them
    "nvidia_gpus": {"disable_ecc": "boolean"},
    "active_workspace": "string",
    "gcp": {"managed_instance_group": "object", "enable_gvnic": "boolean",
            "enable_gpu_direct": "boolean", "placement_policy": "string"},
    "kubernetes": {"pod_config": "object", "provision_timeout": "integer",
                   "custom_metadata": "object", "kueue": "object", "dws": "object"},
    "ssh": {"pod_config": "object", "provision_timeout": "integer", "custom_metadata": "object"},
    "vast": {"datacenter_only": "boolean", "create_instance_kwargs": "object"},
}


def _config_override(sec: Section, config: dict[Any, Any]) -> None:
    """The task schema's ``config``: only the overridable keys, each of its type."""
    sec.unknown_keys(config, ("config",), TASK_CONFIG)
    for key, kinds in TASK_CONFIG.items():
        value = config.get(key)
        path = ("config", key)
        if value is None:
            continue
        if isinstance(kinds, str):
            sec.typed(value, path, kinds)
        elif sec.typed(value, path, "object"):
            sec.unknown_keys(value, path, kinds)
            for inner, kind in kinds.items():
                if inner not in value:
                    continue
                got = value[inner]
                if kind != "strings":
                    sec.typed(got, (*path, inner), kind)
                elif not (isinstance(got, str) or (
                        isinstance(got, list) and all(isinstance(g, str) for g in got))):
                    sec.any_of_fail(got, (*path, inner), "a string or a list of strings")


def parse_document(
    text: str,
    source: str,
    *,
    env_overrides: Mapping[str, str] | None = None,
    secret_overrides: Mapping[str, str] | None = None,
) -> ServiceTask:
    try:
        doc, locations = load(text)
    except YAMLProblem as exc:
        raise _problem(source, exc) from None
    ctx = Context(source, locations)
    if doc is None:
        raise SpecError([SpecIssue(source, 1, 1, "", "the file is empty: a service YAML is a "
                                   "mapping with at least a `service:` section")])
    if not isinstance(doc, dict):
        kind = "a list" if isinstance(doc, list) else f"a {type(doc).__name__} value"
        ctx.error((), f"the top level of a service YAML must be a mapping (key: value), "
                  f"found {kind}")
        ctx.raise_if_any()
    sec = Section(ctx, "Invalid task YAML: ", ())
    _top_level(ctx, sec, doc)
    env_values = envmod.read_vars(sec, doc.get("envs"), ("envs",), env_overrides, secret=False)
    secret_values = envmod.read_vars(sec, doc.get("secrets"), ("secrets",), secret_overrides,
                                     secret=True)
    envmod.check_docker_login(sec, env_values, secret_values)
    variables = {**env_values, **secret_values}
    subst = {
        key: envmod.substitute(doc[key], variables)
        for key in ("service", "file_mounts", "workdir", "volumes")
        if key in doc
    }
    located = parse_resources(ctx, doc.get("resources"))
    spec = None
    if "service" not in doc or doc["service"] is None:
        ctx.error(("service",), "Service section not found in the YAML file. To fix, add a valid "
                  "`service` field.")
    else:
        spec = parse_service(ctx, subst["service"])
    port = None
    if spec is not None and located is not None:
        cands, _ = located
        port = service_port(ctx, spec, cands)
        check_serving(ctx, spec, cands)
    ctx.raise_if_any()
    assert spec is not None and located is not None and port is not None
    cands, ordered = located
    num_nodes = doc.get("num_nodes")
    return ServiceTask(
        source=source,
        service=spec,
        candidates=tuple(c.candidate for c in cands),
        ordered=ordered,
        service_port=port,
        name=doc.get("name"),
        num_nodes=1 if num_nodes is None else as_int(num_nodes),
        envs=env_values,
        secrets=secret_values,
        setup=doc.get("setup"),
        run=doc.get("run"),
        workdir=subst.get("workdir"),
        file_mounts=subst.get("file_mounts"),
    )
