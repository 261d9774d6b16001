"""Bad input into targets: URLs parsed strictly, names and tokens without control
characters, and a connection check that validates every value Matomo answers before it
stores it. Each test is a reproduction from issue 14."""

from __future__ import annotations

import io
from datetime import date

import pytest
import requests
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from urllib3.response import HTTPResponse

from backfill.models import BackfillDay
from conftest import TOKEN
from runs.models import Run
from targets.checks import (
    GOAL_NAME_MAX,
    MAX_ANSWER_BYTES,
    CheckResult,
    MatomoClient,
    _goals,
    parse_created,
    parse_currency,
    parse_site,
    parse_timezone,
    parse_version,
    run_check,
    token_works_in_bulk,
)
from targets.fake_matomo import FakeMatomo
from targets.models import Target, normalize_matomo_url
from targets.readback import ReadBackError, day_summary, live_counters
from trafficinator.cli import USAGE_EXIT_CODE
from trafficinator.testing import confirmed_plan, make_preset, make_run, make_target, make_user


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


# --- Matomo's other answers: goals, token probes, read-back counts -------------------------


def canned(answers: dict[str, bytes], tracker: bytes = b'{"status":"success","tracked":1,"invalid":0}'):
    """A MatomoClient._request that answers each Reporting API method with its body from
    ``answers`` (``{}`` otherwise), the tracker's GET with its text, and every other
    tracker request with ``tracker``."""

    def request(self, method, url, **kwargs):
        api_method = (kwargs.get("params") or {}).get("method")
        body = tracker if api_method is None else answers.get(api_method, b"{}")
        if method == "GET":
            body = b"This resource is part of Matomo."
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Type"] = "application/json"
        stream = body if isinstance(body, io.RawIOBase) else io.BytesIO(body)
        response.raw = HTTPResponse(body=stream, preload_content=False, status=200)
        return response

    return request


class CutOffBody(io.RawIOBase):
    """An answer whose connection resets after the head (urllib3 raises ProtocolError)."""

    def readable(self):
        return True

    def readinto(self, buffer):
        raise ConnectionResetError("connection reset by peer")


def test_goal_answers_are_cleaned_and_bounded_and_odd_ids_are_skipped_with_a_warning():
    warnings: list[str] = []
    answer = {
        "1": {"idgoal": "²", "name": "superscript id"},  # isdigit() but no int()
        "2": {"idgoal": "2", "name": "Sign\x00up\n" + "x" * 5000},
        "3": {"idgoal": 3, "name": ["not", "text"]},
        "4": {"idgoal": "1e9", "name": "x"},
        "5": {"idgoal": True, "name": "x"},
        "6": ["not a goal"],
        "7": {"idgoal": "7", "name": "Store fitting booked"},
    }
    goals = _goals(answer, warnings)
    assert set(goals) == {2, 3, 7} and goals[7] == "Store fitting booked" and goals[3] == ""
    assert goals[2].startswith("Sign up x") and len(goals[2]) == GOAL_NAME_MAX and "\x00" not in goals[2]
    assert len(warnings) == 1 and "4 entries" in warnings[0]
    assert _goals([{"idgoal": str(n), "name": "g"} for n in range(1, 5000)], warnings).keys() == set(range(1, 1001))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("goals", "site_goals", "said"),
    [  # site_goals None: the check fails, and says why
        (b'{"1": {"idgoal": "\xc2\xb2", "name": "x"}}', {}, "1 entry without a usable goal id"),
        (b'[{"idgoal": "1", "name": "Sign\\u0000up"}]', {"1": "Sign up"}, "OK: Matomo 5.0.2"),
        (b'[{"idgoal": Infinity, "name": "x"}]', None, "Infinity is not a number in JSON"),
        (b'{"1": {"idgoal": NaN}}', None, "NaN is not a number in JSON"),
        (b"[" * 100_000 + b"]" * 100_000, None, "nested more than 32 levels deep"),
    ],
)
def test_a_hostile_goal_list_is_a_warning_or_a_failed_check_never_a_traceback(monkeypatch, goals, site_goals, said):
    answers = {
        "API.getMatomoVersion": b'{"value": "5.0.2"}',
        "SitesManager.getSiteFromId": b'{"idsite": 1, "name": "Shop", "timezone": "UTC", "currency": "EUR"}',
        "UsersManager.hasSuperUserAccess": b'{"value": true}',
        "Goals.getGoals": goals,
    }
    monkeypatch.setattr(MatomoClient, "_request", canned(answers))
    target = make_target(token_auth=TOKEN)
    result = run_check(target)
    target.refresh_from_db()
    assert said in result.message
    if site_goals is None:
        assert not result.ok and "did not answer usable JSON" in result.message and target.last_check_ok is False
    else:
        assert result.ok and target.last_check_ok and target.site_goals == site_goals


