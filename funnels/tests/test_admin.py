import json

import pytest
from django.urls import reverse

from funnels.library import templates
from funnels.models import Funnel
from trafficinator.testing import FUNNEL_VIEWER, make_funnel, make_preset, make_step, make_user

pytestmark = pytest.mark.django_db


def funnel_post(steps: list[dict], **fields) -> dict:
    data: dict[str, object] = {
        "name": "Checkout",
        "description": "",
        "enabled": "on",
        "share": "0.1",
        "priority": "0",
        "all_presets": "on",
        "steps-TOTAL_FORMS": str(len(steps)),
        "steps-INITIAL_FORMS": "0",
        "steps-MIN_NUM_FORMS": "0",
        "steps-MAX_NUM_FORMS": "1000",
    }
    for index, step in enumerate(steps):
        values = {"position": index + 1, "kind": "pageview", "delay_min": 0, "delay_max": 0, "continue_probability": 1}
        values.update(step)
        data.update({f"steps-{index}-{key}": value for key, value in values.items()})
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def test_adding_a_funnel_with_steps_in_the_admin_saves_them_in_order(admin_client):
    steps = [
        {"position": 2, "kind": "goal", "goal_id": 3, "delay_min": 1, "delay_max": 4},
        {"position": 1, "kind": "pageview", "url": "/cart", "title": "Cart", "continue_probability": 0.5},
    ]
    response = admin_client.post(reverse("admin:funnels_funnel_add"), funnel_post(steps))
    assert response.status_code == 302, response.context["errors"] if response.context else response
    funnel = Funnel.objects.get(name="Checkout")
    assert [(step.kind, step.position) for step in funnel.ordered_steps()] == [("pageview", 1), ("goal", 2)]


def test_the_admin_refuses_a_funnel_without_steps(admin_client):
    response = admin_client.post(reverse("admin:funnels_funnel_add"), funnel_post([]))
    assert response.status_code == 200
    assert "A funnel needs at least one step." in response.content.decode()
    assert not Funnel.objects.exists()


def test_the_admin_refuses_two_steps_at_the_same_position(admin_client):
    steps = [{"position": 1, "url": "/a"}, {"position": 1, "url": "/b"}]
    response = admin_client.post(reverse("admin:funnels_funnel_add"), funnel_post(steps))
    assert "Two steps have the same position (1)" in response.content.decode()


def test_the_admin_shows_step_errors_on_their_fields(admin_client):
    steps = [{"url": "not a url", "delay_min": 9, "delay_max": 3}, {"kind": "event", "event_category": "Video"}]
    response = admin_client.post(reverse("admin:funnels_funnel_add"), funnel_post(steps))
    page = response.content.decode()
    assert "is not an absolute http(s) URL or a path starting with /" in page
    assert "The maximum delay must be at least the minimum delay (9 s)." in page
    assert "An event needs an action." in page
    assert not Funnel.objects.exists()


def test_the_admin_refuses_shares_above_100_percent_for_a_preset(admin_client):
    shop = make_preset(name="Shop")
    make_funnel(name="Big", share="0.95", presets=[shop])
    data = funnel_post([{"url": "/"}], all_presets=None, presets=str(shop.pk))
    response = admin_client.post(reverse("admin:funnels_funnel_add"), data)
    page = response.content.decode()
    assert "Enabled funnels for preset “Shop” add up to 105 % of visits" in page
    assert not Funnel.objects.filter(name="Checkout").exists()


def test_editing_a_funnel_keeps_its_steps_and_links_to_the_preview(admin_client):
    funnel = make_funnel()
    response = admin_client.get(reverse("admin:funnels_funnel_change", args=[funnel.pk]))
    page = response.content.decode()
    assert reverse("funnels:preview", args=[funnel.pk]) in page
    assert 'id="funnel-step-kind-columns"' in page
    assert "funnels/step_kind.js" in page


def test_export_action_downloads_the_selected_funnels_as_json(admin_client):
    first, _second = make_funnel(name="First"), make_funnel(name="Second")
    response = admin_client.post(
        reverse("admin:funnels_funnel_changelist"), {"action": "export_json", "_selected_action": [first.pk]}
    )
    assert response["Content-Type"].startswith("application/json")
    assert response["Content-Disposition"].startswith('attachment; filename="funnels-')
    assert [f["name"] for f in json.loads(response.content)["funnels"]] == ["First"]


