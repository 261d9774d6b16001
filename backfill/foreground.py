"""Run a plan's days in this process, in date order: what ``manage.py backfill`` does.

Same code path as the workers (``runner.run_day`` and ``tasks.after_day``), one day after
the other instead of one task per day."""

from __future__ import annotations

from collections.abc import Callable

from backfill.models import BackfillDay, BackfillPlan
from backfill.runner import DayOutcome, DayResult, ProgressCallback, run_day
from backfill.tasks import after_day, finish_plan


def run_in_foreground(
    plan: BackfillPlan,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_progress: ProgressCallback | None = None,
    on_day: Callable[[DayResult], object] | None = None,
) -> DayResult | None:
    """Send every unfinished day, oldest first (per date, targets by name). Returns the
    result that ended the loop early (paused, failed, lost, busy), or None when every
    day is done."""
    days = list(
        plan.days.exclude(status=BackfillDay.Status.DONE).order_by("day", "target__name").values_list("pk", flat=True)
    )
    for day_id in days:
        result = run_day(day_id, should_stop=should_stop, on_progress=on_progress)
        after_day(result, enqueue=False)
        if on_day is not None:
            on_day(result)
        if result.outcome != DayOutcome.DONE:
            return result
    plan.refresh_from_db()
    if plan.complete_if_finished():  # e.g. resumed after the last day was done
        finish_plan(plan.pk)
    return None
