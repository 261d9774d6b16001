"""Send encoded hits to one Matomo: single POST hits or bulk batches, bounded and counted.

Use it from a gevent-monkey-patched process (``manage.py run_loader``); the default
transport (geventhttpclient) also works unpatched, which is how the tests run it::

    sender = TargetSender("https://matomo.example/matomo.php", token, concurrency=20,
                          timeout=10, bulk=True, batch_size=100, telemetry=telemetry)
    sender.send_visit(["idsite=1&rec=1&...", ...], on_done=lambda outcome: ...)
    sender.send_hit("idsite=1&rec=1&...")      # live single hits, one at a time
    sender.poll()                              # from the scheduling loop: flush old batches
    sender.close(grace_seconds=5)              # at stop

``send_*`` block the calling greenlet while ``concurrency`` requests are in flight, so a
scheduler that outpaces the target slows down instead of piling up greenlets. The sender
counts hits; visits are the caller's to count (``telemetry.start_visits()`` /
``finish_visits()``), because only the scheduler knows when a live visit starts and ends.

Every request gets a final classification (see ``trafficinator.sending.telemetry.OUTCOMES``);
429/408/502/503/504, network errors and timeouts (and in bulk a 500 that Matomo rolled
back, see below) are retried with exponential backoff and jitter, honouring
``Retry-After``. A retried hit counts once. The token travels only in POST bodies and
never appears in a URL, a log message or an exception.

Ambiguous answers are settled, not guessed:

* A bulk error answer (HTTP 500, or a 2xx "error") whose ``tracked + invalid`` counts
  every entry was processed in full: only Matomo's final commit failed. Measured on
  Matomo 5.0.2 (docs/matomo-tracking.md, "Bulk tracking"): requests that start a site-day
  together deadlock on the option table, the rest is stored in autocommit, and the answer
  is 500 with the counts. It is counted as Matomo reports it and never resent.
* A bulk 500 that counts fewer entries was rolled back by Matomo's bulk handler (it rolls
  its transaction back on an exception) and is resent.
* A request that went out whole and got no answer (reset, timeout), or a proxy's 502 or
  504 instead of Matomo's (nginx before php-fpm answers so after the body went on to
  Matomo), may have been recorded. A bulk resend then judges it: Matomo refuses a resend of visits it holds as
  older than the visitors' last actions (500), so a 500 while Matomo answers a harmless
  probe (an entry without ``rec``) means "already recorded": counted once as accepted
  (``already_recorded``). A resend that is accepted proves nothing was recorded, except
  for visitors whose hits in the request all share one second (or carry no cdt): Matomo
  would accept those again, so their hits are counted ``possibly_duplicated`` (once per
  earlier attempt whose answer was lost). A single hit (live, no cdt) accepted on a
  resend after lost answers is counted ``possibly_duplicated`` once per lost answer.
* The bound: Matomo holds more copies of hits than were counted accepted by at most
  ``possibly_duplicated`` (exactly that when every lost answer's request was recorded). A request refused as already
  recorded after Matomo had stored only part of it (a 5.0.2 deadlock mid-request) has its
  missing hits counted accepted: at most the hits of requests counted ``already_recorded``.
"""

from __future__ import annotations

import json
import math
import operator
import random
import re
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Literal, NamedTuple, get_args
from urllib.parse import quote, unquote_plus, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import gevent.queue
from gevent import GreenletExit, getcurrent

from trafficinator.strictjson import StrictJSONError, count_or_none, loads_answer

from .clients import (
    FORM,
    JSON,
    GeventTransport,
    RequestsTransport,
    TransportError,
    TransportTimeout,
    make_transport,
)
from .telemetry import HitOutcome, TargetTelemetry

# Parameters that need a token (docs/matomo-tracking.md); cdt only when older than 24 h.
_TOKEN_PARAM = re.compile(r"(?:^|[?&])(?:cip|country|region|city|lat|long)=[^&]")
CDT_WITHOUT_TOKEN_SECONDS = 86400
# Answers a proxy (nginx before php-fpm) gives after the request went out: Matomo may
# have processed it (504: it was too slow to answer; 502: it failed, maybe after storing
# part of it). Settled like a lost answer, never resent blindly.
AMBIGUOUS_STATUSES = frozenset({502, 504})
# Tries of the harmless probe that tells "Matomo refused a resend" from "Matomo is broken".
PROBE_ATTEMPTS = 3
# Characters a JSON string cannot hold as they are: a quote, a backslash, control characters.
_JSON_UNSAFE = ('"', "\\", *map(chr, range(0x20)))

_IDSITE = re.compile(r"(?:^|[?&])idsite=(\d+)")
_VISITOR = re.compile(r"(?:^|[?&])(?:cid|_id)=([0-9A-Fa-f]{16})")
_HEX_DIGITS = "0123456789abcdefABCDEF"

# What a visit's on_done receives (a request's too, with its tally of HitOutcome keys).
VisitOutcome = Literal["accepted", "partial", "rejected", "failed", "abandoned"]
VISIT_OUTCOMES: tuple[VisitOutcome, ...] = get_args(VisitOutcome)

Callback = Callable[[VisitOutcome], object]
# A request's outcome and its hits per final outcome (see TargetSender.send_request).
RequestCallback = Callable[[VisitOutcome, dict[str, int]], object]


class Visit(NamedTuple):
    """A visit waiting in the bulk buffer or travelling in a request."""

    hits: Sequence[str]
    on_done: Callback | None
    visitor: str


