"""Random mutations of service YAMLs never raise anything but skyform's own errors.

The seeds are the project's own (``examples/``, ``tests/fixtures/specs/``,
``tests/fixtures/seeds/``), plus the SkyServe corpus when it is present beside the checkout
(``external.CORPUS``, reference material kept outside this repository).

Mutations: delete a key, change a value's type, swap two values, duplicate a key (or a line),
insert junk bytes, replace characters with tabs. The result must be either a valid
``ServiceTask`` (whose JSON form serialises and whose placement either works or raises
``PlacementError``) or a ``SpecError`` whose every issue is located (line, column >= 1).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from external import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components import catalog
from components.errors import PlacementError, SpecError
from components.parser import SpecFileError, load_service
from components.spec import TARGET_CLOUDS, ServiceTask

ROOT = Path(__file__).resolve().parents[1]


def _parses_as_yaml(path: Path) -> bool:
    """Structural mutations re-load the seed, so a seed must be YAML (valid for skyform or not)."""
    try:
        yaml.safe_load(path.read_bytes())
    except yaml.YAMLError:
        return False
    return True


OWN_SEEDS = sorted(
    p for d in (ROOT / "examples", ROOT / "tests" / "fixtures" / "specs",
                ROOT / "tests" / "fixtures" / "seeds")
    for p in d.glob("*.y*ml") if _parses_as_yaml(p)
)
CORPUS_FILES = sorted(
    p for d in ("skypilot", "edge") if (CORPUS / d).is_dir() for p in (CORPUS / d).iterdir()
    if p.suffix in (".yaml", ".yml")
)
FILES = OWN_SEEDS + CORPUS_FILES

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["A100:abc", "80GB+", "$PORT", "8080-8081", "-1", "{", "k8s/x", "*"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=6,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.extend(_paths(value, (*prefix, i)))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _delete(doc: Any, path: tuple[Any, ...]) -> None:
    del _get(doc, path[:-1])[path[-1]]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    source = draw(st.sampled_from(FILES))
    raw = source.read_bytes()
    kind = draw(st.sampled_from(
        ["delete", "retype", "swap", "dup_key", "junk", "tab", "dup_line", "truncate"]
    ))
    if kind in ("delete", "retype", "swap", "dup_key"):
        doc = yaml.safe_load(raw)
        paths = _paths(doc)
        if not paths:
            return raw
        path = draw(st.sampled_from(paths))
        if kind == "delete":
            _delete(doc, path)
        elif kind == "retype":
            _set(doc, path, draw(values))
        elif kind == "swap":
            other = draw(st.sampled_from(paths))
            try:
                a, b = _get(doc, path), _get(doc, other)
                _set(doc, path, b)
                _set(doc, other, a)
            except (KeyError, IndexError, TypeError):
                pass
        text = yaml.safe_dump(doc, sort_keys=False)
        if kind == "dup_key":
            lines = text.splitlines()
            index = draw(st.integers(0, len(lines) - 1))
            if ":" in lines[index]:
                lines.insert(index + 1, lines[index].split(":")[0] + ": 1")
            text = "\n".join(lines) + "\n"
        return text.encode()
    if kind == "junk":
        pos = draw(st.integers(0, len(raw)))
        junk = draw(st.binary(min_size=1, max_size=6))
        return raw[:pos] + junk + raw[pos:]
    if kind == "tab":
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        return raw[:pos] + b"\t" + raw[pos + 1:]
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    lines = raw.splitlines(keepends=True)
    index = draw(st.integers(0, max(0, len(lines) - 1)))
    return b"".join(lines[: index + 1] + lines[index:])


def _check(task: ServiceTask) -> None:
    json.dumps(task.to_json(), default=str)
    for cloud in TARGET_CLOUDS:
        try:
            catalog.place(task, cloud)
        except PlacementError as exc:
            assert str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(), fill=st.booleans())
def test_mutations_only_raise_spec_errors(data: bytes, fill: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "svc.yaml"
        path.write_bytes(data)
        overrides = {"HF_TOKEN": "x", "TLS_KEYFILE_ENV_VAR": "/tmp/k", "AUTH_TOKEN": "t"}
        try:
            task = load_service(path, env_overrides=overrides if fill else None,
                                secret_overrides=overrides if fill else None)
        except SpecError as exc:
            assert exc.issues
            for issue in exc.issues:
                assert issue.file == str(path)
                assert issue.line >= 1 and issue.column >= 1
                assert issue.message
        except SpecFileError:  # pragma: no cover - the file always exists here
            raise
        else:
            _check(task)


def test_fuzz_has_the_projects_own_seeds() -> None:
    names = {p.name for p in OWN_SEEDS}
    assert {"hello.yaml", "valid_full.yaml", "llm_instance_aware.yaml"} <= names
    assert len(OWN_SEEDS) >= 15


SECTION_KEYS = st.sampled_from([
    "service", "resources", "envs", "secrets", "name", "num_nodes", "run", "file_mounts",
    "workdir", "setup",
])


@settings(max_examples=150, deadline=None)
@given(doc=st.dictionaries(SECTION_KEYS, values, max_size=5),
       text=st.text(max_size=60))
def test_random_documents_and_text_only_raise_spec_errors(doc: dict[str, Any], text: str) -> None:
    from components.parser import parse_service_text

    for source in (yaml.safe_dump(doc), text):
        try:
            task = parse_service_text(source, "fuzz.yaml")
        except SpecError as exc:
            assert all(i.line >= 1 and i.column >= 1 and i.file == "fuzz.yaml"
                       for i in exc.issues)
        else:
            _check(task)
