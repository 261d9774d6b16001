"""manage.py run_loader RUN_ID --claim TOKEN: the loader process a worker task starts.

gevent is monkey-patched by manage.py before Django loads (see GEVENT_COMMANDS there)."""

from __future__ import annotations

import signal
from argparse import ArgumentParser

import gevent
from django.core.management.base import BaseCommand, CommandError

from runs.live import LiveLoader
from runs.models import Run, RunLog


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
        execute_loader(run)


def execute_loader(run: Run, *, progress=None) -> Run:
    """Run the loop, stop cleanly on SIGTERM/SIGINT, and record how the run ended."""
    loader = LiveLoader(run, progress=progress)

    def on_signal() -> None:
        loader.stop("stopped", "Stopped: the loader process was asked to exit.")

    handlers = [gevent.signal_handler(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        status = loader.run_loop()
        run.finish(status, loader.stop_reason or "Finished.", stats=loader.snapshot())
        level = RunLog.Level.ERROR if status == Run.Status.FAILED else RunLog.Level.INFO
        run.log(level, f"Loader finished: {status}. {loader.stop_reason}".strip())
    except Exception as exc:
        run.fail(f"The loader failed: {exc!r}")
        run.log(RunLog.Level.ERROR, f"Loader crashed: {exc!r}")
        raise
    finally:
        for handler in handlers:
            handler.cancel()
    run.refresh_from_db()
    return run
