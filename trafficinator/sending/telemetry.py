"""In-memory counters of what happened to every hit, per target, in fixed memory.

Senders record each hit's *final* outcome once (a hit accepted after two retries counts
once as accepted; the retries are counted on their own), so at any time::

    sent == accepted + invalid + unaccounted + rejected + server_errors
            + network_errors + timeouts + abandoned + in_flight

``unsent`` counts hits handed to a sender that never went out because it was closed
(the rest of a visit, or buffered bulk visits closed without a flush).

Two counters qualify accepted hits (they are not outcomes of their own):
``already_recorded`` counts hits of a resent bulk request that Matomo refused because it
held them already (the first attempt's answer was lost), and ``possibly_duplicated``
counts accepted hits that may have been recorded twice: sent again after an attempt
whose answer was lost, in a form Matomo cannot refuse as already recorded (see the
sender's "Ambiguous answers").

Latency is the time of the request alone. The time a hit waited inside the loader (from
its due time until it was handed to the sender) is recorded on its own (``wait_ms``,
``late_hits``), and the scheduler reports how far it is behind schedule (``lag_seconds``,
``visits_behind``, ``delivered_percent``, ``saturated``): a loader that cannot keep up
says so, and its own queueing is never blamed on the target.

The loader's DB greenlet reads ``snapshot()`` every ~2 s (one UPDATE), ``minute_sample()``
once a minute (one chart row) and ``drain_events()`` for the run log. Every method takes
one short lock, so it is safe from greenlets and from real threads alike (the DB writer
may run in a thread pool). Plain Python: no Django, no gevent requirement.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from itertools import repeat
from typing import Any, Literal, TypedDict, cast, get_args

try:  # A real OS lock even under monkey-patching: the DB writer may be a real thread.
    from gevent.monkey import get_original

    _Lock = get_original("_thread", "allocate_lock")
except ImportError:  # pragma: no cover - gevent is a dependency
    from threading import Lock as _Lock

# Final outcomes of a hit, also its counter's key in the snapshot. "unaccounted": a bulk
# batch answered success but its tracked + invalid was lower than the hits sent (Matomo
# skipped them, e.g. lock waits). A Literal rather than a StrEnum: the checker catches a
# misspelt outcome, and the sender's per-hit path keeps using plain str keys.
HitOutcome = Literal[
    "accepted",
    "invalid",
    "unaccounted",
    "rejected",
    "server_errors",
    "network_errors",
    "timeouts",
    "abandoned",
]
OUTCOMES: tuple[HitOutcome, ...] = get_args(HitOutcome)
# Outcomes that say something about the target's health (abandoned is our own doing).
FAILURES: frozenset[HitOutcome] = frozenset(OUTCOMES) - {"accepted", "abandoned"}


# --- The shape of a snapshot, i.e. of Run.stats -------------------------------------------
# Written by the loader, read by the dashboard, the commands and reports. Every key may be
# missing in a run written by an older loader (total=False), so readers use .get().


class LatencySummary(TypedDict):
    """Milliseconds (None before the first answer); ``count`` answers measured."""

    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    mean: float | None
    count: int


class TargetStats(TypedDict, total=False):
    """One target's figures: ``TargetTelemetry.snapshot()``, ``Run.stats["targets"][key]``."""

    visits_started: int
    visits_finished: int
    visits_delivered: int
    sent: int
    requests: int
    retries: int
    accepted: int
    invalid: int
    unaccounted: int
    rejected: int
    server_errors: int
    network_errors: int
    timeouts: int
    abandoned: int
    unsent: int
    already_recorded: int
    possibly_duplicated: int
    in_flight: int
    errors: int
    rejected_by_status: dict[str, int]
    server_errors_by_status: dict[str, int]
    retries_by_reason: dict[str, int]
    latency_ms: LatencySummary
    latency_buckets: dict[str, int]  # LatencyHistogram.sparse(): reports and /metrics
    wait_buckets: dict[str, int]  # the same for wait_ms: shards' waits merge exactly
    hits_per_second: float
    accepted_per_second: float
    degraded: bool
    degraded_reason: str | None
    mode: str
    secure_only_token: bool
    events_dropped: int
    visits_per_day: int  # added by the live loader: the target's current rate
    # The live loader's own wait and schedule (see the module docstring).
    wait_ms: LatencySummary
    late_hits: int
    lag_seconds: float
    visits_behind: int
    delivered_percent: float | None
    saturated: bool


