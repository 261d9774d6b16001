"""The backfill pages, the live panels, the dashboard tag and the admin."""

from __future__ import annotations

import re

from django.template import Context, Template
from django.test import Client, RequestFactory
from django.urls import reverse

from backfill import tasks
from backfill.models import BackfillDay, BackfillPlan
from trafficinator.testing import (
    BACKFILL_OPERATOR,
    BACKFILL_PLANNER,
    BACKFILL_VIEWER,
    confirmed_plan,
    log_in_client,
    make_plan,
    make_target,
    make_user,
)

POLL = 'hx-trigger="every 2s"'
HTMX = {"HTTP_HX_REQUEST": "true"}


def running_plan(target, preset, **fields) -> BackfillPlan:
    plan = confirmed_plan([target], preset, **fields)
    plan.start(enqueue=False)
    return plan


def test_a_new_draft_shows_its_estimate_and_sends_nothing(target, preset):
    client = log_in_client(Client(), BACKFILL_PLANNER)
    response = client.post(
        reverse("backfill:new"),
        {"targets": [target.pk], "preset": preset.pk, "last_days": 3, "batch_size": 200, "parallel_days": 1},
    )
    plan = BackfillPlan.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("backfill:detail", args=[plan.pk])
    page = client.get(response["Location"]).content.decode()
    assert "Estimate (nothing has been sent)" in page
    assert "generated sample" in page and "Europe/Stockholm" in page and target.tracking_url in page
    assert "Review and confirm" not in page  # a planner without run_backfill cannot confirm
    assert plan.status == BackfillPlan.Status.DRAFT and not plan.days.exists()


def test_the_plan_page_counts_one_day_and_one_request_in_the_singular(target, preset):
    # Issue 16: "1 requests/s".
    plan = make_plan([target], preset, last_days=1, max_requests_per_second=1, requests_in_flight=1, parallel_days=1)
    page = log_in_client(Client(), BACKFILL_VIEWER).get(reverse("backfill:detail", args=[plan.pk])).content.decode()
    assert "(1 day, site time zone)" in page
    assert "1 request in flight, at most 1 request/s, 1 day at a time per target" in page
    plan = make_plan([target], preset, last_days=2, max_requests_per_second=3, requests_in_flight=4, parallel_days=2)
    page = log_in_client(Client(), BACKFILL_VIEWER).get(reverse("backfill:detail", args=[plan.pk])).content.decode()
    assert "(2 days, site time zone)" in page
    assert "4 requests in flight, at most 3 requests/s, 2 days at a time per target" in page


def test_the_only_enabled_target_is_ticked_in_a_new_plans_form_and_several_are_left_to_choose(target, preset):
    # As on the start form: nothing to choose, so the first Save does not fail with
    # "Choose at least one target".
    make_target(name="retired", enabled=False)
    client = log_in_client(Client(), BACKFILL_PLANNER)
    ticked = r'<input type="checkbox" name="targets" value="(\d+)"[^>]* checked'
    assert re.findall(ticked, client.get(reverse("backfill:new")).content.decode()) == [str(target.pk)]
    make_target(name="blog")
    assert re.findall(ticked, client.get(reverse("backfill:new")).content.decode()) == []


def test_the_form_shows_guardrail_errors_next_to_the_fields(target, preset):
    client = log_in_client(Client(), BACKFILL_PLANNER)
    target.last_check_ok = False
    target.save()
    response = client.post(
        reverse("backfill:new"),
        {
            "targets": [target.pk],
            "preset": preset.pk,
            "start_date": "2025-01-10",
            "end_date": "2025-01-01",
            "batch_size": 200,
            "parallel_days": 1,
        },
    )
    page = response.content.decode()
    assert response.status_code == 200 and not BackfillPlan.objects.exists()
    assert "failed its last connection check" in page and "must not be before the first day" in page


