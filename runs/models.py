"""Live runs: what was asked for, its lifecycle, and what happened to every hit.

The lifecycle is queued -> running -> (stopping) -> completed | stopped | failed. Every
transition is a conditional UPDATE on the current status, so two processes (a re-delivered
task, the dashboard and a loader, the reaper) can never both win.

A run has ``shard_count`` shards (``RunShard``, 1 by default): each is claimed by its own
loader process and sends a disjoint slice of the run's visits (runs.loader). The run is
running while any shard is, and ends when every shard has ended; its ``stats`` are the
exact merge of its shards' (``merge_stats``), written with every shard's report.

Loaders are fenced: each claim of a shard gets a new ``claim_token`` (and ``claim_epoch``),
and every write of a loader (``report``, ``finish_claimed``, ``fail_claimed``,
``hand_back``) is conditional on its token. A loader that was frozen, shown lost and
superseded by a resume writes nothing more and stops sending at its next ``check_claim``.
These are ``RunShard`` methods; ``Run.shard_of`` finds the shard a token claimed.
"""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connections, models, router, transaction
from django.utils import timezone

from presets.models import Preset, PresetSnapshot
from targets.models import Target
from trafficinator import thresholds as criteria
from trafficinator.lifecycle import LogEntry, actor, transition
from trafficinator.sending.telemetry import RunStats, RunTotals, merge_stats

# A loader flushes every ~2 s; missing this many seconds of heartbeats means it is gone
# (settings.RUN_HEARTBEAT_STALE_SECONDS, 30 s unless set).
HEARTBEAT_STALE_AFTER = timedelta(seconds=settings.RUN_HEARTBEAT_STALE_SECONDS)
# After this long without a heartbeat the reaper closes the run as failed.
REAP_AFTER = timedelta(minutes=15)
# Bounds of what a run may ask for (the form, the command and CHECK constraints agree).
MAX_VISITS_PER_DAY = 50_000_000
MAX_VISITS = 1_000_000_000
MAX_TARGET_WEIGHT = 1_000_000
MAX_BATCH_SIZE = 5000
# At most this many loader processes (shards) per run (README "Sharded runs").
MAX_SHARDS = 64
# The traffic model's ceiling for one target's live stream (trafficinator.traffic.profile);
# every shard runs its targets' whole arrival schedule, so sharding does not lift it.
MAX_VISITS_PER_DAY_PER_TARGET = 100_000_000


def stored_stats(stats: RunStats | dict[str, Any]) -> RunStats:
    """A run's or shard's ``stats`` field as a ``RunStats``. The field holds ``{}`` (its
    default) until the loader's first report; every write after that is a whole snapshot
    (``RunTelemetry.snapshot`` or ``merge_stats``), so only these two keys can be missing.
    Keys inside them can be missing too, in runs recorded by a loader older than the key
    (TargetStats is total=False), which is why readers ``.get()`` them with a default."""
    return {"totals": stats.get("totals", {}), "targets": stats.get("targets", {})}


def _hours_to_seconds(hours: float | None) -> int | None:
    return round(hours * 3600) if hours else None


