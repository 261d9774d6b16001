"""Matomo's returning-visit share after a backfill is the preset's, from the second day on."""

from __future__ import annotations

import io
from collections import defaultdict
from datetime import datetime

import pytest
from django.core.management import call_command

from backfill.foreground import run_in_foreground
from backfill.tests.conftest import STOCKHOLM, days_ago
from runs.models import Run
from trafficinator.testing import confirmed_plan, make_fast_preset, make_preset


@pytest.mark.django_db(transaction=True)
def test_matomo_counts_the_presets_returning_share_on_every_day_from_the_second(fake_matomo, shop):
    preset = make_preset(
        name="Returning", visits_per_day=700, pause_min=1.0, pause_max=10.0, returning_visitor_share=0.35
    )
    plan = confirmed_plan([shop], preset, start_date=days_ago(3), end_date=days_ago(1), batch_size=400)
    plan.start(enqueue=False)
    run_in_foreground(plan)
    by_day: dict = defaultdict(list)
    for visit in fake_matomo.visits(1):  # the fake's returning = Matomo's: a known visitor id
        by_day[datetime.fromtimestamp(visit.start, STOCKHOLM).date()].append(visit.returning)
    shares = [sum(flags) / len(flags) for _, flags in sorted(by_day.items())]
    assert len(shares) == 3 and all(len(flags) > 400 for flags in by_day.values())
    assert all(share == pytest.approx(0.35, abs=0.05) for share in shares[1:]), shares
    assert shares[0] > 0.25, shares  # even the first day: visitors come back the same day


@pytest.mark.django_db(transaction=True)
def test_a_live_run_after_a_backfill_continues_its_visitors(fake_matomo, shop):
    preset = make_fast_preset("Continued", returning_visitor_share=0.35)
    plan = confirmed_plan(
        [shop], preset, start_date=days_ago(2), end_date=days_ago(1), visits_per_day=600, batch_size=400
    )
    plan.start(enqueue=False)
    run_in_foreground(plan)
    backfilled = {visit.visitor_id for visit in fake_matomo.visits(1)}
    out = io.StringIO()
    call_command("run_traffic", "--target", "shop", "--preset", "Continued", "--visits", "300", stdout=out)
    live = [v for v in fake_matomo.visits(1) if datetime.fromtimestamp(v.start, STOCKHOLM).date() > days_ago(1)]
    assert len(live) == 300
    returning = [v for v in live if v.returning]
    assert sum(v.visitor_id in backfilled for v in returning) > 0.8 * len(returning)
    assert len(returning) / len(live) == pytest.approx(0.35, abs=0.08)
    run = Run.objects.get()
    assert run.logs.filter(message__contains=f"continue those of backfill #{plan.pk}").exists()
