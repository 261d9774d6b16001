"""The JSON API: token auth, the pages' permissions, CSRF for sessions, JSON errors."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from backfill.models import BackfillPlan
from presets.models import Preset
from runs.models import Run
from trafficinator.models import ApiToken, hash_token
from trafficinator.testing import (
    BACKFILL_OPERATOR,
    BACKFILL_VIEWER,
    RUN_OPERATOR,
    RUN_VIEWER,
    api_call,
    api_token_for,
    confirmed_plan,
    make_target,
    make_user,
)

# --- tokens ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_token_is_stored_only_as_its_hash_and_records_its_last_use(client):
    user = make_user(perms=RUN_OPERATOR)
    token, secret = ApiToken.issue(user, "CI")
    assert secret.startswith("tfx_") and token.prefix == secret[:12]
    assert token.token_hash == hash_token(secret) and secret not in json.dumps(
        list(ApiToken.objects.values()), default=str
    )
    assert token.last_used_at is None
    assert api_call(client, "GET", "runs/", secret).status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None


@pytest.mark.django_db
def test_a_revoked_token_or_an_inactive_user_is_refused_with_401(client):
    user = make_user(perms=RUN_OPERATOR)
    token, secret = ApiToken.issue(user, "CI")
    token.revoke()
    response = api_call(client, "GET", "runs/", secret)
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {"error": "The API token is unknown or revoked.", "code": "unauthorized"}
    _, other = ApiToken.issue(user, "again")
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert api_call(client, "GET", "runs/", other).status_code == 401


@pytest.mark.django_db
def test_requests_without_credentials_or_with_a_bad_header_get_json_401(client):
    for header in ({}, {"HTTP_AUTHORIZATION": "Token abc"}, {"HTTP_AUTHORIZATION": "Bearer tfx_nope"}):
        response = client.get("/api/v1/runs/", **header)
        assert response.status_code == 401 and response["Content-Type"] == "application/json"
        assert response.json()["code"] == "unauthorized"


@pytest.mark.django_db
def test_the_admin_shows_a_new_token_once_and_can_revoke_it(client):
    admin = make_user(superuser=True)
    client.force_login(admin)
    response = client.post("/admin/trafficinator/apitoken/add/", {"user": admin.pk, "name": "CI"}, follow=True)
    [message] = [str(m) for m in response.context["messages"] if "not shown again" in str(m)]
    secret = next(word for word in message.split() if word.startswith("tfx_"))
    token = ApiToken.objects.get()
    assert token.token_hash == hash_token(secret)
    page = client.get(f"/admin/trafficinator/apitoken/{token.pk}/change/").content.decode()
    assert secret not in page and token.prefix in page
    client.post(
        "/admin/trafficinator/apitoken/", {"action": "revoke_tokens", "_selected_action": [token.pk]}, follow=True
    )
    assert api_call(Client(), "GET", "runs/", secret).status_code == 401


# --- permissions and CSRF ---------------------------------------------------------------------


@pytest.mark.django_db
def test_each_endpoint_needs_the_permission_of_its_page(client):
    target = make_target(name="shop")
    viewer = api_token_for(*RUN_VIEWER)
    nobody = api_token_for()
    assert api_call(client, "GET", "runs/", viewer).status_code == 200
    refused = api_call(client, "POST", "runs/", viewer, {"preset": "Light", "targets": ["shop"]})
    assert refused.status_code == 403 and refused.json() == {
        "error": "Permission needed: runs.run_traffic.",
        "code": "forbidden",
    }
    for path in ("runs/", "backfills/", "presets/", "targets/"):
        assert api_call(client, "GET", path, nobody).status_code == 403
    listed = api_call(client, "GET", "targets/", api_token_for("runs.run_traffic")).json()["targets"]
    assert listed[0]["name"] == target.name
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_token_needs_no_csrf_but_a_session_does_for_changes():
    make_target(name="shop")
    body = {"preset": "Light", "targets": ["shop"]}
    strict = Client(enforce_csrf_checks=True)
    assert api_call(strict, "POST", "runs/", api_token_for(*RUN_OPERATOR), body).status_code == 201

    user = make_user(perms=RUN_OPERATOR)
    strict.force_login(user)
    assert api_call(strict, "GET", "runs/").status_code == 200  # reading with a session is fine
    refused = api_call(strict, "POST", "runs/", body=body)
    assert refused.status_code == 403 and refused.json()["code"] == "csrf_failed"
    strict.get("/")  # sets the CSRF cookie, as the page would
    csrf = strict.cookies["csrftoken"].value
    assert api_call(strict, "POST", "runs/", body=body, HTTP_X_CSRFTOKEN=csrf).status_code == 201
    assert Run.objects.count() == 2


# --- runs ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_starting_a_run_queues_it_and_answers_its_status(client, django_capture_on_commit_callbacks):
    make_target(name="shop")
    make_target(name="blog")
    token = api_token_for(*RUN_OPERATOR)
    body = {
        "preset": "Light",
        "targets": ["shop", {"name": "blog", "visits_per_day": 500}],
        "max_visits": 50,
        "seed": 7,
        "thresholds": ["p95_ms < 500", "rejected[*] == 0"],
        "abort_on_fail": True,
    }
    with django_capture_on_commit_callbacks() as callbacks:
        response = api_call(client, "POST", "runs/", token, body)
    assert response.status_code == 201, response.content
    data = response.json()
    run = Run.objects.get()
    assert response["Location"] == f"/api/v1/runs/{run.pk}/"
    assert data["status"] == "queued" and data["thresholds"] == ["p95_ms < 500", "rejected[*] == 0"]
    assert run.seed == 7 and run.max_visits == 50 and run.created_by.has_perm("runs.run_traffic")
    assert run.abort_on_fail and data["abort_on_fail"] is True and data["stopped_by_thresholds"] is False
    assert len(callbacks) == 1  # the loader task is enqueued after commit
    assert api_call(client, "GET", f"runs/{run.pk}/", token).json()["id"] == run.pk
    listed = api_call(client, "GET", "runs/?status=queued", token).json()["runs"]
    assert [item["id"] for item in listed] == [run.pk]


@pytest.mark.django_db
def test_starting_a_run_with_bad_input_answers_400_with_the_field_and_creates_nothing(client):
    make_target(name="shop")
    token = api_token_for(*RUN_OPERATOR)
    cases = [
        (
            {"preset": "Light", "targets": ["shop"], "thresholds": ["p95_ms => 5"]},
            "thresholds",
            "expected a comparison",
        ),
        ({"preset": "Nope", "targets": ["shop"]}, "preset", "No preset “Nope”"),
        ({"preset": "Light", "targets": []}, "targets", "give a list"),
        ({"preset": "Light", "targets": ["ghost"]}, "targets", "No target “ghost”"),
        ({"preset": "Light", "targets": ["shop"], "max_visits": "ten"}, "max_visits", "whole number"),
        ({"preset": "Light", "targets": ["shop"], "abort_on_fail": "yes"}, "abort_on_fail", "true or false"),
        (  # nothing could stop it early: refused rather than silently run to its end
            {"preset": "Light", "targets": ["shop"], "abort_on_fail": True, "thresholds": ["p95_ms < 500"]},
            "abort_on_fail",
            "none of its thresholds can fail before the end (p95_ms < 500)",
        ),
        ({"preset": "Light", "targets": ["shop"], "abort_on_fail": True}, "abort_on_fail", "the run has no thresholds"),
        ({"preset": "Light", "targets": ["shop"], "colour": "red"}, None, "Unknown field(s): colour"),
    ]
    for body, field, message in cases:
        response = api_call(client, "POST", "runs/", token, body)
        assert response.status_code == 400, body
        assert message in response.json()["error"]
        if field:
            assert field in response.json()["fields"]
    bad_json = client.post(
        "/api/v1/runs/", data="{nope", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert bad_json.status_code == 400 and bad_json.json()["code"] == "bad_json"
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_stop_report_unknown_runs_wrong_methods_and_paths_answer_json(client):
    token = api_token_for(*RUN_OPERATOR)
    run = Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=[make_target()])
    stopped = api_call(client, "POST", f"runs/{run.pk}/stop/", token)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    again = api_call(client, "POST", f"runs/{run.pk}/stop/", token)
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    report = api_call(client, "GET", f"runs/{run.pk}/report/", token)
    assert report.json()["run"]["id"] == run.pk
    assert api_call(client, "GET", f"runs/{run.pk}/report/?format=csv", token)["Content-Type"].startswith("text/csv")
    assert api_call(client, "GET", f"runs/{run.pk}/report/?format=pdf", token).status_code == 400
    missing = api_call(client, "GET", "runs/999/", token)
    assert missing.status_code == 404 and missing.json() == {"error": "No run 999.", "code": "not_found"}
    wrong = api_call(client, "DELETE", f"runs/{run.pk}/", token)
    assert wrong.status_code == 405 and wrong["Allow"] == "GET"
    assert api_call(client, "GET", "nothing/here/", token).json()["code"] == "not_found"


@pytest.mark.django_db
def test_a_ci_job_can_start_wait_for_and_judge_a_run(client):
    """What the README's curl example does, with the run finished as a loader would."""
    make_target(name="shop")
    token = api_token_for(*RUN_OPERATOR)
    body = {"preset": "Light", "targets": ["shop"], "max_visits": 5, "thresholds": ["rejected == 0"]}
    run_id = api_call(client, "POST", "runs/", token, body).json()["id"]
    run = Run.objects.get(pk=run_id)
    run.claim(pid=1, host="test")
    assert api_call(client, "GET", f"runs/{run_id}/", token).json()["active"] is True
    run.finish(Run.Status.COMPLETED, "Visit limit of 5 reached.", stats={"totals": {"sent": 9, "rejected": 2}})
    status = api_call(client, "GET", f"runs/{run_id}/", token).json()
    assert (status["active"], status["status"], status["outcome"]) == (False, "completed", "failed")
    assert status["failed_thresholds"] == ["rejected == 0: 2"]


