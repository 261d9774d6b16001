from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from presets.models import Preset
from runs.models import HEARTBEAT_STALE_AFTER, Run, RunTarget
from runs.tasks import reap_stale_runs
from trafficinator.testing import RUN_VIEWER, make_run, make_target, make_user, set_heartbeat


@pytest.mark.django_db
def test_a_run_snapshots_its_preset_so_later_edits_do_not_change_it():
    preset = Preset.objects.get(name="Medium").duplicate(name="Mine")
    run = make_run(preset=preset, created_by=make_user())
    preset.visits_per_day = 5
    preset.save()
    run.refresh_from_db()
    assert run.profile["visits_per_day"] == 10000
    assert run.visits_per_day == 10000
    assert run.profile["ecommerce_order_value_max"] == "299.99"  # exact decimal, not a float
    assert run.status == Run.Status.QUEUED
    assert run.logs.filter(message__contains="Created by").exists()


@pytest.mark.django_db
def test_creating_a_run_with_enqueue_queues_one_loader_per_shard_after_commit(
    monkeypatch, django_capture_on_commit_callbacks
):
    # The start page and the API both create runs this way; the command and the
    # benchmarks start their own loaders, so nothing is queued without ``enqueue``.
    queued: list[tuple[int, int]] = []
    monkeypatch.setattr("runs.tasks.enqueue_loader", lambda run_id, index: queued.append((run_id, index)))
    with django_capture_on_commit_callbacks(execute=True):
        make_run()
    assert queued == []
    with django_capture_on_commit_callbacks(execute=True):
        run = make_run(shards=3, enqueue=True)
    assert sorted(queued) == [(run.pk, 0), (run.pk, 1), (run.pk, 2)]


@pytest.mark.django_db
def test_only_one_caller_can_claim_a_queued_run():
    run = make_run()
    first = run.claim(pid=1, host="a")
    second = Run.objects.get(pk=run.pk).claim(pid=2, host="b")
    assert first is not None and second is None
    run.refresh_from_db()
    shard = run.shards.get()
    assert (run.status, shard.loader_pid, shard.claim_token) == (Run.Status.RUNNING, 1, first)


@pytest.mark.django_db
def test_stopping_a_queued_run_ends_it_at_once_and_a_running_one_asks_the_loader():
    queued = make_run()
    assert queued.request_stop("Stopped by alice.")
    assert queued.status == Run.Status.STOPPED and queued.finished_at is not None

    running = make_run()
    running.claim(pid=1, host="a")
    assert running.request_stop("Stopped by bob.")
    assert running.status == Run.Status.STOPPING and running.stop_requested
    assert running.finish(Run.Status.STOPPED, "Loader stopped.")
    assert running.end_reason == "Stopped by bob."  # the user's reason is kept
    assert not running.request_stop()  # nothing left to stop


@pytest.mark.django_db
def test_finished_runs_cannot_be_finished_again():
    run = make_run()
    run.claim(pid=1, host="a")
    assert run.finish(Run.Status.COMPLETED, "Visit limit reached.")
    assert not run.finish(Run.Status.FAILED, "late failure")
    assert run.status == Run.Status.COMPLETED


@pytest.mark.django_db
def test_a_run_without_heartbeat_is_lost_and_can_be_closed_or_resumed(django_capture_on_commit_callbacks):
    run = make_run()
    run.claim(pid=1, host="a")
    assert not run.is_lost()
    set_heartbeat(run, timezone.now() - HEARTBEAT_STALE_AFTER - timedelta(seconds=1))
    run.refresh_from_db()
    assert run.is_lost()
    with django_capture_on_commit_callbacks() as callbacks:
        assert run.resume()
    assert run.status == Run.Status.QUEUED and len(callbacks) == 1  # a new loader task is enqueued on commit

    run.claim(pid=2, host="b")
    set_heartbeat(run, timezone.now() - timedelta(hours=1))
    run.refresh_from_db()
    assert run.close_lost()
    assert run.status == Run.Status.FAILED


@pytest.mark.django_db
def test_resuming_a_run_its_thresholds_stopped_clears_the_flag_until_they_stop_it_again():
    from runs.management.commands.run_traffic import exit_code
    from runs.reports import build_report

    run = make_run(thresholds=["rejected == 0"], abort_on_fail=True, max_visits=10)
    failing: Any = {"totals": {"sent": 5, "accepted": 4, "rejected": 1}, "targets": {}}
    token = run.claim(pid=1, host="a")
    assert run.claimed_shard.report(token, failing)
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPING and run.stopped_by_thresholds
    set_heartbeat(run, timezone.now() - HEARTBEAT_STALE_AFTER - timedelta(seconds=1))  # its loader died
    assert run.resume()
    assert run.status == Run.Status.QUEUED and not run.stopped_by_thresholds
    # Still failed for good: the new loader's first report stops it again, flagged again.
    token = run.claim(pid=2, host="b")
    assert run.claimed_shard.report(token, failing)
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPING and run.stopped_by_thresholds

    # Resumed again, it reaches its visit limit before any report: completed, not stopped early.
    set_heartbeat(run, timezone.now() - HEARTBEAT_STALE_AFTER - timedelta(seconds=1))
    assert run.resume()
    token = run.claim(pid=3, host="c")
    assert run.claimed_shard.finish_claimed(token, Run.Status.COMPLETED, "Visit limit of 10 reached.", failing)
    run.refresh_from_db()
    assert run.status == Run.Status.COMPLETED and run.outcome == Run.Outcome.FAILED
    assert not run.stopped_by_thresholds and build_report(run)["thresholds"]["stopped_early"] is False
    assert exit_code(run) == 3  # "completed but 1 threshold failed", not "stopped early"


