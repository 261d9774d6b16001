"""manage.py run_loader RUN_ID --claim TOKEN: the loader process a worker task starts.

gevent is monkey-patched by manage.py before Django loads (see GEVENT_COMMANDS there)."""

from __future__ import annotations

from argparse import ArgumentParser

from django.core.management.base import BaseCommand, CommandError

from runs.loader import LoaderSuperseded, execute_loader, tune_gc_for_loader
from runs.models import Run, RunShard


class Command(BaseCommand):
    help = "Run the loader of a claimed run (started by the worker task runs.tasks.execute_run)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("run_id", type=int)
        parser.add_argument(
            "--claim", required=True, help="The claim token the task got when it claimed a shard of the run."
        )
        parser.add_argument(
            "--hand-back",
            action="store_true",
            help="On SIGTERM/SIGINT give the shard back to the queue (another worker continues it) instead of "
            "stopping it.",
        )

    def handle(self, *args, run_id: int, claim: str, hand_back: bool, **options) -> None:
        run = Run.objects.filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"Run {run_id} does not exist.")
        shard = RunShard.objects.filter(run=run, claim_token=claim, status__in=RunShard.CLAIMED_STATUSES).first()
        if shard is None:
            # Another loader owns this shard (or it ended): never send a second copy of its traffic.
            raise CommandError(f"Run {run_id} is not claimed by this loader (status {run.status}).")
        tune_gc_for_loader()
        try:
            execute_loader(run, token=shard.claim_token, hand_back=hand_back)
        except LoaderSuperseded as exc:
            raise CommandError(str(exc)) from None
