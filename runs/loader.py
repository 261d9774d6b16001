"""The live loader: paces visits in wall-clock time, hands their hits to the senders, and
reports to the database. Runs inside ``manage.py run_loader`` / ``run_traffic`` (gevent
monkey-patched).

Greenlets:
- the main greenlet (``LiveLoader.run``) is the only one that touches the database: it
  starts due visits, checks for stop requests and limits every loop (at most every
  ``TICK`` seconds, by the clock, not by a timer: under full CPU a gevent timer was seen
  firing 12 s late), flushes telemetry every ``FLUSH_EVERY`` seconds and writes one
  RunSample a minute;
- one greenlet per visit in progress sleeps until each hit is due and sends it;
- the senders' own greenlets do the HTTP (at most ``concurrency`` per target).

This module is the live loader's one home: the visit streams per target (fed from the
run's snapshot), the loop, and ``execute_loader``, which the commands ``run_loader`` and
``run_traffic`` call.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import signal
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast
from zoneinfo import ZoneInfo

import gevent
import gevent.event
import gevent.pool

from backfill.models import BackfillPlan
from funnels.models import Funnel
from runs.models import Run, RunLog, RunSample, RunTarget
from targets.checks import token_works_in_bulk
from trafficinator.sending.sender import TargetSender
from trafficinator.sending.telemetry import RunStats, RunTelemetry, TargetTelemetry
from trafficinator.traffic import Catalog, CdtFormat, Profile, SiteGoals, Visit, encode_visit, live_visits
from trafficinator.traffic.encoding import encode_params

logger = logging.getLogger(__name__)

TICK = 0.2  # seconds between main-loop passes
FLUSH_EVERY = 2.0  # seconds between DB flushes (stats + heartbeat + log)
STOP_CHECK_EVERY = 0.5  # seconds between stop-request reads (one cheap SELECT)
STOP_GRACE = 1.5  # seconds in-flight requests get after a stop
REQUEST_TIMEOUT = 10.0


@dataclass
class TargetRuntime:
    run_target: RunTarget
    stream: TargetStream
    sender: TargetSender
    telemetry: TargetTelemetry
    # Monotonic start times of the visits of the last minute, for the actual visits/day.
    recent_starts: deque = field(default_factory=deque)

    def visit_started(self, now: float) -> None:
        self.recent_starts.append(now)
        self.telemetry.start_visits()

    def visits_per_day(self, now: float) -> int:
        """Visits started in the last 60 s, scaled to a day: what the target gets now."""
        starts = self.recent_starts
        while starts and starts[0] < now - 60:
            starts.popleft()
        return len(starts) * 1440


class LiveLoader:
    """Sends one run's traffic until it completes, is stopped, or fails."""

    def __init__(self, run: Run, *, progress=None) -> None:
        self.run = run
        self.progress = progress  # optional callable(stats) for a terminal progress line
        self.telemetry = RunTelemetry()
        self.visits = gevent.pool.Group()
        self.stop_event = gevent.event.Event()
        self.stop_reason = ""
        self.final_status = Run.Status.STOPPED  # until stop() says why the loop ended
        # A resumed run continues its counters from where the lost loader left them.
        self.previous_stats = run.stats if isinstance(run.stats, dict) else {}
        self.visits_started = int(run.totals.get("visits_started", 0))
        self.runtimes: list[TargetRuntime] = []
        self._day_key: str | None = None
        self._visits_today = 0
        self._cap_logged_for: str | None = None

    # --- setup ---------------------------------------------------------------------

    def build(self) -> None:
        run_targets = list(self.run.run_targets.select_related("target"))
        streams = target_streams(self.run, run_targets, start=time.time())
        for stream in streams:
            rt = stream.run_target
            telemetry = self.telemetry.add(str(rt.pk), rt.target.name)
            sender = TargetSender(
                rt.target.tracking_url,
                rt.target.token_auth or None,
                concurrency=int(self.run.profile.get("concurrency", 10)),
                timeout=REQUEST_TIMEOUT,
                bulk=self.run.bulk and stream.bulk_allowed,
                batch_size=self.run.batch_size,
                telemetry=telemetry,
                name=rt.target.name,
                timezone=stream.timezone,
            )
            self.runtimes.append(TargetRuntime(rt, stream, sender, telemetry))
            if stream.notice:
                self.log(RunLog.Level.WARNING, stream.notice, rt)

    # --- the main loop -------------------------------------------------------------

    def run_loop(self) -> Run.Status:
        """Returns the final status; the caller records it with Run.finish()."""
        self.build()
        started = time.monotonic()
        deadline = started + self.run.duration_seconds if self.run.duration_seconds else None
        heap = self._initial_heap()
        next_flush = time.monotonic() + FLUSH_EVERY
        next_stop_check = 0.0
        next_sample = _next_minute(time.time())
        self.log(RunLog.Level.INFO, f"Loader started: {self._describe_targets()}.")

        while not self.stop_event.is_set():
            now_mono = time.monotonic()
            now = time.time()
            if deadline is not None and now_mono >= deadline:
                self.stop(Run.Status.COMPLETED, "Duration limit reached.")
                break
            if self._visit_limit_reached():
                # Started visits finish their hits; then the run is complete.
                if not len(self.visits):
                    self.stop(Run.Status.COMPLETED, f"Visit limit of {self.run.max_visits} reached.")
                    break
            else:
                self._start_due_visits(heap, now)
            for runtime in self.runtimes:
                runtime.sender.poll()
            if now_mono >= next_stop_check:
                next_stop_check = now_mono + STOP_CHECK_EVERY
                if self.run.stop_was_requested():
                    self.stop(Run.Status.STOPPED, "Stop requested.")
                    break
            if now_mono >= next_flush:
                next_flush = now_mono + FLUSH_EVERY
                self.flush()
            if now >= next_sample:
                self.write_sample(next_sample)
                next_sample = _next_minute(now)
            wait = TICK
            if heap:
                wait = min(wait, max(0.0, heap[0][0] - time.time()))
            self.stop_event.wait(wait)

        return self.shutdown()

    def _initial_heap(self) -> list:
        heap: list = []
        for index in range(len(self.runtimes)):
            self._push_next(heap, index)
        return heap

    def _push_next(self, heap: list, index: int) -> None:
        visit = next(self.runtimes[index].stream.visits, None)
        if visit is not None:
            heapq.heappush(heap, (visit.start, index, visit))

    def _start_due_visits(self, heap: list, now: float) -> None:
        while heap and heap[0][0] <= now:
            if self._visit_limit_reached():
                return
            _, index, visit = heapq.heappop(heap)
            self._push_next(heap, index)
            if self._daily_cap_reached(visit.start):
                continue  # dropped, as a paused run would not have generated it
            runtime = self.runtimes[index]
            self.visits_started += 1
            self._visits_today += 1
            runtime.visit_started(time.monotonic())
            self.visits.spawn(self._play_visit, runtime, visit)

    def _visit_limit_reached(self) -> bool:
        limit = self.run.max_visits
        return bool(limit and self.visits_started >= limit)

    def _daily_cap_reached(self, start: float) -> bool:
        """Count visits per day in the run's time zone; past the cap, drop visits until
        the next day starts (the run pauses and resumes by itself)."""
        if not self.run.daily_cap:
            return False
        zone = ZoneInfo(self.runtimes[0].stream.timezone) if self.runtimes else UTC
        day = datetime.fromtimestamp(start, zone).date().isoformat()
        if day != self._day_key:
            if self._cap_logged_for:
                self.log(RunLog.Level.INFO, f"New day {day}: resuming after the daily cap.")
                self._cap_logged_for = None
            self._day_key, self._visits_today = day, 0
        if self._visits_today < self.run.daily_cap:
            return False
        if self._cap_logged_for != day:
            self._cap_logged_for = day
            self.log(RunLog.Level.INFO, f"Daily cap of {self.run.daily_cap} visits reached; pausing until tomorrow.")
        return True

    def _play_visit(self, runtime: TargetRuntime, visit) -> None:
        """Single mode: each hit at its due time, one after the other (a hit is sent only
        after the previous one settled, so a retried hit can never be overtaken by the
        next one of the same visitor). Bulk mode: the whole visit once its last hit is
        due, with `cdt` so Matomo records the real times. A visit counts as delivered
        when Matomo accepted its hits (some of them, in single mode)."""
        delivered = False
        try:
            if runtime.sender.bulk:
                self._sleep_until(visit.end)
                if not self.stop_event.is_set():
                    done: gevent.event.AsyncResult[object] = gevent.event.AsyncResult()
                    runtime.sender.send_visit(runtime.stream.encode(visit, with_cdt=True), on_done=done.set)
                    delivered = done.get() in ("accepted", "partial")
            else:
                for due, query in runtime.stream.encode_timed(visit):
                    self._sleep_until(due)
                    if self.stop_event.is_set():
                        return
                    done = gevent.event.AsyncResult()
                    runtime.sender.send_hit(query, on_done=done.set)
                    outcome = done.get()
                    if outcome == "abandoned":
                        return
                    delivered = delivered or outcome == "accepted"
        except Exception as exc:  # a sender closed under us at stop, or a bug: never silent
            if not self.stop_event.is_set():
                logger.exception("Visit failed")
                runtime.telemetry.event_once(f"visit-error:{type(exc).__name__}", "error", f"Visit failed: {exc!r}")
            return
        runtime.telemetry.finish_visits()
        if delivered:
            runtime.telemetry.deliver_visits()

    def _sleep_until(self, due: float) -> None:
        delay = due - time.time()
        if delay > 0:
            self.stop_event.wait(delay)

    # --- stopping ------------------------------------------------------------------

    def stop(self, status: Run.Status, reason: str) -> None:
        """End the loop; ``status`` is the run's final status unless every target failed."""
        if not self.stop_event.is_set():
            self.final_status, self.stop_reason = status, reason
            self.stop_event.set()

    def shutdown(self) -> Run.Status:
        """No new hits; in-flight requests get a short grace; final counters flushed."""
        for runtime in self.runtimes:
            runtime.sender.close(grace_seconds=STOP_GRACE, flush=False)
        self.visits.kill(block=True, timeout=2.0)
        for runtime in self.runtimes:
            left_out = runtime.stream.goals.describe_left_out() if runtime.stream.goals else ""
            if left_out:
                self.log(RunLog.Level.INFO, f"{runtime.run_target.target.name}: {left_out}.", runtime.run_target)
        status = self.final_status
        if status == Run.Status.COMPLETED and self._all_targets_failed():
            status = Run.Status.FAILED
            self.stop_reason += " Most hits failed on every target; see the log."
        self.flush()
        self.write_sample(_next_minute(time.time()))
        return status

    def _all_targets_failed(self) -> bool:
        snapshot = self.telemetry.snapshot()["targets"]
        return bool(snapshot) and all(data["sent"] and not data["accepted"] for data in snapshot.values())

    # --- reporting -------------------------------------------------------------------

    def snapshot(self) -> RunStats:
        stats = carry_over(self.previous_stats, self.telemetry.snapshot())
        now = time.monotonic()
        for runtime in self.runtimes:
            rate = runtime.visits_per_day(now)
            stats["targets"][str(runtime.run_target.pk)]["visits_per_day"] = rate
        stats["totals"]["visits_per_day"] = sum(data.get("visits_per_day", 0) for data in stats["targets"].values())
        return stats

    def flush(self) -> None:
        """One UPDATE for stats + heartbeat, the log events since the last flush."""
        stats = self.snapshot()
        self.run.heartbeat(stats)
        by_key = {str(rt.run_target.pk): rt.run_target for rt in self.runtimes}
        events = self.telemetry.drain_events()
        if events:
            RunLog.objects.bulk_create(
                RunLog(run=self.run, level=level, message=message, target=by_key[key].target if key in by_key else None)
                for key, level, message in events
            )
        if self.progress:
            self.progress(stats)

    def write_sample(self, minute_end: float) -> None:
        sample = self.telemetry.minute_sample()
        if not (sample["hits"] or sample["errors"]):
            return
        minute = datetime.fromtimestamp(minute_end - 60, UTC).replace(second=0, microsecond=0)
        RunSample.objects.update_or_create(
            run=self.run,
            minute=minute,
            defaults={k: sample[k] for k in ("hits", "accepted", "errors", "p95_ms")},
        )

    def log(self, level: str, message: str, runtime_target: RunTarget | None = None) -> None:
        self.run.log(level, message, runtime_target.target if runtime_target else None)

    def _describe_targets(self) -> str:
        parts = [f"{rt.run_target.target.name} ({rt.stream.visits_per_day} visits/day)" for rt in self.runtimes]
        return ", ".join(parts) or "no targets"