class RunQuerySet(models.QuerySet["Run"]):
    @transaction.atomic
    def create_run(
        self,
        *,
        preset: Preset,
        targets: list[Target] | list[tuple[Target, float, int | None]],
        created_by=None,
        seed: int | None = None,
        visits_per_day: int | None = None,
        duration_seconds: int | None = None,
        max_visits: int | None = None,
        daily_cap: int | None = None,
        bulk: bool = False,
        batch_size: int = 100,
        thresholds: list[str] | None = None,
        abort_on_fail: bool = False,
        shards: int = 1,
        enqueue: bool = False,
    ) -> Run:
        """Create a queued run: the preset is snapshotted, so editing it later does not
        change this run. ``targets`` are targets, or (target, weight, visits_per_day).
        ``thresholds`` None takes the preset's; [] means none. With ``enqueue`` a loader
        for each shard goes to the loader workers once the transaction commits (the pages
        and the API); the command and the benchmarks start their loaders themselves."""
        entries = [item if isinstance(item, tuple) else (item, 1.0, None) for item in targets]
        if not entries:
            raise ValidationError({"targets": "Choose at least one target."})
        disabled = [target.name for target, _, _ in entries if not target.enabled]
        if disabled:
            raise ValidationError({"targets": f"Disabled target(s): {', '.join(disabled)}. Enable them first."})
        if len({target.pk for target, _, _ in entries}) != len(entries):
            raise ValidationError({"targets": "A target is listed twice."})
        for target, weight, rate in entries:
            problem = RunTarget.share_problem(weight, rate)
            if problem:
                raise ValidationError({"targets": f"{target.name}: {problem}"})
        if all((weight or 0) <= 0 and not rate for _, weight, rate in entries):
            raise ValidationError({"targets": "Give at least one target a weight above 0 or its own visits per day."})
        parsed = check_thresholds(
            preset.threshold_lines() if thresholds is None else thresholds, [target.name for target, _, _ in entries]
        )
        # Asked to stop early, a run that nothing can stop early would silently run to its end.
        problem = criteria.early_stop_problem(parsed) if abort_on_fail else ""
        if problem:
            raise ValidationError({"abort_on_fail": problem})
        texts = [threshold.text for threshold in parsed]
        run = self.model(
            preset=preset,
            preset_name=preset.name,
            profile=PresetSnapshot.of(preset).as_json(),
            seed=seed if seed is not None else secrets.randbelow(2**31),
            visits_per_day=visits_per_day or preset.visits_per_day,
            duration_seconds=duration_seconds
            if duration_seconds is not None
            else _hours_to_seconds(preset.auto_stop_after_hours),
            max_visits=max_visits if max_visits is not None else preset.auto_stop_after_visits,
            daily_cap=daily_cap if daily_cap is not None else preset.daily_cap,
            bulk=bulk,
            batch_size=batch_size,
            thresholds=texts,
            abort_on_fail=abort_on_fail,
            shard_count=shards,
            created_by=created_by,
        )
        run.full_clean()
        run.save()
        run_targets = []
        for target, weight, rate in entries:
            # With an explicit rate the weight does not apply; store the neutral 1.
            run_targets.append(
                RunTarget.objects.create(run=run, target=target, weight=1.0 if rate else weight, visits_per_day=rate)
            )
        problem = run.ceiling_problem(run_targets)
        if problem:
            raise ValidationError({"shards": problem})
        RunShard.objects.bulk_create(RunShard(run=run, index=index) for index in range(run.shard_count))
        run.log(
            RunLog.Level.INFO,
            f"Created by {actor(created_by)}: preset {preset.name}, {run.visits_per_day:,} visits/day, "
            f"{len(entries)} target(s), seed {run.seed}{', bulk' if bulk else ''}"
            + (f", {run.shard_count} shards" if run.shard_count > 1 else "")
            + (f"; thresholds: {'; '.join(texts)}" if texts else "")
            + ("; stops as soon as one has certainly failed." if texts and abort_on_fail else "."),
        )
        if enqueue:
            enqueue_run(run)
        return run

    def active(self) -> RunQuerySet:
        return self.filter(status__in=Run.ACTIVE_STATUSES)

    def finished(self) -> RunQuerySet:
        return self.exclude(status__in=Run.ACTIVE_STATUSES)

    def stale(self, older_than: timedelta = HEARTBEAT_STALE_AFTER) -> RunQuerySet:
        """Running runs with a shard whose loader stopped reporting (crashed, killed,
        machine gone)."""
        cutoff = timezone.now() - older_than
        lost = RunShard.objects.filter(status__in=RunShard.CLAIMED_STATUSES, heartbeat_at__lt=cutoff)
        return self.filter(status__in=[Run.Status.RUNNING, Run.Status.STOPPING], pk__in=lost.values("run_id"))


