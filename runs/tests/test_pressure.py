"""The live loader under pressure: fenced claims, a locked database, overload, idling.

Loaders that must be frozen or must outlive a lock run as real ``run_loader`` processes
(monkey-patched, as in production) on the suite's database; the rest run in-process."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time
from datetime import timedelta
from itertools import islice
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

import runs.models
from runs import loader as loader_module
from runs.loader import (
    LiveLoader,
    TargetRuntime,
    bulk_visit_cap,
    execute_loader,
    single_visit_cap,
    target_streams,
)
from runs.models import Run, RunLog
from trafficinator.sending.telemetry import RunTelemetry, TargetTelemetry
from trafficinator.testing import (
    finish_loader,
    make_fast_preset,
    make_local_target,
    make_target,
    start_loader,
    wait_until,
)

LOADER_WAIT = 90.0  # seconds: a loader process starts slowly on a loaded machine


# --- 3. fenced loaders ---------------------------------------------------------------------


def just_reported(run: Run) -> bool:
    """The run's loader wrote its report less than half a second ago (reports come every
    FLUSH_EVERY seconds), as this test process sees it: a test starved on a loaded machine
    waits for the next one instead."""
    heartbeat = run.shards.get().heartbeat_at
    return heartbeat is not None and timezone.now() - heartbeat < timedelta(seconds=0.5)


@pytest.mark.django_db(transaction=True)
def test_a_frozen_loader_that_was_superseded_sends_nothing_more_and_writes_nothing(
    fake_matomo, fast_preset, monkeypatch
):
    """SIGSTOP a loader until its run shows lost, resume the run (a second loader claims
    it), SIGCONT the first: it must not send on, nor touch the run; what the server saw
    is what the run counts plus what the frozen loader said it could not report."""
    monkeypatch.setattr(runs.models, "HEARTBEAT_STALE_AFTER", timedelta(seconds=3))
    stale = {"RUN_HEARTBEAT_STALE_SECONDS": "3"}  # the loaders' lease: 1 s
    target = make_local_target(fake_matomo)
    run = Run.objects.create_run(preset=fast_preset, targets=[target], duration_seconds=300)
    first = start_loader(run, run.claim(pid=0, host="test"), **stale)
    second = None
    try:
        wait_until(
            lambda: Run.objects.get(pk=run.pk).stats.get("totals", {}).get("sent", 0) > 40 and just_reported(run),
            timeout=LOADER_WAIT,
            what="a report",
        )
        # Frozen right after a report, so not in the middle of the next one: a loader frozen
        # inside its report's transaction would hold SQLite's write lock for good.
        os.kill(first.pid, signal.SIGSTOP)
        wait_until(lambda: Run.objects.get(pk=run.pk).is_lost(), timeout=LOADER_WAIT, what="the run to show lost")
        run.refresh_from_db()
        assert run.resume()
        token = run.claim(pid=0, host="test")
        assert token is not None and run.shards.get().claim_epoch == 2
        second = start_loader(run, token, **stale)
        recorded = fake_matomo.stats()["recorded"]
        wait_until(
            lambda: fake_matomo.stats()["recorded"] > recorded + 40,
            timeout=LOADER_WAIT,
            what="the second loader's hits",
        )
        continued = time.time()
        os.kill(first.pid, signal.SIGCONT)
        first_err = finish_loader(first, timeout=30, check=False)
        assert first.returncode != 0
        assert "claimed by another loader" in first_err
        unreported = int(re.search(r"(\d+) hit\(s\) sent after its last report", first_err).group(1))

        # Both loaders' visitors are known in advance (stream key = claim epoch).
        streams = {key: target_streams(run, list(run.run_targets.all()), start=0, key=key)[0] for key in ("1", "2")}
        first_visitors = {visit.cid for visit in islice(streams["1"].visits, 20_000)}
        late = [hit for hit in fake_matomo.hits_for(1) if hit.time > continued and hit.visitor_id in first_visitors]
        # At most what was already handed to its sender when it froze; no new hit.
        assert len(late) <= int(fast_preset.concurrency)

        run.request_stop("Stopped by the test.")
        finish_loader(second, timeout=30, check=False)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    totals = run.stats["totals"]
    server = fake_matomo.stats()["recorded"]
    assert totals["accepted"] + unreported <= server <= totals["accepted"] + unreported + totals["abandoned"]
    messages = list(run.logs.values_list("message", flat=True))
    assert sum(message.startswith("Loader started") for message in messages) == 2
    assert sum(message.startswith("Loader finished") for message in messages) == 1  # the second's only


@pytest.mark.django_db(transaction=True)
def test_a_loader_writes_nothing_once_its_claim_is_superseded(fast_preset):
    run = Run.objects.create_run(preset=fast_preset, targets=[make_target()])
    old = run.claim(pid=1, host="a")
    shard = run.claimed_shard  # what the old loader writes through
    run.shards.update(status=Run.Status.QUEUED, claim_token=None)  # what resume() does
    new = run.claim(pid=2, host="b")
    assert shard.check_claim(old) == (False, False) and shard.check_claim(new) == (True, False)
    assert not shard.report(old, {"totals": {"sent": 99}}, [("info", "from the old loader", None)])
    assert not shard.finish_claimed(old, Run.Status.COMPLETED, "old", {"totals": {}})
    assert not shard.fail_claimed(old, "old")
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING and run.stats == {}
    assert not run.logs.filter(message="from the old loader").exists()
    assert shard.report(new, {"totals": {"sent": 1}}, [("info", "from the new loader", None)])
    assert shard.finish_claimed(new, Run.Status.COMPLETED, "done", {"totals": {"sent": 1}})


@pytest.mark.django_db(transaction=True)
def test_the_task_of_a_superseded_loader_does_not_fail_the_resumed_run(fast_preset, monkeypatch):
    from runs import tasks

    run = Run.objects.create_run(preset=fast_preset, targets=[make_target()])

    class ExitedLoader:
        pid = 4242

        def __init__(self, *args, **kwargs) -> None:
            # While this loader ran, its run was resumed and claimed by another one.
            run.shards.update(status=Run.Status.QUEUED, claim_token=None)
            Run.objects.get(pk=run.pk).claim(pid=1, host="elsewhere")

        def wait(self, timeout=None) -> int:
            return 1

        def poll(self) -> int:
            return 1

    monkeypatch.setattr(tasks.subprocess, "Popen", ExitedLoader)
    tasks.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING and run.shards.get().claim_epoch == 2


# --- 2. sending never waits for the database -------------------------------------------


class HeldLock:
    """A write lock on the run's row (PostgreSQL) or the whole database (SQLite), held
    by a connection of its own, as another process's long transaction would."""

    def __init__(self, run_id: int) -> None:
        db = connection.settings_dict
        self.sqlite = db["ENGINE"].endswith("sqlite3")
        self.run_id = run_id
        self.conn: Any
        if self.sqlite:
            self.conn = sqlite3.connect(db["NAME"], timeout=20, isolation_level=None)
        else:
            import psycopg

            self.conn = psycopg.connect(
                host=db["HOST"] or "127.0.0.1",
                port=db["PORT"] or 5432,
                user=db["USER"],
                password=db["PASSWORD"] or None,
                dbname=db["NAME"],
            )

    def acquire(self) -> None:
        if self.sqlite:
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn.execute("SELECT id FROM runs_run WHERE id = %s FOR UPDATE", (self.run_id,))

    def heartbeat(self):
        if self.sqlite:
            return self.conn.execute("SELECT heartbeat_at FROM runs_run WHERE id = ?", (self.run_id,)).fetchone()[0]
        query = "SELECT heartbeat_at FROM runs_run WHERE id = %s"
        return self.conn.execute(query, (self.run_id,)).fetchone()[0]

    def release(self) -> None:
        if self.sqlite:
            self.conn.execute("COMMIT")
        else:
            self.conn.commit()
        self.conn.close()


