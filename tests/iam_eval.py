"""A small evaluator of AWS IAM identity policies, for the boundary tests.

No PyPI package evaluates a policy against a request with its condition context offline
(policy_sentry writes policies, parliament and cloudsplaining lint them, policyuniverse
expands actions), so this implements the documented evaluation rules the controller's grant
relies on, and nothing more:

* an explicit ``Deny`` wins; else any ``Allow`` that matches; else the implicit deny;
* ``Action``: case-insensitive, ``*`` and ``?`` wildcards; ``Resource``: case-sensitive, the
  same wildcards (a string or a list);
* ``Condition``: every operator block must hold, every key in a block must hold, a key holds
  when any of the policy's values matches the request's value; a key the request does not
  have fails (no ``...IfExists``). Operators: ``StringEquals``, ``StringNotEquals``,
  ``StringLike``, ``ArnEquals``, ``ArnLike`` (ARNs compared part by part). Condition keys are
  case-insensitive, their values case-sensitive.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def _glob(pattern: str, value: str, *, case: bool = True) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case else re.IGNORECASE) is not None


def _arn_like(pattern: str, value: str) -> bool:
    p, v = pattern.split(":", 5), value.split(":", 5)
    return len(p) == len(v) == 6 and all(_glob(a, b) for a, b in zip(p, v, strict=True))


_OPERATORS = {
    "StringEquals": lambda pat, val: pat == val,
    "StringLike": lambda pat, val: _glob(pat, val),
    "ArnEquals": lambda pat, val: pat == val,
    "ArnLike": _arn_like,
}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


@dataclass(frozen=True)
class Request:
    """One API call as IAM authorizes it: the action, one resource ARN and the context."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.action} on {self.resource} {dict(self.context) or ''}"


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, str]) -> bool:
    ctx = {k.lower(): v for k, v in context.items()}
    for operator, block in condition.items():
        negate = operator == "StringNotEquals"
        test = _OPERATORS["StringEquals" if negate else operator]
        for key, wanted in block.items():
            given = ctx.get(key.lower())
            if given is None:
                return False
            matched = any(test(str(w), str(given)) for w in _list(wanted))
            if matched == negate:
                return False
    return True


def _matches(statement: Mapping[str, Any], request: Request) -> bool:
    actions = _list(statement.get("Action", []))
    if not any(_glob(a, request.action, case=False) for a in actions):
        return False
    if not any(_glob(r, request.resource) for r in _list(statement.get("Resource", []))):
        return False
    return _condition_holds(statement.get("Condition", {}), request.context)


def allowed(policy: Mapping[str, Any], request: Request) -> bool:
    """Whether ``policy`` alone allows ``request``."""
    statements: Sequence[Mapping[str, Any]] = _list(policy["Statement"])
    if any(s["Effect"] == "Deny" and _matches(s, request) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and _matches(s, request) for s in statements)


