"""What every management command shares: argument types, name lookups that list the
known names, and validation errors as text a terminal user can act on."""

from __future__ import annotations

from argparse import ArgumentTypeError
from datetime import date
from enum import IntEnum

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError


class ExitCode(IntEnum):
    """Exit codes of run_traffic and backfill (README "Exit codes"), for scripts and CI."""

    SUCCESS = 0  # finished, and every threshold passed (or there were none)
    FAILED = 1  # the run or plan failed (or any other error)
    USAGE = 2  # bad arguments or input: nothing was sent
    THRESHOLDS_FAILED = 3  # the run finished but at least one threshold failed
    INTERRUPTED = 130  # stopped before its end (Ctrl-C, SIGTERM, a stop from the dashboard/API)


EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 run failed, 2 bad usage (nothing sent), 3 thresholds failed, "
    "130 interrupted or stopped before the end."
)


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ArgumentTypeError(f"“{text}” is not a date; use YYYY-MM-DD.") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"“{text}” is not a whole number.") from None
    if value < 1:
        raise ArgumentTypeError(f"{value} must be 1 or more.")
    return value


def get_preset(name: str):
    from presets.models import Preset

    try:
        return Preset.objects.get(name=name)
    except Preset.DoesNotExist:
        names = ", ".join(Preset.objects.values_list("name", flat=True))
        raise CommandError(f"No preset named “{name}”. Presets: {names}.") from None


def get_target(name: str):
    from targets.models import Target

    try:
        return Target.objects.get(name=name)
    except Target.DoesNotExist:
        names = ", ".join(Target.objects.values_list("name", flat=True)) or "none yet"
        raise CommandError(f"No target named “{name}”. Known targets: {names}.") from None


def format_errors(exc: ValidationError) -> str:
    """A ValidationError as lines of "field: message", the way the admin shows them."""
    if hasattr(exc, "message_dict"):
        return "\n".join(f"{field}: {message}" for field, messages in exc.message_dict.items() for message in messages)
    return "\n".join(exc.messages)