@pytest.mark.django_db(transaction=True)
def test_a_database_lock_held_by_another_process_does_not_stop_or_burst_the_sending(fake_matomo, fast_preset):
    target = make_local_target(fake_matomo)
    # ~60 visits/s: a half second without any hit would take a stall, not bad luck.
    run = Run.objects.create_run(preset=fast_preset, targets=[target], duration_seconds=300, visits_per_day=5_000_000)
    loader = start_loader(run, run.claim(pid=0, host="test"))
    try:
        wait_until(
            lambda: Run.objects.get(pk=run.pk).stats.get("totals", {}).get("sent", 0) > 40,
            timeout=LOADER_WAIT,
            what="a report",
        )
        lock = HeldLock(run.pk)
        lock.acquire()
        try:
            locked_at = time.time()
            heartbeat = lock.heartbeat()
            time.sleep(3.0)  # the lock is the point of the test: held for a fixed time
            assert lock.heartbeat() == heartbeat  # the loader's reports were blocked...
            released_at = time.time()
        finally:
            lock.release()
        # ... and its hits were not: every half second of the lock saw hits arrive.
        times = [hit.time for hit in fake_matomo.hits_for(1) if locked_at <= hit.time < released_at]
        slots = {int((moment - locked_at) * 2) for moment in times}
        assert set(range(int((released_at - locked_at) * 2))) <= slots  # every full half second
        wait_until(
            lambda: Run.objects.get(pk=run.pk).heartbeat_at.timestamp() > released_at,
            timeout=LOADER_WAIT,
            what="a report",
        )
        run.request_stop("Stopped by the test.")
        finish_loader(loader, timeout=30, check=False)
    finally:
        if loader.poll() is None:
            loader.kill()
    run.refresh_from_db()
    totals = run.stats["totals"]
    # No hit waited for the lock, so there was nothing to catch up on in a burst afterwards
    # (waiting for it would have made every hit due during the 3 s late: a third of them).
    # A busy CI machine may still delay a few by more than a second.
    assert totals["late_hits"] * 100 <= totals["sent"]
    assert not totals["saturated"] and totals["visits_behind"] == 0
    assert totals["accepted"] == fake_matomo.stats()["recorded"]


