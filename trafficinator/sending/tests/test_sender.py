"""The sender and its telemetry against the fake Matomo (in a thread, on 127.0.0.1).

No database: these are plain-Python tests. The pytest process is not monkey-patched; the
sender's geventhttpclient transport uses gevent sockets itself, and the fake server's
OS threads run beside the gevent hub.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import gevent
import gevent.event
import pytest

from targets.fake_matomo import FakeMatomo
from trafficinator.sending import sender as sender_module
from trafficinator.sending.clients import FORM
from trafficinator.sending.sender import (
    RetryPolicy,
    SenderClosed,
    TargetSender,
    _bulk_counts,
    _param,
    _records,
    bulk_requests_json,
    cdt_epoch,
    needs_token,
    parse_retry_after,
    visitor_of,
)
from trafficinator.sending.telemetry import OUTCOMES, LatencyHistogram, RunTelemetry, TargetTelemetry
from trafficinator.strictjson import MAX_ANSWER_BYTES
from trafficinator.testing import wait_until

TOKEN = "c0ffee0123456789abcdef0123456789"
SECURE_TOKEN = "5ecure0123456789abcdef0123456789"
FAST_RETRY = RetryPolicy(max_attempts=5, backoff_base=0.005, backoff_max=0.02)


def hours_ago(hours: float) -> int:
    """A hit time ``hours`` before an anchor that keeps a test's hits (up to three hours
    apart) in one UTC day, the fake's default site zone: Matomo starts a new visit at the
    site's midnight, and the sender sends a site-day's first visit alone, so hits that
    straddle midnight (a run between 00:00 and 03:00 UTC) would change what is asserted.
    The anchor is now, or 12:00 UTC yesterday in the first hours of a day; either way
    within 24 hours, so no hit needs a token for its age."""
    now = datetime.now(UTC)
    anchor = now if now.hour >= 4 else (now - timedelta(days=1)).replace(hour=12, minute=0, second=0)
    return int(anchor.timestamp() - hours * 3600)


def make_hit(visitor: int, step: int, *, site: int = 1, extra: str = "") -> str:
    cid = f"{visitor:016x}"
    return (
        f"idsite={site}&rec=1&apiv=1&cid={cid}&pv_id={visitor % 999999:06d}&rand={visitor}-{step}"
        f"&url=https%3A%2F%2Fshop.example.org%2Fp%2F{step}&action_name=Page%20{step}{extra}"
    )


def make_visits(count: int, hits: int = 3, *, first: int = 0, extra: str = "") -> list[list[str]]:
    return [[make_hit(first + v, step, extra=extra) for step in range(hits)] for v in range(count)]


def assert_settled(telemetry: TargetTelemetry) -> dict:
    """Every hit that went out has exactly one final outcome."""
    counts = telemetry.counts()
    assert counts["sent"] == sum(counts[kind] for kind in OUTCOMES)
    assert telemetry.in_flight() == 0
    return counts


class ConcurrencyProbe:
    """Wraps the fake server's app to measure tracking requests handled at once (the fake
    has no such counter itself)."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.current = 0
        self.max = 0

    def __call__(self, req):
        if not req.path.endswith("matomo.php"):
            return self.app(req)
        with self.lock:
            self.current += 1
            self.max = max(self.max, self.current)
        try:
            return self.app(req)
        finally:
            with self.lock:
                self.current -= 1


@pytest.fixture
def matomo():
    server = FakeMatomo(
        tokens={TOKEN: {"write": [1]}, SECURE_TOKEN: {"write": [1], "secure_only": True}},
    )
    server.probe = ConcurrencyProbe(server.handle)
    server.handle = server.probe  # read when the HTTP server is made, i.e. on start()
    with server:
        # Wait until the accept thread serves: the fake's stop() right after start() can
        # otherwise close the listener under a thread that has not reached accept() yet.
        urllib.request.urlopen(server.url + "_fake/health", timeout=5).close()  # noqa: S310 - loopback
        yield server


@pytest.fixture
def make_sender(matomo):
    senders = []

    def make(token=TOKEN, **kwargs):
        kwargs.setdefault("concurrency", 4)
        kwargs.setdefault("timeout", 2.0)
        kwargs.setdefault("retry", FAST_RETRY)
        sender = TargetSender(kwargs.pop("url", matomo.tracking_url), token, **kwargs)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close(0.5)


# --- single hits ---------------------------------------------------------------------------


def test_single_hit_counters_equal_what_the_server_recorded(matomo, make_sender):
    sender = make_sender(concurrency=4)
    outcomes = []
    for visit in make_visits(20, 3, extra="&cip=10.1.2.3"):  # cip needs the token: sent as a form field
        sender.send_visit(visit, outcomes.append)
    assert sender.join(10)

    counts = assert_settled(sender.telemetry)
    stats = matomo.stats()
    assert counts["accepted"] == stats["recorded"] == 60
    assert counts["requests"] == stats["single_requests"] == 60
    assert outcomes == ["accepted"] * 20
    assert len(matomo.visits(1)) == 20
    assert stats["token_in_url"] == 0
    # Hits of a visit go out one after the other, oldest first.
    for visit in matomo.visits(1):
        assert [hit.params["rand"].split("-")[1] for hit in visit.hits] == ["0", "1", "2"]


def test_retried_single_hits_count_once_and_reach_the_server_once(matomo, make_sender):
    matomo.fail_next(3, 503)
    matomo.fail_next(2, 429)
    matomo.fail_next(2, 502)
    matomo.fail_next(1, 504)
    matomo.reset_next(2)  # connection reset before Matomo processed anything
    sender = make_sender(concurrency=4)
    for visit in make_visits(10, 3):
        sender.send_visit(visit)
    assert sender.join(10)

    counts = assert_settled(sender.telemetry)
    snapshot = sender.telemetry.snapshot()
    assert counts["accepted"] == 30
    assert counts["retries"] == 10
    assert snapshot["retries_by_reason"] == {"503": 3, "429": 2, "502": 2, "504": 1, "network": 2}
    assert counts["requests"] == 40  # every attempt, answered or not
    hits = matomo.hits_for(1)
    assert len(hits) == 30
    assert len({hit.params["rand"] for hit in hits}) == 30  # each hit recorded exactly once
    assert matomo.stats()["duplicates"] == 0


def test_a_400_is_not_retried_and_marks_the_target_degraded_with_a_reason(matomo, make_sender):
    sender = make_sender(token=None, telemetry=TargetTelemetry("t1", health_window=40))
    for visitor in range(25):
        sender.send_hit(make_hit(visitor, 0, extra="&cip=10.1.2.3"))  # cip without a token: 400
    assert sender.join(10)

    counts = assert_settled(sender.telemetry)
    snapshot = sender.telemetry.snapshot()
    assert counts["rejected"] == 25
    assert snapshot["rejected_by_status"] == {"400": 25}
    assert counts["retries"] == 0
    assert matomo.stats()["single_requests"] == 25
    assert sender.degraded
    assert "rejected with HTTP 400" in sender.degraded_reason
    assert "token missing for cip?" in sender.degraded_reason
    events = sender.telemetry.drain_events()
    assert [level for level, message in events if "First failed hit: rejected with HTTP 400" in message] == ["error"]
    assert any(message.startswith("Target t1: Degraded:") for _, message in events)

    for visitor in range(60):  # healthy again
        sender.send_hit(make_hit(100 + visitor, 0))
    assert sender.join(10)
    assert not sender.degraded
    assert any("Recovered" in message for _, message in sender.telemetry.drain_events())


