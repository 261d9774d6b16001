"""The funnel admin and preview in a real headless Chromium: the step form shows only the
fields of each step's kind, and the preview form swaps its results in with htmx."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from funnels.models import Funnel
from trafficinator.testing import log_in, make_funnel, make_step, make_user

SCREENSHOTS = os.environ.get("FUNNELS_SCREENSHOTS")  # a folder, to look at the pages

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def page(browser_page, live_server):
    log_in(browser_page, live_server, make_user(superuser=True), next_url="/admin/")
    return browser_page


def screenshot(page, name: str) -> None:
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def test_step_form_shows_the_fields_of_the_chosen_kind_and_numbers_new_steps(page, live_server):
    page.goto(f"{live_server.url}/admin/funnels/funnel/add/")
    first = page.locator("#steps-0")
    assert first.locator(".form-row.field-url").is_visible()
    assert not first.locator(".form-row.field-event_category").is_visible()
    first.locator("select[name='steps-0-kind']").select_option("event")
    assert first.locator(".form-row.field-event_action").is_visible()
    assert not first.locator(".form-row.field-url").is_visible()

    page.fill("#id_name", "Video")
    first.locator("input[name='steps-0-event_category']").fill("Video")
    first.locator("input[name='steps-0-event_action']").fill("Play")
    screenshot(page, "admin-add-one-step")
    page.locator(".add-row a").click()
    second = page.locator("#steps-1")
    assert second.locator("input[name='steps-1-position']").input_value() == "2"
    assert second.locator(".form-row.field-url").is_visible()
    second.locator("input[name='steps-1-url']").fill("/thanks")
    screenshot(page, "admin-add")
    page.locator("input[name='_continue']").click()
    page.wait_for_selector(".messagelist .success")
    screenshot(page, "admin-change")
    funnel = Funnel.objects.get(name="Video")
    assert [step.kind for step in funnel.ordered_steps()] == ["event", "pageview"]


def test_preview_form_swaps_in_new_results_without_reloading_the_page(page, live_server):
    funnel = make_funnel(
        name="Checkout",
        steps=[
            make_step("pageview", url="/cart", title="Cart", continue_probability=0.6),
            make_step("order", items=[["S1", "Boots", "Shoes", 99.5, 1]], delay_min=5, delay_max=30),
        ],
    )
    page.goto(f"{live_server.url}/admin/funnels/funnel/{funnel.pk}/change/")
    page.get_by_role("link", name="Preview").click()
    page.wait_for_selector("#preview-results svg.reach-chart")
    page.evaluate("window.notReloaded = true")
    page.fill("input[name='journeys']", "5000")
    page.fill("input[name='seed']", "42")
    page.get_by_role("button", name="Simulate").click()
    page.wait_for_function("() => document.querySelector('#preview-results').textContent.includes('(seed 42)')")
    assert page.evaluate("window.notReloaded") is True
    assert page.url.endswith("?journeys=5000&seed=42")
    screenshot(page, "preview")


def test_a_template_becomes_a_funnel_with_one_click_from_the_changelist(page, live_server):
    page.goto(f"{live_server.url}/admin/funnels/funnel/")
    page.get_by_role("link", name="Add from template").click()
    screenshot(page, "templates")
    page.get_by_role("button", name="Create “Ecommerce purchase”").click()
    page.wait_for_selector(".messagelist .success")
    funnel = Funnel.objects.get(name="Ecommerce purchase")
    assert page.url.endswith(f"/admin/funnels/funnel/{funnel.pk}/change/")
    assert not funnel.enabled and funnel.steps.count() == 6
    page.goto(f"{live_server.url}/admin/funnels/funnel/")
    screenshot(page, "changelist")
    page.get_by_role("link", name="Import JSON").click()
    page.fill("textarea[name='text']", '{"funnels": [{"name": "X", "steps": [{"kind": "goal", "goal_id": 0}]}]}')
    page.get_by_role("button", name="Import").click()
    page.wait_for_selector(".errorlist code")
    screenshot(page, "import-problems")
    assert "funnels[0].steps[0].goal_id: A goal id is a whole number of 1 or more." in page.content()
