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
429/408/502/503/504, network errors and timeouts (and 500 in bulk, where Matomo rolled
the whole batch back) are retried with exponential backoff and jitter, honouring
``Retry-After``. A retried hit counts once. The token travels only in POST bodies and
never appears in a URL, a log message or an exception.

Delivery is at least once for timeouts and resets after the server processed a request:
Matomo may have recorded a hit whose answer we never got, and the retry records it again.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_plus

import gevent
import gevent.event
import gevent.pool
from gevent import GreenletExit

from .clients import FORM, JSON, TransportError, TransportTimeout, make_transport
from .telemetry import TargetTelemetry

# Parameters that need a token (see matomo-tracking.md); cdt only when older than 24 h.
_TOKEN_PARAM = re.compile(r"(?:^|[?&])(?:cip|country|region|city|lat|long)=[^&]")
_CDT_PARAM = re.compile(r"(?:^|[?&])cdt=([^&]*)")
CDT_WITHOUT_TOKEN_SECONDS = 86400
# Characters a JSON string cannot hold as they are.
_JSON_UNSAFE = re.compile(r'[\x00-\x1f"\\]')

# What a visit's on_done receives.
VISIT_OUTCOMES = ("accepted", "partial", "rejected", "failed", "abandoned")

Callback = Callable[[str], object]


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
    # Bulk: Matomo rolled the whole batch back on a 500, so resending it is safe.
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