# --- 1. admission control and saturation ------------------------------------------------


@pytest.fixture
def overload(fake_matomo, settings):
    """A target ~10 times slower than the asked rate: 2 connections, 20 ms per hit
    (~100 hits/s) against ~400 visits/s."""
    settings.LOADER_MAX_VISITS_IN_PROGRESS = 30
    fake_matomo.set_latency(0.02)
    return make_fast_preset("Overload", visits_per_day=34_560_000, pause_max=0.05, concurrency=2)


@pytest.mark.django_db(transaction=True)
def test_overload_keeps_visits_in_progress_bounded_and_reports_the_shortfall(fake_matomo, overload, monkeypatch):
    highest = []
    original = TargetRuntime.start_visit

    def counting_start(self, visit, now, now_mono):
        passed = original(self, visit, now, now_mono)
        highest.append(self.in_progress)
        return passed

    monkeypatch.setattr(TargetRuntime, "start_visit", counting_start)
    run = Run.objects.create_run(preset=overload, targets=[make_local_target(fake_matomo)], duration_seconds=6)
    run.claim(pid=0, host="test")
    run = execute_loader(run)

    assert max(highest) <= 30  # the admission bound, whatever the asked rate
    totals = run.stats["totals"]
    assert totals["saturated"] and totals["visits_behind"] > totals["visits_started"]
    assert 0 < totals["delivered_percent"] < 50
    assert totals["accepted"] == fake_matomo.stats()["recorded"] == totals["sent"] - totals["abandoned"]
    # The loader's own queueing is reported as wait, not as the target's latency.
    assert totals["wait_ms"]["p95"] > totals["latency_ms"]["p95"]
    saturated = run.logs.filter(level=RunLog.Level.WARNING, message__startswith="Generator saturated")
    assert saturated.count() == 1
    assert saturated.get().created_at - run.started_at < timedelta(seconds=10)
    assert "could not keep up" in run.end_reason


