"""Work spreads over worker clusters, and a task a cluster took and never ran is delivered
again within TASK_REDELIVER_AFTER_SECONDS: real `qcluster` processes, on the ORM broker
and on Redis (db 5 of the local server), on whichever database the suite uses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django_q.brokers import orm, redis_broker

from backfill.models import DEFAULT_REQUESTS_IN_FLIGHT, BackfillDay, BackfillPlan
from backfill.tests.conftest import expected_keys, hit_keys, make_backfill_target
from conftest import TOKEN
from runs.models import Run, RunLog, enqueue_run
from trafficinator.taskqueue import RUN_TASK, WorkerSlots, task_key
from trafficinator.testing import confirmed_plan, make_preset, make_target, subprocess_env, wait_until

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")
REDIS_URL = "redis://127.0.0.1:6379/5"  # this stream's Redis database
QUEUE_KEYS = ("django_q:loaders:q", "django_q:trafficinator:q")
BOUND = 3  # TASK_REDELIVER_AFTER_SECONDS of the clusters these tests start


@dataclass
class Broker:
    name: str
    env: dict[str, str]
    plain: Callable[[str], object]  # django-q2's own broker of a queue, as a cluster has it
    clusters: list[subprocess.Popen] = field(default_factory=list)

    def start_cluster(self, queue: str = "loaders", workers: int = 1) -> subprocess.Popen:
        """One `qcluster` as one machine: its own session, so it dies as a whole."""
        env = subprocess_env(
            TASK_REDELIVER_AFTER_SECONDS=str(BOUND), LOADER_WORKERS=str(workers), Q_WORKERS=str(workers), **self.env
        )
        if not self.env:
            env.pop("REDIS_URL", None)
        if queue != "trafficinator":
            env["Q_CLUSTER_NAME"] = queue
        cluster = subprocess.Popen(
            [sys.executable, MANAGE, "qcluster"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.clusters.append(cluster)
        return cluster

    def take(self, queue: str) -> list:
        """Take a task off the broker the way a cluster does, and never run it."""
        broker = self.plain(queue)
        deadline = time.monotonic() + 30
        while not (tasks := broker.dequeue()):  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "nothing to take"
        return tasks


def kill(cluster: subprocess.Popen) -> None:
    """SIGKILL the cluster and everything it started (a machine that died)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(cluster.pid, signal.SIGKILL)
    cluster.wait(timeout=30)


def stop(cluster: subprocess.Popen) -> None:
    if cluster.poll() is None:
        cluster.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.wait(timeout=60)
    kill(cluster)  # whatever of its session is left


def _redis_broker(queue: str) -> redis_broker.Redis:
    broker = redis_broker.Redis(list_key=queue)
    broker.connection = redis.from_url(REDIS_URL)
    return broker


@pytest.fixture
def orm_broker() -> Iterator[Broker]:
    chosen = Broker("orm", {}, lambda queue: orm.ORM(list_key=queue))
    try:
        yield chosen
    finally:
        for cluster in chosen.clusters:
            stop(cluster)


@pytest.fixture(params=["orm", "redis"])
def broker(request, monkeypatch) -> Iterator[Broker]:
    if request.param == "orm":
        chosen = Broker("orm", {}, lambda queue: orm.ORM(list_key=queue))
    else:
        connection = redis.from_url(REDIS_URL)
        connection.delete(*QUEUE_KEYS)
        # This process enqueues on the Redis the clusters read (its settings say ORM).
        monkeypatch.setattr("django_q.tasks.get_broker", lambda list_key=None: _redis_broker(list_key))
        chosen = Broker("redis", {"REDIS_URL": REDIS_URL}, _redis_broker)
    try:
        yield chosen
    finally:
        for cluster in chosen.clusters:
            stop(cluster)
        if request.param == "redis":
            redis.from_url(REDIS_URL).delete(*QUEUE_KEYS)


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        chain.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return chain


def cluster_of(run: Run, clusters: list[subprocess.Popen]) -> subprocess.Popen:
    """The cluster whose worker runs the run's loader (loader -> worker -> sentinel -> cluster)."""
    chain = ancestors(loader_pid(run) or 0)
    (owner,) = [cluster for cluster in clusters if cluster.pid in chain]
    return owner