def _failure_kind(status: int) -> str:
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

    Encoded hits are URL-encoded, so joining them is valid JSON; one regex pass over the
    joined text checks that (json.dumps of the list costs ~25 times more, measured)."""
    entries = [query if query.startswith("?") else "?" + query for query in entries]
    if _JSON_UNSAFE.search("".join(entries)):
        return json.dumps(entries).encode("utf-8")
    return ('["' + '","'.join(entries) + '"]').encode("utf-8")


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
      single POST hits, where such a token works.
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
    ) -> None:
        if concurrency < 1 or batch_size < 1 or timeout <= 0:
            raise ValueError("concurrency and batch_size must be >= 1 and timeout > 0")
        self.concurrency = concurrency
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
        self._pool = gevent.pool.Pool(concurrency)
        self._stop = gevent.event.Event()
        self._closed = False
        # Appended to every single hit: send_image=0 asks for a bodiless 204.
        suffix = "&send_image=0"
        if self._token:
            suffix += "&token_auth=" + quote(self._token, safe="")
        self._single_suffix = suffix.encode("ascii")
        self._bulk_head = b'{"requests":'
        tail = (',"token_auth":' + json.dumps(self._token) if self._token else "") + "}"
        self._bulk_tail = tail.encode("utf-8")
        self._buffer: list[tuple[Sequence[str], Callback | None]] = []
        self._buffer_hits = 0
        self._buffer_since = 0.0
        self._unsent = 0
        self.secure_only_token = False

    # --- public API ----------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self.telemetry.degraded

    @property
    def degraded_reason(self) -> str | None:
        return self.telemetry.degraded_reason

    @property
    def in_flight(self) -> int:
        """Greenlets busy with a hit, a visit or a batch (each has at most one request)."""
        return len(self._pool)

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

    def send_visit(self, hits: Sequence[str], on_done: Callback | None = None) -> None:
        """Send a visit's hits, oldest first: in bulk mode buffered into the next batch
        (never split across batches), else one after the other as single POSTs.
        ``on_done(outcome)`` gets one of VISIT_OUTCOMES once the visit is settled;
        in bulk mode the outcome is the batch's ("partial" if it had invalid hits)."""
        self._check_open()
        if not hits:
            return
        if not self.bulk:
            self._pool.spawn(self._run_single, hits, on_done)
            return
        if self._buffer_hits and self._buffer_hits + len(hits) > self.batch_size:
            self.flush()
        if not self._buffer:
            self._buffer_since = time.monotonic()
        self._buffer.append((hits, on_done))
        self._buffer_hits += len(hits)
        if self._buffer_hits >= self.batch_size:
            self.flush()
        else:
            self.poll()

    def flush(self) -> None:
        """Send the buffered visits now (a partial batch)."""
        if not self._buffer:
            return
        batch = self._buffer
        self._buffer = []
        self._buffer_hits = 0
        if self.bulk:
            self._pool.spawn(self._run_batch, batch)
        else:  # switched to single hits after a secure-only token was detected
            for hits, on_done in batch:
                self._pool.spawn(self._run_single, hits, on_done)

    def poll(self) -> None:
        """Flush a batch whose oldest visit waited ``max_batch_delay``; call it from the
        scheduling loop when there is nothing to send (cheap)."""
        if self._buffer and time.monotonic() - self._buffer_since >= self.max_batch_delay:
            self.flush()

    def join(self, timeout: float | None = None) -> bool:
        """Flush and wait until nothing is in flight; returns whether all finished."""
        self.flush()
        return self._pool.join(timeout=timeout)

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
        for hits, on_done in self._buffer:
            self._add_unsent(len(hits))
            self._notify(on_done, "abandoned")
        self._buffer = []
        self._buffer_hits = 0
        gevent.sleep(0)  # let greenlets spawned just before close put their request on the wire
        self._stop.set()
        if not self._pool.join(timeout=max(0.0, deadline - time.monotonic())):
            self._pool.kill(block=True, timeout=2.0)
        self._transport.close()
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

    def _post(self, body: bytes, content_type: str) -> tuple[int, bytes, str | None, tuple[str, str, str] | None]:
        """One request: (status, data, Retry-After, None) when an answer came, else
        (0, b"", None, (kind, retry reason, message)) for a timeout or a network error."""
        try:
            status, data, retry_after = self._transport.post(body, content_type)
        except TransportTimeout as exc:
            return 0, b"", None, ("timeouts", "timeout", str(exc))
        except TransportError as exc:
            return 0, b"", None, ("network_errors", "network", str(exc))
        except Exception as exc:  # anything else from the HTTP stack: no answer either
            return 0, b"", None, ("network_errors", "network", _scrub(f"{type(exc).__name__}: {exc}", self._token))
        return status, data, retry_after, None

    def _send_single(self, query: str) -> str:
        """Send one hit until it is settled; returns its telemetry outcome."""
        telemetry = self.telemetry
        if query.startswith("?"):
            query = query[1:]
        body = query.encode("utf-8") + self._single_suffix
        policy = self.retry
        attempt = 1
        while True:
            start = time.perf_counter()
            status, data, retry_after, failure = self._post(body, FORM)
            if failure:
                kind, reason, message = failure
            else:
                latency = time.perf_counter() - start
                if status < 300:
                    telemetry.record_outcome("accepted", 1, latency=latency)
                    return "accepted"
                kind, reason, message = _failure_kind(status), str(status), ""
                if status not in policy.statuses:
                    if telemetry.is_new_failure(kind, status):
                        message = self._status_message(status, data)
                    telemetry.record_outcome(kind, 1, latency=latency, status=status, message=message)
                    return kind
                if telemetry.is_new_failure(kind, status):
                    message = self._status_message(status, data)
            latency = time.perf_counter() - start
            if attempt >= policy.max_attempts or self._stop.is_set():
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

    def _run_batch(self, batch: list[tuple[Sequence[str], Callback | None]]) -> None:
        telemetry = self.telemetry
        entries = [query for hits, _ in batch for query in hits]
        total = len(entries)
        outcome = "abandoned"
        started = False
        try:
            body = b"".join((self._bulk_head, bulk_requests_json(entries), self._bulk_tail))
            telemetry.start_hits(total)
            started = True
            outcome = self._send_batch(body, entries)
            started = False
        except GreenletExit:
            if started:
                telemetry.record_outcome("abandoned", total)
        except Exception as exc:  # a bug of ours: settle the batch, say so, never hang a caller
            if started:
                telemetry.record_outcome("network_errors", total)
            outcome = "failed"
            self._internal_error(exc)
        for _, on_done in batch:
            self._notify(on_done, outcome)

    def _send_batch(self, body: bytes, entries: list[str]) -> str:
        """Send one batch until settled; returns the visits' outcome."""
        telemetry = self.telemetry
        total = len(entries)
        policy = self.retry
        attempt = 1
        while True:
            start = time.perf_counter()
            message = ""
            status, data, retry_after, failure = self._post(body, JSON)
            if failure:
                kind, reason, message = failure
            else:
                latency = time.perf_counter() - start
                if status < 300:
                    return self._settle_batch(status, data, entries, latency)
                kind, reason = _failure_kind(status), str(status)
                if telemetry.is_new_failure(kind, status):
                    message = self._status_message(status, data)
                if status not in policy.bulk_statuses:
                    # A 400 (or other refusal) rolled the whole batch back: each hit is rejected.
                    telemetry.record_outcome(kind, total, latency=latency, status=status, message=message)
                    return "rejected" if kind == "rejected" else "failed"
            latency = time.perf_counter() - start
            if attempt >= policy.max_attempts or self._stop.is_set():
                telemetry.record_outcome(kind, total, latency=latency, status=status, message=message)
                return "rejected" if kind == "rejected" else "failed"
            delay = policy.delay(attempt, retry_after)
            telemetry.record_retry(reason, latency=latency, delay=delay, hits=total, message=message)
            if self._stop.wait(delay):
                telemetry.record_outcome("abandoned", total)
                return "abandoned"
            attempt += 1

    def _settle_batch(self, status: int, data: bytes, entries: list[str], latency: float) -> str:
        telemetry = self.telemetry
        total = len(entries)
        if status == 204 or not data:
            # No counts (e.g. send_image=0 at the top of the body, or a proxy): trust it.
            telemetry.event_once(
                "bulk-no-counts", "warning", f"Bulk answered HTTP {status} without counts; hits counted as accepted"
            )
            telemetry.record_outcome("accepted", total, latency=latency)
            return "accepted"
        try:
            answer = json.loads(data)
            tracked = int(answer["tracked"])
            invalid = int(answer.get("invalid", 0))
            ok = answer.get("status") == "success"
        except (ValueError, TypeError, KeyError, AttributeError):
            telemetry.event_once(
                "bulk-unparsable",
                "error",
                f"Bulk answered HTTP {status} with an unexpected body (a proxy, or QueuedTracking without "
                f"queuedtracking=0?): {_excerpt(data, self._token)!r}; its hits are counted unaccounted",
            )
            telemetry.record_outcome("unaccounted", total, latency=latency)
            return "partial"
        if not ok:
            # A 2xx "error" still rolled the batch back in Matomo: count it like a 500.
            telemetry.record_outcome(
                "server_errors", total, latency=latency, status=status, message=_excerpt(data, self._token)
            )
            return "failed"
        accepted = max(0, min(tracked, total))
        invalid = max(0, min(invalid, total - accepted))
        unaccounted = total - accepted - invalid
        telemetry.record_outcome("accepted", accepted, latency=latency)
        if invalid:
            telemetry.record_outcome("invalid", invalid)
            self._check_secure_only(entries, invalid)
        if unaccounted:
            telemetry.record_outcome("unaccounted", unaccounted)
        return "accepted" if accepted == total else "partial"

    def _check_secure_only(self, entries: list[str], invalid: int) -> None:
        """Bulk hits that need a token came back invalid although a token is set: the
        token is most likely secure-only (Matomo 5's default), which Matomo ignores in a
        JSON body, or it lacks write access to the site."""
        if not self._token or self.secure_only_token:
            return
        # Without invalid_indices (super users only, and never for an ignored token) the
        # invalid hits cannot be named: suspect the token only when most of the batch
        # needs it and (nearly) all of those came back invalid.
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

    def _notify(self, on_done: Callback | None, outcome: str) -> None:
        if on_done is None:
            return
        try:
            on_done(outcome)
        except Exception as exc:  # a broken callback must not break the accounting
            text = _scrub(f"{type(exc).__name__}: {exc}", self._token)
            self.telemetry.event_once("callback-error", "error", f"on_done callback failed: {text}")


def _settled_outcome(results: dict[str, int], hits: int) -> str:
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
    match = _CDT_PARAM.search(query)
    if not match:
        return False
    value = unquote_plus(match.group(1)).strip()
    try:
        timestamp = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("T", " ", 1))
        except ValueError:
            return False
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        timestamp = parsed.timestamp()
    return time.time() - timestamp >= CDT_WITHOUT_TOKEN_SECONDS
