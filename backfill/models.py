"""Backfill plans: one-off historical runs with an explicit confirm lifecycle.

A plan is draft -> confirmed -> running -> completed | failed | cancelled. A draft can be
edited and shows an estimate; confirming freezes it (the preset's knobs, the per-day
visit counts, the site time zones and the estimate) and is recorded with who and when.
Finished plans are locked: "run again" clones them into a new draft. Every transition is
a conditional UPDATE on the current status, so two processes can never both win; confirming
is also conditional on the draft revision it planned from, so it never freezes days and an
estimate of settings that an edit replaced meanwhile.

Progress lives on ``BackfillDay`` rows (one per target and site-local day): a worker
claims a day with a conditional UPDATE, checkpoints after every acknowledged batch and
fences every write with its claim token, so a cancelled plan or a worker that was taken
over stops at its next write. See ``backfill.runner`` for the sending side.
"""

from __future__ import annotations

import os
import secrets
import socket
import uuid
from datetime import date, timedelta
from functools import partial
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models import Exists, F, OuterRef, Q, Sum
from django.utils import timezone

from presets.models import Preset, PresetSnapshot
from targets.models import Target
from trafficinator.lifecycle import LogEntry, actor, transition
from trafficinator.traffic import Population
from trafficinator.validation import finite_number

if TYPE_CHECKING:
    from backfill.progress import PlanProgress

MAX_WINDOW_DAYS = 180
MAX_TOTAL_VISITS = 200_000_000
MAX_VISITS_PER_DAY = 50_000_000
MIN_REQUESTS_PER_SECOND = 0.01
MAX_REQUESTS_PER_SECOND = 10_000
MAX_BATCH_SIZE = 5000
# A worker writes a heartbeat at least every HEARTBEAT_SECONDS while it holds a day
# (also while a batch is being retried); a day silent for STALE_AFTER is free to take.
# Bulk requests a backfill day keeps in flight (a plan's default). Measured with
# `manage.py bench --only matomo` against the fake Matomo in capacity mode (4 workers):
# hits/s grew linearly up to as many requests as workers (240, 473, 930 for 1, 2, 4) and
# not beyond (929 for 6, 910 for 8); a small Matomo has about 4-5 PHP workers.
DEFAULT_REQUESTS_IN_FLIGHT = 4
HEARTBEAT_SECONDS = 10
STALE_AFTER = timedelta(seconds=90)


