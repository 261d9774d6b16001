"""Send one backfill day: its visits, oldest first, in bulk batches of whole visits,
with a checkpoint after every acknowledged batch.

The same function runs in a django-q2 task (``backfill.tasks``) and in the foreground
(``manage.py backfill``). It uses the live loader's ``TargetSender`` (gevent transport,
retries with backoff and Retry-After, classification, secure-only-token detection)
without monkey-patching, so it is safe inside a q2 worker.

Order and resume, per day:

0. A harmless probe first (one bulk entry without ``rec``, dated the day's first
   second): Matomo judges its ``cdt`` against the token and its raw-data retention and
   then excludes it, so a secure-only token or a too-old day fails the plan before any
   visit is recorded.
1. The day's visits come from ``day_visits(seed=lane seed, day=..., count=planned,
   skip=visits_done)``: the same visits in the same order on every attempt.
2. A batch is at most ``batch_size`` hits of whole visits in start order. It travels as
   up to ``REQUESTS_PER_BATCH`` bulk requests at once, split by visitor: every visit of
   one visitor goes into the same request, in order, so Matomo sees each visitor's hits
   oldest first whatever order it processes the requests in. Batch N+1 goes out only
   when every request of batch N is answered, and is generated while N is on the wire.
3. When N is acknowledged, ONE fenced UPDATE stores the checkpoint (visits_done through
   N, the counters, a heartbeat) and marks N+1 as in flight (``in_flight_visits``); then
   N+1 goes out. Every write is fenced by the day's claim token, so a cancelled plan, a
   failed sibling or a takeover stops this worker at its next write.
4. A worker that dies leaves ``visits_done`` and ``in_flight_visits``. The next worker
   (a re-delivered task, the Resume button, ``backfill --resume``) regenerates from
   ``visits_done`` and sends the in-flight batch again, request by request. If Matomo had
   recorded a request, it either records it again (only possible when all its hits share
   their second with the visitor's last recorded hit, i.e. bounces) or refuses it as
   older than the visitors' last actions (HTTP 500, rolled back); a harmless probe (one
   excluded ``rec=0`` entry) then tells such a refusal from an outage. So: no visit is
   lost, and at most one batch (``batch_size`` hits) per interrupted worker is repeated.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as datetime_time
from enum import StrEnum
from zoneinfo import ZoneInfo

import gevent
from django.utils import timezone

from backfill.models import HEARTBEAT_SECONDS, BackfillDay, BackfillLog, BackfillPlan
from backfill.planning import MIN_PART_HITS, REQUESTS_PER_BATCH, plan_funnels, plan_profile
from trafficinator.sending.sender import RetryPolicy, TargetSender
from trafficinator.sending.telemetry import OUTCOMES, describe_failure, failure_hint
from trafficinator.traffic import TrafficConfigError, day_visits, encode_visit
from trafficinator.traffic.visit import Visit

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
# Worst case for one batch: 5 x 30 s + 4 waits of at most ~66 s; heartbeats continue
# meanwhile, so a slow batch never looks like a dead worker.
RETRY = RetryPolicy(max_attempts=5, backoff_base=1.0, backoff_max=30.0, retry_after_max=60.0)
# The batch that was in flight when a worker died: a refusal is expected if Matomo had
# recorded it, so do not spend minutes retrying it.
IN_DOUBT_RETRY = RetryPolicy(max_attempts=2, backoff_base=0.5, backoff_max=1.0, retry_after_max=10.0)
# While the next batch is generated, give the greenlets sending the previous one a turn
# this often: a big body does not fit in the socket buffer at once, and Matomo can only
# start on a request once it has all of it.
YIELD_EVERY_VISITS = 10
# Abort when most answered hits are invalid (after at least this many hits).
INVALID_SHARE_LIMIT = 0.5
INVALID_MIN_HITS = 20
SECURE_ONLY_ADVICE = (
    "Matomo refuses hits dated more than 24 h ago from {target} although a token is set. The token is most likely "
    "“secure only” (Matomo 5's default for new tokens), which Matomo ignores in bulk requests, or it lost write "
    "access to the site. Create a token without “Only allow secure requests” (Matomo: Administration → Personal → "
    "Security → Auth tokens) for a user with write access, set it on the target, and run the plan again."
)
_FAILED_OUTCOMES = tuple(kind for kind in OUTCOMES if kind not in ("accepted", "invalid"))


@dataclass
class Part:
    """One bulk request of a batch: whole visits, all visits of a visitor together."""

    visits: list[list[str]] = field(default_factory=list)
    hits: int = 0
    outcome: str | None = None

    def settle(self, outcome: str) -> None:
        self.outcome = outcome

    @property
    def ok(self) -> bool:
        return self.outcome in ("accepted", "partial")


@dataclass
class Batch:
    """Whole visits, encoded as bulk entries ("?idsite=...&cdt=..."), in start order,
    with the visitor id of each (to split the batch by visitor)."""

    visits: list[list[str]] = field(default_factory=list)
    visitors: list[str] = field(default_factory=list)
    hits: int = 0
    parts: list[Part] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.visits)

    def add(self, visitor: str, entries: list[str]) -> None:
        self.visits.append(entries)
        self.visitors.append(visitor)
        self.hits += len(entries)

    def split(self, requests: int) -> list[Part]:
        """The batch's requests (deterministic: a resumed worker splits it the same way)."""
        count = max(1, min(requests, self.hits // MIN_PART_HITS))
        parts = [Part() for _ in range(count)]
        for visitor, entries in zip(self.visitors, self.visits, strict=True):
            part = parts[int(visitor[-6:], 16) % count] if count > 1 else parts[0]
            part.visits.append(entries)
            part.hits += len(entries)
        self.parts = [part for part in parts if part.hits]
        return self.parts

    @property
    def ok(self) -> bool:
        return all(part.ok for part in self.parts)


def iter_batches(visits: Iterator[Visit], batch_size: int) -> Iterator[Batch]:
    """Pack visits into batches of at most ``batch_size`` hits; a visit is never split
    (a visit longer than the batch size travels alone)."""
    batch = Batch()
    for number, visit in enumerate(visits, 1):
        if number % YIELD_EVERY_VISITS == 0:
            gevent.sleep(0)
        entries = encode_visit(visit, cdt="datetime", prefix="?")
        if batch.hits and batch.hits + len(entries) > batch_size:
            yield batch
            batch = Batch()
        batch.add(visit.cid, entries)
    if batch.hits:
        yield batch


def day_stream(plan: BackfillPlan, day: BackfillDay, *, skip: int | None = None) -> Iterator[Visit]:
    """The day's visits, exactly as every attempt generates them."""
    return day_visits(
        plan_profile(plan),
        plan.snapshot.catalog(),
        plan_funnels(plan),
        seed=plan.lane_seed(day.lane),
        site_id=day.target.site_id,
        token_present=True,
        order_id_prefix=plan.order_id_prefix,
        timezone=day.timezone,
        day=day.day,
        count=day.planned_visits,
        skip=day.visits_done if skip is None else skip,
    )


class DayOutcome(StrEnum):
    """How a day's session ended (``DayResult.outcome``)."""

    DONE = "done"
    PAUSED = "paused"  # deadline or stop request; resumable
    FAILED = "failed"  # the plan failed
    LOST = "lost"  # cancelled, failed elsewhere, or taken over by another worker
    BUSY = "busy"  # not claimed: held by another worker, or not its turn


@dataclass
class DayResult:
    day_id: int
    outcome: DayOutcome
    message: str = ""
    hits: int = 0


@dataclass
class DayState:
    """The day's counters as this worker keeps them (written at every checkpoint)."""

    visits_done: int
    hits_sent: int
    hits_accepted: int
    hits_invalid: int
    hits_failed: int
    hits_resent: int
    active_seconds: float

    @classmethod
    def of(cls, day: BackfillDay) -> DayState:
        return cls(
            day.visits_done,
            day.hits_sent,
            day.hits_accepted,
            day.hits_invalid,
            day.hits_failed,
            day.hits_resent,
            day.active_seconds,
        )

    def fields(self) -> dict:
        return dict(self.__dict__)


class Abort(Exception):
    """The plan must fail; the message is for the user as it is."""


class ClaimLost(Exception):
    pass


ProgressCallback = Callable[[BackfillDay, DayState], object]


def run_day(
    day_id: int,
    *,
    worker: str | None = None,
    deadline_seconds: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: ProgressCallback | None = None,
) -> DayResult:
    """Claim the day and send what is left of it. Never raises for Matomo's or the
    network's failures: they end the plan as failed with a reason."""
    claimed = BackfillDay.claim(day_id, worker)
    if claimed is None:
        day = BackfillDay.objects.filter(pk=day_id).first()
        if day is not None and day.status == BackfillDay.Status.RUNNING:
            why = f"held by {day.worker}"
        else:
            why = "not pending, or an earlier day of its lane is not done"
        return DayResult(day_id, DayOutcome.BUSY, f"Day {day_id} is not available ({why}).")
    day, token = claimed
    sender = DaySender(day, token, deadline_seconds=deadline_seconds, should_stop=should_stop, on_progress=on_progress)
    return sender.run()


class DaySender:
    def __init__(
        self,
        day: BackfillDay,
        token: uuid.UUID,
        *,
        deadline_seconds: float | None,
        should_stop: Callable[[], bool] | None,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.day = day
        self.plan = BackfillPlan.objects.get(pk=day.plan_id)
        self.target = day.target
        self.token = token
        self.state = DayState.of(day)
        self.started = time.monotonic()
        self.active_before = day.active_seconds
        self.deadline = self.started + deadline_seconds if deadline_seconds else None
        self.should_stop = should_stop or (lambda: False)
        self.on_progress = on_progress
        rps = self.plan.max_requests_per_second
        # The per-target limit is shared by the target's parallel lanes.
        self.interval = self.plan.parallel_days / rps if rps else 0.0
        self.next_request_at = -math.inf
        self.last_beat = time.monotonic()
        self.session_hits = 0
        self.sender = self._make_sender()
        self.counts = self.sender.telemetry.counts()

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> DayResult:
        day = self.day
        in_doubt = day.in_flight_visits if day.visits_done < day.planned_visits else 0
        try:
            batches = iter_batches(day_stream(self.plan, day), self.plan.batch_size)
            if day.visits_done < day.planned_visits:
                self._preflight()
            pending: Batch | None = None
            for batch in batches:
                if pending is not None:
                    self._settle(pending)
                    pending = None
                if self._time_to_pause():
                    return self._pause()
                if in_doubt:
                    in_doubt = 0
                    self._send_in_doubt(batch)
                    continue
                self._checkpoint(in_flight=batch.count)
                self._send(batch.split(REQUESTS_PER_BATCH))
                pending = batch
            if pending is not None:
                self._settle(pending)
            return self._finish()
        except ClaimLost:
            return self._lost()
        except Abort as exc:
            return self._fail(str(exc))
        except TrafficConfigError as exc:
            return self._fail(f"The preset or its funnels cannot generate traffic: {exc}")
        finally:
            self.sender.close(grace_seconds=0.0, flush=False)

    def _make_sender(self) -> TargetSender:
        return TargetSender(
            self.target.tracking_url,
            self.target.token_auth,
            concurrency=REQUESTS_PER_BATCH,
            timeout=REQUEST_TIMEOUT,
            bulk=True,
            batch_size=2**31,  # batches are packed here, whole visits, and flushed explicitly
            max_batch_delay=math.inf,
            retry=RETRY,
            fallback_to_single=False,  # a secure-only token fails the plan with advice instead
            name=self.target.name,
        )

    def _time_to_pause(self) -> bool:
        return (self.deadline is not None and time.monotonic() >= self.deadline) or self.should_stop()

    def _pace(self) -> None:
        """Keep to the requests-per-second limit (on average: a batch's requests leave
        together, then the next batch waits for them), still writing heartbeats."""
        while True:
            wait = self.next_request_at - time.monotonic()
            if wait <= 0:
                return
            gevent.sleep(min(wait, 1.0))
            if time.monotonic() - self.last_beat >= HEARTBEAT_SECONDS:
                self._heartbeat()

    def _send(self, parts: list[Part]) -> None:
        self._pace()
        self.next_request_at = time.monotonic() + self.interval * len(parts)
        sender = self.sender
        for part in parts:
            for index, entries in enumerate(part.visits):
                sender.send_visit(entries, on_done=part.settle if index == 0 else None)
            sender.flush()
        # Let the requests' greenlets put them on the wire; the next batch is then
        # generated while Matomo works on this one.
        gevent.sleep(0)

    def _wait(self) -> dict[str, int]:
        """Wait until every request sent is answered, writing heartbeats; returns the
        outcome counts of its hits."""
        while not self.sender.join(timeout=1.0):
            if time.monotonic() - self.last_beat >= HEARTBEAT_SECONDS:
                self._heartbeat()
        counts = self.sender.telemetry.counts()
        delta = {kind: counts[kind] - self.counts.get(kind, 0) for kind in OUTCOMES}
        self.counts = counts
        return delta

    def _count(self, hits: int, delta: dict[str, int]) -> None:
        state = self.state
        state.hits_sent += hits
        state.hits_accepted += delta["accepted"]
        state.hits_invalid += delta["invalid"]
        state.hits_failed += sum(delta[kind] for kind in _FAILED_OUTCOMES)
        self.session_hits += hits

    def _settle(self, batch: Batch) -> None:
        delta = self._wait()
        self._log_events()
        self._count(batch.hits, delta)
        if not batch.ok:
            raise Abort(self._failure_reason(batch.hits, delta))
        self.state.visits_done += batch.count
        self._check_invalid()

    def _send_in_doubt(self, batch: Batch) -> None:
        """The batch that was in flight when the previous worker stopped: its requests
        one at a time, so each refusal can be told apart."""
        self._log(
            BackfillLog.Level.WARNING,
            f"Resuming at visit {self.state.visits_done:,} of {self.day.planned_visits:,}: the batch that was in "
            f"flight when the previous worker stopped ({batch.count} visits, {batch.hits} hits) is sent again. "
            "If Matomo had recorded it, it refuses it or records it twice (at most this one batch).",
        )
        self._checkpoint(in_flight=batch.count)
        self.sender.retry = IN_DOUBT_RETRY
        recorded = 0
        try:
            for part in batch.split(REQUESTS_PER_BATCH):
                self._send([part])
                delta = self._wait()
                self.sender.telemetry.drain_events()  # an expected refusal is not news
                self.state.hits_resent += part.hits
                if part.ok:
                    self._count(part.hits, delta)
                elif delta["server_errors"] == part.hits and self._matomo_answers():
                    # Matomo works but refuses exactly these visits: it holds them already
                    # (their first hits are older than the visitors' last actions).
                    self._count(part.hits, dict.fromkeys(OUTCOMES, 0) | {"accepted": part.hits})
                    recorded += len(part.visits)
                else:
                    self._count(part.hits, delta)
                    raise Abort(self._failure_reason(part.hits, delta))
        finally:
            self.sender.retry = RETRY
        self.state.visits_done += batch.count
        if recorded:
            self._log(
                BackfillLog.Level.INFO,
                f"Matomo refused {recorded} resent visit(s) as older than what it holds while accepting other "
                "requests: it had recorded them before the interruption. Counted as accepted.",
            )
        self._check_invalid()

    def _probe(self, epoch: float) -> int:
        """Invalid hits (0 or 1) of one excluded bulk entry dated ``epoch``: Matomo checks
        a ``cdt``'s age against the token and its raw-data retention before it excludes a
        hit without ``rec``, so this tells whether such dates are accepted, recording
        nothing either way."""
        probe = Part()
        stamp = time.strftime("%Y-%m-%d%%20%H:%M:%S", time.gmtime(epoch))
        probe.visits.append([f"?idsite={self.target.site_id}&rec=0&cdt={stamp}"])
        probe.hits = 1
        self._send([probe])
        delta = self._wait()
        self.sender.telemetry.drain_events()
        if probe.outcome not in ("accepted", "partial"):
            raise Abort(self._failure_reason(1, delta))
        return delta["invalid"]

    def _preflight(self) -> None:
        """Before the day's first batch: are hits of this day accepted with this token in a
        bulk body? Fails the plan with the precise reason before anything is recorded."""
        day_start = datetime.combine(self.day.day, datetime_time(0), tzinfo=ZoneInfo(self.day.timezone))
        if not self._probe(day_start.timestamp()):
            return
        if self._probe(time.time() - 25 * 3600):
            raise Abort(SECURE_ONLY_ADVICE.format(target=self.target.name))
        raise Abort(
            f"Matomo refuses hits dated {self.day.day} for {self.target.name} although the token works for hits "
            "of yesterday: the day is older than Matomo's “Delete old raw data” setting (Administration → Privacy → "
            "Anonymize data). Shorten the window to recent days, or change that setting."
        )

    def _matomo_answers(self) -> bool:
        """A harmless request: a bulk entry without ``rec`` is excluded by Matomo
        (answered as tracked, recorded nowhere). Success means the tracker works."""
        probe = Part()
        probe.visits.append([f"?idsite={self.target.site_id}&rec=0"])
        probe.hits = 1
        self._send([probe])
        self._wait()
        self.sender.telemetry.drain_events()
        return probe.ok

    def _check_invalid(self) -> None:
        sender, state = self.sender, self.state
        if sender.secure_only_token:
            raise Abort(SECURE_ONLY_ADVICE.format(target=self.target.name))
        answered = state.hits_accepted + state.hits_invalid
        if answered >= INVALID_MIN_HITS and state.hits_invalid > INVALID_SHARE_LIMIT * answered:
            raise Abort(
                f"Matomo counted {state.hits_invalid:,} of {answered:,} hits of {self.day.day} invalid: "
                f"{failure_hint('invalid')}; or the days are older than Matomo's “Delete old raw data” setting."
            )

    def _failure_reason(self, hits: int, delta: dict[str, int]) -> str:
        kind = max(_FAILED_OUTCOMES, key=lambda k: delta.get(k, 0))
        snapshot = self.sender.telemetry.snapshot()
        statuses = {
            "rejected": snapshot.get("rejected_by_status"),
            "server_errors": snapshot.get("server_errors_by_status"),
        }
        by_status = statuses.get(kind) or {}
        key = f"{kind}:{max(by_status, key=lambda status: by_status[status])}" if by_status else kind
        hint = failure_hint(key)
        attempts = self.sender.retry.max_attempts
        return (
            f"Bulk requests to {self.target.name} ({hits} hits of {self.day.day}) failed after "
            f"{attempts} attempt(s): {describe_failure(key)}" + (f". {hint[0].upper()}{hint[1:]}." if hint else ".")
        )

    # --- database (all from this greenlet) -------------------------------------------------

    def _fenced_update(self, **changes) -> None:
        if not self.day.fenced(self.token).update(**changes):
            raise ClaimLost
        self.last_beat = time.monotonic()

    def _active_seconds(self) -> float:
        return self.active_before + (time.monotonic() - self.started)

    def _checkpoint(self, *, in_flight: int) -> None:
        self.state.active_seconds = self._active_seconds()
        self._fenced_update(**self.state.fields(), in_flight_visits=in_flight, heartbeat_at=timezone.now())
        if self.on_progress is not None:
            self.on_progress(self.day, self.state)

    def _heartbeat(self) -> None:
        self._fenced_update(heartbeat_at=timezone.now())

    def _finish(self) -> DayResult:
        self.state.active_seconds = self._active_seconds()
        now = timezone.now()
        self._fenced_update(
            **self.state.fields(),
            in_flight_visits=0,
            status=BackfillDay.Status.DONE,
            claim_token=None,
            heartbeat_at=now,
            finished_at=now,
        )
        if self.on_progress is not None:
            self.on_progress(self.day, self.state)
        return DayResult(
            self.day.pk, DayOutcome.DONE, f"Day {self.day.day} of {self.target.name} done.", self.session_hits
        )

    def _pause(self) -> DayResult:
        """Checkpoint (nothing in flight) and give the day back, to be continued."""
        self.state.active_seconds = self._active_seconds()
        self._fenced_update(
            **self.state.fields(),
            in_flight_visits=0,
            status=BackfillDay.Status.PENDING,
            claim_token=None,
            heartbeat_at=timezone.now(),
        )
        return DayResult(
            self.day.pk,
            DayOutcome.PAUSED,
            f"Day {self.day.day} of {self.target.name} paused at visit {self.state.visits_done:,} "
            f"of {self.day.planned_visits:,}.",
            self.session_hits,
        )

    def _fail(self, reason: str) -> DayResult:
        self.state.active_seconds = self._active_seconds()
        # The checkpoint stays before the failed batch (still marked in flight): nothing
        # answered is lost, nothing unanswered is counted as sent.
        self.day.fenced(self.token).update(
            **self.state.fields(),
            status=BackfillDay.Status.FAILED,
            claim_token=None,
            message=reason,
            finished_at=timezone.now(),
        )
        self._log_events()
        self.plan.fail(reason)
        return DayResult(self.day.pk, DayOutcome.FAILED, reason, self.session_hits)

    def _lost(self) -> DayResult:
        plan = BackfillPlan.objects.get(pk=self.plan.pk)
        why = f"the plan is {plan.status}" if plan.status != BackfillPlan.Status.RUNNING else "another worker took it"
        return DayResult(
            self.day.pk,
            DayOutcome.LOST,
            f"Stopped sending {self.day.day} of {self.target.name}: {why}.",
            self.session_hits,
        )

    def _log(self, level: str, message: str) -> None:
        self.plan.log(level, message, target=self.target, day=self.day.day)

    def _log_events(self) -> None:
        for level, message in self.sender.telemetry.drain_events():
            self._log(level if level in BackfillLog.Level.values else BackfillLog.Level.INFO, message)
