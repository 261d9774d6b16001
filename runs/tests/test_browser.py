"""The dashboard and a run's page in a real headless Chromium, against pytest-django's
live_server: log in through the admin form, start a run, watch its counters rise without
a reload, stop it, and check that the page stops polling once the run has ended.

The first tests stand a small simulated loader (a thread writing telemetry snapshots the
way the real loader does) behind the run, so they check the pages on their own. The last
one runs everything for real: a django-q2 "loaders" cluster in its own process starts
``manage.py run_loader``, which sends traffic to a local fake Matomo.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from runs.models import Run, RunSample
from trafficinator.sending.telemetry import RunTelemetry
from trafficinator.testing import (
    RUN_VIEWER,
    log_in,
    make_browser_paced_preset,
    make_preset,
    make_target,
    make_user,
    subprocess_env,
)

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
PANELS = ("#run-summary", "#run-charts", "#run-targets", "#run-log")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def page(browser_page):
    ARTIFACTS.mkdir(exist_ok=True)
    browser_page.panel_requests = []
    browser_page.on(
        "request", lambda request: browser_page.panel_requests.append(request.url) if "/runs/" in request.url else None
    )
    return browser_page


def start_run_from_the_dashboard(
    page, target_name: str, preset_name: str, visits_per_day: int, screenshot: str = ""
) -> int:
    form = page.locator("#start-run")
    form.get_by_label(target_name).check()
    form.get_by_label("Preset").select_option(label=preset_name)
    form.get_by_label("Visits per day").fill(str(visits_per_day))
    # The estimate follows the form (htmx GET after each change).
    expected = f"{visits_per_day:,} visits/day"
    page.wait_for_function("text => document.querySelector('#run-estimate').textContent.includes(text)", arg=expected)
    assert not [url for url in page.panel_requests if "csrfmiddlewaretoken" in url]  # no token in URLs
    if screenshot:
        page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)
    form.get_by_role("button", name="Start run").click()
    page.wait_for_url(re.compile(r".*/runs/\d+/$"))
    return int(page.url.rstrip("/").rsplit("/", 1)[1])


def figure(page, scope: str, name: str) -> int:
    return int(page.locator(f'{scope} [data-figure="{name}"]').first.inner_text().replace(",", ""))


def wait_for_status(page, status: str, timeout: float = 20_000) -> None:
    page.wait_for_selector(f'#run-summary [data-status="{status}"]', timeout=timeout)


def stop_and_check_polling_ends(page, run_id: int) -> None:
    page.once("dialog", lambda dialog: dialog.accept())  # hx-confirm's "Stop run N?"
    page.locator("#run-summary").get_by_role("button", name="Stop").click()
    wait_for_status(page, "stopped", timeout=30_000)
    # Every panel of the ended run was redrawn without its polling attributes...
    for panel in PANELS:
        page.wait_for_function(f"() => !document.querySelector('{panel}').hasAttribute('hx-trigger')")
    # ...so no more requests go out.
    page.wait_for_timeout(500)
    asked = len(page.panel_requests)
    page.wait_for_timeout(4_500)
    assert page.panel_requests[asked:] == []
    assert Run.objects.get(pk=run_id).status == Run.Status.STOPPED


class SimulatedLoader(threading.Thread):
    """Stands in for ``run_loader``: claims the run, writes growing telemetry snapshots and
    a sample row like the real loader, and ends the run as stopped when asked to."""

    def __init__(self, run_id: int, hits_per_tick: int = 40) -> None:
        super().__init__(daemon=True)
        self.run_id = run_id
        self.hits_per_tick = hits_per_tick
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            run = Run.objects.get(pk=self.run_id)
            assert run.claim(pid=1, host="simulated")
            telemetry = RunTelemetry()
            for rt in run.run_targets.select_related("target"):
                telemetry.add(str(rt.pk), rt.target.name)
            minute = timezone.now().replace(second=0, microsecond=0)
            for tick in range(600):
                for target in telemetry.targets.values():
                    target.start_visits(4)
                    target.start_hits(self.hits_per_tick)
                    target.record_outcome("accepted", self.hits_per_tick - 1, latency=0.02 + tick % 5 / 100)
                    target.record_outcome("server_errors", 1, latency=0.3, status=503)
                if tick % 4 == 0:
                    sample = telemetry.minute_sample()
                    RunSample.objects.update_or_create(run=run, minute=minute, defaults=sample)
                if run.heartbeat(telemetry.snapshot()):
                    break
                time.sleep(0.25)
            run.finish(Run.Status.STOPPED, "Stopped.", stats=telemetry.snapshot())
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connection.close()


def test_a_run_started_from_the_dashboard_refreshes_live_and_stops_polling_when_stopped(page, live_server):
    make_target(name="shop")
    make_preset(name="Steady", visits_per_day=5000, daily_curve="flat")
    log_in(page, live_server, make_user("operator", superuser=True))

    run_id = start_run_from_the_dashboard(page, "shop", "Steady", 86_400, screenshot="dashboard-start-form.png")
    wait_for_status(page, "queued")
    run = Run.objects.get(pk=run_id)
    assert (run.visits_per_day, run.preset_name, run.created_by.username) == (86_400, "Steady", "operator")

    loader = SimulatedLoader(run_id)
    loader.start()
    try:
        page.evaluate("window.notReloaded = true")
        wait_for_status(page, "running")
        page.wait_for_function(
            "() => Number(document.querySelector('#run-summary [data-figure=hits]').textContent.replace(/,/g, '')) > 0"
        )
        first = figure(page, "#run-summary", "hits")
        page.wait_for_function(
            "first => Number(document.querySelector('#run-summary [data-figure=hits]').textContent"
            ".replace(/,/g, '')) > first",
            arg=first,
        )
        assert page.evaluate("window.notReloaded") is True  # htmx swapped the panel, no reload
        page.wait_for_selector("#run-charts .tf-series-hits rect")
        page.wait_for_function("() => document.querySelector('#run-targets').textContent.includes('shop')")
        page.screenshot(path=str(ARTIFACTS / "run-page.png"), full_page=True)

        page.goto(f"{live_server.url}/")
        card = f"#run-card-{run_id}"
        page.wait_for_selector(card)
        before = figure(page, card, "hits")
        page.wait_for_function(
            "([card, before]) => Number(document.querySelector(card + ' [data-figure=hits]').textContent"
            ".replace(/,/g, '')) > before",
            arg=[card, before],
        )
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        page.goto(f"{live_server.url}/runs/{run_id}/")
        stop_and_check_polling_ends(page, run_id)
        page.screenshot(path=str(ARTIFACTS / "run-page-stopped.png"), full_page=True)
    finally:
        Run.objects.filter(pk=run_id).update(stop_requested=True)
        loader.join(timeout=10)
    assert loader.error is None, loader.error
    assert "Stopped by operator" in page.locator("#run-summary").inner_text()


def test_panels_poll_only_while_the_tab_is_visible(page, live_server):
    run = Run.objects.create_run(preset=make_preset(), targets=[make_target()])
    run.claim(pid=1, host="test")
    log_in(page, live_server, make_user(superuser=True))
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    page.wait_for_timeout(2_500)
    assert any("/summary/" in url for url in page.panel_requests)  # polling while visible

    page.evaluate("""() => {
        Object.defineProperty(document, 'visibilityState', {value: 'hidden', configurable: true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_timeout(500)
    asked = len(page.panel_requests)
    page.wait_for_timeout(4_500)
    assert page.panel_requests[asked:] == []  # a hidden tab asks nothing

    page.evaluate("() => { delete document.visibilityState; document.dispatchEvent(new Event('visibilitychange')); }")
    page.wait_for_timeout(2_500)
    assert len(page.panel_requests) > asked  # and resumes once visible again


def test_a_viewer_without_run_traffic_sees_the_run_but_no_buttons(page, live_server):
    run = Run.objects.create_run(preset=make_preset(), targets=[make_target()])
    run.claim(pid=1, host="test")
    log_in(page, live_server, make_user("viewer", perms=RUN_VIEWER))
    assert page.locator("#dashboard-runs").is_visible() and page.locator("#start-run").count() == 0
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    wait_for_status(page, "running")
    assert page.locator("#run-summary button").count() == 0


@pytest.fixture
def loader_cluster(live_server):
    """A real django-q2 "loaders" cluster on the test database: it takes the task the start
    view enqueues and runs ``manage.py run_loader`` for it."""
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / "qcluster.log").open("w")
    process = subprocess.Popen(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "qcluster"],
        env=subprocess_env(Q_CLUSTER_NAME="loaders", PYTHONUNBUFFERED="1"),
        cwd=settings.BASE_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    process.send_signal(signal.SIGTERM)  # the cluster waits for its tasks; the run was stopped
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def test_a_real_run_sends_traffic_to_a_fake_matomo_end_to_end(page, live_server, loader_cluster):
    from targets.fake_matomo import FakeMatomo

    with FakeMatomo(sites=[1]) as matomo:
        make_target(name="fake-matomo", matomo_url=matomo.url, site_id=1)
        make_browser_paced_preset("Quick visits")
        log_in(page, live_server, make_user("operator", superuser=True))
        run_id = start_run_from_the_dashboard(page, "fake-matomo (no token)", "Quick visits", 400_000)

        wait_for_status(page, "running", timeout=60_000)  # the cluster picked the task up
        page.evaluate("window.notReloaded = true")
        page.wait_for_function(
            "() => Number(document.querySelector('#run-summary [data-figure=hits]').textContent.replace(/,/g, '')) > 0",
            timeout=30_000,
        )
        first = figure(page, "#run-summary", "hits")
        page.wait_for_function(
            "first => Number(document.querySelector('#run-summary [data-figure=hits]').textContent"
            ".replace(/,/g, '')) > first",
            arg=first,
            timeout=30_000,
        )
        assert page.evaluate("window.notReloaded") is True
        page.screenshot(path=str(ARTIFACTS / "run-page-real.png"), full_page=True)
        page.goto(f"{live_server.url}/")
        page.wait_for_selector(f"#run-card-{run_id}")
        page.screenshot(path=str(ARTIFACTS / "dashboard-real.png"), full_page=True)

        page.goto(f"{live_server.url}/runs/{run_id}/")
        stop_and_check_polling_ends(page, run_id)
        page.screenshot(path=str(ARTIFACTS / "run-page-real-stopped.png"), full_page=True)
        run = Run.objects.get(pk=run_id)
        assert run.totals["accepted"] > 0
        assert matomo.stats()["tracked"] >= run.totals["accepted"]  # what the page counted really arrived


def test_matomos_live_counter_shows_next_to_ours_and_stops_after_the_run(page, live_server, fake_matomo, settings):
    """The run page reads Matomo's live counter by itself while the run is active (here every
    10 s, the lowest MATOMO_LIVE_SECONDS), shows when it was read, and reads once more after
    the run ended; then its panel stops polling."""
    import requests

    from conftest import TOKEN

    settings.MATOMO_LIVE_SECONDS = 10
    target = make_target(name="counted", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)

    def visits_arrive(first: int, count: int) -> None:
        for number in range(first, first + count):
            data = {"idsite": "1", "rec": "1", "send_image": "0", "cid": f"{number:016x}", "url": "https://shop/"}
            assert requests.post(target.tracking_url, data=data, timeout=10).status_code == 204

    run = Run.objects.create_run(preset=make_preset(), targets=[(target, 1.0, None)])
    run.claim(pid=1, host="test")
    visits_arrive(1, 3)
    log_in(page, live_server, make_user(superuser=True))
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    counter = "#verification [data-matomo-visits]"
    page.wait_for_function(f"() => document.querySelector('{counter}')?.textContent.trim() === '3'", timeout=30_000)
    assert "read at" in page.locator("#verification").inner_text()
    assert "still sending" in page.locator("#verification").inner_text()

    visits_arrive(4, 2)  # the next reading, at most 10 s later, sees them
    page.wait_for_function(f"() => document.querySelector('{counter}').textContent.trim() === '5'", timeout=40_000)
    page.screenshot(path=str(ARTIFACTS / "run-page-matomo-counter.png"), full_page=True)

    Run.objects.filter(pk=run.pk).update(status=Run.Status.COMPLETED, finished_at=timezone.now())
    page.wait_for_function("() => !document.querySelector('#verification').hasAttribute('hx-trigger')", timeout=40_000)
    final = Run.objects.get(pk=run.pk).verification
    assert final["running"] is False and final["rows"][0]["matomo_visits"] == 5
    assert "visits more" in page.locator("#verification").inner_text()  # judged: our run started none of them
