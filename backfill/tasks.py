"""django-q2 tasks of backfills (default queue).

A plan's days are tasks, so several workers backfill in parallel: each target and lane
is a chain of days in date order (``BackfillPlan.next_days``), and a finished day hands
the lane's next day to the queue. A day task works for at most ``SLICE_SECONDS`` and then
re-enqueues itself (the default queue kills tasks after Q_CLUSTER["timeout"] = 600 s and
re-delivers unacknowledged ones after "retry" = 900 s); the conditional claim makes a
re-delivered or duplicate task harmless: it finds the day held and exits.
"""

from __future__ import annotations

import logging

from django_q.tasks import async_task

from backfill.invalidation import invalidate_reports
from backfill.models import BackfillDay, BackfillPlan
from backfill.runner import DayOutcome, DayResult, run_day

logger = logging.getLogger(__name__)

# Plus the worst case of one batch with retries (~7 min) stays below the queue's 600 s.
SLICE_SECONDS = 120.0


def enqueue_day(day_id: int) -> None:
    async_task("backfill.tasks.run_backfill_day", day_id, task_name=f"backfill-day-{day_id}")


def enqueue_plan_end(plan_id: int) -> None:
    async_task("backfill.tasks.finish_plan", plan_id, task_name=f"backfill-end-{plan_id}")


def run_backfill_day(day_id: int) -> str:
    """Send (part of) one day, then hand on: the same day again after a pause, the
    lane's next day when done."""
    result = run_day(day_id, deadline_seconds=SLICE_SECONDS)
    after_day(result, enqueue=True)
    return result.message


def after_day(result: DayResult, *, enqueue: bool) -> None:
    """What follows a day, for tasks (``enqueue``) and the command alike."""
    day = BackfillDay.objects.select_related("plan").filter(pk=result.day_id).first()
    if day is None:
        return
    plan = day.plan
    if result.outcome == DayOutcome.DONE:
        if plan.complete_if_finished():
            finish_plan(plan.pk)
        elif enqueue:
            plan.enqueue_next_in_lane(day)
    elif result.outcome == DayOutcome.PAUSED and enqueue:
        enqueue_day(result.day_id)
    elif result.outcome in (DayOutcome.FAILED, DayOutcome.LOST):
        plan.refresh_from_db()
        if plan.is_locked and not plan.invalidation:
            finish_plan(plan.pk)


def finish_plan(plan_id: int) -> str:
    """Once a plan ended: invalidate the reports of the dates that received hits."""
    plan = BackfillPlan.objects.filter(pk=plan_id).first()
    if plan is None or not plan.claim_invalidation():
        return f"Plan {plan_id}: nothing to do."
    return f"Plan {plan_id}: invalidation {invalidate_reports(plan)}."
