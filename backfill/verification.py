"""Compare what a backfill sent with what Matomo reports, day by day.

What was sent is regenerated exactly (a day's visits are deterministic: the first
``visits_done`` of its stream); what Matomo has comes from VisitsSummary.get, which for
past days needs archiving after the backfill (see README, "Reading back from Matomo").
"""

from __future__ import annotations

from itertools import islice

from django.utils import timezone

from backfill.models import BackfillPlan
from backfill.runner import day_stream
from targets.readback import Comparison, ReadBackError, day_summary, judge, sent_counts


def verify_plan(plan: BackfillPlan) -> list[Comparison]:
    """One row per target and day that sent something; stored on the plan for its page."""
    rows = []
    days = plan.days.filter(visits_done__gt=0).select_related("target").order_by("target__name", "day")
    for day in days:
        sent_visits, sent_actions = sent_counts(islice(day_stream(plan, day, skip=0), day.visits_done))
        row = Comparison(day.day.isoformat(), day.target.name, sent_visits, sent_actions, None, None)
        try:
            summary = day_summary(day.target, day.day)
        except ReadBackError as exc:
            row.cause = str(exc)
        else:
            if summary is not None:
                row.matomo_visits, row.matomo_actions = summary
            judge(row, archived_report=True, rejected_hits=day.hits_invalid + day.hits_failed)
        rows.append(row)
    plan.verification = {"at": timezone.now().isoformat(), "rows": [row.as_dict() for row in rows]}
    plan.save(update_fields=["verification"])
    return rows
