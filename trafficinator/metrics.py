"""/metrics: Prometheus exposition of live runs, per run and target (README "Metrics").

Read from the database on each scrape (the loaders' latest snapshots, ``Run.stats``), so
every web process answers the same and nothing is kept in process memory: active runs, and
runs that ended in the last ``RECENTLY_FINISHED`` so their final counters are scraped once
more. Protected by an API token (a user who may view runs) or an allow-list of addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from runs.models import Run, RunShard
from trafficinator.models import ApiToken
from trafficinator.sending.telemetry import OUTCOMES, LatencyHistogram
from trafficinator.thresholds import METRICS as THRESHOLD_METRICS

RECENTLY_FINISHED = timedelta(minutes=5)
# Latency buckets in seconds. A request counts in the first bucket whose bound is at least
# the upper edge of its telemetry bucket (those are 8 % wide), so a count is never early.
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def histogram_buckets(sparse: dict) -> tuple[list[tuple[str, float]], int]:
    """Cumulative Prometheus buckets (including +Inf) from telemetry's sparse buckets."""
    counts = [0] * (len(LATENCY_BOUNDS) + 1)
    for key, count in (sparse or {}).items():
        _, high = LatencyHistogram.bucket_bounds(int(key))
        slot = next((i for i, bound in enumerate(LATENCY_BOUNDS) if high <= bound), len(LATENCY_BOUNDS))
        counts[slot] += count
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*LATENCY_BOUNDS, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets, running


def _number(value) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


class RunsCollector:
    """A prometheus-client collector over the runs in the database."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        by_status = GaugeMetricFamily("trafficinator_runs", "Runs by status (all time).", labels=["status"])
        counts = dict(Run.objects.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
        for status in Run.Status.values:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status

        runs = list(
            Run.objects.filter(Q(status__in=Run.ACTIVE_STATUSES) | Q(finished_at__gte=now - RECENTLY_FINISHED))
            .prefetch_related("run_targets__target")
            .order_by("pk")
        )
        run_labels = ["run", "preset"]
        labels = ["run", "preset", "target"]
        info = GaugeMetricFamily(
            "trafficinator_run_info", "1 per run shown, with its status.", labels=[*run_labels, "status"]
        )
        heartbeat = GaugeMetricFamily(
            "trafficinator_loader_heartbeat_age_seconds",
            "Seconds since the loader last reported.",
            labels=run_labels,
        )
        # Run.heartbeat_at is refreshed by any shard's report, so one lost loader of a
        # sharded run hides behind the others: each claimed shard gets its own age.
        shard_heartbeat = GaugeMetricFamily(
            "trafficinator_shard_heartbeat_age_seconds",
            "Seconds since the loader of a claimed shard last reported (shard numbered from 1).",
            labels=[*run_labels, "shard"],
        )
        preset_names = {run.pk: run.preset_name for run in runs}
        claimed_shards = RunShard.objects.filter(run_id__in=preset_names, status__in=RunShard.CLAIMED_STATUSES)
        rows = claimed_shards.order_by("run_id", "index").values_list("run_id", "index", "heartbeat_at")
        for run_id, index, beat in rows:
            if beat is not None:
                shard_heartbeat.add_metric(
                    [str(run_id), preset_names[run_id], str(index + 1)], max(0.0, (now - beat).total_seconds())
                )
        hits = CounterMetricFamily("trafficinator_hits", "Hits by final outcome.", labels=[*labels, "outcome"])
        sent = CounterMetricFamily("trafficinator_hits_sent", "Hits sent (first attempts).", labels=labels)
        retries = CounterMetricFamily("trafficinator_retries", "Requests sent again.", labels=labels)
        visits = CounterMetricFamily("trafficinator_visits_started", "Visits started.", labels=labels)
        in_flight = GaugeMetricFamily("trafficinator_in_flight_hits", "Hits sent and not answered yet.", labels=labels)
        latency = HistogramMetricFamily(
            "trafficinator_request_latency_seconds", "Latency of requests to Matomo.", labels=labels
        )
        delivered = GaugeMetricFamily(
            "trafficinator_delivered_ratio",
            "Visits started / visits the rate asked for (README Thresholds).",
            labels=labels,
        )
        # Reported by loaders that track their schedule (issue 10); absent otherwise.
        saturated = GaugeMetricFamily(
            "trafficinator_saturated", "1 while the loader cannot keep up with the asked rate.", labels=labels
        )
        lag = GaugeMetricFamily("trafficinator_schedule_lag_seconds", "How far behind schedule.", labels=labels)
        behind = GaugeMetricFamily("trafficinator_visits_behind", "Visits due but not started yet.", labels=labels)
        degraded = GaugeMetricFamily("trafficinator_target_degraded", "1 while a target is degraded.", labels=labels)

        for run in runs:
            run_values = [str(run.pk), run.preset_name]
            info.add_metric([*run_values, run.status], 1)
            if run.heartbeat_at:
                heartbeat.add_metric(run_values, max(0.0, (now - run.heartbeat_at).total_seconds()))
            per_target = run.stats_snapshot["targets"]
            siblings = list(run.run_targets.all())
            for rt in siblings:
                data = per_target.get(str(rt.pk))
                if data is None:  # the loader has not reported this target yet
                    continue
                values = [*run_values, rt.target.name]
                for outcome in OUTCOMES:
                    hits.add_metric([*values, outcome], data.get(outcome, 0))
                sent.add_metric(values, data.get("sent", 0))
                retries.add_metric(values, data.get("retries", 0))
                visits.add_metric(values, data.get("visits_started", 0))
                in_flight.add_metric(values, data.get("in_flight", 0))
                buckets, count = histogram_buckets(data.get("latency_buckets", {}))
                latency_ms = data.get("latency_ms")
                mean_ms = (latency_ms.get("mean") if latency_ms else None) or 0.0
                latency.add_metric(values, buckets, sum_value=mean_ms * count / 1000)
                ratio = THRESHOLD_METRICS["delivered_rate"].read(data, run.measure(rt.share_of(run, siblings)))
                if ratio is not None:
                    delivered.add_metric(values, ratio)
                if "saturated" in data:
                    saturated.add_metric(values, 1 if data["saturated"] else 0)
                for family, key in ((lag, "lag_seconds"), (behind, "visits_behind")):
                    value = _number(data.get(key))
                    if value is not None:
                        family.add_metric(values, value)
                degraded.add_metric(values, 1 if data.get("degraded") else 0)
        yield from (info, heartbeat, shard_heartbeat, hits, sent, retries, visits, in_flight, latency, delivered)
        yield from (degraded, saturated, lag, behind)


def _allowed_address(request: HttpRequest) -> bool:
    allowed = getattr(settings, "METRICS_ALLOWED_IPS", [])
    if not allowed:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network, strict=False) for network in allowed)


def _authorised(request: HttpRequest) -> tuple[bool, int, str]:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        token = ApiToken.objects.authenticate(secret.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            return False, 401, "The API token is unknown or revoked."
        if not token.user.has_perm("runs.view_run"):
            return False, 403, "The token's user may not view runs (runs.view_run)."
        return True, 200, ""
    if _allowed_address(request):
        return True, 200, ""
    return False, 401, "Send “Authorization: Bearer <API token>”, or scrape from an allowed address (README Metrics)."


@login_not_required
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    allowed, status, message = _authorised(request)
    if not allowed:
        response = JsonResponse(
            {"error": message, "code": "unauthorized" if status == 401 else "forbidden"}, status=status
        )
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="trafficinator"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunsCollector())
    # The text format Prometheus asks for in Accept (plain 0.0.4 when it names none).
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(registry), content_type=content_type)
