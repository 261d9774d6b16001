"""Referrers in a preset's catalog overrides are checked against Matomo's own search-engine
and social lists, like the built-in catalog's: one that Matomo would file in another
channel is refused with a message that says where Matomo files it."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from presets.channels import misfiled_referrers
from presets.models import Preset, catalog_with_overrides
from presets.tests.test_presets import _custom_preset_form_data
from trafficinator.testing import make_preset, make_user


def test_the_built_in_catalog_has_no_misfiled_referrer():
    assert misfiled_referrers(catalog_with_overrides(None)) == []


def test_each_kind_of_misfiled_referrer_is_named_with_where_matomo_files_it():
    catalog = catalog_with_overrides(
        {
            "social_networks": {"mode": "replace", "items": ["https://www.facebook.com/", "https://m.facebook.com/"]},
            "websites": ["https://t.co/abc", "https://blog.example.org/post/1"],
            "search_engines": [
                {"name": "Bing", "url": "https://www.bing.com/search", "keyword_param": "q"},
                {"name": "Bing, wrong term", "url": "https://www.bing.com/search", "keyword_param": "term"},
                {"name": "Ours", "url": "https://search.example.com/", "keyword_param": "q"},
            ],
        }
    )
    problems = misfiled_referrers(catalog)
    assert problems == [
        "search_engines: Matomo files https://www.bing.com/search as a website, not as a search engine (Matomo's "
        "search-engine list has no engine at this host and path that takes the term in “term”)",
        "search_engines: Matomo files https://search.example.com/ as a website, not as a search engine (Matomo's "
        "search-engine list has no engine at this host and path that takes the term in “q”)",
        "social_networks: Matomo files https://www.facebook.com/ as a search engine (Facebook), not as a social "
        "network (Matomo's own search-engine and social lists decide)",
        "websites: Matomo files https://t.co/abc as a social network (Twitter), not as a website (Matomo's own "
        "search-engine and social lists decide)",
    ]


def test_a_referrer_on_the_sites_own_host_is_a_direct_entry():
    catalog = catalog_with_overrides(
        {"site": {"url": "https://shop.example.com/"}, "websites": ["https://shop.example.com/blog/"]}
    )
    assert misfiled_referrers(catalog) == [
        "websites: Matomo files https://shop.example.com/blog/ as a direct entry (the site's own address), not as "
        "a website (Matomo's own search-engine and social lists decide)"
    ]


@pytest.mark.django_db
def test_a_preset_with_a_misfiled_referrer_is_refused_by_the_model_and_the_admin():
    with pytest.raises(ValidationError) as raised:
        make_preset(catalog_overrides={"social_networks": ["https://www.facebook.com/"]})
    assert "as a search engine (Facebook), not as a social network" in str(raised.value)

    client = Client()
    client.force_login(make_user(superuser=True))
    preset = Preset.objects.get(name="Light").duplicate(name="Mine")
    overrides = json.dumps({"social_networks": ["https://www.facebook.com/"]})
    response = client.post(
        reverse("admin:presets_preset_change", args=[preset.pk]),
        _custom_preset_form_data(preset, catalog_overrides=overrides),
    )
    assert response.status_code == 200
    assert escape("Matomo files https://www.facebook.com/ as a search engine (Facebook)") in response.content.decode()
    preset.refresh_from_db()
    assert preset.catalog_overrides == {}

    fixed = json.dumps({"social_networks": ["https://l.facebook.com/"]})
    response = client.post(
        reverse("admin:presets_preset_change", args=[preset.pk]),
        _custom_preset_form_data(preset, catalog_overrides=fixed),
    )
    assert response.status_code == 302
