"""manage.py verify: Matomo's own counts next to what was sent, differences flagged."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from backfill.foreground import run_in_foreground
from backfill.models import BackfillPlan
from backfill.tests.conftest import days_ago, make_backfill_target
from conftest import TOKEN
from runs.models import Run
from trafficinator.testing import confirmed_plan, make_preset, make_target, make_user


def verify(what: str) -> str:
    out = io.StringIO()
    call_command("verify", what, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_backfill_is_compared_day_by_day_with_matomos_reports(fake_matomo):
    shop = make_backfill_target(fake_matomo)
    preset = make_preset(name="Verified", visits_per_day=150, pause_min=1.0, pause_max=10.0)
    plan = confirmed_plan([shop], preset, start_date=days_ago(2), end_date=days_ago(1), batch_size=300)
    plan.start(enqueue=False)
    run_in_foreground(plan)
    output = verify(f"backfill:{plan.pk}")
    assert "Matomo recorded exactly what was sent." in output
    plan.refresh_from_db()
    rows = plan.verification["rows"]
    assert [row["label"] for row in rows] == [days_ago(2).isoformat(), days_ago(1).isoformat()]
    assert all(row["sent_visits"] == row["matomo_visits"] > 50 for row in rows)
    assert all(row["sent_actions"] == row["matomo_actions"] for row in rows)


@pytest.mark.django_db(transaction=True)
def test_a_difference_is_flagged_with_its_likely_cause(fake_matomo):
    shop = make_backfill_target(fake_matomo)
    preset = make_preset(name="Verified", visits_per_day=150, pause_min=1.0, pause_max=10.0)
    plan = confirmed_plan([shop], preset, start_date=days_ago(1), end_date=days_ago(1), batch_size=300)
    plan.start(enqueue=False)
    run_in_foreground(plan)
    recorded = fake_matomo.recorder.hits[1]
    first_visitor = recorded[0].visitor_id
    recorded[:] = [hit for hit in recorded if hit.visitor_id != first_visitor]  # Matomo "lost" a visitor
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 of 1 row"):
        call_command("verify", f"backfill:{plan.pk}", stdout=out)
    assert "visits fewer" in out.getvalue() and "merged" in out.getvalue()
    assert BackfillPlan.objects.get().verification["rows"][0]["cause"]


@pytest.mark.django_db(transaction=True)
def test_a_live_run_is_compared_with_matomos_live_counter(fake_matomo, fast_preset):
    make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    call_command("run_traffic", "--target", "local", "--preset", "Fast", "--visits", "40", stdout=io.StringIO())
    run = Run.objects.get()
    output = verify(str(run.pk))
    assert "Matomo recorded exactly what was sent." in output
    row = Run.objects.get().verification["rows"][0]
    assert row["sent_visits"] == row["matomo_visits"] == 40


@pytest.mark.django_db(transaction=True)
def test_the_run_and_backfill_pages_compare_with_matomo_on_request(client, fake_matomo, fast_preset):
    client.force_login(make_user(superuser=True))
    make_target(name="local", matomo_url=fake_matomo.url, site_id=1, token_auth=TOKEN)
    call_command("run_traffic", "--target", "local", "--preset", "Fast", "--visits", "20", stdout=io.StringIO())
    run = Run.objects.get()
    page = client.get(reverse("runs:detail", args=[run.pk])).content.decode()
    # Finished and never read: the page asks its panel to read Matomo once, and offers the button.
    assert "Reading Matomo's live counter" in page and "Compare with Matomo" in page
    response = client.post(reverse("runs:verify", args=[run.pk]))
    assert response.status_code == 302
    page = client.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert "data-verification" in page and "as sent" in page


@pytest.mark.django_db
def test_verify_needs_a_token_and_says_so(db):
    target = make_target(name="tokenless", token_auth="")
    run = Run.objects.create_run(preset=make_preset(name="P"), targets=[(target, 1.0, None)])
    with pytest.raises(CommandError, match="differ"):
        call_command("verify", f"run:{run.pk}", stdout=(out := io.StringIO()))
    assert "has no token" in out.getvalue()
    with pytest.raises(CommandError, match="not run:ID"):
        call_command("verify", "nonsense:x", stdout=io.StringIO())
