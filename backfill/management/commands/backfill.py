"""manage.py backfill: plan, confirm and send a historical backfill from a terminal.

    manage.py backfill --target shop --preset Medium --last-days 30 [--yes]
    manage.py backfill --resume 12

The days run in this process, one after the other, through the same code as the workers'
tasks. Ctrl-C stops after the batch on the wire is answered and leaves the plan running
and resumable (``--resume``); a second Ctrl-C stops at once.
"""

from __future__ import annotations

import getpass
import signal
import socket
import sys
import time
from argparse import ArgumentParser

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Sum

from backfill.foreground import run_in_foreground
from backfill.models import (
    DEFAULT_REQUESTS_IN_FLIGHT,
    MAX_BATCH_SIZE,
    MAX_REQUESTS_PER_SECOND,
    MAX_TOTAL_VISITS,
    MAX_VISITS_PER_DAY,
    MAX_WINDOW_DAYS,
    MIN_REQUESTS_PER_SECOND,
    BackfillDay,
    BackfillPlan,
)
from backfill.planning import Estimate, build_estimate, day_count_text, format_duration
from backfill.runner import DayOutcome, DayResult, DayState
from trafficinator.cli import (
    MAX_POSITIVE_INT,
    ExitCode,
    float_between,
    get_preset,
    get_target,
    int_between,
    iso_date,
    seed_int,
    usage_error,
    validation_error,
)

INTERRUPTED_EXIT_CODE = ExitCode.INTERRUPTED


def summary_line(plan: BackfillPlan) -> str:
    """``days=<n> visits=<n> hits=<n> accepted=<n> invalid=<n> failed=<n>``"""
    return plan.progress().summary_line()


