"""Validators shared by every app's models and forms: the checks that keep values a
page, a command or the database cannot handle out of the database."""

from __future__ import annotations

import functools
import math
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError

# C0 controls (NUL, CR, LF, TAB, ...), DEL and C1 controls: never part of a name, URL or
# token. PostgreSQL refuses NUL in text outright (a 500 instead of a form error).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# IANA names: "Europe/Kyiv", "America/Argentina/Buenos_Aires", "Etc/GMT+5", "UTC".
_TIMEZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")


def finite_number(value: float) -> None:
    """Range validators let NaN through (every comparison with NaN is false); refuse NaN
    and infinity explicitly."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError("Enter a finite number.", code="not_finite")


def no_control_characters(value: str) -> None:
    """Refuse NUL, line breaks, tabs and other control characters in one-line text."""
    if isinstance(value, str):
        found = _CONTROL.search(value)
        if found:
            raise ValidationError(
                f"Remove the control character {found.group()!r} (line breaks, tabs and NUL are not allowed here).",
                code="control_character",
            )


def no_null_characters(value: str) -> None:
    """Refuse NUL in multi-line text (line breaks are fine there)."""
    if isinstance(value, str) and "\x00" in value:
        raise ValidationError("Remove the NUL character (\\x00).", code="null_character")


@functools.lru_cache(maxsize=512)
def timezone_is_known(name: str) -> bool:
    """Whether ``ZoneInfo(name)`` works here (system tz data, else the tzdata package)."""
    if not name or len(name) > 64 or not _TIMEZONE_NAME.match(name):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True
