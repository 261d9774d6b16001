"""/metrics: Prometheus text parsed back with prometheus-client's own parser."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from presets.models import Preset
from runs.models import Run, RunShard
from trafficinator.models import ApiToken
from trafficinator.sending.telemetry import RunTelemetry
from trafficinator.testing import RUN_VIEWER, make_target, make_user


def scrape(client, token: str | None = None, **extra):
    if token:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client.get("/metrics", **extra)


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family, **labels) -> dict[str, float]:
    """{sample name: value} of the samples whose labels include ``labels``."""
    return {
        sample.name + ("" if "le" not in sample.labels else f"[{sample.labels['le']}]"): sample.value
        for sample in family.samples
        if all(sample.labels.get(key) == value for key, value in labels.items())
    }


def running_run_with_stats() -> tuple[Run, dict]:
    run = Run.objects.create_run(
        preset=Preset.objects.get(name="Light"), targets=[make_target(name="shop"), make_target(name="blog")]
    )
    run.claim(pid=1, host="test")
    telemetry = RunTelemetry()
    for index, rt in enumerate(run.run_targets.select_related("target").order_by("target__name")):
        target = telemetry.add(str(rt.pk), rt.target.name)
        target.start_visits(10 + index)
        target.start_hits(50)
        for _ in range(40):
            target.record_outcome("accepted", 1, latency=0.020)
        for _ in range(7):
            target.record_outcome("rejected", 1, latency=0.300, status=400)
    stats = json.loads(json.dumps(telemetry.snapshot()))  # as stored in Run.stats
    blog = next(key for key, data in stats["targets"].items() if data["visits_started"] == 10)
    # As a loader that tracks its schedule writes them (issue 10's keys).
    stats["targets"][blog].update(saturated=True, lag_seconds=3.5, visits_behind=12, delivered_percent=80.0)
    Run.objects.filter(pk=run.pk).update(stats=stats, heartbeat_at=timezone.now() - timedelta(seconds=4))
    run.refresh_from_db()
    return run, stats


@pytest.mark.django_db
def test_metrics_expose_hits_visits_in_flight_latency_and_heartbeat_per_run_and_target(client):
    run, stats = running_run_with_stats()
    response = scrape(client, ApiToken.issue(make_user(perms=RUN_VIEWER), "prometheus")[1])
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    parsed = families(response.content.decode())
    run_id = str(run.pk)

    by_target = {rt.target.name: stats["targets"][str(rt.pk)] for rt in run.run_targets.select_related("target")}
    for name, data in by_target.items():
        accepted = samples(parsed["trafficinator_hits"], run=run_id, target=name, outcome="accepted")
        rejected = samples(parsed["trafficinator_hits"], run=run_id, target=name, outcome="rejected")
        assert accepted == {"trafficinator_hits_total": 40} and rejected == {"trafficinator_hits_total": 7}
        assert data["in_flight"] == 3
        assert samples(parsed["trafficinator_in_flight_hits"], run=run_id, target=name) == {
            "trafficinator_in_flight_hits": 3
        }
        assert samples(parsed["trafficinator_visits_started"], run=run_id, target=name) == {
            "trafficinator_visits_started_total": data["visits_started"]
        }
        latency = samples(parsed["trafficinator_request_latency_seconds"], run=run_id, target=name)
        assert latency["trafficinator_request_latency_seconds_count"] == 47
        assert latency["trafficinator_request_latency_seconds_bucket[0.025]"] == 40  # the 20 ms requests
        assert latency["trafficinator_request_latency_seconds_bucket[0.25]"] == 40
        assert latency["trafficinator_request_latency_seconds_bucket[0.5]"] == 47
        assert latency["trafficinator_request_latency_seconds_bucket[+Inf]"] == 47
        assert latency["trafficinator_request_latency_seconds_sum"] == pytest.approx(40 * 0.02 + 7 * 0.3, rel=0.1)
        delivered = samples(parsed["trafficinator_delivered_ratio"], run=run_id, target=name)
        assert delivered["trafficinator_delivered_ratio"] > 0
    heartbeat = samples(parsed["trafficinator_loader_heartbeat_age_seconds"], run=run_id)
    assert 3 <= heartbeat["trafficinator_loader_heartbeat_age_seconds"] < 60
    assert samples(parsed["trafficinator_runs"], status="running") == {"trafficinator_runs": 1}
    # Saturation is exposed as the loader reports it (the stats carry it; nothing is made up).
    assert samples(parsed["trafficinator_saturated"], run=run_id, target="blog") == {"trafficinator_saturated": 1}
    assert samples(parsed["trafficinator_schedule_lag_seconds"], run=run_id, target="blog") == {
        "trafficinator_schedule_lag_seconds": 3.5
    }
    assert samples(parsed["trafficinator_visits_behind"], run=run_id, target="blog") == {
        "trafficinator_visits_behind": 12
    }
    # The live loader's telemetry reports shop as keeping up.
    assert samples(parsed["trafficinator_saturated"], run=run_id, target="shop") == {"trafficinator_saturated": 0}
    blog_delivered = samples(parsed["trafficinator_delivered_ratio"], run=run_id, target="blog")
    assert blog_delivered == {"trafficinator_delivered_ratio": 0.8}  # the loader's own figure wins


@pytest.mark.django_db
def test_metrics_show_a_lost_shard_that_the_runs_own_heartbeat_hides(client):
    run = Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=[make_target()], shards=3)
    assert run.claim(pid=1, host="a", shard=0) and run.claim(pid=2, host="b", shard=1)  # shard 3 stays queued
    now = timezone.now()
    # The live loader keeps the run's heartbeat fresh; shard 2's loader went silent.
    RunShard.objects.filter(run=run, index=0).update(heartbeat_at=now - timedelta(seconds=2))
    RunShard.objects.filter(run=run, index=1).update(heartbeat_at=now - timedelta(seconds=120))
    Run.objects.filter(pk=run.pk).update(heartbeat_at=now - timedelta(seconds=2))
    response = scrape(client, ApiToken.issue(make_user(perms=RUN_VIEWER), "prometheus")[1])
    parsed = families(response.content.decode())

    run_age = samples(parsed["trafficinator_loader_heartbeat_age_seconds"], run=str(run.pk))
    assert run_age["trafficinator_loader_heartbeat_age_seconds"] < 30  # the run-level figure looks healthy
    shard_ages = {
        sample.labels["shard"]: sample.value
        for sample in parsed["trafficinator_shard_heartbeat_age_seconds"].samples
        if sample.labels["run"] == str(run.pk)
    }
    assert set(shard_ages) == {"1", "2"}  # claimed shards only
    assert shard_ages["1"] < 30 and shard_ages["2"] >= 120


@pytest.mark.django_db
def test_metrics_leave_out_runs_that_ended_long_ago(client):
    run, _ = running_run_with_stats()
    run.finish(Run.Status.COMPLETED, "Done.")
    token = ApiToken.issue(make_user(perms=RUN_VIEWER), "prometheus")[1]
    assert f'run="{run.pk}"' in scrape(client, token).content.decode()  # just finished: scraped once more
    Run.objects.filter(pk=run.pk).update(finished_at=timezone.now() - timedelta(minutes=6))
    assert f'run="{run.pk}"' not in scrape(client, token).content.decode()


@pytest.mark.django_db
def test_metrics_need_a_token_of_a_run_viewer_or_an_allowed_address(client, settings):
    assert scrape(client).status_code == 401
    assert scrape(client, "tfx_unknown").status_code == 401
    assert scrape(client, ApiToken.issue(make_user(), "no perms")[1]).status_code == 403
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert scrape(client, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert scrape(client, REMOTE_ADDR="192.168.1.1").status_code == 401
