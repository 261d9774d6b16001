"""What every management command shares: argument types, name lookups that list the
known names, and validation errors as text a terminal user can act on.

Bad input never ends in a traceback: an argument type raises ``ArgumentTypeError`` with
the allowed range (argparse names the flag and exits with status 2, or raises
``CommandError`` under ``call_command``), and a check that needs the database raises
``usage_error()``, a ``CommandError`` with the same bad-usage exit status 2."""

from __future__ import annotations

import math
from argparse import ArgumentTypeError
from collections.abc import Callable
from datetime import date
from enum import IntEnum

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

# The exit status of a command given bad arguments (argparse's own, and Django's
# CommandError(returncode=2)); 1 stays "the work failed".
USAGE_EXIT_CODE = 2
# Largest value a seed may have: it is stored in a 64-bit integer column.
MAX_SEED = 2**63 - 1
# Largest value of a PositiveIntegerField on every database we support.
MAX_POSITIVE_INT = 2**31 - 1


def usage_error(message: str) -> CommandError:
    """A CommandError for bad input (exit status 2), as opposed to a failed run (1)."""
    return CommandError(message, returncode=USAGE_EXIT_CODE)


class ExitCode(IntEnum):
    """Exit codes of run_traffic and backfill (README "Exit codes"), for scripts and CI."""

    SUCCESS = 0  # finished, and every threshold passed (or there were none)
    FAILED = 1  # the run or plan failed (or any other error)
    USAGE = 2  # bad arguments or input: nothing was sent
    THRESHOLDS_FAILED = 3  # the run finished but a threshold failed, or --abort-on-fail stopped it
    INTERRUPTED = 130  # stopped before its end (Ctrl-C, SIGTERM, a stop from the dashboard/API)


EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 run failed, 2 bad usage (nothing sent), 3 thresholds failed (at the end, or "
    "early with --abort-on-fail), 130 interrupted or stopped before the end."
)


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ArgumentTypeError(f"“{text}” is not a date; use YYYY-MM-DD.") from None


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], with the range in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ArgumentTypeError(f"“{text}” is not a whole number; use {low:,} to {high:,}.") from None
        if not low <= value <= high:
            raise ArgumentTypeError(f"{value:,} is out of range; use {low:,} to {high:,}.")
        return value

    parse.__name__ = f"whole number {low}..{high}"
    return parse


def float_between(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (never NaN or infinity)."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ArgumentTypeError(f"“{text}” is not a number; use {low:g} to {high:g}.") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ArgumentTypeError(f"{text.strip()} is out of range; use {low:g} to {high:g}.")
        return value

    parse.__name__ = f"number {low}..{high}"
    return parse


# 1 or more, up to what the database columns hold.
positive_int = int_between(1, MAX_POSITIVE_INT)
seed_int = int_between(0, MAX_SEED)


def refuse_control_characters(text: str, what: str) -> None:
    """A name given on the command line with NUL, a line break or another control
    character can match nothing (names never hold one), and PostgreSQL refuses NUL in a
    query outright: a usage error before any query."""
    from trafficinator.validation import no_control_characters

    try:
        no_control_characters(text)
    except ValidationError as exc:
        raise usage_error(f"{what} {text!r}: {exc.messages[0]}") from None


def get_preset(name: str):
    from presets.models import Preset

    refuse_control_characters(name, "Preset")
    try:
        return Preset.objects.get(name=name)
    except Preset.DoesNotExist:
        names = ", ".join(Preset.objects.values_list("name", flat=True))
        raise usage_error(f"No preset named “{name}”. Presets: {names}.") from None


def get_target(name: str):
    from targets.models import Target

    refuse_control_characters(name, "Target")
    try:
        return Target.objects.get(name=name)
    except Target.DoesNotExist:
        names = ", ".join(Target.objects.values_list("name", flat=True)) or "none yet"
        raise usage_error(f"No target named “{name}”. Known targets: {names}.") from None


def format_errors(exc: ValidationError) -> str:
    """A ValidationError as lines of "field: message", the way the admin shows them."""
    if hasattr(exc, "message_dict"):
        return "\n".join(f"{field}: {message}" for field, messages in exc.message_dict.items() for message in messages)
    return "\n".join(exc.messages)


def validation_error(exc: ValidationError) -> CommandError:
    """A model's ValidationError for input given on the command line (exit status 2)."""
    return usage_error(format_errors(exc))