def check_thresholds(lines: list[str] | str, target_names: list[str]) -> list[criteria.Threshold]:
    """Parse thresholds for a run on ``target_names``; a ValidationError on "thresholds"
    names the first bad one and where it goes wrong (its ``__cause__``: the ThresholdError)."""
    try:
        parsed = criteria.parse_many(lines)
    except criteria.ThresholdError as error:
        # Chained: run_traffic shows the error's pointer (a caret under the character).
        raise ValidationError({"thresholds": str(error)}) from error
    for threshold in parsed:
        if threshold.scope not in (None, criteria.EVERY_TARGET, *target_names):
            raise ValidationError(
                {
                    "thresholds": f"“{threshold.text}”: the run has no target named “{threshold.scope}” "
                    f"(its targets: {', '.join(target_names)}; * means every target)."
                }
            )
    return parsed


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        STOPPING = "stopping", "Stopping"
        COMPLETED = "completed", "Completed"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    class Outcome(models.TextChoices):
        NONE = "", "No thresholds"
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING, Status.STOPPING)

    preset = models.ForeignKey(Preset, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    preset_name = models.CharField(max_length=100)
    profile = models.JSONField(help_text="The preset's knobs as they were when the run was created.")
    seed = models.BigIntegerField()
    bulk = models.BooleanField(default=False, help_text="Send whole visits in bulk batches.")
    batch_size = models.PositiveIntegerField(
        default=100, validators=[MinValueValidator(1), MaxValueValidator(MAX_BATCH_SIZE)]
    )
    visits_per_day = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_VISITS_PER_DAY)],
        help_text="Total rate over all targets (the preset's unless overridden).",
    )
    # Bounded by settings.MAX_RUN_HOURS in clean() (a setting, so not a field validator
    # that would make migrations depend on the environment).
    duration_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Stop after this long."
    )
    max_visits = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_VISITS)],
        help_text="Stop after this many visits.",
    )
    daily_cap = models.PositiveIntegerField(null=True, blank=True, help_text="Pause after this many visits a day.")
    thresholds = models.JSONField(
        default=list, blank=True, help_text='Pass/fail criteria, e.g. "p95_ms < 500" (README “Thresholds”).'
    )
    abort_on_fail = models.BooleanField(
        default=False,
        help_text="Stop as soon as a threshold has certainly failed (a count past its limit), not at the end.",
    )

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    stop_requested = models.BooleanField(default=False)
    end_reason = models.TextField(blank=True)
    shard_count = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_SHARDS)],
        help_text="Loader processes that share the run's visits (README “Sharded runs”).",
    )

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # The merge of the shards' latest telemetry snapshots, written with each shard's
    # report every ~2 s: {"totals": {...}, "targets": {"<run_target_id>": {...}}}.
    # Never one row per hit.
    stats = models.JSONField(default=dict, blank=True)
    # The last comparison with Matomo's own counts (runs.verification), or None.
    verification = models.JSONField(null=True, blank=True, editable=False)
    # Set once when the run ends: passed/failed, and one result per threshold and scope
    # ({"threshold", "scope", "metric", "op", "limit", "value", "passed"}).
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.NONE, blank=True)
    threshold_results = models.JSONField(default=list, blank=True)
    # Set when abort_on_fail stopped the run: it ends "stopped" with outcome failed, and
    # run_traffic exits 3 (thresholds failed), not 130 (interrupted).
    stopped_by_thresholds = models.BooleanField(default=False, editable=False)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        permissions = [("run_traffic", "Can start and stop traffic runs")]
        indexes = [
            # The dashboard's "active runs" and the reaper's stale-run query.
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat_idx"),
        ]
        constraints = [
            # The dashboard divides by and formats the rate: it is never 0 or absurd.
            models.CheckConstraint(
                condition=models.Q(visits_per_day__gte=1, visits_per_day__lte=MAX_VISITS_PER_DAY),
                name="run_visits_per_day_range",
            ),
            models.CheckConstraint(
                condition=models.Q(shard_count__gte=1, shard_count__lte=MAX_SHARDS), name="run_shard_count_range"
            ),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.preset_name})"

    def clean(self) -> None:
        super().clean()
        limit = settings.MAX_RUN_HOURS * 3600
        if self.duration_seconds is not None and self.duration_seconds > limit:
            raise ValidationError(
                {"duration_seconds": f"At most {settings.MAX_RUN_HOURS} hours (TRAFFICINATOR_MAX_RUN_HOURS)."}
            )

    # --- derived state -------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    def shard_list(self) -> list[RunShard]:
        """The shards in order (uses the caller's prefetch_related("shards") if any)."""
        return sorted(self.shards.all(), key=lambda shard: shard.index)

    def lost_shards(self, now=None) -> list[RunShard]:
        if self.status not in (self.Status.RUNNING, self.Status.STOPPING):
            return []
        now = now or timezone.now()
        return [shard for shard in self.shard_list() if shard.is_lost(now)]

    def is_lost(self, now=None) -> bool:
        """A running run with a shard whose loader has not reported for a while."""
        return bool(self.lost_shards(now))

    def ceiling_problem(self, run_targets: list[RunTarget]) -> str:
        """Why a target's live stream would exceed the traffic model's ceiling, or ""."""
        for rt in run_targets:
            rate = rt.share_of(self, run_targets)
            if rate > MAX_VISITS_PER_DAY_PER_TARGET:
                return (
                    f"{rt.target.name}: {rate:,} visits/day exceeds the live stream's ceiling of "
                    f"{MAX_VISITS_PER_DAY_PER_TARGET:,} visits/day per target. Every shard generates its targets' "
                    "whole schedule, so more shards do not lift it; split the rate over several targets."
                )
        return ""

    def can_stop(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING) and not self.stop_requested

    def elapsed(self) -> timedelta | None:
        if not self.started_at:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    @property
    def snapshot(self) -> PresetSnapshot:
        """The preset's knobs as they were when the run was created."""
        return PresetSnapshot(self.profile)

    @property
    def stats_snapshot(self) -> RunStats:
        """``stats`` as a ``RunStats`` (its shards' merged figures)."""
        return stored_stats(self.stats)

    @property
    def totals(self) -> RunTotals:
        return self.stats_snapshot["totals"]

    def measure(self, visits_per_day: float | None = None) -> criteria.Measure:
        """How long the run ran and how many visits its rate asked for in that time."""
        elapsed = self.elapsed()
        seconds = elapsed.total_seconds() if elapsed else None
        rate = self.visits_per_day if visits_per_day is None else visits_per_day
        asked = rate * seconds / 86_400 if seconds else None
        if asked is not None and self.max_visits and visits_per_day is None:
            asked = min(asked, self.max_visits)
        return criteria.Measure(elapsed_seconds=seconds, asked_visits=asked)

    def threshold_scopes(self) -> tuple[criteria.Scope, list[criteria.Scope]]:
        """The run's figures and each target's, as thresholds read them."""
        per_target = self.stats_snapshot["targets"]
        # .all() uses the callers' prefetch_related("run_targets__target") when there is one.
        siblings = list(self.run_targets.all())
        scopes = [
            criteria.Scope(rt.target.name, per_target.get(str(rt.pk), {}), self.measure(rt.share_of(self, siblings)))
            for rt in siblings
        ]
        return criteria.Scope(None, self.totals, self.measure()), scopes

    def evaluate_thresholds(self) -> str:
        """Judge the final figures against the thresholds, record the outcome and log it.
        Returns the outcome ("" when the run has none)."""
        if not self.thresholds:
            return self.Outcome.NONE
        run_scope, target_scopes = self.threshold_scopes()
        results = criteria.evaluate(criteria.parse_many(self.thresholds), run_scope, target_scopes)
        failed = [result for result in results if not result["passed"]]
        outcome = self.Outcome.FAILED if failed else self.Outcome.PASSED
        Run.objects.filter(pk=self.pk).update(outcome=outcome, threshold_results=results)
        self.outcome, self.threshold_results = outcome, results
        if failed:
            self.log(RunLog.Level.ERROR, f"Thresholds failed: {'; '.join(map(criteria.describe_result, failed))}.")
        else:
            self.log(RunLog.Level.INFO, f"Thresholds passed: {'; '.join(map(criteria.describe_result, results))}.")
        return outcome

    @property
    def failed_thresholds(self) -> list[dict]:
        return [result for result in self.threshold_results or [] if not result.get("passed")]

    def failed_threshold_labels(self) -> list[str]:
        return [criteria.describe_result(result) for result in self.failed_thresholds]

    @property
    def daily_curve(self) -> str:
        """The snapshot's daily curve, as the preset form names it ("" if unknown)."""
        value = self.profile.get("daily_curve") if isinstance(self.profile, dict) else None
        return Preset.DailyCurve(value).label if value in Preset.DailyCurve.values else ""

    # --- transitions (conditional updates) -------------------------------------------

    def _transition(self, from_statuses, **changes) -> bool:
        return transition(self, from_statuses, **changes)

    def claim(self, *, pid: int, host: str, shard: int | None = None) -> uuid.UUID | None:
        """Claim a queued shard (``shard``, or the first one queued) for one caller and
        return its claim token, or None. The run goes queued -> running with its first
        claim. Every claim gets a new token and the shard's next epoch, which fence the
        loader's writes. The claimed shard is left in ``self.claimed_shard``."""
        token = uuid.uuid4()
        now = timezone.now()
        with transaction.atomic():
            # The run row first, as every shard write does (one lock order: no deadlock).
            open_run = (
                Run.objects.select_for_update()
                .filter(pk=self.pk, status__in=[self.Status.QUEUED, self.Status.RUNNING], stop_requested=False)
                .values_list("pk", flat=True)
                .first()
            )
            if open_run is None:
                return None
            queued = RunShard.objects.filter(run_id=self.pk, status=RunShard.Status.QUEUED)
            if shard is not None:
                queued = queued.filter(index=shard)
            chosen = queued.order_by("index").values_list("pk", flat=True).first()
            if chosen is None or not RunShard.objects.filter(pk=chosen, status=RunShard.Status.QUEUED).update(
                status=RunShard.Status.RUNNING,
                claim_token=token,
                claim_epoch=models.F("claim_epoch") + 1,
                loader_pid=pid,
                loader_host=host,
                started_at=now,
                heartbeat_at=now,
                end_reason="",
            ):
                return None
            Run.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
                status=self.Status.RUNNING, started_at=now, heartbeat_at=now
            )
        self.refresh_from_db()
        self.claimed_shard = RunShard.objects.get(pk=chosen)
        return token

    @staticmethod
    def stop_request_wording(by=None) -> tuple[str, str]:
        """(the log line, the end reason) of a stop asked for by ``by``: one wording from a
        page, the admin, the API and run_traffic's Ctrl-C, whichever process writes it."""
        who = actor(by)
        return f"Stop requested by {who}.", f"Stopped by {who}."

    def request_stop(self, reason: str = "", *, by=None) -> bool:
        """A queued run stops at once; a running one is asked to stop (every shard's
        loader sees it within ~1 s and finishes as 'stopped'; shards still queued stop at
        once). Logs who asked."""
        line, default_reason = self.stop_request_wording(by)
        reason = reason or default_reason
        stopped = self._transition(
            [self.Status.QUEUED],
            status=self.Status.STOPPED,
            stop_requested=True,
            end_reason=reason,
            finished_at=timezone.now(),
        ) or self._transition(
            [self.Status.RUNNING], status=self.Status.STOPPING, stop_requested=True, end_reason=reason
        )
        if stopped:
            self.log(RunLog.Level.INFO, line)
            self._after_stop_request(reason)
        return stopped

    def _after_stop_request(self, reason: str) -> None:
        RunShard.objects.filter(run_id=self.pk, status=RunShard.Status.QUEUED).update(
            status=RunShard.Status.STOPPED, end_reason=reason, finished_at=timezone.now()
        )
        if self.status == self.Status.STOPPING:
            self.settle()  # every claimed shard may have ended already

    @cached_property
    def can_stop_early(self) -> bool:
        """Whether ``abort_on_fail`` can ever stop this run: one of its thresholds can fail
        before the end. A run's thresholds are fixed once a loader has it, so a loader
        works this out once (its shard's ``run``), not at every report."""
        return self.abort_on_fail and any(map(criteria.can_fail_early, criteria.parse_many(self.thresholds)))

    def stop_if_thresholds_certainly_failed(self) -> bool:
        """With ``abort_on_fail``: once the run's latest figures show a threshold failed
        for good (criteria.certainly_failed: a growing count past its limit), stop the run
        as a user's stop does, instead of sending on until the end. The thresholds are
        still judged at the end, on the final counters. Returns whether this call stopped it."""
        if not self.can_stop_early or self.status != self.Status.RUNNING:
            return False
        run_scope, target_scopes = self.threshold_scopes()
        failed = criteria.certainly_failed(criteria.parse_many(self.thresholds), run_scope, target_scopes)
        if not failed:
            return False
        reason = f"Stopped early: threshold certainly failed: {'; '.join(map(criteria.describe_result, failed))}."
        if not self._transition(
            [self.Status.RUNNING],
            status=self.Status.STOPPING,
            stop_requested=True,
            end_reason=reason,
            stopped_by_thresholds=True,
        ):
            return False
        self.log(RunLog.Level.ERROR, reason)
        self._after_stop_request(reason)
        return True

    def finish(self, status: Run.Status, reason: str, stats: RunStats | None = None) -> bool:
        """running/stopping -> completed | stopped | failed, with final counters, for the
        whole run (its shards still open end with it); then the thresholds are judged."""
        assert status in (self.Status.COMPLETED, self.Status.STOPPED, self.Status.FAILED)
        changes: dict[str, Any] = {"status": status, "finished_at": timezone.now(), "heartbeat_at": timezone.now()}
        if stats is not None:
            changes["stats"] = stats
        current = Run.objects.filter(pk=self.pk).values_list("end_reason", "stop_requested").first()
        # A user's stop request keeps its own reason ("Stopped by ...").
        if not (current and current[1] and current[0]):
            changes["end_reason"] = reason
        finished = self._transition([self.Status.RUNNING, self.Status.STOPPING], **changes)
        if finished:
            self._close_open_shards(status, self.end_reason)
            self.evaluate_thresholds()
        return finished

    def fail(self, reason: str) -> bool:
        changes = {"status": self.Status.FAILED, "finished_at": timezone.now(), "end_reason": reason}
        failed = self._transition([self.Status.QUEUED, self.Status.RUNNING, self.Status.STOPPING], **changes)
        if failed:  # their loaders find their claim gone at the next check and stop
            self._close_open_shards(self.Status.FAILED, reason)
        return failed

    def _close_open_shards(self, status: str, reason: str) -> None:
        RunShard.objects.filter(run_id=self.pk, status__in=RunShard.OPEN_STATUSES).update(
            status=status, end_reason=reason, finished_at=timezone.now()
        )

    def settle(self, *, judge: bool = True) -> bool:
        """Once every shard has ended, the run ends too: failed if a shard failed, stopped
        if one stopped (or the user asked), else completed; its thresholds are judged
        then (``judge``). Returns whether this call ended the run."""
        with transaction.atomic():
            if not Run.objects.select_for_update().filter(pk=self.pk, status__in=[*self.ACTIVE_STATUSES]).exists():
                return False
            shards = list(RunShard.objects.filter(run_id=self.pk).order_by("index"))
            if not shards or any(shard.status in RunShard.OPEN_STATUSES for shard in shards):
                return False
            statuses = {shard.status for shard in shards}
            if self.Status.FAILED in statuses:
                status = self.Status.FAILED
            elif self.Status.STOPPED in statuses:
                status = self.Status.STOPPED
            else:
                status = self.Status.COMPLETED
            reasons = [shard.end_reason for shard in shards if shard.end_reason]
            if len(set(reasons)) <= 1:
                reason = reasons[0] if reasons else "Finished."
            else:
                reason = " ".join(f"Shard {shard.label}: {shard.end_reason}" for shard in shards if shard.end_reason)
            current = Run.objects.filter(pk=self.pk).values_list("end_reason", "stop_requested").first()
            changes: dict[str, Any] = {"status": status, "finished_at": timezone.now()}
            if not (current and current[1] and current[0]):  # a user's stop request keeps its own reason
                changes["end_reason"] = reason
            ended = Run.objects.filter(pk=self.pk, status__in=[*self.ACTIVE_STATUSES]).update(**changes)
        if ended:
            self.refresh_from_db()
            if judge:
                self.evaluate_thresholds()  # the final counters are in: judge them once
        return bool(ended)

    # --- a loader's claim: its fenced writes are its shard's (RunShard) --------------

    def shard_of(self, token: uuid.UUID) -> RunShard:
        """The shard ``token`` claimed (an unsaved stand-in when none did: every fenced
        write of it then refuses)."""
        return RunShard.objects.filter(run_id=self.pk, claim_token=token).first() or RunShard(run=self, index=-1)

    def close_lost(self, reason: str = "", *, by=None) -> bool:
        """A lost run ends as failed (all its shards), keeping its figures so far; logged
        with who closed it."""
        if not self.is_lost():
            return False
        reason = reason or f"Closed by {actor(by)} after the loader was lost."
        if not self.fail(reason):
            return False
        self.log(RunLog.Level.WARNING, reason)
        return True

    def resume(self, *, by=None) -> bool:
        """The lost shards go back to the queue, the healthy ones carry on untouched; the
        new loader of a shard continues its counters. A run whose every shard was lost
        is queued again."""
        lost = self.lost_shards()
        if not lost:
            return False
        cutoff = timezone.now() - HEARTBEAT_STALE_AFTER
        resumed: list[RunShard] = []
        with transaction.atomic():
            Run.objects.select_for_update().filter(pk=self.pk).values_list("pk", flat=True).first()
            for shard in lost:
                if RunShard.objects.filter(
                    pk=shard.pk, status__in=RunShard.CLAIMED_STATUSES, heartbeat_at__lt=cutoff
                ).update(status=RunShard.Status.QUEUED, claim_token=None):
                    resumed.append(shard)
            if not resumed:
                return False
            if not RunShard.objects.filter(run_id=self.pk, status__in=RunShard.CLAIMED_STATUSES).exists():
                # Every trace of a stop goes, the thresholds' too: a run that still fails one
                # for good is stopped again (and flagged again) at its new loader's first report.
                Run.objects.filter(pk=self.pk, status__in=[self.Status.RUNNING, self.Status.STOPPING]).update(
                    status=self.Status.QUEUED, stop_requested=False, end_reason="", stopped_by_thresholds=False
                )
            who = actor(by)
            if self.shard_count == 1:
                self.log(RunLog.Level.WARNING, f"Resumed by {who} after the loader was lost.")
            else:
                labels = ", ".join(shard.label for shard in resumed)
                self.log(RunLog.Level.WARNING, f"Shard {labels} resumed by {who} after its loader was lost.")
            for shard in resumed:
                enqueue_shard(shard)
        self.refresh_from_db()
        return True

    @property
    def is_editable(self) -> bool:
        """Only a queued run's request can change; once a loader has it, it is history."""
        return self.status == self.Status.QUEUED

    def heartbeat(self, stats: RunStats) -> bool:
        """An unfenced report (simulated loaders in tests): stats and heartbeat of the run
        and its claimed shards. Returns whether a stop was requested."""
        now = timezone.now()
        Run.objects.filter(pk=self.pk).update(stats=stats, heartbeat_at=now)
        RunShard.objects.filter(run_id=self.pk, status__in=RunShard.CLAIMED_STATUSES).update(heartbeat_at=now)
        return bool(Run.objects.filter(pk=self.pk).values_list("stop_requested", flat=True).first())

    def log(self, level: str, message: str, target: Target | None = None) -> RunLog:
        return RunLog.objects.create(run=self, level=level, message=message, target=target)