def test_retry_after_is_honoured(matomo, make_sender):
    matomo.fail_next(1, 429, retry_after=1)
    sender = make_sender()
    started = time.monotonic()
    sender.send_hit(make_hit(1, 0))
    assert sender.join(5)
    elapsed = time.monotonic() - started

    assert elapsed >= 1.0  # waited out Retry-After (longer is the machine's load, not ours)
    assert 1.0 <= RetryPolicy().delay(1, "1") <= 1.1  # and no longer than it plus jitter
    assert sender.telemetry.counts()["accepted"] == 1
    assert len(matomo.hits_for(1)) == 1


def test_timeouts_are_retried_and_the_hit_counted_once(matomo, make_sender):
    matomo.hang_next(1, seconds=0.6)
    sender = make_sender(timeout=0.2)
    for visitor in range(5):
        sender.send_hit(make_hit(visitor, 0))
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert counts["accepted"] == 5
    assert counts["timeouts"] == 0
    assert sender.telemetry.snapshot()["retries_by_reason"] == {"timeout": 1}
    # Matomo still processes the slow request after we gave up: timeouts are "at least
    # once" (documented). The sender counts the hit once; the server records it twice.
    wait_until(lambda: matomo.stats()["hits_received"] >= 6, what="the slow request to land", sleep=gevent.sleep)
    assert matomo.stats()["hits_received"] == 6


def test_attempts_are_bounded_and_network_errors_counted(make_sender):
    sender = make_sender(url="http://127.0.0.1:9/matomo.php", retry=RetryPolicy(max_attempts=3, backoff_base=0.005))
    outcomes = []
    sender.send_visit([make_hit(1, 0), make_hit(1, 1)], outcomes.append)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert counts["network_errors"] == 2
    assert counts["retries"] == 4
    assert outcomes == ["failed"]


def test_concurrency_is_never_exceeded(matomo, make_sender):
    matomo.set_latency(0.02)
    sender = make_sender(concurrency=5)
    for visitor in range(60):
        sender.send_hit(make_hit(visitor, 0))
        assert sender.in_flight <= 5
    assert sender.join(10)
    bulk = make_sender(concurrency=3, bulk=True, batch_size=3)
    for visit in make_visits(30, 1, first=100):
        bulk.send_visit(visit)
    assert bulk.join(10)

    assert matomo.probe.max <= 5
    assert matomo.probe.max >= 3  # the limit was actually reached, not avoided
    assert sender.telemetry.counts()["accepted"] == 60
    assert bulk.telemetry.counts()["accepted"] == 30


# --- bulk ------------------------------------------------------------------------------------


def test_bulk_counters_equal_what_the_server_recorded_and_visits_are_never_split(matomo, make_sender):
    sender = make_sender(bulk=True, batch_size=10)
    outcomes = []
    for visit in make_visits(13, 3, extra="&cip=10.1.2.3"):
        sender.send_visit(visit, outcomes.append)
    sender.send_visit([make_hit(500, step) for step in range(12)], outcomes.append)  # bigger than a batch
    assert sender.join(10)

    counts = assert_settled(sender.telemetry)
    stats = matomo.stats()
    assert counts["accepted"] == stats["tracked"] == stats["recorded"] == 51
    # 3 visits (9 hits) per batch of 10: 4 full batches, one with the 13th visit, one for the big
    # visit; the first batch in two parts (its first visit starts the site-day and goes alone).
    assert counts["requests"] == stats["bulk_requests"] == 7
    assert counts["visits_started"] == 0  # visits are the caller's to count
    assert outcomes == ["accepted"] * 14
    assert len(matomo.visits(1)) == 14
    assert stats["token_in_url"] == 0
    for visit in matomo.visits(1):
        steps = [int(hit.params["rand"].split("-")[1]) for hit in visit.hits]
        assert steps == sorted(steps)


def test_bulk_invalid_and_unaccounted_hits_are_counted(matomo, make_sender):
    sender = make_sender(token=None, bulk=True, batch_size=100)
    visits = make_visits(5, 2)
    visits.append([make_hit(10, 0, site=99)])  # unknown site: invalid inside a bulk
    visits.append([make_hit(11, 0, extra="&cip=10.1.2.3")])  # cip without a token: invalid
    # The fake cannot skip hits the way a locked Matomo does; an entry without a query
    # is dropped silently by Matomo (and the fake), which is the same symptom.
    visits.append([""])
    for visit in visits:
        sender.send_visit(visit)
    assert sender.join(10)

    counts = assert_settled(sender.telemetry)
    assert (counts["accepted"], counts["invalid"], counts["unaccounted"]) == (10, 2, 1)
    stats = matomo.stats()
    assert stats["tracked"] == 10 and stats["invalid"] == 2 and stats["dropped_bulk_entries"] == 1
    messages = [message for _, message in sender.telemetry.drain_events()]
    assert any("First failed hit: counted invalid by Matomo" in m for m in messages)
    assert any("First failed hit: skipped by Matomo" in m for m in messages)


def test_bulk_500_resends_the_whole_batch_and_400_rejects_it(matomo, make_sender):
    matomo.fail_next(1, 500, target="bulk")
    sender = make_sender(bulk=True, batch_size=6)
    outcomes = []
    for visit in make_visits(2, 3):
        sender.send_visit(visit, outcomes.append)
    assert sender.join(5)
    assert sender.telemetry.counts()["accepted"] == 6
    assert sender.telemetry.snapshot()["retries_by_reason"] == {"500": 1}
    assert len(matomo.hits_for(1)) == 6

    matomo.fail_next(1, 400, target="bulk")
    for visit in make_visits(2, 3, first=10):
        sender.send_visit(visit, outcomes.append)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert counts["rejected"] == 6
    assert sender.telemetry.snapshot()["rejected_by_status"] == {"400": 6}
    assert counts["retries"] == 1
    assert matomo.stats()["bulk_requests"] == 4  # the first visit of the site-day went alone
    assert outcomes == ["accepted", "accepted", "rejected", "rejected"]


def make_dated_visits(count: int, hits: int = 3, *, first: int = 0, start: float | None = None) -> list[list[str]]:
    """Visits with a cdt per hit, 10 s apart (a bulk request's form): Matomo refuses a
    resend of them once it holds them, as older than the visitor's last action."""
    start = hours_ago(1) if start is None else start
    return [
        [make_hit(first + v, step, extra=f"&cdt={int(start) + v + 10 * step}") for step in range(hits)]
        for v in range(count)
    ]


def start_site_day(sender: TargetSender) -> int:
    """Send one visit of its own first, so the batch a test is about is not split by the
    site-day rule (the first visit of a site-day goes alone); returns its hits."""
    (visit,) = make_dated_visits(1, first=900)
    sender.send_visit(visit)
    assert sender.join(5)
    return len(visit)


def test_a_bulk_500_that_counts_every_entry_was_stored_and_is_not_resent(matomo, make_sender):
    matomo.add_fault(kind="stored_500", target="bulk", count=1)
    sender = make_sender(bulk=True, batch_size=9)
    outcomes = []
    for visit in make_dated_visits(3):
        sender.send_visit(visit, outcomes.append)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    stats = matomo.stats()
    assert stats["faults_fired"] == {"stored_500": 1}
    assert counts["accepted"] == stats["recorded"] == 9  # each hit once
    # The fault fired on the site-day's first visit, sent alone; the rest went after it.
    assert stats["duplicates"] == 0 and stats["bulk_requests"] == 2
    assert counts["retries"] == counts["server_errors"] == counts["possibly_duplicated"] == 0
    assert outcomes == ["accepted"] * 3
    assert any("processed all its 3 entries" in m for _, m in sender.telemetry.drain_events())


