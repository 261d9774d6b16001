import re

import pytest
from django.urls import reverse

from funnels.preview import build_preview
from trafficinator.testing import FUNNEL_VIEWER, make_funnel, make_step, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def user_client(client):
    client.force_login(make_user(perms=FUNNEL_VIEWER))
    return client


def checkout_funnel():
    return make_funnel(
        name="Checkout",
        steps=[
            make_step("pageview", url="/cart", title="Cart", continue_probability=0.5),
            make_step("event", event_category="Checkout", event_action="Start", delay_min=2, delay_max=5),
            make_step("goal", goal_id=7, delay_min=1, delay_max=2),
        ],
    )


def test_preview_page_shows_the_drop_off_chart_and_a_sample_journeys_hits(user_client):
    funnel = checkout_funnel()
    response = user_client.get(reverse("funnels:preview", args=[funnel.pk]), {"journeys": 2000, "seed": 3})
    page = response.content.decode()
    assert response.status_code == 200
    assert "<html" in page and "Preview: Checkout" in page
    assert '<svg class="reach-chart"' in page
    assert page.count('<rect class="expected"') == 3 and page.count('<rect class="simulated"') == 3
    assert "2,000 simulated journeys (seed 3)" in page
    assert "<th>action_name</th><td><code>Cart</code>" in page
    assert "https://shop.example.com/cart" in page
    assert 'hx-get="{}"'.format(reverse("funnels:preview", args=[funnel.pk])) in page
    assert response["Vary"].count("HX-Request") == 1


def test_the_sample_journey_reaches_the_funnels_last_step(user_client):
    # Only ~2 % of journeys reach the goal; the first simulated one almost never does.
    funnel = make_funnel(
        name="Rare goal",
        steps=[
            make_step("pageview", url="/a", continue_probability=0.2),
            make_step("pageview", url="/b", continue_probability=0.1),
            make_step("goal", goal_id=3),
        ],
    )
    page = user_client.get(reverse("funnels:preview", args=[funnel.pk]), {"journeys": 1000, "seed": 1}).content.decode()
    assert "It took 3 of 3" in page and "<th>idgoal</th><td><code>3</code>" in page
    assert "none did" not in page


def test_an_order_step_names_its_shipping_and_its_order_value(user_client):
    items = [{"sku": "S1", "name": "Shoe", "category": "", "price": 100.0, "quantity": 2}]
    steps = [make_step("pageview", url="/c"), make_step("order", items=items, shipping=49)]
    funnel = make_funnel(name="Buy", steps=steps)
    page = user_client.get(reverse("funnels:preview", args=[funnel.pk])).content.decode()
    assert "2 items · subtotal 200.00 · shipping 49.00 · order value 249.00" in page


def test_preview_uses_1000_journeys_and_seed_1_by_default(user_client):
    funnel = checkout_funnel()
    page = user_client.get(reverse("funnels:preview", args=[funnel.pk])).content.decode()
    assert "1,000 simulated journeys (seed 1)" in page


def test_htmx_requests_get_only_the_results_partial(user_client):
    funnel = checkout_funnel()
    response = user_client.get(
        reverse("funnels:preview", args=[funnel.pk]), {"journeys": 500, "seed": 9}, headers={"HX-Request": "true"}
    )
    page = response.content.decode().strip()
    assert page.startswith('<div id="preview-results">')
    assert "<html" not in page and "<form" not in page
    assert "500 simulated journeys (seed 9)" in page


def test_a_history_restore_gets_the_whole_page(user_client):
    funnel = checkout_funnel()
    headers = {"HX-Request": "true", "HX-History-Restore-Request": "true"}
    page = user_client.get(reverse("funnels:preview", args=[funnel.pk]), headers=headers).content.decode()
    assert "<html" in page


@pytest.mark.parametrize(("journeys", "message"), [(0, "greater than or equal to 1"), (100_001, "less than or equal")])
def test_journeys_outside_1_to_100000_are_refused_with_a_message(user_client, journeys, message):
    funnel = checkout_funnel()
    response = user_client.get(
        reverse("funnels:preview", args=[funnel.pk]), {"journeys": journeys, "seed": 1}, headers={"HX-Request": "true"}
    )
    page = response.content.decode()
    assert "Journeys:" in page and message in page
    assert "simulated journeys" not in page


def test_the_same_seed_gives_the_same_preview():
    funnel = checkout_funnel()
    assert build_preview(funnel, 1000, 4) == build_preview(funnel, 1000, 4)
    first, other = build_preview(funnel, 1000, 4), build_preview(funnel, 1000, 5)
    assert [step.count for step in first.steps] != [step.count for step in other.steps]


def test_simulated_reach_is_shown_next_to_the_expected_reach():
    preview = build_preview(checkout_funnel(), 20_000, 1)
    assert [step.expected for step in preview.steps] == [1.0, 0.5, 0.5]
    assert [step.simulated for step in preview.steps] == pytest.approx([1.0, 0.5, 0.5], abs=0.015)
    assert preview.steps[1].expected_label == "50.0%"
    assert re.fullmatch(r"[+-]\d+\.\d pp", preview.steps[1].difference_label)


def test_a_funnel_without_steps_says_so_instead_of_failing(user_client):
    funnel = make_funnel(steps=[])
    page = user_client.get(reverse("funnels:preview", args=[funnel.pk])).content.decode()
    assert "This funnel has no steps yet." in page


def test_preview_needs_a_login(client):
    funnel = checkout_funnel()
    response = client.get(reverse("funnels:preview", args=[funnel.pk]))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


def test_preview_answers_only_get(user_client):
    funnel = checkout_funnel()
    assert user_client.post(reverse("funnels:preview", args=[funnel.pk])).status_code == 405


def test_preview_of_an_unknown_funnel_is_404(user_client):
    assert user_client.get(reverse("funnels:preview", args=[999_999])).status_code == 404


def test_a_user_who_may_view_funnels_but_not_the_admin_reaches_every_preview(client):
    # Issue 16: the Funnels link led to the admin only, so a non-staff user with
    # funnels.view_funnel could open a preview from no page.
    funnel = checkout_funnel()
    client.force_login(make_user(staff=False, perms=FUNNEL_VIEWER))
    page = client.get(reverse("funnels:list")).content.decode()
    assert f'<a href="{reverse("funnels:list")}" aria-current="page">Funnels</a>' in page
    assert f'href="{reverse("funnels:preview", args=[funnel.pk])}">Preview</a>' in page
    assert "<td>Checkout</td>" in page and 'href="/admin/' not in page  # no link it may not open
    preview = client.get(reverse("funnels:preview", args=[funnel.pk])).content.decode()
    assert "Preview: Checkout" in preview and "Edit funnel" not in preview


def test_staff_find_the_funnels_in_the_admin_and_others_without_the_permission_are_refused(client):
    funnel = checkout_funnel()
    client.force_login(make_user(perms=(*FUNNEL_VIEWER, "funnels.change_funnel")))
    page = client.get(reverse("funnels:preview", args=[funnel.pk])).content.decode()
    assert f'<a href="{reverse("admin:funnels_funnel_changelist")}" aria-current="page">Funnels</a>' in page
    assert "Edit funnel" in page
    client.force_login(make_user(staff=False))
    assert client.get(reverse("funnels:list")).status_code == 403
