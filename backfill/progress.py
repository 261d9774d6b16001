"""A plan's progress and ETA from its day rows: one aggregate query, never per hit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

from backfill.models import STALE_AFTER, BackfillDay, BackfillPlan
from backfill.planning import Estimate, format_duration


@dataclass
class PlanProgress:
    plan: BackfillPlan
    days: int = 0
    days_done: int = 0
    days_running: int = 0
    days_failed: int = 0
    planned_visits: int = 0
    visits_done: int = 0
    hits_sent: int = 0
    hits_accepted: int = 0
    hits_invalid: int = 0
    hits_failed: int = 0
    hits_resent: int = 0
    active_seconds: float = 0.0
    fresh_days: int = 0
    last_heartbeat: datetime | None = None
    now: datetime | None = None

    @classmethod
    def of(cls, plan: BackfillPlan, now: datetime | None = None) -> PlanProgress:
        now = now or timezone.now()
        running = Q(status=BackfillDay.Status.RUNNING)
        totals = plan.days.aggregate(
            days=Count("pk"),
            days_done=Count("pk", filter=Q(status=BackfillDay.Status.DONE)),
            days_running=Count("pk", filter=running),
            days_failed=Count("pk", filter=Q(status=BackfillDay.Status.FAILED)),
            fresh_days=Count("pk", filter=running & Q(heartbeat_at__gte=now - STALE_AFTER)),
            planned_visits=Sum("planned_visits"),
            visits_done=Sum("visits_done"),
            hits_sent=Sum("hits_sent"),
            hits_accepted=Sum("hits_accepted"),
            hits_invalid=Sum("hits_invalid"),
            hits_failed=Sum("hits_failed"),
            hits_resent=Sum("hits_resent"),
            active_seconds=Sum("active_seconds"),
            last_heartbeat=Max("heartbeat_at"),
        )
        values = {key: value or 0 for key, value in totals.items() if key != "last_heartbeat"}
        return cls(plan=plan, last_heartbeat=totals["last_heartbeat"], now=now, **values)

    @property
    def estimate(self) -> Estimate | None:
        return Estimate.from_json(self.plan.estimate)

    @property
    def percent(self) -> float:
        if not self.planned_visits:
            return 100.0 if self.days and self.days == self.days_done else 0.0
        return min(100.0, 100.0 * self.visits_done / self.planned_visits)

    @property
    def hits_per_visit(self) -> float | None:
        if self.visits_done:
            return self.hits_sent / self.visits_done
        estimate = self.estimate
        return estimate.hits_per_visit if estimate else None

    @property
    def remaining_hits(self) -> int:
        per_visit = self.hits_per_visit or 0.0
        return round(max(0, self.planned_visits - self.visits_done) * per_visit)

    @property
    def hits_per_second(self) -> float | None:
        """Current throughput: speed per sending day x days being sent now."""
        if not self.hits_sent or self.active_seconds <= 0:
            return None
        return self.hits_sent / self.active_seconds * max(1, self.fresh_days)

    @property
    def eta_seconds(self) -> float | None:
        if self.plan.status != BackfillPlan.Status.RUNNING:
            return None
        speed = self.hits_per_second
        if not speed:
            estimate = self.estimate
            return estimate.duration_seconds if estimate and not self.hits_sent else None
        return self.remaining_hits / speed

    @property
    def eta(self) -> str:
        return format_duration(self.eta_seconds)

    @property
    def took(self) -> str:
        """How long a finished plan ran, from start to end (interruptions included)."""
        plan = self.plan
        if not (plan.started_at and plan.finished_at):
            return "–"
        return format_duration((plan.finished_at - plan.started_at).total_seconds())

    @property
    def stalled(self) -> bool:
        """Running, unfinished, and no worker has written anything for STALE_AFTER."""
        plan = self.plan
        if plan.status != BackfillPlan.Status.RUNNING or self.days_done == self.days or self.fresh_days:
            return False
        last = self.last_heartbeat or plan.started_at
        return last is None or (self.now or timezone.now()) - last > STALE_AFTER

    def summary_line(self) -> str:
        return (
            f"days={self.days} visits={self.visits_done} hits={self.hits_sent} accepted={self.hits_accepted} "
            f"invalid={self.hits_invalid} failed={self.hits_failed}"
        )