# --- backfill plans ---------------------------------------------------------------------------


def checked_target():
    """A target whose connection check passed (backfills need its time zone)."""
    return make_target(
        name="shop",
        token_auth="0123456789abcdef0123456789abcdef",
        last_check_ok=True,
        token_can_write=True,
        site_timezone="UTC",
        site_name="Shop",
    )


@pytest.mark.django_db
def test_a_backfill_plan_is_created_as_a_draft_confirmed_with_its_phrase_and_cancelled(client, monkeypatch):
    checked_target()
    token = api_token_for(*BACKFILL_OPERATOR)
    created = api_call(client, "POST", "backfills/", token, {"preset": "Light", "targets": ["shop"], "last_days": 2})
    assert created.status_code == 201, created.content
    plan_id = created.json()["id"]
    assert created.json()["status"] == "draft" and created.json()["confirmation"] == "shop"
    assert created.json()["estimate"]["total_visits"] > 0

    refused = api_call(client, "POST", f"backfills/{plan_id}/confirm/", token, {"confirmation": "shp"})
    assert refused.status_code == 400 and refused.json()["code"] == "confirmation_needed"
    assert BackfillPlan.objects.get().status == "draft"

    monkeypatch.setattr("backfill.models.BackfillPlan.start", lambda self, **kw: True)  # no workers in this test
    confirmed = api_call(client, "POST", f"backfills/{plan_id}/confirm/", token, {"confirmation": "shop"})
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "confirmed"
    assert api_call(client, "POST", f"backfills/{plan_id}/confirm/", token, {"confirmation": "shop"}).status_code == 409
    assert api_call(client, "GET", f"backfills/{plan_id}/", token).json()["progress"]["days"] == 2

    cancelled = api_call(client, "POST", f"backfills/{plan_id}/cancel/", token)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api_call(client, "POST", f"backfills/{plan_id}/cancel/", token).status_code == 409


