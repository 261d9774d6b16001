import re
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from presets.models import Preset
from runs.models import HEARTBEAT_STALE_AFTER, Run, RunLog, RunSample
from runs.presentation import CHART_MINUTES, Figures, chart_minutes, minute_slots, nice_ceiling, traffic_charts
from runs.shards import sample_hits_per_visit
from trafficinator.sending.telemetry import HitOutcome, RunStats, RunTelemetry
from trafficinator.testing import RUN_OPERATOR, RUN_VIEWER, log_in_client, make_run, make_target, set_heartbeat

# Polling pauses in hidden tabs by static/js/poll-visible.js (htmx's [filter] needs eval,
# which the Content-Security-Policy forbids).
POLL = 'hx-trigger="every 2s"'

HTMX = {"HTTP_HX_REQUEST": "true"}
PANELS = ["summary", "log"]


def make_running_run(targets=None, **kwargs) -> Run:
    run = make_run(targets, **kwargs)
    run.claim(pid=1, host="test")
    return run


def fill_stats(run: Run, *, accepted: int = 90, server_errors: int = 10, degrade: str | None = None) -> RunStats:
    """Write a snapshot made by the loader's own telemetry, so the keys are the real ones."""
    telemetry = RunTelemetry()
    for rt in run.run_targets.select_related("target"):
        target = telemetry.add(str(rt.pk), rt.target.name)
        target.start_visits(accepted // 3)
        target.start_hits(accepted + server_errors)
        for _ in range(accepted):
            target.record_outcome("accepted", 1, latency=0.040)
        kind: HitOutcome = "server_errors" if degrade != rt.target.name else "rejected"
        for _ in range(server_errors):
            target.record_outcome(kind, 1, latency=0.200, status=500 if kind == "server_errors" else 400)
    stats = telemetry.snapshot()
    Run.objects.filter(pk=run.pk).update(stats=stats, heartbeat_at=timezone.now())
    run.refresh_from_db()
    return stats


def make_samples(run: Run, minutes: int = 5, hits: int = 120, errors: int = 3) -> None:
    now = timezone.now().replace(second=0, microsecond=0)
    for ago in range(minutes):
        RunSample.objects.create(
            run=run,
            minute=now - timedelta(minutes=ago),
            hits=hits + ago,
            accepted=hits - errors,
            errors=errors,
            p95_ms=50.0 + ago,
        )


def make_lost(run: Run) -> Run:
    set_heartbeat(run, timezone.now() - HEARTBEAT_STALE_AFTER - timedelta(seconds=5))
    run.refresh_from_db()
    return run


def panel_url(name: str, run: Run) -> str:
    return reverse(f"runs:{name}", args=[run.pk])


# --- dashboard ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_dashboard_without_runs_says_so_and_offers_the_start_form(client):
    make_target(name="shop")
    log_in_client(client, RUN_OPERATOR)
    html = client.get(reverse("home")).content.decode()
    assert "No run is active." in html and "No finished runs yet." in html
    assert 'id="start-run"' in html and "shop (no token)" in html
    assert 'id="run-estimate"' in html and "hits/s" in html  # the estimate of the first preset
    assert 'id="dashboard-runs"' in html and POLL in html
    assert "js/poll-visible.js" in html


@pytest.mark.django_db
def test_a_single_enabled_target_is_ticked_in_the_start_form_and_several_are_left_to_choose(client):
    shop = make_target(name="shop")
    make_target(name="old", enabled=False)
    log_in_client(client, RUN_OPERATOR)
    html = client.get(reverse("home")).content.decode()
    assert re.search(rf'<input type="checkbox" name="targets" value="{shop.pk}"[^>]* checked', html)
    make_target(name="blog")
    html = client.get(reverse("home")).content.decode()
    assert not re.search(r'<input type="checkbox" name="targets"[^>]* checked', html)


@pytest.mark.django_db
def test_dashboard_shows_each_active_run_with_live_figures_per_target_and_a_chart(client):
    run = make_running_run([make_target(name="alpha"), make_target(name="beta")], visits_per_day=43_200)
    fill_stats(run)
    make_samples(run)
    log_in_client(client, RUN_OPERATOR)
    html = client.get(reverse("home")).content.decode()
    assert f'id="run-card-{run.pk}"' in html and "Running" in html
    assert 'data-figure="hits">200<' in html  # 100 hits on each of two targets
    assert 'data-figure="success">90.0 %<' in html
    assert "43,200" in html  # visits/day as set
    assert "alpha" in html and "beta" in html
    assert "<svg" in html and "<rect" in html and "<title>" in html  # per-minute bars with tooltips


@pytest.mark.django_db
def test_the_rate_now_is_explained_by_the_daily_curve_beside_the_rate_set(client):
    # Issue 16: "Visits/day (now)" read 132,480 against 80,000 set, with no word why.
    run = make_running_run([make_target(name="shop")], visits_per_day=80_000)
    stats = fill_stats(run)
    stats["totals"]["visits_per_day"] = 132_480
    Run.objects.filter(pk=run.pk).update(stats=stats)
    log_in_client(client, RUN_VIEWER)
    for url in (reverse("home"), panel_url("detail", run)):
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", client.get(url).content.decode()))
        assert "Visits/day (now) 132,480 80,000/day on average; the daily curve sets this hour's rate: " in text, url


@pytest.mark.django_db
def test_a_targets_share_accepted_on_the_dashboard_says_overall_and_how_many_failed(client):
    # Issue 16: "78.9 % ok" sat next to a 21 % failure rate.
    run = make_running_run([make_target(name="shop")])
    fill_stats(run, accepted=90, server_errors=10)
    log_in_client(client, RUN_VIEWER)
    html = client.get(reverse("home")).content.decode()
    assert re.search(r"100 hits, [0-9.,]+/s, 90\.0 % accepted overall \(10 failed\)", re.sub(r"\s+", " ", html))
    fill_stats(run, accepted=90, server_errors=0)
    html = client.get(reverse("home")).content.decode()
    assert "100.0 % accepted overall" in html and "failed)" not in html


@pytest.mark.django_db
def test_a_degraded_target_is_flagged_with_its_reason(client):
    run = make_running_run([make_target(name="healthy"), make_target(name="sick")])
    fill_stats(run, accepted=10, server_errors=40, degrade="sick")
    log_in_client(client, RUN_OPERATOR)
    for url in (reverse("home"), panel_url("detail", run)):
        html = client.get(url).content.decode()
        assert "degraded" in html and "rejected with HTTP 400" in html, url


@pytest.mark.django_db
def test_a_saturated_generator_is_shown_with_its_shortfall_on_the_run_page_and_dashboard(client):
    run = make_running_run([make_target(name="shop")])
    telemetry = RunTelemetry()
    (rt,) = run.run_targets.all()
    target = telemetry.add(str(rt.pk), "shop")
    target.start_visits(300)
    target.start_hits(900)
    target.record_outcome("accepted", 900, latency=0.001)
    target.record_wait(4.0)
    target.set_schedule(lag_seconds=12.5, visits_behind=2700, saturated=True)
    Run.objects.filter(pk=run.pk).update(stats=telemetry.snapshot(), heartbeat_at=timezone.now())
    log_in_client(client, RUN_VIEWER)
    for url in (reverse("home"), panel_url("detail", run)):
        html = client.get(url).content.decode()
        assert "generator saturated" in html and "Delivered 10 % of the asked visits" in html, url
        assert "2,700 visits behind schedule (12.5 s)" in html, url
    assert "12.5 s behind schedule" in client.get(panel_url("detail", run)).content.decode()


@pytest.mark.django_db
def test_a_run_that_kept_up_shows_no_saturation(client):
    run = make_running_run([make_target(name="shop")])
    fill_stats(run)
    log_in_client(client, RUN_VIEWER)
    assert "saturat" not in client.get(panel_url("detail", run)).content.decode()


@pytest.mark.django_db
def test_a_lost_run_stands_out_with_resume_and_close(client):
    run = make_lost(make_running_run())
    log_in_client(client, RUN_OPERATOR)
    html = client.get(reverse("home")).content.decode()
    assert "Loader lost" in html and "The loader of this run is lost" in html
    assert reverse("runs:resume", args=[run.pk]) in html and reverse("runs:close", args=[run.pk]) in html
    assert reverse("runs:stop", args=[run.pk]) not in html


@pytest.mark.django_db
def test_recent_finished_runs_show_their_final_figures(client):
    run = make_running_run()
    fill_stats(run)
    run.finish(Run.Status.COMPLETED, "Visit limit reached.")
    log_in_client(client, RUN_OPERATOR)
    html = client.get(reverse("home")).content.decode()
    assert "Recent runs" in html and "Completed" in html and "Visit limit reached." in html
    assert "90.0 %" in html and f'id="run-card-{run.pk}"' not in html


@pytest.mark.django_db
def test_the_dashboard_panel_renders_alone_for_htmx_and_redirects_a_plain_get(client):
    make_running_run()
    log_in_client(client, RUN_OPERATOR)
    partial = client.get(reverse("runs:dashboard"), **HTMX)
    html = partial.content.decode()
    assert html.strip().startswith('<div id="dashboard-runs"')
    assert "<html" not in html and POLL in html
    plain = client.get(reverse("runs:dashboard"))
    assert plain.status_code == 302 and plain["Location"] == reverse("home")


# --- run page -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_run_page_renders_before_the_loader_reported_anything(client):
    run = make_run()
    log_in_client(client, RUN_OPERATOR)
    html = client.get(panel_url("detail", run)).content.decode()
    assert "Queued" in html and "Waiting for a loader worker" in html
    assert "no data yet" in html and "no samples yet" in html
    assert "Created by" in html  # the log


@pytest.mark.django_db
def test_the_run_page_shows_all_figures_charts_targets_and_log(client):
    run = make_running_run([make_target(name="alpha")])
    fill_stats(run)
    make_samples(run, minutes=3)
    run.log(RunLog.Level.ERROR, "First server errors (HTTP 500)")
    log_in_client(client, RUN_OPERATOR)
    html = client.get(panel_url("detail", run)).content.decode()
    for text in (
        "Server errors (HTTP 5xx)",
        "Hits per minute",
        "Errors per minute",
        "p95 latency per minute",
        "alpha",
        "First server errors (HTTP 500)",
        'data-figure="hits">100<',
    ):
        assert text in html, text
    assert html.count('class="tf-chart"') == 3
    assert html.count(POLL) == 2  # summary (with charts and targets, out of band) and log
    assert "js/poll-visible.js" in html


@pytest.mark.django_db
@pytest.mark.parametrize("name", PANELS)
def test_a_refresh_view_renders_only_its_panel_for_htmx_and_redirects_a_plain_get(client, name):
    run = make_running_run()
    log_in_client(client, RUN_OPERATOR)
    html = client.get(panel_url(name, run), **HTMX).content.decode()
    element_id = "run-log" if name == "log" else f"run-{name}"
    assert f'id="{element_id}"' in html and "<html" not in html and "site-name" not in html
    assert POLL in html and panel_url(name, run) in html
    plain = client.get(panel_url(name, run))
    assert plain.status_code == 302 and plain["Location"] == panel_url("detail", run)


@pytest.mark.django_db
@pytest.mark.parametrize("name", PANELS)
def test_the_panels_of_a_finished_run_have_no_polling_attributes(client, name):
    run = make_running_run()
    run.finish(Run.Status.STOPPED, "Stopped.")
    log_in_client(client, RUN_OPERATOR)
    html = client.get(panel_url(name, run), **HTMX).content.decode()
    assert "hx-trigger" not in html.split(">", 1)[0] and "every 2s" not in html
    page = client.get(panel_url("detail", run)).content.decode()
    assert "every 2s" not in page


@pytest.mark.django_db
def test_one_poll_refreshes_the_status_the_targets_table_and_the_charts_together(client):
    run = make_running_run([make_target(name="alpha")])
    fill_stats(run)
    make_samples(run, minutes=2)
    run.request_stop("Stopped by test")
    log_in_client(client, RUN_OPERATOR)
    html = client.get(panel_url("summary", run), **HTMX).content.decode()
    assert html.count(POLL) == 1  # only the status panel polls ...
    # ... and the other two panels come along, swapped in by id, from the same snapshot.
    assert '<section id="run-targets" class="module tf-panel" hx-swap-oob="true">' in html
    assert '<section id="run-charts" class="module tf-panel" hx-swap-oob="true">' in html
    assert "stop requested" in html and "alpha" in html and "Hits per minute" in html


@pytest.mark.django_db
def test_a_stopping_run_keeps_polling_until_it_has_stopped(client):
    run = make_running_run()
    run.request_stop("Stopped by test")
    log_in_client(client, RUN_OPERATOR)
    html = client.get(panel_url("summary", run), **HTMX).content.decode()
    assert POLL in html and "stop requested" in html and "Stopped by test" in html


@pytest.mark.django_db
def test_the_log_filters_by_level_and_text(client):
    run = make_run()
    run.log(RunLog.Level.WARNING, "Backing off: 3 requests to retry")
    run.log(RunLog.Level.ERROR, "First timeouts")
    run.log(RunLog.Level.ERROR, "Degraded: 80% failed")
    log_in_client(client, RUN_OPERATOR)
    url = panel_url("log", run)
    errors = client.get(url, {"level": "error"}, **HTMX).content.decode()
    assert "First timeouts" in errors and "Degraded" in errors and "Backing off" not in errors
    both = client.get(url, {"level": "error", "q": "TIMEOUT"}, **HTMX).content.decode()
    assert "First timeouts" in both and "Degraded" not in both
    none = client.get(url, {"q": "nothing like this"}, **HTMX).content.decode()
    assert "No log entries match the filter." in none
    page = client.get(panel_url("detail", run), {"level": "warning"}).content.decode()  # works without JS too
    assert "Backing off" in page and "First timeouts" not in page


@pytest.mark.django_db
def test_charts_put_each_sample_in_its_minute_and_draw_each_series_on_its_own_labelled_scale():
    run = make_run()
    end = timezone.now().replace(second=30, microsecond=0)
    last = end.replace(second=0)
    samples = [
        RunSample(run=run, minute=last, hits=148, errors=76),
        RunSample(run=run, minute=last - timedelta(minutes=10), hits=37, errors=0),
        RunSample(run=run, minute=last - timedelta(minutes=CHART_MINUTES), hits=999, errors=0),  # too old
    ]
    slots = minute_slots(samples, end)
    assert slots[-1] is samples[0] and slots[-11] is samples[1] and samples[2] not in slots
    hits, errors = traffic_charts(samples, end)
    # Hits on a 0-200 scale, errors on their own 0-100 scale; both say so on their y axis.
    assert (hits.peak, hits.scale_max, hits.y_labels) == (148, 200, [200, 100, 0])
    assert (errors.peak, errors.scale_max) == (76, 100)
    assert [bar.height for bar in hits.series[0].bars] == [18.5, 74.0]
    assert [bar.height for bar in errors.series[0].bars] == [76.0]
    assert hits.end_label == "now" and hits.start_label == f"{timezone.localtime(last - timedelta(minutes=59)):%H:%M}"


def test_axis_tops_are_round_numbers():
    assert [nice_ceiling(value) for value in (0, 0.3, 1, 3, 7, 148, 1_001)] == [1, 0.5, 1, 5, 10, 200, 2_000]


@pytest.mark.django_db
def test_a_short_run_fills_its_charts_and_a_long_one_shows_the_last_hour(client):
    run = make_running_run()
    now = timezone.now()
    Run.objects.filter(pk=run.pk).update(started_at=now - timedelta(minutes=3))
    run.refresh_from_db()
    assert chart_minutes(run, now) == 4  # the minute it started in, up to this one
    make_samples(run, minutes=4)
    log_in_client(client, RUN_OPERATOR)
    page = client.get(panel_url("detail", run)).content.decode()
    assert "Per minute, the whole run (4 min)" in page
    Run.objects.filter(pk=run.pk).update(started_at=now - timedelta(hours=5))
    run.refresh_from_db()
    assert chart_minutes(run, now) == CHART_MINUTES
    assert "Per minute, the last hour" in client.get(panel_url("detail", run)).content.decode()


def test_figures_read_missing_telemetry_as_zero_and_compute_the_success_share():
    assert Figures({}).hits_sent == 0 and Figures({}).success_share is None and Figures({}).p95_ms is None
    figures = Figures({"sent": 10, "accepted": 6, "errors": 2, "latency_ms": {"p95": 12.5}})
    assert figures.success_share == 0.75 and figures.p95_ms == 12.5


@pytest.mark.django_db
def test_a_queued_run_and_a_run_recorded_by_an_older_loader_render_everywhere(client):
    from runs import reports
    from runs.management.commands.run_traffic import saturation_line, summary_line
    from trafficinator.metrics import RunsCollector

    log_in_client(client, RUN_OPERATOR)
    queued = make_run()  # stats are {} until the loader's first report
    assert queued.stats_snapshot == {"totals": {}, "targets": {}}
    assert summary_line(queued.stats_snapshot).startswith("visits_started=0 visits_delivered=0 hits=0 ")
    old = make_run()
    target_key = str(old.run_targets.get().pk)
    # What the first loaders wrote: no visits_delivered, schedule, wait or latency buckets.
    figures = {"sent": 5, "accepted": 4, "rejected": 1, "errors": 1, "latency_ms": {"p50": 10.0, "p95": 20.0}}
    Run.objects.filter(pk=old.pk).update(
        status=Run.Status.COMPLETED,
        finished_at=timezone.now(),
        stats={"totals": figures, "targets": {target_key: figures}},
    )
    old.refresh_from_db()
    assert "hits=5 accepted=4 invalid=0 rejected=1 errors=1 p95_ms=20" in summary_line(old.stats_snapshot)
    assert saturation_line(old.stats_snapshot) == ""
    for run in (queued, old):
        assert client.get(panel_url("detail", run)).status_code == 200
        for fmt in reports.FORMATS:
            assert reports.render(run, fmt)[0]
    accepted = [
        sample.value
        for family in RunsCollector().collect()
        for sample in family.samples
        if sample.labels.get("run") == str(old.pk) and sample.labels.get("outcome") == "accepted"
    ]
    assert accepted == [4]


# --- starting a run -------------------------------------------------------------------------


@pytest.mark.django_db
def test_starting_a_run_creates_it_queues_its_loader_and_redirects_to_its_page(
    client, django_capture_on_commit_callbacks
):
    target = make_target(name="shop", token_auth="a-write-token-0001")  # Medium sends countries
    log_in_client(client, RUN_OPERATOR, username="starter")
    preset = Preset.objects.get(name="Medium")
    data = {
        "targets": [target.pk],
        "preset": preset.pk,
        "visits_per_day": "2000",
        "duration_minutes": "30",
        "max_visits": "500",
        "bulk": "on",
    }
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("runs:start"), data)
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == panel_url("detail", run)
    assert (run.visits_per_day, run.duration_seconds, run.max_visits, run.bulk) == (2000, 1800, 500, True)
    assert run.created_by.username == "starter" and run.preset_name == "Medium" and run.status == Run.Status.QUEUED
    assert [rt.target for rt in run.run_targets.all()] == [target]
    assert len(callbacks) == 1  # the loader task is enqueued once the run is committed