class RunTotals(TargetStats, total=False):
    """The run's figures: counters summed over targets, latency merged exactly."""

    degraded_targets: list[str]
    saturated_targets: list[str]


class RunStats(TypedDict):
    """``RunTelemetry.snapshot()``: what ``Run.stats`` holds."""

    totals: RunTotals
    targets: dict[str, TargetStats]


EVENT_QUEUE_SIZE = 200
LATE_AFTER_SECONDS = 1.0  # a hit handed to the sender later than this after its due time is "late"
BACKOFF_EVENT_EVERY_SECONDS = 60.0
RATE_WINDOW_SECONDS = 60


_log = math.log


class LatencyHistogram:
    """Log-spaced buckets from 50 us to ~2 min: percentiles within ~4 %, fixed memory."""

    MIN_SECONDS = 50e-6
    GROWTH = 1.08
    BUCKETS = 192

    __slots__ = ("count", "counts", "max", "total")

    _log_growth = math.log(GROWTH)

    def __init__(self) -> None:
        self.counts = [0] * self.BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> int:
        """Count one sample; returns its bucket (for ``add_to_bucket`` of a twin histogram).
        (``add_to_bucket`` written out: this runs for every hit, twice.)"""
        small = seconds < _MIN_SECONDS
        index = 0 if small else min(_LAST_BUCKET, 1 + int(_log(seconds / _MIN_SECONDS) / _LOG_GROWTH))
        self.counts[index] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        return index

    def add_to_bucket(self, index: int, seconds: float) -> None:
        """``add(seconds)`` when its bucket is known (one logarithm for two histograms)."""
        self.counts[index] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: LatencyHistogram) -> None:
        counts = self.counts
        for index, value in enumerate(other.counts):
            if value:
                counts[index] += value
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> float | None:
        """Seconds below which a share ``q`` (0..1) of the samples fell, or None if empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, value in enumerate(self.counts):
            seen += value
            if seen >= rank:
                if index == 0:
                    return min(self.MIN_SECONDS, self.max)
                low = self.MIN_SECONDS * self.GROWTH ** (index - 1)
                # The geometric middle of the bucket, never above the slowest sample seen.
                return min(low * math.sqrt(self.GROWTH), self.max)
        return self.max  # pragma: no cover - unreachable, ranks never exceed the count

    @classmethod
    def from_summary(cls, buckets: dict[str, int], summary: LatencySummary | dict | None) -> LatencyHistogram:
        """The histogram a snapshot describes: its sparse buckets, with the exact count,
        total (mean x count) and max of its summary, so merging snapshots loses nothing."""
        histogram = cls()
        for index, value in (buckets or {}).items():
            histogram.counts[min(cls.BUCKETS - 1, max(0, int(index)))] += int(value)
        histogram.count = sum(histogram.counts)
        summary = summary or {}
        histogram.max = (summary.get("max") or 0.0) / 1000
        histogram.total = (summary.get("mean") or 0.0) / 1000 * histogram.count
        return histogram

    def sparse(self) -> dict[str, int]:
        """The non-empty buckets as {"index": count}: mergeable by adding counts, small in JSON."""
        return {str(index): value for index, value in enumerate(self.counts) if value}

    @classmethod
    def bucket_bounds(cls, index: int) -> tuple[float, float]:
        """(low, high) seconds of bucket ``index``."""
        if index <= 0:
            return 0.0, cls.MIN_SECONDS
        return cls.MIN_SECONDS * cls.GROWTH ** (index - 1), cls.MIN_SECONDS * cls.GROWTH**index

    def summary_ms(self) -> LatencySummary:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        return {
            "p50": ms(self.percentile(0.50)),
            "p95": ms(self.percentile(0.95)),
            "p99": ms(self.percentile(0.99)),
            "max": ms(self.max if self.count else None),
            "mean": ms(self.total / self.count if self.count else None),
            "count": self.count,
        }


_MIN_SECONDS = LatencyHistogram.MIN_SECONDS
_LOG_GROWTH = LatencyHistogram._log_growth
_LAST_BUCKET = LatencyHistogram.BUCKETS - 1


class RateWindow:
    """Finished and accepted hits per second over the last minute (a ring of seconds)."""

    __slots__ = ("accepted", "hits", "seconds", "started")

    def __init__(self, now: float) -> None:
        self.seconds = [-1] * RATE_WINDOW_SECONDS
        self.hits = [0] * RATE_WINDOW_SECONDS
        self.accepted = [0] * RATE_WINDOW_SECONDS
        self.started = int(now)

    def add(self, now: float, hits: int, accepted: int) -> None:
        second = int(now)
        slot = second % RATE_WINDOW_SECONDS
        if self.seconds[slot] != second:
            self.seconds[slot] = second
            self.hits[slot] = 0
            self.accepted[slot] = 0
        self.hits[slot] += hits
        self.accepted[slot] += accepted

    def rates(self, now: float) -> tuple[float, float]:
        """(hits/s, accepted/s) over the last complete seconds, up to a minute."""
        second = int(now)
        span = min(RATE_WINDOW_SECONDS, second - self.started)
        if span <= 0:
            return 0.0, 0.0
        oldest = second - span
        hits = accepted = 0
        for slot in range(RATE_WINDOW_SECONDS):
            if oldest <= self.seconds[slot] < second:
                hits += self.hits[slot]
                accepted += self.accepted[slot]
        return hits / span, accepted / span


_ONE_ACCEPTED = ("", 1)  # a HealthWindow entry: one hit, accepted


class HealthWindow:
    """Outcomes of the most recent ``size`` hits; degraded when most of them failed, or
    when a smaller but steady share was rejected with HTTP 4xx (Matomo refusing hits is a
    configuration error that no retry fixes: 39 % of 400s must not pass as healthy).

    Hysteresis (degraded above ``degrade_above``, recovered below ``recover_below``; the
    same for the 4xx shares) keeps a target that hovers around a threshold from flapping
    in the run log."""

    def __init__(
        self,
        size: int = 200,
        *,
        degrade_above: float = 0.5,
        recover_below: float = 0.25,
        degrade_rejected_above: float = 0.1,
        recover_rejected_below: float = 0.05,
        min_hits: int = 20,
    ) -> None:
        self.size = size
        self.degrade_above = degrade_above
        self.recover_below = recover_below
        self.degrade_rejected_above = degrade_rejected_above
        self.recover_rejected_below = recover_rejected_below
        self.min_hits = min_hits
        self.entries: deque[tuple[str, int]] = deque()  # (failure key or "", hits)
        self.total = 0
        self.failed = 0
        self.failures: Counter[str] = Counter()
        self.degraded = False

    def add_accepted(self, count: int) -> None:
        """``add("", 1)`` ``count`` times, in a window with no failure and not degraded
        (where it never changes the state)."""
        entries = self.entries
        entries.extend(repeat(_ONE_ACCEPTED, count))
        total = self.total + count
        size = self.size
        popleft = entries.popleft
        while len(entries) > 1 and total - entries[0][1] >= size:
            total -= popleft()[1]
        self.total = total

    def add(self, key: str, hits: int) -> str | None:
        """Add ``hits`` hits with failure ``key`` ("" = accepted). Returns "degraded" or
        "recovered" when the state changes."""
        entries = self.entries
        entries.append((key, hits))
        total = self.total + hits
        if key:
            self.failed += hits
            self.failures[key] += hits
        while len(entries) > 1 and total - entries[0][1] >= self.size:
            old_key, old_hits = entries.popleft()
            total -= old_hits
            if old_key:
                self.failed -= old_hits
                self.failures[old_key] -= old_hits
                if not self.failures[old_key]:
                    del self.failures[old_key]
        self.total = total
        if not self.failed and not self.degraded:  # all accepted, and healthy: it stays so
            return None
        if total < self.min_hits:
            return None
        share = self.failed / self.total
        # The 4xx share only when something failed (it is a sum over the failure kinds).
        rejected = self.rejected_share() if self.failed else 0.0
        if not self.degraded and (share > self.degrade_above or rejected > self.degrade_rejected_above):
            self.degraded = True
            return "degraded"
        if self.degraded and share < self.recover_below and rejected < self.recover_rejected_below:
            self.degraded = False
            return "recovered"
        return None

    def rejected_share(self) -> float:
        """Share of the window's hits rejected with HTTP 4xx."""
        if not self.total:
            return 0.0
        return sum(hits for key, hits in self.failures.items() if key.startswith("rejected")) / self.total

    def main_failure(self) -> str | None:
        return self.failures.most_common(1)[0][0] if self.failures else None


