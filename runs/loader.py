"""The live loader: paces visits in wall-clock time, hands their hits to the senders, and
reports to the database. Runs inside ``manage.py run_loader`` / ``run_traffic`` (gevent
monkey-patched).

Greenlets and threads:
- the scheduler (``LiveLoader.run_loop``, the main greenlet) admits due visits, within
  bounds (admission control, below), and hands DB work to the DB threads, never waiting
  for it;
- single hits: ``concurrency`` worker greenlets per target each pop the next due hit
  from the target's heap and send it themselves (``TargetSender.deliver_hit``), one at
  a time: no greenlet per hit, and at most ``concurrency`` requests in flight, which is
  the backpressure;
- bulk: one dispatcher greenlet per target pops due visits and hands them to its
  sender, which batches them and blocks while ``concurrency`` requests are in flight;
  the sender's own greenlets do the HTTP;
- two real OS threads do all database work, so a slow or locked database never stops
  the sending: the *checker* reads the claim and stop requests every ``CHECK_EVERY``
  (a plain SELECT, which another process's write lock does not block) on its own clock,
  extends the lease itself and wakes the scheduler only to end the loop, the *writer*
  writes stats, heartbeat, run log and chart rows every ``FLUSH_EVERY`` (a write held up
  by a lock is simply not repeated until it is done).

Admission control. A visit is started only while the target has fewer than its share of
``LOADER_MAX_VISITS_IN_PROGRESS`` visits in progress, holds less than its share of
``LOADER_MEMORY_BUDGET_MB`` of held hits, with single hits fewer than keep its
sender busy twice over (``single_visit_cap``: more would only queue hits that wait, hold
memory and drain slowly at stop), and its due hits are not waiting more than
``ADMIT_MAX_LAG``. So memory is bounded whatever rate is asked. A loader that cannot keep
up starts visits later than scheduled (each visit keeps its own relative timing) and says
so: ``lag_seconds`` (how far behind schedule it is), ``visits_behind`` (visits due but not
started), ``delivered_percent`` and ``saturated`` (lag above ``SATURATED_LAG``), in the
stats and the run log. Latency is the request's own time; the time a hit waited in the
loader is ``wait_ms``.

Fencing. Every claim of a run has a token; every write of this loader is conditional on
it (``RunShard.report`` / ``finish_claimed``). The loader sends only while its claim was
confirmed within ``claim_lease()`` (a third of the heartbeat staleness after which a run
can be resumed): a loader frozen (SIGSTOP, a paused VM) long enough to be resumed by
another one finds its lease expired when it wakes, sends nothing, learns at its next
check that it was superseded, and exits without writing anything.

Shards. A run of N shards has N loaders (runs.models.RunShard). Every target's stream is
made of ``STREAM_PARTS`` sub-streams (trafficinator.traffic.live_visits ``parts``), whatever
N: each arrival is dealt to a part, and each part has its own random numbers and its own
returning visitors. Shard k generates and sends only the parts p with p mod N == k
(``shard_parts``), so the shards' visits are disjoint, their union is the same stream for
1 or 64 shards, every visit of one visitor (returning visitors included) goes through one
shard, in order, and a shard spends generation time only on its own visits (plus an
arrival time per visit of the others). A visit limit counts stream positions, not this
loader's visits: each target sends the first ``quota`` visits of its stream (the limit
split over targets by rate), whichever shard they fall in. Concurrency is split over the
shards.

This module is the live loader's one home: the visit streams per target (fed from the
run's snapshot), the loop, and ``execute_loader``, which the commands ``run_loader`` and
``run_traffic`` call.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import itertools
import logging
import math
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import gevent
import gevent.event
import gevent.lock
import gevent.threadpool
from django.conf import settings
from django.db import connections
from gevent import get_hub
from gevent.monkey import get_original

from backfill.models import BackfillPlan
from funnels.models import Funnel
from runs.models import MAX_SHARDS, Run, RunLog, RunShard, RunTarget, stored_stats
from targets.checks import token_works_in_bulk
from trafficinator.sending.sender import SenderClosed, TargetSender
from trafficinator.sending.telemetry import RunStats, RunTelemetry, TargetTelemetry, delivered_percent
from trafficinator.traffic import (
    Catalog,
    CdtFormat,
    Profile,
    SiteGoals,
    Visit,
    encode_entries,
    encode_visit,
    expected_visits,
    hit_queries,
    live_visits,
    resolve_timezone,
    visit_head,
)

logger = logging.getLogger(__name__)
# A real OS lock even when monkey-patched: the claim checker's thread sleeps on it.
_real_lock = get_original("_thread", "allocate_lock")
# A terminal's progress line: called with the figures after each report.
Progress = Callable[[RunStats], object]

TICK = 0.2  # the scheduler's sleep while a target cannot start a due visit (see _idle_wait)
CHECK_EVERY = 0.25  # seconds between claim + stop-request reads (one cheap SELECT)
FLUSH_EVERY = 2.0  # seconds between DB reports (stats + heartbeat + log + chart row)
STOP_GRACE = 1.0  # seconds in-flight requests get after a stop (all targets at once)
HAND_BACK_GRACE = 5.0  # ... when handing a shard back (no user waits; an abandoned hit is a lost one)
REQUEST_TIMEOUT = 10.0
ADMIT_MAX_LAG = 0.5  # start no new visit while a target's due hits wait longer than this
ADMIT_PER_PASS = 100  # visits started per target and scheduler pass before letting I/O run
# Visits starting within this many seconds are started in one scheduler pass (their hits
# still leave at their own due times), and the scheduler wakes ADMIT_AHEAD / 2 before the
# next start: ~20 passes a second instead of one per visit.
ADMIT_AHEAD = 0.1
# Bulk visits wait in the sender's buffer anyway (up to its max_batch_delay, 1 s) and
# carry their hits' times (cdt): fewer passes, each generating more visits (up to
# ADMIT_PER_PASS), cost less per hit. One target at 50 M visits/day: 21,700 to 27,100
# hits per loader CPU-second (means of alternated pairs); at capacity no change.
BULK_ADMIT_AHEAD = 0.5
# Seconds between two computations of a target's visit cap: it follows the mean latency
# of the minute and the visits' mean span, which move slowly, while a saturated loader
# asks at every pass (~160 a second, each target) whether a slot is free.
VISIT_CAP_REFRESH = 0.25
# Bytes a held bulk hit costs besides its query's text (the str object, its due time as a
# float, two list slots), counted towards LOADER_MEMORY_BUDGET_MB with the text.
HELD_HIT_OVERHEAD = 96
# A target's dispatcher sleeps at least this long for its next due hit or visit, so the
# hits due within it leave in one wake-up (at most this late; the loader wait shows it).
DISPATCH_QUANTUM = 0.01
# Bulk visits wait in the sender's buffer for a batch (up to its max_batch_delay, 1 s)
# and carry their hits' times (cdt): their dispatcher wakes at most every 0.1 s.
BULK_DISPATCH_QUANTUM = 0.1
SATURATED_LAG = 2.0  # behind schedule by more than this: "generator saturated"
RECOVERED_LAG = 0.5  # ... and back on schedule below this
SUPERSEDED = "superseded"  # run_loop's result when another loader took the run over (not a Run.Status)
HANDED_BACK = "handed back"  # run_loop's result when the loader was asked to exit and gives its shard back


# Sub-streams of every live stream: as many as a run may have shards, so every shard
# count divides the same stream (changing it changes what a seed generates).
STREAM_PARTS = MAX_SHARDS


def _wait_at_most(event: gevent.event.Event, seconds: float) -> None:
    """``event.wait(seconds)`` where a timer sets the event when the time is up: a wait
    with a timeout throws a gevent Timeout into the waiting greenlet when it expires
    (measured ~25 us of CPU more per wake-up), and a worker sleeping until the next hit is
    due wakes that way about every DISPATCH_QUANTUM."""
    timer = get_hub().loop.timer(seconds)
    timer.start(event.set)
    try:
        event.wait()
    finally:
        timer.close()


def shard_parts(index: int, count: int) -> range:
    """The sub-streams shard ``index`` of ``count`` generates and sends."""
    return range(index, STREAM_PARTS, count)


def shard_of(visit: Visit, shard_count: int) -> int:
    """The shard that sends ``visit``: a function of its sub-stream alone (a visitor's
    visits are all in one sub-stream)."""
    return visit.part % shard_count


def split_evenly(total: int, index: int, count: int) -> int:
    """Shard ``index``'s part of ``total`` split over ``count`` shards (parts add up)."""
    return total // count + (1 if index < total % count else 0)


