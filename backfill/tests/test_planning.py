"""Guardrails, per-day visits and the estimate: everything decided before anything is sent."""

from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError

from backfill.models import BackfillDay, BackfillPlan
from backfill.planning import build_estimate, plan_profile, planned_days
from backfill.runner import day_stream
from backfill.tests.conftest import READY, days_ago, stockholm_today
from trafficinator.testing import confirmed_plan, make_plan, make_preset, make_target
from trafficinator.traffic import visits_for_day_count


def ready_target(**fields):
    return make_target(**{**READY, **fields})


def errors_of(exc: pytest.ExceptionInfo) -> str:
    return " ".join(message for messages in exc.value.message_dict.values() for message in messages)


@pytest.fixture
def preset(db):
    return make_preset(name="Plain", visits_per_day=1000, daily_curve="business")


def test_days_follow_the_presets_weekly_curve_in_the_sites_time_zone(preset):
    target = ready_target(site_timezone="America/New_York")  # its "today" may be Stockholm's yesterday
    plan = make_plan([target], preset, start_date=days_ago(15), end_date=days_ago(2))
    days = planned_days(plan, [target])
    profile = plan_profile(plan)
    assert [item.day for item in days] == plan.window()
    for item in days:
        assert item.timezone == "America/New_York"
        assert item.visits == visits_for_day_count(profile, item.day, ZoneInfo("America/New_York"))
    weekdays = [item.visits for item in days if item.day.weekday() < 5]
    weekend = [item.visits for item in days if item.day.weekday() >= 5]
    assert min(weekdays) > max(weekend)  # the business curve: quiet weekends
    assert abs(sum(item.visits for item in days) - 14 * 1000) <= 14  # a week averages visits_per_day


def test_the_daily_cap_clips_days_and_the_total_cap_scales_every_day_down_exactly(preset):
    target = ready_target()
    plan = make_plan([target], preset, start_date=days_ago(14), end_date=days_ago(1), daily_cap=1100)
    days = planned_days(plan, [target])
    assert max(item.visits for item in days) == 1100
    assert any(item.uncapped > 1100 for item in days)

    plan = make_plan([target], preset, start_date=days_ago(14), end_date=days_ago(1), total_cap=7001)
    days = planned_days(plan, [target])
    assert sum(item.visits for item in days) == 7001
    ratios = [item.visits / item.uncapped for item in days]
    assert max(ratios) - min(ratios) < 0.01  # the weekly shape is kept


def test_the_last_n_days_end_yesterday_in_the_sites_time_zone(preset):
    target = ready_target()
    plan = make_plan([target], preset, last_days=7, today=date(2025, 3, 10))
    assert (plan.start_date, plan.end_date) == (date(2025, 3, 3), date(2025, 3, 9))
    plan = make_plan([target], preset, last_days=3)
    assert plan.end_date == stockholm_today() - timedelta(days=1)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"start_date": date(2025, 1, 10), "end_date": date(2025, 1, 9)}, "must not be before the first day"),
        ({"start_date": date(2024, 1, 1), "end_date": date(2024, 12, 31)}, "at most 180 days; this window has 366"),
        ({"start_date": date(2025, 3, 1), "end_date": date(2025, 3, 10)}, "Only fully past days"),
        ({"start_date": date(2025, 3, 1), "end_date": date(2025, 3, 12)}, "today is 2025-03-10"),
    ],
)
def test_windows_that_are_too_long_backwards_or_not_fully_past_are_refused(preset, window, message):
    with pytest.raises(ValidationError) as exc:
        make_plan([ready_target()], preset, today=date(2025, 3, 10), **window)
    assert message in errors_of(exc)


