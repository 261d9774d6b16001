"""A backfill through the web, in headless Chromium: plan, estimate, the typed confirm,
the plan page and its dashboard panel, with no browser errors (CSP included)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from backfill.models import BackfillPlan
from trafficinator.testing import log_in, make_target, make_user

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_backfill_is_planned_estimated_and_confirmed_by_typing_the_target_name(
    browser_page, live_server, fake_matomo
):
    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    make_target(
        name="shop",
        matomo_url=fake_matomo.url,
        token_auth="test-token-0123456789abcdef",
        last_check_ok=True,
        token_can_write=True,
        site_timezone="Europe/Stockholm",
        site_name="Shop",
    )
    log_in(page, live_server, make_user("planner", superuser=True), next_url="/backfill/new/")

    page.get_by_label("shop").check()
    page.get_by_label("Preset").select_option(label="Light")
    page.get_by_label("Or: the last N days").fill("2")
    page.get_by_label("Visits per day").fill("40")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/backfill/*/")
    plan = BackfillPlan.objects.get()
    assert plan.status == BackfillPlan.Status.DRAFT
    assert "Europe/Stockholm" in page.content()  # what lands where: the site's time zone
    page.screenshot(path=str(ARTIFACTS / "backfill-draft.png"), full_page=True)

    page.click("text=Review and confirm…")
    page.get_by_label("Type the target's name to confirm").fill("not the name")
    page.click("input[value='Confirm and start']")
    page.locator(".errorlist li, .errornote").first.wait_for()  # a wrong name confirms nothing
    plan.refresh_from_db()
    assert plan.status == BackfillPlan.Status.DRAFT

    page.get_by_label("Type the target's name to confirm").fill("shop")
    page.screenshot(path=str(ARTIFACTS / "backfill-confirm.png"), full_page=True)
    page.click("input[value='Confirm and start']")
    page.wait_for_url(f"{live_server.url}/backfill/{plan.pk}/")
    plan.refresh_from_db()
    assert plan.status in (BackfillPlan.Status.CONFIRMED, BackfillPlan.Status.RUNNING)
    assert plan.confirmed_by_name == "planner"
    assert fake_matomo.stats()["hits_received"] == 0  # the workers send; the web never does
    page.screenshot(path=str(ARTIFACTS / "backfill-confirmed.png"), full_page=True)

    page.goto(f"{live_server.url}/")
    assert page.locator(f"text=Backfill {plan.pk}").count() > 0  # the dashboard shows it
    page.screenshot(path=str(ARTIFACTS / "dashboard-backfill.png"), full_page=True)