class RunTarget(models.Model):
    """One target of a run and its share of the traffic."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="run_targets")
    target = models.ForeignKey(Target, on_delete=models.PROTECT, related_name="run_targets")
    weight = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.000001), MaxValueValidator(MAX_TARGET_WEIGHT)]
    )
    visits_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_VISITS_PER_DAY)],
        help_text="Explicit rate for this target; overrides the weight.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "target"], name="run_target_unique"),
            # Pages and the loader divide by weights: a range check also refuses NaN and
            # infinity (NaN and inf compare false on PostgreSQL; SQLite stores NaN as NULL).
            models.CheckConstraint(
                condition=models.Q(weight__gt=0, weight__lte=MAX_TARGET_WEIGHT),
                name="run_target_weight_range",
            ),
            models.CheckConstraint(
                condition=models.Q(visits_per_day__isnull=True)
                | models.Q(visits_per_day__gte=1, visits_per_day__lte=MAX_VISITS_PER_DAY),
                name="run_target_visits_per_day_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} → {self.target}"

    @staticmethod
    def share_problem(weight: float | None, visits_per_day: int | None) -> str:
        """Why a target's weight or explicit rate cannot be stored, or ""."""
        if visits_per_day is not None:
            if isinstance(visits_per_day, bool) or not 1 <= visits_per_day <= MAX_VISITS_PER_DAY:
                return f"the rate must be 1 to {MAX_VISITS_PER_DAY:,} visits per day."
            return ""  # an explicit rate: the weight does not apply
        if weight is None or not math.isfinite(weight) or not 0 < weight <= MAX_TARGET_WEIGHT:
            return f"give it a weight above 0 (at most {MAX_TARGET_WEIGHT:,}) or its own visits per day."
        return ""

    def share_of(self, run: Run, siblings: list[RunTarget]) -> int:
        """This target's visits per day: its explicit rate, or its weight's share of what
        the run's total leaves after explicit rates."""
        if self.visits_per_day:
            return self.visits_per_day
        explicit = sum(rt.visits_per_day or 0 for rt in siblings)
        weights = sum(rt.weight for rt in siblings if not rt.visits_per_day)
        # Rows written before the CHECK constraints existed may hold NaN or infinity:
        # show them as no share rather than fail the page.
        if not math.isfinite(weights) or not math.isfinite(self.weight or 0.0) or weights <= 0:
            return 0
        return max(0, round((run.visits_per_day - explicit) * self.weight / weights))