@pytest.mark.django_db
def test_a_confirmation_that_loses_to_a_draft_edit_is_a_409_and_confirms_nothing(client, monkeypatch):
    from trafficinator.testing import edit_while_confirming, make_plan

    plan = make_plan([checked_target()], Preset.objects.get(name="Light"), last_days=2)
    edit_while_confirming(monkeypatch, last_days=3)
    response = api_call(
        client, "POST", f"backfills/{plan.pk}/confirm/", api_token_for(*BACKFILL_OPERATOR), {"confirmation": "shop"}
    )
    assert response.status_code == 409 and response.json()["code"] == "conflict"
    assert "the draft changed while it was being confirmed; check the estimate" in response.json()["error"]
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.DRAFT and plan.day_count == 3 and not plan.days.exists()


@pytest.mark.django_db
def test_a_confirmation_with_the_revision_read_refuses_a_draft_edited_since(client, monkeypatch):
    from trafficinator.testing import make_plan

    target = checked_target()
    plan = make_plan([target], Preset.objects.get(name="Light"), last_days=2)
    token = api_token_for(*BACKFILL_OPERATOR)
    read = api_call(client, "GET", f"backfills/{plan.pk}/", token).json()
    assert read["revision"] == 0
    plan.prepare_draft(preset=plan.preset, targets=[target], last_days=3)
    plan.save_draft([target], by="someone else")
    body = {"confirmation": "shop", "revision": read["revision"]}
    refused = api_call(client, "POST", f"backfills/{plan.pk}/confirm/", token, body)
    assert refused.status_code == 409 and "the draft changed" in refused.json()["error"]
    assert BackfillPlan.objects.get(pk=plan.pk).status == "draft" and not plan.days.exists()

    monkeypatch.setattr("backfill.models.BackfillPlan.start", lambda self, **kw: True)  # no workers in this test
    body["revision"] = 1
    assert api_call(client, "POST", f"backfills/{plan.pk}/confirm/", token, body).json()["status"] == "confirmed"
    assert plan.days.count() == 3