def test_a_bulk_resend_refused_as_already_recorded_counts_once_as_accepted(matomo, make_sender):
    # The answer is lost after Matomo stored the batch: the resend is refused as older
    # than what Matomo holds, and a probe shows Matomo works.
    sender = make_sender(bulk=True, batch_size=9)
    before = start_site_day(sender)
    matomo.reset_next(1, processed=True, target="bulk")
    outcomes = []
    for visit in make_dated_visits(3):
        sender.send_visit(visit, outcomes.append)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    stats = matomo.stats()
    assert counts["accepted"] == stats["recorded"] == before + 9
    assert counts["already_recorded"] == 9 and counts["possibly_duplicated"] == 0
    assert counts["server_errors"] == counts["network_errors"] == 0
    assert stats["duplicates"] == 0
    assert outcomes == ["accepted"] * 3
    assert not sender.degraded


def test_a_bulk_resend_after_a_lost_answer_counts_visits_it_cannot_judge_as_possibly_duplicated(matomo, make_sender):
    # Nothing was stored (the reset came first); the resend is accepted. Without a token a
    # one-hit visit would have been accepted again even if Matomo had held it: possibly
    # duplicated.
    sender = make_sender(token=None, bulk=True, batch_size=7)
    before = start_site_day(sender)
    matomo.reset_next(1, target="bulk")
    visits = make_dated_visits(2) + make_dated_visits(1, hits=1, first=50)
    for visit in visits:
        sender.send_visit(visit)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert counts["accepted"] == matomo.stats()["recorded"] == before + 7
    assert counts["possibly_duplicated"] == 1
    assert counts["already_recorded"] == counts["network_errors"] == 0
    assert matomo.stats()["api_requests"] == 0


@pytest.mark.parametrize("stored", [False, True])
def test_with_a_token_resent_bounces_are_settled_by_matomos_visit_log(matomo, make_sender, stored):
    # The answer is lost, before or after Matomo stored the request. Before resending, the
    # sender asks Matomo's visit log (Live.getLastVisitsDetails) whether it holds the
    # bounces (a resend cannot tell): the ones it holds are left out, the others resent.
    sender = make_sender(bulk=True, batch_size=7)
    before = start_site_day(sender)
    matomo.reset_next(1, processed=stored, target="bulk")
    visits = make_dated_visits(2) + make_dated_visits(1, hits=1, first=50)
    for visit in visits:
        sender.send_visit(visit)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    stats = matomo.stats()
    assert counts["accepted"] == stats["recorded"] == before + 7 and stats["duplicates"] == 0
    assert counts["possibly_duplicated"] == 0 and counts["network_errors"] == 0
    assert counts["already_recorded"] == (7 if stored else 0)
    (call,) = [call for call in matomo.api_calls if call["method"] == "Live.getLastVisitsDetails"]
    assert call["params"]["segment"] == f"visitorId=={50:016x}" and call["params"]["filter_limit"] == "-1"


def test_a_close_during_a_resend_after_the_visit_log_counts_every_hit_once(matomo, make_sender, monkeypatch):
    # The visit log shows the bounce recorded (counted accepted), the rest is resent and
    # is on the wire when the close comes: only those 6 hits are abandoned. Before, the
    # whole request's 7 were, on top of the bounce's accepted hit.
    sender = make_sender(bulk=True, batch_size=7, timeout=10)
    before = start_site_day(sender)
    matomo.reset_next(1, processed=True, target="bulk")
    real_post = sender._transport.post
    bulk_posts = []
    on_wire = gevent.event.Event()

    def post(body, content_type):
        bulk_posts.append(body)
        if len(bulk_posts) == 2:  # the resend (the first is the lost one)
            on_wire.set()
            gevent.event.Event().wait()
        return real_post(body, content_type)

    monkeypatch.setattr(sender._transport, "post", post)
    for visit in make_dated_visits(2) + make_dated_visits(1, hits=1, first=50):
        sender.send_visit(visit)
    sender.flush()
    assert on_wire.wait(10)
    assert sender.close(0.2) == {"abandoned": 6, "unsent": 0}

    counts = assert_settled(sender.telemetry)
    assert (counts["sent"], counts["accepted"], counts["already_recorded"]) == (before + 7, before + 1, 1)