class RunShard(models.Model):
    """One loader's part of a run: a disjoint slice of its visits (runs.loader), claimed,
    fenced, reported and ended on its own. A run has ``shard_count`` of them."""

    Status = Run.Status
    OPEN_STATUSES = (Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.STOPPING)
    CLAIMED_STATUSES = (Run.Status.RUNNING, Run.Status.STOPPING)

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="shards")
    index = models.PositiveSmallIntegerField(help_text="0 to shard_count - 1: which slice of the visits it sends.")
    status = models.CharField(max_length=16, choices=Run.Status.choices, default=Run.Status.QUEUED)
    end_reason = models.TextField(blank=True)
    claim_token = models.UUIDField(null=True, blank=True, editable=False)
    claim_epoch = models.PositiveIntegerField(
        default=0, editable=False, help_text="How many times a loader claimed the shard (1 for the first loader)."
    )
    loader_pid = models.PositiveIntegerField(null=True, blank=True)
    loader_host = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # This shard's own telemetry snapshot (the shape of Run.stats), written with each report.
    stats = models.JSONField(default=dict, blank=True)
    # Where its visit streams stand, written with each report: {"key", "start",
    # "positions": {"<run_target_id>": next stream index}, "continue": bool}. A shard
    # handed back by a loader that was asked to exit continues exactly there.
    stream = models.JSONField(default=dict, blank=True, editable=False)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="run_shard_index_unique")]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="runshard_status_heartbeat_idx")]

    def __str__(self) -> str:
        return f"Run {self.run_id} shard {self.index + 1}"

    @property
    def label(self) -> str:
        """ "2/4": the shard's number (from 1) and how many the run has."""
        return f"{self.index + 1}/{self.run.shard_count}"

    def is_lost(self, now=None) -> bool:
        """A claimed shard whose loader has not reported for a while."""
        if self.status not in self.CLAIMED_STATUSES or self.heartbeat_at is None:
            return False
        return (now or timezone.now()) - self.heartbeat_at > HEARTBEAT_STALE_AFTER

    @property
    def stats_snapshot(self) -> RunStats:
        """``stats`` as a ``RunStats`` (this shard's loader's own figures)."""
        return stored_stats(self.stats)

    @property
    def hits_per_second(self) -> float:
        return self.stats_snapshot["totals"].get("hits_per_second", 0.0)

    # --- the loader's fenced writes (conditional on its claim token) -------------------

    def _claimed(self, token: uuid.UUID) -> models.QuerySet[RunShard]:
        return RunShard.objects.filter(pk=self.pk, claim_token=token, status__in=self.CLAIMED_STATUSES)

    @staticmethod
    def _lock_run(run_id: int) -> None:
        """Every shard write locks the run row first: shards of one run merge their
        figures one at a time, always in the same lock order."""
        Run.objects.select_for_update().filter(pk=run_id).values_list("pk", flat=True).first()

    def check_claim(self, token: uuid.UUID) -> tuple[bool, bool]:
        """(the claim is still ours, a stop was requested): one SELECT, never blocked by
        another process's write lock (MVCC on PostgreSQL, WAL on SQLite)."""
        if self.pk is None:
            return False, True
        # The loader's checker reads it several times a second: the SQL is built once per
        # shard (and database), then only executed.
        using = router.db_for_read(RunShard)
        cache: dict[str, tuple[str, tuple]] = self.__dict__.setdefault("_claim_sql", {})
        compiled = cache.get(using)
        if compiled is None:
            query = RunShard.objects.using(using).filter(pk=self.pk).order_by()
            compiled = cache[using] = query.values_list(
                "claim_token", "status", "run__stop_requested"
            ).query.sql_with_params()
        with connections[using].cursor() as cursor:
            cursor.execute(*compiled)
            row = cursor.fetchone()
        if row is None:
            return False, True
        claim_token = RunShard._meta.get_field("claim_token").to_python(row[0])
        owned = claim_token == token and row[1] in self.CLAIMED_STATUSES
        return owned, bool(row[2])

    def report(
        self,
        token: uuid.UUID,
        stats: RunStats,
        logs: Sequence[tuple[str, str, int | None]] = (),
        sample: dict | None = None,
        stream: dict | None = None,
    ) -> bool:
        """The loader's periodic write, fenced by its claim: its stats + heartbeat (and
        the run's merged figures), the run log entries (level, message, target id) and a
        chart row, in one transaction, or nothing at all when the claim was superseded.
        Returns whether the claim still held."""
        if self.pk is None:
            return False
        now = timezone.now()
        changes: dict[str, Any] = {"stats": stats, "heartbeat_at": now}
        if stream is not None:
            changes["stream"] = stream
        with transaction.atomic():
            if not self._write_claimed(token, changes, now):
                return False
            if logs:
                RunLog.objects.bulk_create(
                    RunLog(run_id=self.run_id, level=level, message=message, target_id=target_id)
                    for level, message, target_id in logs
                )
            if sample:
                RunSample.add(self.run_id, sample)
        if self.run.can_stop_early:
            # Every shard's figures are merged into the run now: judge what is certain, on
            # the fresh row and its targets read in one go (threshold_scopes uses them).
            targets = models.Prefetch("run_targets", queryset=RunTarget.objects.select_related("target"))
            Run.objects.prefetch_related(targets).get(pk=self.run_id).stop_if_thresholds_certainly_failed()
        return True

    def _write_claimed(self, token: uuid.UUID, changes: dict[str, Any], now) -> bool:
        """Inside the caller's transaction: the shard's ``changes`` while ``token`` holds
        its claim, then the run's merged figures; False (nothing written) otherwise. The
        run row's lock makes the shards of one run merge one at a time."""
        self._lock_run(self.run_id)
        if not self._claimed(token).update(**changes):
            return False
        self._merge_into_run(now)
        return True

    def _merge_into_run(self, now) -> None:
        shards = RunShard.objects.filter(run_id=self.run_id)
        parts = [stats for stats in shards.values_list("stats", flat=True) if stats]
        Run.objects.filter(pk=self.run_id).update(stats=merge_stats(parts), heartbeat_at=now)

    def finish_claimed(
        self, token: uuid.UUID, status: Run.Status, reason: str, stats: RunStats, stream: dict | None = None
    ) -> bool:
        """The shard ends (only while ``token`` still holds its claim); once every shard
        has, the run ends too and its thresholds are judged."""
        assert status in (Run.Status.COMPLETED, Run.Status.STOPPED, Run.Status.FAILED)
        if self.pk is None:
            return False
        now = timezone.now()
        changes: dict[str, Any] = {
            "status": status,
            "finished_at": now,
            "heartbeat_at": now,
            "stats": stats,
            "end_reason": reason,
        }
        if stream is not None:
            changes["stream"] = stream
        with transaction.atomic():
            if not self._write_claimed(token, changes, now):
                return False
        self.run.settle()
        return True

    def fail_claimed(self, token: uuid.UUID, reason: str) -> bool:
        if self.pk is None:
            return False
        changes = {"status": Run.Status.FAILED, "finished_at": timezone.now(), "end_reason": reason}
        if not self._claimed(token).update(**changes):
            return False
        self.run.settle(judge=False)
        return True

    def hand_back(self, token: uuid.UUID, stats: RunStats, stream: dict, reason: str) -> bool:
        """The loader was asked to exit (its worker is shutting down) but the run goes on:
        the shard goes back to the queue with its figures and where its streams stand, and
        the next worker free continues it exactly there (nothing lost, nothing twice)."""
        if self.pk is None:
            return False
        now = timezone.now()
        changes = {
            "status": Run.Status.QUEUED,
            "claim_token": None,
            "stats": stats,
            "stream": {**stream, "continue": True},
            "heartbeat_at": now,
        }
        with transaction.atomic():
            if not self._write_claimed(token, changes, now):
                return False
            RunLog.objects.create(
                run_id=self.run_id,
                level=RunLog.Level.INFO,
                message=f"Shard {self.label} handed back to the queue: {reason} It continues on the next free loader "
                "worker.",
            )
            enqueue_shard(self)
        return True