def test_confirming_needs_the_targets_name_and_then_starts_the_plan(
    target, preset, monkeypatch, django_capture_on_commit_callbacks
):
    queued: list[int] = []
    monkeypatch.setattr(tasks, "enqueue_day", queued.append)
    plan = make_plan([target], preset, last_days=2)
    client = log_in_client(Client(), BACKFILL_OPERATOR)
    url = reverse("backfill:confirm", args=[plan.pk])
    page = client.get(url).content.decode()
    assert "name to confirm" in page and "<code>shop</code>" in page and "generated sample" in page

    response = client.post(url, {"typed_name": "shp"})
    assert response.status_code == 200 and "Nothing was confirmed" in response.content.decode()
    assert BackfillPlan.objects.get(pk=plan.pk).status == BackfillPlan.Status.DRAFT

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"typed_name": " shop "})
    plan.refresh_from_db()
    assert response.status_code == 302
    assert plan.status == BackfillPlan.Status.RUNNING and plan.confirmed_by_name == plan.confirmed_by.username
    assert queued == [plan.days.order_by("day").first().pk]  # lane 0's first day


def test_only_operators_may_confirm_or_cancel(target, preset):
    plan = make_plan([target], preset)
    client = log_in_client(Client(), BACKFILL_PLANNER)
    assert client.get(reverse("backfill:confirm", args=[plan.pk])).status_code == 403
    assert client.post(reverse("backfill:cancel", args=[plan.pk])).status_code == 403


def test_a_running_plan_polls_its_panels_and_a_finished_one_stops(target, preset):
    plan = running_plan(target, preset)
    client = log_in_client(Client(), BACKFILL_VIEWER)
    page = client.get(reverse("backfill:detail", args=[plan.pk])).content.decode()
    assert page.count(POLL) == 1  # the progress; the header and the days come with it
    panel = client.get(reverse("backfill:progress", args=[plan.pk]), **HTMX).content.decode()
    assert POLL in panel and 'data-status="running"' in panel and "Days done" in panel
    assert client.get(reverse("backfill:progress", args=[plan.pk])).status_code == 302  # not htmx: the page

    plan.days.update(status=BackfillDay.Status.DONE, visits_done=10, hits_sent=30, hits_accepted=30)
    plan.complete_if_finished()
    panel = client.get(reverse("backfill:progress", args=[plan.pk]), **HTMX).content.decode()
    assert "hx-get" not in panel and "hx-trigger" not in panel and 'data-status="completed"' in panel


def test_each_progress_refresh_brings_the_plans_header_and_days_out_of_band(target, preset):
    # Issue 16: the days table polled apart from the progress and could lag it by a refresh.
    plan = running_plan(target, preset, last_days=2)
    client = log_in_client(Client(), BACKFILL_VIEWER)
    first, second = plan.days.order_by("day")
    BackfillDay.objects.filter(pk=first.pk).update(status=BackfillDay.Status.DONE, visits_done=7)
    panel = client.get(reverse("backfill:progress", args=[plan.pk]), **HTMX).content.decode()
    assert '<section id="backfill-plan" class="module tf-panel" hx-swap-oob="true">' in panel
    assert '<section id="backfill-days" class="module tf-panel" hx-swap-oob="true">' in panel
    done = re.search(rf'<tr class="bf-day-done" data-day="{first.day:%Y-%m-%d}">(.*?)</tr>', panel, re.S)
    assert done and '<td class="tf-num">7</td>' in done.group(1)
    assert f'<tr class="bf-day-{second.status}" data-day="{second.day:%Y-%m-%d}">' in panel
    compact = client.get(reverse("backfill:progress", args=[plan.pk]), {"compact": "1"}, **HTMX).content.decode()
    assert "backfill-days" not in compact and "backfill-plan" not in compact  # the dashboard has neither


