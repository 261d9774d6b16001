"""The live loader against the project's local Matomo: every hit accounted for."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from conftest import TOKEN
from runs.models import Run, RunLog, RunSample
from runs.tasks import execute_run
from trafficinator.cli import ExitCode
from trafficinator.testing import make_fast_preset, make_target, subprocess_env, wait_until

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")


def local_target(server, **fields):
    return make_target(name=fields.pop("name", "local"), matomo_url=server.url, site_id=1, token_auth=TOKEN, **fields)


def run_traffic(*args: str) -> str:
    out = io.StringIO()
    call_command("run_traffic", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def summary(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith("visits_started="))
    return {key: int(value) for key, value in (part.split("=") for part in line.split())}


@pytest.mark.django_db(transaction=True)
def test_single_hits_are_counted_exactly_as_matomo_recorded_them(fake_matomo, fast_preset):
    local_target(fake_matomo)
    output = run_traffic("--target", "local", "--preset", "Fast", "--visits", "60", "--seed", "3")
    counts = summary(output)
    stats = fake_matomo.stats()
    assert counts["visits_started"] == counts["visits_delivered"] == 60
    assert counts["hits"] == counts["accepted"] == stats["recorded"] == stats["hits_received"] > 60
    assert counts["invalid"] == counts["rejected"] == counts["errors"] == 0
    assert stats["token_in_url"] == 0 and stats["backdated"] == 0
    assert len(fake_matomo.visits(1)) == 60  # no visit merged into another, none split
    run = Run.objects.get()
    assert run.status == Run.Status.COMPLETED and "Visit limit of 60" in run.end_reason
    assert RunSample.objects.filter(run=run).exists()


@pytest.mark.django_db(transaction=True)
def test_bulk_mode_sends_whole_visits_with_cdt_and_counts_them(fake_matomo, fast_preset):
    local_target(fake_matomo)
    counts = summary(
        run_traffic("--target", "local", "--preset", "Fast", "--visits", "80", "--bulk", "--batch-size", "50")
    )
    stats = fake_matomo.stats()
    assert stats["bulk_requests"] >= 2 and stats["single_requests"] == 0
    assert counts["accepted"] == stats["tracked"] == stats["recorded"] == counts["hits"]
    assert all("cdt" in hit.params for hit in fake_matomo.hits_for(1))
    assert len(fake_matomo.visits(1)) == 80


@pytest.mark.django_db(transaction=True)
def test_injected_faults_lose_and_duplicate_nothing(fake_matomo, fast_preset):
    local_target(fake_matomo)
    fake_matomo.fail_next(5, 503)
    fake_matomo.fail_next(3, 429, retry_after=1)
    fake_matomo.reset_next(2)
    output = run_traffic("--target", "local", "--preset", "Fast", "--visits", "40", "--seed", "9")
    counts = summary(output)
    stats = fake_matomo.stats()
    assert counts["accepted"] == counts["hits"] == stats["recorded"]
    # Every hit carries its own `rand`: a hit recorded twice would show up here.
    recorded = [(hit.visitor_id, hit.params["rand"]) for hit in fake_matomo.hits_for(1)]
    assert len(recorded) == len(set(recorded))
    run = Run.objects.get()
    assert run.stats["totals"]["retries"] >= 10
    assert RunLog.objects.filter(run=run, message__contains="Backing off").exists()


@pytest.mark.django_db(transaction=True)
def test_a_target_that_rejects_everything_fails_the_run_with_a_clear_reason(fake_matomo, fast_preset):
    make_target(name="wrong-site", matomo_url=fake_matomo.url, site_id=99)  # unknown site: every hit is a 400
    with pytest.raises(CommandError, match="failed") as error:
        # Degraded needs at least 20 answered hits; 30 visits with this seed send more.
        run_traffic("--target", "wrong-site", "--preset", "Fast", "--visits", "30", "--seed", "5")
    assert error.value.returncode == ExitCode.FAILED == 1  # what `manage.py run_traffic` exits with
    run = Run.objects.get()
    assert run.status == Run.Status.FAILED
    assert run.stats["totals"]["rejected"] == run.stats["totals"]["sent"] > 0
    assert run.stats["totals"]["retries"] == 0  # a 400 is not retried
    assert RunLog.objects.filter(run=run, level="error", message__contains="Degraded").exists()


@pytest.mark.django_db(transaction=True)
def test_one_failing_target_does_not_stop_the_others(fake_matomo, fast_preset):
    local_target(fake_matomo, name="good")
    make_target(name="bad", matomo_url=fake_matomo.url, site_id=99)
    counts = summary(
        run_traffic("--target", "good", "--target", "bad", "--preset", "Fast", "--visits", "80", "--seed", "6")
    )
    run = Run.objects.get()
    by_name = {rt.target.name: run.stats["targets"][str(rt.pk)] for rt in run.run_targets.select_related("target")}
    assert by_name["good"]["accepted"] > 0 and by_name["good"]["rejected"] == 0
    assert by_name["bad"]["accepted"] == 0 and by_name["bad"]["degraded"]
    assert run.status == Run.Status.COMPLETED
    assert counts["accepted"] == by_name["good"]["accepted"]


def test_run_traffic_explains_bad_arguments(db):
    with pytest.raises(CommandError, match="No target named “nope”"):
        run_traffic("--target", "nope", "--preset", "Light")
    with pytest.raises(CommandError, match="not a duration"):
        run_traffic("--target", "x", "--preset", "Light", "--duration", "soon")


def _start_loader_task(run_id: int, monkeypatch) -> threading.Thread:
    """What a django-q2 worker does: execute_run in its own thread of control."""
    monkeypatch.setenv("DATABASE_URL", subprocess_env()["DATABASE_URL"])

    def task() -> None:
        try:
            execute_run(run_id)
        finally:
            connection.close()  # this thread's own connection; else it outlives the test DB

    thread = threading.Thread(target=task, daemon=True)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_stop_ends_the_loader_and_a_redelivered_task_starts_nothing(fake_matomo, fast_preset, monkeypatch):
    target = local_target(fake_matomo)
    run = Run.objects.create_run(preset=fast_preset, targets=[target])
    thread = _start_loader_task(run.pk, monkeypatch)
    wait_until(lambda: fake_matomo.stats()["recorded"] > 20, timeout=90, what="20 hits recorded")

    # django-q2 delivers the task again while the first loader runs: nothing new starts.
    assert "not starting another loader" in execute_run(run.pk)

    run.request_stop("Stopped by the test.")
    asked = time.time()
    thread.join(timeout=15)
    assert not thread.is_alive()
    # How fast a stop takes effect is a timing figure: `manage.py bench --only overload`
    # prints it (well under the 2 s the issue asks for). Here, only that sending ended
    # soon after, with a bound no loaded machine reaches.
    last_hit = max(hit.time for hit in fake_matomo.hits_for(1))
    assert last_hit <= asked + 10.0
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED and run.end_reason == "Stopped by the test."
    totals = run.stats["totals"]
    assert totals["accepted"] == fake_matomo.stats()["recorded"]
    assert totals["sent"] == totals["accepted"] + totals["abandoned"]


@pytest.mark.django_db(transaction=True)
def test_the_worker_path_runs_a_loader_end_to_end(fake_matomo, fast_preset):
    """A real `qcluster` on the loaders queue picks the task up, claims the run and runs
    `run_loader` in its own process, on whichever database the suite uses."""
    target = local_target(fake_matomo)
    env = subprocess_env(Q_CLUSTER_NAME="loaders", LOADER_WORKERS="1")
    cluster = subprocess.Popen(
        [sys.executable, MANAGE, "qcluster"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        run = Run.objects.create_run(preset=fast_preset, targets=[target], max_visits=30)
        from runs.models import enqueue_run

        enqueue_run(run)  # on_commit runs at once: this test is not inside a transaction
        wait_until(
            lambda: Run.objects.get(pk=run.pk).status == Run.Status.COMPLETED, timeout=60, what="the run to complete"
        )
    finally:
        cluster.terminate()
        cluster.wait(timeout=20)
    run.refresh_from_db()
    assert run.shards.get().loader_pid and run.stats["totals"]["visits_started"] == 30
    assert run.stats["totals"]["accepted"] == fake_matomo.stats()["recorded"]
    assert len(fake_matomo.visits(1)) == 30


@pytest.mark.django_db(transaction=True)
def test_a_resumed_run_continues_its_counters_and_its_visit_limit(fake_matomo, fast_preset):
    from runs.loader import execute_loader

    target = local_target(fake_matomo)
    run = Run.objects.create_run(preset=fast_preset, targets=[target], max_visits=10)
    key = str(run.run_targets.get().pk)
    earlier = {
        "visits_started": 4,
        "visits_finished": 4,
        "sent": 15,
        "accepted": 14,
        "rejected": 1,
        "rejected_by_status": {"400": 1},
        "in_flight": 3,  # fate unknown: counted abandoned by the next loader
    }
    earlier["sent"] += earlier["in_flight"]
    # What the lost loader last reported: its figures and where its stream stood.
    run.shards.update(stats={"totals": dict(earlier), "targets": {key: dict(earlier)}}, stream={"positions": {key: 4}})
    run.claim(pid=1, host="test")
    run = execute_loader(run)
    totals = run.stats["totals"]
    server = fake_matomo.stats()["recorded"]
    assert totals["visits_started"] == 10  # 4 before the resume + 6 now
    assert totals["accepted"] == 14 + server and totals["sent"] == 18 + server
    assert totals["rejected_by_status"] == {"400": 1}
    assert totals["in_flight"] == 0 and totals["abandoned"] == 3
    assert run.stats["targets"][key]["accepted"] == 14 + server


@pytest.mark.django_db(transaction=True)
def test_the_actual_visits_per_day_of_the_last_minute_is_reported(fake_matomo, fast_preset):
    local_target(fake_matomo)
    run_traffic("--target", "local", "--preset", "Fast", "--visits", "40")
    run = Run.objects.get()
    (key,) = run.stats["targets"]
    # 40 visits started within the last minute: 40 x 1,440 a day, whatever the set rate.
    assert run.stats["targets"][key]["visits_per_day"] == 40 * 1440
    assert run.stats["totals"]["visits_per_day"] == 40 * 1440


@pytest.mark.django_db
def test_the_daily_cap_pauses_a_run_until_the_next_local_day(fake_matomo, fast_preset):
    from datetime import UTC, datetime

    from runs.loader import LiveLoader

    run = Run.objects.create_run(preset=fast_preset, targets=[local_target(fake_matomo)], daily_cap=2)
    loader = LiveLoader(run)  # not built: no targets, so days are counted in UTC
    day_one = datetime(2026, 3, 2, 10, tzinfo=UTC).timestamp()
    day_two = datetime(2026, 3, 3, 0, 0, 1, tzinfo=UTC).timestamp()

    def admit(start: float) -> bool:
        if loader._daily_cap_reached(start):
            return False
        loader._visits_today += 1  # what _start_due_visits does for an admitted visit
        return True

    assert [admit(day_one + i) for i in range(4)] == [True, True, False, False]
    assert [admit(day_two + i) for i in range(3)] == [True, True, False]
    messages = [message for _, message, _ in loader.pending_logs]  # written with the next report
    assert any("Daily cap of 2 visits reached" in m for m in messages)
    assert any("resuming after the daily cap" in m for m in messages)


@pytest.mark.django_db
def test_run_traffic_accepts_weights_and_explicit_rates_per_target(fake_matomo):
    from runs.management.commands.run_traffic import target_share

    shop, blog = make_target(name="shop"), make_target(name="blog:eu")
    assert target_share("shop") == (shop, 1.0, None)
    assert target_share("shop:3") == (shop, 3.0, None)
    assert target_share("shop=5000") == (shop, 1.0, 5000)
    assert target_share("blog:eu") == (blog, 1.0, None)  # a name with a colon still works
    with pytest.raises(CommandError, match="not a number"):
        target_share("shop:lots")
    with pytest.raises(CommandError, match="the rate must be 1 to 50,000,000"):
        target_share("shop=0")


@pytest.mark.django_db
def test_the_same_seed_gives_the_same_stream_in_another_run(fast_preset):
    from itertools import islice

    from runs.loader import target_streams

    target = make_target()
    first, second = (Run.objects.create_run(preset=fast_preset, targets=[target], seed=42) for _ in range(2))
    other = Run.objects.create_run(preset=fast_preset, targets=[target], seed=43)

    def visitors(run):
        (stream,) = target_streams(run, list(run.run_targets.select_related("target")), start=1_767_225_600)
        return [(visit.cid, visit.start) for visit in islice(stream.visits, 20)]

    assert visitors(first) == visitors(second) != visitors(other)


@contextmanager
def admitted_bulk_visits(preset, *, seed: int, count: int):
    """The runtime of a bulk run's one target, built but not running, that admitted its
    first ``count`` visits (in the heap, nothing sent), and those visits."""
    from runs.loader import LiveLoader

    run = Run.objects.create_run(preset=preset, targets=[make_target()], bulk=True, seed=seed)
    run.claim(pid=0, host="test")
    loader = LiveLoader(run)
    loader.build()
    (runtime,) = loader.runtimes
    try:
        visits = []
        for _ in range(count):
            visit = runtime.next_visit
            assert visit is not None  # an endless live stream
            visits.append(visit)
            runtime.advance()
            runtime.start_visit(visit, time.time(), time.monotonic())
        yield runtime, visits
    finally:
        runtime.sender.close(grace_seconds=0)


@pytest.mark.django_db
def test_a_bulk_visit_carries_the_visitor_its_hits_name(fast_preset):
    """The dispatcher hands the sender each visit's visitor (it orders a visitor's visits
    by it): the one the sender would read from the hits."""
    from trafficinator.sending.sender import visitor_of

    with admitted_bulk_visits(fast_preset, seed=5, count=50) as (runtime, _):
        states = [entry[2] for entry in runtime.heap]
        assert len(states) == 50 and all(state.bulk for state in states)
        assert all(state.visitor == visitor_of(runtime.stream.entries(state)[0]) != "" for state in states)


@pytest.mark.django_db
def test_a_held_bulk_visit_keeps_its_constant_params_once_and_counts_what_it_holds(fast_preset):
    """A bulk visit waits for its last hit holding its head once (not in every entry), is
    counted in the memory budget by what it holds, is sent as encode_visit's entries, and
    counts for nothing once it is settled."""
    from trafficinator.traffic import encode_visit

    with admitted_bulk_visits(fast_preset, seed=6, count=40) as (runtime, visits):
        states = sorted((entry[2] for entry in runtime.heap), key=lambda state: state.position)
        encoded = [encode_visit(visit, cdt=runtime.stream.cdt_format) for visit in visits]
        assert [runtime.stream.entries(state) for state in states] == encoded
        held = sum(state.size for state in states)
        assert runtime.held_bytes == held < sum(len(entry) for entries in encoded for entry in entries)
        for state in states:
            runtime.visit_over(state, finished=True)
        assert runtime.held_bytes == 0 and runtime.in_progress == 0


@pytest.mark.django_db(transaction=True)
def test_live_bulk_with_500s_that_stored_the_request_records_each_visit_once(fake_matomo, fast_preset):
    local_target(fake_matomo)
    # Matomo 5.0.2 answers 500 after storing the request that starts the site-day.
    fake_matomo.add_fault(kind="stored_500", target="bulk", count=None)
    counts = summary(
        run_traffic("--target", "local", "--preset", "Fast", "--visits", "60", "--bulk", "--batch-size", "20")
    )
    stats = fake_matomo.stats()
    assert stats["faults_fired"] == {"stored_500": 1}
    recorded = [(hit.visitor_id, hit.params["rand"]) for hit in fake_matomo.hits_for(1)]
    assert len(recorded) == len(set(recorded))  # nothing recorded twice
    assert counts["accepted"] == counts["hits"] == stats["recorded"]  # counters = what Matomo holds
    assert counts["errors"] == counts["possibly_duplicated"] == 0
    assert counts["visits_started"] == counts["visits_delivered"] == 60
    assert len(fake_matomo.visits(1)) == 60


@pytest.mark.django_db(transaction=True)
def test_live_bulk_resends_after_lost_answers_count_what_matomo_may_hold_twice(fake_matomo, fast_preset):
    local_target(fake_matomo)
    # Page views at least a second apart, as in real visits: a resend of a recorded request
    # with such a visit is refused as older than what Matomo holds (counted once). A
    # request of one-second visits only (bounces) is taken again: possibly duplicated.
    make_fast_preset("Paced", pause_min=1.0, pause_max=1.5, visit_duration_min=0.02, visit_duration_max=0.04)
    # Four lost answers (fewer than the five attempts a request gets), at random requests.
    fake_matomo.add_fault(kind="reset", processed=True, target="bulk", count=4, probability=0.3, seed=4)
    counts = summary(
        run_traffic("--target", "local", "--preset", "Paced", "--visits", "80", "--bulk", "--batch-size", "20")
    )
    stats = fake_matomo.stats()
    assert stats["faults_fired"]["reset"] >= 1
    recorded = Counter((hit.visitor_id, hit.params["rand"]) for hit in fake_matomo.hits_for(1))
    assert counts["accepted"] == counts["hits"] == len(recorded)  # every hit counted once, none lost
    assert stats["recorded"] == counts["accepted"] + counts["possibly_duplicated"]  # the bound is exact here
    assert counts["errors"] == 0
    assert counts["visits_started"] == counts["visits_delivered"] == 80


@pytest.mark.django_db(transaction=True)
def test_a_stop_with_bulk_requests_in_flight_counts_no_network_error_and_flags_nothing(
    fake_matomo, fast_preset, monkeypatch
):
    target = local_target(fake_matomo)
    run = Run.objects.create_run(preset=fast_preset, targets=[target], bulk=True, batch_size=20)
    thread = _start_loader_task(run.pk, monkeypatch)
    wait_until(lambda: fake_matomo.stats()["recorded"] > 40, timeout=90, what="40 hits recorded")
    fake_matomo.set_latency(4.0)  # answers now come after the stop's grace
    wait_until(
        lambda: fake_matomo.stats()["bulk_requests"] > 3 + fake_matomo.stats()["recorded"] // 20,
        timeout=90,
        what="more bulk requests",
    )
    run.request_stop("Stopped by the test.")
    thread.join(timeout=20)
    assert not thread.is_alive()

    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    totals = run.stats["totals"]
    assert totals["abandoned"] > 0  # requests were in flight at stop ...
    assert totals["network_errors"] == totals["timeouts"] == totals["server_errors"] == 0  # ... none an error
    assert totals["degraded_targets"] == [] and not run.logs.filter(message__contains="Degraded").exists()
    assert totals["visits_delivered"] < totals["visits_started"]
    assert totals["accepted"] <= fake_matomo.stats()["recorded"]


def test_the_summary_line_tells_visits_started_from_visits_delivered():
    from runs.management.commands.run_traffic import summary_line

    line = summary_line({"totals": {"visits_started": 21091, "visits_delivered": 9285, "sent": 40000}})
    assert line.startswith("visits_started=21091 visits_delivered=9285 hits=40000 ")
    assert line.endswith(" possibly_duplicated=0")