def test_a_window_of_180_days_ending_yesterday_is_fine(preset):
    plan = make_plan(
        [ready_target()], preset, start_date=date(2024, 9, 11), end_date=date(2025, 3, 9), today=date(2025, 3, 10)
    )
    assert plan.day_count == 180


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"token_auth": ""}, "has no token"),
        ({"last_check_ok": None}, "has never been checked"),
        ({"last_check_ok": False}, "failed its last connection check"),
        ({"token_can_write": False}, "cannot write to site"),
        ({"enabled": False}, "is disabled"),
    ],
)
def test_targets_need_a_checked_token_with_write_access(preset, fields, message):
    with pytest.raises(ValidationError) as exc:
        make_plan([ready_target(**fields)], preset)
    assert message in errors_of(exc)


def test_two_targets_on_the_same_site_are_refused(preset):
    first = ready_target(name="a", matomo_url="https://m.example/")
    second = ready_target(name="b", matomo_url="https://m.example/matomo.php")
    with pytest.raises(ValidationError) as exc:
        make_plan([first, second], preset)
    assert "same Matomo site" in errors_of(exc)


def test_a_window_is_dates_or_a_number_of_days_not_both(preset):
    with pytest.raises(ValidationError, match="not both"):
        make_plan([ready_target()], preset, last_days=3, start_date=days_ago(5))


def test_the_estimate_counts_hits_from_a_generated_sample_of_the_first_day(preset):
    target = ready_target()
    plan = make_plan(
        [target],
        preset,
        start_date=days_ago(3),
        end_date=days_ago(1),
        visits_per_day=200,
        max_requests_per_second=2,
        batch_size=100,
    )
    estimate = build_estimate(plan, [target])
    first = BackfillDay(
        plan=plan,
        target=target,
        day=plan.start_date,
        lane=0,
        timezone="Europe/Stockholm",
        planned_visits=estimate.days[0].visits,
    )
    visits = list(day_stream(plan, first, skip=0))
    assert estimate.sample_visits == len(visits)  # the whole first day is the sample here
    assert estimate.days[0].hits == sum(len(v.hits) for v in visits)  # so its hits are exact
    assert estimate.total_visits == sum(day.visits for day in estimate.days)
    assert estimate.duration_seconds == pytest.approx(estimate.total_requests / 2)
    assert "limit of 2 requests per second" in estimate.duration_basis
    assert "generated sample" in estimate.hits_basis
    row = estimate.targets[0]
    assert (row.site_id, row.timezone) == (1, "Europe/Stockholm")
    assert row.first_utc.endswith(":00:00 UTC") and row.last_utc.endswith(":59:59 UTC")


@pytest.mark.django_db(transaction=True)
def test_the_estimate_uses_the_targets_measured_speed_once_known(fake_matomo, shop, small_preset):
    from backfill.foreground import run_in_foreground

    done = confirmed_plan([shop], small_preset, last_days=1)
    done.start(enqueue=False)
    run_in_foreground(done)
    draft = make_plan([shop], small_preset, last_days=2)
    estimate = build_estimate(draft, [shop])
    assert estimate.targets[0].measured_hits_per_second > 0
    assert "measured speed" in estimate.duration_basis


def test_lanes_split_days_round_robin_and_lane_zero_keeps_the_plans_seed(preset):
    plan = make_plan([ready_target()], preset, start_date=days_ago(6), end_date=days_ago(1), parallel_days=3, seed=5)
    assert [plan.lane_of(day) for day in plan.window()] == [0, 1, 2, 0, 1, 2]
    assert plan.lane_seed(0) == 5 and plan.lane_seed(1) == "5:lane1"


def test_confirming_freezes_days_with_their_lane_and_time_zone(preset):
    plan = confirmed_plan([ready_target(site_timezone="Asia/Tokyo")], preset, last_days=4, parallel_days=2)
    assert plan.end_date == plan.window()[-1]
    days = list(plan.days.order_by("day"))
    assert [d.lane for d in days] == [0, 1, 0, 1]
    assert {d.timezone for d in days} == {"Asia/Tokyo"}
    assert sum(d.planned_visits for d in days) == plan.estimate["total_visits"]
    assert BackfillPlan.objects.get(pk=plan.pk).estimate["days"][0]["visits"] == days[0].planned_visits