def caps_at_each_start(monkeypatch) -> list[tuple[int | None, int]]:
    """(the target's visit cap, its visits in progress) just after each visit started."""
    seen: list[tuple[int | None, int]] = []
    original = TargetRuntime.start_visit

    def counting_start(self, visit, now, now_mono):
        passed = original(self, visit, now, now_mono)
        seen.append((self.visit_cap, self.in_progress))
        return passed

    monkeypatch.setattr(TargetRuntime, "start_visit", counting_start)
    return seen


@pytest.mark.django_db(transaction=True)
def test_single_hits_keep_only_the_visits_their_sender_can_serve_in_progress(
    fake_matomo, overload, settings, monkeypatch
):
    # The generous overall bound (20,000) is not what holds an overloaded single-hit
    # target back: the visits in progress follow the sender's concurrency and latency.
    settings.LOADER_MAX_VISITS_IN_PROGRESS = 20_000
    # Pauses of about a second: a visit's next hit is due long after the previous one, so
    # the schedule alone admits a visit every few milliseconds until the hits wait.
    overload.pause_min, overload.pause_max = 0.5, 1.0
    overload.save()
    seen = caps_at_each_start(monkeypatch)
    run = Run.objects.create_run(preset=overload, targets=[make_local_target(fake_matomo)], duration_seconds=6)
    run.claim(pid=0, host="test")
    run = execute_loader(run)

    capped = [(cap, in_progress) for cap, in_progress in seen if cap is not None]
    assert capped, "the cap follows the first answers"
    assert all(in_progress <= cap <= 100 for cap, in_progress in capped)  # 2 connections, ~20 ms per hit
    totals = run.stats["totals"]
    assert totals["saturated"]
    assert totals["accepted"] == fake_matomo.stats()["recorded"] == totals["sent"] - totals["abandoned"]


def test_the_single_hit_visit_cap_keeps_the_requests_busy_twice_over_within_bounds():
    # 20 requests of 10 ms, a visit asks for a hit every 90 + 10 ms: 20 x 10 visits keep
    # them busy, twice that is the cap.
    assert single_visit_cap(20, latency=0.01, gap=0.09, ceiling=20_000) == 400
    assert single_visit_cap(20, latency=0.01, gap=30.0, ceiling=20_000) == 20_000  # realistic pauses: the ceiling
    assert single_visit_cap(20, latency=5.0, gap=0.0, ceiling=20_000) == 40  # never below 2 x concurrency
    assert single_visit_cap(20, latency=0.0, gap=1.0, ceiling=500) == 500


@pytest.mark.django_db(transaction=True)
def test_bulk_visits_in_progress_follow_what_their_sender_can_serve(fake_matomo, overload, settings, monkeypatch):
    # Bulk requests of 10 hits, 2 at a time, 20 ms each: ~1,000 hits/s at most, against
    # ~580 visits/s of about 3 hits asked. Bounded only by the overall 20,000, the loader
    # started every visit behind schedule at once whenever its due backlog cleared (bursts
    # of thousands, sent seconds late, many never sent by the end of a timed run).
    settings.LOADER_MAX_VISITS_IN_PROGRESS = 20_000
    seen = caps_at_each_start(monkeypatch)
    run = Run.objects.create_run(
        preset=overload,
        targets=[make_local_target(fake_matomo)],
        duration_seconds=6,
        bulk=True,
        batch_size=10,
        visits_per_day=50_000_000,
    )
    run.claim(pid=0, host="test")
    run = execute_loader(run)

    capped = [(cap, in_progress) for cap, in_progress in seen if cap is not None]
    assert capped, "the cap follows the first answers"
    assert all(in_progress <= cap <= 500 for cap, in_progress in capped)
    totals = run.stats["totals"]
    assert totals["saturated"]
    assert totals["accepted"] == fake_matomo.stats()["recorded"] == totals["sent"] - totals["abandoned"]
    # What was started was (nearly all) delivered: no backlog of thousands left unsent.
    assert totals["visits_started"] - totals["visits_delivered"] <= max(cap for cap, _ in capped)