# What to tell the user about the most common failure of a degraded target.
_HINTS = {
    "rejected:400": "Matomo refused the hits: check the site id, and that the token is valid when hits carry "
    "cip, a cdt older than 24 h or a location (token missing for cip?)",
    "rejected:401": "the token was refused",
    "rejected:403": "the token was refused or lacks write access to the site",
    "rejected:404": "check the tracking URL (it should end in matomo.php)",
    "rejected:413": "the requests are too large for the web server: lower the batch size",
    "rejected:429": "the target rate-limits us: lower the rate or the concurrency",
    "server_errors:503": "tracking may be disabled on the target, or it is overloaded",
    "timeouts": "the target answers too slowly: lower the rate or concurrency, or raise the timeout",
    "network_errors": "cannot reach the target: check the URL, DNS and firewall, and that it is up",
    "invalid": "Matomo counted the hits as invalid: check the site id, and the token for hits with cip or an "
    "old cdt (a secure-only token is ignored in bulk requests)",
    "unaccounted": "Matomo skipped hits without counting them (lock waits under load?): lower the concurrency",
}


def describe_failure(key: str) -> str:
    """ "rejected:400" -> "rejected with HTTP 400", "timeouts" -> "timeouts"."""
    kind, _, status = key.partition(":")
    label = {
        "rejected": "rejected",
        "server_errors": "server errors",
        "network_errors": "network errors",
        "timeouts": "timeouts",
        "invalid": "counted invalid by Matomo",
        "unaccounted": "skipped by Matomo (neither tracked nor invalid)",
    }.get(kind, kind)
    if status:
        label = f"rejected with HTTP {status}" if kind == "rejected" else f"{label} (HTTP {status})"
    return label