@pytest.mark.django_db
def test_cancelling_a_running_plan_queues_its_invalidation_once(
    client, monkeypatch, django_capture_on_commit_callbacks
):
    # BackfillPlan.cancel() queues it; the endpoint must not queue it a second time.
    ended: list[int] = []
    monkeypatch.setattr("backfill.tasks.enqueue_plan_end", ended.append)
    plan = confirmed_plan([checked_target()], Preset.objects.get(name="Light"))
    assert plan.start(enqueue=False)
    with django_capture_on_commit_callbacks(execute=True):
        response = api_call(client, "POST", f"backfills/{plan.pk}/cancel/", api_token_for(*BACKFILL_OPERATOR))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert ended == [plan.pk]


@pytest.mark.django_db
def test_backfill_endpoints_refuse_bad_input_and_missing_permissions(client):
    checked_target()
    viewer = api_token_for(*BACKFILL_VIEWER)
    assert api_call(client, "POST", "backfills/", viewer, {"preset": "Light", "targets": ["shop"]}).status_code == 403
    token = api_token_for(*BACKFILL_OPERATOR)
    body = {"preset": "Light", "targets": ["shop"], "start_date": "x"}
    bad_date = api_call(client, "POST", "backfills/", token, body)
    assert bad_date.status_code == 400 and "start_date" in bad_date.json()["fields"]
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    future = api_call(
        client,
        "POST",
        "backfills/",
        token,
        {"preset": "Light", "targets": ["shop"], "start_date": tomorrow, "end_date": tomorrow},
    )
    assert future.status_code == 400 and future.json()["code"] == "invalid"
    assert not BackfillPlan.objects.exists()
    assert api_call(client, "GET", "backfills/5/", token).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested more than"),
        ('{"preset": "Light", "targets": ["shop"], "max_visits": NaN}', "NaN is not a number"),
        ('{"preset": "Light", "targets": ["shop"], "rate": Infinity}', "Infinity is not a number"),
        (b'{"preset": "\xff"}', "not UTF-8"),
    ],
)
def test_a_hostile_json_body_answers_400_bad_json_not_500(client, body, reason):
    make_target(name="shop")
    token = api_token_for(*RUN_OPERATOR)
    response = client.post(
        "/api/v1/runs/", data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 400 and response.json()["code"] == "bad_json"
    assert reason in response.json()["error"]
    assert not Run.objects.exists()
