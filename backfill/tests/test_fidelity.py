"""A backfill sends what Matomo keeps (issue 15): conversions only to goals the site
has, and an estimate that says which share of returning visits Matomo will report."""

from __future__ import annotations

from collections import Counter

import pytest

from backfill.foreground import run_in_foreground
from backfill.models import BackfillPlan
from backfill.planning import build_estimate
from backfill.tests.conftest import days_ago
from trafficinator.testing import confirmed_plan, make_plan, make_preset


@pytest.mark.django_db(transaction=True)
def test_a_backfill_to_a_site_with_some_of_the_goals_converts_only_those_and_says_so(fake_matomo, shop):
    preset = make_preset(name="Converting", visits_per_day=600, pause_min=1.0, pause_max=10.0)
    goals = list(preset.catalog().goals)
    assert len(goals) > 1
    kept = goals[0]
    # The site has the first catalog goal under another id: conversions go there, by name.
    fake_matomo.sites[1].goals.update({7: kept.name})
    shop.site_goals = {"7": kept.name}
    shop.save()
    plan = confirmed_plan([shop], preset, start_date=days_ago(2), end_date=days_ago(1), batch_size=400)
    plan.start(enqueue=False)
    run_in_foreground(plan)
    plan.refresh_from_db()

    assert plan.status == BackfillPlan.Status.COMPLETED
    stats = fake_matomo.stats()
    sent = sum(plan.days.values_list("hits_sent", flat=True))
    assert stats["invalid"] == 0 and stats["recorded"] == sent > 0
    converted = Counter(hit.params["idgoal"] for hit in fake_matomo.hits_for(1) if hit.params.get("idgoal", "0") != "0")
    assert set(converted) == {"7"} and converted["7"] > 0
    missing = ", ".join(goal.name for goal in goals[1:])
    assert any(f"the site has no goal named {missing}" in note for note in plan.estimate["notes"])


@pytest.mark.django_db
@pytest.mark.parametrize(("share", "expected"), [(0.35, "about 35% returning visits on each day"), (0.0, None)])
def test_the_backfill_estimate_says_which_returning_share_matomo_will_report(target, share, expected):
    preset = make_preset(name="Loyal", visits_per_day=300, returning_visitor_share=share)
    plan = make_plan([target], preset, last_days=3)
    notes = build_estimate(plan, [target]).notes
    returning = [note for note in notes if "returning visits" in note]
    if expected is None:
        assert returning == []
    else:
        assert len(returning) == 1 and expected in returning[0]
        assert "only when it knows the visitor from an earlier visit" in returning[0]
