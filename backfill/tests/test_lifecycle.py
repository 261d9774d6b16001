"""draft -> confirmed -> running -> completed | failed | cancelled, by conditional updates."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from backfill.models import STALE_AFTER, BackfillDay, BackfillLog, BackfillPlan
from backfill.planning import build_estimate
from trafficinator.testing import confirmed_plan, make_plan, make_user


def test_a_draft_sends_nothing_and_confirming_records_who_when_and_what(fake_matomo, preset):
    from backfill.tests.conftest import make_backfill_target

    shop = make_backfill_target(fake_matomo)
    plan = make_plan([shop], preset, last_days=3)
    build_estimate(plan, [shop])  # looking at the estimate sends nothing either
    assert plan.status == BackfillPlan.Status.DRAFT and not plan.days.exists()
    assert fake_matomo.stats()["requests"] == 0

    alice = make_user("alice")
    assert plan.confirm(by=alice)
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.CONFIRMED
    assert plan.confirmed_by == alice and plan.confirmed_by_name == "alice" and plan.confirmed_at
    assert plan.days.count() == 3 and plan.estimate["total_visits"] == sum(d.planned_visits for d in plan.days.all())
    assert plan.logs.filter(message__startswith="Confirmed by alice: 3 days").exists()
    assert fake_matomo.stats()["requests"] == 0  # confirmed is not started


def test_confirm_and_start_each_happen_once(target, preset):
    plan = make_plan([target], preset)
    assert plan.confirm(by_name="a")
    assert not BackfillPlan.objects.get(pk=plan.pk).confirm(by_name="b")
    assert plan.days.count() == 2  # the second confirm created nothing
    assert plan.start(enqueue=False)
    assert not BackfillPlan.objects.get(pk=plan.pk).start(enqueue=False)
    assert not make_plan([target], preset).start(enqueue=False)  # a draft cannot start


def test_confirming_checks_the_guardrails_again(target, preset):
    plan = make_plan([target], preset)
    target.last_check_ok = False
    target.save()
    with pytest.raises(ValidationError, match="failed its last connection check"):
        plan.confirm(by_name="a")
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.DRAFT and not plan.days.exists()


def test_finished_plans_are_locked(target, preset):
    plan = confirmed_plan([target], preset)
    plan.start(enqueue=False)
    plan.days.update(status=BackfillDay.Status.DONE)
    assert plan.complete_if_finished()
    assert not plan.complete_if_finished()  # exactly once
    assert plan.is_locked and not plan.can_edit() and not plan.can_confirm() and not plan.can_cancel()
    assert not plan.confirm(by_name="x") and not plan.start() and not plan.cancel() and not plan.fail("late")
    assert BackfillPlan.objects.get(pk=plan.pk).status == BackfillPlan.Status.COMPLETED


def test_a_plan_completes_only_when_every_day_is_done(target, preset):
    plan = confirmed_plan([target], preset)
    plan.start(enqueue=False)
    first, second = plan.days.order_by("day")
    BackfillDay.objects.filter(pk=first.pk).update(status=BackfillDay.Status.DONE)
    assert not plan.complete_if_finished()
    BackfillDay.objects.filter(pk=second.pk).update(status=BackfillDay.Status.DONE)
    assert plan.complete_if_finished()


def test_a_one_day_plan_says_1_day_and_big_totals_are_grouped_by_thousands(target, preset):
    plan = make_plan([target], preset, last_days=1)
    assert plan.confirm(by_name="a") and plan.start(enqueue=False)
    assert plan.logs.filter(message__startswith="Confirmed by a: 1 day, ").exists()
    plan.days.update(status=BackfillDay.Status.DONE, visits_done=1500, hits_sent=4200, hits_accepted=4100)
    assert plan.complete_if_finished()
    assert plan.logs.filter(message="Completed: 1,500 visits, 4,200 hits, 4,100 accepted.").exists()


def test_run_again_makes_a_new_draft_with_the_same_settings_and_a_new_seed(target, preset):
    plan = confirmed_plan([target], preset, batch_size=123, total_cap=500, seed=11)
    plan.cancel(reason="Changed my mind.")
    copy = plan.clone(by=make_user("bob"))
    assert copy.status == BackfillPlan.Status.DRAFT and copy.cloned_from == plan
    assert (copy.start_date, copy.end_date, copy.batch_size, copy.total_cap) == (
        plan.start_date,
        plan.end_date,
        123,
        500,
    )
    assert list(copy.targets.all()) == [target] and copy.seed != plan.seed
    assert not copy.days.exists() and copy.logs.filter(message__contains="Cloned from plan").exists()


def test_only_one_worker_claims_a_day_and_a_lane_goes_in_date_order(target, preset):
    plan = confirmed_plan([target], preset, last_days=3)
    assert BackfillDay.claim(plan.days.first().pk) is None  # not running yet
    plan.start(enqueue=False)
    first, second, _third = plan.days.order_by("day")
    assert BackfillDay.claim(second.pk, "w:1") is None  # the first day is not done
    claimed = BackfillDay.claim(first.pk, "w:1")
    assert claimed is not None and claimed[0].worker == "w:1"
    assert BackfillDay.claim(first.pk, "w:2") is None  # held by a live worker
    BackfillDay.objects.filter(pk=first.pk).update(status=BackfillDay.Status.DONE)
    assert BackfillDay.claim(second.pk, "w:2") is not None


def test_a_silent_workers_day_is_taken_over_and_its_late_writes_are_refused(target, preset):
    plan = confirmed_plan([target], preset, last_days=1)
    plan.start(enqueue=False)
    day = plan.days.get()
    old_day, old_token = BackfillDay.claim(day.pk, "other-host:1")
    BackfillDay.objects.filter(pk=day.pk).update(heartbeat_at=timezone.now() - STALE_AFTER - timedelta(seconds=1))
    assert plan.progress().stalled
    new_day, new_token = BackfillDay.claim(day.pk, "this-host:2")
    assert new_token != old_token and not plan.progress().stalled
    assert old_day.fenced(old_token).update(visits_done=99) == 0  # the old worker stops at its next write
    assert new_day.fenced(new_token).update(visits_done=1) == 1


def test_cancelling_a_running_plan_releases_its_days(target, preset):
    plan = confirmed_plan([target], preset, last_days=2)
    plan.start(enqueue=False)
    day, token = BackfillDay.claim(plan.days.order_by("day").first().pk, "w:1")
    assert plan.cancel(by=make_user("carol"))
    assert plan.status == BackfillPlan.Status.CANCELLED and plan.end_reason == "Cancelled by carol."
    assert set(plan.days.values_list("status", flat=True)) == {BackfillDay.Status.STOPPED}
    assert day.fenced(token).update(visits_done=5) == 0
    assert plan.logs.filter(level=BackfillLog.Level.WARNING, message="Cancelled by carol.").exists()


def test_resume_hands_the_days_of_gone_workers_back_to_the_queue(target, preset, django_capture_on_commit_callbacks):
    plan = confirmed_plan([target], preset, last_days=4, parallel_days=2)
    with django_capture_on_commit_callbacks() as started:
        plan.start()
    assert len(started) == 2  # the first day of each lane
    held = BackfillDay.claim(plan.days.get(day=plan.start_date).pk, "w:1")
    assert held is not None
    assert [day.day for day in plan.next_days()] == [plan.start_date + timedelta(days=1)]  # lane 0 is busy
    BackfillDay.objects.filter(pk=held[0].pk).update(heartbeat_at=timezone.now() - STALE_AFTER * 2)
    with django_capture_on_commit_callbacks() as resumed:
        assert plan.resume() == 2
    assert len(resumed) == 2


def test_a_dead_local_worker_is_noticed_without_waiting(target, preset):
    import subprocess
    import sys

    from backfill.models import worker_label

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    plan = confirmed_plan([target], preset, last_days=1)
    plan.start(enqueue=False)
    host = worker_label().rpartition(":")[0]
    day, _ = BackfillDay.claim(plan.days.get().pk, f"{host}:{child.pid}")
    assert day.holder_is_gone()  # fresh heartbeat, but its process is gone
    assert BackfillDay.claim(day.pk) is not None


def test_saving_a_stale_draft_never_turns_a_confirmed_plan_back_into_a_draft(target, preset):
    # Review finding 2: tab A opens Edit, tab B confirms (and starts), tab A saves. The
    # save must lose, not write every column back over the confirmed row.
    from backfill.forms import BackfillPlanForm
    from backfill.models import PlanNotEditable

    plan = make_plan([target], preset, last_days=2)
    stale = BackfillPlan.objects.get(pk=plan.pk)
    confirmed = BackfillPlan.objects.get(pk=plan.pk)
    assert confirmed.confirm(by_name="tab 2") and confirmed.start(enqueue=False)
    form = BackfillPlanForm(
        {"targets": [target.pk], "preset": preset.pk, "last_days": 3, "batch_size": 400, "parallel_days": 1},
        instance=stale,
    )
    assert form.is_valid(), form.errors
    with pytest.raises(PlanNotEditable, match="is running now"):
        form.save_draft(None)
    fresh = BackfillPlan.objects.get(pk=plan.pk)
    assert fresh.status == BackfillPlan.Status.RUNNING and fresh.confirmed_at == confirmed.confirmed_at
    assert fresh.estimate == confirmed.estimate and fresh.frozen_goals == confirmed.frozen_goals
    assert fresh.frozen_funnels == confirmed.frozen_funnels and fresh.day_count == 2 and fresh.days.count() == 2
    assert not fresh.logs.filter(message__startswith="Draft edited").exists()


def test_a_draft_edit_writes_every_setting_the_form_can_change(target, preset):
    # save_draft writes a fixed list of columns (never the lifecycle ones): a setting
    # added to the form but not to that list would be silently dropped.
    from backfill.forms import BackfillPlanForm
    from backfill.models import DRAFT_FIELDS

    model_fields = {field.name for field in BackfillPlan._meta.get_fields()}
    settings = {name for name in BackfillPlanForm.Meta.fields if name in model_fields and name != "targets"}
    assert settings <= set(DRAFT_FIELDS)
    assert not {"status", "confirmed_at", "estimate", "frozen_goals", "frozen_funnels"} & set(DRAFT_FIELDS)


def test_a_confirm_that_planned_before_a_draft_edit_refuses_and_writes_nothing(target, preset, monkeypatch):
    # The edit commits after confirm() computed two days and their estimate and before its
    # UPDATE: the confirmed row would have had the edited three-day window with two days.
    from backfill.models import DraftChanged
    from trafficinator.testing import edit_while_confirming

    plan = make_plan([target], preset, last_days=2)
    edit_while_confirming(monkeypatch, last_days=3)
    with pytest.raises(DraftChanged, match="the draft changed while it was being confirmed; check the estimate"):
        plan.confirm(by_name="tab 1")
    fresh = BackfillPlan.objects.get(pk=plan.pk)
    assert fresh.status == BackfillPlan.Status.DRAFT and fresh.day_count == 3 and fresh.draft_revision == 1
    assert not fresh.days.exists() and fresh.estimate == {} and fresh.confirmed_at is None
    assert fresh.confirmed_by_name == "" and fresh.frozen_funnels is None and fresh.frozen_goals is None
    assert not fresh.logs.filter(message__startswith="Confirmed").exists()
    assert plan.day_count == 3 and plan.frozen_goals is None  # the loser holds the row as it is now

    monkeypatch.undo()
    assert plan.confirm(by_name="tab 1")  # confirming again plans from the edit
    assert plan.days.count() == 3 and plan.estimate["total_visits"] == sum(d.planned_visits for d in plan.days.all())


def test_every_draft_edit_bumps_the_revision_a_confirm_plans_from(target, preset):
    from backfill.models import DraftChanged

    plan = make_plan([target], preset, last_days=2)
    stale = BackfillPlan.objects.get(pk=plan.pk)
    plan.save_draft([target], by="tab 2")  # even an edit that changes nothing but the targets
    assert plan.draft_revision == 1 and stale.draft_revision == 0
    with pytest.raises(DraftChanged):
        stale.confirm(by_name="tab 1")
    assert not plan.days.exists()
