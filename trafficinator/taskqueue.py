"""Our django-q2 brokers: work spreads over clusters, and a task taken by a cluster that
died is delivered again within a bounded time, on the ORM broker and on Redis alike.

Two things django-q2 does not do for us (read in django_q 1.11: cluster.py, pusher.py,
brokers/orm.py, brokers/redis_broker.py):

* **Prefetch.** A cluster's pusher takes tasks off the broker ahead of its workers: it puts
  them in the cluster's own queue (``queue_limit`` long, workers² by default) and blocks
  holding one more. Even with ``queue_limit`` 1 a cluster of N idle workers takes N + 2
  tasks, so one cluster took all four first days of a backfill while another idled. Our
  brokers' ``dequeue`` takes a task only while the cluster has a worker with nothing to
  do (``free_workers``): a busy cluster leaves the next task on the broker for an idle one.
* **Re-delivery.** The ORM broker hides a taken task for ``retry`` seconds and delivers it
  again if nobody acknowledged it; for the loaders queue that is the longest run plus an
  hour (7 days), because a run's task is unacknowledged for as long as the run lasts. The
  Redis broker pops the task (BLPOP): if the cluster dies before the task ends, it is gone.
  So our own source of truth decides instead: the database says which runs are queued and
  which backfill days should be sending. An idle cluster's pusher compares that with what
  waits on the broker every ``SWEEP_SECONDS`` and enqueues again whatever has been missing
  from the broker for ``REDELIVER_AFTER`` (settings.TASK_REDELIVER_AFTER_SECONDS). A task
  delivered twice is harmless: runs and days are claimed by a conditional UPDATE, and the
  second copy finds its work taken and returns.

Worker state is shared between the cluster's processes through shared memory made by the
sentinel (the first broker of the process tree) and inherited by the pusher and the
workers it forks: the workers mark themselves busy in django-q2's ``pre_execute`` signal
and idle in ``post_execute_in_worker``; a worker that died busy is noticed by its pid.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable
from typing import Any

from django import db
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from django_q.brokers import Broker, orm, redis_broker
from django_q.conf import Conf
from django_q.signals import post_execute_in_worker, pre_execute
from django_q.signing import SignedPackage

logger = logging.getLogger(__name__)

RUN_TASK = "runs.tasks.execute_run"
DAY_TASK = "backfill.tasks.run_backfill_day"
LOADER_QUEUE = "loaders"
# A task counted as taken but never started (its worker died between the queue and the
# task) stops counting after this long while the cluster has an idle worker.
HELD_LEAK_SECONDS = 10.0
# Most tasks read from the broker when comparing it with the database.
PEEK_LIMIT = 10_000

TaskKey = tuple[str, tuple[Any, ...]]


def redeliver_after() -> float:
    return float(settings.TASK_REDELIVER_AFTER_SECONDS)


def sweep_seconds() -> float:
    """How often an idle cluster compares the database with the broker."""
    return max(0.5, min(10.0, redeliver_after() / 3))


class WorkerSlots:
    """Which of this cluster's workers run a task, and how many tasks the pusher took
    that no worker has started yet. One per process tree (made where the first broker
    is made: the sentinel, before it forks the workers and the pusher)."""

    def __init__(self, size: int) -> None:
        self.lock = multiprocessing.Lock()
        self.busy = multiprocessing.Array("i", size, lock=False)  # pids, 0 = free slot
        self.held = multiprocessing.Value("i", 0, lock=False)
        self.changed = multiprocessing.Value("d", time.time(), lock=False)

    def started(self, pid: int) -> None:
        with self.lock:
            self.held.value = max(0, self.held.value - 1)
            self.changed.value = time.time()
            for index, value in enumerate(self.busy):
                if value == 0:
                    self.busy[index] = pid
                    break

    def finished(self, pid: int) -> None:
        with self.lock:
            self.changed.value = time.time()
            for index, value in enumerate(self.busy):
                if value == pid:
                    self.busy[index] = 0

    def taken(self, count: int) -> None:
        with self.lock:
            self.held.value += count
            self.changed.value = time.time()

    def dropped(self) -> None:
        """A taken task that will never reach a worker (django-q2 failed to read it)."""
        with self.lock:
            self.held.value = max(0, self.held.value - 1)
            self.changed.value = time.time()

    def free_workers(self, workers: int) -> int:
        """Workers with nothing to do and no task on its way to them."""
        with self.lock:
            busy = 0
            for index, pid in enumerate(self.busy):
                if pid and not _alive(pid):
                    self.busy[index] = 0  # died while busy: its slot is free again
                elif pid:
                    busy += 1
            idle = workers - busy
            if self.held.value and idle > 0 and time.time() - self.changed.value > HELD_LEAK_SECONDS:
                # An idle worker takes a queued task within milliseconds: a task still
                # counted as held after this long was lost on its way (worker died).
                logger.warning("Task queue: %d task(s) taken but never started; no longer counted.", self.held.value)
                self.held.value = 0
            return max(0, idle - self.held.value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_slots: WorkerSlots | None = None


def slots() -> WorkerSlots:
    global _slots
    if _slots is None:
        _slots = WorkerSlots(size=max(8, int(Conf.WORKERS) * 4))
    return _slots


def _on_pre_execute(sender: Any, **kwargs: Any) -> None:
    if _slots is not None:
        _slots.started(os.getpid())


def _on_post_execute(sender: Any, **kwargs: Any) -> None:
    if _slots is not None:
        _slots.finished(os.getpid())


pre_execute.connect(_on_pre_execute, dispatch_uid="trafficinator.taskqueue.pre_execute")
post_execute_in_worker.connect(_on_post_execute, dispatch_uid="trafficinator.taskqueue.post_execute")


# --- what the database says should be on the broker --------------------------------------


def expected_tasks(queue: str) -> set[TaskKey]:
    """Tasks that should exist for ``queue``: every queued shard of a run that goes on
    (loaders queue: one task per shard, ``execute_run(run_id, shard)``); the next day of
    every backfill lane no live worker holds (default queue)."""
    if queue == LOADER_QUEUE:
        from runs.models import Run, RunShard

        shards = RunShard.objects.filter(
            status=RunShard.Status.QUEUED, run__status__in=[Run.Status.QUEUED, Run.Status.RUNNING]
        )
        return {(RUN_TASK, (run_id, index)) for run_id, index in shards.values_list("run_id", "index")}
    from backfill.models import BackfillPlan

    wanted: set[TaskKey] = set()
    for plan in BackfillPlan.objects.filter(status=BackfillPlan.Status.RUNNING):
        wanted.update((DAY_TASK, (day.pk,)) for day in plan.next_days())
    return wanted


def task_key(package: Any) -> TaskKey | None:
    try:
        task = SignedPackage.loads(package)
    except Exception:  # a package we cannot read is not one of ours to compare
        return None
    func = task.get("func")
    if not isinstance(func, str):
        return None
    return func, tuple(task.get("args") or ())


def enqueue_again(key: TaskKey) -> None:
    func, args = key
    if func == RUN_TASK:
        from runs.tasks import enqueue_loader

        enqueue_loader(*args)
    elif func == DAY_TASK:
        from backfill.tasks import enqueue_day

        enqueue_day(*args)


class Redelivery:
    """Per pusher: since when each expected task has been missing from the broker."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.missing_since: dict[TaskKey, float] = {}
        self.next_sweep = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self.next_sweep

    def sweep(self, waiting: Iterable[TaskKey]) -> list[TaskKey]:
        """Enqueue again what has been missing for REDELIVER_AFTER; returns what was."""
        now = time.monotonic()
        self.next_sweep = now + sweep_seconds()
        missing = expected_tasks(self.queue) - set(waiting)
        self.missing_since = {key: self.missing_since.get(key, now) for key in missing}
        bound = redeliver_after()
        again: list[TaskKey] = []
        for key, since in self.missing_since.items():
            if now - since < bound:
                continue
            self.missing_since[key] = now
            # One cluster re-delivers it, even when several idle ones see it missing.
            if cache.add(f"taskqueue:redeliver:{key[0]}:{key[1]}", 1, timeout=max(1, int(bound))):
                enqueue_again(key)
                again.append(key)
        if again:
            logger.warning(
                "Task queue %s: %d task(s) taken by a cluster but neither started nor waiting for "
                "%.0f s (cluster gone or busy), delivered again: %s",
                self.queue,
                len(again),
                bound,
                ", ".join(f"{func.rsplit('.', 1)[-1]}{args}" for func, args in again),
            )
        return again