def slow_run(target, preset) -> Run:
    """A run that keeps its loader busy for as long as the test needs (a few visits)."""
    return Run.objects.create_run(preset=preset, targets=[target], visits_per_day=8640, duration_seconds=600)


def running(run: Run) -> bool:
    run.refresh_from_db()
    pid = loader_pid(run)
    return run.status == Run.Status.RUNNING and bool(pid) and pid != os.getpid()


def loader_pid(run: Run) -> int | None:
    """The pid of the loader of the run's (one) shard."""
    return run.shards.values_list("loader_pid", flat=True).first()


def test_a_cluster_takes_tasks_only_for_workers_that_are_free_and_not_about_to_start_one():
    slots = WorkerSlots(size=8)
    assert slots.free_workers(2) == 2
    slots.taken(1)  # the pusher took a task; no worker started it yet
    assert slots.free_workers(2) == 1
    slots.started(os.getpid())
    assert slots.free_workers(2) == 1
    slots.taken(1)
    assert slots.free_workers(2) == 0  # one busy, one about to start: take nothing more
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    slots.started(dead.pid)  # a worker that died while busy frees its slot
    assert slots.free_workers(2) == 1
    slots.finished(os.getpid())
    assert slots.free_workers(2) == 2
    slots.taken(1)
    slots.changed.value = time.time() - 60  # taken long ago and never started: lost on its way
    assert slots.free_workers(2) == 2
    slots.taken(1)
    slots.dropped()  # django-q2 could not read it: it never reaches a worker
    assert slots.free_workers(2) == 2


@pytest.mark.django_db(transaction=True)
def test_an_idle_cluster_takes_the_next_run_while_a_busy_one_holds_none(broker, fake_matomo, fast_preset):
    """Two loader clusters of one worker each: the first one's worker is busy, so the
    next run goes to the second one at once instead of waiting in the first one's queue."""
    target = make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    first = broker.start_cluster()
    one = slow_run(target, fast_preset)
    enqueue_run(one)
    wait_until(lambda: running(one), timeout=90, what="the first cluster to start the first run", interval=0.2)
    second = broker.start_cluster()
    two = slow_run(target, fast_preset)
    three = slow_run(target, fast_preset)
    enqueue_run(two)
    enqueue_run(three)  # no worker is free for it: it must stay on the broker
    wait_until(lambda: running(two), timeout=90, what="the idle cluster to get the second run", interval=0.2)
    assert cluster_of(one, [first, second]) is first
    assert cluster_of(two, [first, second]) is second
    three.refresh_from_db()
    assert three.status == Run.Status.QUEUED
    waiting = {task_key(package) for package in _waiting_packages(broker)}
    assert (RUN_TASK, (three.pk, 0)) in waiting  # neither cluster took it ahead of a worker
    for run in (one, two, three):
        run.request_stop("Stopped by the test.")
    wait_until(
        lambda: not Run.objects.filter(status__in=[Run.Status.RUNNING, Run.Status.STOPPING]).exists(),
        timeout=90,
        what="every run to end",
        interval=0.2,
    )
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.STOPPED}


