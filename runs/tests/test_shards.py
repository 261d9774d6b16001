"""Sharded runs: disjoint deterministic slices, one set of figures, stop and hand-back per
shard. Loaders run as real ``run_loader`` processes (monkey-patched, as in production) on
the suite's database; the two-cluster test runs real qcluster processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from runs.loader import STREAM_PARTS, shard_of, shard_parts, split_evenly, target_quotas
from runs.models import MAX_SHARDS, Run, RunShard
from runs.tasks import LOADER_QUEUE
from trafficinator.sending.telemetry import LatencyHistogram, RunStats, RunTelemetry, merge_stats
from trafficinator.testing import (
    finish_loader,
    make_local_target,
    make_target,
    start_loader,
    subprocess_env,
    wait_until,
)
from trafficinator.traffic import Profile, live_visits

MANAGE = str(Path(settings.BASE_DIR) / "manage.py")
LOADER_WAIT = 90.0  # seconds: a loader process starts slowly on a loaded machine


def hit_keys(server) -> Counter:
    """What identifies a hit whatever run sent it: its visitor, its own random and its
    action (order ids carry the run's id, so they are left out)."""
    return Counter(
        (hit.params.get("_id"), hit.params.get("rand"), hit.params.get("url") or hit.params.get("action_name"))
        for hit in server.hits_for(1)
    )


def run_shards(run: Run, *extra: str) -> list[subprocess.Popen]:
    loaders = []
    for index in range(run.shard_count):
        token = run.claim(pid=0, host=f"test-{index}", shard=index)
        assert token is not None
        loaders.append(start_loader(run, token, *extra))
    return loaders


# --- the slices --------------------------------------------------------------------------------


def test_slices_are_disjoint_keep_visitors_together_and_add_up_to_the_stream():
    from datetime import UTC, datetime

    # 3,000 visits in about three and a half hours: members come back (30 minutes apart).
    profile = Profile(visits_per_day=20_000, returning_visitor_share=0.5)
    start = datetime(2026, 3, 2, 12, tzinfo=UTC)

    def stream(owned=None):
        return live_visits(profile, seed=7, start=start, key="1", parts=STREAM_PARTS, owned=owned)

    whole = [visit for _, visit in zip(range(3000), stream(), strict=False)]
    for count in (1, 3, 8):
        shards = [[] for _ in range(count)]
        for index in range(count):
            for visit in stream(shard_parts(index, count)):
                if visit.index >= 3000:
                    break
                assert shard_of(visit, count) == index
                shards[index].append(visit)
        # The same visits, hit for hit, whatever the number of shards.
        assert sorted((visit for shard in shards for visit in shard), key=lambda v: v.index) == whole
        visitors = [{visit.cid for visit in shard} for shard in shards]
        assert sum(map(len, visitors)) == len(set().union(*visitors))  # no visitor in two shards
    assert sum(visit.returning for visit in whole) > 600  # returning visitors were in play
    assert len({visit.part for visit in whole}) == STREAM_PARTS


def test_a_shard_generates_only_its_own_share():
    from datetime import UTC, datetime

    profile = Profile(visits_per_day=86_400)
    start = datetime(2026, 3, 2, 12, tzinfo=UTC)
    mine = list(zip(range(500), live_visits(profile, seed=7, start=start, key="1", parts=64, owned=[5]), strict=False))
    assert {visit.part for _, visit in mine} == {5}
    # Stream positions run on over the other parts' visits: about 64 apart.
    assert 40 * 499 < mine[-1][1].index - mine[0][1].index < 90 * 499


def test_concurrency_and_visit_limits_split_exactly():
    assert [split_evenly(10, index, 4) for index in range(4)] == [3, 3, 2, 2]
    assert target_quotas(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(target_quotas(1001, [5, 3, 2])) == 1001


def test_shard_figures_merge_exactly_like_one_loaders():
    """Two shards' snapshots merge into what one telemetry that saw every hit reports."""
    one, shards = RunTelemetry(["t"]), [RunTelemetry(["t"]), RunTelemetry(["t"])]
    for i in range(2000):
        latency = 0.001 * (1 + (i * 37) % 400)
        for telemetry in (one, shards[i % 2]):
            target = telemetry["t"]
            target.start_hits(1)
            target.record_outcome("accepted", latency=latency, hits=1)
            target.record_wait(latency / 10)
    merged = merge_stats([telemetry.snapshot() for telemetry in shards])
    whole = one.snapshot()
    for scope in ("totals",):
        for name in ("sent", "accepted", "errors", "in_flight"):
            assert merged[scope][name] == whole[scope][name]
        for summary in ("latency_ms", "wait_ms"):
            for q in ("p50", "p95", "p99", "max", "count"):
                assert merged[scope][summary][q] == pytest.approx(whole[scope][summary][q], rel=1e-3)
    assert merged["targets"]["t"]["latency_buckets"] == whole["targets"]["t"]["latency_buckets"]
    assert LatencyHistogram.from_summary({}, None).count == 0


# --- live shards against the fake Matomo -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_shards_send_exactly_the_one_shard_run_and_count_it_as_one(fake_matomo, fast_preset):
    target = make_local_target(fake_matomo)
    single = Run.objects.create_run(preset=fast_preset, targets=[target], max_visits=60, seed=5)
    (loader,) = run_shards(single)
    finish_loader(loader)
    expected = hit_keys(fake_matomo)
    fake_matomo.reset()

    run = Run.objects.create_run(preset=fast_preset, targets=[target], max_visits=60, seed=5, shards=2)
    loaders = run_shards(run)
    for loader in loaders:
        finish_loader(loader)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED and "Visit limit of 60" in run.end_reason
    assert hit_keys(fake_matomo) == expected  # the same visits, hit for hit, none twice
    shards = run.shard_list()
    assert [shard.status for shard in shards] == [Run.Status.COMPLETED] * 2
    assert all(shard.stats["totals"]["sent"] > 0 for shard in shards)  # both carried a slice
    totals = run.stats["totals"]
    stats = fake_matomo.stats()
    assert totals["visits_started"] == 60 == sum(s.stats["totals"]["visits_started"] for s in shards)
    assert totals["sent"] == totals["accepted"] == stats["recorded"] == sum(expected.values())
    assert totals["latency_ms"]["count"] == totals["accepted"]


@pytest.mark.django_db(transaction=True)
def test_stop_reaches_every_shard_and_a_handed_back_shard_continues_exactly(fake_matomo, fast_preset):
    """SIGTERM to one shard's loader (its worker shutting down) hands the shard back; a
    new loader continues it where it stood: the run sends exactly the one-shard run's
    hits, none twice. Then a stop ends every shard."""
    target = make_local_target(fake_matomo)
    run = Run.objects.create_run(preset=fast_preset, targets=[target], max_visits=120, seed=8, shards=2)
    first, second = run_shards(run, "--hand-back")
    try:
        wait_until(
            lambda: RunShard.objects.get(run=run, index=0).stats.get("totals", {}).get("visits_started", 0) >= 10,
            timeout=LOADER_WAIT,
            what="shard 1 to send",
        )
        first.send_signal(signal.SIGTERM)
        finish_loader(first)
        shard = wait_until(
            lambda: RunShard.objects.filter(run=run, index=0, status=Run.Status.QUEUED).first(),
            timeout=LOADER_WAIT,
            what="hand-back",
        )
        assert shard.stream["continue"]
        token = run.claim(pid=0, host="test-again", shard=0)
        assert token is not None
        again = start_loader(run, token)
        finish_loader(again)
        finish_loader(second)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED
    totals = run.stats["totals"]
    keys = hit_keys(fake_matomo)
    assert max(keys.values()) == 1  # nothing sent twice
    detail = [(s.index, s.stream, s.stats["totals"]) for s in run.shard_list()]
    assert totals["visits_started"] == 120, detail
    assert totals["accepted"] == fake_matomo.stats()["recorded"] == sum(keys.values())
    assert len(fake_matomo.visits(1)) >= 120  # every visit arrived (a cut one may show as two)
    fake_matomo.reset()

    single = Run.objects.create_run(preset=fast_preset, targets=[target], max_visits=120, seed=8)
    (loader,) = run_shards(single)
    finish_loader(loader)
    assert hit_keys(fake_matomo) == keys

    stopping = Run.objects.create_run(preset=fast_preset, targets=[target], duration_seconds=600, shards=2)
    loaders = run_shards(stopping)
    try:
        wait_until(
            lambda: all(s.stats.get("totals", {}).get("sent") for s in stopping.shards.all()),
            timeout=LOADER_WAIT,
            what="both to send",
        )
        assert stopping.request_stop("Stopped by the test.")
        asked = time.time()
        for loader in loaders:
            finish_loader(loader, timeout=30)
    finally:
        for loader in loaders:
            if loader.poll() is None:
                loader.kill()
    stopping.refresh_from_db()
    assert stopping.status == Run.Status.STOPPED and stopping.end_reason == "Stopped by the test."
    assert max(hit.time for hit in fake_matomo.hits_for(1)) <= asked + 2.0  # every shard stopped sending
    assert {shard.status for shard in stopping.shards.all()} == {Run.Status.STOPPED}


def test_shard_parts_deal_every_part_to_exactly_one_shard():
    for count in (1, 2, 3, 7, MAX_SHARDS):
        dealt = [part for index in range(count) for part in shard_parts(index, count)]
        assert sorted(dealt) == list(range(STREAM_PARTS))
        sizes = [len(shard_parts(index, count)) for index in range(count)]
        assert max(sizes) - min(sizes) <= 1


# --- real worker clusters --------------------------------------------------------------------


def start_cluster(workers: int) -> subprocess.Popen:
    """A loader cluster in its own session, so the test can end it as a machine going
    down ends everything on it (SIGTERM to every process: cluster, workers, loaders)."""
    return subprocess.Popen(
        [sys.executable, MANAGE, "qcluster"],
        env=subprocess_env(Q_CLUSTER_NAME="loaders", LOADER_WORKERS=str(workers)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def end_cluster(cluster: subprocess.Popen, until=None) -> None:
    """Like a machine shutting down: SIGTERM to every process of the cluster, then, once
    ``until()`` holds (or at once), SIGKILL to what is left."""
    try:
        if until is not None:
            os.killpg(cluster.pid, signal.SIGTERM)
            wait_until(until, timeout=LOADER_WAIT, what="the cluster's loaders to end")
        os.killpg(cluster.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    cluster.wait(timeout=30)


def session_of(pid: int | None) -> int | None:
    try:
        return os.getsid(pid) if pid else None
    except ProcessLookupError:
        return None


@pytest.fixture
def quick_preset(db):
    from trafficinator.testing import make_preset

    # ~60 short visits a second at any hour: a few hundred visits take seconds.
    return make_preset(
        name="Quick",
        visits_per_day=5_184_000,
        daily_curve="flat",
        pause_min=0.0,
        pause_max=0.05,
        visit_duration_min=0.0,
        visit_duration_max=0.01,
        concurrency=20,
    )


def loader_clusters_alive() -> int:
    from trafficinator import health

    return sum(1 for stat in health.cluster_stats() if getattr(stat, "queue", None) == LOADER_QUEUE)


@pytest.mark.django_db(transaction=True)
def test_worker_clusters_carry_the_shards_and_a_lost_cluster_hands_its_shard_over(fake_matomo, quick_preset):
    """PostgreSQL: two clusters (two machines) carry one shard each; ending the first
    cluster (every process of it gets SIGTERM) hands its shard to the second, which
    continues it exactly. SQLite (one machine): one cluster carries both shards; ending it
    and starting a new one continues both. Either way: the run's totals are what the
    server saw, no hit twice, and the same hits as the one-shard run of the seed."""
    from runs.tasks import enqueue_loader

    postgres = connection.vendor == "postgresql"
    clusters = [start_cluster(1 if postgres else 2)]
    if postgres:
        clusters.append(start_cluster(2))
    try:
        target = make_local_target(fake_matomo)
        single = Run.objects.create_run(preset=quick_preset, targets=[target], max_visits=600, seed=21)
        (loader,) = run_shards(single)  # while the clusters start
        finish_loader(loader)
        expected = hit_keys(fake_matomo)
        fake_matomo.reset()

        run = Run.objects.create_run(preset=quick_preset, targets=[target], max_visits=600, seed=21, shards=2)
        wait_until(lambda: loader_clusters_alive() == len(clusters), timeout=LOADER_WAIT, what="the clusters to start")
        if postgres:
            os.killpg(clusters[1].pid, signal.SIGSTOP)  # so the first cluster takes shard 1
        enqueue_loader(run.pk, 0)
        first = wait_until(
            lambda: RunShard.objects.filter(run=run, index=0, status="running").first(),
            timeout=LOADER_WAIT,
            what="shard 1",
        )
        wait_until(
            lambda: session_of(RunShard.objects.get(pk=first.pk).loader_pid) == clusters[0].pid,
            timeout=LOADER_WAIT,
            what="loader",
        )
        if postgres:  # the first cluster is full now: it takes no task before a worker is free
            os.killpg(clusters[1].pid, signal.SIGCONT)
        enqueue_loader(run.pk, 1)
        second = wait_until(
            lambda: RunShard.objects.filter(run=run, index=1, status="running").first(),
            timeout=LOADER_WAIT,
            what="shard 2",
        )
        carrier = clusters[-1].pid
        wait_until(
            lambda: session_of(RunShard.objects.get(pk=second.pk).loader_pid) == carrier,
            timeout=LOADER_WAIT,
            what="its loader",
        )
        wait_until(
            lambda: RunShard.objects.get(pk=first.pk).stats.get("totals", {}).get("visits_started", 0) >= 20,
            timeout=LOADER_WAIT,
            what="shard 1 to send",
        )
        assert RunShard.objects.get(pk=first.pk).status == Run.Status.RUNNING  # mid-run
        # Its loaders hand their shards back (the claims move on).
        handed_back = [first.pk] if postgres else [first.pk, second.pk]
        loaders = [RunShard.objects.get(pk=pk).loader_pid for pk in handed_back]
        end_cluster(
            clusters[0],  # its loaders hand their shards back, then exit
            until=lambda: not any(session_of(pid) == clusters[0].pid for pid in loaders),
        )
        if not postgres:
            clusters.append(start_cluster(2))
        wait_until(lambda: not Run.objects.get(pk=run.pk).is_active, timeout=180, what="the run to end")
    finally:
        for cluster in clusters:
            end_cluster(cluster)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED, (run.end_reason, list(run.logs.values_list("message", flat=True)))
    shards = run.shard_list()
    assert shards[0].claim_epoch == 2 and run.logs.filter(message__contains="handed back").exists()
    totals = run.stats["totals"]
    keys = hit_keys(fake_matomo)
    assert max(keys.values()) == 1  # no hit sent twice
    assert keys == expected  # nothing lost: the one-shard run's hits, every one
    assert totals["visits_started"] == 600
    assert totals["sent"] == totals["accepted"] == fake_matomo.stats()["recorded"] == sum(expected.values())


# --- lifecycle, choosing N, limits ---------------------------------------------------------


@pytest.mark.django_db
def test_resume_queues_only_the_lost_shard_and_the_run_ends_when_every_shard_has(
    fast_preset, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    from runs.models import HEARTBEAT_STALE_AFTER

    run = Run.objects.create_run(preset=fast_preset, targets=[make_target()], shards=2)
    lost_token, healthy_token = run.claim(pid=1, host="a"), run.claim(pid=2, host="b")
    assert run.claim(pid=3, host="c") is None  # no shard left
    assert [s.loader_host for s in run.shard_list()] == ["a", "b"]
    RunShard.objects.filter(run=run, index=0).update(heartbeat_at=timezone.now() - HEARTBEAT_STALE_AFTER * 2)
    run.refresh_from_db()
    assert run.is_lost() and [s.index for s in run.lost_shards()] == [0]
    with django_capture_on_commit_callbacks() as callbacks:
        assert run.resume()
    assert len(callbacks) == 1  # one new loader task: the lost shard's
    assert run.status == Run.Status.RUNNING and not run.is_lost()
    lost, healthy = run.shard_list()
    assert lost.status == Run.Status.QUEUED and lost.claim_token is None
    assert healthy.status == Run.Status.RUNNING and healthy.claim_token == healthy_token
    assert lost.check_claim(lost_token) == (False, False)  # the lost loader is fenced out
    assert run.logs.filter(message__startswith="Shard 1/2 resumed").exists()

    new_token = run.claim(pid=4, host="d")
    assert run.shard_of(new_token).index == 0 and run.shard_of(new_token).claim_epoch == 2
    stats = {"totals": {"sent": 5, "accepted": 5}, "targets": {}}
    assert healthy.finish_claimed(healthy_token, Run.Status.COMPLETED, "Visit limit of 10 reached.", stats)
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING  # one shard still sending
    assert run.shard_of(new_token).finish_claimed(new_token, Run.Status.COMPLETED, "Visit limit of 10 reached.", stats)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED and run.end_reason == "Visit limit of 10 reached."
    assert run.stats["totals"]["sent"] == 10
    assert run.finished_at is not None and run.started_at is not None
    assert timedelta(0) <= run.elapsed()


@pytest.mark.django_db
def test_stopping_a_sharded_run_stops_its_waiting_shards_at_once(fast_preset):
    run = Run.objects.create_run(preset=fast_preset, targets=[make_target()], shards=3)
    token = run.claim(pid=1, host="a")
    shard = run.claimed_shard
    assert run.request_stop("Stopped by the test.")
    assert [s.status for s in run.shard_list()] == [Run.Status.RUNNING, Run.Status.STOPPED, Run.Status.STOPPED]
    assert shard.check_claim(token) == (True, True)  # the running loader sees the request
    assert shard.finish_claimed(token, Run.Status.STOPPED, "Stop requested.", {"totals": {}, "targets": {}})
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED and run.end_reason == "Stopped by the test."


@pytest.mark.django_db
def test_shards_are_chosen_in_the_form_the_api_and_the_command(client, fast_preset, settings):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from runs.forms import StartRunForm
    from runs.shards import plan_shards, resolve_shards
    from trafficinator.testing import RUN_OPERATOR, api_call, api_token_for

    target = make_target(name="shop")
    settings.SHARD_HITS_PER_SECOND = 10
    plan = plan_shards(fast_preset, None, False, "auto")
    assert plan.needed == min(64, -(-int(plan.peak_hits_per_second) // 10) or 1) and plan.shards == plan.needed
    assert resolve_shards(fast_preset, None, False, 3) == 3

    form = StartRunForm({"targets": [target.pk], "preset": fast_preset.pk, "shards": "auto"})
    assert form.is_valid(), form.errors
    assert form.run_options()["shards"] == plan.needed
    assert "loader slot" in form.estimate().shard_note
    bad = StartRunForm({"targets": [target.pk], "preset": fast_preset.pk, "shards": "0"})
    assert not bad.is_valid() and "1 to 64" in str(bad.errors["shards"])

    token = api_token_for(*RUN_OPERATOR)
    answer = api_call(client, "POST", "runs/", token, {"preset": "Fast", "targets": ["shop"], "shards": 2})
    assert answer.status_code == 201, answer.content
    assert answer.json()["shard_count"] == 2 and len(answer.json()["shards"]) == 2
    refused = api_call(client, "POST", "runs/", token, {"preset": "Fast", "targets": ["shop"], "shards": 65})
    assert refused.status_code == 400 and "shards" in refused.json()["fields"]

    with pytest.raises(CommandError) as error:
        call_command("run_traffic", "--target", "shop", "--preset", "Fast", "--shards", "many")
    assert "shards" in str(error.value)


@pytest.mark.django_db
def test_a_target_stream_above_the_models_ceiling_is_refused_up_front(fast_preset, monkeypatch):
    from django.core.exceptions import ValidationError

    import runs.models

    monkeypatch.setattr(runs.models, "MAX_VISITS_PER_DAY_PER_TARGET", 1000)
    with pytest.raises(ValidationError) as error:
        Run.objects.create_run(preset=fast_preset, targets=[make_target()], visits_per_day=5000, shards=4)
    assert "ceiling of 1,000 visits/day per target" in str(error.value)
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_the_progress_line_of_a_sharded_run_shows_every_shards_figures(fast_preset):
    from runs.loader import LiveLoader

    run = Run.objects.create_run(preset=fast_preset, targets=[make_target()], shards=2)
    mine, other = (run.claim(pid=0, host=f"test-{index}", shard=index) for index in range(2))

    def figures(sent: int) -> RunStats:
        telemetry = RunTelemetry(["t"])
        telemetry["t"].start_hits(sent)
        for _ in range(sent):
            telemetry["t"].record_outcome("accepted", latency=0.01, hits=1)
        return telemetry.snapshot()

    assert run.shard_of(other).report(other, figures(5))
    loader = LiveLoader(run, token=mine, progress=lambda stats: None)
    assert loader._write_report(mine, figures(3), [], None, {})
    assert loader.run_figures is not None and loader.run_figures["totals"]["sent"] == 8
    alone = LiveLoader(run, token=mine)  # no progress line: no extra read
    assert alone._write_report(mine, figures(4), [], None, {}) and alone.run_figures is None


@pytest.mark.django_db
@pytest.mark.parametrize("bulk", [False, True])
def test_a_visit_cut_short_at_a_hand_back_is_listed_for_the_next_loader(fake_matomo, fast_preset, bulk):
    """A hit worker killed mid-request at a hand-back (or a hit given up waiting for its
    retry) settles its visit "abandoned". The hand-back lists the rest of that visit: a
    single-hit visit after the interrupted hit, whose fate is unknown; a bulk visit whole."""
    import heapq

    from runs.loader import LiveLoader

    run = Run.objects.create_run(preset=fast_preset, targets=[make_local_target(fake_matomo)], shards=2, bulk=bulk)
    token = run.claim(pid=0, host="test", shard=0)
    loader = LiveLoader(run, token=token, hand_back=True)
    loader.build()
    (runtime,) = loader.runtimes
    try:
        while len(runtime.next_visit.hits) < 3:
            runtime.advance()
        visit = runtime.next_visit
        runtime.start_visit(visit, time.time(), time.monotonic())
        _, _, state = heapq.heappop(runtime.heap)
        if not bulk:  # its first hit was answered; the second is the one cut short
            runtime.holding.add(state)
            state("accepted")
            _, _, state = heapq.heappop(runtime.heap)
        runtime.holding.add(state)
        state("abandoned")
        assert not runtime.heap and not runtime.holding
        redo = loader.stream_state(handing_back=True)["redo"][str(runtime.run_target.pk)]
        assert redo == {str(visit.index): 0 if bulk else 2}
    finally:
        runtime.sender.close(grace_seconds=0)