def target_quotas(limit: int, rates: list[int]) -> list[int]:
    """A visit limit split over targets by rate (largest remainder: they add up to it)."""
    total = sum(rates)
    if total <= 0:
        return [0] * len(rates)
    exact = [limit * rate / total for rate in rates]
    quotas = [int(value) for value in exact]
    by_remainder = sorted(range(len(rates)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: limit - sum(quotas)]:
        quotas[i] += 1
    return quotas


def claim_lease() -> float:
    """Seconds a confirmed claim lets the loader send. Well below the staleness after
    which a run can be resumed, so no loader can still be sending once another claims."""
    return settings.RUN_HEARTBEAT_STALE_SECONDS / 3


class DbThread:
    """One real OS thread for database work, fed from greenlets without blocking them.

    Before ``start()`` (and after ``close()``) jobs run inline, which is what code outside
    the loop (setup, tests of single methods) wants."""

    def __init__(self) -> None:
        self._pool: gevent.threadpool.ThreadPool | None = None

    def start(self) -> None:
        self._pool = gevent.threadpool.ThreadPool(1)

    def submit(self, fn: Callable, *args) -> gevent.event.AsyncResult:
        if self._pool is None:
            result: gevent.event.AsyncResult = gevent.event.AsyncResult()
            try:
                result.set(fn(*args))
            except Exception as exc:
                result.set_exception(exc)
            return result
        return self._pool.spawn(fn, *args)

    def close(self, timeout: float = 5.0) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:  # the thread's own DB connection, else it outlives the loader
            pool.spawn(connections.close_all).get(timeout=timeout)
        except Exception:  # pragma: no cover - a locked DB at exit: the process ends anyway
            logger.warning("Could not close the DB thread's connection", exc_info=True)
        pool.kill()


class ClaimChecker:
    """The *checker*: one real OS thread that reads the claim and the stop request every
    ``every`` seconds (``check()``: one SELECT), on its own clock.

    A confirmed claim extends the lease at once (``on_confirmed(started)``, a float the
    senders read); only a verdict that ends the loop (the claim superseded, a stop
    requested) is handed to the scheduler: ``verdict`` is set and ``on_verdict`` runs in
    the loop's hub. So a loader that holds its claim spends no scheduler wake-up and no
    greenlet hand-off per check. A failed read is logged and changes nothing (the lease
    runs out unless a later read works)."""

    def __init__(
        self,
        check: Callable[[], tuple[bool, bool]],
        on_confirmed: Callable[[float], None],
        on_verdict: Callable[[], None],
        every: float = CHECK_EVERY,
    ) -> None:
        self._check = check
        self._on_confirmed = on_confirmed
        self._on_verdict = on_verdict
        self.every = every
        self.verdict: tuple[bool, bool] | None = None  # (owned, stop requested), once it ends the loop
        self._pool: gevent.threadpool.ThreadPool | None = None
        self._job: gevent.event.AsyncResult | None = None
        self._closing = _real_lock()

    def start(self) -> None:
        self._closing.acquire()  # released by close(): the thread's sleep ends at once
        self._pool = gevent.threadpool.ThreadPool(1)
        self._job = self._pool.spawn(self._run, gevent.get_hub().loop)

    def _run(self, loop) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    claim = self._check()
                except Exception as exc:
                    logger.warning("Loader DB work failed: %r", exc)
                    claim = None
                if claim is not None:
                    owned, stop_requested = claim
                    if owned:
                        self._on_confirmed(started)
                    if not owned or stop_requested:
                        self.verdict = (owned, stop_requested)
                        loop.run_callback_threadsafe(self._on_verdict)
                        return
                if self._closing.acquire(timeout=max(0.0, started + self.every - time.monotonic())):
                    return
        finally:
            connections.close_all()  # the thread's own DB connection, else it outlives the loader

    def close(self, timeout: float = 5.0) -> None:
        pool, job, self._pool, self._job = self._pool, self._job, None, None
        if pool is None or job is None:
            return
        self._closing.release()
        try:
            job.get(timeout=timeout)
        except Exception:  # pragma: no cover - a locked DB at exit: the process ends anyway
            logger.warning("Could not stop the claim checker", exc_info=True)
        pool.kill()


class VisitInProgress:
    """One admitted visit: its encoded hits and where it stands. It is the sender's
    ``on_done`` callback: a single hit's settling queues the visit's next hit (never
    before the previous one settled, so a retried hit is never overtaken by the next one
    of the same visitor); a bulk visit's settling ends it. ``bulk`` is the visit's own
    mode, fixed when it is admitted: it says how its items are encoded and settled."""

    __slots__ = (
        "bulk",
        "delivered",
        "dues",
        "head",
        "index",
        "items",
        "position",
        "runtime",
        "shift",
        "size",
        "visitor",
    )

    def __init__(
        self,
        runtime: TargetRuntime,
        items: list,
        shift: float,
        size: int,
        position: int = 0,
        *,
        bulk: bool,
        visitor: str | None = None,
        head: str = "",
        dues: list[float] | None = None,
    ) -> None:
        self.runtime = runtime
        self.bulk = bulk
        # Its visitor id (its hits' cid), so the bulk sender need not search a hit for it.
        self.visitor = visitor
        # single: [(due, body)]; bulk: each hit's own query, sent at once as ``head`` +
        # query + cdt from ``dues`` (TargetStream.entries): a bulk visit waits for its last
        # hit (seconds to minutes) holding its constant params once, not once per hit.
        self.items = items
        self.head = head
        self.dues = dues
        self.position = position  # its index in the target's stream (as the shard's stream state counts)
        self.index = 0
        self.shift = shift  # seconds the visit started late (its hits keep their spacing)
        self.size = size  # bytes held, for the memory budget
        self.delivered = False  # Matomo accepted its hits (some of them, in single mode)

    def rest_after_interruption(self) -> int | None:
        """The first hit a next loader sends when this visit was cut short while its
        current request was in flight: a bulk visit whole again (a resend Matomo already
        holds is told apart, see the sender), a single-hit visit after the interrupted
        hit, whose fate is unknown; None when nothing is left to send."""
        first = self.index if self.bulk else self.index + 1
        return first if self.items and first < len(self.items) else None

    def __call__(self, outcome: str) -> None:
        runtime = self.runtime
        runtime.holding.discard(self)
        if outcome == "abandoned":
            # Killed mid-request or given up waiting for a retry at close: a loader
            # handing its shard back lists the rest (see LiveLoader.stream_state).
            rest = self.rest_after_interruption()
            if rest is not None:
                runtime.refused[self.position] = rest
            runtime.visit_over(self, finished=False)
            return
        if self.bulk:
            self.delivered = outcome in ("accepted", "partial")
            runtime.visit_over(self, finished=True)
            return
        self.delivered = self.delivered or outcome == "accepted"
        self.index += 1
        if self.index < len(self.items):
            runtime.push(self.items[self.index][0] + self.shift, self)
        else:
            runtime.visit_over(self, finished=True)


@dataclass
class TargetRuntime:
    run_target: RunTarget
    stream: TargetStream
    sender: TargetSender
    telemetry: TargetTelemetry
    max_visits: int = 1000  # the target's share of LOADER_MAX_VISITS_IN_PROGRESS
    # Visits in progress that keep the sender busy (single_visit_cap, bulk_visit_cap).
    # Until the first answers tell the latency: 2 x concurrency for single hits, none
    # for bulk (a bulk visit's first request leaves only once its last hit is due).
    visit_cap: int | None = None
    max_bytes: int = 8 << 20
    heap: list = field(default_factory=list)  # (due, seq, VisitInProgress)
    next_visit: Visit | None = None
    in_progress: int = 0
    held_bytes: int = 0
    saturated: bool = False
    wake: gevent.event.Event = field(default_factory=gevent.event.Event)
    # When the dispatcher's sleep ends (time.time); inf: it sleeps until woken; 0: awake.
    wake_at: float = 0.0
    on_slot_free: Callable[[], None] | None = None
    workers: list[gevent.Greenlet] = field(default_factory=list)  # single hits: see LiveLoader._send_hits
    # [monotonic time, visits started then] of the last minute, for the actual visits/day.
    recent_starts: deque = field(default_factory=deque)
    # Stream positions: ``position`` is the next index of the current stream not yet
    # passed (offset by ``offset`` when the stream was replaced: a daily-cap restart or a
    # resume); a visit limit lets this target send the positions below ``quota``.
    position: int = 0
    offset: int = 0
    quota: int | None = None
    # Handed-back visits to send again first: stream index -> hits already sent.
    redo: dict[int, int] = field(default_factory=dict)
    # Visits taken off the heap by a worker or the dispatcher and not settled yet, and
    # visits a closed sender refused or cut short (stream position -> first hit not
    # sent): what a loader handing its shard back must list besides the heap (see
    # stream_state).
    holding: set = field(default_factory=set)
    refused: dict[int, int] = field(default_factory=dict)
    _seq: Iterator[int] = field(default_factory=itertools.count)
    # Single hits: seconds between a visit's first and last hit, and hits, summed over the
    # visits started (their mean gap between hits, for single_visit_cap).
    gap_seconds: float = 0.0
    gap_hits: int = 0
    # Bulk: seconds from a visit's start to its last hit, and hits, summed over the
    # visits started, and how many (for bulk_visit_cap).
    span_seconds: float = 0.0
    span_hits: int = 0
    span_visits: int = 0
    cap_computed_at: float = -math.inf  # time.monotonic() of the last update_visit_cap

    # Bulk or single hits, for the runtime's whole life: it decides how visits are encoded
    # and what sends them (a dispatcher or hit workers, spawned once). A bulk sender that
    # learns mid-run that its token is secure-only falls back to single POSTs
    # (TargetSender._check_secure_only): it then sends the bulk visits' hits one by one and
    # settles each visit once, so the runtime and its visits stay bulk.
    bulk: bool = field(init=False)
    quantum: float = field(init=False)  # the dispatcher's shortest sleep (see DISPATCH_QUANTUM)
    admit_ahead: float = field(init=False)  # see ADMIT_AHEAD

    def __post_init__(self) -> None:
        self.bulk = self.sender.bulk
        self.quantum = BULK_DISPATCH_QUANTUM if self.bulk else DISPATCH_QUANTUM
        self.admit_ahead = BULK_ADMIT_AHEAD if self.bulk else ADMIT_AHEAD

    def push(self, due: float, visit: VisitInProgress) -> None:
        heap = self.heap
        heapq.heappush(heap, (due, next(self._seq), visit))
        if heap[0][2] is visit and due < self.wake_at - self.quantum:
            self.wake.set()  # well before the dispatcher wakes anyway

    @property
    def exhausted(self) -> bool:
        """Its visit limit is reached (or its stream ended)."""
        visit = self.next_visit
        if visit is None:
            return True
        return self.quota is not None and self.offset + visit.index >= self.quota and not self.redo

    def advance(self) -> None:
        """Take the next visit of the stream (a handed-back visit first, then new ones)."""
        visit = next(self.stream.visits, None)
        while visit is not None and visit.index < self.position and visit.index not in self.redo:
            visit = next(self.stream.visits, None)
        self.next_visit = visit

    def stream_state(self) -> tuple[int, int]:
        return self.position, self.offset

    def start_visit(self, visit: Visit, now: float, now_mono: float) -> int:
        """Admit ``visit`` now: ``now - visit.start`` late when behind schedule. Returns
        how many stream positions it moved on (visits of other shards included)."""
        start, index = visit.start, visit.index
        shift = now - start if now > start else 0.0
        if index < self.position:  # a handed-back visit, or one passed already
            redone = index in self.redo
            sent = self.redo.pop(index) if redone else 0
            passed = 0
        else:
            redone, sent = False, 0
            passed = index + 1 - self.position
            self.position = index + 1
        if self.bulk:
            head, queries = visit_head(visit), hit_queries(visit)
            dues = [hit.due for hit in visit.hits]
            size = len(head) + sum(map(len, queries)) + HELD_HIT_OVERHEAD * len(queries)
            state = VisitInProgress(
                self, queries, shift, size, index, bulk=True, visitor=visit.cid, head=head, dues=dues
            )
            last = dues[-1] if dues else start
            due = last + shift
            self.span_seconds += last - start
            self.span_hits += len(dues)
            self.span_visits += 1
        else:
            timed = self.stream.encode_timed(visit)
            state = VisitInProgress(self, timed, shift, sum(len(b) for _, b in timed), index, bulk=False)
            if sent:  # a handed-back visit: its first hits went out before
                state.index = min(sent, len(timed) - 1)
            due = timed[state.index][0] + shift
            self.gap_seconds += timed[-1][0] - timed[0][0]
            self.gap_hits += len(timed)
        self.in_progress += 1
        self.held_bytes += state.size
        starts = self.recent_starts  # [monotonic, visits]: one entry per scheduler pass
        if starts and starts[-1][0] == now_mono:
            starts[-1][1] += 1
        else:
            starts.append([now_mono, 1])
        if not redone:  # a handed-back visit was counted by the loader that started it
            self.telemetry.start_visits()
        self.push(due, state)
        return passed

    def visit_over(self, visit: VisitInProgress, *, finished: bool) -> None:
        self.in_progress -= 1
        self.held_bytes -= visit.size
        visit.items = []
        visit.head, visit.dues = "", None
        if finished:
            self.telemetry.finish_visits(delivered=1 if visit.delivered else 0)
        if self.on_slot_free is not None:
            self.on_slot_free()

    def can_admit(self, now: float) -> bool:
        if self.in_progress >= (self.visit_cap or self.max_visits) or self.held_bytes >= self.max_bytes:
            return False
        return not (self.heap and now - self.heap[0][0] > ADMIT_MAX_LAG)

    def update_visit_cap(self, now_mono: float) -> None:
        """Bound the visits in progress by what the sender can serve at the latency seen
        so far (again once VISIT_CAP_REFRESH passed, or once the first answers came)."""
        if now_mono - self.cap_computed_at < VISIT_CAP_REFRESH and self.visit_cap is not None:
            return
        self.cap_computed_at = now_mono
        latency = self.telemetry.mean_latency()
        if self.bulk:
            if latency is None or not self.span_visits:
                self.visit_cap = None
                return
            visits = self.span_visits
            self.visit_cap = bulk_visit_cap(
                self.sender.concurrency,
                self.sender.batch_size,
                latency,
                self.span_seconds / visits,
                self.span_hits / visits,
                self.max_visits,
            )
            return
        if latency is None or not self.gap_hits:
            self.visit_cap = min(self.max_visits, 2 * self.sender.concurrency)
        else:
            gap = self.gap_seconds / self.gap_hits
            self.visit_cap = single_visit_cap(self.sender.concurrency, latency, gap, self.max_visits)

    def lag(self, now: float) -> float:
        """Seconds behind schedule: the oldest due visit not started, or hit not sent."""
        lag = 0.0
        if self.next_visit is not None and self.next_visit.start < now:
            lag = now - self.next_visit.start
        if self.heap and self.heap[0][0] < now:
            lag = max(lag, now - self.heap[0][0])
        return lag

    def visits_behind(self, now: float) -> int:
        """Visits due by now that were not started (what the curve expects since the
        first of them was due)."""
        visit = self.next_visit
        if visit is None or now - visit.start <= RECOVERED_LAG:
            return 0  # due just now: the next pass starts it
        stream = self.stream
        expected = expected_visits(visit.start, now, stream.tzinfo, stream.visits_per_day, stream.curve)
        return 1 + int(expected * stream.share)  # this shard's share of what is due

    def visits_per_day(self, now: float) -> int:
        """Visits started in the last 60 s, scaled to a day: what the target gets now."""
        starts = self.recent_starts
        while starts and starts[0][0] < now - 60:
            starts.popleft()
        return sum(count for _, count in starts) * 1440


def single_visit_cap(concurrency: int, latency: float, gap: float, ceiling: int) -> int:
    """Visits in progress that keep ``concurrency`` single-hit requests busy, twice over.

    A visit in progress asks for a hit every ``gap + latency`` seconds (its mean gap
    between hits, then the request); a request slot sends one every ``latency`` seconds.
    More visits than that only queue hits that wait (memory, late hits, a long drain at
    stop); fewer would leave the sender idle. Within ``2 * concurrency`` and ``ceiling``."""
    if latency <= 0:
        return ceiling
    wanted = math.ceil(2 * concurrency * (1 + gap / latency))
    return max(2 * concurrency, min(ceiling, wanted))


def bulk_visit_cap(
    concurrency: int, batch_size: int, latency: float, span: float, hits_per_visit: float, ceiling: int
) -> int:
    """Visits in progress that keep ``concurrency`` bulk requests busy, twice over.

    A bulk visit is in progress for ``span`` seconds (its start to its last hit), then
    for a request (``latency``); a request slot sends ``batch_size / hits_per_visit``
    visits every ``latency`` seconds. More visits than that only wait in the loader:
    when Matomo is the bottleneck they were started in bursts (each time the due backlog
    cleared, every visit behind schedule at once: up to 11 s of loader wait against a
    4-worker fake, and thousands of visits generated that a timed run never sent).
    Within two full rounds of requests and ``ceiling``."""
    if latency <= 0:
        return ceiling
    per_request = max(1.0, batch_size / max(hits_per_visit, 1.0))
    floor = math.ceil(2 * concurrency * per_request)
    wanted = math.ceil(floor * (1 + span / latency))
    return max(min(floor, ceiling), min(ceiling, wanted))


class LiveLoader:
    """Sends one shard of a run until it completes, is stopped, fails, is superseded or
    (``hand_back``) is asked to exit and gives the shard back to the queue."""

    def __init__(
        self, run: Run, *, token: uuid.UUID | None = None, progress: Progress | None = None, hand_back: bool = False
    ) -> None:
        self.run = run
        self.shard = self._claimed_shard(run, token)
        self.token: uuid.UUID | None = self.shard.claim_token
        self.hand_back = hand_back
        self.progress = progress  # a terminal's progress line (run_traffic), or None
        # A sharded run's progress line shows the run's figures (every shard's), as the
        # writer thread last read them after a report; None until then.
        self.run_figures: RunStats | None = None
        self.telemetry = RunTelemetry()
        self.stop_event = gevent.event.Event()
        self.wake = gevent.event.Event()  # the scheduler's alarm: a stop, a free slot
        self.stop_reason = ""
        self.final_status: Run.Status | str = Run.Status.STOPPED  # until stop() says why the loop ended
        # A resumed shard continues its counters from where the lost loader left them
        # ({}: the field's default, nothing to carry over).
        self.previous_stats: dict = self.shard.stats
        self.runtimes: list[TargetRuntime] = []
        self.dispatchers: list[gevent.Greenlet] = []
        self.checker = ClaimChecker(self._check_claim, self._claim_confirmed, self._wake_up)
        self.writer = DbThread()
        self.lease_until = 0.0
        self.lease = 0.0  # seconds a confirmed claim lets it send (claim_lease(), read when the loop starts)
        self.pending_logs: deque[tuple[str, str, int | None]] = deque(maxlen=200)
        self.reported_sent = 0  # hits sent as of the last report the database took
        self._day_key: str | None = None
        self._day_span = (0.0, 0.0)  # [start, end) of the day _day_key, in epoch seconds
        self._visits_today = 0
        self._cap_logged_for: str | None = None
        self._cap_restarts = 0
        self.stopped_at: float | None = None  # the schedule figures freeze when the run stops
        # The scheduler waits for a visit to end (admission full, or draining at the visit
        # limit): only then does a visit's end wake it.
        self._waiting_for_slot = False
        self._admit_until: float | None = None  # the duration limit (time.time): no visit starts later

    @property
    def visits_started(self) -> int:
        """Visits this shard started (its previous loaders' included)."""
        previous = int(self.previous_stats.get("totals", {}).get("visits_started", 0) or 0)
        return previous + sum(rt.telemetry.counts()["visits_started"] for rt in self.runtimes)

    @staticmethod
    def _claimed_shard(run: Run, token: uuid.UUID | None) -> RunShard:
        """The shard ``token`` claimed, else the one ``run.claim()`` just claimed, else the
        run's first claimed shard (a one-shard run claimed elsewhere)."""
        if token is not None:
            return run.shard_of(token)
        claimed = getattr(run, "claimed_shard", None)
        if claimed is not None:
            return claimed
        shard = run.shards.filter(status__in=RunShard.CLAIMED_STATUSES).order_by("index").first()
        return shard or RunShard(run=run, index=0)

    # --- setup ---------------------------------------------------------------------

    def build(self) -> None:
        run_targets = list(self.run.run_targets.select_related("target"))
        state = self.shard.stream if isinstance(self.shard.stream, dict) else {}
        resumed = state.get("continue") and state.get("key")
        # A handed-back shard continues its streams exactly (same key and start); a shard
        # resumed after its loader was lost starts new ones (no visit sent twice) and
        # counts on from where the lost loader last reported.
        self.stream_start = float(state["start"]) if resumed else time.time()
        self.current_key = str(state["key"]) if resumed else self.stream_key()
        streams = self._current_streams(run_targets)
        positions = state.get("positions", {})
        offsets = state.get("offsets", {})
        redo = state.get("redo", {}) if resumed else {}
        quotas = (
            target_quotas(self.run.max_visits, [stream.visits_per_day for stream in streams])
            if self.run.max_visits
            else [None] * len(streams)
        )
        total_rate = sum(stream.visits_per_day for stream in streams) or 1
        max_visits = settings.LOADER_MAX_VISITS_IN_PROGRESS
        max_bytes = settings.LOADER_MEMORY_BUDGET_MB << 20
        for stream, quota in zip(streams, quotas, strict=True):
            rt = stream.run_target
            key = str(rt.pk)
            telemetry = self.telemetry.add(key, rt.target.name)
            asked = int(self.run.profile.get("concurrency", 10))
            concurrency = max(1, split_evenly(asked, self.shard.index, self.run.shard_count))
            sender = TargetSender(
                rt.target.tracking_url,
                rt.target.token_auth or None,
                concurrency=concurrency,
                timeout=REQUEST_TIMEOUT,
                bulk=self.run.bulk and stream.bulk_allowed,
                batch_size=self.run.batch_size,
                telemetry=telemetry,
                name=rt.target.name,
                timezone=stream.timezone,
            )
            share = stream.visits_per_day / total_rate
            runtime = TargetRuntime(
                rt,
                stream,
                sender,
                telemetry,
                max_visits=max(concurrency, int(max_visits * share)),
                max_bytes=max(64 << 10, int(max_bytes * share)),
                on_slot_free=self._slot_freed,
                quota=quota,
            )
            position, offset = int(positions.get(key, 0)), int(offsets.get(key, 0))
            if resumed:
                runtime.position, runtime.offset = position - offset, offset
                runtime.redo = {int(index): int(sent) for index, sent in redo.get(key, {}).items()}
            else:
                runtime.offset = position  # a new stream counts on from the lost one's positions
            runtime.advance()
            self.runtimes.append(runtime)
            if stream.notice:
                self.log(RunLog.Level.WARNING, stream.notice, rt)

    def _current_streams(self, run_targets: list[RunTarget]) -> list[TargetStream]:
        """This shard's streams under the current key and start."""
        return target_streams(
            self.run,
            run_targets,
            start=self.stream_start,
            key=self.current_key,
            shard=(self.shard.index, self.run.shard_count),
        )

    def stream_key(self) -> str:
        """The visit stream's name: the shard's claim epoch (a shard resumed after its
        loader was lost gets new visitors, so nothing is replayed) and how often the daily
        cap restarted it; never the time, never the shard (all shards share the streams)."""
        key = str(max(1, self.shard.claim_epoch))
        return f"{key}.{self._cap_restarts}" if self._cap_restarts else key

    def stream_state(self, *, handing_back: bool = False) -> dict:
        """Where the streams stand (RunShard.stream). Handing back, the visits admitted
        but not (completely) sent are listed to be sent by the next loader."""
        state: dict = {
            "key": self.current_key,
            "start": self.stream_start,
            "positions": {str(rt.run_target.pk): rt.offset + rt.position for rt in self.runtimes},
            "offsets": {str(rt.run_target.pk): rt.offset for rt in self.runtimes},
        }
        if handing_back:
            redo = {}
            for rt in self.runtimes:
                pending = dict(rt.redo) | rt.refused
                for _, _, visit in rt.heap:  # due next: nothing of it in flight
                    if visit.items:
                        pending[visit.position] = visit.index
                for visit in rt.holding:  # interrupted, not settled yet
                    first = visit.rest_after_interruption()
                    if first is not None:
                        pending[visit.position] = first
                redo[str(rt.run_target.pk)] = {str(index): sent for index, sent in pending.items()}
            state["redo"] = redo
        return state

    # --- the scheduler -------------------------------------------------------------

    def run_loop(self) -> Run.Status | str:
        """Returns the final status (or SUPERSEDED); the caller records it."""
        self.build()
        self.lease = claim_lease()
        started = time.monotonic()
        self.lease_until = started + self.lease  # the claim was confirmed just before the loop
        self.checker.start()
        self.writer.start()
        duration = self.run.duration_seconds
        deadline = started + duration if duration else None
        if duration:
            self._admit_until = time.time() + duration
        for runtime in self.runtimes:
            if runtime.bulk:
                self.dispatchers.append(gevent.spawn(self._dispatch, runtime))
            else:
                lead = gevent.lock.Semaphore()
                runtime.workers = [
                    gevent.spawn(self._send_hits, runtime, lead) for _ in range(runtime.sender.concurrency)
                ]
        report: gevent.event.AsyncResult | None = None
        report_sent = 0
        next_flush = started  # the first report at once: "Loader started" and a fresh heartbeat
        next_sample = _next_minute(time.time())
        self.log(RunLog.Level.INFO, f"Loader started: {self._describe_targets()}.")

        while not self.stop_event.is_set():
            now_mono = time.monotonic()
            # Results of the DB threads: act on them, never wait for them.
            verdict = self.checker.verdict
            if verdict is not None:
                owned, _ = verdict
                if not owned:
                    self.stop(SUPERSEDED, "Another loader claimed this run.")
                else:
                    self.stop(Run.Status.STOPPED, "Stop requested.")
                break
            if report is not None and report.ready():
                held = self._result(report)  # None: the write failed; the next report retries
                report = None
                if held is False:
                    self.stop(SUPERSEDED, "Another loader claimed this run.")
                    break
                if held:
                    self.reported_sent = report_sent
            if deadline is not None and now_mono >= deadline:
                self.stop(Run.Status.COMPLETED, "Duration limit reached.")
                break
            now = time.time()
            if report is None and now_mono >= next_flush:
                next_flush = now_mono + FLUSH_EVERY
                sample = None
                if now >= next_sample:
                    sample = self._sample(next_sample)
                    next_sample = _next_minute(now)
                stats = self.snapshot()
                report_sent = stats["totals"].get("sent", 0)
                report = self.writer.submit(
                    self._write_report, self.token, stats, self._drain_logs(), sample, self.stream_state()
                )
                report.rawlink(self._wake_up)
                if self.progress:
                    self.progress(self.run_figures or stats)
            self._waiting_for_slot = False
            if self._visit_limit_reached():
                # Started visits finish their hits; then the shard is complete.
                if not any(runtime.in_progress for runtime in self.runtimes):
                    self.stop(Run.Status.COMPLETED, f"Visit limit of {self.run.max_visits} reached.")
                    break
                self._waiting_for_slot = True
            else:
                self._admit(now, now_mono)
            for runtime in self.runtimes:
                runtime.sender.poll()
            self.wake.clear()
            # A pending DB job wakes the loop when done: its due time is no reason to wake.
            self.wake.wait(self._idle_wait(now_mono, math.inf, math.inf if report else next_flush, deadline))

        return self.shutdown()

    def _wake_up(self, _job=None) -> None:
        self.wake.set()

    def _check_claim(self) -> tuple[bool, bool]:
        """(the claim is still ours, a stop was requested): on the checker's thread."""
        assert self.token is not None, "a loader runs a claimed run"
        return self.shard.check_claim(self.token)

    def _claim_confirmed(self, started: float) -> None:
        """The checker read the claim as ours at ``started`` (monotonic): send on until
        the lease from then runs out (on the checker's thread: one float written)."""
        self.lease_until = started + self.lease

    def _slot_freed(self) -> None:
        if self._waiting_for_slot:
            self.wake.set()

    def _write_report(self, token: uuid.UUID, stats: RunStats, logs: list, sample, stream: dict) -> bool | None:
        """The shard's report (on the writer thread). With a progress line and several
        shards, it then reads the run's merged figures for that line: a terminal that
        started a run shows the whole run, not its own shard."""
        held = self.shard.report(token, stats, logs, sample, stream)
        if held and self.progress is not None and self.run.shard_count > 1:
            figures = Run.objects.filter(pk=self.run.pk).values_list("stats", flat=True).first()
            if figures and figures.get("totals"):  # None: the run is gone; {}: nothing merged yet
                self.run_figures = stored_stats(figures)
        return held

    @staticmethod
    def _result(job: gevent.event.AsyncResult):
        """A DB job's value, or None when it raised (logged; the loop carries on)."""
        if job.successful():
            return job.value
        logger.warning("Loader DB work failed: %r", job.exception)
        return None

    def _idle_wait(self, now_mono: float, next_check: float, next_flush: float, deadline: float | None) -> float:
        """How long the scheduler may sleep: until the next due visit it could start, the
        next check or flush, or the deadline; while a target cannot start a due visit (at
        capacity, or its due hits wait), ``TICK`` (a visit's end wakes it sooner when it
        waits for a slot). Never 0 when it cannot act (no spin once the visit limit is
        reached, while the daily cap pauses, or while at capacity), and with nothing to
        do it sleeps until the next report: an idle loader wakes a few times a second."""
        wait = min(FLUSH_EVERY, next_check - now_mono, next_flush - now_mono)
        if deadline is not None:
            wait = min(wait, deadline - now_mono)
        if not self._visit_limit_reached():
            now = time.time()
            for runtime in self.runtimes:
                visit = runtime.next_visit
                if visit is None or (self._admit_until is not None and visit.start > self._admit_until):
                    continue  # (never started: the duration limit ends the run first)
                if runtime.exhausted:
                    continue
                due_in = visit.start - runtime.admit_ahead / 2 - now
                wait = min(wait, due_in if runtime.can_admit(now) else max(due_in, TICK))
        return max(0.0, wait)

    def _admit(self, now: float, now_mono: float) -> None:
        """Start each target's visits due by ``now + admit_ahead`` (not after the duration
        limit), at most ADMIT_PER_PASS per target and pass, within the admission bounds;
        what cannot start now stays due (behind schedule)."""
        daily_cap = self.run.daily_cap
        for runtime in self.runtimes:
            horizon = now + runtime.admit_ahead
            if self._admit_until is not None:
                horizon = min(horizon, self._admit_until)
            visit = runtime.next_visit
            if visit is None or visit.start > horizon:
                continue  # nothing due: most passes, for most targets of a saturated loader
            runtime.update_visit_cap(now_mono)
            can_admit, advance, start_visit = runtime.can_admit, runtime.advance, runtime.start_visit
            admitted = 0
            while admitted < ADMIT_PER_PASS:
                visit = runtime.next_visit
                if visit is None or visit.start > horizon or runtime.exhausted:
                    break
                if not can_admit(now):
                    self._waiting_for_slot = True
                    break
                if daily_cap and self._daily_cap_reached(visit.start):
                    self._pause_until_next_day(visit.start)
                    return
                advance()
                # Stream positions, so shards together keep the cap the run asked for.
                self._visits_today += start_visit(visit, now, now_mono)
                admitted += 1

    def _visit_limit_reached(self) -> bool:
        """Every target sent the positions its share of the visit limit allows."""
        return bool(self.run.max_visits) and all(runtime.exhausted for runtime in self.runtimes)

    def _cap_zone(self):
        return resolve_timezone(self.runtimes[0].stream.timezone) if self.runtimes else UTC

    def _daily_cap_reached(self, start: float) -> bool:
        """Count visits per day in the run's time zone; past the cap the run pauses until
        the next day starts (and resumes by itself)."""
        if not self.run.daily_cap:
            return False
        if self._day_span[0] <= start < self._day_span[1]:
            day = self._day_key or ""
        else:  # once a day, not per visit
            zone = self._cap_zone()
            local = datetime.fromtimestamp(start, zone)
            day = local.date().isoformat()
            end = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone).timestamp()
            # Kept only without a clock change before the next midnight: local time then
            # runs with the epoch, so the date changes exactly there.
            same_offset = datetime.fromtimestamp(end, zone).utcoffset() == local.utcoffset()
            self._day_span = (start, end) if same_offset else (0.0, 0.0)
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

    def _pause_until_next_day(self, start: float) -> None:
        """Past the daily cap: the streams restart at the next local midnight instead of
        generating (and dropping) the rest of the day's visits, so a paused run costs no
        CPU. Each restart has its own stream key, so the run stays reproducible."""
        zone = self._cap_zone()
        local = datetime.fromtimestamp(start, zone)
        tomorrow = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone)
        self._cap_restarts += 1
        self.current_key, self.stream_start = self.stream_key(), tomorrow.timestamp()
        run_targets = [runtime.run_target for runtime in self.runtimes]
        streams = self._current_streams(run_targets)
        fresh = {s.run_target.pk: s for s in streams}
        for runtime in self.runtimes:
            stream = fresh.get(runtime.run_target.pk)
            if stream is not None:
                runtime.stream = stream
                runtime.offset += runtime.position  # positions count on over the restart
                runtime.position = 0
                runtime.redo = {}
                runtime.advance()

    # --- sending -------------------------------------------------------------------

    def _next_due(self, runtime: TargetRuntime) -> tuple[VisitInProgress, float] | None:
        """Wait until the target's earliest hit (single) or visit (bulk) is due and the
        claim is confirmed, pop it; (visit, due time), or None once the loader stops."""
        heap, wake, stop = runtime.heap, runtime.wake, self.stop_event
        clock, mono = time.time, time.monotonic
        while not stop.is_set():
            if not heap:
                runtime.wake_at = math.inf
                wake.clear()
                wake.wait()
                runtime.wake_at = 0.0
                continue
            due = heap[0][0]
            now = clock()
            if due > now:
                sleep = max(due - now, runtime.quantum)
                runtime.wake_at = now + sleep
                wake.clear()
                _wait_at_most(wake, sleep)
                runtime.wake_at = 0.0
                continue
            if mono() > self.lease_until:
                # The claim was not confirmed lately (frozen, or the DB unreachable):
                # send nothing until it is, as another loader may own the run by now.
                stop.wait(0.05)
                continue
            return heapq.heappop(heap)[2], due
        return None

    def _dispatch(self, runtime: TargetRuntime) -> None:
        """Bulk: hand the target's due visits to its sender, in due order: every visit due
        when it wakes, their waits recorded at once. The sender blocks while
        ``concurrency`` requests are in flight. It sleeps until the next visit is due (at
        least ``quantum``) or the sender's buffered batch is (``flush_due``), and sends
        only while the claim is confirmed, like ``_next_due``."""
        sender, telemetry, entries_of = runtime.sender, runtime.telemetry, runtime.stream.entries
        heap, holding, wake, stop = runtime.heap, runtime.holding, runtime.wake, self.stop_event
        clock, mono, pop = time.time, time.monotonic, heapq.heappop
        while not stop.is_set():
            now = clock()
            if not heap or heap[0][0] > now:
                sender.poll()
                sleep = min(heap[0][0] - now if heap else math.inf, sender.flush_due() - mono())
                sleep = max(sleep, runtime.quantum)
                runtime.wake_at = now + sleep
                wake.clear()
                wake.wait(None if sleep == math.inf else sleep)
                runtime.wake_at = 0.0
                continue
            if mono() > self.lease_until:
                # The claim was not confirmed lately (frozen, or the DB unreachable):
                # send nothing until it is, as another loader may own the run by now.
                stop.wait(0.05)
                continue
            waits: list[tuple[float, int]] = []
            try:
                while heap and heap[0][0] <= now:
                    due, _, visit = pop(heap)
                    holding.add(visit)  # until the sender settles it (on_done)
                    entries = entries_of(visit)
                    sent_size = sum(map(len, entries))  # held too until the visit is settled
                    visit.size += sent_size
                    runtime.held_bytes += sent_size
                    try:  # (sent as single hits if the sender fell back for a secure-only token)
                        sender.send_visit(entries, on_done=visit, visitor=visit.visitor)
                    except SenderClosed:
                        return
                    except Exception as exc:  # a bug: never silent, never the end of the target
                        self._visit_failed(runtime, visit, exc)
                        continue
                    waits.append((clock() - due, len(visit.items)))
                    if stop.is_set() or mono() > self.lease_until:
                        break
            finally:
                if waits:
                    telemetry.record_waits(waits)

    def _send_hits(self, runtime: TargetRuntime, lead: gevent.lock.Semaphore) -> None:
        """Single hits: one of the target's ``concurrency`` workers. Each sends one due
        hit at a time in its own greenlet (no greenlet per hit, no hand-over); only the
        worker holding ``lead`` waits for the next due hit, so a new due hit wakes one
        worker, not all of them."""
        sender, telemetry = runtime.sender, runtime.telemetry
        clock = time.time
        while True:
            with lead:
                popped = self._next_due(runtime)
            if popped is None:
                return
            visit, due = popped
            telemetry.record_wait(clock() - due)
            runtime.holding.add(visit)  # until visit(outcome) below
            try:
                outcome = sender.deliver_hit(visit.items[visit.index][1])
            except SenderClosed:
                runtime.holding.discard(visit)
                runtime.refused[visit.position] = visit.index  # not sent: a hand-back lists it
                runtime.visit_over(visit, finished=False)
                return
            except Exception as exc:  # a bug: never silent, never the end of the target
                self._visit_failed(runtime, visit, exc)
                continue
            visit(outcome)  # queues the visit's next hit, or ends the visit

    @staticmethod
    def _visit_failed(runtime: TargetRuntime, visit: VisitInProgress, exc: Exception) -> None:
        logger.exception("Dispatch failed")
        runtime.telemetry.event_once(f"visit-error:{type(exc).__name__}", "error", f"Visit failed: {exc!r}")
        runtime.visit_over(visit, finished=False)

    # --- stopping ------------------------------------------------------------------

    def stop(self, status: Run.Status | str, reason: str) -> None:
        """End the loop; ``status`` is the run's final status (unless every target
        failed), or SUPERSEDED."""
        if not self.stop_event.is_set():
            self.final_status, self.stop_reason = status, reason
            self.stopped_at = time.time()
            self.stop_event.set()
            self.wake.set()
            for runtime in self.runtimes:
                runtime.wake.set()

    def shutdown(self) -> Run.Status | str:
        """No new hits; in-flight requests get a short grace (all targets at once);
        the DB threads are closed. The caller writes the final report."""
        superseded = self.final_status == SUPERSEDED
        gevent.killall(self.dispatchers, block=True, timeout=1.0)
        handing_back = self.final_status == HANDED_BACK
        grace = 0.0 if superseded else HAND_BACK_GRACE if handing_back else STOP_GRACE
        # Handing back, buffered bulk visits go out now: the next loader starts after them.
        closing = [gevent.spawn(self._close_target, rt, grace, handing_back) for rt in self.runtimes]
        gevent.joinall(closing, timeout=grace + 3.0)
        self.checker.close()
        for runtime in self.runtimes:
            left_out = runtime.stream.goals.describe_left_out() if runtime.stream.goals else ""
            if left_out:
                self.log(RunLog.Level.INFO, f"{runtime.run_target.target.name}: {left_out}.", runtime.run_target)
        status = self.final_status
        if status == Run.Status.COMPLETED and self._all_targets_failed():
            status = Run.Status.FAILED
            self.stop_reason += " Most hits failed on every target; see the log."
        return status

    @staticmethod
    def _close_target(runtime: TargetRuntime, grace: float, flush: bool = False) -> None:
        """Hits in flight get ``grace`` seconds (no new retries), then count abandoned;
        buffered bulk visits are sent first when ``flush``."""
        sender = runtime.sender
        if runtime.workers:
            sender.stop_retrying()
            gevent.joinall(runtime.workers, timeout=grace)
            gevent.killall(runtime.workers, block=True, timeout=2.0)
            grace = 0.0
        sender.close(grace_seconds=grace, flush=flush)

    def _all_targets_failed(self) -> bool:
        snapshot = self.telemetry.snapshot()["targets"]
        return bool(snapshot) and all(data["sent"] and not data["accepted"] for data in snapshot.values())

    # --- reporting -------------------------------------------------------------------

    def _update_schedule(self) -> None:
        """Each target's lag, visits behind schedule and saturation (with hysteresis);
        saturation changes go to the run log."""
        now = self.stopped_at or time.time()
        for runtime in self.runtimes:
            lag = runtime.lag(now)
            behind = runtime.visits_behind(now)
            was = runtime.saturated
            if not was and lag > SATURATED_LAG:
                runtime.saturated = True
            elif was and lag < RECOVERED_LAG:
                runtime.saturated = False
            runtime.telemetry.set_schedule(lag_seconds=lag, visits_behind=behind, saturated=runtime.saturated)
            if runtime.saturated and not was:
                started = runtime.telemetry.counts()["visits_started"]
                share = delivered_percent(started, behind)
                self.log(
                    RunLog.Level.WARNING,
                    f"Generator saturated: this loader cannot keep up with {runtime.stream.visits_per_day:,} "
                    f"visits/day for {runtime.run_target.target.name}; {lag:.1f} s behind schedule, "
                    f"{behind:,} visits not started yet, {share if share is not None else 0:g} % of the asked "
                    "visits delivered. It keeps sending at its real capacity; latency figures exclude its own "
                    "queueing. Lower the rate or the concurrency, or use bulk mode.",
                    runtime.run_target,
                )
            elif was and not runtime.saturated:
                self.log(
                    RunLog.Level.INFO,
                    f"Back on schedule for {runtime.run_target.target.name} (lag {lag:.1f} s).",
                    runtime.run_target,
                )

    def snapshot(self) -> RunStats:
        self._update_schedule()
        stats = carry_over(self.previous_stats, self.telemetry.snapshot())
        now = time.monotonic()
        for runtime in self.runtimes:
            rate = runtime.visits_per_day(now)
            stats["targets"][str(runtime.run_target.pk)]["visits_per_day"] = rate
        stats["totals"]["visits_per_day"] = sum(data.get("visits_per_day", 0) for data in stats["targets"].values())
        return stats

    def _drain_logs(self) -> list[tuple[str, str, int | None]]:
        logs = list(self.pending_logs)
        self.pending_logs.clear()
        target_ids = {str(rt.run_target.pk): rt.run_target.target_id for rt in self.runtimes}
        logs.extend((level, message, target_ids.get(key)) for key, level, message in self.telemetry.drain_events())
        return logs

    def _sample(self, minute_end: float) -> dict | None:
        sample = self.telemetry.minute_sample()
        if not (sample["hits"] or sample["errors"]):
            return None
        sample["minute"] = datetime.fromtimestamp(minute_end - 60, UTC).replace(second=0, microsecond=0)
        return sample

    def final_report(self, status: Run.Status | str) -> tuple[bool, RunStats]:
        """The last report and the shard's transition (ended, or HANDED_BACK to the
        queue), in the writer thread, fenced. Returns (the claim still held, the final stats)."""
        stats = self.snapshot()
        if self.visits_behind_total(stats):
            self.stop_reason += (
                f" The loader could not keep up: {stats['totals'].get('delivered_percent') or 0:g} % of the asked "
                f"visits were delivered, {stats['totals'].get('visits_behind', 0):,} were still behind schedule."
            )
        level = RunLog.Level.ERROR if status == Run.Status.FAILED else RunLog.Level.INFO
        which = f"Loader of shard {self.shard.label}" if self.run.shard_count > 1 else "Loader"
        self.log(level, f"{which} finished: {status}. {self.stop_reason}".strip())
        sample = self._sample(_next_minute(time.time()))
        logs = self._drain_logs()
        handing_back = status == HANDED_BACK
        stream = self.stream_state(handing_back=handing_back)

        token = self.token
        assert token is not None, "a loader runs a claimed run"
        reason = self.stop_reason.strip() or "Finished."

        def write() -> bool:
            if not self.shard.report(token, stats, logs, sample, stream):
                return False
            if handing_back:
                return self.shard.hand_back(token, stats, stream, reason)
            return self.shard.finish_claimed(token, cast(Run.Status, status), reason, stats, stream)

        owned = bool(self.writer.submit(write).get())
        self.writer.close()
        return owned, stats

    @staticmethod
    def visits_behind_total(stats: RunStats) -> int:
        return int(stats.get("totals", {}).get("visits_behind", 0) or 0)

    def log(self, level: str, message: str, runtime_target: RunTarget | None = None) -> None:
        """A run log entry, written (fenced) with the next report."""
        self.pending_logs.append((level, message, runtime_target.target_id if runtime_target else None))

    def _describe_targets(self) -> str:
        parts = [f"{rt.run_target.target.name} ({rt.stream.visits_per_day:,} visits/day)" for rt in self.runtimes]
        return ", ".join(parts) or "no targets"