def _waiting_packages(broker: Broker) -> list:
    if broker.name == "redis":
        return redis.from_url(REDIS_URL).lrange("django_q:loaders:q", 0, -1)
    from django.utils import timezone
    from django_q.models import OrmQ

    return list(OrmQ.objects.filter(key="loaders", lock__lte=timezone.now()).values_list("payload", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_run_taken_by_a_cluster_that_died_is_delivered_again_within_the_bound(broker, fake_matomo, fast_preset):
    """A cluster took the run's task off the broker and died before starting it (ORM:
    locked for `retry`, days; Redis: popped, gone): another cluster runs it within
    TASK_REDELIVER_AFTER_SECONDS plus a sweep."""
    target = make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    run = Run.objects.create_run(preset=fast_preset, targets=[target], max_visits=20)
    enqueue_run(run)
    assert broker.take("loaders")  # ... by the cluster that dies with it
    assert not _waiting_packages(broker)
    broker.start_cluster()
    wait_until(
        lambda: Run.objects.get(pk=run.pk).status == Run.Status.COMPLETED,
        timeout=120,
        what="the run to complete",
        interval=0.2,
    )
    run.refresh_from_db()
    assert run.stats["totals"]["visits_started"] == 20
    assert run.stats["totals"]["accepted"] == fake_matomo.stats()["recorded"]
    assert len(fake_matomo.visits(1)) == 20  # sent once, not twice
    assert RunLog.objects.filter(run=run, message__startswith="Loader started").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_backfill_day_of_a_killed_cluster_is_finished_by_another(broker, fake_matomo):
    """SIGKILL the cluster (and all its processes) while its worker sends a backfill day:
    another cluster takes the day over from its checkpoint and the plan completes with no
    visit lost and at most the requests in flight repeated."""
    batch_size = 30
    preset = make_preset(name="Small", visits_per_day=120, pause_min=1.0, pause_max=20.0, daily_curve="default")
    shop = make_backfill_target(fake_matomo)
    plan = confirmed_plan([shop], preset, last_days=2, visits_per_day=400, batch_size=batch_size)
    # Slow enough to kill it mid-day: a day is ~14 requests, 4 in flight. At 20 ms a day
    # took ~0.2 s, and a starved test noticed its 600th hit only after the first day was
    # done and before the next was claimed (no day held at the kill).
    fake_matomo.set_latency(0.2)
    doomed = broker.start_cluster("trafficinator")
    assert plan.start()

    def sending_mid_day() -> bool:
        return fake_matomo.stats()["recorded"] >= 300 and plan.days.filter(status=BackfillDay.Status.RUNNING).exists()

    wait_until(sending_mid_day, timeout=90, what="the first cluster to send a day", interval=0.05)
    kill(doomed)
    fake_matomo.set_latency(0.0)
    assert fake_matomo.stats()["recorded"] < sum(expected_keys(plan).values())  # it died mid-plan
    held = plan.days.get(status=BackfillDay.Status.RUNNING)  # and holding a day
    broker.start_cluster("trafficinator")
    wait_until(
        lambda: BackfillPlan.objects.get(pk=plan.pk).status == BackfillPlan.Status.COMPLETED,
        timeout=180,
        what="the plan to complete",
        interval=0.2,
    )
    recorded, expected = hit_keys(fake_matomo.hits_for(1)), expected_keys(plan)
    assert not expected - recorded  # no visit lost
    assert sum((recorded - expected).values()) <= (DEFAULT_REQUESTS_IN_FLIGHT + 2) * batch_size
    held.refresh_from_db()
    assert held.status == BackfillDay.Status.DONE and held.hits_resent > 0


@pytest.mark.django_db(transaction=True)
def test_a_sigterm_to_the_cluster_alone_stops_its_loaders_cleanly(orm_broker, fake_matomo, fast_preset):
    """docker stop / Kubernetes send SIGTERM to PID 1 only, the qcluster: its loaders stop,
    write their final counters, mark their runs stopped, and the cluster exits."""
    target = make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    cluster = orm_broker.start_cluster(workers=2)
    runs = [slow_run(target, fast_preset) for _ in range(2)]
    for run in runs:
        enqueue_run(run)
    wait_until(lambda: all(running(run) for run in runs), timeout=90, what="the loaders to start", interval=0.2)
    wait_until(lambda: fake_matomo.stats()["recorded"] > 0, timeout=90, what="a hit recorded", interval=0.2)
    os.kill(cluster.pid, signal.SIGTERM)  # the main process only, not its group
    cluster.wait(timeout=60)
    for run in runs:
        run.refresh_from_db()
        assert run.status == Run.Status.STOPPED, run.end_reason
        assert run.end_reason == "Stopped: the loader process was asked to exit."
    totals = [run.stats["totals"] for run in runs]
    assert sum(t["accepted"] for t in totals) == fake_matomo.stats()["recorded"]  # final counters written
    assert all(t["in_flight"] == 0 for t in totals)