class CannedVisitLog:
    """Stands in for the sender's Reporting API transport: one fixed answer."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def post(self, body, content_type):
        return 200, self.body, {}

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "answer",
    [
        b'[{"visitorId": "0000000000000032", "actionDetails": [{"timestamp": Infinity}]}]',
        b'[{"visitorId": "0000000000000032", "actionDetails": [{"timestamp": 1e999}]}]',
        b"[" * 100_000 + b"]" * 100_000,
        b'[{"visitorId": "0000000000000032", "actionDetails": 5}]',
        b'[["visitorId"]]',
    ],
)
def test_a_hostile_visit_log_answer_leaves_resent_bounces_possibly_duplicated_with_a_warning(make_sender, answer):
    # Matomo's visit log decides which resent bounces it holds; an answer nobody can use
    # (infinite timestamps, nesting deeper than the parser's recursion) must not break
    # the sender: the resend is judged as without a visit log.
    sender = make_sender(bulk=True)
    sender._api = CannedVisitLog(answer)
    (visit,) = make_dated_visits(1, hits=1, first=50)
    assert sender._judge_by_visit_log(visit, {}) is None
    (event,) = sender.telemetry.drain_events()
    assert event[0] == "warning" and "possibly duplicated" in event[1]


@pytest.mark.parametrize(
    "holds",
    [True, False],
    ids=["an action at the second, in an answer over 4 MB", "an action at half past the second"],
)
def test_a_visit_log_answer_too_large_or_with_a_fractional_timestamp_is_unusable(make_sender, holds):
    # Before, the visit log was parsed without the 4 MB bound the README promises, and
    # int() truncated a timestamp of 12.5 s to an action at second 12: both counted the
    # bounce as held by Matomo.
    sender = make_sender(bulk=True)
    (visit,) = make_dated_visits(1, hits=1, first=50)
    second = int(cdt_epoch(visit[0]))
    action = {"timestamp": second if holds else second + 0.5}
    answer = json.dumps([{"visitorId": f"{50:016x}", "actionDetails": [action]}]).encode()
    sender._api = CannedVisitLog(answer + b" " * MAX_ANSWER_BYTES if holds else answer)
    assert sender._judge_by_visit_log(visit, {}) is None
    (event,) = sender.telemetry.drain_events()
    assert event[0] == "warning" and "possibly duplicated" in event[1]
    sender._api = CannedVisitLog(
        json.dumps([{"visitorId": f"{50:016x}", "actionDetails": [{"timestamp": second}]}]).encode()
    )
    assert sender._judge_by_visit_log(visit, {}) == ([], frozenset())


@pytest.mark.parametrize(
    "answer",
    [
        b'{"tracked": Infinity, "invalid": 0}',
        b"[" * 100_000 + b"]" * 100_000,
        b"[1]",
        # Before, int() made counts of these: 2.5 -> 2, -3, true -> 1, and an answer over 4 MB.
        b'{"status": "success", "tracked": 2.5, "invalid": 0}',
        b'{"status": "success", "tracked": -3, "invalid": 0}',
        b'{"status": "success", "tracked": true, "invalid": 0}',
        b'{"status": "success", "tracked": 1, "invalid": 0}' + b" " * MAX_ANSWER_BYTES,
    ],
)
def test_a_hostile_bulk_answer_has_no_counts(answer):
    assert _bulk_counts(answer) is None


def test_a_bulk_answer_has_whole_counts():
    assert _bulk_counts(b'{"status": "success", "tracked": 3, "invalid": 1}') == (True, 3, 1)
    assert _bulk_counts(b'{"status": "error", "tracked": "3"}') == (False, 3, 0)


@pytest.mark.parametrize("status", [502, 504])
def test_a_proxy_error_after_matomo_stored_the_request_is_settled_not_resent_blindly(matomo, make_sender, status):
    # nginx before php-fpm answers 502/504 although Matomo got (and stored) the request:
    # the resend is refused as older than what Matomo holds, so it is counted once.
    sender = make_sender(bulk=True, batch_size=9)
    before = start_site_day(sender)
    matomo.add_fault(kind="status", status=status, processed=True, target="bulk", count=1)
    for visit in make_dated_visits(3):
        sender.send_visit(visit)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    stats = matomo.stats()
    assert counts["accepted"] == stats["recorded"] == before + 9 and stats["duplicates"] == 0
    assert counts["already_recorded"] == 9 and counts["possibly_duplicated"] == 0
    assert counts["server_errors"] == 0 and sender.telemetry.snapshot()["retries_by_reason"] == {str(status): 1}


def test_a_proxy_error_on_a_single_hit_counts_it_possibly_duplicated(matomo, make_sender):
    matomo.add_fault(kind="status", status=504, processed=True, target="single", count=1)
    sender = make_sender()
    sender.send_hit(make_hit(1, 0))
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert counts["accepted"] == 1 and counts["possibly_duplicated"] == 1
    assert matomo.stats()["recorded"] == 2  # what the counter warns about


def test_a_bulk_500_that_does_not_count_every_entry_is_resent_and_never_taken_for_recorded(matomo, make_sender):
    # Matomo's bulk handler rolled the request back: the resend is a plain retry, and a
    # request refused every time fails instead of being counted as recorded.
    sender = make_sender(bulk=True, batch_size=3, retry=RetryPolicy(max_attempts=3, backoff_base=0.005))
    (visit,) = make_dated_visits(1)
    sender.send_visit(visit)
    assert sender.join(5)
    later = [make_hit(0, 9, extra=f"&cdt={hours_ago(2)}")]  # older than the visit above
    outcomes = []
    sender.send_visit(later, outcomes.append)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert outcomes == ["failed"]
    assert counts["server_errors"] == 1 and counts["already_recorded"] == 0
    assert matomo.stats()["recorded"] == 3


def test_a_single_hit_resent_after_a_lost_answer_is_counted_possibly_duplicated(matomo, make_sender):
    matomo.reset_next(1, processed=True, target="single")
    sender = make_sender()
    sender.send_hit(make_hit(1, 0))
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert counts["accepted"] == 1 and counts["possibly_duplicated"] == 1
    assert counts["network_errors"] == 0
    assert matomo.stats()["recorded"] == 2  # what the counter warns about: Matomo has it twice


def test_a_refused_connection_is_not_taken_for_a_possible_duplicate(make_sender):
    sender = make_sender(url="http://127.0.0.1:9/matomo.php", retry=RetryPolicy(max_attempts=2, backoff_base=0.005))
    sender.send_hit(make_hit(1, 0))
    assert sender.join(5)
    counts = assert_settled(sender.telemetry)
    assert counts["network_errors"] == 1 and counts["possibly_duplicated"] == 0


def test_pipelined_bulk_keeps_every_visitors_hits_in_order(matomo, make_sender):
    # 12 visitors, 4 visits each, interleaved as a day's stream of returning visitors;
    # requests take random time, so they would be served out of order.
    matomo.set_latency(0.0, jitter=0.03, seed=3)
    sender = make_sender(bulk=True, batch_size=9, concurrency=4)
    start = hours_ago(2)
    visits = []
    for round_ in range(4):
        for visitor in range(12):
            base = start + round_ * 600 + visitor
            visits.append(
                [make_hit(visitor, 10 * round_ + step, extra=f"&cdt={base + 10 * step}") for step in range(3)]
            )
    outcomes = []
    for visit in visits:
        sender.send_visit(visit, outcomes.append)
    assert sender.join(10)

    counts = assert_settled(sender.telemetry)
    stats = matomo.stats()
    assert stats["backdated"] == 0 and stats["duplicates"] == 0  # Matomo never saw a hit out of order
    assert counts["accepted"] == stats["recorded"] == 144
    assert outcomes == ["accepted"] * 48
    assert matomo.probe.max > 1  # requests were in flight together
    for visitor in range(12):
        hits = [hit for hit in matomo.hits_for(1) if hit.visitor_id == f"{visitor:016x}"]
        assert [hit.time for hit in hits] == sorted(hit.time for hit in hits)


def test_a_returning_visitor_in_flight_holds_back_only_its_own_visit(matomo, make_sender):
    # Visitor 1's first visit is in a request Matomo is slow to answer; the next request
    # holds visitor 2's visit and visitor 1's second one. Visitor 2's visit goes at once
    # (a stalled pipeline left Matomo's workers idle), visitor 1's waits for the answer.
    sender = make_sender(bulk=True, timeout=20)
    start_site_day(sender)
    start = hours_ago(2)
    first, second, other = (
        [make_hit(visitor, step, extra=f"&cdt={start + offset + 10 * step}") for step in range(2)]
        for visitor, offset in ((1, 0), (1, 2000), (2, 2001))
    )
    slow = matomo.hang_next(1, seconds=4, target="bulk")
    tallies = []
    sender.send_request([first], lambda *result: tallies.append(result))
    # The two requests go out on two connections; wait until the first is the one Matomo
    # holds, or a busy machine can let the second arrive first and take the slow answer.
    wait_until(lambda: slow.fired == 1, sleep=gevent.sleep)
    sender.send_request([other, second], lambda *result: tallies.append(result))
    wait_until(lambda: any(hit.visitor_id == f"{2:016x}" for hit in matomo.hits_for(1)), sleep=gevent.sleep)
    assert sender.join(20)

    counts = assert_settled(sender.telemetry)
    assert counts["accepted"] == matomo.stats()["recorded"] == 3 + 6
    order = [hit.visitor_id[-1] for hit in matomo.hits_for(1)][3:]  # after start_site_day's visit
    assert order == ["2", "2", "1", "1", "1", "1"]  # visitor 2 did not wait; visitor 1 in order
    assert tallies == [("accepted", {"accepted": 2}), ("accepted", {"accepted": 4})]
    assert matomo.stats()["backdated"] == 0


def test_send_request_reports_its_tally_and_the_first_request_of_a_site_day_goes_alone(make_sender):
    with FakeMatomo(tokens={TOKEN: {"write": [1]}}, capacity=4, service_time_per_request=0.05) as server:
        # Fires only when two requests start one site-day together, as measured on 5.0.2.
        server.add_fault(kind="stored_500", target="bulk", count=None, contended=True)
        server.probe = None
        sender = make_sender(url=server.tracking_url, bulk=True, concurrency=4)
        tallies = []
        start = hours_ago(2)
        for number in range(8):
            sender.send_request(
                make_dated_visits(2, first=10 * number, start=start + number), lambda *result: tallies.append(result)
            )
        assert sender.join(10)
        stats = server.stats()
    assert stats["faults_fired"] == {} and stats["recorded"] == 48
    assert tallies == [("accepted", {"accepted": 6})] * 8


def test_secure_only_token_in_bulk_is_detected_and_the_sender_falls_back_to_single_hits(matomo, make_sender):
    sender = make_sender(token=SECURE_TOKEN, bulk=True, batch_size=6)
    for visit in make_visits(2, 3, extra="&cip=10.1.2.3"):
        sender.send_visit(visit)
    assert sender.join(5)

    assert sender.secure_only_token
    # The batch that revealed it is not lost: Matomo recorded none of its hits (each
    # needs the token), so they are resent as single POSTs, in order.
    counts = assert_settled(sender.telemetry)
    assert counts["invalid"] == 0 and counts["accepted"] == 6
    assert matomo.stats()["recorded"] == matomo.stats()["single_requests"] == 6
    snapshot = sender.telemetry.snapshot()
    assert snapshot["secure_only_token"] is True
    assert snapshot["mode"] == "single (bulk fallback)"
    events = sender.telemetry.drain_events()
    advice = [m for level, m in events if level == "error" and "secure only" in m]
    assert len(advice) == 1
    assert any("Resending the hits that need the token" in m for level, m in events if level == "warning")
    assert "without 'Only allow secure requests'" in advice[0]
    assert SECURE_TOKEN not in advice[0]

    # A secure-only token works as a POST form field: the next visits get through.
    for visit in make_visits(2, 3, first=10, extra="&cip=10.1.2.3"):
        sender.send_visit(visit)
    assert sender.join(5)
    counts = assert_settled(sender.telemetry)
    assert counts["accepted"] == 12 and counts["invalid"] == 0
    assert matomo.stats()["recorded"] == matomo.stats()["single_requests"] == 12


def gate_second_resent_hit(monkeypatch: pytest.MonkeyPatch, sender: TargetSender, at_gate) -> list[bytes]:
    """Wrap the sender's transport: its single POSTs are listed, and the second one calls
    ``at_gate()`` before it goes out. Lets a test act at an exact point of the
    secure-only resend (a bulk request, then its refused token hits one by one)."""
    real_post = sender._transport.post
    singles: list[bytes] = []

    def post(body, content_type):
        if content_type == FORM:
            singles.append(body)
            if len(singles) == 2:
                at_gate()
        return real_post(body, content_type)

    monkeypatch.setattr(sender._transport, "post", post)
    return singles


def test_a_close_during_the_secure_only_resend_counts_every_hit_once(matomo, make_sender, monkeypatch):
    # One visit of 4 token hits: refused in bulk, then resent singly. The first resend is
    # answered, the second stays on the wire until the close kills it, two never go out.
    sender = make_sender(token=SECURE_TOKEN, bulk=True, batch_size=4, timeout=10)
    on_wire = gevent.event.Event()
    singles = gate_second_resent_hit(monkeypatch, sender, lambda: (on_wire.set(), gevent.event.Event().wait()))
    outcomes = []
    sender.send_visit(make_visits(1, 4, extra="&cip=10.1.2.3")[0], outcomes.append)
    sender.flush()
    assert on_wire.wait(10)
    result = sender.close(0.2)

    # Before, the batch's whole 4 hits were counted abandoned on top of what the resend
    # had counted: sent 4, accepted 1 + abandoned 4, in flight -1.
    counts = assert_settled(sender.telemetry)
    assert (counts["sent"], counts["accepted"], counts["abandoned"], counts["invalid"]) == (4, 1, 1, 2)
    assert result == {"abandoned": 1, "unsent": 0}
    assert len(singles) == 2 and matomo.stats()["single_requests"] == matomo.stats()["recorded"] == 1
    assert outcomes == ["abandoned"]


def test_a_stop_request_ends_the_secure_only_resend(matomo, make_sender, monkeypatch):
    # The stop comes as the second refused hit is resent: that one finishes, the last two
    # are not resent and keep the answer Matomo gave them in bulk (invalid).
    sender = make_sender(token=SECURE_TOKEN, bulk=True, batch_size=4)
    singles = gate_second_resent_hit(monkeypatch, sender, sender.stop_retrying)
    outcomes = []
    sender.send_visit(make_visits(1, 4, extra="&cip=10.1.2.3")[0], outcomes.append)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert (counts["sent"], counts["accepted"], counts["invalid"]) == (4, 2, 2)
    assert len(singles) == matomo.stats()["single_requests"] == matomo.stats()["recorded"] == 2
    assert outcomes == ["partial"]
    assert any("not resent" in m for _, m in sender.telemetry.drain_events())


def test_secure_only_detection_without_fallback_keeps_bulk(matomo, make_sender):
    sender = make_sender(token=SECURE_TOKEN, bulk=True, batch_size=3, fallback_to_single=False)
    for visit in make_visits(2, 3, extra="&cip=10.1.2.3"):
        sender.send_visit(visit)
    assert sender.join(5)
    assert sender.secure_only_token
    assert sender.bulk
    assert matomo.stats()["single_requests"] == 0
    assert sender.telemetry.counts()["invalid"] == 6  # nothing resent: the caller decides (backfill fails)


def test_a_valid_token_with_some_invalid_hits_is_not_taken_for_secure_only(matomo, make_sender):
    sender = make_sender(token=TOKEN, bulk=True)
    sender.send_visit([make_hit(1, 0, site=99), make_hit(2, 0, extra="&cip=10.1.2.3")])
    sender.flush()
    sender.send_visit([make_hit(v, 0, site=99 if v < 2 else 1, extra="&cip=10.1.2.3") for v in range(6)])
    assert sender.join(5)
    assert sender.telemetry.counts()["invalid"] == 3
    assert not sender.secure_only_token
    assert sender.telemetry.snapshot()["mode"] == "bulk"


@pytest.mark.parametrize(("invalid", "reads"), [(4, 0), (5, 10)])
def test_a_few_invalid_hits_do_not_make_the_sender_read_each_hit_for_the_token(
    matomo, make_sender, monkeypatch, invalid, reads
):
    # Secure-only needs more than 45 % of a batch invalid (most of it needs the token, and
    # 90 % of that came back invalid): with fewer, no hit is parsed (that scan ran for
    # every request with a stray invalid hit and cost a third of the sender's CPU).
    calls = []
    real = sender_module.needs_token
    monkeypatch.setattr(sender_module, "needs_token", lambda query: calls.append(query) or real(query))
    sender = make_sender(token=TOKEN, bulk=True, batch_size=10)
    sender.send_visit([make_hit(v, 0, site=99 if v < invalid else 1, extra="&cip=10.1.2.3") for v in range(10)])
    assert sender.join(5)
    assert sender.telemetry.counts()["invalid"] == invalid
    assert len(calls) == reads
    assert not sender.secure_only_token


def test_surprises_in_the_http_stack_or_a_callback_still_settle_every_hit(matomo, make_sender):
    sender = make_sender(retry=RetryPolicy(max_attempts=2, backoff_base=0.005))

    def explode(body, content_type):
        raise RuntimeError(f"boom {TOKEN}")

    sender._transport.post = explode
    outcomes = []
    sender.send_visit([make_hit(1, 0), make_hit(1, 1)], outcomes.append)

    def broken_callback(outcome):
        raise ValueError("callback bug")

    sender.send_hit(make_hit(2, 0), broken_callback)
    assert sender.join(5)

    counts = assert_settled(sender.telemetry)
    assert counts["network_errors"] == 3
    assert outcomes == ["failed"]
    messages = [message for _, message in sender.telemetry.drain_events()]
    assert any("RuntimeError: boom ***" in m for m in messages)
    assert any("on_done callback failed: ValueError: callback bug" in m for m in messages)
    assert not any(TOKEN in m for m in messages)


# --- the token -------------------------------------------------------------------------------


def test_the_token_is_never_in_a_url_a_message_or_a_snapshot(matomo, make_sender):
    matomo.fail_next(1, 503, retry_after=0)
    matomo.reset_next(1)
    single = make_sender(token=TOKEN)
    bulk = make_sender(token=TOKEN, bulk=True, batch_size=4)
    lost = make_sender(token=TOKEN, url="http://127.0.0.1:9/matomo.php", retry=RetryPolicy(max_attempts=1))
    for visit in make_visits(4, 2, extra="&cip=10.1.2.3"):
        single.send_visit(visit)
        bulk.send_visit(visit)
        lost.send_visit(visit)
    single.send_hit(make_hit(50, 0, site=99))  # a 400
    for sender in (single, bulk, lost):
        assert sender.join(5)

    assert matomo.stats()["token_in_url"] == 0
    for sender in (single, bulk, lost):
        text = json.dumps([sender.telemetry.snapshot(), sender.telemetry.drain_events(), sender.close(0.1)])
        assert TOKEN not in text
    assert single.telemetry.counts()["accepted"] == 8
    assert bulk.telemetry.counts()["accepted"] == 8
    assert lost.telemetry.counts()["network_errors"] == 8


# --- stopping --------------------------------------------------------------------------------


def test_close_waits_for_in_flight_requests_within_the_grace(matomo, make_sender):
    matomo.set_latency(0.2)
    sender = make_sender(bulk=True, batch_size=100)
    outcomes = []
    for visit in make_visits(3, 2):
        sender.send_visit(visit, outcomes.append)
    sender.send_hit(make_hit(9, 0), outcomes.append)
    result = sender.close(2.0)  # the buffered batch is flushed and both finish

    assert result == {"abandoned": 0, "unsent": 0}
    counts = assert_settled(sender.telemetry)
    assert counts["accepted"] == 7
    assert sorted(outcomes) == ["accepted"] * 4
    # Its request workers end too: none is left waiting for work (or holding a request).
    workers = sender._pool._workers
    wait_until(lambda: all(worker.dead for worker in workers), what="the workers to end", sleep=gevent.sleep)
    assert workers
    with pytest.raises(SenderClosed):
        sender.send_hit(make_hit(10, 0))


def test_close_abandons_what_is_still_in_flight_after_the_grace(matomo, make_sender):
    matomo.hang_next(2, seconds=5)
    sender = make_sender(timeout=10)
    outcomes = []
    sender.send_visit([make_hit(1, 0), make_hit(1, 1), make_hit(1, 2)], outcomes.append)
    sender.send_hit(make_hit(2, 0), outcomes.append)
    wait_until(lambda: matomo.stats()["requests"] == 2, what="both requests to arrive", sleep=gevent.sleep)
    started = time.monotonic()
    result = sender.close(0.3)

    assert time.monotonic() - started < 5  # did not wait for the hanging answers
    assert result == {"abandoned": 2, "unsent": 2}  # two in flight, two hits of the visit never sent
    counts = assert_settled(sender.telemetry)
    assert counts["abandoned"] == 2
    assert counts["unsent"] == 2
    assert outcomes == ["abandoned", "abandoned"]
    assert any("abandoned" in message for _, message in sender.telemetry.drain_events())


def test_close_ends_the_request_workers_within_the_grace(matomo, make_sender):
    """Requests run in long-lived workers: at close, the worker whose request is abandoned
    and an idle one both end, so close takes the grace and not the time it allows for
    killing (2 s), and nothing is left running."""
    sender = make_sender(bulk=True, batch_size=2, concurrency=3, timeout=10)
    sender.send_request([[make_hit(2, 0)]])  # answered: its worker waits for more work
    assert sender.join(10)
    matomo.hang_next(1, seconds=5)
    sender.send_request([[make_hit(1, 0), make_hit(1, 1)]])  # its answer hangs
    wait_until(lambda: matomo.stats()["requests"] == 2, what="both requests to arrive", sleep=gevent.sleep)
    started = time.monotonic()
    result = sender.close(0.2)

    assert time.monotonic() - started < 1.5
    assert result == {"abandoned": 2, "unsent": 0}
    assert sender._pool._workers and all(worker.dead for worker in sender._pool._workers)
    counts = assert_settled(sender.telemetry)
    assert (counts["accepted"], counts["abandoned"], counts["network_errors"]) == (1, 2, 0)


def test_a_stop_mid_request_counts_no_network_error_and_flags_nothing(matomo, make_sender):
    # Bulk requests in flight, answers late; more visits queued behind them. At stop the
    # grace is shorter than the answers: they are abandoned, the rest never goes out.
    # The answers are 3 s away and the grace a fifth of a second: a loaded machine may
    # pause this test between seeing the request arrive and closing, but not for 2.8 s.
    matomo.set_latency(3.0)
    sender = make_sender(bulk=True, batch_size=3, concurrency=2, timeout=5)
    outcomes = []
    for visit in make_dated_visits(2):
        sender.send_visit(visit, outcomes.append)

    def more():
        with pytest.raises(SenderClosed):  # a caller learns that the sender stopped
            for visit in make_dated_visits(3, first=10):
                sender.send_visit(visit, outcomes.append)

    waiting = gevent.spawn(more)
    # Stop once the first request is on the wire. (A fixed sleep here let a loaded machine
    # stop before it was sent.)
    wait_until(lambda: matomo.stats()["requests"] == 1, what="the first request to arrive", sleep=gevent.sleep)
    result = sender.close(0.2, flush=False)

    waiting.get(timeout=2)
    counts = assert_settled(sender.telemetry)
    # The first visit was on the wire (the first of a site-day goes alone); the next ones
    # waited for its answer, and were never sent; the rest was never handed over.
    assert result["abandoned"] == 3
    assert counts["unsent"] + counts["abandoned"] == len(outcomes) * 3 < 15
    assert counts["network_errors"] == counts["timeouts"] == counts["server_errors"] == 0
    assert not sender.degraded and sender.telemetry.snapshot()["errors"] == 0
    assert set(outcomes) == {"abandoned"}


def test_deliver_hit_sends_in_the_calling_greenlet_and_settles_every_hit(matomo, make_sender):
    # The live loader's hit workers: each sends one hit at a time in its own greenlet.
    matomo.fail_next(1, 503)
    sender = make_sender(concurrency=3, timeout=10)
    outcomes = [sender.deliver_hit(make_hit(1, 0)), sender.deliver_hit(make_hit(1, 1))]  # a retried 503, then ok
    matomo.hang_next(1, seconds=5)
    stuck = gevent.spawn(sender.deliver_hit, make_hit(2, 0))  # its answer hangs
    wait_until(lambda: matomo.stats()["requests"] == 4, what="the hanging request", sleep=gevent.sleep)
    sender.stop_retrying()
    stuck.kill(block=True, timeout=2)  # killed mid-request at close: abandoned, never a network error
    sender.close(0)

    assert outcomes == ["accepted", "accepted"]
    assert stuck.value == "abandoned"
    counts = assert_settled(sender.telemetry)
    assert (counts["accepted"], counts["abandoned"], counts["retries"], counts["network_errors"]) == (2, 1, 1, 0)
    assert matomo.stats()["recorded"] == 2
    with pytest.raises(SenderClosed):
        sender.deliver_hit(make_hit(3, 0))


def test_close_abandons_hits_waiting_to_retry(matomo, make_sender):
    matomo.fail_next(1, 503, retry_after=30)
    sender = make_sender(retry=RetryPolicy(retry_after_max=60))
    sender.send_hit(make_hit(1, 0))
    wait_until(lambda: sender.telemetry.counts()["retries"] == 1, what="the retry to be scheduled", sleep=gevent.sleep)
    started = time.monotonic()
    assert sender.close(20.0) == {"abandoned": 1, "unsent": 0}
    assert time.monotonic() - started < 20  # a hit sleeping before its retry does not hold close() for the grace
    assert assert_settled(sender.telemetry)["retries"] == 1


def test_close_without_flush_counts_buffered_visits_unsent(matomo, make_sender):
    sender = make_sender(bulk=True, batch_size=100)
    outcomes = []
    sender.send_visit([make_hit(1, 0), make_hit(1, 1)], outcomes.append)
    assert sender.close(1.0, flush=False) == {"abandoned": 0, "unsent": 2}
    assert outcomes == ["abandoned"]
    assert matomo.stats()["requests"] == 0


def test_poll_flushes_a_batch_that_waited_too_long(matomo, make_sender):
    sender = make_sender(bulk=True, batch_size=100, max_batch_delay=0.5)
    sender.send_visit([make_hit(1, 0)])
    sender.poll()
    assert sender.buffered_hits == 1  # younger than max_batch_delay: kept

    def flushed() -> bool:
        sender.poll()
        return sender.buffered_hits == 0

    wait_until(flushed, what="poll() to flush the batch", sleep=gevent.sleep)
    assert sender.join(5)
    assert matomo.stats()["bulk_requests"] == 1


# --- helpers and telemetry -------------------------------------------------------------------


def test_retry_policy_backs_off_exponentially_with_jitter_and_honours_retry_after():
    policy = RetryPolicy(backoff_base=1.0, backoff_max=8.0, retry_after_max=60)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 8.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
    assert 5.0 <= policy.delay(1, "5") <= 5.5
    assert 60 <= policy.delay(1, "3600") <= 66  # capped
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_needs_token_spots_cip_location_and_old_cdt():
    now = int(time.time())
    assert needs_token("idsite=1&rec=1&cip=10.0.0.1")
    assert needs_token("?country=se&idsite=1")
    assert needs_token(f"idsite=1&cdt={now - 2 * 86400}")
    assert needs_token("idsite=1&cdt=2020-01-01%2010%3A00%3A00")
    assert not needs_token(f"idsite=1&cdt={now - 3600}")
    assert not needs_token("idsite=1&rec=1&url=https%3A%2F%2Fx.org%2F%3Fcip%3D1")


def test_bulk_requests_are_valid_json_whatever_the_hits_contain():
    entries = ["idsite=1&rec=1", "?idsite=1&url=a", 'idsite=1&action_name=say "hi"\\', "idsite=1&x=\t\u00e9"]
    assert json.loads(bulk_requests_json(entries)) == [
        "?idsite=1&rec=1",
        "?idsite=1&url=a",
        '?idsite=1&action_name=say "hi"\\',
        "?idsite=1&x=\t\u00e9",
    ]
    assert bulk_requests_json(["a=1", "?b=2"]) == b'["?a=1","?b=2"]'


def test_latency_percentiles_come_from_a_fixed_size_histogram():
    histogram = LatencyHistogram()
    samples = [i / 10_000 for i in range(1, 10_001)]  # 0.1 ms .. 1 s, uniform
    for sample in samples:
        histogram.add(sample)
    assert len(histogram.counts) == LatencyHistogram.BUCKETS
    for q in (0.5, 0.95, 0.99):
        assert histogram.percentile(q) == pytest.approx(q, rel=0.05)
    assert histogram.summary_ms()["max"] == 1000.0
    assert LatencyHistogram().percentile(0.5) is None


def test_telemetry_rates_minute_samples_and_snapshots():
    now = [1000.0]
    telemetry = TargetTelemetry("t", clock=lambda: now[0])
    for second in range(90):
        now[0] = 1000.0 + second
        telemetry.start_hits(10)
        telemetry.record_outcome("accepted", 9, latency=0.01)
        telemetry.record_outcome("rejected", 1, latency=0.02, status=400)
    now[0] = 1090.0
    snapshot = telemetry.snapshot()
    assert snapshot["hits_per_second"] == 10.0
    assert snapshot["accepted_per_second"] == 9.0
    assert snapshot["errors"] == 90 and snapshot["accepted"] == 810 and snapshot["in_flight"] == 0
    assert json.loads(json.dumps(snapshot)) == snapshot
    sample = telemetry.minute_sample()
    assert sample["hits"] == 900 and sample["accepted"] == 810 and sample["errors"] == 90
    assert sample["p95_ms"] == pytest.approx(20, rel=0.05)
    assert telemetry.minute_sample() == {"hits": 0, "accepted": 0, "errors": 0, "p95_ms": None}


def test_accepted_hits_and_waits_held_for_folding_read_the_same_as_recorded_one_by_one():
    """record_accepted holds a healthy window's accepted hits and folds them in later; every
    reader sees what record_outcome hit by hit gives: counts, latency, rates, the minute,
    health (degraded and recovered at the same hits) and events. record_wait likewise."""
    now = [1000.0]
    held, plain = (TargetTelemetry("t", health_window=40, clock=lambda: now[0]) for _ in range(2))
    states = []
    for step in range(700):
        now[0] = 1000.0 + step // 10  # ten hits a second
        latency = 0.001 * (1 + step % 37)
        failing = 300 <= step < 340  # a burst of 500s: degraded, then recovered
        wait = 0.003 * step - 0.1  # early, on time, and over a second late
        held.record_wait(wait)
        plain.record_waits(((wait, 1),))
        for telemetry in (held, plain):
            telemetry.start_hits(1)
            if failing:
                telemetry.record_outcome("server_errors", 1, latency=latency, status=500)
            elif telemetry is held:
                telemetry.record_accepted(latency)
            else:
                telemetry.record_outcome("accepted", 1, latency=latency)
        if step % 23 == 0 or 290 <= step < 420:
            states.append((held.degraded, plain.degraded))
            assert held.counts() == plain.counts()
        if step == 500:
            assert held.minute_sample() == plain.minute_sample()
    assert all(a == b for a, b in states) and (True, True) in states and states[-1] == (False, False)
    snapshot = held.snapshot()
    assert snapshot == plain.snapshot()
    assert snapshot["late_hits"] > 0 and snapshot["wait_ms"]["p50"] > 0
    assert held.mean_latency() == plain.mean_latency()
    assert held.minute_sample() == plain.minute_sample()
    assert held.drain_events() == plain.drain_events()


def test_events_are_bounded_and_only_the_first_error_of_each_kind_is_logged():
    telemetry = TargetTelemetry("t")
    for _ in range(1000):
        telemetry.start_hits(1)
        telemetry.record_outcome("server_errors", 1, latency=0.01, status=500)
        telemetry.record_retry("503", latency=0.01, delay=1.0)
    events = telemetry.drain_events()
    assert sum("First failed hit: server errors (HTTP 500)" in m for _, m in events) == 1
    assert sum("Backing off" in m for _, m in events) == 1  # at most one a minute
    assert sum("Degraded" in m for _, m in events) == 1
    assert len(events) <= 10
    for index in range(500):
        telemetry.event("info", f"event {index}")
    assert len(telemetry.drain_events()) == 200
    assert telemetry.events_dropped == 300


def test_run_telemetry_sums_targets_in_the_run_stats_shape():
    run = RunTelemetry(["1", "2"])
    for key, accepted in (("1", 5), ("2", 7)):
        run[key].start_hits(accepted + 1)
        run[key].record_outcome("accepted", accepted, latency=0.01)
        run[key].record_outcome("rejected", 1, latency=0.05, status=400)
    stats = run.snapshot()
    assert set(stats) == {"totals", "targets"}
    assert stats["totals"]["accepted"] == 12
    assert stats["totals"]["rejected_by_status"] == {"400": 2}
    assert stats["totals"]["latency_ms"]["count"] == 4
    assert stats["targets"]["2"]["accepted"] == 7
    assert json.loads(json.dumps(stats)) == stats
    assert run.minute_sample()["hits"] == 14
    assert {key for key, _, _ in run.drain_events()} == {"1", "2"}


def test_min_interval_spaces_every_http_request_including_parts(matomo, make_sender):
    """A requests-per-second limit holds per HTTP request: a caller's request that leaves
    in parts, or is retried, never lets two requests out closer than ``min_interval``."""
    sender = make_sender(bulk=True, concurrency=4, min_interval=0.1)
    began = time.monotonic()
    for number in range(4):
        sender.send_request(make_dated_visits(2, first=10 * number))
    assert sender.join(10)
    took = time.monotonic() - began
    requests = matomo.stats()["bulk_requests"]
    assert requests >= 4 and took >= (requests - 1) * 0.1


QUERIES = [
    "",
    "rec=1",
    "?rec=1",
    "?idsite=1&rec=1&cdt=2024-01-02%2003:04:05",
    "?idsite=1&rec=0",
    "?idsite=1&rec=",
    "?idsite=1&rec=000&cdt=1",
    "?idsite=1&rec=0\n",
    "?idsite=1&rec=0\nx",
    "?idsite=1&rec=01",
    "?idsite=1&xrec=0&rec=1",
    "?idsite=1&rec=1&rec=0",
    "?idsite=1&rec=0&rec=1",
    "?idsite=1&prec=1",
    "?idsite=1&xcdt=5&cdt=7&cdt=9",
    "cdt=3&rec=1",
    "?cdt=&rec=1",
    "?idsite=1&urlref=cdt%3D4&rec=true",
    "?idsite=1&rec=rec=0",
    "&cdt=cdt=1",
]


@pytest.mark.parametrize("query", QUERIES)
def test_the_hit_scanners_read_parameters_as_the_regexes_they_replaced(query):
    recorded = "rec=" in query and not re.search(r"(?:^|[?&])rec=0*(?:&|$)", query)
    assert _records(query) == recorded
    match = re.search(r"(?:^|[?&])cdt=([^&]*)", query)
    assert _param(query, "cdt=") == (match.group(1) if match else None)


def _old_cdt_epoch(query):
    from urllib.parse import unquote_plus

    match = re.search(r"(?:^|[?&])cdt=([^&]*)", query)
    if not match:
        return None
    value = unquote_plus(match.group(1)).strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("T", " ", 1))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@pytest.mark.parametrize(
    "cdt",
    [
        "1700000000",
        " 1700000000.5 ",
        "1e9",
        "2024-01-02 03:04:05",
        "2024-01-02%2003:04:05",
        "2024-01-02+03:04:05",
        "2024-01-02T03:04:05%2B01:00",
        "2024-01-02",
        "12:00",
        "nan",
        "garbage",
        "",
        "%20",
    ],
)
def test_cdt_epoch_reads_what_it_always_read(cdt):
    query = f"?idsite=1&rec=1&cdt={cdt}&x=1"
    assert cdt_epoch(query) == _old_cdt_epoch(query) or (cdt == "nan" and cdt_epoch(query) != cdt_epoch(query))


@pytest.mark.parametrize(
    "query",
    [
        "?idsite=1&rec=1&cid=0123456789ABCDEF&_id=fedcba9876543210",
        "idsite=1&_id=fedcba9876543210&cid=0123456789abcdef",  # _id first: it counts
        "cid=0123456789abcdef&x=1",  # at the very start, no "?"
        "?xcid=0123456789abcdef&cid=1111111111111111",  # not a parameter of its own
        "?cid=0123456789abcdeg&_id=2222222222222222",  # not 16 hex digits: the next one
        "?cid=0123456789abcdef0&x=1",  # 17 digits: the first 16, as the regex reads
        "?cid=0123456789abc&x=1",
        "?idsite=1&rec=1",
        "?a=cid%3D0123456789abcdef",
        "",
    ],
)
def test_visitor_of_reads_what_the_regex_read(query):
    match = re.search(r"(?:^|[?&])(?:cid|_id)=([0-9A-Fa-f]{16})", query)
    assert visitor_of(query) == (match.group(1).lower() if match else "")


@pytest.mark.parametrize(
    "answer",
    [
        b'{"status":"success","tracked":100,"invalid":0}',
        b'{"status":"error","tracked":3,"invalid":2}',
        b'{"status":"success","tracked":999999999999999,"invalid":0}',
        b'{"status":"success","tracked":1000000000000000,"invalid":0}',  # not a count
        b'{"status":"success","tracked":01,"invalid":0}',  # not JSON
        b'{"status":"success","tracked":-1,"invalid":0}',
        b'{"status":"other","tracked":1,"invalid":0}',
        b'{"status":"success","tracked":1,"invalid":0,"invalid_indices":[]}',
        b'{"status":"error","tracked":4,"invalid":1,"invalid_indices":[]}',
        b'{"status":"success","tracked":3,"invalid":2,"invalid_indices":[0,4]}',
        b'{"status":"success","tracked":1,"invalid":0,"invalid_indices":[],"x":1}',
        b'{"status":"success","tracked":1,"invalid":0,"invalid_indices":[]]}',  # not JSON
        b'\xef\xbb\xbf{"status":"success","tracked":1,"invalid":0}',
        b'{"status": "success", "tracked": 1, "invalid": 0}\n',
    ],
)
def test_bulk_counts_of_a_plain_answer_are_what_the_parser_reads(answer):
    from trafficinator.strictjson import StrictJSONError, count_or_none, loads_answer

    try:
        parsed = loads_answer(answer)
    except StrictJSONError:
        parsed = None
    counts = None
    if isinstance(parsed, dict):
        tracked, invalid = count_or_none(parsed.get("tracked")), count_or_none(parsed.get("invalid", 0))
        if tracked is not None and invalid is not None:
            counts = (parsed.get("status") == "success", tracked, invalid)
    assert _bulk_counts(answer) == counts