class GatedDequeue(Broker):
    """Mixed into a django-q2 broker, before it: ``dequeue`` takes a task only for a free
    worker of this cluster, and while it has one, re-delivers what a gone cluster took.
    A broker adds ``waiting_tasks``, what waits on it."""

    list_key: str

    def __init__(self, list_key: str | None = None) -> None:
        super().__init__(list_key=list_key)
        slots()  # made here, in the sentinel, before it forks the workers and the pusher

    def dequeue(self):
        if not self._gate():
            return None
        return self._took(super().dequeue())

    def fail(self, task_id):
        slots().dropped()
        return super().fail(task_id)

    def _queue_name(self) -> str:
        return str(Conf.CLUSTER_NAME)

    def waiting_tasks(self) -> list[TaskKey]:
        raise NotImplementedError

    def _gate(self) -> bool:
        state = slots()
        if state.free_workers(int(Conf.WORKERS)) <= 0:
            time.sleep(Conf.POLL)
            return False
        redelivery = getattr(self, "_redelivery", None)
        if redelivery is None:
            redelivery = self._redelivery = Redelivery(self._queue_name())
        if redelivery.due():
            db.close_old_connections()
            try:
                redelivery.sweep(key for key in self.waiting_tasks())
            except Exception:
                logger.exception("Task queue: could not compare the broker with the database")
        return True

    def _took(self, tasks: list | None) -> list | None:
        if tasks:
            slots().taken(len(tasks))
        return tasks


