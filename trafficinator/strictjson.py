"""Strict JSON for what people and other programs send us, Django-free so that the
sending engine reads Matomo's answers the way the connection check does.

``trafficinator.validation`` re-exports ``loads_strict`` and ``StrictJSONError`` for the
apps' forms and views."""

from __future__ import annotations

import json
import math
from typing import Any

# Matomo's answers we read are a few kB (a check's getSitesIdWithAdminAccess of a big
# instance or a visit log maybe 1 MB): a larger one is not parsed.
MAX_ANSWER_BYTES = 4_000_000
# Counts Matomo answers (visits, actions, goal ids, tracked hits): whole, not negative, below this.
MAX_COUNT = 10**15

# JSON a person writes is a few levels deep; 100,000 nested "[" must be a form error, not
# a RecursionError (json.loads recurses once per level).
MAX_JSON_DEPTH = 32


class StrictJSONError(ValueError):
    """The JSON text cannot be used; the message is for the user as it is."""


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in JSON text (strings skipped), without parsing."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _refuse_constant(name: str):
    raise StrictJSONError(f"{name} is not a number in JSON; use a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"{text} is too large a number")
    return value


def loads_strict(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` for input from people and other programs: refuses NaN, Infinity,
    numbers that overflow to infinity, integers of thousands of digits and nesting deeper
    than ``max_depth``, each with a StrictJSONError (a ValueError) naming the problem."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise StrictJSONError("not UTF-8 text") from None
    if json_depth(text) > max_depth:
        raise StrictJSONError(f"nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except StrictJSONError:
        raise
    except (ValueError, RecursionError) as exc:  # e.g. an integer beyond Python's digit limit
        raise StrictJSONError(str(exc)[:200]) from None


def loads_answer(data: bytes) -> Any:
    """A JSON answer of Matomo's: ``loads_strict``, and at most MAX_ANSWER_BYTES."""
    if len(data) > MAX_ANSWER_BYTES:
        raise StrictJSONError(f"an answer larger than {MAX_ANSWER_BYTES // 1_000_000} MB")
    return loads_strict(data)


def count_or_none(value: Any) -> int | None:
    """A count or id in a Matomo answer (an int, or digits as text) as an int from 0 to
    MAX_COUNT, else None: "²", "1e9", 1.5, true, -1 and 10**20 are not counts."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        number = int(value)
    elif isinstance(value, float) and value.is_integer():
        number = int(value)  # finite: loads_strict refuses NaN and Infinity
    else:
        return None
    return number if 0 <= number < MAX_COUNT else None