@pytest.mark.django_db
def test_a_run_without_overrides_takes_the_presets_values(client, django_capture_on_commit_callbacks):
    target = make_target(token_auth="a-write-token-0001")  # Heavy sends countries
    log_in_client(client, RUN_OPERATOR)
    with django_capture_on_commit_callbacks():
        client.post(reverse("runs:start"), {"targets": [target.pk], "preset": Preset.objects.get(name="Heavy").pk})
    run = Run.objects.get()
    assert (run.visits_per_day, run.duration_seconds, run.max_visits, run.bulk) == (50_000, None, None, False)


@pytest.mark.django_db
def test_start_form_errors_are_shown_next_to_the_fields(client):
    disabled = make_target(name="off", enabled=False)
    log_in_client(client, RUN_OPERATOR)
    response = client.post(
        reverse("runs:start"),
        {
            "targets": [disabled.pk],
            "preset": Preset.objects.get(name="Light").pk,
            "duration_minutes": "10000000",
            "visits_per_day": "0",
        },
    )
    html = response.content.decode()
    assert response.status_code == 200 and not Run.objects.exists()
    assert "form-row errors field-targets" in html and "Select a valid choice" in html
    assert "form-row errors field-duration_minutes" in html
    assert "form-row errors field-visits_per_day" in html
    missing = client.post(reverse("runs:start"), {"preset": Preset.objects.get(name="Light").pk}).content.decode()
    assert "Choose at least one target." in missing
    empty = client.post(reverse("runs:start"), {}).content.decode()
    assert "Choose at least one target." in empty and "form-row errors field-preset" in empty


