"""Thresholds: the syntax, the outcome of real runs against the local Matomo, exit codes."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from conftest import TOKEN
from presets.models import Preset
from runs.management.commands.run_traffic import exit_code
from runs.models import Run, RunLog
from trafficinator.cli import ExitCode
from trafficinator.sending.telemetry import HealthWindow
from trafficinator.testing import (
    RUN_OPERATOR,
    log_in_client,
    make_local_target,
    make_target,
    subprocess_env,
    wait_until,
)
from trafficinator.thresholds import (
    Measure,
    Scope,
    ThresholdError,
    certainly_failed,
    evaluate,
    parse,
    parse_many,
)

# --- the syntax -----------------------------------------------------------------------------


def test_a_threshold_reads_metric_scope_operator_and_number():
    threshold = parse("  p95_ms[shop] <= 500 ")
    assert (threshold.metric, threshold.scope, threshold.op, threshold.limit) == ("p95_ms", "shop", "<=", 500)
    assert threshold.text == "p95_ms[shop] <= 500"
    assert parse("success_rate>=0.99").limit == 0.99
    assert parse("errors_rate < 1%").limit == pytest.approx(0.01)
    assert parse("rejected[*] == 0").scope == "*"


@pytest.mark.parametrize(
    ("text", "column", "problem"),
    [
        ("p96_ms < 500", 0, "unknown metric “p96_ms”"),
        ("< 500", 0, "expected a metric name"),
        ("p95_ms 500", 7, "expected a comparison"),
        ("p95_ms => 500", 7, "expected a comparison"),
        ("p95_ms < fast", 9, "expected a number"),
        ("p95_ms < 500 ms", 13, "unexpected text after the number"),
        ("p95_ms < 5%", 10, "“%” fits rates only"),
        ("p95_ms[shop < 500", 17, "missing “]”"),
        ("p95_ms[] < 500", 6, "empty brackets"),
    ],
)
def test_a_bad_threshold_is_refused_with_a_message_that_points_at_the_error(text, column, problem):
    with pytest.raises(ThresholdError) as error:
        parse(text)
    assert error.value.column == column
    assert problem in str(error.value)
    assert error.value.pointer().splitlines()[1].index("^") == column


@pytest.mark.parametrize(
    ("text", "value", "certain"),
    [
        ("rejected == 0", 3, True),
        ("rejected == 0", 0, False),
        ("accepted == 100", 50, False),  # may still reach 100
        ("accepted == 100", 101, True),
        ("errors < 5", 5, True),
        ("errors < 5", 4, False),
        ("rejected <= 2.5", 3, True),
        ("rejected <= 2", 2, False),
        ("hits > 100", 5, False),  # may still grow past it
        ("rejected != 0", 0, False),
        ("success_rate >= 0.99", 0.5, False),  # a rate may recover
        ("p95_ms < 500", 900, False),  # so may a percentile
    ],
)
def test_only_a_growing_count_past_its_limit_has_certainly_failed(text, value, certain):
    threshold = parse(text)
    data = {"sent": value, "accepted": value, "rejected": value, "latency_ms": {"p95": value}}
    if threshold.metric == "errors":
        data = {"accepted": 0, "rejected": value}
    if threshold.metric == "success_rate":
        data = {"accepted": 1, "rejected": 1}
    scope = Scope(None, data, Measure())
    assert evaluate([threshold], scope, [])[0]["passed"] is False or not certain  # certain implies failing now
    assert bool(certainly_failed([threshold], scope, [])) is certain


def test_a_target_scoped_count_fails_early_for_that_target_only():
    thresholds = [parse("rejected[*] == 0")]
    shop, blog = Scope("shop", {"rejected": 2}, Measure()), Scope("blog", {"rejected": 0}, Measure())
    [failed] = certainly_failed(thresholds, Scope(None, {"rejected": 2}, Measure()), [shop, blog])
    assert (failed["scope"], failed["value"]) == ("shop", 2)


def test_several_thresholds_skip_blank_lines_and_comments():
    assert [t.text for t in parse_many("# latency\np95_ms < 500\n\nrejected == 0\n")] == [
        "p95_ms < 500",
        "rejected == 0",
    ]


def test_a_metric_without_data_fails_rather_than_passes():
    run = Scope(None, {"sent": 0}, Measure(elapsed_seconds=10, asked_visits=5))
    [result] = evaluate([parse("p95_ms < 500")], run, [])
    assert result["value"] is None and not result["passed"]


def test_rates_count_only_hits_that_got_an_answer_and_delivered_rate_uses_the_asked_visits():
    data = {"sent": 110, "accepted": 90, "rejected": 5, "timeouts": 5, "abandoned": 3, "visits_started": 40}
    scope = Scope(None, data, Measure(elapsed_seconds=100, asked_visits=50))
    results = evaluate(
        parse_many(["success_rate >= 0.9", "errors_rate <= 0.1", "rejected_rate == 0.05", "delivered_rate < 0.81"]),
        scope,
        [],
    )
    assert [r["value"] for r in results] == [0.9, 0.1, 0.05, 0.8]
    assert all(r["passed"] for r in results)


def test_delivered_rate_prefers_the_loaders_own_figure():
    data = {"visits_started": 40, "delivered_percent": 97.5}
    [result] = evaluate([parse("delivered_rate >= 0.97")], Scope(None, data, Measure(asked_visits=80)), [])
    assert result["value"] == 0.975 and result["passed"]


def test_a_target_threshold_applies_to_that_target_and_star_to_each():
    run = Scope(None, {"rejected": 3}, Measure())
    shop = Scope("shop", {"rejected": 0}, Measure())
    blog = Scope("blog", {"rejected": 3}, Measure())
    results = evaluate(parse_many(["rejected[shop] == 0", "rejected[*] == 0"]), run, [shop, blog])
    assert [(r["scope"], r["passed"]) for r in results] == [("shop", True), ("shop", True), ("blog", False)]


def test_a_steady_share_of_4xx_degrades_a_target_but_the_same_share_of_timeouts_does_not():
    rejected, timeouts = HealthWindow(), HealthWindow()
    for index in range(200):
        failed = index % 5 < 2  # 40 %, spread evenly
        rejected.add("rejected:400" if failed else "", 1)
        timeouts.add("timeouts" if failed else "", 1)
    assert rejected.degraded and not timeouts.degraded


# --- runs: creation, the form's and the preset's thresholds ---------------------------------------


@pytest.mark.django_db
def test_a_run_takes_the_presets_thresholds_unless_given_its_own():
    preset = Preset.objects.get(name="Light")
    Preset.objects.filter(pk=preset.pk).update(thresholds="# CI gate\np95_ms < 500\nrejected == 0")
    preset.refresh_from_db()
    target = make_target(name="shop")
    assert Run.objects.create_run(preset=preset, targets=[target]).thresholds == ["p95_ms < 500", "rejected == 0"]
    assert Run.objects.create_run(preset=preset, targets=[target], thresholds=["invalid[shop] == 0"]).thresholds == [
        "invalid[shop] == 0"
    ]
    assert Run.objects.create_run(preset=preset, targets=[target], thresholds=[]).thresholds == []


@pytest.mark.django_db
def test_a_run_refuses_a_bad_threshold_and_one_on_a_target_it_does_not_have():
    preset = Preset.objects.get(name="Light")
    target = make_target(name="shop")
    with pytest.raises(ValidationError, match="expected a comparison"):
        Run.objects.create_run(preset=preset, targets=[target], thresholds=["p95_ms 500"])
    with pytest.raises(ValidationError, match="no target named “blog”"):
        Run.objects.create_run(preset=preset, targets=[target], thresholds=["p95_ms[blog] < 500"])
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_preset_refuses_bad_thresholds():
    preset = Preset(name="Gate", thresholds="p95_ms < 500\nsucess_rate > 0.9")
    with pytest.raises(ValidationError, match="unknown metric “sucess_rate”"):
        preset.full_clean()


# --- real runs against the local Matomo -----------------------------------------------------------


def run_traffic(*args: str) -> str:
    out = io.StringIO()
    try:
        call_command("run_traffic", *args, stdout=out, stderr=io.StringIO())
    except CommandError as error:
        error.output = out.getvalue()  # type: ignore[attr-defined]  # what the command printed first
        raise
    return out.getvalue()


def summary(output: str) -> dict[str, str]:
    line = next(line for line in output.splitlines() if line.startswith("visits_started="))
    return dict(part.split("=") for part in line.split())


@pytest.mark.django_db(transaction=True)
def test_injected_400s_fail_a_rejected_threshold_flag_the_target_and_exit_with_3(fake_matomo, fast_preset):
    make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    fake_matomo.fail_next(40, 400)
    with pytest.raises(CommandError, match="1 threshold failed") as error:
        run_traffic(
            *("--target", "local", "--preset", "Fast", "--visits", "40", "--seed", "4"),
            *("--threshold", "rejected == 0", "--threshold", "success_rate[local] >= 0.1"),
        )
    assert error.value.returncode == ExitCode.THRESHOLDS_FAILED == 3
    counts = summary(error.value.output)
    assert counts["thresholds"] == "failed" and counts["rejected"] == "40"
    assert "Threshold failed: rejected == 0: 40" in error.value.output
    run = Run.objects.get()
    assert run.status == Run.Status.COMPLETED and run.outcome == Run.Outcome.FAILED
    assert [(r["threshold"], r["value"], r["passed"]) for r in run.threshold_results] == [
        ("rejected == 0", 40, False),
        ("success_rate[local] >= 0.1", pytest.approx(1 - 40 / int(counts["hits"])), True),
    ]
    assert RunLog.objects.filter(run=run, level="error", message__startswith="Thresholds failed: rejected").exists()
    [target_stats] = run.stats["targets"].values()
    assert target_stats["degraded"] and "rejected with HTTP 400" in target_stats["degraded_reason"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("shards", ["1", "2"])
def test_abort_on_fail_stops_the_run_once_a_count_threshold_has_failed_and_exits_with_3(
    fake_matomo, fast_preset, monkeypatch, shards
):
    make_local_target(fake_matomo)
    monkeypatch.setenv("DATABASE_URL", subprocess_env()["DATABASE_URL"])  # for shard 2's loader process
    fake_matomo.fail_next(5, 400)
    # 2,000 visits take ~100 s at this preset's pace: the run must be cut short long before.
    with pytest.raises(CommandError, match="stopped early because 1 threshold failed") as error:
        run_traffic(
            *("--target", "local", "--preset", "Fast", "--visits", "2000", "--seed", "4", "--shards", shards),
            *("--abort-on-fail", "--threshold", "rejected == 0", "--threshold", "p95_ms < 60000"),
        )
    assert error.value.returncode == ExitCode.THRESHOLDS_FAILED == 3
    assert summary(error.value.output)["thresholds"] == "failed"
    assert "Threshold failed: rejected == 0: 5" in error.value.output
    run = Run.objects.get()
    assert run.status == Run.Status.STOPPED and run.stopped_by_thresholds and run.outcome == Run.Outcome.FAILED
    # The count when it was first certain (a shard's report may not hold all 5 yet).
    assert run.end_reason.startswith("Stopped early: threshold certainly failed: rejected == 0: ")
    assert {shard.status for shard in run.shard_list()} == {Run.Status.STOPPED}
    assert run.totals["visits_started"] < 2000
    assert [result["passed"] for result in run.threshold_results] == [False, True]  # still judged at the end
    assert RunLog.objects.filter(run=run, level="error", message__startswith="Stopped early").exists()


@pytest.mark.django_db(transaction=True)
def test_latency_thresholds_judge_the_measured_latency(fake_matomo, fast_preset):
    make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    fake_matomo.set_latency(0.05)
    with pytest.raises(CommandError) as error:
        run_traffic("--target", "local", "--preset", "Fast", "--visits", "10", "--threshold", "p50_ms < 20")
    assert error.value.returncode == ExitCode.THRESHOLDS_FAILED
    assert Run.objects.get().threshold_results[0]["value"] >= 45

    output = run_traffic(
        *("--target", "local", "--preset", "Fast", "--visits", "10"),
        *("--threshold", "p50_ms >= 45", "--threshold", "p99_ms < 5000", "--threshold", "success_rate == 100%"),
    )
    assert summary(output)["thresholds"] == "passed"
    run = Run.objects.latest("pk")
    assert run.outcome == Run.Outcome.PASSED
    assert RunLog.objects.filter(run=run, message__startswith="Thresholds passed: p50_ms >= 45").exists()


@pytest.mark.django_db
def test_bad_usage_exits_with_2_and_creates_nothing():
    make_target(name="shop")
    for args, message in [
        (("--target", "shop", "--preset", "Light", "--threshold", "p95 < 5"), "unknown metric “p95”"),
        (("--target", "nope", "--preset", "Light"), "No target named"),
        (("--target", "shop", "--preset", "Nope"), "No preset named"),
        (
            ("--target", "shop", "--preset", "Light", "--abort-on-fail", "--threshold", "success_rate >= 0.99"),
            r"abort_on_fail: Nothing could stop this run early: none of its thresholds can fail before the end",
        ),
        (("--target", "shop", "--preset", "Light", "--abort-on-fail"), "the run has no thresholds"),
    ]:
        with pytest.raises(CommandError, match=message) as error:
            run_traffic(*args)
        assert error.value.returncode == ExitCode.USAGE == 2
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_bad_threshold_on_the_command_line_is_shown_with_a_caret_under_the_error():
    make_target(name="shop")
    with pytest.raises(CommandError) as error:
        run_traffic(
            "--target", "shop", "--preset", "Light", "--threshold", "rejected == 0", "--threshold", "p95_ms => 5"
        )
    assert error.value.returncode == ExitCode.USAGE
    message, expression, caret = str(error.value).splitlines()
    assert message.startswith("“p95_ms => 5”: expected a comparison")
    assert expression == "p95_ms => 5"
    assert caret.strip().startswith("^ expected a comparison")
    assert caret.index("^") == expression.index("=>")  # under the character that is wrong
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_run_traffic_parses_each_threshold_once(monkeypatch):
    from runs.management.commands.run_traffic import Command
    from trafficinator import thresholds

    make_target(name="shop")
    parsed: list[str] = []
    real_parse = thresholds.parse
    monkeypatch.setattr(thresholds, "parse", lambda text: parsed.append(text) or real_parse(text))
    command = Command(stdout=io.StringIO())
    options = command.create_parser("manage.py", "run_traffic").parse_args(
        ["--target", "shop", "--preset", "Light", "--threshold", "rejected == 0", "--threshold", "p95_ms < 500"]
    )
    run = command.create_run(vars(options))
    assert run.thresholds == ["rejected == 0", "p95_ms < 500"]
    assert parsed == ["rejected == 0", "p95_ms < 500"]  # by create_run; the command's caret needs no second parse


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "outcome", "code"),
    [
        (Run.Status.COMPLETED, "", 0),
        (Run.Status.COMPLETED, "passed", 0),
        (Run.Status.COMPLETED, "failed", 3),
        (Run.Status.FAILED, "failed", 1),
        (Run.Status.STOPPED, "passed", 130),
        (Run.Status.STOPPED, "failed", 130),  # stopped by a user: interrupted, whatever the figures say
    ],
)
def test_the_exit_code_says_how_the_run_ended(status, outcome, code):
    run = Run(status=status, outcome=outcome)
    assert exit_code(run) == code


def test_a_run_stopped_by_abort_on_fail_exits_with_3_unless_it_failed():
    assert exit_code(Run(status=Run.Status.STOPPED, outcome="failed", stopped_by_thresholds=True)) == 3
    assert exit_code(Run(status=Run.Status.FAILED, outcome="failed", stopped_by_thresholds=True)) == 1


def start_run_traffic(*args: str) -> subprocess.Popen:
    """``manage.py run_traffic`` as a terminal starts it, on the test database."""
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    return subprocess.Popen(
        [sys.executable, manage, "run_traffic", *args],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("stop", ["ctrl-c", "dashboard"])
def test_a_run_stopped_before_its_end_exits_with_130_after_its_summary(fake_matomo, fast_preset, client, stop):
    make_local_target(fake_matomo)
    process = start_run_traffic("--target", "local", "--preset", "Fast", "--duration", "10m", "--seed", "3")
    try:
        run = wait_until(lambda: Run.objects.filter(status=Run.Status.RUNNING).first(), 60, what="the run to start")
        wait_until(lambda: fake_matomo.stats()["recorded"] > 0, 60, what="hits at the fake Matomo", interval=0.2)
        if stop == "ctrl-c":
            process.send_signal(signal.SIGINT)
        else:
            assert log_in_client(client, RUN_OPERATOR).post(f"/runs/{run.pk}/stop/").status_code in (200, 302)
        output, errors = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == ExitCode.INTERRUPTED == 130, errors[-2000:]
    assert f"Run {run.pk} stopped before its end" in errors
    assert int(summary(output)["hits"]) > 0
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPED
    # Logged as who stopped it, the same way from the terminal as from a page.
    who = "the command line" if stop == "ctrl-c" else "user"
    assert run.logs.filter(message__regex=rf"^Stop requested by {who}[0-9]*\.$").count() == 1
    assert re.fullmatch(rf"Stopped by {who}[0-9]*\.", run.end_reason), run.end_reason


# --- pages ---------------------------------------------------------------------------------------


def _finished_run_with_failed_threshold() -> Run:
    preset = Preset.objects.get(name="Light")
    run = Run.objects.create_run(
        preset=preset, targets=[make_target(name="shop")], thresholds=["p95_ms < 100", "rejected == 0"]
    )
    run.claim(pid=1, host="test")
    stats: Any = {"totals": {"sent": 10, "accepted": 10, "latency_ms": {"p95": 250.0}}, "targets": {}}
    run.finish(Run.Status.COMPLETED, "Visit limit reached.", stats=stats)
    return run


@pytest.mark.django_db
def test_the_run_page_and_the_dashboard_show_the_outcome_and_the_failing_criteria(client):
    from trafficinator.testing import make_user

    run = _finished_run_with_failed_threshold()
    assert run.outcome == Run.Outcome.FAILED
    client.force_login(make_user(perms=RUN_OPERATOR))
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert 'data-outcome="failed"' in page and "p95_ms &lt; 100: 250" in page
    assert 'id="threshold-results"' in page
    dashboard = client.get("/").content.decode()
    assert 'data-outcome="failed"' in dashboard and "p95_ms &lt; 100: 250" in dashboard
    assert "stopped early" not in page
    Run.objects.filter(pk=run.pk).update(status=Run.Status.STOPPED, stopped_by_thresholds=True)
    assert "thresholds failed, stopped early" in client.get(f"/runs/{run.pk}/").content.decode()


@pytest.mark.django_db
def test_the_start_form_takes_thresholds_and_points_at_a_bad_one(client, django_capture_on_commit_callbacks):
    from trafficinator.testing import make_user

    target = make_target(name="shop")
    client.force_login(make_user(perms=RUN_OPERATOR))
    preset = Preset.objects.get(name="Light")
    data = {"targets": [target.pk], "preset": preset.pk, "thresholds": "p95_ms < 500\nrejected[shop] = 0"}
    response = client.post("/runs/new/", data)
    assert response.status_code == 200
    assert (
        "expected a comparison: &lt;, &lt;=, &gt;, &gt;=, == or != (“==” for equality) at character 16"
        in response.content.decode()
    )
    data["thresholds"] = "p95_ms < 500\nrejected[shop] == 0"
    data["abort_on_fail"] = "on"
    with django_capture_on_commit_callbacks():
        response = client.post("/runs/new/", data)
    assert response.status_code == 302
    run = Run.objects.get()
    assert run.thresholds == ["p95_ms < 500", "rejected[shop] == 0"] and run.abort_on_fail


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("thresholds", "why"),
    [
        ("", "the run has no thresholds"),  # the preset's: Light has none
        ("none", "the run has no thresholds"),
        ("p95_ms < 500\nsuccess_rate >= 0.99\nhits > 10", "none of its thresholds can fail before the end"),
    ],
)
def test_the_start_form_refuses_stop_when_a_threshold_fails_when_none_can_fail_early(client, thresholds, why):
    target = make_target(name="shop")
    data = {"targets": [target.pk], "preset": Preset.objects.get(name="Light").pk, "thresholds": thresholds}
    response = log_in_client(client, RUN_OPERATOR).post("/runs/new/", {**data, "abort_on_fail": "on"})
    assert response.status_code == 200
    assert why in " ".join(response.context["start_form"].errors["abort_on_fail"])
    assert why in response.content.decode()  # shown next to the box
    assert not Run.objects.exists()


def _report_queries(run: Run) -> int:
    """Queries of one loader report of ``run``'s first shard (its run already loaded, as
    in a loader after its first report)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    token = run.claim(pid=1, host="a")
    assert token is not None
    shard = run.claimed_shard
    assert shard.run.pk == run.pk
    stats: Any = {"totals": {"sent": 5, "accepted": 5}, "targets": {}}
    assert shard.report(token, stats)  # the first report
    with CaptureQueriesContext(connection) as queries:
        assert shard.report(token, stats)
    return len(queries)


@pytest.mark.django_db
def test_a_report_checks_for_an_early_stop_only_when_a_threshold_can_fail_early_and_in_fixed_queries():
    def run_with(thresholds: list[str], abort_on_fail: bool, targets: int = 1) -> Run:
        run = Run.objects.create_run(
            preset=Preset.objects.get(name="Light"), targets=[make_target() for _ in range(targets)], thresholds=[]
        )
        # As a run stored before such requests were refused could have it.
        Run.objects.filter(pk=run.pk).update(thresholds=thresholds, abort_on_fail=abort_on_fail)
        run.refresh_from_db()
        return run

    plain = _report_queries(run_with(["rejected == 0"], abort_on_fail=False))
    assert _report_queries(run_with(["p95_ms < 500", "success_rate >= 0.99"], abort_on_fail=True)) == plain
    checked = _report_queries(run_with(["rejected == 0"], abort_on_fail=True))
    assert checked == plain + 2  # the run, and its targets with their names
    assert _report_queries(run_with(["rejected[*] == 0"], abort_on_fail=True, targets=5)) == checked
