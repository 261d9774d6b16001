"""Bad input on the way into a run: the command line refuses it with a message naming the
flag and the allowed range (exit status 2), nothing is saved, and the database refuses
what slipped past anyway. Each test is a reproduction from issue 14."""

from __future__ import annotations

import math
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from presets.models import Preset
from runs.models import MAX_TARGET_WEIGHT, Run, RunTarget
from trafficinator.cli import USAGE_EXIT_CODE
from trafficinator.testing import make_target, make_user, subprocess_env

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")


def run_traffic(*args: str) -> CommandError:
    with pytest.raises(CommandError) as info:
        call_command("run_traffic", "--preset", "Light", "--visits", "1", *args)
    return info.value


@pytest.mark.django_db
@pytest.mark.parametrize("weight", ["inf", "Infinity", "NaN", "nan", "-inf", "0", "-1", "1e7", "abc"])
def test_a_target_weight_that_is_not_a_finite_positive_number_is_refused_and_nothing_saved(weight):
    make_target(name="fm2")
    error = run_traffic("--target", f"fm2:{weight}")
    assert f"--target fm2:{weight}" in str(error) or f"“{weight}” in --target" in str(error)
    assert error.returncode == USAGE_EXIT_CODE
    assert not Run.objects.exists() and not RunTarget.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("rate", ["99999999999", "0", "-5", "1.5", "NaN"])
def test_a_target_rate_out_of_range_is_refused_before_a_run_is_saved(rate):
    make_target(name="fm2")
    error = run_traffic("--target", f"fm2={rate}")
    assert "fm2=" in str(error) and error.returncode == USAGE_EXIT_CODE
    assert not Run.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [
        ("--rate", "100000000000", "1 to 50,000,000"),
        ("--rate", "0", "1 to 50,000,000"),
        ("--duration", "99999999d", f"{settings.MAX_RUN_HOURS}h"),
        ("--duration", "0s", f"{settings.MAX_RUN_HOURS}h"),
        ("--batch-size", "100000", "1 to 5,000"),
        ("--seed", "99999999999999999999999", "0 to"),
        ("--seed", "-1", "0 to"),
        ("--visits", "0", "1 to"),
    ],
)
def test_an_out_of_range_flag_is_named_with_its_allowed_range(flag, value, allowed):
    make_target(name="fm2")
    with pytest.raises(CommandError) as info:
        call_command("run_traffic", "--preset", "Light", "--target", "fm2", flag, value)
    assert f"argument {flag}" in str(info.value) and allowed in str(info.value)
    assert not Run.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_command_line_exits_with_status_2_and_no_traceback_for_a_bad_weight():
    make_target(name="fm2")
    for args in (["--target", "fm2:inf"], ["--target", "fm2", "--rate", "100000000000"]):
        done = subprocess.run(
            [sys.executable, MANAGE, "run_traffic", "--preset", "Light", *args],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == USAGE_EXIT_CODE, done.stderr
        assert "Traceback" not in done.stderr and ("--target" in done.stderr or "--rate" in done.stderr)
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_create_run_refuses_infinite_and_nan_weights_from_any_caller():
    target = make_target()
    for weight in (math.inf, math.nan, -1.0, 0.0, MAX_TARGET_WEIGHT * 2):
        with pytest.raises(Exception, match="weight above 0"):
            Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=[(target, weight, None)])
    assert not Run.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("weight", [math.inf, -math.inf, math.nan, 0.0, -2.0, 2e6])
def test_the_database_refuses_a_weight_that_is_not_finite_and_positive(weight):
    run = Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=[make_target()])
    with pytest.raises(IntegrityError), transaction.atomic():
        RunTarget.objects.create(run=run, target=make_target(), weight=weight)


@pytest.mark.django_db
@pytest.mark.parametrize(("model", "value"), [("run", 0), ("run", 10**8), ("run_target", 0), ("run_target", 10**8)])
def test_the_database_refuses_rates_out_of_range(model, value):
    run = Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=[make_target()])
    with pytest.raises(IntegrityError), transaction.atomic():
        if model == "run":
            Run.objects.filter(pk=run.pk).update(visits_per_day=value)
        else:
            RunTarget.objects.create(run=run, target=make_target(), visits_per_day=value)


@pytest.mark.django_db
def test_a_share_is_zero_rather_than_a_crash_for_a_weight_stored_before_the_constraints():
    run = Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=[make_target()])
    odd = [RunTarget(run=run, target=make_target(), weight=math.inf), RunTarget(run=run, weight=math.nan)]
    assert [row.share_of(run, odd) for row in odd] == [0, 0]


@pytest.mark.django_db
def test_the_start_form_refuses_a_visit_limit_the_run_cannot_store():
    """Found by the property suite: the form accepted what the model then refused."""
    from runs.forms import StartRunForm

    data = {"targets": [make_target().pk], "preset": Preset.objects.get(name="Light").pk, "max_visits": 10**9 + 1}
    form = StartRunForm(data=data)
    assert not form.is_valid() and "max_visits" in form.errors


@contextmanager
def without_weight_check():
    """Let this test store a weight as a row written before the CHECK constraint did
    (SQLite: ignore CHECKs on this connection; PostgreSQL: drop the constraint inside the
    test's transaction, which rolls it back)."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = ON")
        else:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending FK checks: ALTER needs that
            cursor.execute("ALTER TABLE runs_runtarget DROP CONSTRAINT run_target_weight_range")
    try:
        yield
    finally:
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA ignore_check_constraints = OFF")


@pytest.mark.django_db
@pytest.mark.parametrize("weight", [math.inf, -math.inf, math.nan])
def test_pages_render_a_run_whose_stored_weight_predates_the_constraints(weight):
    if math.isnan(weight) and connection.vendor == "sqlite":
        pytest.skip("SQLite stores NaN as NULL, which the NOT NULL column refuses: such a row cannot exist there")
    shop, other = make_target(name="shop"), make_target(name="other")
    run = Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=[shop, other])
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, started_at=timezone.now())
    with without_weight_check():
        RunTarget.objects.filter(run=run, target=shop).update(weight=weight)
    client = Client()
    client.force_login(make_user(superuser=True))
    for url in ("/", reverse("runs:dashboard"), reverse("runs:detail", args=[run.pk])):
        response = client.get(url, HTTP_HX_REQUEST="true" if url == reverse("runs:dashboard") else None)
        assert response.status_code == 200, url
    page = client.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert "shop" in page and "other" in page
