"""Sending a backfill to the local fake Matomo (site 1, Europe/Stockholm): what lands,
where, in which order, and what happens after interruptions and failures."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime
from itertools import pairwise
from pathlib import Path

import pytest
from django.conf import settings

from backfill import runner, tasks
from backfill.foreground import run_in_foreground
from backfill.models import DEFAULT_REQUESTS_IN_FLIGHT, BackfillDay, BackfillLog, BackfillPlan
from backfill.planning import request_hits
from backfill.runner import iter_requests, run_day
from backfill.tests.conftest import (
    STOCKHOLM,
    days_ago,
    expected_keys,
    hit_keys,
    kill_worker_mid_plan,
    make_backfill_target,
)
from targets.fake_matomo import FakeMatomo, Token
from trafficinator.sending.sender import visitor_of
from trafficinator.testing import confirmed_plan, subprocess_env
from trafficinator.traffic import Profile, day_visits

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")
CDT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")

pytestmark = pytest.mark.usefixtures("fast_retries")  # every test here: retries in milliseconds


def send(plan: BackfillPlan) -> BackfillPlan:
    plan.start(enqueue=False)
    run_in_foreground(plan)
    plan.refresh_from_db()
    return plan


def test_requests_are_whole_visits_of_a_quarter_batch_packed_the_same_way_from_any_checkpoint():
    assert [request_hits(size) for size in (40, 250, 400, 1000)] == [40, 100, 100, 250]

    def stream(skip=0):
        return day_visits(Profile(visits_per_day=300), day=date(2025, 3, 3), count=300, seed=5, skip=skip)

    requests = list(iter_requests(stream(), 100))
    assert [entry for r in requests for visit in r.visits for entry in visit] == [
        entry for visit in stream() for entry in runner.encode_visit(visit, cdt="datetime", prefix="?")
    ]  # every hit once, in start order, visits whole
    assert all(r.hits <= 100 or r.count == 1 for r in requests)
    # Each visit's visitor, as the sender would read it from the visit's first hit.
    assert all(r.visitors == [visitor_of(visit[0]) for visit in r.visits] for r in requests)
    assert len({visitor for r in requests for visitor in r.visitors}) > 100
    assert all(r.hits + len(nxt.visits[0]) > 100 for r, nxt in pairwise(requests))
    # A resumed worker starts at a checkpoint (a request boundary) and packs the same requests.
    skip = sum(r.count for r in requests[:3])
    again = list(iter_requests(stream(skip), 100))
    assert [r.visits for r in again] == [r.visits for r in requests[3:]]


@pytest.mark.django_db(transaction=True)
def test_every_day_gets_exactly_its_planned_visits_dated_inside_the_site_day(fake_matomo, shop, small_preset):
    plan = send(confirmed_plan([shop], small_preset, start_date=days_ago(3), end_date=days_ago(1), batch_size=250))
    assert plan.status == BackfillPlan.Status.COMPLETED
    planned = {day.day: day.planned_visits for day in plan.days.all()}
    assert len(planned) == 3 and all(count > 50 for count in planned.values())

    recorded = Counter(datetime.fromtimestamp(visit.start, STOCKHOLM).date() for visit in fake_matomo.visits(1))
    assert recorded == planned  # exact: no visit merged, split, lost or added
    for hit in fake_matomo.hits_for(1):
        cdt = hit.params["cdt"]
        assert CDT.match(cdt), cdt  # UTC "YYYY-MM-DD HH:MM:SS"
        local = datetime.strptime(cdt, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).astimezone(STOCKHOLM)
        assert local.date() in planned
    stats = fake_matomo.stats()
    assert stats["bulk_requests"] >= 6 and stats["single_requests"] == 0  # batches of 250 as 2 requests
    assert stats["token_in_url"] == 0 and stats["backdated"] == 0
    assert hit_keys(fake_matomo.hits_for(1)) == expected_keys(plan)  # every hit once
    progress = plan.progress()
    assert progress.hits_sent == progress.hits_accepted == stats["recorded"]
    assert progress.visits_done == sum(planned.values())


@pytest.mark.django_db(transaction=True)
def test_500s_that_stored_the_request_and_lost_answers_still_store_each_visit_exactly_once(
    fake_matomo, shop, small_preset
):
    # Every day's first request is stored and answered 500 (Matomo 5.0.2's deadlock);
    # some answers are lost after Matomo stored the request.
    fake_matomo.add_fault(kind="stored_500", target="bulk", count=None)
    # At most 4 resets: a request (5 attempts) can lose every answer only by chance otherwise,
    # which made this test fail now and then.
    fake_matomo.add_fault(kind="reset", processed=True, target="bulk", count=4, probability=0.2, seed=7)
    plan = send(confirmed_plan([shop], small_preset, start_date=days_ago(3), end_date=days_ago(1), batch_size=120))

    assert plan.status == BackfillPlan.Status.COMPLETED
    stats = fake_matomo.stats()
    assert stats["faults_fired"]["stored_500"] == 3 and stats["faults_fired"]["reset"] >= 2
    assert hit_keys(fake_matomo.hits_for(1)) == expected_keys(plan)  # each hit exactly once
    progress = plan.progress()
    assert progress.hits_sent == progress.hits_accepted == stats["recorded"]  # counters = what Matomo holds
    assert progress.hits_failed == 0
    assert plan.logs.filter(message__contains="processed all its").exists()


@pytest.mark.django_db(transaction=True)
def test_the_same_seed_sends_the_same_hits(fake_matomo, shop, small_preset):
    first = send(confirmed_plan([shop], small_preset, seed=42, batch_size=80))
    with FakeMatomo(sites=[{"id": 1, "timezone": "Europe/Stockholm"}], tokens=fake_matomo.tokens) as other:
        other_target = make_backfill_target(other, name="copy")
        second = send(confirmed_plan([other_target], small_preset, seed=42, batch_size=80))
        # Sorted: requests in flight together are recorded in whichever order they finish.
        mine = sorted(sorted((k, v) for k, v in h.params.items() if k != "ec_id") for h in fake_matomo.hits_for(1))
        theirs = sorted(sorted((k, v) for k, v in h.params.items() if k != "ec_id") for h in other.hits_for(1))
    assert first.status == second.status == BackfillPlan.Status.COMPLETED
    assert len(mine) > 100 and mine == theirs  # order ids differ per plan (unique per site forever)
    assert hit_keys(fake_matomo.hits_for(1)) == expected_keys(first)


@pytest.mark.parametrize("batch_size", [40, 400])
@pytest.mark.django_db(transaction=True)
def test_a_resumed_day_resends_its_window_and_matomo_refuses_what_it_holds(fake_matomo, shop, small_preset, batch_size):
    """The worker died after Matomo recorded its last requests but before the checkpoint."""
    plan = send(confirmed_plan([shop], small_preset, last_days=1, batch_size=batch_size, visits_per_day=300))
    day = plan.days.get()
    requests = list(iter_requests(runner.day_stream(plan, day, skip=0), request_hits(batch_size)))
    last = requests[-3:]  # three requests were in flight
    visits, hits = sum(r.count for r in last), sum(r.hits for r in last)
    before = fake_matomo.stats()["recorded"]
    # Back to the state the dead worker left: checkpoint before them, marked in flight.
    BackfillDay.objects.filter(pk=day.pk).update(
        status=BackfillDay.Status.RUNNING,
        visits_done=day.planned_visits - visits,
        in_flight_visits=visits,
        hits_sent=day.hits_sent - hits,
        hits_accepted=day.hits_accepted - hits,
        heartbeat_at=datetime(2000, 1, 1, tzinfo=UTC),
        worker="gone:1",
    )
    BackfillPlan.objects.filter(pk=plan.pk).update(status=BackfillPlan.Status.RUNNING, invalidation="")

    result = run_day(day.pk)

    assert result.outcome == "done"
    day.refresh_from_db()
    stats = fake_matomo.stats()
    assert day.visits_done == day.planned_visits and day.in_flight_visits == 0
    assert day.hits_accepted == day.hits_sent == before  # refused visits count as recorded earlier
    assert day.hits_resent == hits
    # Visitors whose hits share one second (a resend cannot judge them) are looked up in
    # Matomo's visit log with the token: nothing is recorded twice.
    doubled = stats["recorded"] - before
    assert doubled == 0
    assert hit_keys(fake_matomo.hits_for(1)) - expected_keys(plan) == Counter()
    assert stats["api_calls_by_method"].get("Live.getLastVisitsDetails", 0) >= 1
    assert set(expected_keys(plan)) <= set(hit_keys(fake_matomo.hits_for(1)))
    assert plan.logs.filter(message__contains="in flight when the previous worker stopped").exists()
    assert plan.logs.filter(message__contains=f"{doubled:,} possibly duplicated").exists()


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_resumes_with_no_visit_lost_and_at_most_one_batch_repeated(fake_matomo, shop, small_preset):
    batch_size = 30
    plan = confirmed_plan([shop], small_preset, last_days=2, visits_per_day=400, batch_size=batch_size)
    worker = kill_worker_mid_plan(fake_matomo, plan)
    assert fake_matomo.stats()["recorded"] < sum(expected_keys(plan).values())  # it died mid-plan
    held = plan.days.get(status=BackfillDay.Status.RUNNING)  # ... holding a day, a batch marked in flight
    assert 0 < held.visits_done < held.planned_visits and held.in_flight_visits > 0
    assert held.worker.endswith(f":{worker.pid}")

    # The killed worker's process is gone: this process takes its day over at once.
    ended = run_in_foreground(plan)
    plan.refresh_from_db()

    assert ended is None and plan.status == BackfillPlan.Status.COMPLETED
    recorded, expected = hit_keys(fake_matomo.hits_for(1)), expected_keys(plan)
    assert not expected - recorded  # no visit lost
    repeated = recorded - expected
    # At most the window (the requests in flight plus about one batch) is repeated.
    assert sum(repeated.values()) <= (DEFAULT_REQUESTS_IN_FLIGHT + 2) * batch_size
    assert set(repeated) <= set(expected)  # and nothing foreign
    assert plan.logs.filter(message__contains="in flight when the previous worker stopped").exists()


@pytest.mark.django_db(transaction=True)
def test_a_secure_only_token_fails_the_plan_with_advice(fake_matomo, small_preset):
    fake_matomo.add_token(Token(value="secure-token", superuser=True, secure_only=True))
    target = make_backfill_target(fake_matomo, token_auth="secure-token")
    plan = send(confirmed_plan([target], small_preset, batch_size=50))
    assert plan.status == BackfillPlan.Status.FAILED
    assert "secure only" in plan.end_reason and "Only allow secure requests" in plan.end_reason
    stats = fake_matomo.stats()
    assert stats["recorded"] == 0 and stats["hits_received"] == 2  # two harmless probes, no visit
    assert plan.progress().hits_sent == 0
    assert plan.invalidation == BackfillPlan.Invalidation.NOT_NEEDED


@pytest.mark.django_db(transaction=True)
def test_a_secure_only_token_found_mid_day_fails_the_plan_too(fake_matomo, small_preset, monkeypatch):
    """The probe is not the only guard: the sender's own detection stops a day whose hits
    come back invalid (e.g. the token was changed to a secure-only one meanwhile)."""
    monkeypatch.setattr(runner.DaySender, "_preflight", lambda self: None)
    fake_matomo.add_token(Token(value="secure-token", superuser=True, secure_only=True))
    target = make_backfill_target(fake_matomo, token_auth="secure-token")
    plan = send(confirmed_plan([target], small_preset, batch_size=50))
    assert plan.status == BackfillPlan.Status.FAILED and "secure only" in plan.end_reason
    progress = plan.progress()
    assert progress.hits_invalid > 0 and progress.hits_accepted == 0 and progress.days_done == 0


@pytest.mark.django_db(transaction=True)
def test_days_older_than_matomos_raw_data_retention_fail_before_anything_is_sent(small_preset):
    with FakeMatomo(
        sites=[{"id": 1, "timezone": "Europe/Stockholm"}],
        tokens={"tok": {"superuser": True}},
        raw_data_retention_days=3,
    ) as matomo:
        target = make_backfill_target(matomo, token_auth="tok")
        plan = send(confirmed_plan([target], small_preset, start_date=days_ago(6), end_date=days_ago(5)))
        assert matomo.stats()["recorded"] == 0
    assert plan.status == BackfillPlan.Status.FAILED
    assert "Delete old raw data" in plan.end_reason and str(days_ago(6)) in plan.end_reason


@pytest.mark.django_db(transaction=True)
def test_reports_of_the_sent_dates_are_invalidated_and_the_user_told_to_archive(fake_matomo, shop, small_preset):
    plan = send(confirmed_plan([shop], small_preset, start_date=days_ago(4), end_date=days_ago(2)))
    calls = fake_matomo.invalidations
    assert len(calls) == 1
    assert calls[0]["site_ids"] == [1]
    assert calls[0]["dates"] == [days_ago(4).isoformat(), days_ago(3).isoformat(), days_ago(2).isoformat()]
    assert plan.invalidation == BackfillPlan.Invalidation.DONE and plan.invalidated_at
    assert "core:archive" in plan.invalidation_message
    assert plan.logs.filter(message__contains="invalidated for site 1").exists()
    assert all("token_auth" not in str(call["params"]) for call in fake_matomo.api_calls)


@pytest.mark.django_db(transaction=True)
def test_a_token_without_admin_access_gets_manual_invalidation_steps(fake_matomo, small_preset):
    fake_matomo.add_token(Token(value="writer", write=[1]))
    target = make_backfill_target(fake_matomo, token_auth="writer")
    plan = send(confirmed_plan([target], small_preset, last_days=1))
    assert plan.status == BackfillPlan.Status.COMPLETED
    assert plan.invalidation == BackfillPlan.Invalidation.FAILED
    assert "core:invalidate-report-data" in plan.invalidation_message
    assert f"--dates={days_ago(1)},{days_ago(1)}" in plan.invalidation_message


@pytest.mark.django_db(transaction=True)
def test_overloaded_matomo_is_retried_without_losing_or_repeating_hits(fake_matomo, shop, small_preset):
    fake_matomo.fail_next(2, 503)
    fake_matomo.fail_next(1, 429, retry_after=0)
    fake_matomo.reset_next(1)
    plan = send(confirmed_plan([shop], small_preset, last_days=1, batch_size=50))
    assert plan.status == BackfillPlan.Status.COMPLETED, plan.end_reason
    assert hit_keys(fake_matomo.hits_for(1)) == expected_keys(plan)
    assert plan.progress().hits_failed == 0


@pytest.mark.django_db(transaction=True)
def test_a_target_that_keeps_failing_fails_the_plan_at_a_batch_boundary(fake_matomo, shop, small_preset):
    plan = confirmed_plan([shop], small_preset, last_days=2, batch_size=50)
    fake_matomo.fail_next(100, 503)
    plan = send(plan)
    assert plan.status == BackfillPlan.Status.FAILED
    assert "server errors (HTTP 503)" in plan.end_reason and "5 attempt(s)" in plan.end_reason
    first = plan.days.order_by("day").first()
    assert first.status == BackfillDay.Status.FAILED and first.visits_done == 0 and first.message == plan.end_reason
    assert plan.days.filter(status=BackfillDay.Status.STOPPED).count() == 1
    assert plan.logs.filter(level=BackfillLog.Level.ERROR, message__startswith="Failed:").exists()


@pytest.mark.django_db(transaction=True)
def test_the_requests_per_second_limit_is_kept(fake_matomo, shop, small_preset):
    plan = confirmed_plan([shop], small_preset, last_days=1, batch_size=20, max_requests_per_second=25)
    began = time.monotonic()
    plan = send(plan)
    took = time.monotonic() - began
    requests = fake_matomo.stats()["bulk_requests"]
    assert plan.status == BackfillPlan.Status.COMPLETED and requests >= 5
    assert took >= (requests - 1) / 25


@pytest.mark.django_db(transaction=True)
def test_workers_chain_days_in_date_order_and_lanes_keep_their_own_visitors(
    fake_matomo, shop, small_preset, monkeypatch
):
    queue: list[int] = []
    monkeypatch.setattr(tasks, "enqueue_day", queue.append)
    plan = confirmed_plan([shop], small_preset, start_date=days_ago(4), end_date=days_ago(1), parallel_days=2)
    assert plan.start()  # on_commit runs at once: no transaction around this test
    assert sorted(queue) == sorted(
        plan.days.filter(lane__in=[0, 1], day__in=[days_ago(4), days_ago(3)]).values_list("pk", flat=True)
    )
    order = []
    while queue:
        day_id = queue.pop(0)
        order.append(BackfillDay.objects.get(pk=day_id).day)
        assert tasks.run_backfill_day(day_id)
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.COMPLETED and len(order) == 4
    assert fake_matomo.stats()["backdated"] == 0
    by_lane = {lane: set() for lane in (0, 1)}
    for day in plan.days.all():
        by_lane[day.lane] |= {v.cid for v in runner.day_stream(plan, day, skip=0)}
    assert not by_lane[0] & by_lane[1]  # a returning visitor never appears in two lanes
    assert len(fake_matomo.invalidations) == 1


@pytest.mark.django_db(transaction=True)
def test_a_day_task_pauses_at_its_time_slice_and_its_continuation_finishes_it(
    fake_matomo, shop, small_preset, monkeypatch
):
    queue: list[int] = []
    monkeypatch.setattr(tasks, "enqueue_day", queue.append)
    monkeypatch.setattr(tasks, "SLICE_SECONDS", 1e-9)
    plan = confirmed_plan([shop], small_preset, last_days=1, batch_size=40)
    plan.start()
    day_id = queue.pop()
    assert "paused at visit 0" in tasks.run_backfill_day(day_id)  # the slice is over before the first batch
    assert queue == [day_id]  # it enqueued its own continuation
    monkeypatch.setattr(tasks, "SLICE_SECONDS", 120.0)
    tasks.run_backfill_day(queue.pop())
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.COMPLETED
    assert hit_keys(fake_matomo.hits_for(1)) == expected_keys(plan)


@pytest.mark.django_db(transaction=True)
def test_cancelling_stops_a_worker_at_its_next_checkpoint(fake_matomo, shop, small_preset):
    plan = confirmed_plan([shop], small_preset, last_days=1, batch_size=20)
    plan.start(enqueue=False)
    day = plan.days.get()
    calls = []

    def cancel_after_two_batches(*_):
        calls.append(1)
        if len(calls) == 2:
            BackfillPlan.objects.get(pk=plan.pk).cancel(reason="Cancelled by the test.")

    result = run_day(day.pk, on_progress=cancel_after_two_batches)
    assert result.outcome == "lost" and "cancelled" in result.message
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.CANCELLED
    # The probe and two batches, each in at most three parts (the site-day's first visit goes
    # alone; a returning visitor still in flight follows in a part of its own).
    assert fake_matomo.stats()["bulk_requests"] <= 1 + 2 * 3


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_cluster_sends_the_days_and_completes_the_plan(fake_matomo, shop, small_preset):
    """`manage.py qcluster` (default queue) picks the day tasks up, chains the lanes'
    days and completes the plan, on whichever database the suite uses."""
    plan = confirmed_plan([shop], small_preset, last_days=4, parallel_days=2, batch_size=50)
    cluster = subprocess.Popen(
        [sys.executable, MANAGE, "qcluster"],
        env=subprocess_env(Q_WORKERS="2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert plan.start()  # enqueues on commit: at once, this test is not inside a transaction
        deadline = time.monotonic() + 45
        while BackfillPlan.objects.get(pk=plan.pk).status == BackfillPlan.Status.RUNNING:
            assert time.monotonic() < deadline, "the workers did not finish the plan"
            time.sleep(0.2)
    finally:
        cluster.terminate()
        cluster.wait(timeout=20)
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.COMPLETED, plan.end_reason
    assert hit_keys(fake_matomo.hits_for(1)) == expected_keys(plan)
    assert fake_matomo.stats()["backdated"] == 0
    assert {day.worker.rpartition(":")[0] for day in plan.days.all()} != {""}
    assert len(fake_matomo.invalidations) == 1 and plan.invalidation == BackfillPlan.Invalidation.DONE


@pytest.mark.django_db(transaction=True)
def test_a_plan_keeps_its_requests_in_flight_and_no_more(small_preset):
    site = {"id": 1, "timezone": "Europe/Stockholm"}
    with FakeMatomo(sites=[site], capacity=8, service_time_per_request=0.1) as fake:
        fake.add_token(Token(value="tok", superuser=True))
        concurrent = {"now": 0, "max": 0}
        lock = threading.Lock()
        original = fake.recorder.commit

        def counting_commit(outcomes, *, bulk):  # runs inside a "PHP worker" of capacity mode
            with lock:
                concurrent["now"] += 1
                concurrent["max"] = max(concurrent["max"], concurrent["now"])
            try:
                time.sleep(0.01)
                return original(outcomes, bulk=bulk)
            finally:
                with lock:
                    concurrent["now"] -= 1

        fake.recorder.commit = counting_commit  # observes, then commits
        target = make_backfill_target(fake, token_auth="tok")
        plan = send(confirmed_plan([target], small_preset, last_days=1, batch_size=40, requests_in_flight=3))
    assert plan.status == BackfillPlan.Status.COMPLETED and plan.requests_in_flight == 3
    assert 2 <= concurrent["max"] <= 3  # pipelined, never beyond the plan's figure