# Counters that describe the present, not a running total: never carried over.
_NOT_CARRIED = {"in_flight", "events_dropped", "visits_per_day"}


def carry_over(previous: dict, current: RunStats) -> RunStats:
    """``current`` with the counters of a previous loader of the same run added (after a
    resume). Rates, latency and health describe the new loader only."""
    if not previous:
        return current

    def add(old: dict, new: dict) -> dict:
        merged = dict(new)
        for key, value in old.items():
            if key in _NOT_CARRIED or isinstance(value, bool):
                continue
            if isinstance(value, int) and isinstance(new.get(key, 0), int):
                merged[key] = new.get(key, 0) + value
            elif isinstance(value, dict) and key.endswith(("_by_status", "_by_reason")):
                merged[key] = {k: new.get(key, {}).get(k, 0) + v for k, v in value.items()} | {
                    k: v for k, v in new.get(key, {}).items() if k not in value
                }
        return merged

    old_targets = previous.get("targets", {})
    targets = {key: add(old_targets.get(key, {}), dict(data)) for key, data in current["targets"].items()}
    return cast(RunStats, {"totals": add(previous.get("totals", {}), dict(current["totals"])), "targets": targets})


def _next_minute(now: float) -> float:
    return (int(now) // 60 + 1) * 60


# --- Where a live run's visits come from: the traffic model, fed from the run's snapshot.
# This is the one place that turns Django objects (Run, RunTarget, Target, funnels) into the
# traffic model's plain inputs, so the loop above stays about pacing and sending.


@dataclass
class TargetStream:
    run_target: RunTarget
    visits: Iterator[Visit]
    visits_per_day: int
    timezone: str
    notice: str = ""
    cdt_format: CdtFormat = "datetime"
    # False when bulk requests would lose hits: a secure-only token with hits that need it.
    bulk_allowed: bool = True
    goals: SiteGoals | None = None

    def encode(self, visit: Visit, *, with_cdt: bool) -> list[str]:
        """Bulk entries ("?idsite=...") in time order, with cdt when asked."""
        return encode_visit(visit, cdt=self.cdt_format if with_cdt else None, prefix="?")

    def encode_timed(self, visit: Visit) -> list[tuple[float, str]]:
        """(due time, single-hit POST body) pairs. No cdt: Matomo dates a live hit on
        arrival, so a hit sent a little late can never be "older" than one it recorded."""
        head = encode_params(visit.params) + "&"
        return [(hit.due, head + encode_params(hit.params)) for hit in visit.hits]


def run_profile(run: Run, visits_per_day: int) -> Profile:
    return run.snapshot.profile(visits_per_day=max(1, visits_per_day))


def run_catalog(run: Run) -> Catalog:
    return run.snapshot.catalog()


def run_funnels(run: Run) -> list:
    """The funnels that apply to the run's preset, as traffic-model specs."""
    if run.preset is None:
        return []
    return Funnel.objects.specs_for_preset(run.preset)


def stream_seed(run: Run, run_target: RunTarget) -> str:
    """Each target gets its own stream, the same for the same seed and target in every run
    (so --seed reproduces a run). A resumed run starts its stream at a new time, which gives
    it new arrivals, and its order ids carry the new claim, so nothing is replayed."""
    return hashlib.sha256(f"{run.seed}:{run_target.target_id}".encode()).hexdigest()[:16]


def target_streams(run: Run, run_targets: list[RunTarget], *, start: float) -> list[TargetStream]:
    catalog = run_catalog(run)
    funnels = run_funnels(run)
    claim = run.claim_token.hex[:6] if run.claim_token else "local"
    streams = []
    for run_target in run_targets:
        target = run_target.target
        rate = run_target.share_of(run, run_targets)
        if rate <= 0:
            continue
        profile = run_profile(run, rate)
        zone = target.effective_timezone(profile.timezone)
        notices = []
        if profile.randomize_countries and not target.has_token:
            notices.append(
                f"Target {target.name} has no token: visitor countries (cip) are not sent to it, "
                "so its visits all come from this machine's IP."
            )
        bulk_allowed = True
        if run.bulk and target.has_token and profile.randomize_countries and not token_works_in_bulk(target):
            # Matomo ignores a secure-only token in a JSON bulk body, so every hit with
            # `cip` would come back invalid: send single hits (token in the POST form).
            bulk_allowed = False
            notices.append(
                f"Target {target.name}: its token is “secure only”, which Matomo ignores in bulk requests; hits "
                "with visitor countries go as single hits instead. Create a token with “Only allow secure "
                "requests” unticked to send in bulk."
            )
        goals = target.site_goals_for(catalog)
        notices.append(target.goals_notice(catalog))
        population = None
        continued = BackfillPlan.objects.population_for(target, run.preset)
        if continued is not None and profile.returning_visitor_share > 0:
            plan, population = continued
            notices.append(
                f"Target {target.name}: returning visitors continue those of backfill #{plan.pk} "
                f"({plan.start_date}–{plan.end_date}), so Matomo counts them as returning from the start."
            )
        notice = " ".join(n for n in notices if n)
        visits = live_visits(
            profile,
            catalog,
            funnels,
            seed=stream_seed(run, run_target),
            site_id=target.site_id,
            token_present=target.has_token,
            order_id_prefix=f"r{run.pk}-{claim}",
            timezone=zone,
            start=datetime.fromtimestamp(start, UTC),
            goals=goals,
            population=population,
        )
        streams.append(TargetStream(run_target, visits, rate, zone, notice, bulk_allowed=bulk_allowed, goals=goals))
    return streams


def execute_loader(run: Run, *, progress=None) -> Run:
    """Run the loop, stop cleanly on SIGTERM/SIGINT, and record how the run ended."""
    loader = LiveLoader(run, progress=progress)

    def on_signal() -> None:
        loader.stop(Run.Status.STOPPED, "Stopped: the loader process was asked to exit.")

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
