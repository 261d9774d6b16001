"""Bad input into a backfill, and a plan frozen at confirmation: each test is a
reproduction from issue 14."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from backfill import runner
from backfill.foreground import run_in_foreground
from backfill.models import BackfillDay, BackfillPlan
from backfill.planning import funnels_from_json, funnels_to_json, plan_funnels
from backfill.tests.conftest import days_ago, expected_keys, hit_keys, kill_worker_mid_plan
from funnels.models import Funnel
from targets.models import Target
from trafficinator.cli import USAGE_EXIT_CODE
from trafficinator.testing import (
    confirmed_plan,
    make_funnel,
    make_plan,
    make_preset,
    make_step,
    make_target,
    make_user,
    subprocess_env,
)

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")
pytestmark = pytest.mark.usefixtures("fast_retries")  # every test here: retries in milliseconds
READY = {"token_auth": "tok", "last_check_ok": True, "token_can_write": True}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("flag", "value", "allowed"),
    [
        ("--rps", "NaN", "0.01 to 10000"),
        ("--rps", "inf", "0.01 to 10000"),
        ("--rps", "0", "0.01 to 10000"),
        ("--last-days", "100000000", "1 to 180"),
        ("--visits-per-day", "100000000000", "1 to 50,000,000"),
        ("--batch-size", "0", "1 to 5,000"),
        ("--seed", "-3", "0 to"),
    ],
)
def test_an_out_of_range_backfill_flag_is_named_with_its_allowed_range(flag, value, allowed):
    make_target(name="shop", **READY)
    with pytest.raises(CommandError) as info:
        call_command("backfill", "--target", "shop", "--preset", "Light", "--last-days", "2", flag, value, "--yes")
    assert f"argument {flag}" in str(info.value) and allowed in str(info.value)
    assert not BackfillPlan.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_backfill_rps_nan_exits_with_status_2_and_no_traceback():
    make_target(name="shop", **READY)
    args = ["--target", "shop", "--preset", "Light", "--last-days", "1", "--rps", "NaN", "--yes"]
    done = subprocess.run(
        [sys.executable, MANAGE, "backfill", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == USAGE_EXIT_CODE and "--rps" in done.stderr and "Traceback" not in done.stderr
    assert not BackfillPlan.objects.exists()


@pytest.mark.django_db
def test_a_window_before_matomo_existed_is_refused():
    target = make_target(name="shop", site_timezone="Europe/Stockholm", **READY)
    with pytest.raises(ValidationError) as info:
        make_plan([target], make_preset(), start_date=date(1, 1, 1), end_date=date(1, 1, 2))
    assert "1991-08-06" in str(info.value.message_dict["start_date"])
    assert not BackfillPlan.objects.exists()


@pytest.mark.django_db
def test_days_before_the_site_was_created_are_refused():
    created = days_ago(3)
    target = make_target(name="shop", site_timezone="Europe/Stockholm", site_created=created, **READY)
    with pytest.raises(ValidationError) as info:
        make_plan([target], make_preset(), start_date=days_ago(5), end_date=days_ago(1))
    assert f"created on {created}" in " ".join(info.value.message_dict["start_date"])
    assert make_plan([target], make_preset(), start_date=created, end_date=days_ago(1)).day_count == 3


@pytest.mark.django_db
def test_a_site_zone_unknown_here_gives_a_plan_with_a_warning_not_a_500():
    target = make_target(name="shop", **READY)
    Target.objects.filter(pk=target.pk).update(site_timezone="Europe/Kyivv")
    preset = make_preset(name="Plain", visits_per_day=300)
    client = Client()
    client.force_login(make_user(superuser=True))
    response = client.post(
        reverse("backfill:new"),
        {"targets": [target.pk], "preset": preset.pk, "last_days": 2, "batch_size": 200, "parallel_days": 1},
    )
    assert response.status_code == 302, response.content[:2000]
    plan = BackfillPlan.objects.get()
    page = client.get(reverse("backfill:detail", args=[plan.pk]))
    assert page.status_code == 200 and "unknown on this machine" in page.content.decode()
    assert plan.confirm(by_name="tests")
    assert set(plan.days.values_list("timezone", flat=True)) == {preset.timezone}


@pytest.mark.django_db
def test_frozen_funnels_round_trip_exactly_including_money():
    preset = make_preset()
    make_funnel(
        presets=[preset],
        share="0.2",
        steps=[
            make_step(delay_min=1.5, delay_max=9.0, continue_probability=0.7),
            make_step("goal", goal_id=3, revenue=Decimal("19.99")),
        ],
    )
    specs = Funnel.objects.specs_for_preset(preset)
    assert funnels_from_json(funnels_to_json(specs)) == specs


@pytest.mark.django_db(transaction=True)
def test_a_resumed_plan_replays_the_confirmed_funnels_after_they_were_edited(fake_matomo, shop, small_preset):
    """Edit the funnels mid-plan, kill the worker, resume: Matomo saw exactly the
    confirmed plan, with at most one batch repeated."""
    checkout = make_funnel(
        name="checkout",
        presets=[small_preset],
        share="0.4",
        steps=[make_step(url="/cart"), make_step(url="/pay", delay_min=2.0, delay_max=5.0), make_step(url="/ok")],
    )
    batch_size = 30
    plan = confirmed_plan([shop], small_preset, last_days=2, visits_per_day=400, batch_size=batch_size)
    confirmed = expected_keys(plan)
    kill_worker_mid_plan(fake_matomo, plan)
    assert plan.days.filter(status=BackfillDay.Status.RUNNING).exists()  # killed mid-plan

    # Mid-plan edits: another share, a step less, a new funnel.
    checkout.share = Decimal("0.1")
    checkout.save()
    checkout.steps.order_by("position").last().delete()
    make_funnel(name="newsletter", presets=[small_preset], share="0.3")
    live = BackfillPlan.objects.get(pk=plan.pk)
    live.frozen_funnels = None  # what the days would follow if funnels were read live
    assert plan_funnels(live) != plan_funnels(plan)
    assert sum(1 for day in live.days.all() for _ in runner.day_stream(live, day, skip=0)) == sum(
        day.planned_visits for day in plan.days.all()
    )

    ended = run_in_foreground(plan)
    plan.refresh_from_db()

    assert ended is None and plan.status == BackfillPlan.Status.COMPLETED
    assert expected_keys(plan) == confirmed  # the plan itself still describes the confirmed stream
    recorded = hit_keys(fake_matomo.hits_for(1))
    assert not confirmed - recorded  # every confirmed hit reached Matomo
    repeated = recorded - confirmed
    assert sum(repeated.values()) <= batch_size and set(repeated) <= set(confirmed)  # one batch at most
    assert expected_keys(live) != confirmed  # (what a live read would have sent instead)


@pytest.mark.django_db(transaction=True)
def test_a_resumed_plan_converts_to_the_site_goals_it_was_confirmed_with(fake_matomo, shop, small_preset):
    """Re-check the target (or `target prepare` it) between a kill and the resume: the
    resumed days still send the confirmed conversions, not the site's new goal list."""
    goals = {goal.idgoal: goal.name for goal in small_preset.catalog().goals}
    assert goals  # the default catalog converts goals
    fake_matomo.sites[1].goals.update(goals)
    shop.site_goals = {str(idgoal): name for idgoal, name in goals.items()}
    shop.save()
    batch_size = 30
    plan = confirmed_plan([shop], small_preset, last_days=2, visits_per_day=400, batch_size=batch_size)
    confirmed = expected_keys(plan)
    kill_worker_mid_plan(fake_matomo, plan)
    assert plan.days.filter(status=BackfillDay.Status.RUNNING).exists()  # killed mid-plan

    # Mid-plan: a new check reads other goals (one renamed, the others gone).
    Target.objects.filter(pk=shop.pk).update(site_goals={"1": "Renamed"})
    live = BackfillPlan.objects.get(pk=plan.pk)
    live.frozen_goals = None  # what the days would convert to if goals were read live
    assert expected_keys(live) != confirmed

    ended = run_in_foreground(plan)
    plan.refresh_from_db()

    assert ended is None and plan.status == BackfillPlan.Status.COMPLETED
    assert expected_keys(plan) == confirmed
    recorded = hit_keys(fake_matomo.hits_for(1))
    assert not confirmed - recorded  # every confirmed hit, conversions included, reached Matomo
    repeated = recorded - confirmed
    assert sum(repeated.values()) <= batch_size and set(repeated) <= set(confirmed)  # one batch at most
