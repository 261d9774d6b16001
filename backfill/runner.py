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
2. The visits are packed, in start order, into bulk requests of whole visits of about
   ``request_hits(batch_size)`` hits (a quarter of a batch, at least 100), the same way
   on every attempt. The plan's ``requests_in_flight`` are in flight all the time:
   the next one leaves as soon as a slot is free, not when the slowest of a group is
   answered. The sender keeps each visitor's visits out of two requests at once (the
   visits of a visitor still in flight follow in a second part of the request, once
   that is answered; the rest does not wait), so Matomo sees every visitor's hits
   oldest first whatever order it serves requests in, and the day's first visit goes
   alone (requests that start a site-day together can deadlock Matomo 5.0.2).
3. Answers are counted in send order: the checkpoint (``visits_done``) is the prefix of
   requests all answered. ONE fenced UPDATE stores it (the counters, a heartbeat) and the
   window of visits after it that may be sent before the next checkpoint
   (``in_flight_visits``: the requests in flight plus about one batch); it is written
   whenever the prefix advanced by a batch or the window is used up. Every write is
   fenced by the day's claim token, so a cancelled plan, a failed sibling or a takeover
   stops this worker at its next write.
4. A worker that dies leaves ``visits_done`` and ``in_flight_visits``. The next worker
   (a re-delivered task, the Resume button, ``backfill --resume``) regenerates from
   ``visits_done``, packs the same requests, and resends those inside the window one at
   a time as resends: Matomo refuses a resent request it holds as older than the
   visitors' last actions (HTTP 500) and the sender, seeing Matomo answer a harmless
   probe, resends each of its visitors alone (the dead worker may have sent the request
   in parts, so only some of it may be stored): refused means recorded, counted once as
   accepted; a request it accepts was not recorded, except for
   visitors whose hits all share one second, which Matomo records again (counted
   "possibly duplicated"). So: no visit is lost, and at most the window (the requests in
   flight plus one batch) per interrupted worker can be repeated, in practice only its
   single-second visits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as datetime_time
from enum import StrEnum
from zoneinfo import ZoneInfo

import gevent
from django.db import connections, models, router, transaction
from django.utils import timezone

from backfill.models import HEARTBEAT_SECONDS, BackfillDay, BackfillLog, BackfillPlan
from backfill.planning import (
    plan_funnels,
    plan_goals,
    plan_population,
    plan_profile,
    request_hits,
)
from trafficinator.sending.sender import RetryPolicy, TargetSender
from trafficinator.sending.telemetry import OUTCOMES, describe_failure, failure_hint
from trafficinator.traffic import TrafficConfigError, Visit, day_visits, encode_visit

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
# Worst case for one batch: 5 x 30 s + 4 waits of at most ~66 s; heartbeats continue
# meanwhile, so a slow batch never looks like a dead worker.
RETRY = RetryPolicy(max_attempts=5, backoff_base=1.0, backoff_max=30.0, retry_after_max=60.0)
# While the next request is generated, give the greenlets sending the others a turn this
# often: a big body does not fit in the socket buffer at once, and Matomo can only start
# on a request once it has all of it.
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
class Request:
    """One bulk request: whole visits, encoded as bulk entries ("?idsite=...&cdt=..."),
    in start order, and their visitor ids (what the sender would read from each visit's
    first hit, known here without parsing it); ``result`` is set when it is settled
    (outcome, hits per outcome)."""

    visits: list[list[str]] = field(default_factory=list)
    visitors: list[str] = field(default_factory=list)
    hits: int = 0
    result: tuple[str, dict[str, int]] | None = None

    @property
    def count(self) -> int:
        return len(self.visits)

    def add(self, entries: list[str], visitor: str) -> None:
        self.visits.append(entries)
        self.visitors.append(visitor)
        self.hits += len(entries)

    def settle(self, outcome: str, tally: dict[str, int]) -> None:
        self.result = (outcome, tally)

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result[0] in ("accepted", "partial")


def iter_requests(visits: Iterator[Visit], hits_per_request: int) -> Iterator[Request]:
    """Pack visits into requests of at most ``hits_per_request`` hits; a visit is never
    split (a visit longer than that travels alone). Deterministic: a resumed worker packs
    the same requests from the same checkpoint."""
    request = Request()
    for number, visit in enumerate(visits, 1):
        if number % YIELD_EVERY_VISITS == 0:
            gevent.sleep(0)
        entries = encode_visit(visit, cdt="datetime", prefix="?")
        if request.hits and request.hits + len(entries) > hits_per_request:
            yield request
            request = Request()
        request.add(entries, visit.cid)  # sent as the hits' cid and _id
    if request.hits:
        yield request


