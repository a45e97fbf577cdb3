"""Schema checks with SkyPilot's wording: unknown keys, types, required keys, enums, minimums.

SkyPilot validates each section with JSON schema and prefixes the message with the section
(``Invalid service YAML: ``). These helpers say the same things, in the same words, but
report every problem (not just the first) and where it is.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from components.parser.context import Context
from components.parser.yamlload import Locations, Path, dotted

CHECK_SUFFIX = ". Check problematic field(s): "
#: How every skyform-only rule's message ends: ``stricter(anchor)`` names its
#: docs/differences.md entry; ``STRICTER_NOTE`` tells such a message from a schema failure.
STRICTER_NOTE = " (skyform is stricter than SkyServe here: see docs/differences.md"


def stricter(anchor: str) -> str:
    """The note ending a skyform-only rule's message, pointing at ``#anchor``."""
    return f"{STRICTER_NOTE}#{anchor})"

JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def is_type(value: Any, kind: str) -> bool:
    return bool(JSON_TYPES[kind](value))


def suggest(key: str, known: Iterable[str]) -> str | None:
    """The closest known key (difflib), or ``None`` when nothing is close."""
    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


class Section:
    """Checks for one section (task, resources, service) and its message prefix."""

    def __init__(self, ctx: Context, prefix: str, root: Path) -> None:
        self.ctx = ctx
        self.prefix = prefix
        self.root = root
        #: Problems other than unknown keys (types, required, enums, minimums) so far.
        self.shape_errors = 0

    def where(self, path: Path) -> str:
        """The JSON path SkyPilot prints (``$.replica_policy.min_replicas``), section-relative."""
        return dotted(path[len(self.root):], "$")

    def fail(self, path: Path, message: str, *, key: bool = False) -> None:
        self.ctx.error(path, self.prefix + message, key=key)

    def schema_fail(self, path: Path, message: str) -> None:
        self.shape_errors += 1
        self.fail(path, f"{message}{CHECK_SUFFIX}{self.where(path)}")

    def any_of(self, value: Any, path: Path, check: Callable[[Section], object]) -> bool:
        """A JSON-schema ``anyOf`` field: jsonschema (hence SkyPilot) only says that ``value``
        matches no branch, at ``path``. ``check`` runs the branch checks on a scratch section;
        each problem it finds is reported with that message, at the problem's own location and
        named after it. True when ``check`` found nothing."""
        recorder = _Recorder(self.ctx.source, self.ctx.locations)
        check(Section(recorder, "", self.root))
        for at, detail, key in recorder.found:
            if STRICTER_NOTE in detail:  # skyform's own rule: not a SkyServe schema failure
                self.shape_errors += 1
                self.fail(at, detail, key=key)
            else:
                self.any_of_fail(value, path, detail.split(CHECK_SUFFIX)[0], at=at, key=key)
        return not recorder.found

    def any_of_fail(self, value: Any, path: Path, detail: str, *, at: Path | None = None,
                    key: bool = False) -> None:
        self.shape_errors += 1
        self.fail(at if at is not None else path,
                  f"{value!r} is not valid under any of the given schemas{CHECK_SUFFIX}"
                  f"{self.where(path)} ({detail})", key=key)

    def unknown_keys(self, mapping: Mapping[Any, Any], path: Path, known: Iterable[str]) -> bool:
        """Report keys not in ``known``; True when every key is known.

        SkyPilot's ``validate_schema`` says it once per mapping, every unknown key's sentence
        joined without a separator; that whole text goes with the first unknown key, and each
        other key gets its own sentence at its own location."""
        known = list(known)
        valid = ", ".join(sorted(k for k in known if not k.startswith("_")))
        found: list[tuple[Path, str, str]] = []  # (path, SkyPilot's sentence, skyform's hint)
        for key in mapping:
            if isinstance(key, str) and key in known:
                continue
            child = (*path, str(key))
            if not isinstance(key, str):
                found.append((child, f"Found unsupported field {key!r}", ": keys must be strings."))
                continue
            best = suggest(key, known)
            if best is not None:
                found.append((child, f"Instead of {key!r}, did you mean {best!r}?", ""))
            else:
                found.append((child, f"Found unsupported field {key!r}.",
                              f" Valid fields: {valid}."))
        for i, (child, sentence, hint) in enumerate(found):
            if i == 0 and len(found) > 1:
                joined = "".join(s for _, s, _ in found)
                hints = "".join(dict.fromkeys(h for _, _, h in found if h))
                self.fail(child, joined + hints, key=True)
            else:
                self.fail(child, sentence + hint, key=True)
        return not found

    def typed(self, value: Any, path: Path, *kinds: str) -> bool:
        """Check ``value`` is one of the JSON ``kinds``; report SkyPilot's type error if not."""
        if any(is_type(value, k) for k in kinds):
            if isinstance(value, float) and not math.isfinite(value):
                # jsonschema's 'number' takes inf and nan; SkyServe does too.
                self.shape_errors += 1
                self.fail(path, f"{value!r} is not a finite number{stricter('stricter-finite')}")
                return False
            return True
        self.schema_fail(path, type_message(value, *kinds))
        return False

    def required(self, mapping: Mapping[str, Any], path: Path, *keys: str) -> bool:
        ok = True
        for key in keys:
            if key not in mapping:
                ok = False
                self.shape_errors += 1
                self.fail(
                    path,
                    f"{key!r} is a required property. Check problematic field(s): "
                    f"{self.where(path)}",
                    key=True,
                )
        return ok

    def minimum(self, value: Any, path: Path, low: float) -> bool:
        if value < low:
            self.schema_fail(path, f"{value!r} is less than the minimum of {low!r}")
            return False
        return True

    def one_of(
        self, value: Any, path: Path, options: Iterable[str], *, case_insensitive: bool = True
    ) -> str | None:
        """The option ``value`` names (lower-cased when case-insensitive, as SkyPilot's
        ``case_insensitive_enum`` compares both sides), else report."""
        opts = list(options)
        if not self.typed(value, path, "string"):
            return None
        probe = value.lower() if case_insensitive else value
        if probe in ([o.lower() for o in opts] if case_insensitive else opts):
            return str(probe)
        self.schema_fail(path, f"{value!r} is not one of {opts!r}")
        return None


def type_message(value: Any, *kinds: str) -> str:
    """jsonschema's type error as SkyPilot prints it: ``validate_schema`` rewrites
    ``type 'object'`` as ``type 'dict'``."""
    names = ", ".join(repr(k) for k in kinds)
    return f"{value!r} is not of type {names}".replace("type 'object'", "type 'dict'")


def as_int(value: Any) -> int:
    """An integral JSON number as ``int`` (``2.0`` -> ``2``)."""
    return int(value)


class _Recorder(Context):
    """A context that keeps each problem's path (``Section.any_of`` re-reports them)."""

    def __init__(self, source: str, locations: Locations) -> None:
        super().__init__(source, locations)
        self.found: list[tuple[Path, str, bool]] = []

    def error(self, path: Path, message: str, *, key: bool = False) -> None:
        self.found.append((path, message, key))
