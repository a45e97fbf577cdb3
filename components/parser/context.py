"""The parse context: the source name, the YAML locations, and the problems found so far.

Every check reports through ``Context.error(path, message)``; the context turns the path
into ``field.path`` text and a line/column, so a problem always names where it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.errors import SpecError, SpecIssue
from components.parser.yamlload import Locations, Path, dotted

__all__ = ["Context", "dotted"]


@dataclass
class Context:
    source: str
    locations: Locations = field(default_factory=Locations)
    issues: list[SpecIssue] = field(default_factory=list)

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        """Record a problem at ``path`` (at its key when ``key``: unknown or duplicate keys)."""
        line, col = self.locations.of(path, key=key)
        issue = SpecIssue(self.source, line, col, dotted(path), message)
        if issue not in self.issues:
            self.issues.append(issue)

    def mark(self) -> int:
        return len(self.issues)

    def failed_since(self, mark: int) -> bool:
        return len(self.issues) > mark

    def raise_if_any(self) -> None:
        if self.issues:
            raise SpecError(list(self.issues))