def test_a_plan_that_ends_while_the_list_is_open_joins_its_finished_plans(target, preset):
    # Issue 16: the list's Finished table never refreshed.
    plan = running_plan(target, preset)
    client = log_in_client(Client(), BACKFILL_VIEWER)
    page = client.get(reverse("backfill:list")).content.decode()
    polled = f"{reverse('backfill:progress', args=[plan.pk])}?compact=1&amp;list=1"
    assert f'hx-get="{polled}"' in page and "No finished backfills yet." in page
    url = reverse("backfill:progress", args=[plan.pk])
    panel = client.get(url, {"compact": "1", "list": "1"}, **HTMX).content.decode()
    assert POLL in panel and "backfill-finished" not in panel  # still running: nothing else changed
    plan.cancel()
    panel = client.get(url, {"compact": "1", "list": "1"}, **HTMX).content.decode()
    assert POLL not in panel
    finished = panel[panel.index('<section id="backfill-finished" class="module" hx-swap-oob="true">') :]
    assert f"Backfill {plan.pk}</a>" in finished and "Cancelled" in finished
    dashboard = client.get(url, {"compact": "1"}, **HTMX).content.decode()
    assert "backfill-finished" not in dashboard  # the dashboard has no such table


def test_a_plan_without_a_live_worker_says_so(target, preset):
    plan = running_plan(target, preset)
    BackfillPlan.objects.filter(pk=plan.pk).update(started_at=plan.started_at.replace(year=2000))
    panel = (
        log_in_client(Client(), BACKFILL_VIEWER)
        .get(reverse("backfill:progress", args=[plan.pk]), **HTMX)
        .content.decode()
    )
    assert 'data-state="stalled"' in panel and f"backfill --resume {plan.pk}" in panel


def test_cancelling_a_running_plan_queues_the_invalidation(
    target, preset, monkeypatch, django_capture_on_commit_callbacks
):
    ended: list[int] = []
    monkeypatch.setattr("backfill.tasks.enqueue_plan_end", ended.append)
    plan = running_plan(target, preset)
    with django_capture_on_commit_callbacks(execute=True):
        response = log_in_client(Client(), BACKFILL_OPERATOR).post(reverse("backfill:cancel", args=[plan.pk]))
    assert response.status_code == 302 and ended == [plan.pk]
    assert BackfillPlan.objects.get(pk=plan.pk).status == BackfillPlan.Status.CANCELLED


def test_the_admin_cancel_action_queues_the_invalidation_of_running_plans_only(
    target, preset, monkeypatch, django_capture_on_commit_callbacks
):
    # The side effect lives in BackfillPlan.cancel(), so the admin gets it too.
    ended: list[int] = []
    monkeypatch.setattr("backfill.tasks.enqueue_plan_end", ended.append)
    running, confirmed = running_plan(target, preset), confirmed_plan([target], preset)
    with django_capture_on_commit_callbacks(execute=True):
        response = log_in_client(Client(), superuser=True).post(
            reverse("admin:backfill_backfillplan_changelist"),
            {"action": "cancel_plans", "_selected_action": [running.pk, confirmed.pk]},
        )
    assert response.status_code == 302 and ended == [running.pk]
    statuses = set(BackfillPlan.objects.values_list("status", flat=True))
    assert statuses == {BackfillPlan.Status.CANCELLED}


def test_finished_plans_cannot_be_edited_but_can_run_again(target, preset):
    plan = running_plan(target, preset)
    plan.cancel()
    client = log_in_client(Client(), BACKFILL_OPERATOR)
    response = client.post(reverse("backfill:edit", args=[plan.pk]), {"preset": preset.pk})
    assert response.status_code == 302 and BackfillPlan.objects.count() == 1
    response = client.post(reverse("backfill:clone", args=[plan.pk]))
    copy = BackfillPlan.objects.exclude(pk=plan.pk).get()
    assert response["Location"] == reverse("backfill:edit", args=[copy.pk]) and copy.is_draft
    response = client.post(
        response["Location"],
        {
            "targets": [target.pk],
            "preset": preset.pk,
            "last_days": 5,
            "seed": 99,
            "batch_size": 100,
            "parallel_days": 1,
        },
    )
    copy.refresh_from_db()
    assert response.status_code == 302 and copy.day_count == 5 and copy.seed == 99 and copy.batch_size == 100


