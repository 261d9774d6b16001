"""Bad input into targets: URLs parsed strictly, names and tokens without control
characters, and a connection check that validates every value Matomo answers before it
stores it. Each test is a reproduction from issue 14."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from conftest import TOKEN
from targets.checks import (
    CheckResult,
    parse_created,
    parse_currency,
    parse_site,
    parse_timezone,
    parse_version,
    run_check,
)
from targets.fake_matomo import FakeMatomo
from targets.models import Target, normalize_matomo_url
from trafficinator.cli import USAGE_EXIT_CODE
from trafficinator.testing import make_target


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://[not-an-ip]/",
        "http://exa mple.com/",
        "http://example.com/ma tomo/",
        "http://example.com/\r\nX-Injected: 1",
        "http://exam\nple.com/",
        "http://example.com/\x00",
        "http://exa\tmple.com/",
        "http://ex_ample..com/",
        "http://-bad-.com/",
        "http://example.com:99999/",
        "http://" + "a" * 600 + ".com/",
    ],
)
def test_a_matomo_url_that_does_not_parse_strictly_is_refused_with_a_message(url):
    with pytest.raises(ValidationError):
        normalize_matomo_url(url)


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("http://[::1]:8080/matomo.php", "http://[::1]:8080/"),
        ("  https://Matomo.Example.com/stats/index.php?x=1  ", "https://matomo.example.com/stats/"),
        ("https://bücher.example/", "https://bücher.example/"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/"),
    ],
)
def test_good_matomo_urls_are_still_accepted(url, normalized):
    assert normalize_matomo_url(url) == normalized


@pytest.mark.django_db
def test_target_add_with_a_broken_ipv6_url_is_a_message_not_a_traceback():
    with pytest.raises(CommandError) as info:
        call_command("target", "add", "--name", "bad", "--url", "http://[::1", "--site-id", "1")
    assert "matomo_url:" in str(info.value) and info.value.returncode == USAGE_EXIT_CODE
    assert not Target.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "bad\x00name"), ("name", "two\nlines"), ("site_id", 2**40), ("token_auth", "abc def")],
)
def test_a_target_with_control_characters_or_an_absurd_site_id_is_refused(field, value):
    with pytest.raises(ValidationError) as info:
        make_target(**{field: value})
    assert field in info.value.message_dict
    assert not Target.objects.exists()


def test_matomo_answers_are_validated_before_they_are_stored():
    warnings: list[str] = []
    assert parse_timezone("Europe/Stockholm", warnings) == "Europe/Stockholm" and not warnings
    assert parse_timezone("Europe/Kyiv", warnings) == "Europe/Kyiv" and not warnings  # current tz data
    assert parse_timezone("UTC+3", warnings) == "Etc/GMT-3"  # Matomo's manual offsets
    assert parse_timezone("UTC-5", warnings) == "Etc/GMT+5"
    assert parse_timezone("UTC+0", warnings) == "UTC" and not warnings
    for hostile in ("Mars/Olympus_Mons", "A" * 127, "../../etc/passwd", "UTC+5.5", "", None, ["UTC"], {"a": 1}):
        assert parse_timezone(hostile, warnings) == ""
    assert len(warnings) == 8 and all("unknown on this machine" in warning for warning in warnings)
    assert all(len(warning) < 400 for warning in warnings)

    assert parse_currency("SEK", []) == "SEK"
    for hostile in ("TOOLONGCURRENCY", "sek", "€", 3, None):
        assert parse_currency(hostile, []) == ""
    assert parse_version("5.0.2", []) == "5.0.2" and parse_version("4.16.1-b2", []) == "4.16.1-b2"
    for hostile in ("5" * 100, "<script>", {"value": "5"}, None, True, "5.0.2\n<b>"):
        assert parse_version(hostile, []) == ""
    assert str(parse_created("2021-03-04 05:06:07", [])) == "2021-03-04"
    for hostile in ("0001-01-01 00:00:00", "yesterday", 12, None):
        assert parse_created(hostile, []) is None


def test_a_site_answer_of_the_wrong_shape_gives_warnings_not_errors():
    result = CheckResult(ok=False, message="")
    parse_site({"name": "x" * 10_000 + "\x00", "timezone": 5, "currency": [], "ts_created": {}}, result)
    assert len(result.site_name) == 255 and "\x00" not in result.site_name
    assert result.site_timezone == result.site_currency == "" and result.site_created is None
    assert len(result.warnings) == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides",
    [
        {"timezone": "Europe/Atlantis", "currency": "TOOLONGCURRENCY"},
        {"timezone": "Z" * 127, "currency": "eu"},
        {"timezone": None, "currency": None, "name": None, "ts_created": "0001-01-01"},
    ],
)
def test_a_hostile_site_answer_is_stored_bounded_with_a_warning(overrides):
    site = {"id": 1, "timezone": "Europe/Stockholm", "currency": "SEK", "answer_overrides": overrides}
    with FakeMatomo(sites=[site], tokens={TOKEN: {"superuser": True}}) as server:
        target = make_target(matomo_url=server.url, token_auth=TOKEN)
        result = run_check(target)
    target.refresh_from_db()
    assert result.ok and "unknown on this machine" in result.message
    assert target.site_timezone == "" and target.site_currency == ""
    assert target.effective_timezone("Europe/Berlin") == "Europe/Berlin"  # the preset's, with a warning
    assert "unknown on this machine" in target.last_check_message


@pytest.mark.django_db
def test_a_check_learns_the_sites_creation_day(fake_matomo):
    target = make_target(matomo_url=fake_matomo.url, token_auth=TOKEN)
    assert run_check(target).ok
    target.refresh_from_db()
    assert str(target.site_created) == "2020-01-01"


@pytest.mark.django_db
def test_a_zone_stored_before_validation_falls_back_with_a_warning():
    target = make_target()
    Target.objects.filter(pk=target.pk).update(site_timezone="Europe/Kyivv")
    target.refresh_from_db()
    assert target.effective_timezone("Europe/Stockholm") == "Europe/Stockholm"
    assert target.effective_timezone("Nowhere/Else") == "UTC"
    assert "Europe/Kyivv" in target.timezone_warning("Europe/Stockholm")
    assert target.timezone_warning("UTC") and not make_target(site_timezone="UTC").timezone_warning("UTC")