def worker_label() -> str:
    """``host:pid`` of this process, stored on the day it holds."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_is_gone(label: str) -> bool:
    """Whether ``label`` names a process of this host that no longer exists (a killed
    worker), so its day can be taken over without waiting for STALE_AFTER."""
    host, _, pid = label.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def new_seed() -> int:
    return secrets.randbelow(2**31)


# What editing a draft writes: its settings, never a lifecycle column (status, who
# confirmed, the estimate, the frozen funnels and goals), so a stale edit cannot undo
# a confirmation it lost to.
DRAFT_FIELDS = (
    "preset",
    "preset_name",
    "profile",
    "start_date",
    "end_date",
    "visits_per_day",
    "daily_cap",
    "total_cap",
    "seed",
    "max_requests_per_second",
    "batch_size",
    "requests_in_flight",
    "parallel_days",
)


class PlanNotEditable(ValidationError):
    """``save_draft`` on a plan that is no longer a draft (confirmed in another tab or by
    someone else meanwhile). Callers show it as a message, not as a field error:
    nothing in the form can fix it."""


class DraftChanged(ValidationError):
    """``confirm`` lost to a draft edit that committed after it had planned the days and
    the estimate from the settings it read: nothing was confirmed, the plan stays a
    draft (with the edit), and its estimate needs a fresh look before confirming."""


class BackfillPlanQuerySet(models.QuerySet["BackfillPlan"]):
    def population_for(self, target: Target, preset: Preset | None) -> tuple[BackfillPlan, Population] | None:
        """The visitors of the latest backfill of this target with this preset that sent
        something (running or completed), for a live run to continue: its returning visits
        then come from visitors Matomo already knows."""
        if preset is None:
            return None
        plan = (
            self.filter(
                targets=target, preset=preset, status__in=[BackfillPlan.Status.RUNNING, BackfillPlan.Status.COMPLETED]
            )
            .order_by("-end_date", "-pk")
            .first()
        )
        if plan is None:
            return None
        lane_days = -(-plan.day_count // max(1, plan.parallel_days))  # lane 0's days
        return plan, plan.population(0, known_days=lane_days)

    @transaction.atomic
    def create_plan(
        self,
        *,
        targets: list[Target],
        preset: Preset,
        start_date: date | None = None,
        end_date: date | None = None,
        last_days: int | None = None,
        visits_per_day: int | None = None,
        daily_cap: int | None = None,
        total_cap: int | None = None,
        seed: int | None = None,
        max_requests_per_second: float | None = None,
        batch_size: int = 400,
        requests_in_flight: int = DEFAULT_REQUESTS_IN_FLIGHT,
        parallel_days: int = 1,
        created_by=None,
        today: date | None = None,
    ) -> BackfillPlan:
        """A validated draft, saved with its targets and logged (the API, the command,
        the benchmarks). ``BackfillPlan.prepare_draft`` says how the window, the rate, the
        daily cap and the seed are chosen. Raises ValidationError with every guardrail
        that fails."""
        plan = self.model(
            total_cap=total_cap,
            max_requests_per_second=max_requests_per_second,
            batch_size=batch_size,
            requests_in_flight=requests_in_flight,
            parallel_days=parallel_days,
        )
        plan.prepare_draft(
            preset=preset,
            targets=targets,
            start_date=start_date,
            end_date=end_date,
            last_days=last_days,
            visits_per_day=visits_per_day,
            daily_cap=daily_cap,
            seed=seed,
            today=today,
        )
        plan.save_draft(targets, by=created_by)
        return plan

    def active(self) -> BackfillPlanQuerySet:
        """Confirmed or running: what the dashboard shows with its progress."""
        return self.filter(status__in=BackfillPlan.ACTIVE_STATUSES)

    def finished(self) -> BackfillPlanQuerySet:
        return self.filter(status__in=BackfillPlan.FINISHED_STATUSES)


class BackfillPlan(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        CONFIRMED = "confirmed", "Confirmed"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Invalidation(models.TextChoices):
        NONE = "", "Not yet"
        PENDING = "pending", "In progress"
        DONE = "done", "Reports invalidated"
        FAILED = "failed", "Invalidation failed"
        NOT_NEEDED = "not_needed", "Nothing to invalidate"

    ACTIVE_STATUSES = (Status.CONFIRMED, Status.RUNNING)
    FINISHED_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    targets = models.ManyToManyField(Target, related_name="backfill_plans")
    preset = models.ForeignKey(Preset, on_delete=models.SET_NULL, null=True, blank=True, related_name="backfills")
    preset_name = models.CharField(max_length=100)
    profile = models.JSONField(
        default=dict, help_text="The preset's knobs; refreshed while a draft, frozen at confirmation."
    )
    frozen_funnels = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="The funnels as they were at confirmation (traffic-model specs); what every day follows.",
    )
    frozen_goals = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="Each target's site goals at confirmation (target id: goal id: name); what every day converts to.",
    )
    start_date = models.DateField(help_text="First day, in the site's time zone.")
    end_date = models.DateField(help_text="Last day (included), in the site's time zone; yesterday at the latest.")
    visits_per_day = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_VISITS_PER_DAY)],
        help_text="Average over a week; each day gets its weekday's share (the preset's weekly curve).",
    )
    daily_cap = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_VISITS_PER_DAY)],
        help_text="At most this many visits on any day.",
    )
    total_cap = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_TOTAL_VISITS)],
        help_text="At most this many visits in all; days are scaled down evenly to fit.",
    )
    seed = models.BigIntegerField(
        default=new_seed,
        validators=[MinValueValidator(0), MaxValueValidator(2**63 - 1)],
        help_text="Same seed, same visits (per day and target).",
    )
    max_requests_per_second = models.FloatField(
        "requests per second limit",
        null=True,
        blank=True,
        validators=[
            MinValueValidator(MIN_REQUESTS_PER_SECOND),
            MaxValueValidator(MAX_REQUESTS_PER_SECOND),
            finite_number,
        ],
        help_text="Bulk requests per second per target (shared by its parallel days). Blank: no limit.",
    )
    batch_size = models.PositiveIntegerField(
        default=400,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_BATCH_SIZE)],
        help_text="The checkpoint unit, in hits: visits travel in bulk requests of a quarter batch (at least "
        "100 hits), several in flight all the time; after a crash at most the requests in flight plus about one "
        "batch are sent again, and Matomo refuses what it already holds.",
    )
    requests_in_flight = models.PositiveSmallIntegerField(
        default=DEFAULT_REQUESTS_IN_FLIGHT,
        validators=[MinValueValidator(1), MaxValueValidator(32)],
        help_text="Bulk requests kept in flight per day being sent, all the time. Match the Matomo's PHP workers "
        "(e.g. php-fpm pm.max_children): fewer leave workers idle, more only queue.",
    )
    parallel_days = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(16)],
        help_text="Days of one target sent at once. 1 = strict date order. More: returning visitors "
        "return only every N days (see README).",
    )

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    # Bumped by every draft edit in the edit's own UPDATE: confirm() writes only if the
    # row is still the revision it planned its days and estimate from.
    draft_revision = models.PositiveIntegerField(
        default=0, editable=False, help_text="How many times the draft was edited."
    )
    end_reason = models.TextField(blank=True)
    estimate = models.JSONField(default=dict, blank=True, help_text="The estimate the user confirmed.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    confirmed_by_name = models.CharField(max_length=255, blank=True, help_text="Who confirmed, as shown.")
    confirmed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cloned_from = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="clones")

    invalidation = models.CharField(max_length=16, choices=Invalidation.choices, default="", blank=True)
    invalidation_message = models.TextField(blank=True)
    invalidated_at = models.DateTimeField(null=True, blank=True)

    # The last comparison with Matomo's reports, day by day (backfill.verification), or None.
    verification = models.JSONField(null=True, blank=True, editable=False)

    objects = BackfillPlanQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [("run_backfill", "Can confirm, start and cancel backfills")]
        indexes = [
            # The dashboard's "active backfills" and the list page's grouping by status.
            models.Index(fields=["status", "-created_at"], name="backfill_status_created_idx"),
        ]
        constraints = [
            # The estimate and the pacing divide by these: finite and positive (a range
            # check refuses NaN and infinity on PostgreSQL too).
            models.CheckConstraint(
                condition=models.Q(visits_per_day__gte=1, visits_per_day__lte=MAX_VISITS_PER_DAY),
                name="backfill_visits_per_day_range",
            ),
            models.CheckConstraint(
                condition=models.Q(max_requests_per_second__isnull=True)
                | models.Q(
                    max_requests_per_second__gte=MIN_REQUESTS_PER_SECOND,
                    max_requests_per_second__lte=MAX_REQUESTS_PER_SECOND,
                ),
                name="backfill_requests_per_second_range",
            ),
            models.CheckConstraint(
                condition=models.Q(batch_size__gte=1, batch_size__lte=MAX_BATCH_SIZE),
                name="backfill_batch_size_range",
            ),
        ]

    def __str__(self) -> str:
        return f"Backfill {self.pk} ({self.preset_name}, {self.start_date} – {self.end_date})"

    # --- derived state -------------------------------------------------------------

    @property
    def is_draft(self) -> bool:
        return self.status == self.Status.DRAFT

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def is_locked(self) -> bool:
        """Finished plans never change again; "run again" clones them."""
        return self.status in self.FINISHED_STATUSES

    def can_edit(self) -> bool:
        return self.status == self.Status.DRAFT

    def can_confirm(self) -> bool:
        return self.status == self.Status.DRAFT

    def can_cancel(self) -> bool:
        return self.status in (self.Status.DRAFT, self.Status.CONFIRMED, self.Status.RUNNING)

    @property
    def day_count(self) -> int:
        return (self.end_date - self.start_date).days + 1

    def window(self) -> list[date]:
        return [self.start_date + timedelta(days=offset) for offset in range(self.day_count)]

    def lane_of(self, day: date) -> int:
        """Days of one target are spread over ``parallel_days`` lanes round robin; a lane
        sends its days in date order and has its own returning visitors."""
        return (day - self.start_date).days % max(1, self.parallel_days)

    def population(self, lane: int, *, known_days: int | None = None) -> Population:
        """The visitors of one lane of days: members join day by day from the lane's first
        day, so from the second day on Matomo knows the visitors a returning visit comes
        from (see trafficinator.traffic.Population). The intake is sized for the plan's
        smallest days (caps scale days down), so every day fills it."""
        per_day = self.visits_per_day
        if self.daily_cap:
            per_day = min(per_day, self.daily_cap)
        if self.total_cap:
            per_day = min(per_day, max(1, self.total_cap // max(1, self.day_count)))
        return Population(
            seed=self.lane_seed(lane),
            start_day=self.start_date + timedelta(days=lane),
            step_days=max(1, self.parallel_days),
            known_days=known_days,
            visits_per_day=per_day,
        )

    def lane_seed(self, lane: int) -> int | str:
        """Lane 0 uses the plan's seed as it is (so ``parallel_days=1`` gives exactly
        ``day_visits(seed=plan.seed)``); other lanes get their own visitor pools."""
        return self.seed if lane == 0 else f"{self.seed}:lane{lane}"

    @property
    def order_id_prefix(self) -> str:
        # Order ids must be unique per site forever: a plan id keeps clones apart.
        return f"bf{self.pk}"

    def confirmation_phrase(self, targets: list[Target] | None = None) -> str:
        """What the user types to confirm: the target's name (names, comma-separated)."""
        targets = targets if targets is not None else list(self.targets.order_by("name"))
        return ", ".join(target.name for target in targets)

    @property
    def snapshot(self) -> PresetSnapshot:
        """The preset's knobs as they were when the draft was last saved."""
        return PresetSnapshot(self.profile)

    def progress(self) -> PlanProgress:
        """Days, visits and hits so far, hits/s and ETA (one aggregate query)."""
        from backfill.progress import PlanProgress

        return PlanProgress.of(self)

    # --- drafts -------------------------------------------------------------------------

    def prepare_draft(
        self,
        *,
        preset: Preset,
        targets: list[Target],
        start_date: date | None = None,
        end_date: date | None = None,
        last_days: int | None = None,
        visits_per_day: int | None = None,
        daily_cap: int | None = None,
        seed: int | None = None,
        today: date | None = None,
    ) -> None:
        """Set a new or edited draft's window, preset snapshot, visits per day, daily cap
        and seed, then check it: the field bounds and every guardrail
        (``planning.check_plan``), with the total cap and pacing already set on the plan.
        Raises ValidationError keyed by field. The window is explicit dates or
        ``last_days`` (the N fully past days ending yesterday in the site's time zone); a
        blank rate is the preset's, and so is a blank daily cap (none if the preset has
        none), the same on every path: the page, the admin, the API and the command; a
        blank seed keeps the plan's (a new plan's is random). Nothing is saved:
        ``save_draft``."""
        from backfill.planning import check_plan, last_days_window

        if last_days is not None:
            if start_date or end_date:
                raise ValidationError(
                    {"last_days": "Give either the first and last day or a number of days, not both."}
                )
            start_date, end_date = last_days_window(last_days, targets, preset.timezone, today)
        if start_date is None or end_date is None:
            raise ValidationError({"start_date": "Give the first and last day, or the number of last days."})
        self.preset = preset
        self.preset_name = preset.name
        self.profile = PresetSnapshot.of(preset).as_json()
        self.start_date, self.end_date = start_date, end_date
        self.visits_per_day = visits_per_day or preset.visits_per_day
        self.daily_cap = daily_cap if daily_cap is not None else preset.daily_cap
        if seed is not None:
            self.seed = seed
        self.full_clean()
        check_plan(self, targets, today=today)

    @transaction.atomic
    def save_draft(self, targets: list[Target], by=None) -> None:
        """Save a draft that ``prepare_draft`` set up, and its targets, with a log line
        saying who created or edited it (a new draft records ``by`` as its creator).
        An edit is a conditional UPDATE of the settings only, so if the plan was
        confirmed since it was read, the edit loses: raises PlanNotEditable. The same
        UPDATE bumps ``draft_revision`` (and the targets change in this transaction), so a
        confirm that planned from the settings before this edit loses in turn."""
        creating = self.pk is None
        if creating:
            if getattr(by, "pk", None):
                self.created_by = by
            self.save()
        elif not self.can_edit() or not self._transition(
            [self.Status.DRAFT],
            draft_revision=F("draft_revision") + 1,
            **{name: getattr(self, name) for name in DRAFT_FIELDS},
        ):
            raise self.not_editable()
        self.targets.set(targets)
        self.log(
            BackfillLog.Level.INFO,
            f"{'Draft created' if creating else 'Draft edited'} by {actor(by)}: {self.start_date} – {self.end_date}, "
            f"preset {self.preset_name}, {self.visits_per_day:,} visits/day, seed {self.seed}.",
        )

    def not_editable(self) -> PlanNotEditable:
        """The refusal of an edit, naming the plan's status as it is now in the database."""
        status = BackfillPlan.objects.filter(pk=self.pk).values_list("status", flat=True).first() or self.status
        label = self.Status(status).label.lower()
        return PlanNotEditable(
            f"Plan {self.pk} is {label} now (changed elsewhere meanwhile): only drafts can be edited, so these "
            "changes were not saved. Run the plan again to change it."
        )

    def draft_changed(self) -> DraftChanged:
        return DraftChanged(
            f"Plan {self.pk} was not confirmed: the draft changed while it was being confirmed; check the "
            "estimate and confirm again."
        )

    # --- transitions (conditional updates) -------------------------------------------

    def _transition(self, from_statuses, **changes) -> bool:
        return transition(self, from_statuses, **changes)

    def confirm(self, by=None, *, by_name: str = "", today: date | None = None, revision: int | None = None) -> bool:
        """draft -> confirmed after the user saw the estimate: re-checks every guardrail,
        freezes the per-day plan and the estimate, records who and when. Raises
        ValidationError when a guardrail fails; returns False if no longer a draft.

        The days and the estimate come from this instance's settings and the targets as
        read now; the UPDATE is conditional on the ``draft_revision`` they were read at,
        so a draft edit that commits in between (SQLite has no row locks to hold it off)
        makes this confirm lose: raises DraftChanged and writes nothing. ``revision`` is
        the one whose estimate the user was shown (the confirm page, the API): a draft
        edited since then is refused the same way, whatever this instance holds."""
        from backfill.planning import (
            build_estimate,
            check_plan,
            funnels_to_json,
            goals_to_json,
            plan_funnels,
            planned_days,
        )

        if self.status != self.Status.DRAFT:
            return False
        if revision is not None and revision != self.draft_revision:
            raise self.draft_changed()
        planned_from = self.draft_revision
        targets = list(self.targets.order_by("name"))
        check_plan(self, targets, today=today)
        # Everything that shapes the traffic is fixed from here on: the profile (the
        # preset's snapshot, with its catalog), the seed, the per-day plan, the funnels and
        # each site's goals (a re-check or `target prepare` between a kill and the resume
        # would otherwise change which conversions a resumed day sends), so a resumed day
        # regenerates exactly the confirmed stream.
        self.frozen_funnels = funnels_to_json(plan_funnels(self))
        self.frozen_goals = {str(target.pk): goals_to_json(target) for target in targets}
        days = planned_days(self, targets)
        estimate = build_estimate(self, targets, days=days)
        who = actor(by_name or by)
        with transaction.atomic():
            won = BackfillPlan.objects.filter(pk=self.pk, status=self.Status.DRAFT, draft_revision=planned_from).update(
                status=self.Status.CONFIRMED,
                confirmed_by=by if getattr(by, "pk", None) else None,
                confirmed_by_name=who,
                confirmed_at=timezone.now(),
                estimate=estimate.as_json(),
                frozen_funnels=self.frozen_funnels,
                frozen_goals=self.frozen_goals,
            )
            if not won:
                self.refresh_from_db()  # drop what was planned from the settings that lost
                if self.is_draft:
                    raise self.draft_changed()
                return False
            BackfillDay.objects.bulk_create(
                BackfillDay(
                    plan_id=self.pk,
                    target=item.target,
                    day=item.day,
                    lane=item.lane,
                    timezone=item.timezone,
                    planned_visits=item.visits,
                )
                for item in days
            )
            self.refresh_from_db()
            self.log(
                BackfillLog.Level.INFO,
                f"Confirmed by {who}: {estimate.summary_text()}",
            )
        return True

    def start(self, *, enqueue: bool = True) -> bool:
        """confirmed -> running. With ``enqueue`` the first day of every target and lane
        goes to the workers once the transaction commits; the command runs days itself."""
        if not self._transition([self.Status.CONFIRMED], status=self.Status.RUNNING, started_at=timezone.now()):
            return False
        where = "on the workers" if enqueue else "in the foreground (command line)"
        self.log(BackfillLog.Level.INFO, f"Started {where}.")
        if enqueue:
            self.enqueue_next_days()
        return True

    def cancel(self, by=None, reason: str = "") -> bool:
        """draft/confirmed/running -> cancelled. Workers stop at their next checkpoint
        (their claims are cleared); what was sent stays in Matomo, so a plan that was
        running gets the reports of its dates invalidated (a task, after commit)."""
        from backfill.tasks import enqueue_plan_end

        reason = reason or f"Cancelled by {actor(by)}."
        changes = {"status": self.Status.CANCELLED, "end_reason": reason, "finished_at": timezone.now()}
        with transaction.atomic():
            if self._transition([self.Status.RUNNING], **changes):
                transaction.on_commit(partial(enqueue_plan_end, self.pk))
            elif not self._transition([self.Status.DRAFT, self.Status.CONFIRMED], **changes):
                return False
            self._stop_open_days()
            self.log(BackfillLog.Level.WARNING, reason)
        return True

    def fail(self, reason: str) -> bool:
        """confirmed/running -> failed; every other worker of the plan stops at its next
        checkpoint."""
        with transaction.atomic():
            if not self._transition(
                [self.Status.CONFIRMED, self.Status.RUNNING],
                status=self.Status.FAILED,
                end_reason=reason,
                finished_at=timezone.now(),
            ):
                return False
            self._stop_open_days()
            self.log(BackfillLog.Level.ERROR, f"Failed: {reason}")
        return True

    def complete_if_finished(self) -> bool:
        """running -> completed once every day is done (exactly one caller wins)."""
        unfinished = BackfillDay.objects.filter(plan=OuterRef("pk")).exclude(status=BackfillDay.Status.DONE)
        won = (
            BackfillPlan.objects.filter(pk=self.pk, status=self.Status.RUNNING)
            .filter(~Exists(unfinished))
            .update(status=self.Status.COMPLETED, finished_at=timezone.now(), end_reason="Every day was sent.")
        )
        if won:
            self.refresh_from_db()
            totals = self.days.aggregate(
                visits=Sum("visits_done"), hits=Sum("hits_sent"), accepted=Sum("hits_accepted")
            )
            self.log(
                BackfillLog.Level.INFO,
                f"Completed: {totals['visits'] or 0:,} visits, {totals['hits'] or 0:,} hits, "
                f"{totals['accepted'] or 0:,} accepted.",
            )
        return bool(won)

    def _stop_open_days(self) -> None:
        self.days.filter(status__in=[BackfillDay.Status.PENDING, BackfillDay.Status.RUNNING]).update(
            status=BackfillDay.Status.STOPPED, claim_token=None
        )

    def claim_invalidation(self) -> bool:
        """Exactly one caller invalidates reports once the plan ended."""
        won = BackfillPlan.objects.filter(
            pk=self.pk, status__in=self.FINISHED_STATUSES, invalidation=self.Invalidation.NONE
        ).update(invalidation=self.Invalidation.PENDING)
        return bool(won)

    def record_invalidation(self, status: str, message: str) -> None:
        BackfillPlan.objects.filter(pk=self.pk).update(
            invalidation=status, invalidation_message=message, invalidated_at=timezone.now()
        )
        self.refresh_from_db(fields=["invalidation", "invalidation_message", "invalidated_at"])

    @transaction.atomic
    def clone(self, by=None) -> BackfillPlan:
        """A new draft with the same settings and a fresh seed (the same seed would send
        the same visitors with the same times again)."""
        copy = BackfillPlan.objects.create(
            preset=self.preset,
            preset_name=self.preset.name if self.preset else self.preset_name,
            profile=PresetSnapshot.of(self.preset).as_json() if self.preset else self.profile,
            start_date=self.start_date,
            end_date=self.end_date,
            visits_per_day=self.visits_per_day,
            daily_cap=self.daily_cap,
            total_cap=self.total_cap,
            seed=new_seed(),
            max_requests_per_second=self.max_requests_per_second,
            batch_size=self.batch_size,
            requests_in_flight=self.requests_in_flight,
            parallel_days=self.parallel_days,
            created_by=by if getattr(by, "pk", None) else None,
            cloned_from=self,
        )
        copy.targets.set(self.targets.all())
        copy.log(
            BackfillLog.Level.INFO,
            f"Cloned from plan {self.pk} by {actor(by)}; new seed {copy.seed} (plan {self.pk} used {self.seed}).",
        )
        return copy

    # --- days and workers -------------------------------------------------------------

    def next_days(self) -> list[BackfillDay]:
        """For every target and lane whose days are not all done: its oldest unfinished
        day, if nothing of the lane is held by a live worker. What to enqueue now."""
        if self.status != self.Status.RUNNING:
            return []
        chosen: dict[tuple[int, int], BackfillDay] = {}
        busy: set[tuple[int, int]] = set()
        now = timezone.now()
        for day in self.days.exclude(status=BackfillDay.Status.DONE).order_by("target_id", "lane", "day"):
            key = (day.target_id, day.lane)
            if day.status == BackfillDay.Status.RUNNING and not day.holder_is_gone(now):
                busy.add(key)
            if key not in chosen:
                chosen[key] = day
        return [day for key, day in chosen.items() if key not in busy and day.status != BackfillDay.Status.FAILED]

    def enqueue_next_in_lane(self, day: BackfillDay) -> int | None:
        """After ``day`` is done: hand its lane's next day to the workers (the chain)."""
        from backfill.tasks import enqueue_day

        if self.status != self.Status.RUNNING:
            return None
        following = (
            self.days.filter(target_id=day.target_id, lane=day.lane, day__gt=day.day, status=BackfillDay.Status.PENDING)
            .order_by("day")
            .values_list("pk", flat=True)
            .first()
        )
        if following is not None:
            transaction.on_commit(lambda: enqueue_day(following))
        return following

    def enqueue_next_days(self) -> list[int]:
        """Hand the next day of every free lane to the workers (after commit)."""
        from backfill.tasks import enqueue_day

        ids = [day.pk for day in self.next_days()]
        for day_id in ids:
            transaction.on_commit(partial(enqueue_day, day_id))
        return ids

    def resume(self, by=None) -> int:
        """Re-enqueue the lanes of a running plan whose worker is gone (killed, restarted).
        Returns how many days were handed to the workers."""
        ids = self.enqueue_next_days()
        if ids:
            self.log(
                BackfillLog.Level.WARNING, f"Resumed by {actor(by)}: {len(ids)} day(s) handed to the workers again."
            )
        return len(ids)

    def log(self, level: str, message: str, *, target: Target | None = None, day: date | None = None) -> BackfillLog:
        return BackfillLog.objects.create(plan=self, level=level, message=message, target=target, day=day)