@pytest.mark.django_db
def test_the_reaper_fails_runs_silent_for_too_long_and_leaves_fresh_ones():
    stale, fresh = make_run(), make_run()
    stale.claim(pid=1, host="a")
    fresh.claim(pid=2, host="a")
    set_heartbeat(stale, timezone.now() - timedelta(hours=1))
    assert reap_stale_runs() == 1
    stale.refresh_from_db(), fresh.refresh_from_db()
    assert stale.status == Run.Status.FAILED and "lost" in stale.end_reason
    assert fresh.status == Run.Status.RUNNING


@pytest.mark.django_db
def test_weights_and_explicit_rates_split_the_run_rate():
    a, b, c = make_target(), make_target(), make_target()
    run = make_run(targets=[(a, 3.0, None), (b, 1.0, None), (c, 0.0, 500)], visits_per_day=4500)
    siblings = list(run.run_targets.all())
    shares = {rt.target_id: rt.share_of(run, siblings) for rt in siblings}
    assert shares == {a.pk: 3000, b.pk: 1000, c.pk: 500}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("targets_factory", "message"),
    [
        (lambda: [], "at least one target"),
        (lambda: [make_target(enabled=False, name="off")], "Disabled target(s): off"),
        (lambda: [(make_target(), 0.0, None)], "weight above 0"),
    ],
)
def test_invalid_run_requests_are_refused_with_a_reason(targets_factory, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=targets_factory())
    assert not Run.objects.exists() and not RunTarget.objects.exists()


@pytest.mark.django_db
def test_the_reaper_is_scheduled_every_five_minutes_after_migrate():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(func="runs.tasks.reap_stale_runs")
    assert (schedule.schedule_type, schedule.minutes, schedule.repeats) == (Schedule.MINUTES, 5, -1)


@pytest.mark.django_db
def test_run_admin_shows_a_run_and_its_stop_action_needs_the_run_traffic_permission(client):
    from django.urls import reverse

    run = make_run()
    run.claim(pid=1, host="a")
    client.force_login(make_user(superuser=True))
    assert client.get(reverse("admin:runs_run_changelist")).status_code == 200
    page = client.get(reverse("admin:runs_run_change", args=[run.pk]))
    assert page.status_code == 200 and b"Created by" in page.content

    viewer = make_user(perms=RUN_VIEWER)
    client.force_login(viewer)
    client.post(reverse("admin:runs_run_changelist"), {"action": "stop_runs", "_selected_action": [run.pk]})
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING  # a viewer cannot stop it

    client.force_login(make_user(superuser=True))
    client.post(reverse("admin:runs_run_changelist"), {"action": "stop_runs", "_selected_action": [run.pk]})
    run.refresh_from_db()
    assert run.status == Run.Status.STOPPING and run.end_reason.startswith("Stopped by")
    # The model logs who asked, so a stop from the admin shows in the run's log too.
    assert run.logs.filter(message__startswith="Stop requested by").exists()


def _admin_form(run: Run, **changes) -> dict:
    data = {
        "preset": run.preset_id,
        "visits_per_day": run.visits_per_day,
        "duration_seconds": run.duration_seconds or "",
        "max_visits": run.max_visits or "",
        "daily_cap": run.daily_cap or "",
        "batch_size": run.batch_size,
        "run_targets-TOTAL_FORMS": "0",
        "run_targets-INITIAL_FORMS": "0",
        "logs-TOTAL_FORMS": "0",
        "logs-INITIAL_FORMS": "0",
    }
    data.update(changes)
    return data


@pytest.mark.django_db
@pytest.mark.parametrize("status", [Run.Status.RUNNING, Run.Status.COMPLETED, Run.Status.STOPPED, Run.Status.FAILED])
def test_the_admin_refuses_edits_of_a_run_a_loader_has_had(client, status):
    from django.urls import reverse

    run = make_run()
    run.claim(pid=1, host="a")
    if status != Run.Status.RUNNING:
        run.finish(status, "done")
    client.force_login(make_user(superuser=True))
    url = reverse("admin:runs_run_change", args=[run.pk])
    page = client.get(url).content.decode()
    assert 'name="visits_per_day"' not in page and 'name="preset"' not in page  # shown read-only
    heavy = Preset.objects.get(name="Heavy")
    response = client.post(url, _admin_form(run, visits_per_day=5, preset=heavy.pk))
    assert response.status_code == 403
    run.refresh_from_db()
    assert (run.visits_per_day, run.preset_name) != (5, "Heavy")


