"""The backfill command's exit codes for scripts (README "Exit codes")."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from trafficinator.cli import ExitCode


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Give --target NAME and --preset NAME"),
        (("--target", "nope", "--preset", "Light", "--last-days", "1"), "No target named"),
        (("--resume", "999"), "No backfill plan 999"),
    ],
)
def test_bad_usage_exits_with_2_and_sends_nothing(args, message):
    with pytest.raises(CommandError, match=message) as error:
        call_command("backfill", *args, stdout=io.StringIO(), stderr=io.StringIO())
    assert error.value.returncode == ExitCode.USAGE == 2