def failure_hint(key: str) -> str:
    kind = key.partition(":")[0]
    return (
        _HINTS.get(key)
        or _HINTS.get(kind)
        or ("the target fails internally: check its error log, or lower the rate" if kind == "server_errors" else "")
    )


# Single hits' accepted outcomes and loader waits held (``record_accepted``,
# ``record_wait``) before they are folded into the figures.
FOLD_EVERY = 64


def _failure_key(kind: str, status: int) -> str:
    return f"{kind}:{status}" if status else kind


class TargetTelemetry:
    """Counters, latency, rates, health and notable events of one target."""

    def __init__(self, name: str = "", *, health_window: int = 200, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self._clock = clock
        self._lock = _Lock()
        now = clock()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "visits_started",
                "visits_finished",
                "visits_delivered",
                "sent",
                "requests",
                "retries",
                *OUTCOMES,
                "unsent",
                "already_recorded",
                "possibly_duplicated",
            ),
            0,
        )
        self._rejected_by_status: Counter[int] = Counter()
        self._server_errors_by_status: Counter[int] = Counter()
        self._retries_by_reason: Counter[str] = Counter()
        self._latency = LatencyHistogram()
        self._wait = LatencyHistogram()
        self._late_hits = 0
        self._lag_seconds = 0.0
        self._visits_behind = 0
        self._saturated = False
        self._rate = RateWindow(now)
        self._minute_latency = LatencyHistogram()
        self._minute = dict.fromkeys(("hits", "accepted", "errors"), 0)
        self._health = HealthWindow(health_window)
        self._accepted: list[float] = []  # latencies of accepted hits not folded in yet
        self._accepted_second = 0  # the clock's second they were accepted in
        self._waits: list[float] = []  # single hits' loader waits not folded in yet
        self._messages: dict[str, str] = {}  # failure key -> first message seen (scrubbed)
        self._events: deque[tuple[str, str]] = deque(maxlen=EVENT_QUEUE_SIZE)
        self.events_dropped = 0
        self._seen: set[str] = set()
        self._last_backoff_event = -math.inf
        self._retries_since_event: Counter[str] = Counter()
        self.degraded_reason: str | None = None
        # Set by the sender; reported in the snapshot.
        self.mode = ""
        self.secure_only_token = False

    # --- recording (senders) -------------------------------------------------------

    def start_visits(self, count: int = 1) -> None:
        with self._lock:
            self._counts["visits_started"] += count

    def finish_visits(self, count: int = 1, *, delivered: int = 0) -> None:
        """``count`` visits ended, ``delivered`` of them delivered: Matomo accepted their hits
        (started visits may end undelivered: stopped, failed, or still queued when the run
        ended)."""
        with self._lock:
            counts = self._counts
            counts["visits_finished"] += count
            if delivered:
                counts["visits_delivered"] += delivered

    def start_hits(self, hits: int) -> None:
        """``hits`` go out for the first time (retries are not counted here)."""
        with self._lock:
            self._counts["sent"] += hits

    def record_already_recorded(self, hits: int) -> None:
        """Accepted ``hits`` were found already recorded when they were sent again."""
        with self._lock:
            self._counts["already_recorded"] += hits

    def record_possibly_duplicated(self, hits: int) -> None:
        """Accepted ``hits`` may have been recorded twice (an earlier attempt's answer was lost)."""
        with self._lock:
            self._counts["possibly_duplicated"] += hits

    def record_unsent(self, hits: int) -> None:
        """Hits handed to the sender that never went out because it was closed."""
        with self._lock:
            self._counts["unsent"] += hits

    def record_accepted(self, latency: float) -> None:
        """``record_outcome("accepted", 1, latency=latency)``: one single hit accepted.

        In a healthy window (no failure in it: an accepted hit cannot change its state)
        only its latency is kept here; every ``FOLD_EVERY`` hits, at the clock's next
        second, and before anything reads the figures or records another outcome, they
        are folded in at once. Per hit, the scattered updates of ``record_outcome`` (two
        histograms, the rate ring, the minute, the health window) cost the single-hit
        sender ~10 % of its CPU (py-spy), far more than their instructions: between two
        answers the process sleeps, and they ran cold."""
        with self._lock:
            health = self._health
            if health.failed or health.degraded:  # recovery is judged hit by hit
                self._fold_locked()
                self._outcome_locked("accepted", 1, latency, 0, "")
                return
            second = int(self._clock())
            if second != self._accepted_second:  # the rate ring counts them in their second
                self._fold_locked()
                self._accepted_second = second
            pending = self._accepted
            pending.append(latency)
            if len(pending) >= FOLD_EVERY:
                self._fold_locked()

    def _fold_locked(self) -> None:
        """Fold the hits held by ``record_accepted`` into the figures."""
        pending = self._accepted
        if not pending:
            return
        count = len(pending)
        counts = self._counts
        counts["accepted"] += count
        counts["requests"] += count
        latency, minute_latency = self._latency, self._minute_latency
        for seconds in pending:
            minute_latency.add_to_bucket(latency.add(seconds), seconds)
        pending.clear()
        self._rate.add(self._accepted_second, count, count)
        minute = self._minute
        minute["hits"] += count
        minute["accepted"] += count
        self._health.add_accepted(count)

    def record_outcome(
        self, kind: HitOutcome, hits: int, *, latency: float | None = None, status: int = 0, message: str = ""
    ) -> None:
        """The final outcome of ``hits`` hits; ``latency`` of the request that decided it
        (pass it once per request). ``message``: a short, token-free description of the
        first failure of its kind (e.g. Matomo's error text)."""
        if hits <= 0 and latency is None:
            return
        with self._lock:
            self._fold_locked()  # the health window sees hits in their order
            self._outcome_locked(kind, hits, latency, status, message)

    def _outcome_locked(self, kind: HitOutcome, hits: int, latency: float | None, status: int, message: str) -> None:
        counts = self._counts
        counts[kind] += hits
        if latency is not None:
            counts["requests"] += 1
            self._minute_latency.add_to_bucket(self._latency.add(latency), latency)
        if kind == "abandoned" or hits <= 0:
            return
        accepted = hits if kind == "accepted" else 0
        self._rate.add(self._clock(), hits, accepted)
        minute = self._minute
        minute["hits"] += hits
        minute["accepted"] += accepted
        key = ""
        if not accepted:
            minute["errors"] += hits
            if kind == "rejected":
                self._rejected_by_status[status] += hits
            elif kind == "server_errors":
                self._server_errors_by_status[status] += hits
            key = _failure_key(kind, status)
            if key not in self._seen:
                self._seen.add(key)
                if message:
                    self._messages[key] = message
                detail = f": {message}" if message else ""
                self._event("error", f"First failed hit: {describe_failure(key)}{detail}")
        change = self._health.add(key, hits)
        if change:
            self._health_changed(change)

    def record_wait(self, seconds: float) -> None:
        """One hit was handed to the sender ``seconds`` after it was due (the loader's own
        queueing, never part of the latency). Held and folded in like ``record_accepted``
        (this runs for every single hit): every ``FOLD_EVERY`` hits and before the
        figures are read."""
        with self._lock:
            waits = self._waits
            waits.append(seconds)
            if len(waits) >= FOLD_EVERY:
                self._fold_waits_locked()

    def _fold_waits_locked(self) -> None:
        waits = self._waits
        if waits:
            self._add_waits_locked(zip(waits, repeat(1)))
            waits.clear()

    def record_waits(self, waits: Iterable[tuple[float, int]]) -> None:
        """``hits`` handed to the sender ``seconds`` late, for each pair, under one lock (a
        bulk dispatcher hands many visits over at each wake-up)."""
        with self._lock:
            self._add_waits_locked(waits)

    def _add_waits_locked(self, waits: Iterable[tuple[float, int]]) -> None:
        histogram = self._wait
        late = 0
        for seconds, hits in waits:
            histogram.add(seconds if seconds > 0.0 else 0.0)
            if seconds > LATE_AFTER_SECONDS:
                late += hits
        self._late_hits += late

    def set_schedule(self, *, lag_seconds: float, visits_behind: int, saturated: bool) -> None:
        """The scheduler's view: how far behind schedule it is, the visits it owes, and
        whether it is saturated (cannot keep up with the asked rate)."""
        with self._lock:
            self._lag_seconds = lag_seconds
            self._visits_behind = visits_behind
            self._saturated = saturated

    def record_retry(
        self, reason: str, *, latency: float | None = None, delay: float = 0.0, hits: int = 1, message: str = ""
    ) -> None:
        """A request for ``hits`` hits failed with ``reason`` ("429", "503", "timeout",
        "network") and will be sent again after ``delay`` seconds."""
        with self._lock:
            counts = self._counts
            counts["retries"] += 1
            self._retries_by_reason[reason] += 1
            if latency is not None:
                counts["requests"] += 1
                self._minute_latency.add_to_bucket(self._latency.add(latency), latency)
            self._retries_since_event[reason] += 1
            now = self._clock()
            if now - self._last_backoff_event >= BACKOFF_EVENT_EVERY_SECONDS:
                self._last_backoff_event = now
                reasons = ", ".join(f"{_retry_label(r)}: {n}" for r, n in self._retries_since_event.most_common())
                total = sum(self._retries_since_event.values())
                detail = f" ({message})" if message else ""
                self._event(
                    "warning",
                    f"Backing off: {total} request(s) to retry since the last notice ({reasons}); "
                    f"next retry in {delay:.1f} s{detail}",
                )
                self._retries_since_event.clear()

    def is_new_failure(self, kind: str, status: int = 0) -> bool:
        """Whether no hit has ended with this failure yet (to build its message only once)."""
        return _failure_key(kind, status) not in self._seen

    def event(self, level: str, message: str) -> None:
        """A notable event for the run log ("info", "warning" or "error"); never per hit."""
        with self._lock:
            self._event(level, message)

    def event_once(self, key: str, level: str, message: str) -> bool:
        """Like ``event`` but only the first time for ``key``; returns whether it was new."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            self._event(level, message)
            return True

    def _event(self, level: str, message: str) -> None:
        if len(self._events) == self._events.maxlen:
            self.events_dropped += 1
        prefix = f"Target {self.name}: " if self.name else ""
        self._events.append((level, prefix + message))

    def _health_changed(self, change: str) -> None:
        health = self._health
        if change == "degraded":
            key = health.main_failure() or ""
            share = health.failed / health.total
            reason = f"{share:.0%} of the last {health.total} hits failed, mostly {describe_failure(key)}"
            hint = failure_hint(key)
            if hint:
                reason += f": {hint}"
            message = self._messages.get(key)
            if message:
                reason += f" (Matomo said: {message})"
            self.degraded_reason = reason
            self._event("error", f"Degraded: {reason}")
        else:
            self.degraded_reason = None
            self._event("info", "Recovered: most recent hits are accepted again")

    # --- reading (the loader's DB greenlet) --------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._health.degraded

    def counts(self) -> dict[str, int]:
        with self._lock:
            self._fold_locked()
            return dict(self._counts)

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight_locked()

    def _in_flight_locked(self) -> int:
        self._fold_locked()
        counts = self._counts
        return counts["sent"] - sum(counts[kind] for kind in OUTCOMES)

    def snapshot(self) -> TargetStats:
        """Everything as JSON-ready data (ints, floats, strings, small dicts)."""
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> TargetStats:
        self._fold_locked()
        self._fold_waits_locked()
        counts = self._counts
        hits_per_second, accepted_per_second = self._rate.rates(self._clock())
        done = sum(counts[kind] for kind in OUTCOMES)
        data: dict[str, Any] = dict(counts)
        data.update(
            in_flight=counts["sent"] - done,
            errors=done - counts["accepted"] - counts["abandoned"],
            rejected_by_status={str(k): v for k, v in sorted(self._rejected_by_status.items())},
            server_errors_by_status={str(k): v for k, v in sorted(self._server_errors_by_status.items())},
            retries_by_reason=dict(self._retries_by_reason),
            latency_ms=self._latency.summary_ms(),
            wait_ms=self._wait.summary_ms(),
            late_hits=self._late_hits,
            lag_seconds=round(self._lag_seconds, 1),
            visits_behind=self._visits_behind,
            delivered_percent=delivered_percent(counts["visits_started"], self._visits_behind),
            saturated=self._saturated,
            # For reports and /metrics: summed over targets in the totals like the other dicts.
            latency_buckets=self._latency.sparse(),
            wait_buckets=self._wait.sparse(),
            hits_per_second=round(hits_per_second, 1),
            accepted_per_second=round(accepted_per_second, 1),
            degraded=self._health.degraded,
            degraded_reason=self.degraded_reason,
            mode=self.mode,
            secure_only_token=self.secure_only_token,
            events_dropped=self.events_dropped,
        )
        return cast(TargetStats, data)  # the counter keys are TargetStats' int fields

    def mean_latency(self) -> float | None:
        """Mean seconds per request this minute (since the run started while the minute
        has few answers yet); None before any answer."""
        with self._lock:
            self._fold_locked()
            latency = self._minute_latency if self._minute_latency.count >= 20 else self._latency
            return latency.total / latency.count if latency.count else None

    def minute_sample(self) -> dict[str, Any]:
        """Hits, accepted, errors and p95 latency (ms) since the previous call; resets them."""
        with self._lock:
            self._fold_locked()
            sample: dict[str, Any] = dict(self._minute)
            p95 = self._minute_latency.percentile(0.95)
            sample["p95_ms"] = None if p95 is None else round(p95 * 1000, 2)
            self._minute = dict.fromkeys(self._minute, 0)
            self._minute_latency = LatencyHistogram()
            return sample

    def drain_events(self) -> list[tuple[str, str]]:
        """(level, message) pairs recorded since the previous call, oldest first."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            return events


