import json
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from presets.models import BuiltinPresetError, Preset, PresetSnapshot
from trafficinator.testing import make_preset, make_user
from trafficinator.traffic import Profile

EXPECTED_BUILTINS = {
    # name: visits/day, concurrency, pageviews, visit minutes, search, outlinks, downloads, clicks,
    # other events, direct, ecommerce, max order value
    "Light": (1000, 10, (2, 4), (0.5, 3.0), 0.10, 0.05, 0.03, 0.15, 0.08, 0.40, 0.02, "99.99"),
    "Medium": (10000, 50, (3, 6), (1.0, 8.0), 0.15, 0.10, 0.08, 0.25, 0.12, 0.30, 0.05, "299.99"),
    "Heavy": (50000, 150, (4, 8), (2.0, 12.0), 0.20, 0.15, 0.12, 0.30, 0.15, 0.25, 0.08, "499.99"),
    "Extreme": (100000, 300, (5, 10), (3.0, 15.0), 0.25, 0.18, 0.15, 0.35, 0.18, 0.20, 0.10, "999.99"),
}


@pytest.mark.django_db
def test_builtin_presets_exist_after_migrate_with_the_original_values():
    for name, expected in EXPECTED_BUILTINS.items():
        p = Preset.objects.get(name=name)
        actual = (
            p.visits_per_day,
            p.concurrency,
            (p.pageviews_min, p.pageviews_max),
            (p.visit_duration_min, p.visit_duration_max),
            p.site_search_probability,
            p.outlinks_probability,
            p.downloads_probability,
            p.click_events_probability,
            p.random_events_probability,
            p.direct_traffic_share,
            p.ecommerce_probability,
            str(p.ecommerce_order_value_max),
        )
        assert p.is_builtin
        assert actual == expected
        assert (p.currency, p.timezone) == ("SEK", "CET")


@pytest.mark.django_db
def test_builtin_presets_hold_valid_values():
    for preset in Preset.objects.builtin():
        preset.pk, preset.is_builtin, preset.name = None, False, preset.name + " check"
        preset.full_clean()


@pytest.mark.django_db
def test_builtin_preset_cannot_be_edited_or_deleted():
    light = Preset.objects.get(name="Light")
    light.visits_per_day = 5
    with pytest.raises(BuiltinPresetError):
        light.save()
    with pytest.raises(BuiltinPresetError):
        light.delete()
    assert Preset.objects.get(name="Light").visits_per_day == 1000


@pytest.mark.django_db
def test_builtin_can_be_duplicated_into_an_editable_custom_preset():
    copy = Preset.objects.get(name="Heavy").duplicate()
    assert copy.name == "Heavy (copy)" and not copy.is_builtin
    assert copy.visits_per_day == 50000 and copy.concurrency == 150
    copy.visits_per_day = 123
    copy.full_clean()
    copy.save()
    assert Preset.objects.get(name="Heavy (copy)").visits_per_day == 123
    assert Preset.objects.get(name="Heavy").duplicate().name == "Heavy (copy 2)"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"pageviews_min": 5, "pageviews_max": 3}, "pageviews_max", "at least the minimum"),
        ({"visit_duration_min": 9, "visit_duration_max": 2}, "visit_duration_max", "at least the minimum"),
        ({"pause_min": 9, "pause_max": 2}, "pause_max", "at least the minimum"),
        (
            {"ecommerce_order_value_min": Decimal("50"), "ecommerce_order_value_max": Decimal("10")},
            "ecommerce_order_value_max",
            "at least the minimum",
        ),
        ({"ecommerce_items_min": 4, "ecommerce_items_max": 1}, "ecommerce_items_max", "at least the minimum"),
        ({"site_search_probability": 1.5}, "site_search_probability", "less than or equal to 1"),
        ({"direct_traffic_share": -0.1}, "direct_traffic_share", "greater than or equal to 0"),
        ({"currency": "XYZ"}, "currency", "not an ISO 4217 currency"),
        ({"timezone": "Mars/Olympus"}, "timezone", "not an IANA time zone"),
        ({"visits_per_day": 0}, "visits_per_day", "greater than or equal to 1"),
        ({"concurrency": 0}, "concurrency", "greater than or equal to 1"),
        ({"ecommerce_shipping_options": [5, "free"]}, "ecommerce_shipping_options", "not a number"),
        ({"ecommerce_shipping_options": [-1]}, "ecommerce_shipping_options", "0 or more"),
        ({"ecommerce_shipping_options": []}, "ecommerce_shipping_options", "list of shipping costs"),
    ],
)
def test_invalid_preset_values_get_clear_field_errors(fields, field, message):
    preset = Preset(name="bad", **fields)
    with pytest.raises(ValidationError) as info:
        preset.full_clean()
    assert field in info.value.message_dict
    assert any(message in text for text in info.value.message_dict[field]), info.value.message_dict[field]


@pytest.mark.django_db
def test_valid_time_zone_and_currency_are_accepted():
    preset = make_preset(timezone="Europe/Stockholm", currency="EUR")
    assert preset.pk