class RunSample(models.Model):
    """One row per run and minute, for the charts and reports (hits, errors, p95 latency),
    with the per-target breakdown in ``targets``."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="samples")
    minute = models.DateTimeField()
    hits = models.PositiveIntegerField(default=0)
    accepted = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    p95_ms = models.FloatField(null=True, blank=True)
    # The same figures per target: {"<run_target_id>": {"hits", "accepted", "errors", "p95_ms"}}.
    targets = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["minute"]
        constraints = [
            # The chart query reads a run's last 60 minutes in order.
            models.UniqueConstraint(fields=["run", "minute"], name="run_sample_minute_unique"),
        ]

    def __str__(self) -> str:
        return f"Run {self.run_id} at {self.minute:%H:%M}: {self.hits} hits"

    @classmethod
    def add(cls, run_id: int, sample: dict) -> None:
        """Add a loader's minute to the run's chart row (several shards report the same
        minute: counts add up; p95 is the highest shard's, see README "Sharded runs").
        The caller holds the run row's lock."""
        sample = dict(sample)
        minute = sample.pop("minute")
        row = cls.objects.filter(run_id=run_id, minute=minute).first()
        if row is None:
            cls.objects.create(run_id=run_id, minute=minute, **sample)
            return
        row.hits += sample.get("hits", 0)
        row.accepted += sample.get("accepted", 0)
        row.errors += sample.get("errors", 0)
        row.p95_ms = _highest(row.p95_ms, sample.get("p95_ms"))
        targets = dict(row.targets or {})
        for key, data in (sample.get("targets") or {}).items():
            old = targets.get(key, {})
            merged = {name: old.get(name, 0) + data.get(name, 0) for name in ("hits", "accepted", "errors")}
            merged["p95_ms"] = _highest(old.get("p95_ms"), data.get("p95_ms"))
            targets[key] = merged
        row.targets = targets
        row.save(update_fields=["hits", "accepted", "errors", "p95_ms", "targets"])


def _highest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


class RunLog(LogEntry):
    """Notable events only (start, stop, first error of each kind, backoff, degraded)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="logs")
    target = models.ForeignKey(Target, on_delete=models.SET_NULL, null=True, blank=True)

    class Meta(LogEntry.Meta):
        indexes = [models.Index(fields=["run", "created_at"], name="runlog_run_created_idx")]


def enqueue_run(run: Run) -> None:
    """Start a loader for each of the run's queued shards on the loader workers, once the
    transaction that created the run commits."""
    for shard in RunShard.objects.filter(run_id=run.pk, status=RunShard.Status.QUEUED):
        enqueue_shard(shard)


def enqueue_shard(shard: RunShard) -> None:
    from runs.tasks import enqueue_loader

    run_id, index = shard.run_id, shard.index
    transaction.on_commit(lambda: enqueue_loader(run_id, index))
