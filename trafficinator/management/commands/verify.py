"""manage.py verify RUN_OR_PLAN: what Matomo recorded, next to what we sent."""

from __future__ import annotations

from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from backfill.models import BackfillPlan
from backfill.verification import verify_plan
from runs.models import Run
from runs.verification import verify_run
from targets.readback import Comparison


def _figure(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


class Command(BaseCommand):
    help = (
        "Compare what a run (run:ID or ID) or a backfill (backfill:ID) sent with what Matomo recorded: visits "
        "and actions, per day for backfills. Needs the targets' tokens. Exits non-zero on any difference."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("what", metavar="RUN_OR_PLAN", help="run:ID, ID (a run) or backfill:ID.")

    def handle(self, *args, what: str, **options) -> None:
        kind, _, number = what.rpartition(":")
        kind = kind or "run"
        if not number.isdigit() or kind not in ("run", "backfill", "plan"):
            raise CommandError(f"“{what}” is not run:ID, ID or backfill:ID.")
        if kind == "run":
            run = Run.objects.filter(pk=int(number)).first()
            if run is None:
                raise CommandError(f"No run {number}.")
            self.stdout.write(f"Run {run.pk} ({run.status}), against Matomo's live counter:")
            rows = verify_run(run)
        else:
            plan = BackfillPlan.objects.filter(pk=int(number)).first()
            if plan is None:
                raise CommandError(f"No backfill plan {number}.")
            self.stdout.write(f"Backfill {plan.pk} ({plan.status}), against Matomo's day reports:")
            rows = verify_plan(plan)
        self.report(rows)

    def report(self, rows: list[Comparison]) -> None:
        if not rows:
            self.stdout.write("Nothing was sent yet.")
            return
        self.stdout.write(
            f"{'target':<16} {'period':<14} {'visits sent':>11} {'Matomo':>9} {'actions sent':>12} {'Matomo':>9}"
        )
        for row in rows:
            mark = self.style.SUCCESS("ok") if row.ok else self.style.WARNING("DIFFERS")
            self.stdout.write(
                f"{row.target:<16} {row.label:<14} {_figure(row.sent_visits):>11} {_figure(row.matomo_visits):>9} "
                f"{_figure(row.sent_actions):>12} {_figure(row.matomo_actions):>9}  {mark}"
            )
            if row.cause:
                self.stdout.write(f"    {row.cause}")
        differing = sum(1 for row in rows if not row.ok)
        if differing:
            raise CommandError(f"{differing} of {len(rows)} row(s) differ from what was sent.")
        self.stdout.write(self.style.SUCCESS("Matomo recorded exactly what was sent."))
