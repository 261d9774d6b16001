"""Every generated hit is valid; streams are reproducible; encoding is faithful."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from itertools import islice
from urllib.parse import parse_qsl

import pytest

from trafficinator.traffic import (
    Catalog,
    Profile,
    SiteGoals,
    encode_params,
    encode_visit,
    live_visits,
    validate_visit,
)
from trafficinator.traffic.rules import bot_word_in, is_bot_ip

from .conftest import DAY, make_day, make_profile

TOKEN_ONLY = ("cip", "country", "region", "city", "lat", "long")


def test_every_hit_of_twelve_thousand_visits_is_valid(sample):
    problems = Counter()
    for visit in sample:
        for problem in validate_visit(visit, token_present=False):
            problems[problem.split(": ", 1)[-1]] += 1
    assert not problems, problems.most_common(10)


def test_every_hit_is_valid_with_a_token_and_random_countries(token_sample):
    problems = [p for v in token_sample for p in validate_visit(v, token_present=True)]
    assert problems == []


def test_hits_leave_the_generator_encoded_exactly_as_their_params(sample, token_sample):
    """The generator encodes each hit from fragments (Hit.query, Visit.query): always the
    same text as encoding its params, also after goals it converts or leaves out, for
    campaigns and for logged-in visitors."""
    from .test_funnels import FUNNELS

    goals = SiteGoals({2: "Contact form sent"}, Catalog.load_default())
    profile = make_profile(ecommerce_probability=0.2, campaign_param_style="utm", page_performance=False)
    other = make_day(profile, count=1500, seed=5, funnels=FUNNELS, goals=goals)
    for visit in [*sample, *token_sample, *other]:
        assert visit.query == encode_params(visit.params)
        assert [hit.query for hit in visit.hits] == [encode_params(hit.params) for hit in visit.hits]


def test_hits_carry_cip_only_with_a_token_and_random_countries(sample, token_sample):
    assert not any(name in v.params for v in sample for name in TOKEN_ONLY)
    assert all("cip" in v.params for v in token_sample)
    untokened = make_day(make_profile(randomize_countries=True), count=300, seed=3, token_present=False)
    assert not any("cip" in v.params for v in untokened)


def test_no_generated_ip_is_in_a_bot_range_and_countries_vary(token_sample):
    ips = [v.params["cip"] for v in token_sample]
    assert not any(is_bot_ip(ip) for ip in ips)
    assert len(set(ips)) > 0.9 * len({v.cid for v in token_sample})
    first_octets = Counter(ip.split(".")[0] for ip in ips)
    assert len(first_octets) >= 15


def test_no_generated_user_agent_looks_like_a_bot(sample):
    agents = {v.params["ua"] for v in sample}
    assert len(agents) >= 15
    assert all(bot_word_in(ua) is None for ua in agents)


def test_visitor_constants_are_on_every_hit_and_never_change_within_a_visit(sample):
    for visit in sample[:2000]:
        for params in visit.iter_full_params():
            assert params["cid"] == params["_id"] == visit.cid
            for name in ("ua", "lang", "res", "idsite", "rec", "apiv", "send_image"):
                assert params[name] == visit.params[name]
            assert params.get("uid") == visit.uid


def test_the_same_inputs_give_the_same_stream_hit_for_hit():
    first = make_day(count=1500, seed="same", order_id_prefix="p")
    second = make_day(count=1500, seed="same", order_id_prefix="p")
    assert first == second
    assert [h.params["rand"] for v in first for h in v.hits] == [h.params["rand"] for v in second for h in v.hits]


def test_a_different_seed_gives_a_different_stream():
    first = make_day(count=300, seed=1)
    second = make_day(count=300, seed=2)
    assert [v.cid for v in first] != [v.cid for v in second]
    assert sum(a.start == b.start for a, b in zip(first, second, strict=True)) < 5


def test_live_streams_are_reproducible_too():
    start = datetime(2025, 3, 5, 8, tzinfo=UTC)
    first = list(islice(live_visits(make_profile(), seed=5, start=start), 800))
    second = list(islice(live_visits(make_profile(), seed=5, start=start), 800))
    assert first == second


def test_skip_resumes_exactly_where_an_interrupted_day_stopped():
    whole = make_day(count=900, seed=8, order_id_prefix="x")
    resumed = make_day(count=900, seed=8, order_id_prefix="x", skip=650)
    assert resumed == whole[650:]
    assert [v.index for v in resumed] == list(range(650, 900))


def test_encoding_puts_the_visit_constants_first_and_round_trips_every_hit(sample):
    for visit in sample[:500]:
        encoded = encode_visit(visit, cdt="datetime")
        assert len(encoded) == len(visit.hits)
        for text, hit, full in zip(encoded, visit.hits, visit.iter_full_params(), strict=True):
            assert text.startswith("?idsite=1&rec=1&apiv=1&send_image=0&cid=")
            decoded = dict(parse_qsl(text[1:], keep_blank_values=True))
            cdt = decoded.pop("cdt")
            assert decoded == full
            assert cdt == hit.due_datetime.strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.parametrize("cdt", [None, "unix", "datetime"])
def test_a_visit_held_as_head_queries_and_dues_encodes_as_the_visit_does(sample, cdt):
    """A live loader holds a bulk visit as its head, each hit's own query and the hits'
    times (the head once), and builds its entries when it sends them: the same text."""
    from trafficinator.traffic import encode_entries, hit_queries, visit_head

    for visit in sample[:300]:
        held = (visit_head(visit), hit_queries(visit), [hit.due for hit in visit.hits])
        assert encode_entries(*held, cdt) == encode_visit(visit, cdt=cdt)
        assert len(held[0]) + sum(map(len, held[1])) < sum(map(len, encode_visit(visit, cdt=cdt))) or (
            len(visit.hits) == 1 and cdt is None
        )
    with pytest.raises(ValueError):
        encode_entries("?", ["a=1"], [0.0], "iso")
    with pytest.raises(ValueError):
        encode_visit(sample[0], cdt="iso")


def test_single_hit_bodies_have_no_question_mark_and_unix_cdt():
    visit = make_day(count=5, seed=4)[0]
    bodies = encode_visit(visit, cdt="unix", prefix="")
    assert bodies[0].startswith("idsite=1&")
    assert dict(parse_qsl(bodies[0]))["cdt"] == str(int(visit.hits[0].due))
    assert "cdt=" not in encode_visit(visit)[0]


def test_no_token_ever_appears_in_encoded_hits(token_sample):
    assert not any("token_auth" in text for v in token_sample[:500] for text in encode_visit(v))


def test_an_invalid_profile_is_refused_before_any_traffic():
    from trafficinator.traffic import TrafficConfigError, day_visits

    with pytest.raises(TrafficConfigError) as error:
        day_visits(Profile(pageviews_min=9, pageviews_max=2), day=DAY, count=10)
    assert ("pageviews_max", "must be at least pageviews_min (9)") in error.value.problems


def test_site_url_and_site_id_parameters_are_used():
    visits = make_day(count=50, seed=3, site_url="https://demo.test", site_id=7)
    for visit in visits:
        assert visit.params["idsite"] == "7"
        for hit in visit.hits:
            kind = hit.kind
            if kind not in ("outlink", "download"):
                assert hit.params["url"].startswith("https://demo.test/"), hit.params["url"]


def test_page_view_ids_drawn_together_are_those_drawn_one_by_one():
    from random import Random

    from trafficinator.traffic.sampling import pv_id, pv_ids

    one_by_one = Random(8)
    assert pv_ids(Random(8), 40) == [pv_id(one_by_one) for _ in range(40)]