# Visit.visitor for map() at C speed (by its position, found by name: a field added
# before it cannot shift it silently).
_visitor_field = operator.itemgetter(Visit._fields.index("visitor"))


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff ("equal jitter") and Retry-After.

    ``max_attempts`` counts the first try. A Retry-After (seconds or an HTTP date) is
    waited out, up to ``retry_after_max`` seconds, plus up to 10 % so that many
    connections do not come back at the same instant."""

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    statuses: frozenset[int] = frozenset({408, 429, 502, 503, 504})
    # Bulk: a 500 that does not count every entry was rolled back by Matomo's bulk
    # handler, so it is resent (one that counts every entry was stored: never resent).
    bulk_statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        seconds = parse_retry_after(retry_after)
        if seconds is not None:
            return min(seconds, self.retry_after_max) * (1.0 + 0.1 * random.random())
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + random.random() * ceiling / 2


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


class SenderClosed(RuntimeError):
    pass


@dataclass(frozen=True)
class Failure:
    """A request that got no answer: its telemetry kind, retry reason, a message, and
    whether it went out whole (then Matomo may have processed it)."""

    kind: HitOutcome
    reason: str
    message: str
    sent: bool


# Matomo's usual bulk answer, compact as PHP's json_encode writes it, with counts below
# MAX_COUNT: read without the strict parser (~0.5 against ~4 us a request), the same figures.
# With a super user's token (the one many use) it ends with the invalid hits' positions,
# an empty list when there are none.
_COUNT = rb"(0|[1-9][0-9]{0,14})"
_PLAIN_COUNTS = re.compile(
    rb'\{"status":"(success|error)","tracked":' + _COUNT + rb',"invalid":' + _COUNT + rb'(?:,"invalid_indices":\[\])?\}'
)


def _bulk_counts(data: bytes) -> tuple[bool, int, int] | None:
    """(status is "success", tracked, invalid) of a bulk answer, or None without counts.

    Read like the connection check reads Matomo (one parse per request, not per hit): a
    hostile or broken answer (over 4 MB, NaN or Infinity, deep nesting, a list instead of
    an object, a count that is not a whole number from 0) has no counts, as if unreadable."""
    if not data:
        return None
    plain = _PLAIN_COUNTS.fullmatch(data)
    if plain is not None:
        return plain.group(1) == b"success", int(plain.group(2)), int(plain.group(3))
    try:
        answer = loads_answer(data)
    except StrictJSONError:
        return None
    if not isinstance(answer, dict):
        return None
    tracked, invalid = count_or_none(answer.get("tracked")), count_or_none(answer.get("invalid", 0))
    if tracked is None or invalid is None:
        return None
    return answer.get("status") == "success", tracked, invalid


def _visit_second(value: object) -> int:
    """A visit log action's timestamp: a whole number of seconds, else ValueError (a
    float is not truncated into a second it does not name)."""
    second = count_or_none(value)
    if second is None:
        raise ValueError(f"a timestamp that is not a whole number of seconds: {str(value)[:40]!r}")
    return second


def _param(query: str, key: str) -> str | None:
    """The raw value of the first parameter ``key`` ("cdt=": name and "=") of an encoded
    hit, as ``re.search("(?:^|[?&])" + key + "([^&]*)")`` finds it, or None: str.find
    runs at C speed, the regex tries every position of a ~700-character hit (~20 us,
    measured, for a cdt at the end where the encoder puts it)."""
    at = query.find(key)
    while at >= 0:
        if at == 0 or query[at - 1] in "?&":
            start = at + len(key)
            end = query.find("&", start)
            return query[start:] if end < 0 else query[start:end]
        at = query.find(key, at + 1)
    return None


def cdt_epoch(query: str) -> float | None:
    """A hit's ``cdt`` as UNIX seconds, or None when it has none (or an unreadable one)."""
    raw = _param(query, "cdt=")
    if raw is None:
        return None
    value = (unquote_plus(raw) if "%" in raw or "+" in raw else raw).strip()
    if ":" not in value:  # never a float: spare the exception of a datetime's float()
        try:
            return float(value)
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(value.replace("T", " ", 1))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def visitor_of(query: str) -> str:
    """The visitor id (``cid``, else ``_id``) of an encoded hit, "" if it has none.

    The sender looks up every visit's visitor: the usual hit (our encoder's: a valid
    ``cid`` after "&", no ``_id`` before it) is read with str.find (~0.3 us); anything
    else goes to the regex, which tries every position up to the id (~0.6 us)."""
    at = query.find("cid=")
    if at > 0 and query[at - 1] in "?&" and query.find("_id=", 0, at) < 0:
        value = query[at + 4 : at + 20]
        if len(value) == 16 and not value.strip(_HEX_DIGITS):
            return value.lower()
    match = _VISITOR.search(query)
    return match.group(1).lower() if match else ""


def _by_visitor(entries: Sequence[str]) -> list[list[str]]:
    """The entries grouped by visitor, each group in its order, groups in order of first hit."""
    groups: dict[str, list[str]] = {}
    for query in entries:
        groups.setdefault(visitor_of(query), []).append(query)
    return list(groups.values())


def _one_second_visitors(entries: Sequence[str]) -> dict[str, int]:
    """The visitors (with an id) whose hits in ``entries`` all carry a cdt of one same
    second, and that second: a resend cannot tell whether Matomo holds them."""
    seconds: dict[str, set[int | None]] = {}
    for query in entries:
        epoch = cdt_epoch(query)
        seconds.setdefault(visitor_of(query), set()).add(None if epoch is None else int(epoch))
    return {
        visitor: next(iter(stamps))  # type: ignore[misc]
        for visitor, stamps in seconds.items()
        if visitor and len(stamps) == 1 and None not in stamps
    }


def _hits_a_resend_cannot_judge(entries: Sequence[str], judged: frozenset[str] = frozenset()) -> int:
    """Hits of the visitors whose hits in ``entries`` all share one second or carry no
    cdt: a resend of them is accepted even when Matomo holds them already. ``judged``:
    visitors known not recorded (left out)."""
    seconds: dict[str, set[int | None]] = {}
    hits: dict[str, int] = {}
    for query in entries:
        visitor = visitor_of(query)
        epoch = cdt_epoch(query)
        seconds.setdefault(visitor, set()).add(None if epoch is None else int(epoch))
        hits[visitor] = hits.get(visitor, 0) + 1
    return sum(
        hits[visitor]
        for visitor, stamps in seconds.items()
        if (None in stamps or len(stamps) == 1 or not visitor) and visitor not in judged
    )


def _api_url(tracking_url: str) -> str | None:
    """``index.php`` beside ``matomo.php``/``piwik.php`` (no query), or None."""
    parts = urlsplit(tracking_url)
    head, _, name = parts.path.rpartition("/")
    if name not in ("matomo.php", "piwik.php"):
        return None
    return urlunsplit((parts.scheme, parts.netloc, head + "/index.php", "", ""))


def _failure_kind(status: int) -> HitOutcome:
    return "server_errors" if status >= 500 else "rejected"


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***").replace(quote(token, safe=""), "***")
    return text[:200]


def _excerpt(data: bytes, token: str | None) -> str:
    """A short, token-free text of an error body for the run log (first error only)."""
    text = data[:2000].decode("utf-8", "replace")
    text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    if text.startswith("This resource is part of Matomo"):
        return ""  # Matomo's generic tracker page says nothing about the error
    return _scrub(text, token)


def bulk_requests_json(entries: Sequence[str]) -> bytes:
    """The ``requests`` array of a bulk body: each hit as a JSON string starting with "?".

    Encoded hits are URL-encoded, so joining them is valid JSON; a ``char in hits`` (a
    memchr at C speed) for each character a JSON string cannot hold as it is (a quote, a
    backslash, a control character) checks that: ~2.5 times cheaper than the count and
    translate over the body it replaced (measured ~50 against ~125 us for 96 hits; a
    regex over the hits is slower still), and those ~3 times cheaper than the regex
    before them, ~75 times than json.dumps of the list."""
    entries = [query if query.startswith("?") else "?" + query for query in entries]
    hits = "".join(entries)
    if not entries or any(char in hits for char in _JSON_UNSAFE):
        return json.dumps(entries).encode("utf-8")
    return ('["' + '","'.join(entries) + '"]').encode("utf-8")


