"""manage.py backfill: estimate, explicit confirmation, foreground run, summary line."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command

from backfill import runner
from backfill.models import BackfillDay, BackfillPlan
from backfill.tests.conftest import days_ago, stockholm_today
from targets.models import Target
from trafficinator.cli import ExitCode
from trafficinator.sending.sender import RetryPolicy
from trafficinator.testing import BACKFILL_OPERATOR, log_in_client

SUMMARY = re.compile(r"\bdays=(\d+) visits=(\d+) hits=(\d+) accepted=(\d+) invalid=(\d+) failed=(\d+)$", re.M)


class FakeStdin(io.StringIO):
    def __init__(self, text: str, tty: bool) -> None:
        super().__init__(text)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def backfill(*args: str) -> str:
    out = io.StringIO()
    call_command("backfill", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_yes_runs_the_days_and_ends_with_the_summary_line(fake_matomo, shop, small_preset):
    output = backfill("--target", "shop", "--preset", "Small", "--last-days", "2", "--seed", "4", "--yes")
    plan = BackfillPlan.objects.get()
    assert plan.status == BackfillPlan.Status.COMPLETED and plan.confirmed_by_name.endswith("(command line)")
    assert "→ shop: " in output and "time zone Europe/Stockholm" in output and "generated sample" in output
    days, visits, hits, accepted, invalid, failed = map(int, SUMMARY.search(output).groups())
    stats = fake_matomo.stats()
    assert (days, invalid, failed) == (2, 0, 0)
    assert visits == sum(day.planned_visits for day in plan.days.all())
    assert hits == accepted == stats["recorded"]
    assert "core:archive" in output  # what to do next


def test_without_a_terminal_and_without_yes_nothing_is_confirmed(db, fake_matomo, shop, small_preset, monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeStdin("", tty=False))
    with pytest.raises(CommandError, match="standard input is not a terminal"):
        backfill("--target", "shop", "--preset", "Small", "--last-days", "2")
    assert BackfillPlan.objects.get().status == BackfillPlan.Status.DRAFT
    assert fake_matomo.stats()["requests"] == 0


def test_on_a_terminal_typing_the_targets_name_confirms(db, fake_matomo, shop, small_preset, monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeStdin("nope\n", tty=True))
    with pytest.raises(CommandError, match="Not confirmed"):
        backfill("--target", "shop", "--preset", "Small", "--last-days", "1")
    assert fake_matomo.stats()["requests"] == 0
    monkeypatch.setattr("sys.stdin", FakeStdin("shop\n", tty=True))
    output = backfill("--target", "shop", "--preset", "Small", "--last-days", "1")
    assert "Type the target's name (shop)" in output and SUMMARY.search(output)
    assert BackfillPlan.objects.filter(status=BackfillPlan.Status.COMPLETED).count() == 1


def test_guardrails_and_bad_arguments_are_explained(db, fake_matomo, shop, small_preset):
    with pytest.raises(CommandError, match="Only fully past days"):
        backfill(
            "--target",
            "shop",
            "--preset",
            "Small",
            "--start",
            str(days_ago(2)),
            "--end",
            str(stockholm_today()),
            "--yes",
        )
    with pytest.raises(CommandError, match="not both"):
        backfill("--target", "shop", "--preset", "Small", "--last-days", "2", "--start", "2025-01-01", "--yes")
    with pytest.raises(CommandError, match="No preset named “Nope”"):
        backfill("--target", "shop", "--preset", "Nope", "--last-days", "2")
    with pytest.raises(CommandError, match="No target named “other”"):
        backfill("--target", "other", "--preset", "Small", "--last-days", "2")
    assert not BackfillPlan.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_failed_plan_exits_non_zero_after_its_summary(fake_matomo, shop, small_preset, monkeypatch):
    monkeypatch.setattr(runner, "RETRY", RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.02))
    fake_matomo.fail_next(50, 500)
    out = io.StringIO()
    with pytest.raises(CommandError, match="failed: Bulk requests to shop") as exc:
        call_command("backfill", "--target", "shop", "--preset", "Small", "--last-days", "1", "--yes", stdout=out)
    assert exc.value.returncode == 1
    assert SUMMARY.search(out.getvalue())


@pytest.mark.django_db(transaction=True)
def test_resume_continues_an_interrupted_plan_and_refuses_finished_ones(fake_matomo, shop, small_preset):
    with pytest.raises(CommandError, match=r"Interrupted.*--resume") as exc:
        _interrupted_run()
    assert exc.value.returncode == 130
    plan = BackfillPlan.objects.get()
    assert plan.status == BackfillPlan.Status.RUNNING
    assert plan.days.filter(status=BackfillDay.Status.PENDING, visits_done__gt=0).exists()

    output = backfill("--resume", str(plan.pk))
    plan.refresh_from_db()
    assert "Resuming backfill plan" in output and plan.status == BackfillPlan.Status.COMPLETED
    assert int(SUMMARY.search(output).group(4)) == fake_matomo.stats()["recorded"]
    with pytest.raises(CommandError, match="locked"):
        backfill("--resume", str(plan.pk))


@pytest.mark.django_db(transaction=True)
def test_a_plan_cancelled_on_its_page_while_sending_exits_with_130_like_a_stopped_run(
    fake_matomo, shop, small_preset, client
):
    browser = log_in_client(client, BACKFILL_OPERATOR)
    out = io.StringIO()

    def cancel_on_the_page(command, plan):
        assert browser.post(f"/backfill/{plan.pk}/cancel/").status_code == 302

    command = command_that_at_its_third_checkpoint(cancel_on_the_page, out)
    with pytest.raises(CommandError, match=r"was cancelled.*Cancelled by") as exc:
        call_command(
            command, "--target", "shop", "--preset", "Small", "--last-days", "2", "--yes", "--batch-size", "30"
        )
    assert exc.value.returncode == ExitCode.INTERRUPTED == 130
    assert SUMMARY.search(out.getvalue())
    assert BackfillPlan.objects.get().status == BackfillPlan.Status.CANCELLED


def command_that_at_its_third_checkpoint(action, stdout=None):
    """The backfill command, with ``action(command, plan)`` run at its third checkpoint
    (its progress callback), then sending on as the real command does."""
    from backfill.management.commands.backfill import Command

    command = Command(stdout=stdout or io.StringIO(), stderr=io.StringIO())
    original = command.run

    def run(plan):
        calls = {"n": 0}

        def at_the_third_checkpoint(*_):
            calls["n"] += 1
            if calls["n"] == 3:
                action(command, plan)

        command.progress = at_the_third_checkpoint
        command.show_progress = True
        return original(plan)

    command.run = run  # stands in for the real run, then calls it
    return command


def _interrupted_run() -> None:
    """The command as if Ctrl-C came after the third checkpoint."""

    def press_ctrl_c(command, plan):
        command.interrupted = True

    command = command_that_at_its_third_checkpoint(press_ctrl_c)
    call_command(command, "--target", "shop", "--preset", "Small", "--last-days", "2", "--yes", "--batch-size", "30")


def test_the_estimate_of_a_one_day_plan_says_1_day(target, preset):
    from backfill.management.commands.backfill import Command
    from backfill.planning import build_estimate
    from trafficinator.testing import make_plan

    plan = make_plan([target], preset, last_days=1, visits_per_day=1500)
    out = io.StringIO()
    Command(stdout=out).print_estimate(plan, build_estimate(plan, [target]))
    assert re.search(r"^  1 day, [\d,]+ visits ", out.getvalue(), re.M)  # the day's share of the week varies


@pytest.mark.django_db(transaction=True)
def test_a_site_zone_unknown_here_is_a_warning_and_the_days_follow_the_presets_zone(fake_matomo, shop, small_preset):
    Target.objects.filter(pk=shop.pk).update(site_timezone="Europe/Kyivv")
    output = backfill("--target", "shop", "--preset", "Small", "--last-days", "1", "--seed", "4", "--yes")
    plan = BackfillPlan.objects.get()
    assert plan.status == BackfillPlan.Status.COMPLETED
    assert "Note: shop: The site's time zone “Europe/Kyivv” is unknown on this machine" in output
    assert f"time zone {small_preset.timezone}" in output
    assert set(plan.days.values_list("timezone", flat=True)) == {small_preset.timezone}


def test_a_confirmation_that_loses_to_a_draft_edit_is_a_usage_error_and_sends_nothing(
    db, fake_matomo, shop, small_preset, monkeypatch
):
    from trafficinator.testing import edit_while_confirming

    edit_while_confirming(monkeypatch, last_days=3)  # e.g. on the plan's page while the command asked
    with pytest.raises(CommandError, match="the draft changed while it was being confirmed") as refused:
        backfill("--target", "shop", "--preset", "Small", "--last-days", "2", "--yes")
    assert refused.value.returncode == ExitCode.USAGE
    plan = BackfillPlan.objects.get()
    assert plan.status == BackfillPlan.Status.DRAFT and plan.day_count == 3 and not plan.days.exists()
    assert fake_matomo.stats()["requests"] == 0


@pytest.mark.parametrize("elsewhere", ["confirmed and started", "cancelled"])
def test_a_plan_taken_elsewhere_while_the_command_asked_is_not_sent_from_here(
    db, fake_matomo, shop, small_preset, monkeypatch, elsewhere
):
    from backfill.management.commands import backfill as command

    def meanwhile(self, plan, estimate):  # e.g. on the plan's page while the command printed
        other = BackfillPlan.objects.get(pk=plan.pk)
        if elsewhere == "cancelled":
            assert other.cancel(reason="Cancelled on its page.")
        else:
            assert other.confirm(by_name="someone on the page") and other.start(enqueue=False)

    monkeypatch.setattr(command.Command, "print_estimate", meanwhile)
    with pytest.raises(CommandError, match="was not sent from here") as refused:
        backfill("--target", "shop", "--preset", "Small", "--last-days", "2", "--yes")
    assert refused.value.returncode == ExitCode.USAGE
    assert fake_matomo.stats()["requests"] == 0
    plan = BackfillPlan.objects.get()
    assert plan.logs.filter(message__startswith="Started").count() == (elsewhere != "cancelled")  # only theirs
