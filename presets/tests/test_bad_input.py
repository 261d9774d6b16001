"""Bad input in the preset admin: JSON fields, catalog overrides, URL lists and oversized
forms give form errors, never a 500 or a bare 400. Each test is a reproduction from
issue 14."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from presets.models import Preset
from presets.tests.test_presets import _custom_preset_form_data
from trafficinator.testing import make_preset


@pytest.fixture
def preset(db) -> Preset:
    return Preset.objects.get(name="Light").duplicate(name="Mine")


def post(client, preset, **changes):
    url = reverse("admin:presets_preset_change", args=[preset.pk])
    return client.post(url, _custom_preset_form_data(preset, **changes))


@pytest.mark.parametrize("value", ['"str"', "[]", "5", '"NaN"', "[1, 2]"])
def test_catalog_overrides_that_are_not_an_object_are_a_form_error(admin_client, preset, value):
    response = post(admin_client, preset, catalog_overrides=value)
    assert response.status_code == 200 and "JSON object" in response.content.decode()
    preset.refresh_from_db()
    assert preset.catalog_overrides == {}


def test_null_catalog_overrides_are_stored_as_an_empty_object(admin_client, preset):
    assert post(admin_client, preset, catalog_overrides="null").status_code == 302
    preset.refresh_from_db()
    assert preset.catalog_overrides == {}


@pytest.mark.parametrize("field", ["device_mix", "catalog_overrides", "persona_mix"])
@pytest.mark.parametrize(
    ("value", "named"),
    [("[" * 100_000 + "]" * 100_000, "nested"), ('{"desktop": NaN, "mobile": 1}', "NaN"), ("{", "Not valid JSON")],
)
def test_broken_or_hostile_json_in_the_admin_is_a_form_error(admin_client, preset, field, value, named):
    response = post(admin_client, preset, **{field: value})
    assert response.status_code == 200 and named in response.content.decode()
    assert Preset.objects.get(pk=preset.pk).device_mix == preset.device_mix


@pytest.mark.parametrize("events", ['[{"category": "V", "action": "P", "value": Infinity}]', "[" * 5000 + "]" * 5000])
def test_hostile_events_json_is_a_form_error(admin_client, preset, events):
    response = post(admin_client, preset, events_json=events)
    assert response.status_code == 200 and "Not valid JSON" in response.content.decode()


def test_a_url_list_upload_with_nul_bytes_is_refused(admin_client, preset):
    upload = SimpleUploadedFile("pages.txt", b"https://ok.example.org/\x00\nhttps://b.example.org/")
    response = post(admin_client, preset, pages_file=upload)
    assert response.status_code == 200 and "NUL" in response.content.decode()
    preset.refresh_from_db()
    assert preset.catalog_overrides == {}


def test_pasting_more_than_the_upload_limit_gives_a_message_not_a_bare_400(admin_client, preset, settings):
    url = reverse("admin:presets_preset_change", args=[preset.pk])
    big = "https://example.org/" + "a" * 100 + "\n"
    data = _custom_preset_form_data(preset, pages_text=big * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE // len(big) + 10))
    response = admin_client.post(url, data)
    assert response.status_code == 303 and response["Location"] == url
    page = admin_client.get(url).content.decode()
    assert "larger than the 2.62144 MB" in page and "nothing was saved" in page
    preset.refresh_from_db()
    assert preset.catalog_overrides == {}


def test_an_oversized_htmx_post_gets_a_413_with_the_message(admin_client, settings):
    response = admin_client.post(
        "/", {"x": "y" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)}, headers={"HX-Request": "true"}
    )
    assert response.status_code == 413 and b"nothing was saved" in response.content


@pytest.mark.django_db
def test_the_model_refuses_non_object_overrides_and_non_finite_numbers():
    for overrides in (None, [], "str"):
        with pytest.raises(ValidationError):
            make_preset(catalog_overrides=overrides)
    with pytest.raises(ValidationError):
        make_preset(device_mix={"desktop": float("nan"), "mobile": 1.0})
    with pytest.raises(ValidationError):
        make_preset(bounce_share=float("nan"))
    assert json.dumps(make_preset().device_mix)
