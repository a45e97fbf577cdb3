"""The one error type users see from skyform: a list of located problems in a service YAML.

Every problem names the file, the line and column of the offending YAML node, the field path
and what would be valid; ``str()`` prints one ``FILE:LINE:COL: field.path: message`` line per
problem. Nothing else a user can cause may escape as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class SpecIssue:
    """One problem, located in the YAML source (line and column are 1-based)."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        if not self.field:
            return f"{where}: {self.message}"
        return f"{where}: {self.field}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
        }


class SpecError(Exception):
    """The YAML is not a valid service; ``issues`` lists every independent problem found."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        if not issues:
            raise ValueError("SpecError needs at least one issue")
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class PlacementError(Exception):
    """The service is valid but cannot be placed on the chosen cloud (no candidate fits)."""