def day_stream(plan: BackfillPlan, day: BackfillDay, *, skip: int | None = None) -> Iterator[Visit]:
    """The day's visits, exactly as every attempt generates them. Conversions go only to
    goals the site had at confirmation (as its last connection check saw them; see SiteGoals)."""
    catalog = plan.snapshot.catalog()
    return day_visits(
        plan_profile(plan),
        catalog,
        plan_funnels(plan),
        seed=plan.lane_seed(day.lane),
        site_id=day.target.site_id,
        token_present=True,
        order_id_prefix=plan.order_id_prefix,
        timezone=day.timezone,
        day=day.day,
        count=day.planned_visits,
        skip=day.visits_done if skip is None else skip,
        goals=plan_goals(plan, day.target, catalog),
        population=plan_population(plan, day.lane),
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

    def values(self) -> list:
        return [getattr(self, name) for name in DAY_STATE_COLUMNS]


DAY_STATE_COLUMNS = tuple(column.name for column in dataclasses.fields(DayState))


def _field(name: str) -> models.Field:
    column = BackfillDay._meta.get_field(name)
    assert isinstance(column, models.Field) and column.column, name
    return column


class FencedWriter:
    """One fenced UPDATE of the day (``BackfillDay.fenced``) that sets ``columns``, its
    SQL built once and run on the database driver's own cursor: the checkpoint and the
    heartbeat, written several times a second at full speed. The ORM's ``update()``
    builds and compiles the query on every call, and Django's cursor wraps every
    execute (with DEBUG on, SQLite even runs a second query to log it): ~0.6 ms of CPU
    of a checkpoint's ~0.8 ms in bench --only matomo's backfill. Values are prepared by
    the model's fields (numbers pass as they are), so the backend gets what the ORM
    would send; driver errors become Django's, as through the ORM."""

    def __init__(self, day: BackfillDay, token: uuid.UUID, columns: Sequence[str]) -> None:
        self.alias = router.db_for_write(BackfillDay)
        connection = connections[self.alias]
        quote = connection.ops.quote_name
        self.fields = [_field(name) for name in columns]
        fence = [
            (_field("id"), day.pk),
            (_field("claim_token"), token),
            (_field("status"), BackfillDay.Status.RUNNING),
        ]
        # Only the model's own table and column names, quoted; every value is a parameter.
        assignments = ", ".join(f"{quote(str(column.column))} = %s" for column in self.fields)
        condition = " AND ".join(f"{quote(str(column.column))} = %s" for column, _ in fence)
        sql = f"UPDATE {quote(BackfillDay._meta.db_table)} SET {assignments} WHERE {condition}"  # noqa: S608
        # The driver's placeholders: sqlite3 takes "?" (Django's SQLite cursor converts
        # "%s" on every execute), psycopg "%s".
        self.sql = sql.replace("%s", "?") if connection.vendor == "sqlite" else sql
        self.fence = [column.get_db_prep_value(value, connection) for column, value in fence]

    def __call__(self, values: Sequence) -> bool:
        """Write ``values`` (one per column); False when the day is no longer held."""
        connection = connections[self.alias]
        params = [
            value if type(value) in (int, float) else column.get_db_prep_save(value, connection)
            for column, value in zip(self.fields, values, strict=True)
        ]
        connection.ensure_connection()
        with transaction.mark_for_rollback_on_error(using=self.alias), connection.wrap_database_errors:
            cursor = connection.connection.cursor()
            try:
                cursor.execute(self.sql, params + self.fence)
                return cursor.rowcount > 0
            finally:
                cursor.close()


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
        self.write_checkpoint = FencedWriter(day, token, [*DAY_STATE_COLUMNS, "in_flight_visits", "heartbeat_at"])
        self.write_heartbeat = FencedWriter(day, token, ["heartbeat_at"])
        # The pipeline: requests in send order until counted into the checkpoint; visits
        # sent this session (counted from ``first_visit``); the announced window's end.
        self.pending: deque[Request] = deque()
        self.first_visit = day.visits_done
        self.sent = 0
        self.window_end = 0
        self.hits_since_checkpoint = 0
        self.mean_visit_hits = 4.0
        # Visits after the checkpoint that the previous worker may have sent.
        self.in_doubt = day.in_flight_visits if day.visits_done < day.planned_visits else 0
        self.resent_hits = 0
        self.resent_logged = False
        self.already_before: dict[str, int] = {}
        self.failing = False  # the plan fails once what is in flight is counted

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> DayResult:
        day = self.day
        try:
            requests = iter_requests(day_stream(self.plan, day), request_hits(self.plan.batch_size))
            if day.visits_done < day.planned_visits:
                self._preflight()
            for request in requests:
                self._advance()
                if self._time_to_pause():
                    self._drain()
                    return self._pause()
                if self.in_doubt >= request.count:
                    self.in_doubt -= request.count
                    self._resend(request)
                    continue
                # Past the window (a request that ends beyond it never went out).
                self.in_doubt = 0
                self._log_resent()
                self._send(request)
            self._drain()
            self._log_resent()
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
            concurrency=self.plan.requests_in_flight,
            timeout=REQUEST_TIMEOUT,
            bulk=True,
            batch_size=2**31,  # requests are packed here, whole visits, and sent with send_request
            max_batch_delay=math.inf,
            retry=RETRY,
            fallback_to_single=False,  # a secure-only token fails the plan with advice instead
            name=self.target.name,
            timezone=self.day.timezone,
            # The runner paces its requests too; parts and retries are paced by the sender.
            min_interval=self.interval,
        )

    def _time_to_pause(self) -> bool:
        return (self.deadline is not None and time.monotonic() >= self.deadline) or self.should_stop()

    def _pace(self) -> None:
        """Keep to the requests-per-second limit, still writing heartbeats."""
        while True:
            wait = self.next_request_at - time.monotonic()
            if wait <= 0:
                break
            gevent.sleep(min(wait, 1.0))
            self._beat_if_due()
        # Strict spacing: a late request never earns a second one right behind it (with the
        # old catch-up of one interval the first two requests went out together, so the
        # limit allowed rps + 1 requests in a second).
        self.next_request_at = max(self.next_request_at, time.monotonic()) + self.interval

    def _beat_if_due(self) -> None:
        if time.monotonic() - self.last_beat >= HEARTBEAT_SECONDS:
            self._heartbeat()

    def _send(self, request: Request, *, resend: bool = False) -> None:
        """Put one request in flight as soon as a slot is free and none of its visitors is
        in flight; checkpoint first if it would leave the announced window."""
        sender = self.sender
        if self.sent + request.count > self.window_end or self.hits_since_checkpoint >= self.plan.batch_size:
            self._checkpoint(next_visits=request.count)
        self._pace()
        while not sender.ready(1.0):
            self._beat_if_due()
            self._advance()
        sender.send_request(request.visits, request.settle, resend=resend, visitors=request.visitors)
        self.pending.append(request)
        self.sent += request.count
        self.mean_visit_hits = 0.9 * self.mean_visit_hits + 0.1 * (request.hits / request.count)

    def _advance(self) -> None:
        """Count the answered requests at the head of the send order into the checkpoint
        state; a request that failed for good fails the plan (after its predecessors)."""
        state = self.state
        while self.pending and self.pending[0].result is not None:
            request = self.pending.popleft()
            tally = request.result[1] if request.result else {}
            state.hits_sent += request.hits
            state.hits_accepted += tally.get("accepted", 0)
            state.hits_invalid += tally.get("invalid", 0)
            state.hits_failed += sum(tally.get(kind, 0) for kind in _FAILED_OUTCOMES)
            self.session_hits += request.hits
            if not request.ok:
                self._log_events()
                raise Abort(self._failure_reason(request.hits, tally))
            state.visits_done += request.count
            self.hits_since_checkpoint += request.hits
        self._check_invalid()

    def _drain(self) -> None:
        """Wait until every request sent is answered (writing heartbeats), and count them."""
        while not self.sender.join(timeout=1.0):
            self._beat_if_due()
            self._advance()
        self._advance()
        self._log_events()

    def _resend(self, request: Request) -> None:
        """A request inside the window of the worker that stopped: it may be recorded
        already. Sent alone, as a resend (see the module docstring, step 4)."""
        if not self.resent_hits:
            self._drain()
            self.already_before = self.sender.telemetry.counts()
            self._log(
                BackfillLog.Level.WARNING,
                f"Resuming at visit {self.state.visits_done:,} of {self.day.planned_visits:,}: up to "
                f"{self.day.in_flight_visits:,} visits that were in flight when the previous worker stopped are sent "
                "again, one request at a time. Matomo refuses what it recorded already (counted once); visitors whose "
                "hits share one second would be recorded twice (counted as possibly duplicated).",
            )
        self.state.hits_resent += request.hits
        self.resent_hits += request.hits
        self._send(request, resend=True)
        self._drain()

    def _log_resent(self) -> None:
        if not self.resent_hits or self.resent_logged:
            return
        self.resent_logged = True
        counts = self.sender.telemetry.counts()
        before = self.already_before
        already = counts["already_recorded"] - before.get("already_recorded", 0)
        doubled = counts["possibly_duplicated"] - before.get("possibly_duplicated", 0)
        self._log(
            BackfillLog.Level.INFO,
            f"Resent {self.resent_hits:,} hits that were in flight: Matomo held {already:,} of them already "
            f"(counted once, as accepted); {doubled:,} possibly duplicated.",
        )

    def _probe(self, epoch: float) -> int:
        """Invalid hits (0 or 1) of one excluded bulk entry dated ``epoch``: Matomo checks
        a ``cdt``'s age against the token and its raw-data retention before it excludes a
        hit without ``rec``, so this tells whether such dates are accepted, recording
        nothing either way."""
        stamp = time.strftime("%Y-%m-%d%%20%H:%M:%S", time.gmtime(epoch))
        probe = Request()
        probe.add([f"?idsite={self.target.site_id}&rec=0&cdt={stamp}"], "")
        self.sender.send_request(probe.visits, probe.settle)
        self.sender.join()
        self.sender.telemetry.drain_events()
        tally = probe.result[1] if probe.result else {}
        if not probe.ok:
            raise Abort(self._failure_reason(1, tally))
        return tally.get("invalid", 0)

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

    def _check_invalid(self) -> None:
        sender, state = self.sender, self.state
        if self.failing:
            return
        if sender.secure_only_token:
            # Count what Matomo answered first (the request that showed it may still wait
            # for its other part), so the plan's counters say what Matomo refused.
            self.failing = True
            self._drain()
            raise Abort(SECURE_ONLY_ADVICE.format(target=self.target.name))
        answered = state.hits_accepted + state.hits_invalid
        if answered >= INVALID_MIN_HITS and state.hits_invalid > INVALID_SHARE_LIMIT * answered:
            raise Abort(
                f"Matomo counted {state.hits_invalid:,} of {answered:,} hits of {self.day.day} invalid: "
                f"{failure_hint('invalid')}; or the days are older than Matomo's “Delete old raw data” setting."
            )

    def _failure_reason(self, hits: int, tally: dict[str, int]) -> str:
        kind = max(_FAILED_OUTCOMES, key=lambda k: tally.get(k, 0))
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

    def _fenced_write(self, write: FencedWriter, values: list) -> None:
        if not write(values):
            raise ClaimLost
        self.last_beat = time.monotonic()

    def _active_seconds(self) -> float:
        return self.active_before + (time.monotonic() - self.started)

    def _checkpoint(self, *, next_visits: int) -> None:
        """Store the answered prefix and announce the window of visits after it that may be
        sent before the next checkpoint: those in flight, plus about one batch."""
        self._advance()
        state = self.state
        ahead = max(next_visits, math.ceil(self.plan.batch_size / max(1.0, self.mean_visit_hits)))
        ahead = max(ahead, next_visits + self.in_doubt)  # still covering what may be recorded
        in_flight = self.sent - (state.visits_done - self.first_visit) + ahead
        self.window_end = self.sent + ahead
        self.hits_since_checkpoint = 0
        state.active_seconds = self._active_seconds()
        self._fenced_write(self.write_checkpoint, [*state.values(), in_flight, timezone.now()])
        if self.on_progress is not None:
            self.on_progress(self.day, state)

    def _heartbeat(self) -> None:
        self._fenced_write(self.write_heartbeat, [timezone.now()])

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
        """Checkpoint (nothing in flight) and give the day back, to be continued. Visits of
        a previous worker's window not resent yet stay marked in flight."""
        self.state.active_seconds = self._active_seconds()
        self._fenced_update(
            **self.state.fields(),
            in_flight_visits=self.in_doubt,
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
