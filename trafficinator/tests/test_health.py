"""/health/, `manage.py health` and qinfo against real django-q2 clusters, on the ORM
broker (the suite's database) and on Redis (db 13 of a local Redis, when one runs)."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from trafficinator import health
from trafficinator.testing import subprocess_env, wait_until

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")
REDIS_TEST_URL = "redis://127.0.0.1:6379/13"  # this suite's own Redis database number


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, MANAGE, *args], env=env, capture_output=True, text=True, timeout=120, cwd=settings.BASE_DIR
    )


class Clusters:
    """A default-queue and a loaders-queue qcluster, like scripts/run starts them."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**env, "Q_WORKERS": "1", "LOADER_WORKERS": "3"}
        self.env.pop("Q_CLUSTER_NAME", None)
        self.default = self._start()
        self.loaders = self._start(Q_CLUSTER_NAME="loaders")

    def _start(self, **extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, MANAGE, "qcluster"],
            env={**self.env, **extra},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=settings.BASE_DIR,
        )

    @property
    def expected(self) -> dict[int, str]:
        return {self.default.pid: "trafficinator", self.loaders.pid: "loaders"}

    def stop(self) -> None:
        for process in (self.default, self.loaders):
            process.send_signal(signal.SIGTERM)
        for process in (self.default, self.loaders):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def seen(body: dict) -> dict[int, str]:
    """pid -> queue of the clusters in a report that have started their workers (a
    starting cluster saves its first heartbeat before it spawns them)."""
    return {cluster["pid"]: cluster["queue"] for cluster in body.get("clusters") or [] if cluster["workers"]}


@pytest.mark.django_db
def test_health_is_503_and_says_why_when_no_worker_cluster_runs(client):
    response = client.get("/health/")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "error"
    assert body["database"]["ok"] and body["broker"] == {"ok": True, "type": "ORM default"}
    assert body["clusters"] == []
    assert body["problems"] == [
        "no worker cluster serves the trafficinator queue",
        "no worker cluster serves the loaders queue",
    ]
    assert body["loader_slots"] == {"total": 0, "busy": 0, "free": 0}


@pytest.mark.django_db
def test_health_counts_tasks_waiting_on_each_queue(client):
    from django_q.tasks import async_task

    async_task("math.floor", 1.5, cluster="loaders")
    async_task("math.floor", 2.5)
    async_task("math.floor", 3.5)
    queues = client.get("/health/").json()["queues"]
    assert (queues["trafficinator"]["waiting"], queues["loaders"]["waiting"]) == (2, 1)
    assert queues["loaders"]["taken"] == 0


