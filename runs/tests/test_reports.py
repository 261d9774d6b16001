"""Run reports (JSON, CSV, HTML) and comparisons, parsed back and checked against the run."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from conftest import TOKEN
from runs.models import Run, RunLog, RunSample
from trafficinator.testing import RUN_VIEWER, make_target, make_user
from trafficinator.thresholds import answered_hits

OUTCOME_KEYS = ("accepted", "invalid", "unaccounted", "rejected", "server_errors", "network_errors", "timeouts")


def command(name: str, *args: str) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def finished_run(fake_matomo, fast_preset, tmp_path) -> tuple[Run, dict]:
    """A run with two targets, some 400s and 503s on its way, written with --report."""
    make_target(name="shop", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    make_target(name="blog", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    fake_matomo.fail_next(6, 400)
    fake_matomo.fail_next(4, 503)
    path = tmp_path / "run.json"
    try:
        command(
            "run_traffic",
            *("--target", "shop", "--target", "blog", "--preset", "Fast", "--visits", "40", "--seed", "11"),
            *("--threshold", "rejected == 0", "--report", str(path)),
        )
    except CommandError as error:
        assert error.returncode == 3  # the rejected hits fail the threshold; the report is written anyway
    run = Run.objects.get()
    return run, json.loads(path.read_text())


@pytest.mark.django_db(transaction=True)
def test_the_json_report_holds_the_runs_counters_settings_samples_thresholds_and_log(finished_run):
    run, report = finished_run
    totals = run.stats["totals"]
    assert report["format"] == "trafficinator.run_report" and report["run"]["id"] == run.pk
    assert report["run"]["status"] == "completed" and report["run"]["outcome"] == "failed"
    assert {key: report["totals"]["outcomes"][key] for key in OUTCOME_KEYS} == {
        key: totals[key] for key in OUTCOME_KEYS
    }
    assert report["totals"]["sent"] == totals["sent"]
    assert report["totals"]["status_codes"]["rejected"] == {"400": 6}
    assert report["totals"]["figures"]["hits"] == totals["sent"]
    assert report["totals"]["figures"]["success_rate"] == pytest.approx(totals["accepted"] / answered_hits(totals))
    # Per target: the totals are exactly the sum of the targets.
    assert [t["name"] for t in report["targets"]] == ["blog", "shop"]
    for key in OUTCOME_KEYS:
        assert sum(t["outcomes"][key] for t in report["targets"]) == totals[key]
    # Latency: the histogram holds every timed request.
    histogram = report["totals"]["latency_histogram"]
    assert sum(row["count"] for row in histogram) == totals["latency_ms"]["count"] == totals["requests"]
    assert all(row["from_ms"] < row["to_ms"] for row in histogram)
    # Per-minute samples add up to the answered hits, for the run and per target.
    assert sum(sample["hits"] for sample in report["samples"]) == answered_hits(totals)
    per_target = {}
    for sample in report["samples"]:
        for name, values in sample["targets"].items():
            per_target[name] = per_target.get(name, 0) + values["hits"]
    assert per_target == {t["name"]: answered_hits(t["outcomes"]) for t in report["targets"]}
    assert report["thresholds"]["results"][0] | {"value": None} == {
        "threshold": "rejected == 0",
        "scope": "run",
        "metric": "rejected",
        "op": "==",
        "limit": 0,
        "value": None,
        "passed": False,
    }
    assert len(report["log"]) == RunLog.objects.filter(run=run).count()
    assert report["settings"]["seed"] == 11 and report["settings"]["thresholds"] == ["rejected == 0"]
    assert {t["name"]: t["has_token"] for t in report["settings"]["targets"]} == {"blog": True, "shop": True}
    assert TOKEN not in json.dumps(report)  # no secret in a report


@pytest.mark.django_db(transaction=True)
def test_the_csv_report_has_a_row_per_minute_and_target_that_add_up_to_the_run(finished_run):
    run, report = finished_run
    rows = list(csv.DictReader(io.StringIO(command("run_report", str(run.pk), "--format", "csv"))))
    assert rows and set(rows[0]) == {
        *("minute", "seconds_since_start", "target", "hits", "accepted", "errors", "p95_ms"),
        *("visits_sent", "matomo_visits", "matomo_actions", "matomo_note"),
    }
    assert not any(row["matomo_visits"] for row in rows)  # Matomo was not read for this run
    everything = [row for row in rows if row["target"] == "*"]
    assert len(everything) == RunSample.objects.filter(run=run).count()
    assert sum(int(row["hits"]) for row in everything) == answered_hits(run.stats["totals"])
    for target in report["targets"]:
        mine = [row for row in rows if row["target"] == target["name"]]
        assert (
            sum(int(row["errors"]) for row in mine)
            == answered_hits(target["outcomes"]) - target["outcomes"]["accepted"]
        )


class TableReader(HTMLParser):
    """The text of every cell (th or td) of each table with an id: {id: [[cell, ...], ...]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("th", "td") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._table is not None and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(html: str) -> dict[str, list[list[str]]]:
    reader = TableReader()
    reader.feed(html)
    return reader.tables


@pytest.mark.django_db(transaction=True)
def test_the_html_reports_figures_and_tables_are_the_runs_counters(finished_run):
    run, _ = finished_run
    tables = html_tables(command("run_report", str(run.pk), "--format", "html"))
    totals = run.stats["totals"]
    figures = dict(tables["key-figures"])
    assert (int(figures["visits"]), int(figures["hits"])) == (totals["visits_started"], totals["sent"])
    assert {key: int(figures[key]) for key in ("accepted", "rejected", "invalid")} == {
        key: totals[key] for key in ("accepted", "rejected", "invalid")
    }
    assert totals["rejected"] == 6  # the injected 400s: a figure that is not zero is compared
    assert float(figures["success_rate"]) == pytest.approx(totals["accepted"] / answered_hits(totals), abs=1e-4)
    assert float(figures["p95_ms"]) == pytest.approx(totals["latency_ms"]["p95"], abs=1e-4)

    by_target = {rt.target.name: run.stats["targets"][str(rt.pk)] for rt in run.run_targets.select_related("target")}
    header, *rows = tables["outcomes"]
    assert header == ["Outcome", "All targets", "blog", "shop"]
    outcomes = {row[0]: row[1:] for row in rows}
    for key in OUTCOME_KEYS:
        assert [int(value) for value in outcomes[key]] == [totals[key], by_target["blog"][key], by_target["shop"][key]]
    header, *rows = tables["targets"]
    assert {row[0]: (int(row[1]), int(row[2])) for row in rows} == {
        name: (data["visits_started"], data["sent"]) for name, data in by_target.items()
    }
    assert [row[0] for row in tables["thresholds"][1:]] == ["rejected == 0"]
    assert tables["thresholds"][1][2:] == [str(totals["rejected"]), "failed"]


@pytest.mark.django_db(transaction=True)
def test_the_html_report_is_one_file_that_loads_nothing_from_outside(finished_run, tmp_path):
    run, _ = finished_run
    path = tmp_path / "run.html"
    call_command("run_report", str(run.pk), "--format", "html", "--output", str(path), stderr=io.StringIO())
    html = path.read_text()
    assert (
        f"Run {run.pk}" in html
        and "thresholds failed" in html
        and "<svg" in html
        and ("<polyline" in html or "<circle" in html)
    )
    assert not re.search(r"""(src|href)\s*=|url\(|@import|<script|<link""", html, re.IGNORECASE)
    assert "@media print" in html
    assert TOKEN not in html


@pytest.mark.django_db(transaction=True)
def test_run_report_compares_two_runs_with_deltas_and_the_settings_that_differ(fake_matomo, fast_preset):
    make_target(name="shop", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    command("run_traffic", "--target", "shop", "--preset", "Fast", "--visits", "10", "--seed", "1")
    command("run_traffic", "--target", "shop", "--preset", "Fast", "--visits", "20", "--seed", "2", "--bulk")
    first, second = Run.objects.order_by("pk")
    comparison = json.loads(command("run_report", "--compare", str(first.pk), str(second.pk)))
    figures = {row["name"]: row for row in comparison["figures"]}
    assert figures["visits"]["a"] == 10 and figures["visits"]["b"] == 20
    assert figures["visits"]["delta"] == 10 and figures["visits"]["percent_change"] == 100.0
    differing = {row["name"] for row in comparison["settings"] if row["differs"]}
    assert {"max_visits", "seed", "bulk"} <= differing and "preset" not in differing

    html = command("run_report", "--compare", str(first.pk), str(second.pk), "--format", "html")
    assert html.count("<polyline") + html.count("<circle") >= 2  # both runs on the same charts
    assert 'data-differs="seed"' in html


@pytest.mark.django_db
def test_run_report_refuses_bad_usage_with_exit_code_2():
    for args, message in [((), "Give a run id"), (("999",), "No run 999"), (("--plan", "5"), "No backfill plan 5")]:
        with pytest.raises(CommandError, match=message) as error:
            command("run_report", *args)
        assert error.value.returncode == 2


# --- pages ---------------------------------------------------------------------------------


def _run_with_samples() -> Run:
    from runs.tests.test_views import fill_stats, make_run, make_samples

    run = make_run()
    run.claim(pid=1, host="test")
    fill_stats(run)
    make_samples(run)
    run.finish(Run.Status.COMPLETED, "Done.")
    return run


@pytest.mark.django_db
def test_the_run_page_links_its_reports_and_each_downloads(client):
    run = _run_with_samples()
    client.force_login(make_user(perms=RUN_VIEWER))
    page = client.get(f"/runs/{run.pk}/").content.decode()
    for fmt in ("json", "csv", "html"):
        assert f"/runs/{run.pk}/report.{fmt}" in page
    response = client.get(f"/runs/{run.pk}/report.json?download=1")
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.pk}.json"'
    assert response.json()["totals"]["sent"] == run.stats["totals"]["sent"]
    html = client.get(f"/runs/{run.pk}/report.html")
    assert html["Content-Security-Policy"].startswith("default-src 'none'")
    assert client.get(f"/runs/{run.pk}/report.xml").status_code == 404


@pytest.mark.django_db
def test_reports_need_the_view_permission(client):
    run = _run_with_samples()
    client.force_login(make_user(perms=()))
    assert client.get(f"/runs/{run.pk}/report.json").status_code == 403
    assert client.get(f"/runs/compare/?a={run.pk}&b={run.pk}").status_code == 403


@pytest.mark.django_db
def test_the_compare_page_shows_both_runs_side_by_side(client):
    first, second = _run_with_samples(), _run_with_samples()
    Run.objects.filter(pk=second.pk).update(visits_per_day=999)
    client.force_login(make_user(perms=RUN_VIEWER))
    page = client.get(f"/runs/compare/?a={first.pk}&b={second.pk}").content.decode()
    assert f"Run {first.pk}" in page and f"run {second.pk}" in page
    assert 'data-differs="visits_per_day"' in page and 'id="compare-figures"' in page
    assert page.count("<polyline") >= 2
    assert "is not a run id" in client.get("/runs/compare/?a=1&b=nope").content.decode()
    download = client.get(f"/runs/compare/?a={first.pk}&b={second.pk}&format=json")
    assert download.json()["a"]["id"] == first.pk


@pytest.mark.django_db(transaction=True)
def test_the_html_report_opens_in_a_browser_without_errors_or_requests(browser_page, live_server):
    from trafficinator.testing import log_in

    run = _run_with_samples()
    user = make_user(perms=RUN_VIEWER)
    log_in(browser_page, live_server, user, next_url=f"/runs/{run.pk}/")
    requests: list[str] = []
    # Chromium may fetch the site's icon for its own tab (it knows /static/favicon.svg from
    # the run page): that is the browser's request, not the report's.
    browser_page.on(
        "request",
        lambda request: None if "favicon" in request.url else requests.append(request.url),
    )
    browser_page.goto(f"{live_server.url}/runs/{run.pk}/report.html")
    browser_page.wait_for_selector("#key-figures")
    assert requests == [f"{live_server.url}/runs/{run.pk}/report.html"]
    assert browser_page.locator("svg polyline").count() >= 2
    artifacts = Path(settings.BASE_DIR) / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    browser_page.screenshot(path=str(artifacts / "run-report.png"), full_page=True)


@pytest.mark.django_db(transaction=True)
def test_matomos_own_counts_are_in_every_format_of_the_report(fake_matomo, fast_preset):
    make_target(name="shop", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    command("run_traffic", "--target", "shop", "--preset", "Fast", "--visits", "20", "--seed", "5")
    run = Run.objects.get()
    assert json.loads(command("run_report", str(run.pk)))["matomo"] is None
    command("verify", str(run.pk))  # reads Matomo's live counter and keeps the answer on the run

    report = json.loads(command("run_report", str(run.pk), "--format", "json"))
    reading = report["matomo"]
    assert reading["source"] == "Live.getCounters" and reading["running"] is False
    assert reading["read_at"] == Run.objects.get().verification["at"]
    assert [(row["target"], row["sent_visits"], row["matomo_visits"], row["cause"]) for row in reading["rows"]] == [
        ("shop", 20, 20, "")
    ]

    rows = list(csv.DictReader(io.StringIO(command("run_report", str(run.pk), "--format", "csv"))))
    matomo_rows = [row for row in rows if row["matomo_visits"]]
    assert [(row["target"], row["visits_sent"], row["matomo_visits"], row["matomo_note"]) for row in matomo_rows] == [
        ("shop", "20", "20", "as sent")
    ]
    assert matomo_rows[0]["minute"] == reading["read_at"] and matomo_rows[0]["hits"] == ""

    html = command("run_report", str(run.pk), "--format", "html")
    section = html[html.index('<table id="matomo">') :]
    section = section[: section.index("</table>")]
    assert "<th>shop</th>" in section and "as sent" in section and section.count(">20<") == 2