class BackfillDay(models.Model):
    """One target's local day of a confirmed plan, and how far it got.

    ``visits_done`` is the checkpoint: visits acknowledged by Matomo, in start order; a
    resumed day regenerates the stream with ``skip=visits_done``. ``in_flight_visits`` is
    the size of the batch that was on the wire at the last checkpoint: if its worker died,
    that batch may or may not have been recorded, and is sent again (the documented
    bound: at most one batch per worker repeated)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Sending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        STOPPED = "stopped", "Not sent (plan ended)"

    plan = models.ForeignKey(BackfillPlan, on_delete=models.CASCADE, related_name="days")
    target = models.ForeignKey(Target, on_delete=models.PROTECT, related_name="backfill_days")
    day = models.DateField()
    lane = models.PositiveSmallIntegerField(default=0)
    timezone = models.CharField(max_length=64, help_text="The site's time zone at confirmation.")
    planned_visits = models.PositiveIntegerField()

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    visits_done = models.PositiveIntegerField(default=0)
    in_flight_visits = models.PositiveIntegerField(default=0)
    hits_sent = models.PositiveBigIntegerField(default=0)
    hits_accepted = models.PositiveBigIntegerField(default=0)
    hits_invalid = models.PositiveBigIntegerField(default=0)
    hits_failed = models.PositiveBigIntegerField(default=0)
    hits_resent = models.PositiveBigIntegerField(
        default=0, help_text="Hits sent a second time after an interruption (at most one batch each time)."
    )
    active_seconds = models.FloatField(default=0.0, help_text="Time spent sending this day (for the ETA).")

    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    worker = models.CharField(max_length=255, blank=True, help_text="host:pid of the worker that holds or held it.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["plan", "target__name", "day"]
        constraints = [
            models.UniqueConstraint(fields=["plan", "target", "day"], name="backfill_day_unique"),
        ]
        indexes = [
            # Progress aggregates and "open days of this plan" (next_days, stalled).
            models.Index(fields=["plan", "status"], name="backfill_day_plan_status_idx"),
            # The lane-order guard in claim(): earlier days of the same target and lane.
            models.Index(fields=["plan", "target", "lane", "day"], name="backfill_day_lane_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.day} ({self.get_status_display().lower()})"

    @property
    def hits_per_visit(self) -> float | None:
        return self.hits_sent / self.visits_done if self.visits_done else None

    @property
    def percent_done(self) -> float:
        return 100.0 * self.visits_done / self.planned_visits if self.planned_visits else 100.0

    def holder_is_gone(self, now=None) -> bool:
        """A running day whose worker stopped writing heartbeats, or is a dead process
        of this host."""
        if self.status != self.Status.RUNNING:
            return False
        now = now or timezone.now()
        if self.heartbeat_at is None or now - self.heartbeat_at > STALE_AFTER:
            return True
        return _pid_is_gone(self.worker)

    @classmethod
    def claim(cls, day_id: int, worker: str | None = None) -> tuple[BackfillDay, uuid.UUID] | None:
        """pending (or held by a gone worker) -> running for exactly one caller, and only
        when the plan runs and every earlier day of the same target and lane is done
        (strict date order per lane). Returns the day and its claim token, or None."""
        worker = worker or worker_label()
        day = cls.objects.filter(pk=day_id).first()
        if day is None:
            return None
        now = timezone.now()
        free = Q(status=cls.Status.PENDING)
        if day.holder_is_gone(now):
            # Compare-and-swap on what we saw, so two takers cannot both win.
            free |= Q(status=cls.Status.RUNNING, worker=day.worker, heartbeat_at=day.heartbeat_at)
        earlier_open = cls.objects.filter(
            plan=OuterRef("plan"), target=OuterRef("target"), lane=OuterRef("lane"), day__lt=OuterRef("day")
        ).exclude(status=cls.Status.DONE)
        token = uuid.uuid4()
        won = (
            cls.objects.filter(free, pk=day_id, plan__status=BackfillPlan.Status.RUNNING)
            .filter(~Exists(earlier_open))
            .update(
                status=cls.Status.RUNNING,
                claim_token=token,
                worker=worker,
                heartbeat_at=now,
                started_at=day.started_at or now,
            )
        )
        if not won:
            return None
        day.refresh_from_db()
        return day, token

    def fenced(self, token: uuid.UUID) -> models.QuerySet:
        """This day, only while ``token`` still holds it (cancel/fail/takeover clear it)."""
        return BackfillDay.objects.filter(pk=self.pk, claim_token=token, status=self.Status.RUNNING)


class BackfillLog(LogEntry):
    """Notable events of a plan: confirmation, start, first error of each kind, resume,
    failure, invalidation. Never one row per hit or batch."""

    plan = models.ForeignKey(BackfillPlan, on_delete=models.CASCADE, related_name="logs")
    target = models.ForeignKey(Target, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    day = models.DateField(null=True, blank=True)

    class Meta(LogEntry.Meta):
        indexes = [models.Index(fields=["plan", "created_at"], name="backfill_log_plan_created_idx")]
