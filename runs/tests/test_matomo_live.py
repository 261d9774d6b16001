"""The run page shows Matomo's own live counter next to ours while the run is active:
read by the panel's poll, at most once per MATOMO_LIVE_SECONDS, with a short timeout,
kept with its time and shown with its errors."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from conftest import TOKEN
from runs import verification
from runs.models import Run
from trafficinator.testing import make_run, make_target, make_user

HTMX = {"HTTP_HX_REQUEST": "true"}


def counter_reads(fake_matomo) -> int:
    return sum(1 for call in fake_matomo.api_calls if call.get("method") == "Live.getCounters")


def running(run: Run, visits_started: int = 0) -> Run:
    """The run as its loader would leave it while sending: claimed, with figures."""
    assert run.claim(pid=1, host="test") is not None
    run_target = run.run_targets.get()
    Run.objects.filter(pk=run.pk).update(stats={"targets": {str(run_target.pk): {"visits_started": visits_started}}})
    run.refresh_from_db()
    return run


def finished(run: Run) -> Run:
    Run.objects.filter(pk=run.pk).update(status=Run.Status.COMPLETED, finished_at=timezone.now())
    run.refresh_from_db()
    return run


@pytest.fixture
def viewer(client):
    client.force_login(make_user(superuser=True))
    return client


@pytest.mark.django_db
def test_an_active_run_reads_matomos_counter_from_the_panel_at_most_once_per_interval(viewer, fake_matomo):
    target = make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    run = running(make_run(targets=[target]), visits_started=3)

    page = viewer.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert counter_reads(fake_matomo) == 0  # the page itself never waits for Matomo
    assert "Reading Matomo's live counter" in page
    assert f'hx-get="{reverse("runs:matomo", args=[run.pk])}"' in page and "load delay:500ms, every 30s" in page

    panel = viewer.get(reverse("runs:matomo", args=[run.pk]), **HTMX).content.decode()
    assert counter_reads(fake_matomo) == 1
    assert "data-verification" in panel and "still sending" in panel and "s ago" in panel
    assert 'hx-trigger="every 30s"' in panel  # the poll goes on, without the first read's load trigger
    stored = Run.objects.get().verification
    assert stored["running"] is True
    assert stored["rows"][0]["sent_visits"] == 3 and stored["rows"][0]["matomo_visits"] == 0
    assert stored["rows"][0]["cause"] == ""  # not judged while hits are in flight

    viewer.get(reverse("runs:matomo", args=[run.pk]), **HTMX)  # a second tab, at once
    assert counter_reads(fake_matomo) == 1


@pytest.mark.django_db
def test_a_finished_run_is_read_once_more_judged_and_the_panel_stops_polling(viewer, fake_matomo):
    target = make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    run = running(make_run(targets=[target]), visits_started=5)
    viewer.get(reverse("runs:matomo", args=[run.pk]), **HTMX)
    finished(run)

    panel = viewer.get(reverse("runs:matomo", args=[run.pk]), **HTMX).content.decode()
    assert counter_reads(fake_matomo) == 2
    assert "hx-get" not in panel and "Compare with Matomo" in panel
    row = Run.objects.get().verification["rows"][0]
    assert Run.objects.get().verification["running"] is False
    assert "5 visits fewer" in row["cause"]  # judged now: nothing reached this Matomo

    viewer.get(reverse("runs:matomo", args=[run.pk]), **HTMX)
    assert counter_reads(fake_matomo) == 2  # read once after the end, not again


@pytest.mark.django_db
def test_a_reading_taken_while_the_run_was_ending_is_not_the_final_one(fake_matomo):
    target = make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    run = finished(running(make_run(targets=[target])))
    # Read while the run still counted as sending, stored just after it finished.
    Run.objects.filter(pk=run.pk).update(verification={"at": timezone.now().isoformat(), "running": True, "rows": []})
    run.refresh_from_db()
    assert verification.live_reading_due(run)
    assert verification.refresh_live_reading(run)
    assert not verification.live_reading_due(run) and run.verification["running"] is False


@pytest.mark.django_db
def test_a_slow_matomo_is_given_up_quickly_and_the_error_is_shown(viewer, fake_matomo, monkeypatch):
    monkeypatch.setattr(verification, "LIVE_READ_TIMEOUT_SECONDS", 0.3)
    fake_matomo.set_latency(5.0)
    target = make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    run = running(make_run(targets=[target]))

    panel = viewer.get(reverse("runs:matomo", args=[run.pk]), **HTMX).content.decode()
    row = Run.objects.get().verification["rows"][0]
    assert row["matomo_visits"] is None
    assert row["cause"] == "Matomo's Live.getCounters for local failed: Timeout: 127.0.0.1 did not answer within 0.3 s."
    assert escape(row["cause"]) in panel and "tf-warning" in panel


@pytest.mark.django_db
def test_without_a_token_the_panel_says_why_and_does_not_poll(viewer):
    run = running(make_run(targets=[make_target(name="tokenless", token_auth="")]))
    page = viewer.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert "need a target with a token" in page
    panel = viewer.get(reverse("runs:matomo", args=[run.pk]), **HTMX).content.decode()
    assert "hx-get" not in panel
    assert Run.objects.get().verification is None


@pytest.mark.django_db
def test_the_panel_without_htmx_goes_to_the_run_page(viewer):
    run = make_run()
    response = viewer.get(reverse("runs:matomo", args=[run.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("runs:detail", args=[run.pk])
