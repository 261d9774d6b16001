"""manage.py run_loader RUN_ID --claim TOKEN: the loader process a worker task starts.

gevent is monkey-patched by manage.py before Django loads (see GEVENT_COMMANDS there)."""

from __future__ import annotations

from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from runs.loader import LoaderSuperseded, execute_loader
from runs.models import Run


class Command(BaseCommand):
    help = "Run the loader of a claimed run (started by the worker task runs.tasks.execute_run)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("run_id", type=int)
        parser.add_argument("--claim", required=True, help="The claim token the task got when it claimed the run.")

    def handle(self, *args, run_id: int, claim: str, **options) -> None:
        run = Run.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"Run {run_id} does not exist.")
        if str(run.claim_token) != claim or run.status not in (Run.Status.RUNNING, Run.Status.STOPPING):
            # Another loader owns this run (or it ended): never send a second copy of its traffic.
            raise CommandError(f"Run {run_id} is not claimed by this loader (status {run.status}).")
        try:
            execute_loader(run)
        except LoaderSuperseded as exc:
            raise CommandError(str(exc)) from None