def test_the_list_shows_active_drafts_and_finished_plans(target, preset):
    draft = make_plan([target], preset)
    running = running_plan(target, preset, seed=2)
    page = log_in_client(Client(), BACKFILL_VIEWER).get(reverse("backfill:list")).content.decode()
    assert f"Backfill {draft.pk}" in page and f'id="backfill-progress-{running.pk}"' in page


def test_the_dashboard_tag_shows_active_backfills_to_those_who_may_see_them(target, preset):
    plan = running_plan(target, preset)
    template = Template("{% load backfill %}{% backfill_dashboard %}")
    request = RequestFactory().get("/")
    request.user = make_user(perms=BACKFILL_VIEWER)
    html = template.render(Context({"request": request}))
    assert f'id="backfill-progress-{plan.pk}"' in html and POLL in html and "?compact=1" in html
    request.user = make_user()
    assert "backfill-progress" not in template.render(Context({"request": request}))


def test_the_admin_shows_days_inline_and_keeps_confirmed_plans_read_only(target, preset):
    plan = running_plan(target, preset)
    client = log_in_client(Client(), superuser=True)
    page = client.get(reverse("admin:backfill_backfillplan_change", args=[plan.pk])).content.decode()
    assert "Days (progress per site-local day)" in page and "progress and eta" in page.lower()
    assert 'name="_save"' not in page  # read-only
    draft = make_plan([target], preset, seed=3)
    page = client.get(reverse("admin:backfill_backfillplan_change", args=[draft.pk])).content.decode()
    assert 'name="_save"' in page and reverse("backfill:confirm", args=[draft.pk]) in page


def admin_plan_data(target, preset, **fields) -> dict:
    """The admin's add or change form of a plan as a browser posts it: the settings, and
    the empty management forms of its logs and days inlines."""
    return {
        "targets": [target.pk],
        "preset": preset.pk,
        "batch_size": 400,
        "requests_in_flight": 4,
        "parallel_days": 1,
        "logs-TOTAL_FORMS": 0,
        "logs-INITIAL_FORMS": 0,
        "days-TOTAL_FORMS": 0,
        "days-INITIAL_FORMS": 0,
        **fields,
    }


def test_the_admin_add_form_applies_the_guardrails(target, preset):
    client = log_in_client(Client(), superuser=True)
    url = reverse("admin:backfill_backfillplan_add")
    data = admin_plan_data(target, preset, start_date="2020-01-01", end_date="2021-01-01", batch_size=200)
    response = client.post(url, data)
    assert response.status_code == 200 and "at most 180 days" in response.content.decode()
    data.update(start_date="", end_date="", last_days=3)
    response = client.post(url, data)
    assert response.status_code == 302
    plan = BackfillPlan.objects.get()
    assert plan.day_count == 3 and list(plan.targets.all()) == [target] and plan.profile["visits_per_day"] == 300


def test_a_plan_page_loads_the_polling_script_once(target, preset):
    plan = running_plan(target, preset)
    page = log_in_client(Client(), BACKFILL_VIEWER).get(reverse("backfill:detail", args=[plan.pk])).content.decode()
    assert page.count("js/poll-visible.js") == 1


def test_a_new_draft_is_checked_with_the_total_cap_it_was_given(target, preset):
    # Without a cap the window would send more than MAX_TOTAL_VISITS; the cap typed into
    # the same form makes it fit, so the check must see it.
    client = log_in_client(Client(), BACKFILL_PLANNER)
    data = {
        "targets": [target.pk],
        "preset": preset.pk,
        "last_days": 150,
        "visits_per_day": 2_000_000,
        "batch_size": 400,
        "parallel_days": 1,
    }
    refused = client.post(reverse("backfill:new"), data)
    assert refused.status_code == 200 and "at most 200,000,000 are allowed" in refused.content.decode()
    response = client.post(reverse("backfill:new"), {**data, "total_cap": 1_000_000})
    assert response.status_code == 302
    assert BackfillPlan.objects.get().total_cap == 1_000_000


