"""Validators shared by every app's models and forms: the checks that keep values a
page, a command or the database cannot handle out of the database."""

from __future__ import annotations

import functools
import math
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.core.exceptions import ValidationError

from trafficinator.strictjson import MAX_JSON_DEPTH, StrictJSONError, loads_strict

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


def check_json_value(value, *, max_depth: int = MAX_JSON_DEPTH) -> str:
    """Why an already parsed JSON value cannot be stored (non-finite numbers, too deep),
    or ""."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "NaN and infinity are not numbers in JSON; use a finite number."
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return f"Nested more than {max_depth} levels deep."
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str) and "\x00" in item:
            return "Text in JSON must not contain NUL (\\u0000)."
    return ""


class StrictJSONFormField(forms.JSONField):
    """The admin's JSON fields: a clear form error for NaN, Infinity, deep nesting or
    broken JSON (Django's field lets RecursionError and NaN through)."""

    def to_python(self, value):
        if self.disabled or value in self.empty_values or isinstance(value, (list, dict, int, float)):
            return super().to_python(value)
        try:
            converted = loads_strict(value)
        except StrictJSONError as exc:
            raise ValidationError(f"Not valid JSON: {exc}.", code="invalid") from None
        if isinstance(converted, str):
            return forms.fields.JSONString(converted)
        return converted

    def bound_data(self, data, initial):
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            return loads_strict(data)
        except StrictJSONError:
            return forms.fields.InvalidJSONInput(data)


def check_model_values(instance) -> dict[str, str]:
    """Field errors a model's own validators miss: NaN and infinity in float fields (range
    validators let NaN through), NUL in any text, control characters in one-line text,
    and JSON that is not finite or nested too deep."""
    from django.db import models

    errors: dict[str, str] = {}
    for field in instance._meta.concrete_fields:
        value = getattr(instance, field.attname, None)
        if value is None:
            continue
        try:
            if isinstance(field, models.FloatField):
                finite_number(value)
            elif isinstance(field, models.TextField):
                no_null_characters(value)
            elif isinstance(field, models.CharField) and not field.choices:
                no_control_characters(value)
            elif isinstance(field, models.JSONField):
                problem = check_json_value(value)
                if problem:
                    raise ValidationError(problem)
        except ValidationError as exc:
            errors[field.name] = exc.messages[0]
    return errors