@pytest.mark.django_db
def test_changing_a_queued_runs_preset_in_the_admin_renews_its_snapshot_and_is_logged(client):
    from django.urls import reverse

    run = make_run()
    heavy = Preset.objects.get(name="Heavy")
    client.force_login(make_user("carol", superuser=True))
    url = reverse("admin:runs_run_change", args=[run.pk])
    response = client.post(url, _admin_form(run, preset=heavy.pk, visits_per_day=777))
    assert response.status_code == 302, response.content.decode()[-2000:]
    run.refresh_from_db()
    assert (run.preset_name, run.visits_per_day) == ("Heavy", 777)
    assert run.profile["pageviews_max"] == heavy.pageviews_max and run.profile["concurrency"] == heavy.concurrency
    entry = run.logs.order_by("-pk").first()
    assert entry.message == "Edited by carol in the admin: preset Heavy (snapshot renewed); visits_per_day."


@pytest.mark.django_db
def test_an_admin_edit_of_a_run_claimed_meanwhile_saves_nothing(client):
    from django.urls import reverse

    run = make_run()
    client.force_login(make_user(superuser=True))
    url = reverse("admin:runs_run_change", args=[run.pk])
    client.get(url)  # the page was opened while queued ...
    Run.objects.get(pk=run.pk).claim(pid=1, host="a")  # ... then a loader took the run
    response = client.post(url, _admin_form(run, visits_per_day=5))
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.visits_per_day != 5


@pytest.mark.django_db
def test_stop_close_and_resume_log_the_same_line_from_the_page_the_admin_and_the_model(client):
    from django.urls import reverse

    user = make_user("dora", superuser=True)
    client.force_login(user)
    from_page, from_admin, from_command = make_run(), make_run(), make_run()
    for run in (from_page, from_admin, from_command):
        run.claim(pid=1, host="a")
    client.post(reverse("runs:stop", args=[from_page.pk]))
    client.post(reverse("admin:runs_run_changelist"), {"action": "stop_runs", "_selected_action": [from_admin.pk]})
    from_command.request_stop(by="the command line")
    lines = [run.logs.order_by("-pk").first().message for run in (from_page, from_admin, from_command)]
    assert lines == ["Stop requested by dora.", "Stop requested by dora.", "Stop requested by the command line."]
    for run in (from_page, from_admin, from_command):
        run.refresh_from_db()
    assert from_page.end_reason == from_admin.end_reason == "Stopped by dora."

    lost = [make_run(), make_run()]
    for run in lost:
        run.claim(pid=1, host="a")
        set_heartbeat(run, timezone.now() - timedelta(minutes=5))
    client.post(reverse("runs:close", args=[lost[0].pk]))
    client.post(reverse("admin:runs_run_changelist"), {"action": "close_lost_runs", "_selected_action": [lost[1].pk]})
    assert [run.logs.order_by("-pk").first().message for run in lost] == [
        "Closed by dora after the loader was lost."
    ] * 2


@pytest.mark.django_db
def test_ctrl_c_while_run_traffic_waits_for_its_shards_is_a_stop_by_the_command_line():
    from runs.management.commands.run_traffic import Command

    class InterruptedChild:
        """A shard's loader process whose wait() is cut short by one Ctrl-C."""

        interrupted = False

        def wait(self) -> int:
            if not self.interrupted:
                self.interrupted = True
                raise KeyboardInterrupt
            return 0

    run = make_run(shards=2)
    run.claim(pid=1, host="a")
    token = run.claim(pid=2, host="a", shard=1)
    Command().wait_for_shards(run, [(InterruptedChild(), token)])
    assert run.logs.filter(message="Stop requested by the command line.").exists()
    # The same words as a Ctrl-C while shard 1 is still sending (runs.loader.execute_loader).
    assert Run.objects.get(pk=run.pk).end_reason == "Stopped by the command line."


@pytest.mark.django_db
def test_a_lifecycle_action_with_nobody_named_reads_the_same_everywhere():
    """One wording for "no user": the command line (pages, admin and API pass the user)."""
    from trafficinator.testing import make_plan

    stopped, lost = make_run(), make_run()
    for run in (stopped, lost):
        run.claim(pid=1, host="a")
    stopped.request_stop()
    set_heartbeat(lost, timezone.now() - HEARTBEAT_STALE_AFTER - timedelta(seconds=5))
    lost.close_lost()
    assert stopped.logs.order_by("-pk").first().message == "Stop requested by the command line."
    assert lost.logs.order_by("-pk").first().message == "Closed by the command line after the loader was lost."
    ready = make_target(token_auth="token-0123456789", last_check_ok=True, token_can_write=True)
    plan = make_plan([ready], Preset.objects.get(name="Light"))
    assert plan.confirm() and plan.confirmed_by_name == "the command line"
    assert plan.cancel() and plan.end_reason == "Cancelled by the command line."