class _Workers:
    """``size`` long-lived greenlets that run the sender's requests, one job each at a
    time: what a gevent Pool of ``size`` did here, without a greenlet started, linked,
    ended and unlinked per request (measured ~12 us per job against ~3 us, warm; a
    sender waiting for slow answers pays that path cold, once per request).

    ``spawn`` blocks the caller while ``size`` jobs are running or handed over, like
    ``Pool.spawn``. A job must settle its own errors; one killed (``kill``) ends its
    worker once it returns, so a job that catches GreenletExit to count its request
    abandoned does not leave the worker waiting for more. ``close`` ends the idle
    workers (a sender closed in time must not leave greenlets waiting for work)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = gevent.lock.Semaphore(size)
        self._jobs: gevent.queue.SimpleQueue = gevent.queue.SimpleQueue()  # (function, args), None: end
        self._workers: list[gevent.Greenlet] = []
        self._idle = gevent.event.Event()  # set while no job runs or waits
        self._idle.set()
        self._closed = False

    def __len__(self) -> int:
        return self.size - self._slots.counter

    def free_count(self) -> int:
        return self._slots.counter

    def wait_available(self, timeout: float | None = None) -> int:
        return self._slots.wait(timeout=timeout)

    def spawn(self, function: Callable[..., object], *args: object) -> None:
        self._slots.acquire()
        self._idle.clear()
        if len(self._workers) < self.size:  # one more per job until there are size, then kept
            self._workers.append(gevent.spawn(self._work))
        self._jobs.put((function, args))

    def join(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout=timeout)

    def kill(self, *, block: bool = True, timeout: float | None = None) -> None:
        self._closed = True
        gevent.killall(self._workers, block=block, timeout=timeout)

    def close(self) -> None:
        """No more jobs: every worker ends once it is idle."""
        self._closed = True
        for _ in self._workers:
            self._jobs.put(None)

    def _work(self) -> None:
        jobs = self._jobs
        slots = self._slots
        while not self._closed:
            job = jobs.get()
            if job is None:  # close()
                return
            try:
                job[0](*job[1])
            except Exception:  # a bug of ours: report it like a dying greenlet, keep working
                gevent.get_hub().handle_error(getcurrent(), *sys.exc_info())
            finally:
                job = None  # an idle worker holds no finished request
                slots.release()
                if slots.counter == self.size:
                    self._idle.set()


class TargetSender:
    """Sends one target's hits: single POSTs or bulk batches, never more than
    ``concurrency`` requests in flight, with retries, timeouts and telemetry.

    * ``tracking_url``: ``https://host/path/matomo.php``.
    * ``token``: token_auth or None; sent as a form field (single) or in the JSON body (bulk).
    * ``timeout``: seconds for a whole request (and each read); ``connect_timeout``
      defaults to it.
    * ``bulk``/``batch_size``: whole visits per batch, flushed when ``batch_size`` hits are
      buffered or the oldest buffered visit waited ``max_batch_delay`` seconds (checked
      in ``send_visit`` and ``poll``).
    * ``fallback_to_single``: when bulk hits that need a token come back ``invalid`` (a
      secure-only token, ignored by Matomo in JSON bodies), send the following visits as
      single POST hits, where such a token works, and resend the refused token hits of
      the batches that revealed it (and of those in flight then) as single hits too.
    * ``timezone``: the site's, to know when a request starts a new site-day (the first
      request of a site-day goes alone; see docs/matomo-tracking.md, "Bulk tracking").

    Bulk requests are pipelined: up to ``concurrency`` are in flight all the time (a new
    one leaves as soon as a batch is full and a slot is free), every visit is whole in one
    request, and a visitor's visits never travel in two requests at once, so Matomo gets
    each visitor's hits oldest first whatever order it serves the requests in.
    """

    def __init__(
        self,
        tracking_url: str,
        token: str | None = None,
        *,
        concurrency: int = 10,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
        bulk: bool = False,
        batch_size: int = 100,
        retry: RetryPolicy | None = None,
        client: str = "geventhttpclient",
        telemetry: TargetTelemetry | None = None,
        name: str = "",
        fallback_to_single: bool = True,
        max_batch_delay: float = 1.0,
        timezone: str = "UTC",
        min_interval: float = 0.0,
    ) -> None:
        if concurrency < 1 or batch_size < 1 or timeout <= 0:
            raise ValueError("concurrency and batch_size must be >= 1 and timeout > 0")
        self.concurrency = concurrency
        # Least time between two requests to the tracker (a requests-per-second limit). Kept
        # here, per HTTP request, because a caller's request can leave in parts (a site-day's
        # first visit alone, a returning visitor held back) and retries are requests too.
        self.min_interval = max(0.0, min_interval)
        self._next_post_at = -math.inf
        self.batch_size = batch_size
        self.bulk = bulk
        self.retry = retry or RetryPolicy()
        self.fallback_to_single = fallback_to_single
        self.max_batch_delay = max_batch_delay
        self.telemetry = telemetry if telemetry is not None else TargetTelemetry(name)
        self.telemetry.mode = "bulk" if bulk else "single"
        self._token = token or None
        self._transport = make_transport(
            client, tracking_url, concurrency=concurrency, timeout=timeout, connect_timeout=connect_timeout
        )
        # Matomo's Reporting API beside the tracker, to settle resent bounces (with a token).
        self._api_url = _api_url(tracking_url) if self._token else None
        self._api: GeventTransport | RequestsTransport | None = None
        self._timeout = timeout
        self._pool = _Workers(concurrency)
        # Bulk parts that wait for an earlier request (same visitor, or a site-day's
        # leader) before they take a request slot; bounded so a caller still blocks.
        self._waiting = gevent.pool.Pool(concurrency)
        self._stop = gevent.event.Event()  # closing: no new retries
        self._abandon = gevent.event.Event()  # the close's grace is over: nothing more goes out
        self._closed = False
        # Appended to every single hit: send_image=0 asks for a bodiless 204.
        suffix = "&send_image=0"
        if self._token:
            suffix += "&token_auth=" + quote(self._token, safe="")
        self._single_suffix = suffix.encode("ascii")
        self._bulk_head = b'{"requests":'
        tail = (',"token_auth":' + json.dumps(self._token) if self._token else "") + "}"
        self._bulk_tail = tail.encode("utf-8")
        self._buffer: list[Visit] = []
        self._buffer_hits = 0
        self._buffer_since = 0.0
        self._unsent = 0
        self.secure_only_token = False
        # Per-visitor order: the visits of a visitor whose earlier visit is in a request in
        # flight travel in a part of their own that leaves once that request is answered,
        # so Matomo never gets a visitor's later hits before its earlier ones, and the
        # other visits do not wait (blocking them stalled the pipeline, see _spawn_batch).
        self._visitors_in_flight: dict[str, gevent.event.Event] = {}
        # The first visit of a new site-day goes alone; the rest wait for its answer
        # (Matomo 5.0.2 deadlocks when several requests start a site-day at once).
        self._zone = ZoneInfo(timezone)
        self._site_days: set[date] = set()
        self._leader: gevent.event.Event | None = None

    # --- public API ----------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self.telemetry.degraded

    @property
    def degraded_reason(self) -> str | None:
        return self.telemetry.degraded_reason

    @property
    def in_flight(self) -> int:
        """Greenlets busy with a hit, a visit or a batch (each has at most one request),
        and bulk parts waiting for an earlier request."""
        return len(self._pool) + len(self._waiting)

    @property
    def buffered_hits(self) -> int:
        return self._buffer_hits

    @property
    def unsent(self) -> int:
        """Hits handed to the sender but never sent because it was closed."""
        return self._unsent

    def send_hit(self, query: str, on_done: Callback | None = None) -> None:
        """Send one hit as a single POST (also in bulk mode: live hits are due now).
        ``on_done(outcome)`` gets "accepted", "rejected", "failed" or "abandoned"."""
        self._check_open()
        self._pool.spawn(self._run_single, (query,), on_done)

    def deliver_hit(self, query: str) -> VisitOutcome:
        """Send one hit as a single POST in the calling greenlet and wait until it is
        settled (retries included); returns "accepted", "rejected", "failed" or
        "abandoned", like ``send_hit``'s ``on_done``.

        For callers that run their own greenlets, at most ``concurrency`` of them (the
        live loader's hit workers): no greenlet is spawned per hit. Killed mid-request
        (at close), the hit counts abandoned and "abandoned" is returned."""
        self._check_open()
        telemetry = self.telemetry
        telemetry.start_hits(1)
        try:
            kind = self._send_single(query)
        except GreenletExit:  # killed mid-request at close: the hit's fate is unknown
            telemetry.record_outcome("abandoned", 1)
            return "abandoned"
        except Exception as exc:  # a bug of ours: settle the hit, say so
            telemetry.record_outcome("network_errors", 1)
            self._internal_error(exc)
            return "failed"
        if kind == "accepted" or kind == "abandoned":
            return kind
        return "rejected" if kind == "rejected" else "failed"

    def stop_retrying(self) -> None:
        """Closing soon: hits waiting to retry give up now (counted abandoned), requests
        in flight carry on. ``close()`` does it too."""
        self._stop.set()

    def send_visit(self, hits: Sequence[str], on_done: Callback | None = None, *, visitor: str | None = None) -> None:
        """Send a visit's hits, oldest first: in bulk mode buffered into the next batch
        (never split across batches), else one after the other as single POSTs.
        ``on_done(outcome)`` gets one of VISIT_OUTCOMES once the visit is settled;
        in bulk mode the outcome is the batch's ("partial" if it had invalid hits).
        ``visitor``: the visit's visitor id (default: its ``cid``/``_id``); in bulk mode a
        visit whose visitor has an earlier visit in a request in flight leaves once that
        request is answered (in a part of its own; the other visits do not wait)."""
        if self._closed:
            raise SenderClosed("this sender is closed")
        if not hits:
            return
        if not self.bulk:
            self._pool.spawn(self._run_single, hits, on_done)
            return
        visitor = visitor_of(hits[0]) if visitor is None else visitor
        count = len(hits)
        if self._buffer_hits and self._buffer_hits + count > self.batch_size:
            self.flush()
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.append(Visit(hits, on_done, visitor))
        self._buffer_hits += count
        if self._buffer_hits >= self.batch_size:
            self.flush()
        elif time.monotonic() - self._buffer_since >= self.max_batch_delay:
            self.flush()  # what poll() does

    def send_request(
        self,
        visits: Sequence[Sequence[str]],
        on_done: RequestCallback | None = None,
        *,
        resend: bool = False,
        visitors: Sequence[str] | None = None,
    ) -> None:
        """Send exactly these whole visits as one bulk request (for callers that pack
        requests themselves, like the backfill). Waits while ``concurrency`` requests are
        in flight. Visits of a visitor with an earlier visit in flight, and the visits
        after a site-day's first, leave as a second part once that request is answered
        (see ``_spawn_batch``). ``on_done(outcome, tally)`` gets the request's outcome and
        its hits per final outcome, once every part is settled. ``resend``: Matomo may
        hold these visits already (see "Ambiguous answers"). ``visitors``: each visit's
        visitor id, when the caller knows it (default: its first hit's, see ``visitor_of``)."""
        self._check_open()
        if visitors is None:
            batch = [Visit(hits, None, visitor_of(hits[0])) for hits in visits if hits]
        else:
            batch = [Visit(hits, None, visitor) for hits, visitor in zip(visits, visitors, strict=True) if hits]
        if not batch:
            return
        self._spawn_batch(batch, resend=resend, on_request=on_done)

    def ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until ``send_request`` would not block: a
        request slot is free and a waiting part could be held. Lets a caller that must
        stay responsive (heartbeats) wait in short steps."""
        deadline = time.monotonic() + timeout
        self._waiting.wait_available(timeout=timeout)
        self._pool.wait_available(timeout=max(0.0, deadline - time.monotonic()))
        return self._pool.free_count() > 0 and self._waiting.free_count() > 0

    def flush(self) -> None:
        """Send the buffered visits now (a partial batch)."""
        if not self._buffer:
            return
        batch = self._buffer
        self._buffer = []
        self._buffer_hits = 0
        if self.bulk:
            self._spawn_batch(batch)
        else:  # switched to single hits after a secure-only token was detected
            for visit in batch:
                self._pool.spawn(self._run_single, visit.hits, visit.on_done)

    def poll(self) -> None:
        """Flush a batch whose oldest visit waited ``max_batch_delay``; call it from the
        scheduling loop when there is nothing to send (cheap)."""
        if self._buffer and time.monotonic() - self._buffer_since >= self.max_batch_delay:
            self.flush()

    def flush_due(self) -> float:
        """When (``time.monotonic()``) ``poll()`` flushes the buffered visits; inf with
        none buffered. A caller that sleeps until then need not poll more often."""
        return self._buffer_since + self.max_batch_delay if self._buffer else math.inf

    def join(self, timeout: float | None = None) -> bool:
        """Flush and wait until nothing is in flight; returns whether all finished."""
        self.flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._waiting.join(timeout=timeout):
            return False
        return self._pool.join(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self, grace_seconds: float = 5.0, *, flush: bool = True) -> dict[str, int]:
        """Stop accepting work, let in-flight requests finish for up to ``grace_seconds``
        (no new retries: hits waiting to retry are abandoned), then abandon the rest.
        Buffered bulk visits are sent first when ``flush`` (else counted unsent).
        Returns {"abandoned": hits, "unsent": hits} of this close."""
        if self._closed:
            return {"abandoned": 0, "unsent": 0}
        deadline = time.monotonic() + max(0.0, grace_seconds)
        before = self.telemetry.counts()["abandoned"]
        unsent_before = self._unsent
        self._closed = True
        if flush and self._buffer and self._pool.wait_available(timeout=grace_seconds):
            self.flush()
        for visit in self._buffer:
            self._add_unsent(len(visit.hits))
            self._notify(visit.on_done, "abandoned")
        self._buffer = []
        self._buffer_hits = 0
        gevent.sleep(0)  # let greenlets spawned just before close put their request on the wire
        self._stop.set()
        # Parts waiting for an earlier request still go out if it is answered within the
        # grace; after it they never leave (counted unsent).
        if not self._waiting.join(timeout=max(0.0, deadline - time.monotonic())):
            self._abandon.set()
            self._waiting.kill(block=True, timeout=2.0)
        if not self._pool.join(timeout=max(0.0, deadline - time.monotonic())):
            self._abandon.set()
            self._pool.kill(block=True, timeout=2.0)
        self._abandon.set()
        self._pool.close()
        self._transport.close()
        if self._api is not None:
            self._api.close()
        abandoned = self.telemetry.counts()["abandoned"] - before
        unsent = self._unsent - unsent_before
        if abandoned or unsent:
            self.telemetry.event(
                "warning",
                f"Stopped with {abandoned} hit(s) in flight abandoned (Matomo may or may not have recorded them) "
                f"and {unsent} hit(s) not sent",
            )
        return {"abandoned": abandoned, "unsent": unsent}

    # --- single hits -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SenderClosed("this sender is closed")

    def _run_single(self, hits: Sequence[str], on_done: Callback | None) -> None:
        telemetry = self.telemetry
        done = 0
        results: dict[str, int] = {}
        started = False
        try:
            for query in hits:
                if self._stop.is_set():
                    break
                telemetry.start_hits(1)
                started = True
                kind = self._send_single(query)
                started = False
                done += 1
                results[kind] = results.get(kind, 0) + 1
        except GreenletExit:
            if started:  # killed mid-request at close: the hit's fate is unknown
                telemetry.record_outcome("abandoned", 1)
                done += 1
                results["abandoned"] = results.get("abandoned", 0) + 1
        except Exception as exc:  # a bug of ours: settle the hit, say so, never hang a caller
            if started:
                telemetry.record_outcome("network_errors", 1)
                done += 1
                results["network_errors"] = results.get("network_errors", 0) + 1
            self._internal_error(exc)
        if done < len(hits):
            self._add_unsent(len(hits) - done)
        settled = done == len(hits) and "abandoned" not in results
        self._notify(on_done, _settled_outcome(results, done) if settled else "abandoned")

    def _post(self, body: bytes, content_type: str) -> tuple[int, bytes, str | None, Failure | None]:
        """One request: (status, data, Retry-After, None) when an answer came, else
        (0, b"", None, Failure) for a timeout or a network error."""
        if self.min_interval:
            # Reserve the slot before sleeping, so concurrent greenlets never share one.
            now = time.monotonic()
            slot = max(self._next_post_at, now)
            self._next_post_at = slot + self.min_interval
            if slot > now:
                gevent.sleep(slot - now)
        try:
            status, data, retry_after = self._transport.post(body, content_type)
        except TransportTimeout as exc:
            return 0, b"", None, Failure("timeouts", "timeout", str(exc), exc.sent)
        except TransportError as exc:
            return 0, b"", None, Failure("network_errors", "network", str(exc), exc.sent)
        except Exception as exc:  # anything else from the HTTP stack: no answer either
            message = _scrub(f"{type(exc).__name__}: {exc}", self._token)
            return 0, b"", None, Failure("network_errors", "network", message, True)
        return status, data, retry_after, None

    def _send_single(self, query: str) -> HitOutcome:
        """Send one hit until it is settled; returns its telemetry outcome."""
        telemetry = self.telemetry
        if query.startswith("?"):
            query = query[1:]
        body = query.encode("utf-8") + self._single_suffix
        policy = self.retry
        attempt = 1
        # Attempts that went out and got no answer: Matomo may have recorded the hit each
        # time, and a live single hit (no cdt) that is sent again is recorded again.
        maybe_recorded = 0
        while True:
            start = time.perf_counter()
            status, data, retry_after, failure = self._post(body, FORM)
            if failure:
                kind, reason, message = failure.kind, failure.reason, failure.message
                maybe_recorded += failure.sent
            else:
                latency = time.perf_counter() - start
                if status < 300:
                    telemetry.record_accepted(latency)
                    if maybe_recorded:
                        telemetry.record_possibly_duplicated(maybe_recorded)
                    return "accepted"
                kind, reason, message = _failure_kind(status), str(status), ""
                if status in AMBIGUOUS_STATUSES:
                    maybe_recorded += 1  # a proxy's answer: Matomo may have recorded the hit
                if status not in policy.statuses:
                    if telemetry.is_new_failure(kind, status):
                        message = self._status_message(status, data)
                    telemetry.record_outcome(kind, 1, latency=latency, status=status, message=message)
                    return kind
                if telemetry.is_new_failure(kind, status):
                    message = self._status_message(status, data)
            latency = time.perf_counter() - start
            if self._stop.is_set():  # stopping: see _send_batch
                telemetry.record_outcome("abandoned", 1)
                return "abandoned"
            if attempt >= policy.max_attempts:
                telemetry.record_outcome(kind, 1, latency=latency, status=status, message=message)
                return kind
            delay = policy.delay(attempt, retry_after)
            telemetry.record_retry(reason, latency=latency, delay=delay, message=message)
            if self._stop.wait(delay):
                telemetry.record_outcome("abandoned", 1)
                return "abandoned"
            attempt += 1

    def _status_message(self, status: int, data: bytes) -> str:
        text = _excerpt(data, self._token)
        if 300 <= status < 400:
            return "a redirect: check the tracking URL (http vs https, path)"
        return text

    # --- bulk ----------------------------------------------------------------------------

    def _spawn_batch(
        self, batch: list[Visit], *, resend: bool = False, on_request: RequestCallback | None = None
    ) -> None:
        """Put a batch of whole visits on its way, as one request or as parts of it.

        Per-visitor order and the site-day rule make some visits wait for an earlier
        request's answer. They wait in a part of their own (outside the request slots),
        not the whole batch: blocking the batch left Matomo's workers idle whenever a
        returning visitor's earlier visit was still in flight (measured with the
        benchmark's backfill day: 70 of 148 requests had a visitor in one of the 4
        requests before them, and the sender reached 0.78 of the bare sender's hits/s).

        * Visits of a visitor with an earlier visit in a request in flight (or waiting)
          leave once that request is answered.
        * A batch that starts a new site-day (its first recording hit is of a day not
          seen yet) sends its first visit alone and the rest once that is answered; every
          later request waits for that answer too. Only the site-day's first visit goes
          alone, not a whole request, so the pipeline stalls for a one-visit request."""
        in_flight = self._visitors_in_flight
        if resend:
            # A resend stays whole: Matomo refuses a request it holds as a whole when any
            # of its visitors has hits in two seconds, which also protects its one-hit
            # visits (alone, they would be accepted again). Its sender sends it alone.
            waits = [event for event in (in_flight.get(v.visitor) for v in batch) if event is not None]
            if self._leader is not None and not self._leader.is_set():
                waits.append(self._leader)
            self._site_days.add(self._site_day(batch[0].hits[0]))
            request = _Parts(on_request) if on_request is not None else None
            self._start_part(batch, [event for event in waits if not event.is_set()], resend, request)
            if request is not None:
                self._settle_part(request, "accepted", {})
            return
        held: list[Visit] = []
        ready: list[Visit] = []
        deps: list[gevent.event.Event] = []
        if in_flight.keys().isdisjoint(map(_visitor_field, batch)):
            ready = batch  # the usual case, checked at C speed: no visitor of it in flight
        else:
            for visit in batch:
                event = in_flight.get(visit.visitor) if visit.visitor else None
                if event is not None and not event.is_set():
                    held.append(visit)
                    if event not in deps:
                        deps.append(event)
                else:
                    ready.append(visit)
        request = _Parts(on_request) if on_request is not None else None
        leader = self._leader if self._leader is not None and not self._leader.is_set() else None
        first = ready[0] if ready else held[0]
        if _records(first.hits[0]):
            day = self._site_day(first.hits[0])
            if day not in self._site_days:
                if len(self._site_days) > 64:
                    self._site_days.clear()
                self._site_days.add(day)
                leading = [first]
                if ready and ready[0] is first:
                    ready = ready[1:]
                    waits = [leader] if leader is not None else []
                else:  # its visitor is in flight: it waits for that request first
                    held = held[1:]
                    waits = [event for event in (leader, in_flight.get(first.visitor)) if event is not None]
                self._leader = self._start_part(leading, waits, resend, request)
                leader = self._leader
        if ready:
            self._start_part(ready, [leader] if leader is not None else [], resend, request)
        if held:
            self._start_part(held, deps + ([leader] if leader is not None else []), resend, request)
        if request is not None:  # every part is started: the request may now be reported
            self._settle_part(request, "accepted", {})

    def _start_part(
        self, visits: list[Visit], waits: list[gevent.event.Event], resend: bool, request: _Parts | None
    ) -> gevent.event.Event:
        """Register the part's visitors as in flight and start it: at once in a request
        slot (blocking the caller while all are busy), or after ``waits`` are answered."""
        done = gevent.event.Event()
        # Each visitor with an id, mapped to this part (built and merged at C speed).
        visitors = dict.fromkeys(map(_visitor_field, visits), done)
        visitors.pop("", None)
        self._visitors_in_flight.update(visitors)
        if request is not None:
            request.parts += 1
        if waits:
            self._waiting.spawn(self._wait_then_send, visits, done, visitors, waits, resend, request)
        else:
            self._pool.spawn(self._run_batch, visits, done, visitors, resend, request)
        return done

    def _wait_then_send(
        self,
        visits: list[Visit],
        done: gevent.event.Event,
        visitors: Collection[str],
        waits: list[gevent.event.Event],
        resend: bool,
        request: _Parts | None,
    ) -> None:
        """A part waiting for earlier requests' answers; then it takes a request slot.
        Past the grace of a close (or killed then) before that, it never went out:
        counted unsent."""
        handed_over = False
        try:
            for event in waits:
                gevent.wait([event, self._abandon], count=1)
            if not self._abandon.is_set():
                self._pool.spawn(self._run_batch, visits, done, visitors, resend, request)
                handed_over = True
        finally:
            if not handed_over:
                self._add_unsent(sum(len(visit.hits) for visit in visits))
                self._end_part(visits, done, visitors, "abandoned", {}, request)

    def _end_part(
        self,
        visits: list[Visit],
        done: gevent.event.Event,
        visitors: Collection[str],
        outcome: VisitOutcome,
        tally: dict[str, int],
        request: _Parts | None,
    ) -> None:
        in_flight = self._visitors_in_flight
        for visitor in visitors:
            if in_flight.get(visitor) is done:
                del in_flight[visitor]
        done.set()
        for visit in visits:
            if visit.on_done is not None:  # none in a caller's request (send_request)
                self._notify(visit.on_done, outcome)
        if request is not None:
            self._settle_part(request, outcome, tally)

    def _settle_part(self, request: _Parts, outcome: VisitOutcome, tally: dict[str, int]) -> None:
        if request.add(outcome, tally):
            try:
                request.on_done(request.outcome, request.tally)
            except Exception as exc:  # a broken callback must not break the accounting
                self._internal_error(exc)

    def _site_day(self, query: str) -> date:
        epoch = cdt_epoch(query)
        return datetime.fromtimestamp(time.time() if epoch is None else epoch, self._zone).date()

    def _run_batch(
        self,
        batch: list[Visit],
        done: gevent.event.Event,
        visitors: Collection[str],
        resend: bool,
        request: _Parts | None,
    ) -> None:
        telemetry = self.telemetry
        entries = [query for visit in batch for query in visit.hits]
        total = len(entries)
        outcome: VisitOutcome = "abandoned"
        tally: dict[str, int] = {}
        started = False
        try:
            if self._abandon.is_set():
                self._add_unsent(total)  # the close's grace ended before it went out
            else:
                body = b"".join((self._bulk_head, bulk_requests_json(entries), self._bulk_tail))
                telemetry.start_hits(total)
                started = True
                outcome = self._send_batch(body, entries, tally, resend=resend)
                started = False
        except GreenletExit:
            if started:
                # Only the hits not settled yet: a resend of part of the batch (the
                # secure-only resend, the visit log's) has counted the rest already.
                self._record(tally, "abandoned", total - sum(tally.values()))
            else:  # killed at close before it went out
                self._add_unsent(total)
        except Exception as exc:  # a bug of ours: settle the batch, say so, never hang a caller
            if started:
                self._record(tally, "network_errors", total - sum(tally.values()))
            outcome = "failed"
            self._internal_error(exc)
        finally:
            self._end_part(batch, done, visitors, outcome, tally, request)

    def _record(
        self,
        tally: dict[str, int],
        kind: HitOutcome,
        hits: int,
        *,
        latency: float | None = None,
        status: int = 0,
        message: str = "",
    ) -> None:
        """Record a final outcome in the telemetry and in the request's own tally."""
        self.telemetry.record_outcome(kind, hits, latency=latency, status=status, message=message)
        if hits:
            tally[kind] = tally.get(kind, 0) + hits

    def _send_batch(
        self, body: bytes, entries: list[str], tally: dict[str, int], *, resend: bool = False, copies: int = 0
    ) -> VisitOutcome:
        """Send one batch until settled; returns the visits' outcome.

        An answer that does not settle the batch is not guessed at (see the module
        docstring, "Ambiguous answers"): an error answer that counts every entry
        (``tracked + invalid``) was stored; a lost answer (reset or timeout after the
        body went out) makes the resend the judge: refused while Matomo answers a
        harmless probe means already recorded, accepted means it was not (but for the
        visitors a resend cannot tell, counted "possibly duplicated"). ``resend``: the
        batch may have been recorded before (a resumed backfill's in-flight batch)."""
        telemetry = self.telemetry
        total = len(entries)
        policy = self.retry
        attempt = 1
        # Attempts (or an earlier worker's send) that may have been recorded unanswered.
        maybe_recorded = max(copies, int(resend))
        # Visitors a resend cannot judge, judged by Matomo's visit log instead (with the
        # token) when maybe_recorded was ``checked``; not recorded then, so resent.
        checked, judged = 0, frozenset[str]()
        while True:
            if maybe_recorded > checked and self._token:
                checked = maybe_recorded
                found = self._judge_by_visit_log(entries, tally)
                if found is not None:
                    entries, judged = found
                    if not entries:
                        return "accepted"
                    if len(entries) != total:
                        total = len(entries)
                        body = b"".join((self._bulk_head, bulk_requests_json(entries), self._bulk_tail))
            start = time.perf_counter()
            message = ""
            status, data, retry_after, failure = self._post(body, JSON)
            latency = time.perf_counter() - start
            if failure:
                kind, reason, message = failure.kind, failure.reason, failure.message
                maybe_recorded += failure.sent
            else:
                counts = _bulk_counts(data)
                if status < 300 and (counts is None or counts[0]):
                    outcome = self._settle_batch(status, data, entries, latency, counts, tally)
                    if maybe_recorded and outcome != "failed":
                        self._count_possible_duplicates(entries, maybe_recorded, judged, maybe_recorded - checked)
                    return outcome
                # A 2xx "error" is Matomo's failure too, like a 500.
                kind = "server_errors" if status < 300 else _failure_kind(status)
                reason = str(status)
                if status in AMBIGUOUS_STATUSES:
                    maybe_recorded += 1  # a proxy's answer: Matomo may have stored it
                if counts is not None and counts[1] + counts[2] == total and (status == 500 or status < 300):
                    outcome = self._settle_stored_error(status, entries, latency, counts, tally)
                    if maybe_recorded:
                        self._count_possible_duplicates(entries, maybe_recorded, judged, maybe_recorded - checked)
                    return outcome
                if telemetry.is_new_failure(kind, status):
                    message = self._status_message(status, data)
                if maybe_recorded and status == 500 and self._matomo_answers(entries):
                    # The same body sent again is refused as a whole, as it was stored as
                    # a whole. A request an earlier worker sent may have gone out in parts
                    # (see _spawn_batch), so only some of it may be stored: judge each
                    # visitor on its own.
                    groups = _by_visitor(entries) if resend else []
                    if len(groups) > 1:
                        return self._settle_by_visitor(groups, tally, maybe_recorded)
                    return self._settle_already_recorded(total, latency, tally)
                if status not in policy.bulk_statuses:
                    # A 400 (or other refusal) rolled the whole batch back: each hit is rejected.
                    self._record(tally, kind, total, latency=latency, status=status, message=message)
                    return "rejected" if kind == "rejected" else "failed"
            if self._stop.is_set():
                # Stopping: a request that failed now is not resent, and its fate is our
                # doing, not the target's (no network error, no health penalty).
                self._record(tally, "abandoned", total)
                return "abandoned"
            if attempt >= policy.max_attempts:
                self._record(tally, kind, total, latency=latency, status=status, message=message)
                return "rejected" if kind == "rejected" else "failed"
            delay = policy.delay(attempt, retry_after)
            telemetry.record_retry(reason, latency=latency, delay=delay, hits=total, message=message)
            if self._stop.wait(delay):
                self._record(tally, "abandoned", total)
                return "abandoned"
            attempt += 1

    def _settle_batch(
        self,
        status: int,
        data: bytes,
        entries: list[str],
        latency: float,
        counts: tuple[bool, int, int] | None,
        tally: dict[str, int],
    ) -> VisitOutcome:
        """A 2xx answer: count what Matomo says it tracked and refused."""
        telemetry = self.telemetry
        total = len(entries)
        if status == 204 or not data:
            # No counts (e.g. send_image=0 at the top of the body, or a proxy): trust it.
            telemetry.event_once(
                "bulk-no-counts", "warning", f"Bulk answered HTTP {status} without counts; hits counted as accepted"
            )
            self._record(tally, "accepted", total, latency=latency)
            return "accepted"
        if counts is None:
            telemetry.event_once(
                "bulk-unparsable",
                "error",
                f"Bulk answered HTTP {status} with an unexpected body (a proxy, or QueuedTracking without "
                f"queuedtracking=0?): {_excerpt(data, self._token)!r}; its hits are counted unaccounted",
            )
            self._record(tally, "unaccounted", total, latency=latency)
            return "partial"
        return self._count_tracked(entries, latency, counts[1], counts[2], tally)

    def _count_tracked(
        self, entries: list[str], latency: float, tracked: int, invalid: int, tally: dict[str, int]
    ) -> VisitOutcome:
        total = len(entries)
        accepted = max(0, min(tracked, total))
        invalid = max(0, min(invalid, total - accepted))
        unaccounted = total - accepted - invalid
        self._record(tally, "accepted", accepted, latency=latency)
        resent: list[str] = []
        if invalid:
            self._check_secure_only(entries, invalid)
            resent = self._token_hits_to_resend(entries, invalid)
            self._record(tally, "invalid", invalid - len(resent))
        if unaccounted:
            self._record(tally, "unaccounted", unaccounted)
        if resent:
            return self._resend_single(resent, tally, accepted == total - len(resent))
        return "accepted" if accepted == total else "partial"

    def _token_hits_to_resend(self, entries: list[str], invalid: int) -> list[str]:
        """The hits of a bulk batch to send again as single POSTs once the token is known
        to be secure-only (and this sender falls back): its hits that need the token.
        Matomo ignored the token in the JSON body, so it refused every one of them and
        recorded none; a resend cannot duplicate. Only when the invalid count covers all
        of them: otherwise some were recorded after all and we cannot tell which."""
        if not self.secure_only_token or self.bulk or not self.fallback_to_single:
            return []
        needing = [query for query in entries if needs_token(query)]
        return needing if needing and invalid >= len(needing) else []

    def _resend_single(self, queries: list[str], tally: dict[str, int], rest_accepted: bool) -> VisitOutcome:
        """Send the refused token hits of a batch one by one, oldest first as in the batch
        (so each visitor's hits stay in order), counting each hit's own outcome.

        At a stop request no further hit is resent, and killed at close the hit on the
        wire counts abandoned: either way the hits not resent keep Matomo's bulk answer
        (invalid, not recorded). They went out once, so they are not "unsent", and every
        hit of the batch is counted once: ``_run_batch`` abandons only what is unsettled."""
        self.telemetry.event_once(
            "secure-only-resend",
            "warning",
            "Resending the hits that need the token from the bulk requests Matomo refused them in (it ignored the "
            "secure-only token there and recorded none of them) as single POST hits",
        )
        results: dict[str, int] = {}
        sending = False
        try:
            for query in queries:
                if self._stop.is_set():
                    break
                sending = True
                kind = self._send_single(query)
                sending = False
                results[kind] = results.get(kind, 0) + 1
                tally[kind] = tally.get(kind, 0) + 1
        except GreenletExit:
            if sending:  # killed mid-request at close: the hit's fate is unknown
                self._record(tally, "abandoned", 1)
            self._keep_refused(len(queries) - sum(results.values()) - int(sending), tally)
            raise
        not_resent = len(queries) - sum(results.values())
        if not_resent:
            self._keep_refused(not_resent, tally)
        if rest_accepted and set(results) == {"accepted"} and not not_resent:
            return "accepted"
        return "partial"

    def _keep_refused(self, hits: int, tally: dict[str, int]) -> None:
        """Refused token hits of a bulk batch that are not resent (the sender stops)."""
        if hits <= 0:
            return
        self._record(tally, "invalid", hits)
        self.telemetry.event(
            "warning",
            f"Stopping: {hits} hit(s) Matomo refused in bulk (secure-only token) were not resent as single POST "
            "hits; they are counted invalid and were not recorded",
        )

    def _settle_stored_error(
        self, status: int, entries: list[str], latency: float, counts: tuple[bool, int, int], tally: dict[str, int]
    ) -> VisitOutcome:
        """An error answer that accounts for every entry: Matomo processed the whole
        request and only its final commit failed. Measured on Matomo 5.0.2: concurrent
        requests that start a site-day deadlock on the option table, the rest of the
        request is stored in autocommit, and the answer is HTTP 500 with the counts.
        Resending would store it twice, so it is counted as Matomo reports it."""
        self.telemetry.event_once(
            f"bulk-stored-error:{status}",
            "warning",
            f"Bulk request answered HTTP {status} although Matomo processed all its {len(entries)} entries "
            f"(tracked {counts[1]}, invalid {counts[2]}): counted as recorded and not resent, as a resend would "
            "record it twice (Matomo 5.0.2 answers so when requests starting a site-day deadlock; its log says "
            "'There is no active transaction')",
        )
        return self._count_tracked(entries, latency, counts[1], counts[2], tally)

    def _settle_by_visitor(self, groups: list[list[str]], tally: dict[str, int], copies: int) -> VisitOutcome:
        """A resend refused while Matomo works: some of its visitors are recorded, but not
        necessarily all (a request sent in parts, or a Matomo that stored part of it). Each
        visitor's hits are resent on their own and judged alone: refused means recorded,
        accepted means they were not (but for one-second visitors, possibly duplicated)."""
        outcome: VisitOutcome = "accepted"
        for group in groups:
            body = b"".join((self._bulk_head, bulk_requests_json(group), self._bulk_tail))
            result = self._send_batch(body, group, tally, copies=copies)
            if _PART_OUTCOMES.index(result) > _PART_OUTCOMES.index(outcome):
                outcome = result
        return outcome

    def _settle_already_recorded(self, total: int, latency: float, tally: dict[str, int]) -> VisitOutcome:
        """A resend of a batch whose answer was lost is refused while Matomo answers a
        probe: Matomo holds these visits already (their hits are older than the
        visitors' last actions). Counted once, as accepted."""
        telemetry = self.telemetry
        self._record(tally, "accepted", total, latency=latency)
        telemetry.record_already_recorded(total)
        telemetry.event_once(
            "bulk-already-recorded",
            "info",
            "Matomo refused a resent bulk request as older than what it holds while answering other requests: "
            "it had recorded the first attempt, whose answer was lost. Counted once, as accepted.",
        )
        return "accepted"

    def _count_possible_duplicates(
        self, entries: list[str], copies: int, judged: frozenset[str] = frozenset(), judged_copies: int = 0
    ) -> None:
        """A batch that may have been recorded ``copies`` times before was accepted again.
        A resend of visits Matomo holds is refused as a whole when any of its visitors has
        hits in two different seconds (the first is then older than the recorded last), so
        only visitors whose hits here all share one second (or carry no cdt) can have been
        recorded more than once: their hits, once per earlier copy, are counted "possibly
        duplicated". Visitors the visit log showed not recorded (``judged``) count only
        the copies after that look (``judged_copies``)."""
        hits = _hits_a_resend_cannot_judge(entries, judged)
        doubled = hits * copies
        if judged and judged_copies:
            doubled += (_hits_a_resend_cannot_judge(entries) - hits) * judged_copies
        if doubled:
            self.telemetry.record_possibly_duplicated(doubled)

    def _judge_by_visit_log(self, entries: list[str], tally: dict[str, int]) -> tuple[list[str], frozenset[str]] | None:
        """Before a resend: which visitors a resend cannot judge (all their hits in one
        second, e.g. bounces) does Matomo hold already? Asks Matomo's visit log
        (``Live.getLastVisitsDetails``, segment ``visitorId==...``; needs view access) for
        an action of theirs at that second. The recorded ones are counted once, as
        accepted, and left out of the resend. Returns the entries to resend and the
        visitors judged not recorded; None when there is nothing to ask or no answer
        (then the resend is counted as before: possibly duplicated)."""
        seconds = _one_second_visitors(entries)
        site = _IDSITE.search(entries[0]) if entries else None
        if not seconds or site is None or self._api_url is None:
            return None
        days = sorted({datetime.fromtimestamp(second, self._zone).date() for second in seconds.values()})
        form = {
            "module": "API",
            "method": "Live.getLastVisitsDetails",
            "format": "json",
            "idSite": site.group(1),
            "period": "range",
            "date": f"{days[0]},{days[-1]}",
            "segment": ",".join(f"visitorId=={visitor}" for visitor in sorted(seconds)),
            "filter_limit": "-1",
            "token_auth": self._token or "",
        }
        try:
            if self._api is None:
                self._api = make_transport("geventhttpclient", self._api_url, concurrency=1, timeout=self._timeout)
            status, data, _ = self._api.post(urlencode(form).encode("ascii"), FORM)
            visits = loads_answer(data) if status == 200 else None
            recorded = {
                str(visit["visitorId"]).lower()
                for visit in visits or ()
                if seconds.get(str(visit["visitorId"]).lower())
                in {_visit_second(action["timestamp"]) for action in visit["actionDetails"]}
            }
        # StrictJSONError (a ValueError): over 4 MB, NaN or Infinity, deep nesting.
        except (TransportError, ValueError, TypeError, KeyError) as exc:
            self.telemetry.event_once(
                "visit-log-unusable",
                "warning",
                f"Matomo's visit log (Live.getLastVisitsDetails) did not tell which resent bounces it holds "
                f"({_scrub(str(exc) or type(exc).__name__, self._token)}); they are counted as possibly duplicated",
            )
            return None
        if not isinstance(visits, list):
            self.telemetry.event_once(
                "visit-log-unusable",
                "warning",
                f"Matomo's visit log (Live.getLastVisitsDetails) answered HTTP {status} "
                f"{_excerpt(data, self._token)!r}: resent bounces are counted as possibly duplicated (the token "
                "needs view access and the Live plugin)",
            )
            return None
        held = [query for query in entries if visitor_of(query) in recorded]
        if held:
            self._record(tally, "accepted", len(held))
            self.telemetry.record_already_recorded(len(held))
        return [query for query in entries if visitor_of(query) not in recorded], frozenset(set(seconds) - recorded)

    def _matomo_answers(self, entries: list[str]) -> bool:
        """A harmless bulk request (one entry without ``rec``: Matomo answers it as
        tracked and records nothing) for the site of ``entries``: does Matomo work?"""
        match = _IDSITE.search(entries[0]) if entries else None
        if match is None:
            return False
        probe = b"".join((self._bulk_head, b'["?idsite=' + match.group(1).encode() + b'&rec=0"]', self._bulk_tail))
        # The probe records nothing, so a probe without an answer is simply sent again
        # (a lost probe answer must not cost the request one of its attempts).
        for attempt in range(1, PROBE_ATTEMPTS + 1):
            status, data, _, failure = self._post(probe, JSON)
            if not failure:
                counts = _bulk_counts(data)
                return status < 300 and counts is not None and counts[0]
            if attempt == PROBE_ATTEMPTS or self._stop.wait(self.retry.delay(attempt)):
                break
        return False

    def _check_secure_only(self, entries: list[str], invalid: int) -> None:
        """Bulk hits that need a token came back invalid although a token is set: the
        token is most likely secure-only (Matomo 5's default), which Matomo ignores in a
        JSON body, or it lacks write access to the site."""
        if not self._token or self.secure_only_token:
            return
        # Without invalid_indices (super users only, and never for an ignored token) the
        # invalid hits cannot be named: suspect the token only when most of the batch
        # needs it and (nearly) all of those came back invalid. Both together need more
        # than 45 % of the batch invalid, so fewer is decided without reading a hit: the
        # scan below parses every hit's cdt and, run for each request with a stray
        # invalid hit or two, took a third of a bulk sender's CPU.
        if invalid * 20 <= len(entries) * 9:
            return
        needing = sum(1 for query in entries if needs_token(query))
        if needing * 2 <= len(entries) or invalid < 0.9 * needing:
            return
        self.secure_only_token = True
        self.telemetry.secure_only_token = True
        advice = (
            f"Matomo counted {invalid} of {len(entries)} bulk hits invalid although a token is set, and "
            f"{needing} of them carry cip, a location or a cdt older than 24 h, which need the token. The token is "
            "probably 'secure only' (Matomo 5's default for new tokens), which Matomo ignores in bulk requests, "
            "or it lacks write access to the site. Create a token without 'Only allow secure requests'"
        )
        if self.fallback_to_single:
            self.bulk = False
            self.telemetry.mode = "single (bulk fallback)"
            advice += "; until then this target sends single POST hits (slower)."
        else:
            advice += ", or send single POST hits."
        self.telemetry.event("error", advice)

    # --- helpers -----------------------------------------------------------------------

    def _add_unsent(self, hits: int) -> None:
        self._unsent += hits
        self.telemetry.record_unsent(hits)

    def _internal_error(self, exc: Exception) -> None:
        text = _scrub(f"{type(exc).__name__}: {exc}", self._token)
        self.telemetry.event_once(f"internal:{type(exc).__name__}", "error", f"Sender error (a bug): {text}")

    def _notify(self, on_done: Callback | None, outcome: VisitOutcome) -> None:
        if on_done is None:
            return
        try:
            on_done(outcome)
        except Exception as exc:  # a broken callback must not break the accounting
            text = _scrub(f"{type(exc).__name__}: {exc}", self._token)
            self.telemetry.event_once("callback-error", "error", f"on_done callback failed: {text}")


# A request's outcome when its parts ended differently: the worst one.
_PART_OUTCOMES: tuple[VisitOutcome, ...] = ("accepted", "partial", "abandoned", "rejected", "failed")


class _Parts:
    """A request sent in parts (see TargetSender._spawn_batch): its merged tally and
    outcome, reported once every part is settled."""

    __slots__ = ("on_done", "outcome", "parts", "tally")

    def __init__(self, on_done: RequestCallback) -> None:
        self.on_done = on_done
        self.parts = 1  # the sender's own, released once every part is started
        self.outcome: VisitOutcome = "accepted"
        self.tally: dict[str, int] = {}

    def add(self, outcome: VisitOutcome, tally: dict[str, int]) -> bool:
        """Count one settled part; True when it was the last."""
        if _PART_OUTCOMES.index(outcome) > _PART_OUTCOMES.index(self.outcome):
            self.outcome = outcome
        for kind, hits in tally.items():
            self.tally[kind] = self.tally.get(kind, 0) + hits
        self.parts -= 1
        return self.parts == 0


def _records(query: str) -> bool:
    """Whether Matomo records this hit (``rec`` set and not 0): a probe without it
    starts no site-day. As ``"rec=" in query and not re.search(r"(?:^|[?&])rec=0*(?:&|$)",
    query)``, with str.find (the regex scanned the whole hit, ~25 us)."""
    at = query.find("rec=")
    if at < 0:
        return False
    while at >= 0:
        if at == 0 or query[at - 1] in "?&":
            end = query.find("&", at + 4)
            value = query[at + 4 :] if end < 0 else query[at + 4 : end]
            if end < 0 and value.endswith("\n"):  # the regex's $ matches before a final newline
                value = value[:-1]
            if not value.strip("0"):
                return False
        at = query.find("rec=", at + 1)
    return True


def _settled_outcome(results: dict[str, int], hits: int) -> VisitOutcome:
    accepted = results.get("accepted", 0)
    if accepted == hits:
        return "accepted"
    if accepted:
        return "partial"
    return "rejected" if results.get("rejected", 0) == hits else "failed"


def needs_token(query: str) -> bool:
    """Whether a hit carries a parameter that Matomo accepts only with a valid token."""
    if _TOKEN_PARAM.search(query):
        return True
    timestamp = cdt_epoch(query)
    return timestamp is not None and time.time() - timestamp >= CDT_WITHOUT_TOKEN_SECONDS