def delivered_percent(started: int, behind: int) -> float | None:
    """Visits started as a share of the visits the schedule asked for so far (started +
    still behind schedule), in percent; None before any visit was due."""
    asked = started + behind
    return round(100.0 * started / asked, 1) if asked else None


def _retry_label(reason: str) -> str:
    return f"HTTP {reason}" if reason.isdigit() else reason


# Per-target figures that do not add up over targets (merged or taken otherwise).
_NOT_SUMMED = frozenset({"degraded_reason", "mode", "latency_ms", "wait_ms", "lag_seconds", "delivered_percent"})


class RunTelemetry:
    """The telemetry of a run's targets, keyed by whatever the caller uses (RunTarget ids).

    ``snapshot()`` gives ``{"totals": {...}, "targets": {key: {...}}}``, the shape of
    ``Run.stats``."""

    def __init__(self, keys: Iterable[str] = (), **kwargs: Any) -> None:
        self._kwargs = kwargs
        self.targets: dict[str, TargetTelemetry] = {}
        for key in keys:
            self.add(key)

    def add(self, key: str, name: str = "") -> TargetTelemetry:
        telemetry = TargetTelemetry(name or str(key), **self._kwargs)
        self.targets[str(key)] = telemetry
        return telemetry

    def __getitem__(self, key: str) -> TargetTelemetry:
        return self.targets[str(key)]

    def snapshot(self) -> RunStats:
        targets: dict[str, TargetStats] = {}
        latency = LatencyHistogram()
        wait = LatencyHistogram()
        for key, telemetry in self.targets.items():
            with telemetry._lock:
                targets[key] = telemetry._snapshot_locked()
                latency.merge(telemetry._latency)
                wait.merge(telemetry._wait)
        totals: dict[str, Any] = {}
        for data in targets.values():
            for name, value in data.items():
                if isinstance(value, bool) or name in _NOT_SUMMED:
                    continue
                if isinstance(value, dict):
                    merged = totals.setdefault(name, {})
                    for sub, amount in value.items():
                        merged[sub] = merged.get(sub, 0) + amount
                elif isinstance(value, int | float):
                    totals[name] = totals.get(name, 0) + value
        totals["latency_ms"] = latency.summary_ms()
        totals["wait_ms"] = wait.summary_ms()
        totals["degraded_targets"] = [key for key, data in targets.items() if data["degraded"]]
        totals["lag_seconds"] = max((data["lag_seconds"] for data in targets.values()), default=0.0)
        totals["saturated"] = any(data["saturated"] for data in targets.values())
        totals["saturated_targets"] = [key for key, data in targets.items() if data["saturated"]]
        totals["delivered_percent"] = delivered_percent(totals.get("visits_started", 0), totals.get("visits_behind", 0))
        for name in ("hits_per_second", "accepted_per_second"):
            totals[name] = round(totals.get(name, 0.0), 1)
        return {"totals": cast(RunTotals, totals), "targets": targets}

    def minute_sample(self) -> dict[str, Any]:
        """One chart row for the run: hits, accepted, errors summed; p95 over all targets;
        and the same per target under "targets" (by key; targets without hits left out)."""
        latency = LatencyHistogram()
        sample = {"hits": 0, "accepted": 0, "errors": 0}
        per_target: dict[str, dict[str, Any]] = {}
        for key, telemetry in self.targets.items():
            with telemetry._lock:
                minute = telemetry._minute
                for name in sample:
                    sample[name] += minute[name]
                if minute["hits"] or minute["errors"]:
                    p95 = telemetry._minute_latency.percentile(0.95)
                    per_target[key] = {**minute, "p95_ms": None if p95 is None else round(p95 * 1000, 2)}
                latency.merge(telemetry._minute_latency)
                telemetry._minute = dict.fromkeys(telemetry._minute, 0)
                telemetry._minute_latency = LatencyHistogram()
        p95 = latency.percentile(0.95)
        return {**sample, "p95_ms": None if p95 is None else round(p95 * 1000, 2), "targets": per_target}

    def drain_events(self) -> list[tuple[str, str, str]]:
        """(target key, level, message) for every target, oldest first per target."""
        return [(key, level, message) for key, t in self.targets.items() for level, message in t.drain_events()]


