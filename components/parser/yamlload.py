"""YAML loading that remembers where every value came from.

PyYAML composes the document into nodes (each with a start mark); this module turns the
nodes into plain Python values and records the line and column of every key and value by
its path (``("service", "replica_policy", "min_replicas")``, list items by index). It also
turns everything PyYAML would silently accept or crash on into located problems: duplicate
keys (an error, not a silent merge), unhashable keys, tabs, undecodable bytes, control
characters, and more than one document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

Path = tuple[str | int, ...]


@dataclass
class Locations:
    """Line/column (1-based) of each value and each mapping key, by path."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def of(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """The position of ``path`` (its key when ``key``), else of its nearest ancestor."""
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while probe:
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), (1, 1))


class YAMLProblem(Exception):
    """The text is not a single well-formed YAML document; carries a 1-based position."""

    def __init__(self, line: int, column: int, message: str, field: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message
        #: ``field.path`` of the offending node when known (duplicate keys).
        self.field = field


def dotted(path: Path, root: str = "") -> str:
    """The one way a field path is written: ``("resources", "any_of", 1, "cpus")`` ->
    ``resources.any_of[1].cpus``; with ``root="$"`` the JSON path SkyPilot's schema messages
    print (``$.resources.any_of[1].cpus``)."""
    out = root
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _line_col(text: str, index: int) -> tuple[int, int]:
    before = text[:index]
    line = before.count("\n") + 1
    return line, index - (before.rfind("\n") + 1) + 1


class _Builder:
    def __init__(self) -> None:
        self.constructor = SafeConstructor()
        self.locations = Locations()
        self._active: set[int] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.locations.values[path] = _pos(node)
        if id(node) in self._active:
            raise YAMLProblem(*_pos(node), "recursive YAML alias: a node contains itself")
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.constructor.construct_object(node, deep=True)
            except (ConstructorError, ValueError, OverflowError) as exc:
                raise YAMLProblem(*_pos(node), f"invalid scalar value: {exc}") from None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
        finally:
            self._active.discard(id(node))
        raise YAMLProblem(*_pos(node), f"unsupported YAML node {node.tag}")  # pragma: no cover

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[Any, Any]:
        try:
            self.constructor.flatten_mapping(node)
        except ConstructorError as exc:
            mark = exc.problem_mark or node.start_mark
            raise YAMLProblem(mark.line + 1, mark.column + 1, f"invalid merge key: {exc.problem}")\
                from None
        out: dict[Any, Any] = {}
        first: dict[Any, tuple[int, int]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YAMLProblem(
                    *_pos(key_node), "a mapping key must be a plain value, not a list or mapping"
                )
            key = self.build(key_node, (*path, "<key>"))
            try:
                hash(key)
            except TypeError:
                raise YAMLProblem(*_pos(key_node), "unhashable mapping key") from None
            if key in first:
                line, _ = first[key]
                raise YAMLProblem(
                    *_pos(key_node),
                    f"duplicate key {key!r} (first defined on line {line}); "
                    "each key may appear only once",
                    field=dotted((*path, str(key))),
                )
            first[key] = _pos(key_node)
            child = (*path, key if isinstance(key, str) else str(key))
            self.locations.keys[child] = _pos(key_node)
            out[key] = self.build(value_node, child)
        self.locations.values.pop((*path, "<key>"), None)
        return out


def load(text: str) -> tuple[Any, Locations]:
    """Parse one YAML document; returns its value (``None`` when empty) and the locations."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        problem = "; ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        if "\t" in problem or "'\\t'" in problem:
            problem += " (YAML does not allow tabs for indentation; use spaces)"
        raise YAMLProblem(line, col, f"invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        raise YAMLProblem(
            line, col, f"invalid YAML: unacceptable character #x{exc.character:04x}: "
            "binary or control characters are not allowed"
        ) from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above is marked
        raise YAMLProblem(1, 1, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise YAMLProblem(1, 1, "invalid YAML: nesting is too deep") from None
    builder = _Builder()
    if node is None:
        return None, builder.locations
    try:
        value = builder.build(node, ())
    except RecursionError:
        raise YAMLProblem(*_pos(node), "invalid YAML: nesting is too deep") from None
    return value, builder.locations


def decode(raw: bytes) -> str:
    """UTF-8 (with or without BOM) text of ``raw``; raises ``YAMLProblem`` at the bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        good = raw[: exc.start].decode("utf-8-sig", errors="replace")
        line, col = _line_col(good, len(good))
        raise YAMLProblem(
            line, col, f"the file is not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
            "a service YAML must be UTF-8"
        ) from None
