"""``resources.accelerators`` (alias ``gpus``) in every SkyPilot form.

``A100``, ``A100:4``, ``{A100: 4}``, ``{A100: 4, H100: 8}``, a flow set ``{L4, A10g:2}``,
a list ``[H100:1, A100:1, L4]`` (preference order), and memory selectors (``80GB+``,
``24GB:2``, ``nvidia:80GB+:2``) expanded through the catalog. The result is a list of
``(name, count)`` pairs and whether their order is a preference. Names keep the user's
spelling, as SkyPilot keeps them; the catalog resolves them case-insensitively.
"""

from __future__ import annotations

import re
from typing import Any

from components import catalog
from components.parser.context import Context
from components.parser.fields import text_keys
from components.parser.schema import stricter
from components.parser.yamlload import Path

Accel = tuple[str, int | float]


def _count(value: float) -> int | float:
    """An integral count becomes an int (SkyPilot does the same: ``T4:0.5`` stays 0.5)."""
    return int(value) if float(value).is_integer() else float(value)


def _bad_str(ctx: Context, path: Path, text: str) -> None:
    ctx.error(path, 'The "accelerators" field as a str should be <name> or <name>:<cnt>. '
              f"Found: {text!r}")


#: A memory size where Resources._parse_accelerators_from_str looks for one.
_MEMORY = re.compile(r"^[0-9]+[GgMmTt][Bb]\+?$")
#: What skyform adds to SkyPilot's messages about a three-part accelerator.
_THREE_PARTS = " (three parts are <manufacturer>:<memory>:<count>, such as nvidia:80GB:2)"


def _memory_form(parts: list[str]) -> bool:
    """Whether Resources._parse_accelerators_from_str reads ``parts`` as a memory selector
    (three parts, or a memory size in one of one or two parts) rather than a name."""
    return len(parts) == 3 or (len(parts) <= 2 and any(_MEMORY.match(p) for p in parts))


def _selector_count_ok(ctx: Context, path: Path, parts: list[str]) -> bool:
    """SkyPilot's int() of a memory selector's count (three parts, or ``<memory>:<count>``),
    its first check of such a form; False after a problem."""
    if len(parts) == 3:
        shape = _THREE_PARTS
    elif len(parts) == 2 and _MEMORY.match(parts[0]):
        shape = " (a memory selector's count, such as 24GB:2)"
    else:
        return True
    try:
        int(parts[-1])
    except ValueError:
        ctx.error(path, f"invalid literal for int() with base 10: {parts[-1]!r}{shape}")
        return False
    return True


def _from_str(ctx: Context, path: Path, text: str) -> list[Accel] | None:
    parts = text.split(":")
    if not _selector_count_ok(ctx, path, parts):
        return None
    expanded = catalog.expand_memory_selector(text)
    if expanded is not None:
        if any(count <= 0 for _, count in expanded):
            ctx.error(path, f"Accelerator count must be a positive number. Found: {text!r}"
                      f"{stricter('stricter-accelerator-count')}")
            return None
        if not expanded:
            ctx.error(path, f"No accelerator in the catalog matches the memory selector {text!r}.")
            return None
        return [(name, _count(count)) for name, count in expanded]
    name = parts[0].strip()
    if len(parts) == 3:
        # Resources._parse_accelerators_from_str reads three parts as a memory selector:
        # int() of the count (above), then an assertion on the memory (its message, typo
        # included).
        ctx.error(path, "If specifying a GPU manufacturer, you must alsospecify the memory "
                  f"size{_THREE_PARTS}")
        return None
    if len(parts) > 2:
        _bad_str(ctx, path, text)
        return None
    if not name:
        ctx.error(path, f"The accelerator name is empty. Found: {text!r}"
                  f"{stricter('stricter-accelerator-count')}")
        return None
    if len(parts) == 1:
        return [(name, 1)]
    try:
        count = float(parts[1])
    except ValueError:
        _bad_str(ctx, path, text)
        return None
    if not count > 0 or count != count or count == float("inf"):
        ctx.error(path, f"Accelerator count must be a positive number. Found: {text!r}"
                  f"{stricter('stricter-accelerator-count')}")
        return None
    return [(name, _count(count))]


def group_base_names(ctx: Context, path: Path, raw: Any) -> list[str] | None:
    """The section's own accelerators where ``any_of``/``ordered`` follows, read as
    Resources.from_yaml_config reads them before the candidates: a memory selector or a
    three-part form is expanded (its problems reported), anything else is one name as
    written (``A100:2``), checked only by the candidates that inherit it. The distinct names
    decide SkyPilot's "Cannot specify multiple accelerators" rules; ``None`` after a
    problem."""
    if isinstance(raw, dict):
        texts = [f"{k}:{v}" if v is not None else k for k, v in text_keys(raw).items()]
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        texts = list(raw)
    elif isinstance(raw, str):
        texts = [raw]
    else:  # a shape the schema refuses: the full parse reports it
        got = parse_accelerators(ctx, path, raw)
        return None if got is None else [name for name, _ in got[0]]
    names: list[str] = []
    for text in texts:
        if not _memory_form(text.split(":")):
            names.append(text)
            continue
        got_one = _from_str(ctx, path, text)
        if got_one is None:
            return None
        names += [name for name, _ in got_one]
    return list(dict.fromkeys(names))


def parse_accelerators(ctx: Context, path: Path, raw: Any) -> tuple[list[Accel], bool] | None:
    """``(accelerators, ordered)``; ``([], False)`` when none; ``None`` after a problem."""
    if raw is None:
        return [], False
    if isinstance(raw, str):
        got = _from_str(ctx, path, raw)
        return None if got is None else (got, False)
    if isinstance(raw, list):
        out: list[Accel] = []
        ok = True
        seen: set[str] = set()
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                ctx.error((*path, i), "Each item of an accelerators list should be a string "
                          f"<name> or <name>:<cnt>. Found: {item!r}")
                ok = False
                continue
            if item in seen:
                continue  # SkyPilot keeps one of each entry, in order
            seen.add(item)
            got = _from_str(ctx, (*path, i), item)
            if got is None:
                ok = False
            else:
                out.extend(got)
        if not ok:
            return None
        if not out:
            ctx.error(path, "The accelerators list is empty: give at least one accelerator.")
            return None
        return out, True
    if isinstance(raw, dict):
        out = []
        ok = True
        for key, value in text_keys(raw).items():  # SkyPilot takes ``{1: 1}`` as ``"1"``
            kpath = (*path, key)
            if value is None:
                got = _from_str(ctx, kpath, key)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                if not value > 0 or value != value or value == float("inf"):
                    ctx.error(kpath, f"Accelerator count must be a positive number. "
                              f"Found: {key}: {value!r}"
                              f"{stricter('stricter-accelerator-count')}")
                    ok = False
                    continue
                got = [(key, _count(value))]
            else:
                ctx.error(kpath, f"Accelerator count must be a number. Found: {key}: {value!r}")
                ok = False
                continue
            if got is None:
                ok = False
            else:
                out.extend(got)
        if not ok:
            return None
        if not out:
            ctx.error(path, "The accelerators mapping is empty: give at least one accelerator.")
            return None
        return out, False
    ctx.error(path, "The \"accelerators\" field should be a string, a list or a mapping "
              f"(e.g. A100:4, [H100, A100], {{L4, A10g:2}}). Found: {raw!r}")
    return None