# --- Shards: one run's figures from several loaders -----------------------------------------

# Figures that describe "now" and are not added up over shards but merged otherwise.
_SHARD_MAX = frozenset({"lag_seconds"})
_SHARD_ANY = frozenset({"degraded", "saturated", "secure_only_token"})
_SHARD_FIRST = frozenset({"degraded_reason", "mode"})
_SHARD_UNION = frozenset({"degraded_targets", "saturated_targets"})
_SHARD_HISTOGRAMS = {"latency_ms": "latency_buckets", "wait_ms": "wait_buckets"}


def _merge_figures(parts: list[dict]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for data in parts:
        for name, value in data.items():
            if name in _SHARD_HISTOGRAMS or name == "delivered_percent":
                continue
            if name in _SHARD_ANY or isinstance(value, bool):
                merged[name] = bool(merged.get(name)) or bool(value)
            elif name in _SHARD_FIRST:
                merged[name] = merged.get(name) or value
            elif name in _SHARD_UNION:
                merged[name] = sorted(set(merged.get(name, [])) | set(value or []))
            elif name in _SHARD_MAX:
                merged[name] = max(merged.get(name, 0.0), value or 0.0)
            elif isinstance(value, dict):
                into = merged.setdefault(name, {})
                for sub, amount in value.items():
                    into[sub] = into.get(sub, 0) + amount
            elif isinstance(value, int | float):
                merged[name] = merged.get(name, 0) + value
    for summary, buckets in _SHARD_HISTOGRAMS.items():
        if any(summary in data for data in parts):
            histogram = LatencyHistogram()
            for data in parts:
                histogram.merge(LatencyHistogram.from_summary(data.get(buckets, {}), data.get(summary)))
            merged[summary] = histogram.summary_ms()
    for name in ("hits_per_second", "accepted_per_second"):
        if name in merged:
            merged[name] = round(merged[name], 1)
    if "visits_started" in merged:
        merged["delivered_percent"] = delivered_percent(merged["visits_started"], merged.get("visits_behind", 0))
    return merged


def merge_stats(parts: Iterable[RunStats | dict]) -> RunStats:
    """One run's figures from its shards' snapshots: counters and rates added, latency
    and wait percentiles from the merged histograms (exact to the bucket, as one loader's
    own), lag the worst shard's, health flags if any shard has them. One part is returned
    as it is."""
    parts = [part for part in parts if part]
    if len(parts) == 1:
        return cast(RunStats, parts[0])
    keys = dict.fromkeys(key for part in parts for key in part.get("targets", {}))
    targets = {
        key: _merge_figures([dict(p["targets"][key]) for p in parts if key in p.get("targets", {})]) for key in keys
    }
    totals = _merge_figures([dict(part.get("totals", {})) for part in parts])
    return cast(RunStats, {"totals": totals, "targets": targets})
