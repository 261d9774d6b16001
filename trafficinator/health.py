"""What /health/ and `manage.py health` report: the database, the broker, the django-q2
clusters seen alive, each queue's depth and the loader slots.

The clusters come from django-q2's own heartbeats ("Stat"): every cluster saves one every
~0.5 s that lives 3 s, in Redis with the Redis broker and in the Django cache with the
ORM broker (so settings.CACHES is a cache all processes share). A Stat knows its host,
pid, workers and status, but not which queue the cluster serves nor which workers are
busy, and /health/ needs both to count loader slots: QueueStat adds them, and
install_queue_stats() makes the cluster save QueueStats (called from the app's ready()).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.humanhash import humanize
from django_q.status import Stat

logger = logging.getLogger(__name__)

LOADER_QUEUE = "loaders"


def default_queue() -> str:
    """The short-task queue is named after the cluster (Q_CLUSTER["name"])."""
    return str(settings.Q_CLUSTER["name"])


class QueueStat(Stat):
    """django-q2's cluster heartbeat plus the queue it serves and its busy workers.

    A django-q2 worker holds a positive timer (its task's timeout counting down) while it
    runs a task and -1 when idle; the sentinel checks the same timers in its guard loop."""

    def __init__(self, sentinel) -> None:
        super().__init__(sentinel)
        self.queue = Conf.CLUSTER_NAME
        self.busy_workers = sum(
            1 for process in sentinel.pool if getattr(process, "timer", None) and process.timer.value > 0
        )


def install_queue_stats() -> None:
    """Make django-q2's sentinel save QueueStats. It builds its Stat through the name
    `Stat` in django_q.cluster; a QueueStat is still a Stat, so qinfo and qmonitor read it
    as before. tests/test_health.py starts real clusters to check this keeps working."""
    import django_q.cluster

    django_q.cluster.Stat = QueueStat


def _failure(exc: Exception, what: str) -> dict[str, Any]:
    # The endpoint is public: the reply names the error class, the log has the message.
    logger.warning("Health check: %s failed: %s", what, exc)
    return {"ok": False, "error": type(exc).__name__}


def check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means down; say which
        return _failure(exc, "database")
    return {"ok": True, "vendor": connection.vendor}


def check_broker() -> dict[str, Any]:
    try:
        broker = get_broker()
        broker.ping()
        return {"ok": True, "type": broker.info()}
    except Exception as exc:
        return _failure(exc, "broker")


def cluster_stats() -> list[Stat]:
    """Every cluster whose heartbeat has not expired (django-q2 keeps each for 3 s)."""
    return Stat.get_all(broker=get_broker())


def describe_cluster(stat: Stat, now=None) -> dict[str, Any]:
    now = now or timezone.now()
    return {
        "id": humanize(stat.cluster_id.hex),
        "queue": getattr(stat, "queue", None),
        "host": stat.host,
        "pid": stat.pid,
        "status": str(stat.status),
        "workers": len(stat.workers),
        "busy_workers": getattr(stat, "busy_workers", None),
        "uptime_seconds": round((now - stat.tob).total_seconds(), 1) if stat.tob else None,
        "seen_seconds_ago": round((now - stat.timestamp).total_seconds(), 1),
    }


def queue_depth(queue: str) -> dict[str, Any]:
    """Tasks waiting on the broker, and (ORM broker) tasks taken by a cluster but not yet
    acknowledged: running, or held by a cluster until one of its workers is free."""
    broker = get_broker(queue)
    taken = broker.lock_size()
    return {"waiting": broker.queue_size(), "taken": taken}


def report() -> tuple[bool, dict[str, Any]]:
    """(healthy, the JSON body). Healthy means the database and the broker answer and at
    least one cluster serves each queue: without them no run or backfill would start."""
    body: dict[str, Any] = {"database": check_database()}
    problems: list[str] = []
    if not body["database"]["ok"]:
        # The ORM broker and the cache live in the database: nothing else can answer.
        problems.append("the database does not answer")
        body.update(status="error", problems=problems)
        return False, body
    body["broker"] = check_broker()
    if not body["broker"]["ok"]:
        problems.append("the task broker does not answer")
    clusters: list[dict[str, Any]] | None
    try:
        clusters = sorted(
            (describe_cluster(stat) for stat in cluster_stats()), key=lambda c: (str(c["queue"]), c["host"], c["pid"])
        )
    except Exception as exc:
        body["clusters"] = _failure(exc, "reading the cluster heartbeats")
        problems.append("the cluster heartbeats cannot be read")
        clusters = None
    else:
        body["clusters"] = clusters
    queues: dict[str, Any] = {}
    for queue in (default_queue(), LOADER_QUEUE):
        serving = [c for c in clusters or [] if c["queue"] == queue]
        entry: dict[str, Any] = {"clusters": len(serving), "workers": sum(c["workers"] for c in serving)}
        if body["broker"]["ok"]:
            try:
                entry.update(queue_depth(queue))
            except Exception as exc:
                entry["depth"] = _failure(exc, f"the {queue} queue depth")
        if clusters is not None and not serving:
            problems.append(f"no worker cluster serves the {queue} queue")
        queues[queue] = entry
    body["queues"] = queues
    loaders = [c for c in clusters or [] if c["queue"] == LOADER_QUEUE]
    total = sum(c["workers"] for c in loaders)
    busy = sum(c["busy_workers"] or 0 for c in loaders)
    body["loader_slots"] = {"total": total, "busy": busy, "free": max(total - busy, 0)}
    body["status"] = "error" if problems else "ok"
    body["problems"] = problems
    return not problems, body


def local_clusters(queue: str | None = None) -> list[dict[str, Any]]:
    """The live clusters on this host (for a worker container's health check)."""
    host = socket.gethostname()
    return [
        cluster
        for cluster in (describe_cluster(stat) for stat in cluster_stats())
        if cluster["host"] == host and (queue is None or cluster["queue"] == queue)
    ]