# Counters that describe the present, not a running total: never carried over.
_NOT_CARRIED = {"in_flight", "events_dropped", "visits_per_day", "lag_seconds", "visits_behind", "delivered_percent"}


def carry_over(previous: dict, current: RunStats) -> RunStats:
    """``current`` with the counters of a previous loader of the same run added (after a
    resume). Rates, latency, wait, schedule and health describe the new loader only. Hits
    the previous loader had in flight at its last report are counted abandoned: their
    fate is unknown (Matomo may or may not have recorded them)."""
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
        lost_in_flight = old.get("in_flight", 0)
        if isinstance(lost_in_flight, int) and lost_in_flight > 0:
            merged["abandoned"] = merged.get("abandoned", 0) + lost_in_flight
        if "visits_started" in merged:
            merged["delivered_percent"] = delivered_percent(merged["visits_started"], merged.get("visits_behind", 0))
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
    curve: str = "flat"
    share: float = 1.0  # the share of the target's visits that ``visits`` holds (its shard's)

    @property
    def tzinfo(self):
        return resolve_timezone(self.timezone)

    def entries(self, visit: VisitInProgress) -> list[str]:
        """A held bulk visit's entries ("?idsite=...&cdt=..."), in time order: what
        encode_visit gives for it with the target's cdt format."""
        assert visit.dues is not None, "a bulk visit, not settled yet"
        return encode_entries(visit.head, visit.items, visit.dues, self.cdt_format)

    def encode_timed(self, visit: Visit) -> list[tuple[float, str]]:
        """(due time, single-hit POST body) pairs. No cdt: Matomo dates a live hit on
        arrival, so a hit sent a little late can never be "older" than one it recorded."""
        # encode_visit reuses what the generator encoded already (Hit.query, Visit.query).
        return list(zip([hit.due for hit in visit.hits], encode_visit(visit, prefix=""), strict=True))


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
    (so --seed reproduces a run) and in every shard. A shard resumed after its loader was
    lost gets a new stream key (its claim epoch), so it has new visitors, and its order ids
    carry the new key, so nothing is replayed."""
    return hashlib.sha256(f"{run.seed}:{run_target.target_id}".encode()).hexdigest()[:16]


def target_streams(
    run: Run, run_targets: list[RunTarget], *, start: float, key: str = "1", shard: tuple[int, int] = (0, 1)
) -> list[TargetStream]:
    """The visit stream of each target with a rate above 0, arriving from ``start``, as
    shard ``shard[0]`` of ``shard[1]`` sends it (``shard_parts``). The same seed, preset,
    targets and ``key`` give the same visits whenever it starts, whatever the shards.
    Order ids carry the key, so a new stream (a resumed shard) never repeats one."""
    catalog = run_catalog(run)
    funnels = run_funnels(run)
    parts = shard_parts(*shard)
    streams = []
    for run_target in run_targets:
        target = run_target.target
        rate = run_target.share_of(run, run_targets)
        if rate <= 0:
            continue
        profile = run_profile(run, rate)
        zone = target.effective_timezone(profile.timezone)
        notices = []
        zone_warning = target.timezone_warning(profile.timezone)
        if zone_warning:  # the daily curve and the site-day rule follow the fallback zone
            notices.append(f"Target {target.name}: {zone_warning}")
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
            order_id_prefix=f"r{run.pk}-k{key}",
            timezone=zone,
            start=datetime.fromtimestamp(start, UTC),
            goals=goals,
            population=population,
            key=key,
            parts=STREAM_PARTS,
            owned=parts,
        )
        streams.append(
            TargetStream(
                run_target,
                visits,
                rate,
                zone,
                notice,
                bulk_allowed=bulk_allowed,
                goals=goals,
                curve=profile.daily_curve,
                share=len(parts) / STREAM_PARTS,
            )
        )
    return streams


def tune_gc_for_loader() -> None:
    """The garbage collector as a loader process wants it (``manage.py run_loader``,
    whose process is the loader's alone; not for a process that runs other things).

    What is loaded by then (Django, the models, the traffic model's data) lives as long
    as the process: frozen, so full collections no longer walk it. A loader allocates
    and frees many objects per visit; the first generation is collected after 10,000
    net allocations instead of 700, so visits in progress are not promoted (and walked
    again) every few milliseconds. Measured on a saturated bulk loader: ~0.8 s -> ~0.35 s
    of collections in 20 s."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def execute_loader(
    run: Run,
    *,
    token: uuid.UUID | None = None,
    progress: Progress | None = None,
    hand_back: bool = False,
    stopped_by: str = "",
) -> Run:
    """Run the loop of the shard ``token`` claimed (default: the one ``run.claim()`` just
    claimed), stop cleanly on SIGTERM/SIGINT (``hand_back``: give the shard back to the
    queue instead), and record how it ended. ``stopped_by``: who such a signal comes from
    (``run_traffic``: the command line, its Ctrl-C), logged as a stop from a page is. A
    loader whose claim was superseded writes nothing and says so on stderr."""
    loader = LiveLoader(run, token=token, progress=progress, hand_back=hand_back)

    def on_signal() -> None:
        if hand_back:
            loader.stop(HANDED_BACK, "The loader process was asked to exit.")
        elif stopped_by:
            # Written with the loader's next report (no DB write in a signal handler).
            line, reason = Run.stop_request_wording(stopped_by)
            if not loader.stop_event.is_set():  # a second Ctrl-C is not a second request
                loader.log(RunLog.Level.INFO, line)
            loader.stop(Run.Status.STOPPED, reason)
        else:
            loader.stop(Run.Status.STOPPED, "Stopped: the loader process was asked to exit.")

    handlers = [gevent.signal_handler(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        status = loader.run_loop()
        if status == SUPERSEDED or not loader.final_report(status)[0]:
            loader.writer.close()
            unreported = loader.telemetry.snapshot()["totals"].get("sent", 0) - loader.reported_sent
            logger.error(
                "Run %s was claimed by another loader: this one stopped without writing anything more; "
                "%d hit(s) it sent after its last report are not in the run's counters.",
                run.pk,
                unreported,
            )
            raise LoaderSuperseded(run.pk, unreported)
    except LoaderSuperseded:
        raise
    except Exception as exc:
        loader.checker.close()
        if loader.token is not None and not loader.shard.fail_claimed(loader.token, f"The loader failed: {exc!r}"):
            raise
        run.log(RunLog.Level.ERROR, f"Loader crashed: {exc!r}")
        raise
    finally:
        for handler in handlers:
            handler.cancel()
        loader.writer.close()
    run.refresh_from_db()
    return run


class LoaderSuperseded(Exception):
    """Another loader claimed the run: this one stopped and wrote nothing more."""

    def __init__(self, run_id: int, unreported: int) -> None:
        self.unreported = unreported
        super().__init__(
            f"Run {run_id} was claimed by another loader; this loader stopped without writing anything more "
            f"({unreported} hit(s) sent after its last report are not in the run's counters)."
        )