@pytest.mark.django_db
def test_model_validation_errors_from_create_run_land_next_to_the_matching_field(client, monkeypatch):
    target = make_target()
    log_in_client(client, RUN_OPERATOR)

    def refuse(**kwargs):
        raise ValidationError({"duration_seconds": "Too long for this worker.", "seed": "Bad seed."})

    monkeypatch.setattr(Run.objects, "create_run", refuse)
    html = client.post(
        reverse("runs:start"), {"targets": [target.pk], "preset": Preset.objects.get(name="Light").pk}
    ).content.decode()
    assert "form-row errors field-duration_minutes" in html and "Too long for this worker." in html
    assert 'class="errornote"' in html and "Bad seed." in html


@pytest.mark.django_db
def test_the_estimate_follows_the_form_and_names_targets_that_lack_a_token(client):
    with_token = make_target(name="has-token", token_auth="secret-token-value")
    without = make_target(name="no-token")
    preset = Preset.objects.get(name="Light").duplicate(name="Countries")
    preset.randomize_countries = True
    preset.bounce_share = 0.0
    preset.pageviews_min = preset.pageviews_max = 3
    for name in ("site_search", "outlinks", "downloads", "click_events", "random_events", "ecommerce"):
        setattr(preset, f"{name}_probability", 0.0)
    preset.save()
    log_in_client(client, RUN_OPERATOR)
    params = {
        "preset": preset.pk,
        "targets": [with_token.pk, without.pk],
        "visits_per_day": "86400",
        "duration_minutes": "10",
        "csrfmiddlewaretoken": "ignored",
    }
    response = client.get(reverse("runs:estimate"), params, **HTMX)
    html = response.content.decode()
    assert html.strip().startswith('<div id="run-estimate"')
    # 1 visit/s x the hits per visit of the traffic the preset generates (3 page views,
    # and the pings that give the last page its time).
    hits_per_visit = sample_hits_per_visit(preset)
    assert 3 <= hits_per_visit < 4.5
    assert f"× {hits_per_visit:.2f} hits per visit" in html
    assert "about 600 visits" in html and f"{round(600 * hits_per_visit):,} hits" in html  # 10 minutes
    assert "<strong>No token:</strong> no-token." in html and "has-token" not in html.split("No token:")[1]
    assert "secret-token-value" not in html


