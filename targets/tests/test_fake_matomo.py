"""The project's fake Matomo: it must behave like Matomo 5 where our product depends on it.

Every request goes to 127.0.0.1, counts are small and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
import requests

from targets.fake_matomo import GIF, FakeMatomo, Fault, Site, Token
from targets.fake_matomo.model import user_id_hash
from targets.fake_matomo.rules import is_bot_ip, is_bot_user_agent, parse_cdt
from trafficinator.testing import wait_until

SUPER = "super0000000000000000000000000000"
WRITE = "write1111111111111111111111111111"  # write on site 1
SECURE = "secure222222222222222222222222222"  # write on site 1, secure-only
VIEW = "view3333333333333333333333333333"  # view on site 1
ADMIN = "admin444444444444444444444444444"  # admin on site 2
CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
CID = "0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 5


def make_matomo(**kwargs) -> FakeMatomo:
    kwargs.setdefault(
        "sites",
        [
            Site(
                1,
                name="Shop",
                main_url="https://shop.example.com",
                timezone="Europe/Stockholm",
                currency="SEK",
                ecommerce=True,
                goals={3: "Account created"},
            ),
            Site(2, name="Blog", timezone="America/New_York"),
            Site(3, name="Paused", record_statistics=False),
        ],
    )
    kwargs.setdefault(
        "tokens",
        [
            Token(SUPER, login="root", superuser=True),
            Token(WRITE, login="writer", write=frozenset({1})),
            Token(SECURE, login="careful", write=frozenset({1}), secure_only=True),
            Token(VIEW, login="viewer", view=frozenset({1})),
            Token(ADMIN, login="boss", admin=frozenset({2})),
        ],
    )
    return FakeMatomo(**kwargs)


@pytest.fixture
def matomo():
    with make_matomo() as server:
        yield server


def hit(**params) -> dict:
    """A minimal valid page view for site 1."""
    base = {
        "idsite": 1,
        "rec": 1,
        "url": "https://shop.example.com/",
        "action_name": "Home",
        "cid": CID,
        "ua": CHROME,
        "send_image": 0,
    }
    base.update(params)
    return {k: v for k, v in base.items() if v is not None}


def bulk(http, matomo, entries, token=None, **extra):
    body = {"requests": entries, **extra}
    if token:
        body["token_auth"] = token
    return http.post(matomo.tracking_url, json=body, timeout=TIMEOUT)


def query(params: dict) -> str:
    return "?" + urlencode(params, doseq=True)


def days_ago(days: float) -> int:
    return int(time.time() - days * 86400)


def morning_days_ago(days: int) -> int:
    """06:00 UTC (the fake's default site zone) that many days ago: hits an hour or two
    later never cross the site's midnight, where Matomo would split the visit, whatever
    the hour the test runs at."""
    day = datetime.fromtimestamp(days_ago(days), UTC)
    return int(day.replace(hour=6, minute=0, second=0, microsecond=0).timestamp())


# -- single hits ----------------------------------------------------------------------------------


def test_bare_get_is_matomo_text_with_200_and_an_empty_post_is_a_400(matomo, http):
    response = http.get(matomo.tracking_url, timeout=TIMEOUT)
    assert response.status_code == 200  # Matomo: a bare GET is its "this is Matomo" page
    assert response.text.startswith("This resource is part of Matomo.")
    response = http.post(matomo.url + "piwik.php", data=b"", timeout=TIMEOUT)
    assert response.status_code == 400
    assert "This resource is part of Matomo" in response.text
    assert matomo.stats()["recorded"] == 0


def test_a_page_view_answers_a_43_byte_gif_or_204_with_send_image_0(matomo, http):
    response = http.get(matomo.tracking_url, params=hit(send_image=None), timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/gif"
    assert response.content == GIF and len(GIF) == 43
    response = http.post(matomo.url + "piwik.php", data=hit(action_name="Second"), timeout=TIMEOUT)
    assert response.status_code == 204 and response.content == b""
    hits = matomo.hits_for(1)
    assert [h.params["action_name"] for h in hits] == ["Home", "Second"]
    assert {h.visitor_id for h in hits} == {CID}
    assert matomo.stats()["recorded"] == matomo.stats()["tracked"] == 2


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        (hit(idsite=None), "unknown_site"),
        (hit(idsite=None, idSite=1), "unknown_site"),
        (hit(idsite=99), "unknown_site"),
        (hit(idsite="abc"), "unknown_site"),
        (hit(cid="0123456789abcde"), "bad_cid"),
        (hit(cid="0123456789abcdefa"), "bad_cid"),
        (hit(cid="0123456789abcdeg"), "bad_cid"),
        (hit(cip="203.0.113.9"), "cip_needs_token"),
        (hit(country="se"), "country_needs_token"),
        (hit(region="AB"), "region_needs_token"),
        (hit(city="Stockholm"), "city_needs_token"),
        (hit(lat="59.33"), "lat_needs_token"),
        (hit(long="18.06"), "long_needs_token"),
        (hit(cdt=days_ago(2)), "cdt_needs_token"),
    ],
)
def test_invalid_single_hits_get_400_and_are_not_recorded(matomo, http, params, reason):
    response = http.get(matomo.tracking_url, params=params, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "This resource is part of Matomo" in response.text
    assert response.headers["X-Fake-Matomo-Reason"].startswith(reason)
    stats = matomo.stats()
    assert stats["recorded"] == 0
    assert stats["invalid_by_reason"] == {reason: 1}
    assert stats["rejected_by_status"] == {"400": 1}


@pytest.mark.parametrize("token", [None, VIEW, ADMIN])
def test_token_only_parameters_need_write_or_admin_access_to_the_site(matomo, http, token):
    # VIEW only views site 1; ADMIN administers site 2, not site 1.
    params = hit(cip="203.0.113.9", country="se", cdt=days_ago(3))
    data = {**params, "token_auth": token} if token else params
    response = http.post(matomo.tracking_url, data=data, timeout=TIMEOUT)
    assert response.status_code == 400
    assert matomo.stats()["recorded"] == 0


@pytest.mark.parametrize("token", [WRITE, SECURE, SUPER])
def test_token_only_parameters_are_accepted_with_a_write_token_in_the_post_body(matomo, http, token):
    when = days_ago(3)
    data = hit(
        cip="203.0.113.9",
        country="se",
        region="AB",
        city="Stockholm",
        lat="59.3",
        long="18.0",
        cdt=when,
        token_auth=token,
    )
    response = http.post(matomo.tracking_url, data=data, timeout=TIMEOUT)
    assert response.status_code == 204
    [recorded] = matomo.hits_for(1)
    assert recorded.time == when
    assert "token_auth" not in recorded.params  # secrets are never kept
    assert matomo.stats()["token_in_url"] == 0


def test_a_token_in_the_url_is_counted_and_a_secure_only_one_there_is_ignored(matomo, http):
    response = http.get(matomo.tracking_url, params=hit(cip="203.0.113.9", token_auth=SECURE), timeout=TIMEOUT)
    assert response.status_code == 400  # secure-only in a query string = no token
    response = http.get(matomo.tracking_url, params=hit(cip="203.0.113.9", token_auth=WRITE), timeout=TIMEOUT)
    assert response.status_code == 204  # accepted, but it leaked into the URL
    stats = matomo.stats()
    assert stats["token_in_url"] == 2
    assert stats["recorded"] == 1


def test_cdt_rules_recent_future_and_formats(matomo, http):
    now = time.time()
    recent = int(now - 3600)
    http.get(matomo.tracking_url, params=hit(cdt=recent, action_name="recent"), timeout=TIMEOUT)
    stamp = datetime.fromtimestamp(recent + 60, UTC).strftime("%Y-%m-%d %H:%M:%S")
    http.get(matomo.tracking_url, params=hit(cdt=stamp, action_name="text"), timeout=TIMEOUT)
    http.get(matomo.tracking_url, params=hit(cdt=int(now + 7200), action_name="future"), timeout=TIMEOUT)
    times = {h.params["action_name"]: h.time for h in matomo.hits_for(1)}
    assert times["recent"] == recent
    assert times["text"] == recent + 60
    assert now - 1 <= times["future"] <= time.time() + 1  # a future cdt becomes "now"


def test_cdt_older_than_the_raw_data_retention_is_rejected_even_with_a_token(http):
    with make_matomo(raw_data_retention_days=30) as matomo:
        response = http.post(matomo.tracking_url, data=hit(cdt=days_ago(31), token_auth=SUPER), timeout=TIMEOUT)
        assert response.status_code == 400
        assert response.headers["X-Fake-Matomo-Reason"].startswith("cdt_older_than_retention")
        response = http.post(matomo.tracking_url, data=hit(cdt=days_ago(29), token_auth=SUPER), timeout=TIMEOUT)
        assert response.status_code == 204


def test_rec_missing_and_bots_are_excluded_but_answered_ok(matomo, http):
    cases = [
        hit(rec=None),
        hit(rec=0),
        hit(ua="Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        hit(ua="UptimeRobot/2.0"),
        hit(ua="Site24x7 availability monitor"),
    ]
    for params in cases:
        assert http.get(matomo.tracking_url, params=params, timeout=TIMEOUT).status_code == 204
    assert http.post(matomo.tracking_url, data=hit(cip="66.249.80.7", token_auth=WRITE), timeout=TIMEOUT).ok
    assert http.post(matomo.tracking_url, data=hit(cip="157.55.1.1", token_auth=WRITE), timeout=TIMEOUT).ok
    stats = matomo.stats()
    assert stats["recorded"] == 0
    assert stats["tracked"] == stats["excluded"] == 7
    assert stats["excluded_by_reason"] == {"rec_missing": 2, "bot_user_agent": 3, "bot_ip": 2}
    # bots=1 records them.
    http.get(matomo.tracking_url, params=hit(ua="UptimeRobot/2.0", bots=1), timeout=TIMEOUT)
    assert matomo.stats()["recorded"] == 1


def test_bot_detection_spares_ordinary_browsers_and_http_libraries():
    for agent in (
        CHROME,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
        "python-requests/2.32",
        "curl/8.5.0",
        "Mozilla/5.0 (Linux; Android 10; CUBOT X30)",
    ):
        assert not is_bot_user_agent(agent), agent
    for agent in (
        "bingbot/2.0",
        "AhrefsBot/7.0",
        "Screaming Frog SEO Spider/19",
        "Pingdom.com_bot_version_1.4",
        "my-probe/1",
        "vulnerability scanner",
        "feed fetcher",
        "Scrapy crawler",
        "Uptime-Kuma/1.23",
    ):
        assert is_bot_user_agent(agent), agent
    assert is_bot_ip("66.249.80.1") and is_bot_ip("74.125.200.1") and is_bot_ip("207.46.13.1")
    assert not is_bot_ip("203.0.113.9") and not is_bot_ip("::1") and not is_bot_ip("garbage")


def test_visitor_id_is_uid_hash_then_cid_then_id_then_a_fingerprint(matomo, http):
    http.get(matomo.tracking_url, params=hit(uid="alice@example.com", cid="not-even-16"), timeout=TIMEOUT)
    http.get(matomo.tracking_url, params=hit(cid=None, _id="FEDCBA9876543210"), timeout=TIMEOUT)
    http.get(matomo.tracking_url, params=hit(cid=None, lang="sv"), timeout=TIMEOUT)
    http.get(matomo.tracking_url, params=hit(cid=None, lang="sv"), timeout=TIMEOUT)
    http.get(matomo.tracking_url, params=hit(cid=None, lang="de"), timeout=TIMEOUT)
    ids = [h.visitor_id for h in matomo.hits_for(1)]
    assert (
        ids[0]
        == user_id_hash("alice@example.com")
        == hashlib.sha1(b"alice@example.com", usedforsecurity=False).hexdigest()[:16]
    )
    assert ids[1] == "fedcba9876543210"
    assert ids[2] == ids[3] != ids[4]  # same IP + UA + language collapse into one visitor
    assert len(ids[2]) == 16


def test_a_repeated_order_id_is_excluded_per_site(matomo, http):
    order = {"idgoal": 0, "ec_id": "run7-2024-05-01-0001", "revenue": "99.5", "url": None, "action_name": None}
    assert http.get(matomo.tracking_url, params=hit(**order), timeout=TIMEOUT).status_code == 204
    assert http.get(matomo.tracking_url, params=hit(**order), timeout=TIMEOUT).status_code == 204
    assert http.get(matomo.tracking_url, params=hit(**{**order, "idsite": 2}), timeout=TIMEOUT).status_code == 204
    assert matomo.actions_by_type(1) == {"ecommerce_order": 1}
    assert matomo.actions_by_type(2) == {"ecommerce_order": 1}
    assert matomo.stats()["excluded_by_reason"] == {"ec_id_repeat": 1}


def test_tracking_disabled_answers_503(http):
    with make_matomo() as matomo:
        response = http.get(matomo.tracking_url, params=hit(idsite=3), timeout=TIMEOUT)
        assert response.status_code == 503
        response = bulk(http, matomo, [query(hit(idsite=3)), query(hit())])
        assert response.json() == {"status": "success", "tracked": 2, "invalid": 0}
        assert matomo.stats()["excluded_by_reason"] == {"record_statistics": 1}
    with make_matomo(record_statistics=False) as matomo:
        assert http.get(matomo.tracking_url, params=hit(), timeout=TIMEOUT).status_code == 503
        response = bulk(http, matomo, [query(hit())])
        assert (response.status_code, response.json()) == (200, {"status": "success", "tracked": 0, "invalid": 0})
        assert matomo.stats()["recorded"] == 0


def test_a_backdated_single_hit_fails_with_500_and_is_not_recorded(matomo, http):
    later, earlier = days_ago(2), days_ago(2.1)
    assert http.post(matomo.tracking_url, data=hit(cdt=later, token_auth=WRITE), timeout=TIMEOUT).status_code == 204
    response = http.post(matomo.tracking_url, data=hit(cdt=earlier, token_auth=WRITE), timeout=TIMEOUT)
    assert response.status_code == 500
    assert "SQLSTATE" in response.text
    # Another visitor may still use that time, and the same visitor may use an equal one.
    other = hit(cdt=earlier, token_auth=WRITE, cid="1111111111111111")
    assert http.post(matomo.tracking_url, data=other, timeout=TIMEOUT).status_code == 204
    assert http.post(matomo.tracking_url, data=hit(cdt=later, token_auth=WRITE), timeout=TIMEOUT).status_code == 204
    stats = matomo.stats()
    assert (stats["recorded"], stats["backdated"], stats["rejected_by_status"]) == (3, 1, {"500": 1})


def test_duplicates_are_counted(matomo, http):
    when = days_ago(0.5)
    for _ in range(2):
        http.get(matomo.tracking_url, params=hit(cdt=when, pv_id="a1b2c3", rand=time.time()), timeout=TIMEOUT)
    http.get(matomo.tracking_url, params=hit(cdt=when, pv_id="a1b2c3", e_c="Video", e_a="Play"), timeout=TIMEOUT)
    stats = matomo.stats(detail=True)
    assert stats["duplicates"] == 1
    assert stats["hits_by_pv_id"] == {"a1b2c3": 3}
    assert stats["hits_by_visitor"] == {CID: 3}


# -- bulk -----------------------------------------------------------------------------------------


def test_bulk_counts_tracked_and_invalid_like_matomo(matomo, http):
    entries = [
        query(hit(action_name="ok")),  # 0
        query(hit(idsite=99)),  # 1 invalid
        "idsite=1&rec=1&cid=0123456789abcdef",  # dropped: no "?"
        {"idsite": 1, "rec": 1, "cid": CID, "url": "https://shop.example.com/d", "action_name": "dict"},  # 2
        query(hit(cid="short")),  # 3 invalid
        query(hit(ua="bingbot/2.0")),  # 4 excluded, still "tracked"
        query(hit(rec=None)),  # 5 excluded
        query(hit(cip="203.0.113.9")),  # 6 invalid: no token
        "matomo.php?" + query(hit(action_name="path"))[1:],  # 7: Matomo takes any URL with a query
        {},  # 8: an empty request is counted as tracked
        query(hit(queuedtracking=0, action_name="queued")),  # 9
    ]
    response = bulk(http, matomo, entries)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"status": "success", "tracked": 7, "invalid": 3}
    assert [h.params["action_name"] for h in matomo.hits_for(1)] == ["ok", "dict", "path", "queued"]
    assert all(h.bulk for h in matomo.hits_for(1))
    stats = matomo.stats()
    assert stats["dropped_bulk_entries"] == 1
    assert stats["bulk_requests"] == 1
    # A super user's token adds the indices (counted among the entries that were kept).
    response = bulk(http, matomo, entries, token=SUPER)
    assert response.json() == {"status": "success", "tracked": 8, "invalid": 2, "invalid_indices": [1, 3]}


def test_bulk_with_a_secure_only_token_in_the_json_body_tracks_nothing_that_needs_it(http):
    entries = [query(hit(cip=f"203.0.113.{i}", cid=f"{i:016x}")) for i in range(1, 4)]
    with make_matomo() as matomo:
        assert bulk(http, matomo, entries, token=SECURE).json() == {"status": "success", "tracked": 0, "invalid": 3}
        assert bulk(http, matomo, entries, token=WRITE).json() == {"status": "success", "tracked": 3, "invalid": 0}
        assert matomo.stats()["recorded"] == 3
    with make_matomo(modern_auth=True) as matomo:  # Matomo with PR #23335
        assert bulk(http, matomo, entries, token=SECURE).json() == {"status": "success", "tracked": 3, "invalid": 0}


def test_modern_auth_accepts_a_bearer_header(http):
    bearer = {"Authorization": f"Bearer {SECURE}"}
    with make_matomo(modern_auth=True) as matomo:
        response = http.get(matomo.tracking_url, params=hit(cip="203.0.113.1"), headers=bearer, timeout=TIMEOUT)
        assert response.status_code == 204
        response = http.post(
            matomo.api_url, params={"module": "API", "method": "API.getMatomoVersion"}, headers=bearer, timeout=TIMEOUT
        )
        assert response.json() == {"value": "5.3.0"}
    with make_matomo() as matomo:  # Matomo 5.3 ignores the header
        response = http.get(matomo.tracking_url, params=hit(cip="203.0.113.1"), headers=bearer, timeout=TIMEOUT)
        assert response.status_code == 400


def test_a_token_inside_a_bulk_entry_is_used_and_counted(matomo, http):
    response = bulk(http, matomo, [query(hit(cip="203.0.113.1", token_auth=WRITE))])
    assert response.json() == {"status": "success", "tracked": 1, "invalid": 0}
    stats = matomo.stats()
    assert (stats["token_in_bulk_entry"], stats["token_in_url"]) == (1, 0)


def test_a_backdated_hit_fails_the_whole_bulk_batch(matomo, http):
    first = [query(hit(cdt=days_ago(1), cid="aaaaaaaaaaaaaaaa", action_name="kept"))]
    assert bulk(http, matomo, first, token=WRITE).status_code == 200
    batch = [
        query(hit(cdt=days_ago(0.9), cid="bbbbbbbbbbbbbbbb", action_name="lost 1")),
        query(hit(cdt=days_ago(0.9), cid="aaaaaaaaaaaaaaaa", action_name="lost 2")),
        query(hit(idsite=99)),
        query(hit(cdt=days_ago(1.5), cid="aaaaaaaaaaaaaaaa", action_name="backdated")),
        query(hit(cdt=days_ago(0.8), cid="cccccccccccccccc", action_name="lost 3")),
    ]
    response = bulk(http, matomo, batch, token=SUPER)
    assert response.status_code == 500
    assert response.json() == {"status": "error", "tracked": 2, "invalid": 1, "invalid_indices": [2]}
    assert [h.params["action_name"] for h in matomo.hits_for(1)] == ["kept"]
    stats = matomo.stats()
    assert (stats["rolled_back"], stats["rolled_back_batches"], stats["backdated"]) == (4, 1, 1)
    # Resent without the culprit, the batch goes through whole.
    del batch[3]
    assert bulk(http, matomo, batch, token=SUPER).json()["tracked"] == 3
    assert len(matomo.hits_for(1)) == 4


def test_hits_of_one_visitor_out_of_order_inside_a_batch_fail_it(matomo, http):
    batch = [query(hit(cdt=days_ago(0.5))), query(hit(cdt=days_ago(0.6)))]
    assert bulk(http, matomo, batch, token=WRITE).status_code == 500
    assert matomo.stats()["recorded"] == 0


def test_bulk_with_send_image_0_answers_204(matomo, http):
    response = bulk(http, matomo, [query(hit())], send_image=0)
    assert response.status_code == 204
    assert matomo.stats()["recorded"] == 1


def test_an_unreadable_bulk_body_tracks_nothing(matomo, http):
    response = http.post(
        matomo.tracking_url, data=b'{"requests": [oops', timeout=TIMEOUT, headers={"Content-Type": "application/json"}
    )
    assert response.json() == {"status": "success", "tracked": 0, "invalid": 0}


# -- faults ---------------------------------------------------------------------------------------


def test_fail_next_answers_the_status_with_retry_after_then_recovers(matomo, http):
    matomo.fail_next(2, status=429, retry_after=7)
    responses = [http.get(matomo.tracking_url, params=hit(action_name=str(i)), timeout=TIMEOUT) for i in range(3)]
    assert [r.status_code for r in responses] == [429, 429, 204]
    assert responses[0].headers["Retry-After"] == "7"
    assert [h.params["action_name"] for h in matomo.hits_for(1)] == ["2"]
    stats = matomo.stats()
    assert stats["rejected_by_status"] == {"429": 2}
    assert stats["faults_fired"] == {"status": 2}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_bulk_fault_rolls_back_the_whole_batch_and_spares_single_hits(matomo, http, status):
    matomo.fail_next(1, status=status, target="bulk")
    assert http.get(matomo.tracking_url, params=hit(action_name="single"), timeout=TIMEOUT).status_code == 204
    response = bulk(http, matomo, [query(hit(action_name=f"b{i}")) for i in range(5)])
    assert response.status_code == status
    assert [h.params["action_name"] for h in matomo.hits_for(1)] == ["single"]
    assert bulk(http, matomo, [query(hit(action_name="again"))]).status_code == 200


def test_hang_makes_the_client_time_out_and_the_hit_lands_later(matomo, http):
    matomo.hang_next(1, seconds=0.6)
    with pytest.raises(requests.Timeout):  # the client gave up before the answer came
        http.get(matomo.tracking_url, params=hit(), timeout=0.2)
    wait_until(lambda: matomo.stats()["recorded"] == 1, what="the slow request to be recorded")
    assert matomo.stats()["recorded"] == 1  # a slow Matomo still records what it got


def test_reset_drops_the_connection_with_or_without_recording(matomo, http):
    matomo.reset_next(1)
    with pytest.raises(requests.ConnectionError):
        http.get(matomo.tracking_url, params=hit(action_name="lost"), timeout=TIMEOUT)
    matomo.reset_next(1, processed=True)
    with pytest.raises(requests.ConnectionError):
        http.get(matomo.tracking_url, params=hit(action_name="answer lost"), timeout=TIMEOUT)
    assert http.get(matomo.tracking_url, params=hit(action_name="fine"), timeout=TIMEOUT).status_code == 204
    assert [h.params["action_name"] for h in matomo.hits_for(1)] == ["answer lost", "fine"]
    assert matomo.stats()["faults_fired"] == {"reset": 2}


def test_random_faults_are_reproducible_with_a_seed(http):
    patterns = []
    for _ in range(2):
        with make_matomo() as matomo:
            matomo.add_fault(Fault(status=503, count=None, probability=0.3, seed=42))
            patterns.append(
                [http.get(matomo.tracking_url, params=hit(), timeout=TIMEOUT).status_code for _ in range(30)]
            )
    assert patterns[0] == patterns[1]
    assert 3 <= patterns[0].count(503) <= 18


def test_latency_slows_every_request(matomo, http):
    matomo.set_latency(0.3)
    started = time.monotonic()
    http.get(matomo.tracking_url, params=hit(), timeout=TIMEOUT)
    slow = time.monotonic() - started
    assert slow >= 0.3
    matomo.clear_faults()
    started = time.monotonic()
    http.get(matomo.tracking_url, params=hit(action_name="fast"), timeout=TIMEOUT)
    assert time.monotonic() - started < slow  # relative, so a busy CI machine cannot flip it


def test_api_faults_do_not_touch_tracking(matomo, http):
    matomo.fail_next(1, status=502, target="api")
    assert http.get(matomo.tracking_url, params=hit(), timeout=TIMEOUT).status_code == 204
    response = http.post(
        matomo.api_url,
        params={"module": "API", "method": "API.getMatomoVersion", "format": "json"},
        data={"token_auth": SUPER},
        timeout=TIMEOUT,
    )
    assert response.status_code == 502


def test_bad_fault_specs_are_refused():
    with pytest.raises(ValueError):
        Fault(kind="explode")
    with pytest.raises(ValueError):
        Fault(status=302)
    with pytest.raises(ValueError):
        Fault(target="everything")
    with pytest.raises(ValueError):
        Fault(probability=1.5)


# -- visits ---------------------------------------------------------------------------------------


def send_visit_hits(http, matomo, times, *, cid=CID, site=1, **extra):
    entries = [query(hit(idsite=site, cid=cid, cdt=int(t), action_name=f"p{i}", **extra)) for i, t in enumerate(times)]
    response = bulk(http, matomo, entries, token=SUPER)
    assert response.json()["invalid"] == 0, response.text


def test_a_visit_ends_after_30_minutes_without_actions(matomo, http):
    start = morning_days_ago(2)
    send_visit_hits(http, matomo, [start, start + 600, start + 600 + 1799, start + 600 + 1799 + 1801])
    visits = matomo.visits(1)
    assert [len(v.hits) for v in visits] == [3, 1]


def test_a_visit_is_split_at_midnight_in_the_site_time_zone(http):
    # 22:50 and 23:10 UTC on a winter day: 23:50 and 00:10 in Stockholm, one day in UTC.
    day = datetime(2026, 1, 15, 22, 50, tzinfo=UTC).timestamp()
    fixed_now = day + 3600
    with make_matomo(clock=lambda: fixed_now, sites=[Site(1, timezone="Europe/Stockholm"), Site(2)]) as matomo:
        send_visit_hits(http, matomo, [day, day + 1200], site=1)
        send_visit_hits(http, matomo, [day, day + 1200], site=2)
        assert [len(v.hits) for v in matomo.visits(1)] == [1, 1]
        assert [len(v.hits) for v in matomo.visits(2)] == [2]


def test_new_visit_and_campaign_changes_start_new_visits(matomo, http):
    start = morning_days_ago(1)
    entries = [
        query(hit(cdt=start, url="https://shop.example.com/?mtm_campaign=Spring&mtm_kwd=shoes")),
        query(hit(cdt=start + 60, url="https://shop.example.com/next")),  # no campaign: same visit
        query(hit(cdt=start + 120, url="https://shop.example.com/?utm_campaign=spring&utm_term=SHOES")),  # same
        query(hit(cdt=start + 180, url="https://shop.example.com/?pk_campaign=Summer")),  # new visit
        query(hit(cdt=start + 240, new_visit=1)),  # new visit
        query(hit(cdt=start + 300, ping=1)),  # extends the visit
    ]
    assert bulk(http, matomo, entries, token=WRITE).json()["invalid"] == 0
    visits = matomo.visits(1)
    assert [len(v.hits) for v in visits] == [3, 1, 2]
    assert visits[0].campaign == ("spring", "shoes")
    assert visits[1].campaign == ("summer", "")
    assert [len(v.actions) for v in visits] == [3, 1, 1]


def test_a_ping_never_starts_a_visit(matomo, http):
    start = morning_days_ago(1)
    send_visit_hits(http, matomo, [start])
    bulk(http, matomo, [query(hit(cdt=start + 3600, ping=1))], token=WRITE)
    assert [len(v.hits) for v in matomo.visits(1)] == [1]


def test_n_visits_sent_are_n_visits_recorded(matomo, http):
    """Visits of 20 returning visitors over three days, sent in bulk, oldest first."""
    # 06:00 in the site's time zone, five days ago: the visits (up to 4 h 3 min later)
    # never cross the site's midnight, where Matomo would split them, whatever the hour
    # the test runs at (from days_ago() alone it failed when run near 22:00 or 24:00 there).
    local = datetime.fromtimestamp(days_ago(5), ZoneInfo("Europe/Stockholm"))
    base = int(local.replace(hour=6, minute=0, second=0, microsecond=0).timestamp())
    sent = 0
    entries = []
    for visitor in range(20):
        cid = f"{visitor + 1:016x}"
        for day in range(3):
            for visit in range(visitor % 3 + 1):
                start = base + day * 86400 + visit * 7200 + visitor
                entries.extend(query(hit(cid=cid, cdt=start + 40 * n, action_name=f"p{n}")) for n in range(4))
                sent += 1
    entries.sort(key=lambda e: int(e.split("cdt=")[1].split("&")[0]))
    for i in range(0, len(entries), 200):
        assert bulk(http, matomo, entries[i : i + 200], token=SUPER).json()["invalid"] == 0
    visits = matomo.visits(1)
    assert len(visits) == sent == 117
    assert {len(v.hits) for v in visits} == {4}
    assert len(matomo.visitors(1)) == 20
    assert matomo.actions_by_type(1) == {"pageview": 468}


def test_actions_by_type_names_every_kind(matomo, http):
    kinds = [
        {},
        {"search": "shoes", "search_count": 0, "url": None},
        {"link": "https://other.example", "url": None},
        {"download": "https://shop.example.com/a.pdf"},
        {"e_c": "Video", "e_a": "Play"},
        {"c_n": "Banner", "url": None, "action_name": None},
        {"c_n": "Banner", "c_i": "click"},
        {"idgoal": 3, "revenue": 5},
        {"idgoal": 0, "ec_id": "o-1"},
        {"idgoal": 0},
        {"ping": 1},
    ]
    for extra in kinds:
        http.get(matomo.tracking_url, params=hit(**extra), timeout=TIMEOUT)
    assert matomo.actions_by_type(1) == {
        "pageview": 1,
        "site_search": 1,
        "outlink": 1,
        "download": 1,
        "event": 1,
        "content_impression": 1,
        "content_interaction": 1,
        "goal": 1,
        "ecommerce_order": 1,
        "ecommerce_cart": 1,
        "ping": 1,
    }


# -- Reporting API --------------------------------------------------------------------------------


def api(http, matomo, method, token=None, *, in_url=False, **params):
    query_params = {"module": "API", "method": method, "format": "json", **params}
    if token and in_url:
        query_params["token_auth"] = token
        return http.get(matomo.api_url, params=query_params, timeout=TIMEOUT)
    return http.post(matomo.api_url, params=query_params, data={"token_auth": token} if token else {}, timeout=TIMEOUT)


def test_api_version_needs_some_view_access(matomo, http):
    response = api(http, matomo, "API.getMatomoVersion")
    assert response.status_code == 401
    assert response.json() == {
        "result": "error",
        "message": "You can't access this resource as it requires view access for at least one website.",
    }
    assert api(http, matomo, "API.getMatomoVersion", VIEW).json() == {"value": "5.3.0"}
    with make_matomo(version="5.4.1") as other:
        assert api(http, other, "API.getMatomoVersion", SUPER).json() == {"value": "5.4.1"}


def test_api_token_rules_follow_matomo_5(matomo, http):
    response = api(http, matomo, "API.getMatomoVersion", "unknown-token")
    assert response.status_code == 401
    assert response.json()["message"] == (
        "Unable to authenticate with the provided token. It is either invalid or expired."
    )
    response = api(http, matomo, "API.getMatomoVersion", SECURE, in_url=True)
    assert response.status_code == 401
    assert response.json()["message"].endswith("is required to be sent as a POST parameter.")
    assert api(http, matomo, "API.getMatomoVersion", WRITE, in_url=True).json() == {"value": "5.3.0"}
    assert api(http, matomo, "API.getMatomoVersion", SECURE).json() == {"value": "5.3.0"}
    assert matomo.stats()["token_in_url"] == 2
    assert all("token_auth" not in call["params"] for call in matomo.api_calls)


def test_get_site_from_id_returns_matomos_site_dict_or_access_errors(matomo, http):
    site = api(http, matomo, "SitesManager.getSiteFromId", WRITE, idSite=1).json()
    assert site["idsite"] == 1
    assert (site["name"], site["main_url"], site["timezone"], site["currency"], site["ecommerce"]) == (
        "Shop",
        "https://shop.example.com",
        "Europe/Stockholm",
        "SEK",
        1,
    )
    assert "ts_created" in site and "creator_login" not in site
    assert "creator_login" in api(http, matomo, "SitesManager.getSiteFromId", SUPER, idSite=1).json()
    response = api(http, matomo, "SitesManager.getSiteFromId", WRITE, idSite=2)
    assert response.status_code == 401
    assert response.json()["message"] == (
        "You can't access this resource as it requires 'view' access for the website id = 2."
    )
    response = api(http, matomo, "SitesManager.getSiteFromId", idSite=1)  # anonymous
    assert response.json()["message"].endswith("'view' access for the website id = 1.")
    response = api(http, matomo, "SitesManager.getSiteFromId", SUPER, idSite=42)
    assert "unexpected website" in response.json()["message"]
    response = api(http, matomo, "SitesManager.getSiteFromId", SUPER)
    assert response.json()["message"] == "Please specify a value for 'idSite'."


@pytest.mark.parametrize(
    ("token", "superuser", "admin", "write", "view", "at_least_view"),
    [
        (SUPER, True, [1, 2, 3], [], [], [1, 2, 3]),
        (WRITE, False, [], [1], [], [1]),
        (ADMIN, False, [2], [], [], [2]),
        (VIEW, False, [], [], [1], [1]),
        (None, False, [], [], [], []),
    ],
)
def test_access_lists_tell_whether_a_token_may_write(matomo, http, token, superuser, admin, write, view, at_least_view):
    def value(method):
        data = api(http, matomo, method, token).json()
        return data["value"] if isinstance(data, dict) and "value" in data else data

    assert value("UsersManager.hasSuperUserAccess") is superuser
    assert value("SitesManager.getSitesIdWithAdminAccess") == admin
    assert value("SitesManager.getSitesIdWithWriteAccess") == write
    assert value("SitesManager.getSitesIdWithViewAccess") == view
    assert value("SitesManager.getSitesIdWithAtLeastViewAccess") == at_least_view
    assert [s["idsite"] for s in value("SitesManager.getSitesWithAtLeastViewAccess")] == at_least_view


def test_users_access_list_needs_a_super_user(matomo, http):
    response = api(http, matomo, "UsersManager.getSitesAccessFromUser", WRITE, userLogin="writer")
    assert (response.status_code, response.json()["message"]) == (
        401,
        "You can't access this resource as it requires a 'superuser' access.",
    )
    response = api(http, matomo, "UsersManager.getSitesAccessFromUser", SUPER, userLogin="writer")
    assert response.json() == [{"site": 1, "access": "write"}]


def test_invalidate_archived_reports_needs_admin_and_is_recorded(matomo, http):
    response = api(
        http,
        matomo,
        "CoreAdminHome.invalidateArchivedReports",
        ADMIN,
        idSites="2",
        dates="2026-01-14,2026-01-15,notadate",
        period="day",
    )
    assert response.json() == [
        "Warning: some of the Dates to invalidate were invalid: notadate. Matomo simply ignored those and proceeded "
        "with the others.",
        "Success. The following dates were invalidated successfully: 2026-01-14, 2026-01-15",
    ]
    response = api(http, matomo, "CoreAdminHome.invalidateArchivedReports", WRITE, idSites="1", dates="2026-01-14")
    assert response.status_code == 401
    assert "'admin' access for the website id = 1" in response.json()["message"]
    [call] = matomo.invalidations
    assert (call["site_ids"], call["dates"], call["period"], call["login"]) == (
        [2],
        ["2026-01-14", "2026-01-15"],
        "day",
        "boss",
    )


def test_unknown_api_methods_and_plugins_answer_matomo_errors(matomo, http):
    response = api(http, matomo, "SitesManager.getNothing", SUPER)
    assert response.status_code == 200
    assert response.json() == {
        "result": "error",
        "message": "The method 'getNothing' does not exist or is not available in the module "
        "'\\Piwik\\Plugins\\SitesManager\\API'.",
    }
    message = api(http, matomo, "Nope.get", SUPER).json()["message"]
    assert (
        message == "The plugin Nope is not enabled. You can activate the plugin on Settings > Plugins page in Matomo."
    )
    page = http.get(matomo.api_url, timeout=TIMEOUT)
    assert page.status_code == 200 and "Matomo" in page.text


def test_visits_summary_counts_recorded_visits_by_site_day(http):
    noon = datetime(2026, 3, 10, 11, 0, tzinfo=UTC).timestamp()
    with make_matomo(clock=lambda: noon + 7200) as matomo:
        send_visit_hits(http, matomo, [noon, noon + 60, noon + 4000])
        send_visit_hits(http, matomo, [noon + 10], cid="2222222222222222")
        summary = api(http, matomo, "VisitsSummary.get", VIEW, idSite=1, period="day", date="2026-03-10").json()
        assert (summary["nb_visits"], summary["nb_actions"], summary["nb_uniq_visitors"]) == (3, 4, 2)
        assert summary["bounce_count"] == 2
        assert api(http, matomo, "VisitsSummary.get", VIEW, idSite=1, period="day", date="yesterday").json() == []


# -- harness --------------------------------------------------------------------------------------


def test_count_only_mode_keeps_counters_but_no_hits(http):
    with make_matomo(keep_hits=False) as matomo:
        bulk(http, matomo, [query(hit(cid=f"{i:016x}")) for i in range(50)])
        assert matomo.stats()["recorded"] == 50
        assert matomo.stats()["visitors"] == 50
        with pytest.raises(RuntimeError):
            matomo.hits_for(1)
        assert http.get(matomo.url + "_fake/hits", timeout=TIMEOUT).status_code == 409


def test_count_only_memory_is_bounded_by_forgetting_the_oldest_visitors(http):
    with make_matomo(keep_hits=False, key_limit=40) as matomo:
        for start in range(0, 100, 25):
            bulk(http, matomo, [query(hit(cid=f"{i:016x}")) for i in range(start, start + 25)])
        stats = matomo.stats()
        assert stats["recorded"] == 100
        assert stats["visitors"] <= 40 and stats["forgotten_keys"] > 0


def test_reset_forgets_hits_counters_and_faults(matomo, http):
    http.get(matomo.tracking_url, params=hit(), timeout=TIMEOUT)
    matomo.fail_next(5)
    matomo.reset()
    assert matomo.stats()["recorded"] == 0 and matomo.faults == []
    assert http.get(matomo.tracking_url, params=hit(), timeout=TIMEOUT).status_code == 204


def test_concurrent_clients_are_served_without_errors(matomo):
    def send(worker):
        with requests.Session() as session:
            return [
                session.get(matomo.tracking_url, params=hit(cid=f"{worker:08x}{n:08x}"), timeout=TIMEOUT).status_code
                for n in range(40)
            ]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for result in pool.map(send, range(8)) for s in result]
    assert statuses == [204] * 320
    assert matomo.stats()["recorded"] == 320


def test_concurrent_hits_of_one_visitor_without_cdt_are_never_backdated(matomo):
    def send(worker):
        with requests.Session() as session:
            return [
                session.get(matomo.tracking_url, params=hit(action_name=f"{worker}-{n}"), timeout=TIMEOUT).status_code
                for n in range(25)
            ]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for result in pool.map(send, range(8)) for s in result]
    assert statuses == [204] * 200
    assert matomo.stats()["backdated"] == 0


def test_fixed_port_and_context_manager(http):
    with make_matomo() as first:
        port = first.port
    with make_matomo(port=port) as second:
        assert second.url == f"http://127.0.0.1:{port}/"
        assert http.get(second.tracking_url, timeout=TIMEOUT).ok
    with pytest.raises(requests.ConnectionError):
        http.get(second.tracking_url, timeout=1)


def test_control_endpoints_in_process(matomo, http):
    control = matomo.url + "_fake/"
    response = http.post(control + "faults", json={"kind": "status", "status": 504, "count": 1}, timeout=TIMEOUT)
    assert response.json()["rules"][0]["status"] == 504
    assert http.get(matomo.tracking_url, params=hit(), timeout=TIMEOUT).status_code == 504
    http.post(
        control + "faults",
        json={"clear": True, "latency": 0.01, "add": [{"kind": "reset", "target": "bulk"}]},
        timeout=TIMEOUT,
    )
    assert [f.kind for f in matomo.faults] == ["reset"]
    assert http.delete(control + "faults", timeout=TIMEOUT).json()["rules"] == []
    assert http.post(control + "faults", json={"kind": "boom"}, timeout=TIMEOUT).status_code == 400
    http.get(matomo.tracking_url, params=hit(), timeout=TIMEOUT)
    assert http.get(control + "hits?idsite=1", timeout=TIMEOUT).json()["count"] == 1
    assert http.get(control + "visits?idsite=1", timeout=TIMEOUT).json()["count"] == 1
    assert http.get(control + "actions", timeout=TIMEOUT).json() == {"pageview": 1}
    assert http.get(control + "nothing", timeout=TIMEOUT).status_code == 404


def test_parse_cdt_matches_matomo():
    now = 1_800_000_000.0
    assert parse_cdt("1799990000", now) == 1799990000.0
    assert parse_cdt("1799990000.7", now) == 1799990000.0
    assert parse_cdt("2027-01-15 08:00:00", now) == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    assert parse_cdt("yesterday-ish", now) is None
    assert parse_cdt(str(int(now + 10)), now) is None
    assert parse_cdt("1000", now) is None  # older than 20 years: Matomo ignores it


# -- separate process -----------------------------------------------------------------------------


def start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "targets.fake_matomo", "--port", "0", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    url = process.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), process.stderr.read()
    return process, url


def stop_cli(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def test_the_command_line_server_is_driven_through_control_endpoints(http, tmp_path):
    config = tmp_path / "fake.json"
    config.write_text(json.dumps({"sites": [{"id": 7, "name": "Seven", "timezone": "Asia/Tokyo"}]}))
    process, url = start_cli("--config", str(config), "--token", f"{WRITE}:write=7:secure", "--retention-days", "90")
    try:
        tracking = url + "matomo.php"
        assert http.get(url + "_fake/health", timeout=TIMEOUT).json()["ok"] is True
        assert http.post(tracking, data=hit(idsite=7, cip="203.0.113.5", token_auth=WRITE), timeout=TIMEOUT).ok
        assert (
            http.get(tracking, params=hit(idsite=7, cip="203.0.113.5", token_auth=WRITE), timeout=TIMEOUT).status_code
            == 400
        )
        http.post(
            url + "_fake/faults", json={"kind": "status", "status": 503, "retry_after": 2, "count": 1}, timeout=TIMEOUT
        )
        response = http.get(tracking, params=hit(idsite=7), timeout=TIMEOUT)
        assert (response.status_code, response.headers["Retry-After"]) == (503, "2")
        stats = http.get(url + "_fake/stats", timeout=TIMEOUT).json()
        assert (stats["recorded"], stats["token_in_url"], stats["rejected_by_status"]) == (1, 1, {"400": 1, "503": 1})
        site = http.post(
            url + "index.php",
            params={"module": "API", "method": "SitesManager.getSiteFromId", "idSite": 7, "format": "json"},
            data={"token_auth": WRITE},
            timeout=TIMEOUT,
        ).json()
        assert (site["name"], site["timezone"]) == ("Seven", "Asia/Tokyo")
        assert http.post(url + "_fake/reset", timeout=TIMEOUT).json() == {"ok": True}
        assert http.get(url + "_fake/stats", timeout=TIMEOUT).json()["requests"] == 0
    finally:
        stop_cli(process)
    assert process.returncode == 0


def test_worker_processes_share_the_port_counters_and_fault_budgets(http):
    process, url = start_cli("--workers", "2", "--count-only", "--token", SUPER)
    try:
        tracking = url + "matomo.php"
        http.post(url + "_fake/faults", json={"kind": "status", "status": 503, "count": 3}, timeout=TIMEOUT)
        statuses = []
        for n in range(12):
            with requests.Session() as fresh:  # a new connection each time, spread over the workers
                statuses.append(fresh.get(tracking, params=hit(cid=f"{n:016x}"), timeout=TIMEOUT).status_code)
        assert statuses.count(503) == 3 and statuses.count(204) == 9
        stats = http.get(url + "_fake/stats", timeout=TIMEOUT).json()
        assert (stats["requests"], stats["recorded"], stats["rejected_by_status"]) == (12, 9, {"503": 3})
        assert http.get(url + "_fake/health", timeout=TIMEOUT).json()["workers"] == 2
        assert http.post(url + "_fake/reset", timeout=TIMEOUT).json() == {"ok": True}
        assert http.get(url + "_fake/stats", timeout=TIMEOUT).json()["requests"] == 0
    finally:
        stop_cli(process)
    assert process.returncode == 0


# -- capacity mode and the "500 but stored" fault --------------------------------------------------


def test_capacity_mode_serves_at_most_its_workers_at_once_for_a_time_per_hit(http):
    with make_matomo(capacity=2, service_time_per_hit=0.02) as matomo:
        entries = [query(hit(cid=f"{n:016x}", rand=n)) for n in range(5)]  # 5 hits: 0.1 s of a worker each
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: bulk(http, matomo, entries).status_code, range(4)))
        elapsed = time.monotonic() - started
        assert statuses == [200] * 4
        # Four requests of 0.1 s on two workers take two rounds; on four they would take one.
        assert elapsed >= 0.2
        assert matomo.stats()["recorded"] == 20


def test_a_bulk_request_that_starts_a_site_day_is_stored_and_answered_500(matomo, http):
    matomo.add_fault(kind="stored_500", target="bulk", count=1)
    yesterday = int(time.time()) - 86400
    first = [query(hit(cid=f"{n:016x}", cdt=yesterday + n)) for n in range(3)]
    response = bulk(http, matomo, first, token=SUPER)
    assert response.status_code == 500
    # Matomo's BulkTracking answer after the failed commit: every entry was processed.
    assert response.json() == {"status": "error", "tracked": 3, "invalid": 0}
    assert matomo.stats()["recorded"] == 3
    # The site-day has begun: the next request of the same day is not a starter.
    matomo.add_fault(kind="stored_500", target="bulk", count=1)
    later = [query(hit(cid="00000000000000ff", cdt=yesterday + 10))]
    assert bulk(http, matomo, later, token=SUPER).status_code == 200
    assert matomo.stats()["faults_fired"] == {"stored_500": 1}


def test_the_contended_site_day_fault_fires_only_for_concurrent_starters(http):
    with make_matomo(capacity=4, service_time_per_request=0.3) as matomo:
        matomo.add_fault(kind="stored_500", target="bulk", count=None, contended=True)
        day = int(time.time()) - 86400
        alone = bulk(http, matomo, [query(hit(cid="000000000000000a", cdt=day))], token=SUPER)
        assert alone.status_code == 200  # one starter at a time: no deadlock
        two_days_ago = day - 86400
        entries = [[query(hit(cid=f"{n:016x}", cdt=two_days_ago + n))] for n in range(1, 3)]
        with ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(lambda e: bulk(http, matomo, e, token=SUPER).status_code, entries))
        assert statuses == [200, 500]
        assert matomo.stats()["recorded"] == 3  # the 500 was stored too


def test_the_command_line_turns_on_capacity_mode_in_milliseconds():
    from targets.fake_matomo.__main__ import build_parser, make_kwargs

    kwargs = make_kwargs(build_parser().parse_args(["--capacity", "4", "--hit-ms", "1.5", "--request-ms", "20"]))
    assert (kwargs["capacity"], kwargs["service_time_per_hit"], kwargs["service_time_per_request"]) == (4, 0.0015, 0.02)
    assert "capacity" not in make_kwargs(build_parser().parse_args([]))
    with pytest.raises(SystemExit):
        make_kwargs(build_parser().parse_args(["--capacity", "0"]))


def test_live_get_last_visits_details_lists_a_visitors_visits_like_matomo_5(matomo, http):
    start = days_ago(0.2)
    other = "00000000000000aa"
    entries = [
        query(hit(cdt=start, action_name="Home")),
        query(hit(cdt=start + 30, action_name="Shop", url="https://shop.example.com/shop")),
        query(hit(cdt=start + 7200, action_name="Back")),  # a second visit, two hours later
        query(hit(cdt=start + 5, cid=other)),
    ]
    assert bulk(http, matomo, entries, WRITE).json()["tracked"] == 4
    day = matomo.sites[1].local_date(start + 7200).isoformat()
    first_day = matomo.sites[1].local_date(start).isoformat()
    params = {"idSite": 1, "period": "range", "date": f"{first_day},{day}", "filter_limit": -1}

    visits = api(http, matomo, "Live.getLastVisitsDetails", VIEW, segment=f"visitorId=={CID}", **params).json()
    assert [visit["visitorId"] for visit in visits] == [CID, CID]  # most recent first
    assert [len(visit["actionDetails"]) for visit in visits] == [1, 2]
    assert [a["timestamp"] for a in visits[1]["actionDetails"]] == [start, start + 30]
    assert visits[1]["actionDetails"][1]["type"] == "action" and visits[1]["actionDetails"][1]["pageTitle"] == "Shop"
    assert visits[1]["firstActionTimestamp"] == start and visits[1]["lastActionTimestamp"] == start + 30
    both = api(
        http, matomo, "Live.getLastVisitsDetails", VIEW, segment=f"visitorId=={CID},visitorId=={other}", **params
    )
    assert sorted(visit["visitorId"] for visit in both.json()) == sorted([CID, CID, other])
    assert len(api(http, matomo, "Live.getLastVisitsDetails", VIEW, idSite=1, period="day", date=day).json()) <= 3
    # Access and bad input answer as Matomo does.
    assert api(http, matomo, "Live.getLastVisitsDetails", segment=f"visitorId=={CID}", **params).status_code == 401
    bad = api(http, matomo, "Live.getLastVisitsDetails", VIEW, segment="visitorId==nothex", **params).json()
    assert bad["result"] == "error"