def test_a_draft_is_logged_the_same_way_from_the_page_and_from_the_command_line(target, preset):
    client = log_in_client(Client(), BACKFILL_PLANNER, username="planner")
    fields = {"targets": [target.pk], "preset": preset.pk, "last_days": 1, "visits_per_day": 2500, "seed": 5}
    client.post(reverse("backfill:new"), {**fields, "batch_size": 400, "parallel_days": 1})
    on_page = BackfillPlan.objects.get()
    from_command = make_plan([target], preset, last_days=1, visits_per_day=2500, seed=5)
    day = on_page.start_date
    settings = f"{day} – {day}, preset Plain, 2,500 visits/day, seed 5."
    assert on_page.logs.get().message == f"Draft created by planner: {settings}"
    assert from_command.logs.get().message == f"Draft created by the command line: {settings}"
    assert on_page.created_by.username == "planner" and from_command.created_by is None

    edit = {**fields, "last_days": "", "start_date": day, "end_date": day, "visits_per_day": 1200}
    client.post(reverse("backfill:edit", args=[on_page.pk]), {**edit, "batch_size": 400, "parallel_days": 1})
    edited = on_page.logs.order_by("-pk").first()
    assert edited is not None and edited.message == f"Draft edited by planner: {day} – {day}, preset Plain, " + (
        "1,200 visits/day, seed 5."
    )


def test_a_draft_added_in_the_admin_records_its_creator_targets_and_log_line(target, preset):
    client = log_in_client(Client(), superuser=True, username="root")
    response = client.post(reverse("admin:backfill_backfillplan_add"), admin_plan_data(target, preset, last_days=2))
    plan = BackfillPlan.objects.get()
    assert response.status_code == 302 and plan.created_by.username == "root"
    assert list(plan.targets.all()) == [target] and plan.day_count == 2
    assert plan.logs.get().message.startswith("Draft created by root: ")


def confirm_while_the_form_is_checked(monkeypatch) -> None:
    """Another tab confirms and starts the plan after the edit request read it and while
    the form is being validated: the narrowest race, after every status check."""
    prepare = BackfillPlan.prepare_draft

    def prepare_then_confirm_elsewhere(self, **fields):
        prepare(self, **fields)
        elsewhere = BackfillPlan.objects.get(pk=self.pk)
        assert elsewhere.confirm(by_name="tab 2") and elsewhere.start(enqueue=False)

    monkeypatch.setattr(BackfillPlan, "prepare_draft", prepare_then_confirm_elsewhere)


def test_an_edit_that_loses_to_a_confirmation_says_so_and_changes_nothing(target, preset, monkeypatch):
    plan = make_plan([target], preset, last_days=2)
    client = log_in_client(Client(), BACKFILL_PLANNER)
    confirm_while_the_form_is_checked(monkeypatch)
    data = {"targets": [target.pk], "preset": preset.pk, "last_days": 5, "batch_size": 400, "parallel_days": 1}
    response = client.post(reverse("backfill:edit", args=[plan.pk]), data, follow=True)
    assert response.redirect_chain == [(reverse("backfill:detail", args=[plan.pk]), 302)]
    assert f"Plan {plan.pk} is running now" in response.content.decode()
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.RUNNING and plan.confirmed_at and plan.frozen_goals is not None
    assert plan.day_count == 2 and plan.days.count() == 2


def test_the_admin_refuses_an_edit_of_a_plan_confirmed_meanwhile_with_a_message(target, preset, monkeypatch):
    client = log_in_client(Client(), superuser=True)
    data = admin_plan_data(target, preset, last_days=5)
    confirmed = confirmed_plan([target], preset)  # before the POST: a stale change page
    url = reverse("admin:backfill_backfillplan_change", args=[confirmed.pk])
    response = client.post(url, data, follow=True)
    assert response.redirect_chain == [(url, 302)]
    assert f"Plan {confirmed.pk} is confirmed now" in response.content.decode()

    draft = make_plan([target], preset, seed=3)  # during the POST: save_draft refuses
    confirm_while_the_form_is_checked(monkeypatch)
    url = reverse("admin:backfill_backfillplan_change", args=[draft.pk])
    response = client.post(url, data, follow=True)
    assert response.redirect_chain == [(url, 302)]
    page = response.content.decode()
    assert f"Plan {draft.pk} is running now" in page and "was changed successfully" not in page
    # The admin's own transaction is rolled back, with the "other tab's" confirmation that
    # ran inside it here: what matters is that the edit was not written.
    draft.refresh_from_db()
    assert draft.day_count == 2 and not draft.logs.filter(message__startswith="Draft edited").exists()