@pytest.mark.django_db
def test_the_start_page_works_on_its_own(client):
    make_target(name="shop")
    log_in_client(client, RUN_OPERATOR)
    html = client.get(reverse("runs:start")).content.decode()
    assert "<h1>Start a run</h1>" in html and "shop (no token)" in html and 'id="run-estimate"' in html


# --- stop, resume, close --------------------------------------------------------------------


@pytest.mark.django_db
def test_stop_asks_the_loader_to_stop_and_redraws_the_summary(client):
    run = make_running_run()
    log_in_client(client, RUN_OPERATOR, username="alice")
    response = client.post(reverse("runs:stop", args=[run.pk]), HTTP_HX_TARGET="run-summary", **HTMX)
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPING and run.stop_requested and run.end_reason == "Stopped by alice."
    html = response.content.decode()
    assert html.strip().startswith('<section id="run-summary"') and "stop requested" in html
    assert reverse("runs:stop", args=[run.pk]) not in html  # nothing left to stop
    assert run.logs.filter(message="Stop requested by alice.").exists()


@pytest.mark.django_db
def test_stop_from_the_dashboard_redraws_the_dashboard_and_a_plain_post_redirects(client):
    queued, running = make_run(), make_running_run()
    log_in_client(client, RUN_OPERATOR)
    response = client.post(reverse("runs:stop", args=[queued.pk]), HTTP_HX_TARGET="dashboard-runs", **HTMX)
    assert response.content.decode().strip().startswith('<div id="dashboard-runs"')
    queued.refresh_from_db()
    assert queued.status == Run.Status.STOPPED  # a queued run stops at once
    plain = client.post(reverse("runs:stop", args=[running.pk]))
    assert plain.status_code == 302 and plain["Location"] == panel_url("detail", running)