@pytest.mark.django_db
def test_admin_shows_builtin_read_only_and_rejects_invalid_custom_values(client):
    client.force_login(make_user(superuser=True))
    light = Preset.objects.get(name="Light")
    page = client.get(reverse("admin:presets_preset_change", args=[light.pk]))
    assert page.status_code == 200
    assert b'name="visits_per_day"' not in page.content  # read-only view, no inputs

    response = client.post(
        reverse("admin:presets_preset_add"),
        {
            **{f: getattr(light, f) for f in light.knob_values() if f != "ecommerce_shipping_options"},
            "name": "Mine",
            "pageviews_min": 6,
            "pageviews_max": 2,
            "ecommerce_shipping_options": "[0, 4.99]",
            "auto_stop_after_hours": "",
            "auto_stop_after_visits": "",
            "daily_cap": "",
        },
    )
    assert response.status_code == 200
    assert "The maximum page views must be at least the minimum" in response.content.decode()
    assert not Preset.objects.filter(name="Mine").exists()


@pytest.mark.django_db
def test_admin_duplicate_action_copies_a_builtin(client):
    client.force_login(make_user(superuser=True))
    medium = Preset.objects.get(name="Medium")
    response = client.post(
        reverse("admin:presets_preset_changelist"),
        {"action": "duplicate_presets", "_selected_action": [medium.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert Preset.objects.filter(name="Medium (copy)", is_builtin=False).exists()


@pytest.mark.django_db
def test_save_as_new_on_a_builtin_makes_its_custom_copy_and_opens_it(client):
    client.force_login(make_user(superuser=True))
    light = Preset.objects.get(name="Light")
    page = client.get(reverse("admin:presets_preset_change", args=[light.pk])).content.decode()
    assert 'name="_saveasnew"' in page
    assert '<div class="readonly">None</div>' not in page  # no helper fields without a value
    response = client.post(reverse("admin:presets_preset_change", args=[light.pk]), {"_saveasnew": "Save as new"})
    copy = Preset.objects.get(name="Light (copy)")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:presets_preset_change", args=[copy.pk])
    assert not copy.is_builtin and copy.knob_values() == light.knob_values()
    page = client.get(response["Location"]).content.decode()
    assert "Created custom preset “Light (copy)” from “Light”" in page and 'name="visits_per_day"' in page


def _custom_preset_form_data(preset: Preset, **changes) -> dict:
    data = {f: getattr(preset, f) for f in preset.knob_values()}
    for name in ("ecommerce_shipping_options", "device_mix", "persona_mix", "channel_mix", "catalog_overrides"):
        data[name] = json.dumps(data[name])
    for name in ("auto_stop_after_hours", "auto_stop_after_visits", "daily_cap"):
        data[name] = data[name] or ""
    data.update(name=preset.name, pages_mode="replace", page_performance="on", client_hints="on")
    data.update(changes)
    return data


@pytest.mark.django_db
def test_pasted_url_list_and_events_become_the_presets_catalog(client):
    client.force_login(make_user(superuser=True))
    preset = Preset.objects.get(name="Light").duplicate(name="Docs site")
    response = client.post(
        reverse("admin:presets_preset_change", args=[preset.pk]),
        _custom_preset_form_data(
            preset,
            site_url="https://docs.example.org",
            pages_text="https://docs.example.org/\nhttps://docs.example.org/install | Install guide",
            events_json='[{"category": "Video", "action": "Play", "name": "Intro", "value": 1}]',
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    preset.refresh_from_db()
    catalog = preset.catalog()
    assert [page.url for page in catalog.pages] == ["https://docs.example.org/", "https://docs.example.org/install"]
    assert catalog.site_url.startswith("https://docs.example.org")
    assert [(e.category, e.action) for e in catalog.events] == [("Video", "Play")]


@pytest.mark.django_db
def test_a_bad_url_list_is_reported_by_line_and_nothing_is_saved(client):
    client.force_login(make_user(superuser=True))
    preset = Preset.objects.get(name="Light").duplicate(name="Broken")
    response = client.post(
        reverse("admin:presets_preset_change", args=[preset.pk]),
        _custom_preset_form_data(preset, pages_text="https://ok.example.org/\nnot a url", events_json="[{"),
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "line 2" in html
    assert "Not valid JSON" in html
    preset.refresh_from_db()
    assert preset.catalog_overrides == {}


@pytest.mark.django_db
def test_catalog_overrides_are_validated_in_the_model_too():
    preset = Preset(name="raw", catalog_overrides={"pages": {"mode": "sideways", "items": []}})
    with pytest.raises(ValidationError) as info:
        preset.full_clean()
    assert "catalog_overrides" in info.value.message_dict


@pytest.mark.django_db
def test_a_snapshot_survives_json_and_gives_the_presets_own_profile():
    preset = Preset.objects.get(name="Medium")
    snapshot = PresetSnapshot(json.loads(json.dumps(PresetSnapshot.of(preset).as_json())))
    assert snapshot.knobs["ecommerce_order_value_max"] == "299.99"  # exact, not a float
    assert snapshot.profile() == preset.to_profile()
    assert snapshot.timezone == preset.timezone


def test_a_snapshot_taken_before_a_knob_existed_gets_the_models_default():
    assert PresetSnapshot({"visits_per_day": 50}).profile() == Profile(visits_per_day=50)
    assert PresetSnapshot({}).timezone == "UTC"