class Command(BaseCommand):
    help = (
        "Backfill past days into Matomo: prints the estimate, asks to confirm (or --yes), sends the days in the "
        "foreground and ends with a summary line. --resume PLAN_ID continues an interrupted plan. Exit codes: "
        "0 completed, 1 failed (or another worker took a day over), 2 bad usage or not confirmed (nothing sent), "
        "130 interrupted: Ctrl-C or SIGTERM (resumable with --resume), or cancelled from its page or the API."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--target", action="append", help="Target name (repeat for several).")
        parser.add_argument("--preset", help="Preset name, e.g. Medium.")
        parser.add_argument("--start", type=iso_date, help="First day, YYYY-MM-DD (site time zone).")
        parser.add_argument("--end", type=iso_date, help="Last day, YYYY-MM-DD; yesterday at the latest.")
        parser.add_argument(
            "--last-days",
            type=int_between(1, MAX_WINDOW_DAYS),
            help=f"The N fully past days ending yesterday (1 to {MAX_WINDOW_DAYS}).",
        )
        parser.add_argument(
            "--visits-per-day",
            type=int_between(1, MAX_VISITS_PER_DAY),
            help=f"Average visits per day, 1 to {MAX_VISITS_PER_DAY:,} (default: preset's).",
        )
        parser.add_argument(
            "--daily-cap",
            type=int_between(1, MAX_VISITS_PER_DAY),
            help="At most this many visits on any day (default: preset's daily visit cap, if any).",
        )
        parser.add_argument(
            "--total-cap",
            type=int_between(1, MAX_TOTAL_VISITS),
            help=f"At most this many visits in all (1 to {MAX_TOTAL_VISITS:,}).",
        )
        parser.add_argument(
            "--seed", type=seed_int, help="Seed, 0 to 2**63-1 (default: random). Same seed, same visits."
        )
        parser.add_argument(
            "--rps",
            type=float_between(MIN_REQUESTS_PER_SECOND, MAX_REQUESTS_PER_SECOND),
            help=f"At most this many bulk requests per second ({MIN_REQUESTS_PER_SECOND:g} to "
            f"{MAX_REQUESTS_PER_SECOND:g}).",
        )
        parser.add_argument(
            "--batch-size",
            type=int_between(1, MAX_BATCH_SIZE),
            default=400,
            help=f"Hits per batch, 1 to {MAX_BATCH_SIZE:,} (default 400).",
        )
        parser.add_argument(
            "--in-flight",
            type=int_between(1, 32),
            default=DEFAULT_REQUESTS_IN_FLIGHT,
            help=f"Bulk requests kept in flight (default {DEFAULT_REQUESTS_IN_FLIGHT}; match Matomo's PHP workers).",
        )
        parser.add_argument("--yes", action="store_true", help="Confirm without asking (for scripts).")
        parser.add_argument(
            "--resume", type=int_between(1, MAX_POSITIVE_INT), metavar="PLAN_ID", help="Continue an interrupted plan."
        )

    def handle(self, *args, **options) -> None:
        self.interrupted = False
        self.show_progress = sys.stderr.isatty()
        try:
            plan = self.plan_to_resume(options["resume"]) if options["resume"] else self.create_and_confirm(options)
        except CommandError as error:
            # Nothing was sent: a bad argument, an unknown name, a refused or missing confirmation.
            if error.returncode == ExitCode.FAILED:
                error.returncode = ExitCode.USAGE
            raise
        self.run(plan)

    # --- planning and confirming ------------------------------------------------------------

    def create_and_confirm(self, options) -> BackfillPlan:
        if not options["target"] or not options["preset"]:
            raise usage_error("Give --target NAME and --preset NAME (or --resume PLAN_ID).")
        if options["last_days"] and (options["start"] or options["end"]):
            raise usage_error("Give either --start and --end or --last-days, not both.")
        if not options["last_days"] and not (options["start"] and options["end"]):
            raise usage_error("Give the window: --start YYYY-MM-DD --end YYYY-MM-DD, or --last-days N.")
        preset = get_preset(options["preset"])
        targets = [get_target(name) for name in options["target"]]
        try:
            plan = BackfillPlan.objects.create_plan(
                targets=targets,
                preset=preset,
                start_date=options["start"],
                end_date=options["end"],
                last_days=options["last_days"],
                visits_per_day=options["visits_per_day"],
                daily_cap=options["daily_cap"],
                total_cap=options["total_cap"],
                seed=options["seed"],
                max_requests_per_second=options["rps"],
                batch_size=options["batch_size"],
                requests_in_flight=options["in_flight"],
            )
        except ValidationError as exc:
            raise validation_error(exc) from None
        estimate = build_estimate(plan, targets)
        self.print_estimate(plan, estimate)
        if not options["yes"]:
            self.ask_to_confirm(plan)
        try:
            confirmed = plan.confirm(by_name=f"{getpass.getuser()}@{socket.gethostname()} (command line)")
        except ValidationError as exc:  # also DraftChanged: edited on its page while we asked
            raise validation_error(exc) from None
        # Both are conditional: while we asked, the plan may have been confirmed (and started
        # on the workers) or cancelled on its page. Then it is not ours to send.
        if not (confirmed and plan.start(enqueue=False)):
            plan.refresh_from_db(fields=["status"])
            raise CommandError(
                f"Plan {plan.pk} was not sent from here: it was {plan.get_status_display().lower()} elsewhere "
                f"(its page or the API) while this command waited. Follow it on its page."
            )
        return plan

    def print_estimate(self, plan: BackfillPlan, estimate: Estimate) -> None:
        write = self.stdout.write
        write(f"Backfill plan {plan.pk} (draft): {plan.start_date} – {plan.end_date}, preset {plan.preset_name}")
        for target in estimate.targets:
            write(
                f"  → {target.name}: {target.tracking_url} site {target.site_id}"
                f"{' “' + target.site_name + '”' if target.site_name else ''}, time zone {target.timezone}, "
                f"hits dated {target.first_utc} – {target.last_utc}"
            )
        low, high = estimate.visits_per_day_range
        write(
            f"  {day_count_text(estimate.day_count)}, {estimate.total_visits:,} visits ({low:,}–{high:,} per day), "
            f"~{estimate.total_hits:,} hits in batches of up to {plan.batch_size} hits, seed {plan.seed}"
        )
        write(f"  Expected duration: {format_duration(estimate.duration_seconds)}. {estimate.duration_basis}")
        write(f"  {estimate.hits_basis}")
        for note in estimate.notes:
            write(f"  Note: {note}")
        if estimate.day_count <= 14:
            for day in estimate.days:
                where = f" {day.target}" if len(estimate.targets) > 1 else ""
                capped = " (capped)" if day.capped else ""
                write(f"    {day.weekday} {day.day}{where}: {day.visits:,} visits{capped}, ~{day.hits:,} hits")

    def ask_to_confirm(self, plan: BackfillPlan) -> None:
        phrase = plan.confirmation_phrase()
        if not sys.stdin.isatty():
            raise CommandError(
                f"Not confirmed: standard input is not a terminal, so nobody can confirm. Check the estimate above "
                f"and run again with --yes to send it (plan {plan.pk} stays a draft; you can also confirm it on its "
                "page)."
            )
        self.stdout.write(f"Type the target's name ({phrase}) to confirm and start; anything else cancels: ", ending="")
        self.stdout.flush()
        answer = " ".join(sys.stdin.readline().split())
        if answer != phrase:
            raise CommandError(f"Not confirmed (“{answer}” is not “{phrase}”). Plan {plan.pk} stays a draft.")

    def plan_to_resume(self, plan_id: int) -> BackfillPlan:
        plan = BackfillPlan.objects.filter(pk=plan_id).first()
        if plan is None:
            raise CommandError(f"No backfill plan {plan_id}.")
        if plan.status == BackfillPlan.Status.DRAFT:
            raise CommandError(
                f"Plan {plan_id} is a draft: confirm it first (its page, or run the command without --resume)."
            )
        if plan.is_locked:
            raise CommandError(
                f"Plan {plan_id} is {plan.status}: finished plans are locked. "
                "“Run again” on its page makes a new draft."
            )
        if plan.status == BackfillPlan.Status.CONFIRMED:
            plan.start(enqueue=False)
        busy = [
            day
            for day in plan.days.filter(status=BackfillDay.Status.RUNNING).select_related("target")
            if not day.holder_is_gone()
        ]
        if busy:
            day = busy[0]
            raise CommandError(
                f"Plan {plan_id} is being sent right now ({day.day} of {day.target.name} by {day.worker}). "
                "--resume is for interrupted plans; wait, or stop that worker first."
            )
        progress = plan.progress()
        self.stdout.write(
            f"Resuming backfill plan {plan.pk} at {progress.visits_done:,} of {progress.planned_visits:,} visits "
            f"({progress.days_done} of {progress.days} days done)."
        )
        return plan

    # --- sending ------------------------------------------------------------------------------

    def run(self, plan: BackfillPlan) -> None:
        self.plan = plan
        self.before = self.totals(plan)
        self.start_hits = self.before["hits"] or 0
        self.current: dict[int, tuple[int, int]] = {}
        self.started = time.monotonic()
        self.last_draw = 0.0
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self.request_stop)
        try:
            ended = run_in_foreground(
                plan,
                should_stop=lambda: self.interrupted,
                on_progress=self.progress if self.show_progress else None,
                on_day=self.day_done,
            )
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.show_progress:
            self.stderr.write("")
        plan.refresh_from_db()
        self.stdout.write(summary_line(plan))
        self.finish(plan, ended)

    def finish(self, plan: BackfillPlan, ended: DayResult | None) -> None:
        if plan.status == BackfillPlan.Status.FAILED:
            raise CommandError(f"Backfill plan {plan.pk} failed: {plan.end_reason}", returncode=ExitCode.FAILED)
        if plan.status == BackfillPlan.Status.CANCELLED:
            # Stopped before its end by someone (the page or the API): interrupted, as
            # run_traffic says of a run stopped from the dashboard. Not resumable.
            raise CommandError(
                f"Backfill plan {plan.pk} was cancelled: {plan.end_reason}", returncode=INTERRUPTED_EXIT_CODE
            )
        if ended is not None and ended.outcome == DayOutcome.PAUSED:
            raise CommandError(
                f"Interrupted: {ended.message} Continue with: manage.py backfill --resume {plan.pk}",
                returncode=INTERRUPTED_EXIT_CODE,
            )
        if ended is not None:
            raise CommandError(f"Backfill plan {plan.pk} stopped: {ended.message}")
        self.stdout.write(f"Backfill plan {plan.pk} {plan.status}: {plan.end_reason}")
        if plan.invalidation_message:
            self.stdout.write(plan.invalidation_message)

    def request_stop(self, signum, frame) -> None:
        if self.interrupted:  # the second time: stop at once, the in-flight batch stays in doubt
            raise KeyboardInterrupt
        self.interrupted = True
        self.stderr.write("\nStopping after the batch on the wire is answered (Ctrl-C again to stop at once)…")

    @staticmethod
    def totals(plan: BackfillPlan) -> dict:
        return plan.days.aggregate(
            planned=Sum("planned_visits"),
            visits=Sum("visits_done"),
            hits=Sum("hits_sent"),
            accepted=Sum("hits_accepted"),
        )

    def day_done(self, result: DayResult) -> None:
        self.current.pop(result.day_id, None)
        if result.outcome == DayOutcome.DONE:
            self.before = self.totals(self.plan)

    def progress(self, day: BackfillDay, state: DayState) -> None:
        """A one-line progress bar on the terminal, redrawn at most 4 times a second."""
        now = time.monotonic()
        self.current[day.pk] = (state.visits_done - day.visits_done, state.hits_sent - day.hits_sent)
        if now - self.last_draw < 0.25:
            return
        self.last_draw = now
        planned = self.before["planned"] or 0
        visits = (self.before["visits"] or 0) + sum(v for v, _ in self.current.values())
        hits = (self.before["hits"] or 0) + sum(h for _, h in self.current.values())
        share = visits / planned if planned else 1.0
        filled = int(share * 30)
        elapsed = now - self.started
        rate = (hits - self.start_hits) / elapsed if elapsed > 0 else 0.0
        remaining = (planned - visits) * (hits / visits if visits else 0.0)
        eta = format_duration(remaining / rate) if rate else "–"
        self.stderr.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:6.1%} {day.day} visits {visits:,}/{planned:,} "
            f"hits {hits:,} {rate:,.0f} hits/s ETA {eta}   ",
            ending="",
        )
        self.stderr.flush()
