"""Who may see targets, preview funnels and check connections (issue 14, item 4)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from conftest import TOKEN
from targets.models import Target
from trafficinator.testing import FUNNEL_VIEWER, log_in_client, make_funnel, make_target


def client_for(*perms: str) -> Client:
    return log_in_client(Client(), perms)


@pytest.mark.django_db
def test_the_home_page_lists_targets_only_to_users_who_may_view_them():
    make_target(name="secret-shop", matomo_url="https://matomo.internal.example/", last_check_message="hush")
    page = client_for().get("/").content.decode()
    assert "secret-shop" not in page and "matomo.internal.example" not in page and "hush" not in page
    page = client_for("targets.view_target").get("/").content.decode()
    assert "secret-shop" in page and "matomo.internal.example" in page


@pytest.mark.django_db
def test_presets_are_listed_only_to_users_who_may_view_them():
    assert "<h2>Presets</h2>" not in client_for().get("/").content.decode()
    assert "<h2>Presets</h2>" in client_for("presets.view_preset").get("/").content.decode()


@pytest.mark.django_db
def test_funnel_preview_needs_the_view_permission_on_funnels():
    funnel = make_funnel(name="Checkout")
    url = reverse("funnels:preview", args=[funnel.pk])
    assert client_for().get(url).status_code == 403
    assert client_for(*FUNNEL_VIEWER).get(url).status_code == 200


@pytest.mark.django_db
def test_the_admin_check_action_needs_change_permission_and_sends_no_token_otherwise(fake_matomo):
    target = make_target(name="shop", matomo_url=fake_matomo.url, token_auth=TOKEN)
    changelist = reverse("admin:targets_target_changelist")
    action = {"action": "check_connection", "_selected_action": [target.pk]}

    viewer = client_for("targets.view_target")
    assert "check_connection" not in viewer.get(changelist).content.decode()
    viewer.post(changelist, action)
    assert fake_matomo.api_calls == []  # the token never left
    assert Target.objects.get(pk=target.pk).last_checked_at is None  # nothing checked, token not sent
    check_url = reverse("admin:targets_target_check", args=[target.pk])
    assert viewer.post(check_url).status_code == 403

    editor = client_for("targets.view_target", "targets.change_target")
    assert "check_connection" in editor.get(changelist).content.decode()
    editor.post(changelist, action)
    assert Target.objects.get(pk=target.pk).last_check_ok is True


@pytest.mark.django_db
def test_the_admin_prepare_action_needs_change_permission_and_changes_nothing_otherwise(fake_matomo):
    target = make_target(name="shop", matomo_url=fake_matomo.url, token_auth=TOKEN)
    changelist = reverse("admin:targets_target_changelist")
    action = {"action": "prepare_site_for_catalog", "_selected_action": [target.pk]}

    viewer = client_for("targets.view_target")
    assert "prepare_site_for_catalog" not in viewer.get(changelist).content.decode()
    viewer.post(changelist, action)
    assert fake_matomo.api_calls == []  # the token never left
    assert fake_matomo.sites[1].goals == {}

    editor = client_for("targets.view_target", "targets.change_target")
    assert "prepare_site_for_catalog" in editor.get(changelist).content.decode()
    editor.post(changelist, action)
    created = set(fake_matomo.sites[1].goals.values())
    assert created and created == set(Target.objects.get(pk=target.pk).site_goals.values())