def test_a_blank_daily_cap_is_the_presets_on_the_page_and_in_create_plan_alike(target):
    # Review finding 3: the API and the command took the preset's cap, the page and the
    # admin none, so the same input built different plans and estimates.
    from backfill.planning import draft_estimate
    from trafficinator.testing import make_preset

    capped = make_preset(name="Capped", visits_per_day=300, daily_cap=120)
    client = log_in_client(Client(), BACKFILL_PLANNER)
    fields = {"targets": [target.pk], "preset": capped.pk, "last_days": 7, "seed": 5}
    response = client.post(reverse("backfill:new"), {**fields, "batch_size": 400, "parallel_days": 1})
    assert response.status_code == 302
    on_page = BackfillPlan.objects.get()
    by_create_plan = make_plan([target], capped, last_days=7, seed=5)
    assert on_page.daily_cap == by_create_plan.daily_cap == 120
    page_estimate, by_create_plan_estimate = draft_estimate(on_page)[0], draft_estimate(by_create_plan)[0]
    assert page_estimate is not None and by_create_plan_estimate is not None
    assert page_estimate.as_json() == by_create_plan_estimate.as_json()
    assert max(day.visits for day in page_estimate.days) == 120

    # A cap that is given wins over the preset's, on both paths.
    client.post(
        reverse("backfill:edit", args=[on_page.pk]), {**fields, "daily_cap": 200, "batch_size": 400, "parallel_days": 1}
    )
    on_page.refresh_from_db()
    assert on_page.daily_cap == make_plan([target], capped, last_days=7, seed=5, daily_cap=200).daily_cap == 200


def test_a_confirmation_that_loses_to_a_draft_edit_says_so_and_shows_the_new_estimate(target, preset, monkeypatch):
    from trafficinator.testing import edit_while_confirming

    plan = make_plan([target], preset, last_days=2)
    client = log_in_client(Client(), BACKFILL_OPERATOR)
    url = reverse("backfill:confirm", args=[plan.pk])
    edit_while_confirming(monkeypatch, last_days=3)
    response = client.post(url, {"typed_name": "shop"}, follow=True)
    assert response.redirect_chain == [(url, 302)]  # back to the confirm page, a fresh estimate
    page = response.content.decode()
    assert "the draft changed while it was being confirmed; check the estimate and confirm again" in page
    assert "<code>shop</code>" in page and 'data-figure="days">3<' in page  # the edited plan's estimate
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.DRAFT and plan.day_count == 3 and not plan.days.exists()
    assert plan.confirmed_at is None and plan.estimate == {}


def test_the_confirm_page_confirms_only_the_draft_whose_estimate_it_showed(target, preset):
    plan = make_plan([target], preset, last_days=2)
    client = log_in_client(Client(), BACKFILL_OPERATOR)
    url = reverse("backfill:confirm", args=[plan.pk])
    shown = re.search(r'name="revision" value="(\d+)"', client.get(url).content.decode())
    assert shown and shown.group(1) == "0"
    edited = BackfillPlan.objects.get(pk=plan.pk)  # another tab, after the page was shown
    edited.prepare_draft(preset=preset, targets=[target], last_days=3)
    edited.save_draft([target], by="tab 2")
    response = client.post(url, {"typed_name": "shop", "revision": shown.group(1)}, follow=True)
    assert response.redirect_chain == [(url, 302)]
    page = response.content.decode()
    assert "the draft changed while it was being confirmed" in page and 'name="revision" value="1"' in page
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.DRAFT and not plan.days.exists()