def test_import_page_creates_funnels_from_pasted_json(admin_client):
    text = json.dumps({"funnels": [{"name": "Pasted", "steps": [{"kind": "pageview", "url": "/"}]}]})
    response = admin_client.post(reverse("admin:funnels_funnel_import"), {"text": text})
    assert response.status_code == 302
    assert Funnel.objects.get(name="Pasted").steps.count() == 1


def test_import_page_lists_every_problem_and_saves_nothing(admin_client):
    text = json.dumps(
        {
            "funnels": [
                {"name": "Good", "steps": [{"kind": "pageview", "url": "/"}]},
                {"name": "Bad", "steps": [{"kind": "pageview", "url": "/", "delay_min": 5, "delay_max": 1}]},
            ]
        }
    )
    response = admin_client.post(reverse("admin:funnels_funnel_import"), {"text": text})
    page = response.content.decode()
    assert "Nothing was imported: 1 problem." in page
    assert "funnels[1].steps[0].delay_max: The maximum delay must be at least the minimum delay (5 s)." in page
    assert not Funnel.objects.exists()


def test_import_page_takes_an_uploaded_file(admin_client, tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"funnels": [{"name": "Uploaded", "steps": [{"kind": "pageview", "url": "/"}]}]}))
    with path.open("rb") as upload:
        response = admin_client.post(reverse("admin:funnels_funnel_import"), {"file": upload})
    assert response.status_code == 302
    assert Funnel.objects.filter(name="Uploaded").exists()


def test_changelist_offers_templates_and_import_and_shows_each_presets_share_total(admin_client):
    shop = make_preset(name="Shop")
    make_funnel(share="0.1")
    make_funnel(share="0.25", presets=[shop])
    make_funnel(share="0.5", enabled=False)
    page = admin_client.get(reverse("admin:funnels_funnel_changelist")).content.decode()
    assert reverse("admin:funnels_funnel_templates") in page
    assert reverse("admin:funnels_funnel_import") in page
    assert "Light 10 %" in page and "Shop 35 %" in page


def test_there_are_templates_for_the_four_common_journeys(admin_client):
    names = {template.name for template in templates()}
    assert {"Ecommerce purchase", "Lead generation", "Content consumption", "Newsletter sign-up"} <= names
    page = admin_client.get(reverse("admin:funnels_funnel_templates")).content.decode()
    for template in templates():
        assert reverse("admin:funnels_funnel_from_template", args=[template.key]) in page


def test_one_click_creates_a_disabled_funnel_from_each_template_even_when_shares_are_taken(admin_client):
    make_funnel(name="Takes everything", share="1")
    for template in templates():
        response = admin_client.post(reverse("admin:funnels_funnel_from_template", args=[template.key]))
        funnel = Funnel.objects.get(name=template.name)
        assert response.url == reverse("admin:funnels_funnel_change", args=[funnel.pk])
        assert not funnel.enabled
        assert funnel.steps.count() == len(template.data["steps"])
        assert funnel.to_spec().validate() == []


def test_a_template_created_twice_gets_a_new_name_and_stays_editable(admin_client):
    url = reverse("admin:funnels_funnel_from_template", args=["newsletter-sign-up"])
    admin_client.post(url)
    admin_client.post(url)
    copy = Funnel.objects.get(name="Newsletter sign-up (2)")
    copy.enabled = True
    copy.full_clean()
    copy.save()


def test_creating_from_a_template_needs_a_post(admin_client):
    response = admin_client.get(reverse("admin:funnels_funnel_from_template", args=["newsletter-sign-up"]))
    assert response.status_code == 405
    assert not Funnel.objects.exists()


def test_template_creation_and_import_need_the_add_permission(client):
    client.force_login(make_user(perms=FUNNEL_VIEWER))
    assert client.post(reverse("admin:funnels_funnel_from_template", args=["lead-generation"])).status_code == 403
    assert client.get(reverse("admin:funnels_funnel_import")).status_code == 403
    assert not Funnel.objects.exists()


def test_step_factory_defaults_are_valid():
    make_funnel(steps=[make_step()])


@pytest.mark.parametrize(("name", "page_name"), [("import", "Import"), ("templates", "Templates")])
def test_the_import_and_templates_pages_lead_back_to_the_funnel_list(admin_client, name, page_name):
    page = admin_client.get(reverse(f"admin:funnels_funnel_{name}")).content.decode()
    breadcrumbs = page.split('<div class="breadcrumbs">', 1)[1].split("</div>", 1)[0]
    assert f'href="{reverse("admin:funnels_funnel_changelist")}"' in breadcrumbs
    assert breadcrumbs.rstrip().endswith(f"&rsaquo; {page_name}")
