import io
import logging
import re

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from targets.models import Target, normalize_matomo_url
from trafficinator.testing import make_target, make_user

SECRET = "f00dcafe0123456789abcdef0badc0de"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://matomo.example.com", "https://matomo.example.com/"),
        ("https://matomo.example.com/", "https://matomo.example.com/"),
        ("https://Example.COM/analytics", "https://example.com/analytics/"),
        ("https://example.com/analytics/matomo.php", "https://example.com/analytics/"),
        ("https://example.com/piwik.php?idsite=1&rec=1", "https://example.com/"),
        ("https://example.com/index.php?module=CoreHome#x", "https://example.com/"),
        ("http://127.0.0.1:8080/matomo/index.php", "http://127.0.0.1:8080/matomo/"),
        ("  https://example.com/matomo.js ", "https://example.com/"),
    ],
)
def test_matomo_urls_are_normalised_to_the_install_folder(raw, expected):
    assert normalize_matomo_url(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "Enter the Matomo URL"),
        ("matomo.example.com", "has no scheme"),
        ("ftp://example.com/", "not supported"),
        ("https:///matomo.php", "has no host"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://example.com:99999/", "invalid port"),
    ],
)
def test_bad_matomo_urls_are_explained(raw, message):
    with pytest.raises(ValidationError, match=message):
        normalize_matomo_url(raw)


@pytest.mark.django_db
def test_target_urls_for_tracking_and_api_are_derived_from_the_base():
    target = make_target(matomo_url="https://example.com/stats/matomo.php")
    assert target.matomo_url == "https://example.com/stats/"
    assert target.tracking_url == "https://example.com/stats/matomo.php"
    assert target.api_url == "https://example.com/stats/index.php"


@pytest.mark.django_db
def test_target_names_are_unique():
    make_target(name="shop")
    with pytest.raises(ValidationError, match="Name already exists"):
        make_target(name="shop")


@pytest.mark.django_db
def test_site_timezone_wins_over_the_preset_timezone_once_known():
    target = make_target()
    assert target.effective_timezone("CET") == "CET"
    target.site_timezone = "America/New_York"
    assert target.effective_timezone("CET") == "America/New_York"


def _admin_form_data(target: Target, **changes) -> dict:
    data = {
        "name": target.name,
        "matomo_url": target.matomo_url,
        "site_id": target.site_id,
        "token_auth": "",
        "enabled": "on",
    }
    data.update(changes)
    return data


@pytest.mark.django_db
def test_token_is_never_rendered_back_into_any_page(client):
    target = make_target(name="secretive", token_auth=SECRET)
    client.force_login(make_user(superuser=True))
    pages = [
        reverse("admin:targets_target_change", args=[target.pk]),
        reverse("admin:targets_target_changelist"),
        reverse("admin:targets_target_history", args=[target.pk]),
        reverse("home"),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert SECRET not in response.content.decode(), url
    change_page = client.get(pages[0]).content.decode()
    assert "A token is set" in change_page


@pytest.mark.django_db
def test_blank_token_on_edit_keeps_the_old_one_and_a_new_one_replaces_it(client):
    target = make_target(name="keep", token_auth=SECRET)
    client.force_login(make_user(superuser=True))
    url = reverse("admin:targets_target_change", args=[target.pk])

    response = client.post(url, _admin_form_data(target, site_id=7))
    assert response.status_code == 302
    target.refresh_from_db()
    assert (target.site_id, target.token_auth) == (7, SECRET)

    client.post(url, _admin_form_data(target, token_auth="newtoken123"))
    target.refresh_from_db()
    assert target.token_auth == "newtoken123"

    client.post(url, _admin_form_data(target, clear_token="on"))
    target.refresh_from_db()
    assert target.token_auth == ""


@pytest.mark.django_db
@pytest.mark.parametrize("matomo_url", ["ftp://example.com/", "http://[::1", "http://[::1]:99999/", "http://a b/"])
def test_admin_rejects_a_bad_url_with_a_field_error_and_saves_nothing(client, matomo_url):
    client.force_login(make_user(superuser=True))
    response = client.post(
        reverse("admin:targets_target_add"),
        {"name": "x", "matomo_url": matomo_url, "site_id": 1, "token_auth": "", "enabled": "on"},
    )
    assert response.status_code == 200  # the form again, not a 500
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["matomo_url"], errors
    assert not Target.objects.exists()


@pytest.mark.django_db
def test_target_add_command_validates_and_reads_the_token_from_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    out = io.StringIO()
    call_command(
        "target",
        "add",
        "--name",
        "cli",
        "--url",
        "https://m.example.com/matomo.php",
        "--site-id",
        "3",
        "--token-stdin",
        stdout=out,
    )
    target = Target.objects.get(name="cli")
    assert (target.matomo_url, target.site_id, target.token_auth) == ("https://m.example.com/", 3, SECRET)
    assert SECRET not in out.getvalue()
    assert "with token" in out.getvalue()


@pytest.mark.django_db
def test_target_add_command_reports_every_invalid_field():
    with pytest.raises(CommandError) as info:
        call_command("target", "add", "--name", "bad", "--url", "nope", "--site-id", "0")
    message = str(info.value)
    assert "matomo_url:" in message and "site_id:" in message
    assert not Target.objects.exists()


@pytest.mark.django_db
def test_target_list_command_shows_targets_without_their_tokens():
    make_target(name="alpha", token_auth=SECRET)
    out = io.StringIO()
    call_command("target", "list", stdout=out)
    assert "alpha" in out.getvalue() and "token=set" in out.getvalue()
    assert SECRET not in out.getvalue()


@pytest.mark.django_db
def test_target_check_command_names_unknown_targets():
    make_target(name="known")
    with pytest.raises(CommandError, match=re.escape("No target named “nope”. Known targets: known")):
        call_command("target", "check", "nope")


@pytest.mark.django_db
def test_token_does_not_reach_the_logs_when_a_target_is_saved_and_checked(caplog):
    caplog.set_level(logging.DEBUG)
    target = make_target(token_auth=SECRET, matomo_url="http://127.0.0.1:9/")
    call_command("target", "list", stdout=io.StringIO())
    with pytest.raises(CommandError):
        call_command("target", "check", target.name, stdout=io.StringIO())
    assert SECRET not in caplog.text


@pytest.mark.django_db
def test_saving_a_target_in_the_admin_checks_its_connection(client, fake_matomo):
    from conftest import TOKEN

    client.force_login(make_user(superuser=True))
    add_page = client.get(reverse("admin:targets_target_add")).content.decode()
    assert re.search(r'<input type="checkbox" name="check_after_saving"[^>]* checked', add_page)
    data = {"name": "shop", "matomo_url": fake_matomo.url, "site_id": 1, "token_auth": TOKEN, "enabled": "on"}
    response = client.post(reverse("admin:targets_target_add"), {**data, "check_after_saving": "on"}, follow=True)
    target = Target.objects.get(name="shop")
    assert target.last_check_ok and target.site_name == "Shop" and target.site_timezone == "Europe/Stockholm"
    shown = [str(message) for message in response.context["messages"]]
    assert any(message.startswith("shop: ") for message in shown), shown  # the check's answer is shown
    # Unticked: saved without asking Matomo.
    target.site_name = ""
    target.save()
    client.post(reverse("admin:targets_target_change", args=[target.pk]), _admin_form_data(target, site_id=1))
    target.refresh_from_db()
    assert target.site_name == ""