def test_the_bulk_visit_cap_keeps_the_requests_busy_twice_over_within_bounds():
    # 4 requests of 100 hits (25 visits of 4 hits) take 0.5 s; a visit lasts 0.5 s before
    # its request: 2 x 4 x 25 = 200 visits, x (1 + 0.5 / 0.5) = 400.
    assert bulk_visit_cap(4, 100, latency=0.5, span=0.5, hits_per_visit=4.0, ceiling=20_000) == 400
    # Visits of minutes against a fast Matomo: the ceiling (they must be held anyway).
    assert bulk_visit_cap(4, 100, latency=0.01, span=120.0, hits_per_visit=4.0, ceiling=20_000) == 20_000
    # A slow Matomo and instant visits: never below two full rounds of requests.
    assert bulk_visit_cap(4, 100, latency=30.0, span=0.0, hits_per_visit=4.0, ceiling=20_000) == 200
    assert bulk_visit_cap(4, 100, latency=0.0, span=1.0, hits_per_visit=4.0, ceiling=500) == 500
    assert bulk_visit_cap(4, 100, latency=1.0, span=0.0, hits_per_visit=4.0, ceiling=50) == 50  # the ceiling wins


def test_saturation_figures_add_up_over_targets():
    telemetry = RunTelemetry()
    slow, fast = telemetry.add("1"), telemetry.add("2")
    slow.start_visits(10)
    slow.set_schedule(lag_seconds=5.0, visits_behind=30, saturated=True)
    fast.start_visits(40)
    fast.set_schedule(lag_seconds=0.0, visits_behind=0, saturated=False)
    slow.record_wait(2.5)
    fast.record_wait(0.001)
    totals = telemetry.snapshot()["totals"]
    assert totals["saturated"] and totals["saturated_targets"] == ["1"]
    assert totals["lag_seconds"] == 5.0 and totals["visits_behind"] == 30
    assert totals["delivered_percent"] == 62.5  # 50 of 80 asked
    assert totals["late_hits"] == 1 and totals["wait_ms"]["count"] == 2
    assert totals["latency_ms"]["count"] == 0  # waiting is not latency


def test_waiting_in_the_loader_is_never_counted_as_latency():
    telemetry = TargetTelemetry()
    telemetry.start_hits(1)
    telemetry.record_wait(3.0)
    telemetry.record_outcome("accepted", 1, latency=0.002)
    data = telemetry.snapshot()
    assert data["latency_ms"]["max"] == 2.0 and data["wait_ms"]["max"] == 3000.0


# --- 4. stop always works -----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("how", ["sigterm", "stop button"])
def test_a_loader_at_overload_stops_and_settles_every_hit(fake_matomo, how):
    preset = make_fast_preset("Flood", visits_per_day=50_000_000, pause_max=0.2, visit_duration_max=0.5)
    # 20 connections x 50 ms caps sending at ~400 hits/s, far below the ~2,000 asked, so the
    # loader saturates however fast the machine is (on an idle one it nearly kept up).
    fake_matomo.set_latency(0.05)
    run = Run.objects.create_run(preset=preset, targets=[make_local_target(fake_matomo)], duration_seconds=300)
    loader = start_loader(run, run.claim(pid=0, host="test"))
    try:
        wait_until(
            lambda: Run.objects.get(pk=run.pk).stats.get("totals", {}).get("saturated"),
            timeout=LOADER_WAIT,
            what="saturation",
        )
        asked = time.time()
        if how == "sigterm":
            loader.send_signal(signal.SIGTERM)
        else:
            run.request_stop("Stopped by the test.")
        finish_loader(loader, timeout=30, check=False)
    finally:
        if loader.poll() is None:
            loader.kill()
    # The time a stop takes is a timing figure, printed by `manage.py bench --only overload`
    # (stopped_in, well under the 2 s asked). Here: sending ended, within a bound no
    # loaded machine reaches.
    last_hit = max(hit.time for hit in fake_matomo.hits_for(1))
    assert last_hit <= asked + 10.0
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    assert run.stats["totals"]["in_flight"] == 0