@pytest.mark.django_db
@pytest.mark.parametrize(
    "answer",
    [
        b'[{"status": "success", "tracked": 1, "invalid": 0}]',
        b'{"status": "success", "tracked": 1, "invalid": "x"}',
        b'{"status": "success", "tracked": Infinity, "invalid": 0}',
        b'{"status": "success", "tracked": true, "invalid": 0}',
        b'{"status": "success", "tracked": 1}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe not json",
    ],
)
def test_a_hostile_bulk_probe_answer_means_the_token_does_not_work_in_bulk(monkeypatch, answer):
    monkeypatch.setattr(MatomoClient, "_request", canned({}, tracker=answer))
    client = MatomoClient(make_target(token_auth=TOKEN))
    assert client.probe_token_modes() == (True, False)
    monkeypatch.setattr(MatomoClient, "_request", canned({}))
    assert client.probe_token_modes() == (True, True)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "answer",
    [b'{"status":"success","tracked":1,"invalid":0}' + b" " * MAX_ANSWER_BYTES, CutOffBody()],
    ids=["larger than 4 MB", "cut off"],
)
def test_an_unusable_bulk_probe_answer_means_not_in_bulk_and_the_check_goes_on(monkeypatch, answer):
    # Before, either answer raised CheckFailed: the whole connection check failed, and a
    # bulk run took the token as working in bulk (token_works_in_bulk answered True).
    answers = {
        "API.getMatomoVersion": b'{"value": "5.0.2"}',
        "SitesManager.getSiteFromId": b'{"idsite": 1, "name": "Shop", "timezone": "UTC", "currency": "EUR"}',
        "UsersManager.hasSuperUserAccess": b'{"value": true}',
        "Goals.getGoals": b"[]",
    }
    monkeypatch.setattr(MatomoClient, "_request", canned(answers, tracker=answer))
    target = make_target(token_auth=TOKEN)
    assert MatomoClient(target).probe_token_modes() == (True, False)
    assert token_works_in_bulk(target) is False
    target.refresh_from_db()
    assert target.token_secure_only is True

    result = run_check(target)
    assert result.ok, result.message
    assert result.token_secure_only is True
    assert "secure-only token: no bulk with countries, no backfill" in result.warnings


@pytest.mark.django_db
def test_an_api_answer_cut_off_mid_body_fails_the_check_with_a_message(monkeypatch):
    monkeypatch.setattr(MatomoClient, "_request", canned({"API.getMatomoVersion": CutOffBody()}))
    result = run_check(make_target(token_auth=TOKEN))
    assert not result.ok and "Reading the answer of" in result.message


@pytest.mark.django_db
@pytest.mark.parametrize(
    "answer",
    [
        b'{"nb_visits": "x", "nb_actions": 1}',
        b'{"nb_visits": Infinity, "nb_actions": 1}',
        b'{"nb_visits": 1.5, "nb_actions": 1}',
        b'{"nb_visits": -3, "nb_actions": 1}',
        b'{"nb_visits": 1, "nb_actions": 100000000000000000000}',
        b'{"nb_visits": NaN, "nb_actions": 1}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_a_hostile_day_summary_is_a_read_back_error(monkeypatch, answer):
    monkeypatch.setattr(MatomoClient, "_request", canned({"VisitsSummary.get": answer}))
    target = make_target(token_auth=TOKEN)
    with pytest.raises(ReadBackError, match=r"VisitsSummary\.get"):
        day_summary(target, date(2026, 1, 2))
    monkeypatch.setattr(MatomoClient, "_request", canned({"VisitsSummary.get": b'{"nb_visits": 3, "nb_actions": 7}'}))
    assert day_summary(target, date(2026, 1, 2)) == (3, 7)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "answer",
    [
        b'[{"visits": Infinity, "actions": 1}]',
        b'[{"visits": "x", "actions": 1}]',
        b'[{"visits": 2, "actions": 1e300}]',
        b'[["visits"]]',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_a_hostile_live_counter_is_a_read_back_error(monkeypatch, answer):
    monkeypatch.setattr(MatomoClient, "_request", canned({"Live.getCounters": answer}))
    target = make_target(token_auth=TOKEN)
    with pytest.raises(ReadBackError, match=r"Live\.getCounters"):
        live_counters(target, 5)
    monkeypatch.setattr(MatomoClient, "_request", canned({"Live.getCounters": b'[{"visits": "4", "actions": 9}]'}))
    assert live_counters(target, 5) == (4, 9)


@pytest.mark.django_db
def test_hostile_read_back_answers_give_pages_with_the_reason_not_a_500(monkeypatch):
    answers = {
        "VisitsSummary.get": b'{"nb_visits": Infinity, "nb_actions": 1}',
        "Live.getCounters": b'[{"visits": 1e400, "actions": 1}]',
    }
    monkeypatch.setattr(MatomoClient, "_request", canned(answers))
    target = make_target(name="shop", token_auth=TOKEN, last_check_ok=True, token_can_write=True)
    client = Client()
    client.force_login(make_user(superuser=True))

    plan = confirmed_plan([target], make_preset(), last_days=2, visits_per_day=10)
    plan.days.update(visits_done=3, status=BackfillDay.Status.DONE)
    response = client.post(reverse("backfill:verify", args=[plan.pk]))
    assert response.status_code == 302
    plan.refresh_from_db()
    assert all("did not answer usable JSON" in row["cause"] for row in plan.verification["rows"])
    assert client.get(reverse("backfill:detail", args=[plan.pk])).status_code == 200

    run = make_run([target])
    Run.objects.filter(pk=run.pk).update(status=Run.Status.COMPLETED, started_at=timezone.now())
    assert client.post(reverse("runs:verify", args=[run.pk])).status_code == 302
    run.refresh_from_db()
    assert "did not answer usable JSON" in run.verification["rows"][0]["cause"]
    assert client.get(reverse("runs:detail", args=[run.pk])).status_code == 200