@pytest.mark.django_db
def test_a_lost_run_can_be_resumed(client, django_capture_on_commit_callbacks):
    run = make_lost(make_running_run())
    log_in_client(client, RUN_OPERATOR)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("runs:resume", args=[run.pk]), HTTP_HX_TARGET="run-summary", **HTMX)
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED and len(callbacks) == 1
    assert "Loader lost" not in response.content.decode()


@pytest.mark.django_db
def test_a_lost_run_can_be_closed_and_a_healthy_one_cannot(client):
    lost, healthy = make_lost(make_running_run()), make_running_run()
    log_in_client(client, RUN_OPERATOR, username="bob")
    client.post(reverse("runs:close", args=[lost.pk]), HTTP_HX_TARGET="dashboard-runs", **HTMX)
    client.post(reverse("runs:close", args=[healthy.pk]))
    lost.refresh_from_db(), healthy.refresh_from_db()
    assert lost.status == Run.Status.FAILED and "Closed by bob" in lost.end_reason
    assert healthy.status == Run.Status.RUNNING


# --- security -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_viewer_without_run_traffic_sees_no_buttons_and_is_refused_every_action(client):
    lost, running = make_lost(make_running_run()), make_running_run()
    log_in_client(client, RUN_VIEWER)
    home = client.get(reverse("home")).content.decode()
    page = client.get(panel_url("detail", running)).content.decode()
    lost_page = client.get(panel_url("detail", lost)).content.decode()
    for html in (home, page, lost_page):
        assert "/stop/" not in html and "/resume/" not in html and "/close/" not in html
        assert 'id="start-run"' not in html
    assert "Someone allowed to run traffic can resume or close it" in lost_page
    refused = [
        client.post(reverse("runs:stop", args=[running.pk])),
        client.post(reverse("runs:resume", args=[lost.pk])),
        client.post(reverse("runs:close", args=[lost.pk])),
        client.get(reverse("runs:start")),
        client.post(reverse("runs:start"), {}),
        client.get(reverse("runs:estimate")),
    ]
    assert [response.status_code for response in refused] == [403] * len(refused)
    running.refresh_from_db(), lost.refresh_from_db()
    assert running.status == lost.status == Run.Status.RUNNING