# --- 5. no spin -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_loader_never_spins_while_its_last_visits_drain(fake_matomo, monkeypatch):
    preset = make_fast_preset(
        "Long visits",
        pause_min=0.5,
        pause_max=1.0,
        visit_duration_min=0.02,  # minutes: visits of 1-3 s
        visit_duration_max=0.05,
        concurrency=5,
    )
    waits = []
    original = LiveLoader._idle_wait

    def recording(self, *args):
        value = original(self, *args)
        waits.append((self._visit_limit_reached(), value))
        return value

    monkeypatch.setattr(LiveLoader, "_idle_wait", recording)
    run = Run.objects.create_run(preset=preset, targets=[make_local_target(fake_matomo)], max_visits=5, seed=4)
    run.claim(pid=0, host="test")
    run = execute_loader(run)
    assert run.status == Run.Status.COMPLETED
    draining = [value for reached, value in waits if reached]
    assert draining and min(draining) > 0
    # A pass per check, flush or finished visit, not a busy loop: well under 100 a second.
    assert len(draining) < 100 * (run.elapsed().total_seconds() + 1)


def test_the_daily_cap_pause_restarts_the_stream_at_the_next_day_without_generating_the_rest(
    db, fake_matomo, fast_preset
):
    from datetime import datetime
    from datetime import time as day_time

    run = Run.objects.create_run(preset=fast_preset, targets=[make_local_target(fake_matomo)], daily_cap=3)
    run.claim(pid=0, host="test")
    loader = LiveLoader(run)
    loader.build()
    (runtime,) = loader.runtimes
    zone = runtime.stream.tzinfo
    late_evening = datetime(2026, 3, 2, 23, 0, tzinfo=zone).timestamp()
    runtime.stream = target_streams(run, [runtime.run_target], start=late_evening)[0]
    runtime.next_visit = next(runtime.stream.visits)
    loader._admit(late_evening + 1800, time.monotonic())  # ~36,000 visits due by now
    assert loader.visits_started == 3
    # Paused: the next visit is the first one of the next local day, not the 4th of today.
    midnight = datetime.combine(datetime(2026, 3, 3).date(), day_time.min, zone).timestamp()
    assert midnight <= runtime.next_visit.start < midnight + 5
    assert loader.stream_key() == "1.1"
    assert loader._idle_wait(time.monotonic(), time.monotonic() + 10, time.monotonic() + 10, None) > 0
    runtime.sender.close(grace_seconds=0)


# --- 7. reproducible live runs ------------------------------------------------------------


@pytest.mark.django_db
def test_the_same_seed_gives_the_same_visits_whenever_the_run_starts(fast_preset):
    target = make_target()
    first, second = (Run.objects.create_run(preset=fast_preset, targets=[target], seed=11) for _ in range(2))

    def schedule(run, start):
        (stream,) = target_streams(run, list(run.run_targets.select_related("target")), start=start)
        visits = list(islice(stream.visits, 200))
        return [
            (v.cid, round(v.start - start, 6), [(round(h.due - start, 6), h.params.get("url")) for h in v.hits])
            for v in visits
        ]

    morning, afternoon = 1_767_258_000, 1_767_258_000 + 4 * 3600 + 17.25  # 2026-01-01 09:00 and 13:00:17
    assert schedule(first, morning) == schedule(second, afternoon)
    loaders = [LiveLoader(run) for run in (first, second)]
    assert loaders[0].stream_key() == loaders[1].stream_key()


def test_the_claim_lease_is_well_below_the_time_after_which_a_run_can_be_resumed():
    assert 0 < loader_module.claim_lease() * 2 < settings.RUN_HEARTBEAT_STALE_SECONDS


def test_the_db_thread_runs_jobs_off_the_calling_thread():
    db = loader_module.DbThread()
    assert db.submit(threading.get_ident).get() == threading.get_ident()  # not started: inline
    db.start()
    try:
        assert db.submit(threading.get_ident).get(timeout=5) != threading.get_ident()
    finally:
        db._pool.kill()