class ORMBroker(GatedDequeue, orm.ORM):
    def waiting_tasks(self) -> list[TaskKey]:
        rows = (
            self.get_connection()
            .filter(key=self.list_key, lock__lte=timezone.now())
            .values_list("payload", flat=True)[:PEEK_LIMIT]
        )
        return [key for key in map(task_key, rows) if key is not None]


class RedisBroker(GatedDequeue, redis_broker.Redis):
    def waiting_tasks(self) -> list[TaskKey]:
        rows = self.connection.lrange(self.list_key, 0, PEEK_LIMIT - 1)
        return [key for key in map(task_key, rows) if key is not None]


# --- shutdown: the cluster's SIGTERM reaches its loaders ---------------------------------


def loader_processes(root: int) -> list[int]:
    """Pids of the `run_loader` processes below ``root`` (its workers' children), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if b"run_loader" in argv:
            found.append(pid)
    return found


def stop_loaders(root: int | None = None) -> list[int]:
    """SIGTERM every loader of this cluster: each stops sending, writes its final counters
    and marks its run stopped within seconds; its worker task then returns and django-q2's
    own shutdown (which waits for running tasks) can finish."""
    stopped = []
    for pid in loader_processes(root or os.getpid()):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        stopped.append(pid)
    if stopped:
        logger.warning("Cluster shutting down: asked %d loader(s) to stop (pids %s).", len(stopped), stopped)
    return stopped


def install_loader_shutdown() -> None:
    """docker stop, Kubernetes and `kill` send SIGTERM to the cluster's main process only
    (PID 1 in a container). django-q2 then waits for every running task, and a loader's task
    runs as long as its run: nothing would end, and after the grace period the container
    is killed and its runs are lost. So the cluster's signal handler first passes SIGTERM
    on to its loaders, then stops as django-q2 does."""
    from django_q.cluster import Cluster

    if getattr(Cluster.sig_handler, "stops_loaders", False):
        return
    original = Cluster.sig_handler

    def sig_handler(self: Any, signum: int, frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            stop_loaders()
        original(self, signum, frame)

    sig_handler.stops_loaders = True  # type: ignore[attr-defined]
    Cluster.sig_handler = sig_handler