@pytest.mark.django_db
def test_a_user_without_view_run_sees_no_runs_and_is_refused_their_pages(client):
    run = make_running_run()
    log_in_client(client)
    home = client.get(reverse("home"))
    assert home.status_code == 200 and 'id="dashboard-runs"' not in home.content.decode()
    urls = [reverse("runs:dashboard"), panel_url("detail", run)] + [panel_url(name, run) for name in PANELS]
    assert [client.get(url, **HTMX).status_code for url in urls] == [403] * len(urls)


@pytest.mark.django_db
@pytest.mark.parametrize("action", ["stop", "resume", "close"])
def test_actions_change_state_only_by_post(client, action):
    run = make_running_run()
    log_in_client(client, RUN_OPERATOR)
    assert client.get(reverse(f"runs:{action}", args=[run.pk])).status_code == 405


@pytest.mark.django_db
def test_state_changes_need_the_csrf_token_that_htmx_sends_from_the_page():
    run = make_running_run()
    client = Client(enforce_csrf_checks=True)
    log_in_client(client, RUN_OPERATOR)
    stop_url = reverse("runs:stop", args=[run.pk])
    assert client.post(stop_url, **HTMX).status_code == 403
    page = client.get(panel_url("detail", run)).content.decode()
    token = page.split('hx-headers=\'{"X-CSRFToken": "', 1)[1].split('"', 1)[0]
    assert client.post(stop_url, HTTP_X_CSRFTOKEN=token, HTTP_HX_TARGET="run-summary", **HTMX).status_code == 200
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPING


# --- cheap refreshes ------------------------------------------------------------------------


@pytest.fixture
def busy_runs(db):
    """Three active runs with two targets, stats, an hour of samples and logs, and three finished
    runs: the query counts below must not grow with them."""
    runs = []
    for _ in range(3):
        run = make_running_run([make_target(), make_target()])
        fill_stats(run, accepted=5, server_errors=1)
        make_samples(run, minutes=CHART_MINUTES)
        for level in ("info", "warning", "error"):
            run.log(level, f"{level} message")
        runs.append(run)
    for _ in range(3):
        make_running_run().finish(Run.Status.COMPLETED, "done")
    return runs


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "budget"),
    # Each budget includes the session, the user and the user's two permission queries; the estimate
    # also looks up a backfill whose visitors a run would continue (per target) and reads the
    # preset's funnels (they change its hits per visit) and the loader clusters' heartbeats (the free
    # loader slots). The dashboard (active and recent runs) and the status panel read the shards.
    [("dashboard", 11), ("summary", 8), ("log", 6), ("estimate", 9)],
)
def test_refresh_views_are_cheap(client, busy_runs, django_assert_max_num_queries, name, budget):
    run = busy_runs[0]
    log_in_client(client, RUN_OPERATOR)
    if name == "dashboard":
        url = reverse("runs:dashboard")
    elif name == "estimate":
        url = reverse("runs:estimate") + f"?preset={run.preset_id}&targets={run.run_targets.first().target_id}"
    else:
        url = panel_url(name, run)
    with django_assert_max_num_queries(budget):
        response = client.get(url, **HTMX)
    assert response.status_code == 200


@pytest.mark.django_db
def test_an_ended_run_shows_its_average_rate_rather_than_its_last_minute(client):
    run = make_running_run()
    fill_stats(run, accepted=90, server_errors=10)  # 100 hits
    run.finish(Run.Status.COMPLETED, "Duration reached.")
    Run.objects.filter(pk=run.pk).update(finished_at=run.started_at + timedelta(seconds=50))
    log_in_client(client, RUN_OPERATOR)
    html = client.get(panel_url("detail", run)).content.decode()
    assert "Hits/s (average)" in html and 'data-figure="hits-per-second">2.0<' in html
