"""manage.py run_traffic: a live run in the foreground of a terminal."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import uuid
from argparse import ArgumentParser, ArgumentTypeError
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from runs import reports
from runs.forms import countries_without_token
from runs.loader import LoaderSuperseded, execute_loader
from runs.models import (
    MAX_BATCH_SIZE,
    MAX_SHARDS,
    MAX_TARGET_WEIGHT,
    MAX_VISITS,
    MAX_VISITS_PER_DAY,
    Run,
    RunLog,
    RunShard,
)
from runs.shards import AUTO, describe, parse_shards, plan_shards, resolve_shards
from runs.tasks import _child_setup, loader_command
from targets.models import Target
from trafficinator.cli import (
    EXIT_CODES_HELP,
    ExitCode,
    get_preset,
    get_target,
    int_between,
    refuse_control_characters,
    seed_int,
    usage_error,
    validation_error,
)
from trafficinator.lifecycle import COMMAND_LINE
from trafficinator.sending.telemetry import RunStats
from trafficinator.thresholds import ThresholdError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'30s', '10m', '2h', '1d' or plain seconds, up to MAX_RUN_HOURS (as the web form)."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise ArgumentTypeError(f"“{text}” is not a duration; use e.g. 30s, 10m, 2h or 1d.")
    limit = settings.MAX_RUN_HOURS * 3600
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds) or round(seconds) < 1 or seconds > limit:
        raise ArgumentTypeError(
            f"“{text}” is out of range; use 1s to {settings.MAX_RUN_HOURS}h (TRAFFICINATOR_MAX_RUN_HOURS)."
        )
    return round(seconds)


def parse_weight(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise usage_error(f"“{text}” in --target {spec} is not a number.") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TARGET_WEIGHT:
        raise usage_error(f"--target {spec}: the weight must be a number above 0 and at most {MAX_TARGET_WEIGHT:,}.")
    return value


def parse_target_rate(text: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise usage_error(f"“{text}” in --target {spec} is not a whole number of visits per day.") from None
    if not 1 <= value <= MAX_VISITS_PER_DAY:
        raise usage_error(f"--target {spec}: the rate must be 1 to {MAX_VISITS_PER_DAY:,} visits per day.")
    return value


def target_share(spec: str) -> tuple:
    """``NAME``, ``NAME:WEIGHT`` or ``NAME=VISITS_PER_DAY`` -> (target, weight, visits per day).
    A name that itself contains ':' or '=' still works when it matches a target exactly."""
    refuse_control_characters(spec, "Target")
    if not Target.objects.filter(name=spec).exists():
        for separator in (":", "="):
            name, found, amount = spec.rpartition(separator)
            if not found:
                continue
            if separator == ":":
                return (get_target(name), parse_weight(amount, spec), None)
            return (get_target(name), 1.0, parse_target_rate(amount, spec))
    return (get_target(spec), 1.0, None)


def shards_argument(text: str) -> int | str:
    try:
        return parse_shards(text)
    except ValueError as error:
        raise ArgumentTypeError(str(error)) from None


def _plain(text: str) -> str:
    return text


def summary_line(stats: RunStats, outcome: str = "") -> str:
    """``visits_started=.. visits_delivered=.. hits=.. accepted=.. ... possibly_duplicated=..`` and,
    for a run with thresholds, ``thresholds=passed|failed``."""
    totals = stats["totals"]
    # One meaning everywhere (the run page's too): every hit whose final answer was not
    # "accepted" -- invalid, unaccounted, rejected, 5xx, network errors and timeouts.
    errors = totals.get("errors", 0)
    latency = totals.get("latency_ms")
    p95 = latency.get("p95") if latency else None
    line = (
        f"visits_started={totals.get('visits_started', 0)} visits_delivered={totals.get('visits_delivered', 0)} "
        f"hits={totals.get('sent', 0)} "
        f"accepted={totals.get('accepted', 0)} invalid={totals.get('invalid', 0)} "
        f"rejected={totals.get('rejected', 0)} errors={errors} p95_ms={round(p95) if p95 is not None else 0} "
        f"possibly_duplicated={totals.get('possibly_duplicated', 0)}"
    )
    return f"{line} thresholds={outcome}" if outcome else line


def exit_code(run: Run) -> ExitCode:
    """What a finished run means to a script (README "Exit codes")."""
    if run.status == Run.Status.FAILED:
        return ExitCode.FAILED
    if run.stopped_by_thresholds:  # --abort-on-fail: stopped because a threshold failed
        return ExitCode.THRESHOLDS_FAILED
    if run.status == Run.Status.STOPPED:
        return ExitCode.INTERRUPTED
    if run.outcome == Run.Outcome.FAILED:
        return ExitCode.THRESHOLDS_FAILED
    return ExitCode.SUCCESS


def saturation_line(stats: RunStats) -> str:
    """What the loader could not deliver, and its own wait; "" when it kept up."""
    totals = stats["totals"]
    behind = totals.get("visits_behind", 0)
    wait = totals.get("wait_ms")
    wait_p95 = wait.get("p95") if wait else None
    if not (totals.get("saturated") or behind or totals.get("late_hits")):
        return ""
    delivered = totals.get("delivered_percent")
    return (
        f"Generator saturated: delivered {delivered if delivered is not None else 0:g} % of the asked visits, "
        f"{behind:,} visits behind schedule, {totals.get('late_hits', 0):,} hits sent more than 1 s late, "
        f"loader wait p95 {round(wait_p95) if wait_p95 is not None else 0} ms (not part of the latency)."
    )


class Command(BaseCommand):
    help = (
        "Send live traffic to one or more targets in the foreground; Ctrl-C stops cleanly. Ends with a summary "
        f"line. {EXIT_CODES_HELP}"
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--target",
            action="append",
            required=True,
            metavar="NAME[:WEIGHT|=VISITS_PER_DAY]",
            help="A target; repeat for several. NAME:3 gives it a weight of 3 (share of the rate), "
            "NAME=5000 its own 5,000 visits per day. Default weight 1.",
        )
        parser.add_argument("--preset", required=True, help="Preset name, e.g. Light.")
        parser.add_argument(
            "--duration",
            type=parse_duration,
            help=f"Stop after this long: 30s, 10m, 2h, 1d (at most {settings.MAX_RUN_HOURS}h).",
        )
        parser.add_argument(
            "--visits", type=int_between(1, MAX_VISITS), help=f"Stop after this many visits (1 to {MAX_VISITS:,})."
        )
        parser.add_argument(
            "--seed", type=seed_int, help="Seed for a reproducible stream, 0 to 2**63-1 (default: random)."
        )
        parser.add_argument("--bulk", action="store_true", help="Send whole visits in bulk batches.")
        parser.add_argument(
            "--batch-size",
            type=int_between(1, MAX_BATCH_SIZE),
            default=100,
            help=f"Hits per bulk batch, 1 to {MAX_BATCH_SIZE:,} (default 100).",
        )
        parser.add_argument(
            "--rate",
            type=int_between(1, MAX_VISITS_PER_DAY),
            help=f"Visits per day over all targets, 1 to {MAX_VISITS_PER_DAY:,} (default: preset's).",
        )
        parser.add_argument(
            "--without-countries",
            action="store_true",
            help="Accept sending to targets without a token although the preset sends visitor countries: their "
            "visits then all come from this machine's IP.",
        )
        parser.add_argument(
            "--threshold",
            action="append",
            metavar="EXPR",
            help='A pass/fail criterion judged at the end, e.g. "p95_ms < 500", "success_rate >= 0.99", '
            '"rejected[shop] == 0"; repeat for several. Replaces the preset\'s; --threshold none drops them. '
            "A failed threshold exits with 3.",
        )
        parser.add_argument(
            "--abort-on-fail",
            action="store_true",
            help="Stop as soon as a threshold has certainly failed instead of at the end (exit 3). Only a count "
            'held under a limit can fail early ("rejected == 0", "errors < 100"), and one is needed (exit 2 '
            "otherwise); rates and latencies are judged at the end.",
        )
        parser.add_argument(
            "--report", metavar="FILE", help="Write the run's JSON report to FILE at the end (see run_report)."
        )
        parser.add_argument(
            "--shards",
            type=shards_argument,
            default=1,
            metavar="N|auto",
            help=f"Loader processes sharing the run on this machine, 1 to {MAX_SHARDS} (default 1), or auto: as many "
            "as its peak hits/s needs (TRAFFICINATOR_SHARD_HITS_PER_SECOND). Shard 1 runs in this process, the others "
            "as child processes; Ctrl-C stops them all.",
        )

    def handle(self, *args, **options) -> None:
        run = self.create_run(options)
        token = run.claim(pid=os.getpid(), host=socket.gethostname(), shard=0)
        if token is None:  # cannot happen for a run we just created, unless someone stopped it
            raise CommandError(f"Run {run.pk} could not be started (status {run.status}).")
        shards = f", {run.shard_count} shards" if run.shard_count > 1 else ""
        self.stdout.write(
            f"Run {run.pk}: {run.preset_name}, {run.visits_per_day:,} visits/day, seed {run.seed}{shards}. "
            "Ctrl-C stops."
        )
        if options["shards"] == AUTO or run.shard_count > 1:
            plan = plan_shards(run.preset or get_preset(run.preset_name), run.visits_per_day, run.bulk, run.shard_count)
            self.stdout.write(describe(plan, None))
        children = self.start_other_shards(run)
        show_progress = sys.stderr.isatty()
        try:
            run = execute_loader(
                run, token=token, progress=self.progress if show_progress else None, stopped_by=COMMAND_LINE
            )
        except LoaderSuperseded as exc:
            raise CommandError(str(exc)) from None
        finally:
            self.wait_for_shards(run, children)
        run.refresh_from_db()
        if show_progress:
            self.stderr.write("", style_func=_plain)
        self.stdout.write(summary_line(run.stats_snapshot, run.outcome))
        saturation = saturation_line(run.stats_snapshot)
        if saturation:
            self.stdout.write(saturation)
        for label in run.failed_threshold_labels():
            self.stdout.write(f"Threshold failed: {label}")
        if options.get("report"):
            self.write_report(run, options["report"])
        code = exit_code(run)
        if code == ExitCode.FAILED:
            raise CommandError(f"Run {run.pk} failed: {run.end_reason}", returncode=code)
        if code == ExitCode.INTERRUPTED:
            raise CommandError(f"Run {run.pk} stopped before its end: {run.end_reason}", returncode=code)
        if code == ExitCode.THRESHOLDS_FAILED:
            failed = len(run.failed_thresholds)
            how = "stopped early because" if run.stopped_by_thresholds else "completed but"
            raise CommandError(
                f"Run {run.pk} {how} {failed} threshold{'s' if failed != 1 else ''} failed.", returncode=code
            )
        self.stdout.write(f"Run {run.pk} {run.status}: {run.end_reason}")

    def start_other_shards(self, run: Run) -> list[tuple[subprocess.Popen, uuid.UUID]]:
        """Shards 2..N as ``run_loader`` child processes (they die with this process)."""
        children = []
        for index in range(1, run.shard_count):
            token = run.claim(pid=os.getpid(), host=socket.gethostname(), shard=index)
            if token is None:
                continue  # stopped meanwhile
            child = subprocess.Popen(loader_command(run.pk, str(token)), preexec_fn=_child_setup)  # noqa: S603
            RunShard.objects.filter(run=run, claim_token=token).update(loader_pid=child.pid)
            children.append((child, token))
        return children

    def wait_for_shards(self, run: Run, children: list[tuple[subprocess.Popen, uuid.UUID]]) -> None:
        """Wait for the other shards' loaders; Ctrl-C reached them too (one process group),
        so they are stopping. One that ended without closing its shard fails it."""
        for child, token in children:
            while True:
                try:
                    code = child.wait()
                    break
                except KeyboardInterrupt:
                    run.request_stop(by=COMMAND_LINE)  # worded as the loader's own Ctrl-C
            reason = f"The loader process exited with code {code} without finishing its shard."
            if run.shard_of(token).fail_claimed(token, reason):
                run.log(RunLog.Level.ERROR, f"Loader of a shard exited with code {code}.")

    def create_run(self, options) -> Run:
        """The run the options ask for; any problem is bad usage (exit 2), nothing sent."""
        try:
            preset = get_preset(options["preset"])
            targets = [target_share(spec) for spec in options["target"]]
        except CommandError as error:
            error.returncode = ExitCode.USAGE
            raise
        without_token = countries_without_token(preset, [target for target, _, _ in targets])
        if without_token and not options["without_countries"]:
            raise CommandError(
                f"Preset {preset.name} sends visitor countries, which Matomo accepts only with a token, and "
                f"{', '.join(without_token)} {'has' if len(without_token) == 1 else 'have'} none. Add a token "
                "(manage.py target add ... --token-stdin), or pass --without-countries to send anyway.",
                returncode=ExitCode.USAGE,
            )
        if without_token:
            self.stdout.write(
                f"Without countries for {', '.join(without_token)}: no token, so no `cip`; Matomo records every "
                "visit from this machine's IP and shows one country (or Unknown) for all of them."
            )
        for target, _, _ in targets:
            warning = target.timezone_warning(preset.timezone)
            if warning:
                self.stdout.write(f"Warning: target {target.name}: {warning}")
        thresholds = options.get("threshold")
        if thresholds is not None and [text.strip().lower() for text in thresholds] == ["none"]:
            thresholds = []
        try:
            shards = resolve_shards(preset, options["rate"], options["bulk"], options["shards"])
            return Run.objects.create_run(
                shards=shards,
                preset=preset,
                targets=targets,
                seed=options["seed"],
                visits_per_day=options["rate"],
                duration_seconds=options["duration"],
                max_visits=options["visits"],
                bulk=options["bulk"],
                batch_size=options["batch_size"],
                thresholds=thresholds,
                abort_on_fail=options["abort_on_fail"],
            )
        except ValidationError as exc:
            if isinstance(exc.__cause__, ThresholdError):
                # On a terminal: the expression again, with a caret under the character.
                raise usage_error(f"{exc.__cause__}\n{exc.__cause__.pointer()}") from None
            raise validation_error(exc) from None

    def write_report(self, run: Run, path: str) -> None:
        content, _ = reports.render(run, "json")
        try:
            Path(path).write_text(content, encoding="utf-8")
        except OSError as error:  # the run happened: say so, and keep its exit code meaningful
            self.stderr.write(f"Could not write the report to {path}: {error.strerror}.")
            return
        self.stdout.write(f"Report written to {path}.")

    def progress(self, stats: RunStats) -> None:
        totals = stats["totals"]
        line = (
            f"\r{summary_line(stats)} rate={totals.get('hits_per_second', 0)}/s in_flight={totals.get('in_flight', 0)}"
        )
        if totals.get("saturated"):
            line += f" SATURATED lag={totals.get('lag_seconds', 0)}s delivered={totals.get('delivered_percent')}%"
        line += "   "
        # A healthy progress line is not an error: no red (stderr's default style).
        self.stderr.write(line, ending="", style_func=_plain)
        self.stderr.flush()
