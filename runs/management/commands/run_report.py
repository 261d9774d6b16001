"""manage.py run_report: a run's report (JSON, CSV, HTML) or the comparison of two runs."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from runs import reports
from runs.models import Run
from trafficinator.cli import ExitCode


class Command(BaseCommand):
    help = (
        "Write a run's report: --format json (everything the run recorded), csv (per-minute series per target) "
        "or html (one self-contained page). --compare A B compares two runs (json or html); --plan ID reports on a "
        "backfill plan (json, or csv per day). Writes to stdout "
        "unless --output FILE. Exit codes: 0 written, 2 bad usage (unknown run, bad format)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("run_id", nargs="?", type=int, help="The run to report on.")
        parser.add_argument("--format", choices=reports.FORMATS, default="json", help="json (default), csv or html.")
        parser.add_argument("--output", "-o", metavar="FILE", help="Write to FILE instead of standard output.")
        parser.add_argument(
            "--compare", nargs=2, type=int, metavar=("A", "B"), help="Compare run A with run B (json or html)."
        )
        parser.add_argument("--plan", type=int, metavar="PLAN_ID", help="A backfill plan's report (json or csv).")

    def handle(self, *args, run_id: int | None, format: str, output: str | None, compare, plan, **options) -> None:
        if sum(bool(choice) for choice in (run_id is not None, compare, plan)) > 1:
            raise CommandError("Give one of: a run id, --compare A B, --plan PLAN_ID.", returncode=ExitCode.USAGE)
        if plan:
            content = self.plan_report(plan, format)
        elif compare:
            content = self.comparison(self.get_run(compare[0]), self.get_run(compare[1]), format)
        elif run_id is not None:
            content, _ = reports.render(self.get_run(run_id), format)
        else:
            raise CommandError("Give a run id (or --compare A B).", returncode=ExitCode.USAGE)
        if output:
            try:
                Path(output).write_text(content, encoding="utf-8")
            except OSError as error:
                raise CommandError(f"Cannot write {output}: {error.strerror}.", returncode=ExitCode.USAGE) from None
            self.stderr.write(f"Wrote {output}.")
        else:
            self.stdout.write(content, ending="")

    @staticmethod
    def get_run(pk: int) -> Run:
        run = Run.objects.filter(pk=pk).first()
        if run is None:
            raise CommandError(f"No run {pk}.", returncode=ExitCode.USAGE)
        return run

    @staticmethod
    def plan_report(plan_id: int, fmt: str) -> str:
        from backfill import reports as backfill_reports
        from backfill.models import BackfillPlan

        plan = BackfillPlan.objects.filter(pk=plan_id).first()
        if plan is None:
            raise CommandError(f"No backfill plan {plan_id}.", returncode=ExitCode.USAGE)
        if fmt == "html":
            raise CommandError("Backfill plan reports are json or csv.", returncode=ExitCode.USAGE)
        return backfill_reports.render(plan, fmt)[0]

    @staticmethod
    def comparison(run_a: Run, run_b: Run, fmt: str) -> str:
        if fmt == "html":
            return reports.comparison_html(run_a, run_b)
        if fmt == "json":
            comparison = reports.compare(reports.build_report(run_a), reports.build_report(run_b))
            return json.dumps(comparison, indent=2, ensure_ascii=False, default=str) + "\n"
        raise CommandError("--compare writes json or html.", returncode=ExitCode.USAGE)