@pytest.mark.django_db
def test_health_answers_probes_by_ip_over_http_under_production_settings(client, settings):
    settings.ALLOWED_HOSTS = ["traffic.example.com"]
    settings.SECURE_SSL_REDIRECT = True
    # A probe calls the pod's IP over plain http: no 400 for the host, no redirect to https.
    assert client.get("/health/web/", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/health/", HTTP_HOST="10.1.2.3:8000").status_code == 503  # no clusters here
    # Everything else still checks the host and redirects.
    assert client.get("/admin/login/", HTTP_HOST="10.1.2.3:8000").status_code == 400
    assert client.get("/admin/login/", HTTP_HOST="traffic.example.com").status_code == 301


class UnreachableDatabase:
    vendor = "postgresql"

    def cursor(self):
        from django.db import OperationalError

        raise OperationalError("connection to server at 127.0.0.1 port 5432 failed: Connection refused")


def test_health_is_503_when_the_database_does_not_answer(client, monkeypatch, caplog):
    monkeypatch.setattr(health, "connection", UnreachableDatabase())
    web = client.get("/health/web/")
    assert web.status_code == 503
    assert web.json() == {"status": "error", "database": {"ok": False, "error": "OperationalError"}}
    full = client.get("/health/")
    assert full.status_code == 503 and full.json()["problems"] == ["the database does not answer"]
    assert "Connection refused" in caplog.text  # the details go to the log, not the public reply


class UnreachableBroker:
    """The ORM broker whose ping fails as a broker that is down does; the rest delegates."""

    def __init__(self, broker) -> None:
        self.broker = broker

    def ping(self):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    def __getattr__(self, name: str):
        return getattr(self.broker, name)


@pytest.mark.django_db
def test_health_is_503_and_names_the_broker_when_the_broker_does_not_answer(client, monkeypatch, caplog):
    real_get_broker = health.get_broker
    monkeypatch.setattr(health, "get_broker", lambda *args: UnreachableBroker(real_get_broker(*args)))
    response = client.get("/health/")
    body = response.json()
    assert response.status_code == 503 and body["status"] == "error"
    assert body["database"]["ok"] and body["broker"] == {"ok": False, "error": "ConnectionError"}
    assert body["problems"][0] == "the task broker does not answer"
    assert "waiting" not in body["queues"]["loaders"]  # a broker that is down is not asked for depths
    assert "Connection refused" in caplog.text and "Connection refused" not in response.content.decode()
    # `manage.py health` (in this process, so the broker is still down) exits 1 saying why.
    with pytest.raises(CommandError, match="Unhealthy: the task broker does not answer") as error:
        call_command("health", stdout=io.StringIO())
    assert error.value.returncode == 1


@pytest.mark.django_db(transaction=True)
def test_clusters_on_the_orm_broker_are_reported_with_their_queue_workers_and_host():
    clusters = Clusters(subprocess_env())
    try:
        healthy, body = wait_until(
            lambda: (result := health.report()) and seen(result[1]) == clusters.expected and result,
            90,
            what="both clusters in /health/",
            interval=0.3,
        )
        assert healthy and body["status"] == "ok" and body["problems"] == []
        by_queue = {cluster["queue"]: cluster for cluster in body["clusters"]}
        assert by_queue["trafficinator"]["workers"] == 1 and by_queue["loaders"]["workers"] == 3
        assert {cluster["host"] for cluster in body["clusters"]} == {socket.gethostname()}
        assert all(cluster["seen_seconds_ago"] < 3 for cluster in body["clusters"])
        assert body["loader_slots"] == {"total": 3, "busy": 0, "free": 3}

        # qinfo (django-q2's own view, through blessed) sees the same two clusters.
        env = subprocess_env()
        info = manage("qinfo", env=env)
        assert info.returncode == 0, info.stderr
        assert re.search(r"Clusters\D*2\D", info.stdout), info.stdout
        # qmonitor's one screen lists each cluster by the end of its id (blessed drops the
        # cursor moves when stdout is not a terminal, leaving one cell per line).
        monitor = manage("qmonitor", "--run-once", env=env)
        assert monitor.returncode == 0, monitor.stderr
        cells = [line.strip() for line in monitor.stdout.splitlines()]
        assert "ORM default" in cells, monitor.stdout
        assert {str(stat.cluster_id)[-8:] for stat in health.cluster_stats()} <= set(cells), monitor.stdout
        assert len(health.cluster_stats()) == 2
        # A worker container's check: a live loaders cluster on this host.
        assert manage("health", "--local-cluster", "--queue", "loaders", env=env).returncode == 0
    finally:
        clusters.stop()
    # Stopped clusters drop out within django-q2's 3 s heartbeat lifetime.
    healthy, body = wait_until(
        lambda: (result := health.report()) and not result[1]["clusters"] and result,
        30,
        what="no cluster in /health/",
        interval=0.3,
    )
    assert not healthy
    # A stopping cluster can save one last heartbeat after the check above saw none (seen
    # in CI on a loaded box): ask again until that one ages out too.
    local = wait_until(
        lambda: (
            (done := manage("health", "--local-cluster", "--queue", "loaders", env=subprocess_env()))
            and done.returncode == 1
            and done
        ),
        30,
        what="the local check to find no loaders cluster",
        interval=0.5,
    )
    assert "No live django-q2 cluster serving the loaders queue" in local.stderr


@pytest.mark.django_db(transaction=True)
def test_clusters_on_the_redis_broker_are_reported_too():
    redis = pytest.importorskip("redis")
    try:
        redis.from_url(REDIS_TEST_URL, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        pytest.skip(f"needs a Redis server at {REDIS_TEST_URL}")
    env = subprocess_env(REDIS_URL=REDIS_TEST_URL)
    clusters = Clusters(env)
    try:

        def report():
            result = manage("health", env=env)
            body = json.loads(result.stdout or "{}")
            return (result, body) if seen(body) == clusters.expected else None

        result, body = wait_until(report, 120, what="both clusters in `manage.py health` on Redis", interval=0.3)
        assert result.returncode == 0, result.stderr
        assert body["broker"]["ok"] and body["broker"]["type"].startswith("Redis")
        assert body["loader_slots"] == {"total": 3, "busy": 0, "free": 3}
        assert body["queues"]["loaders"]["waiting"] == 0
    finally:
        clusters.stop()
