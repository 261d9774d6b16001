"""Statistical shape of generated traffic: fixed seeds, explicit tolerances."""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from itertools import pairwise
from statistics import mean

import pytest

from trafficinator.traffic.curves import hour_weights

from .conftest import SAMPLE_VISITS, make_day, make_profile


def share(items, predicate) -> float:
    items = list(items)
    return sum(1 for item in items if predicate(item)) / len(items)


def pageviews(visit) -> int:
    return sum(1 for hit in visit.hits if hit.kind == "pageview")


def has(visit, kind: str) -> bool:
    return any(hit.kind == kind for hit in visit.hits)


def test_the_sample_has_more_than_ten_thousand_visits(sample):
    assert len(sample) == SAMPLE_VISITS >= 10_000


def test_bounce_share_matches_the_profile(sample):
    assert share(sample, lambda v: v.is_bounce) == pytest.approx(0.45, abs=0.015)


def test_a_bounce_is_exactly_one_page_view_and_nothing_else(sample):
    for visit in sample:
        if visit.is_bounce:
            assert visit.hits[0].kind == "pageview"
        else:
            assert len(visit.hits) >= 3  # two actions at least, and the ping
            assert visit.hits[-1].kind == "ping"


def test_mean_page_views_follow_the_profile_range(sample):
    browsing = [v for v in sample if not v.is_bounce and not has(v, "cart_update")]
    assert all(2 <= pageviews(v) <= 4 for v in browsing)
    assert mean(pageviews(v) for v in browsing) == pytest.approx(3.0, abs=0.25)
    assert mean(pageviews(v) for v in sample) == pytest.approx(0.45 + 0.55 * 3.2, abs=0.25)


def test_visit_duration_of_non_bounces_stays_inside_the_profile_range(sample):
    late = sample[0].start + 86400 - 4 * 3600  # squeezed near midnight: skip the last hours
    durations = [v.end - v.start for v in sample if not v.is_bounce and v.start < late]
    assert min(durations) >= 0.5 * 60 - 1e-6
    assert max(durations) <= 3.0 * 60 + 1e-6
    assert 60 < mean(durations) < 150


def test_pauses_between_page_views_stay_inside_the_profile_range_when_they_fit(sample):
    gaps = []
    for visit in sample:
        times = [h.due for h in visit.hits if h.kind == "pageview"]
        gaps += [b - a for a, b in pairwise(times)]
    assert min(gaps) > 0
    inside = share(gaps, lambda g: 5.0 - 1e-6 <= g <= 60.0 + 1e-6)
    assert inside > 0.9  # the rest were shortened to keep the visit duration in range


def test_returning_visitor_share_and_logged_in_share(sample):
    assert share(sample, lambda v: v.returning) == pytest.approx(0.35, abs=0.015)
    returning = [v for v in sample if v.returning]
    assert share(returning, lambda v: v.uid is not None) == pytest.approx(0.10, abs=0.02)
    assert not any(v.uid for v in sample if not v.returning)


def test_returning_visitors_keep_their_id_device_and_login_across_visits(sample):
    by_visitor = defaultdict(list)
    for visit in sample:
        by_visitor[visit.cid].append(visit)
    repeated = [visits for visits in by_visitor.values() if len(visits) > 1]
    assert len(repeated) > 300
    for visits in repeated:
        # The first visit makes the visitor known to Matomo; every later one is returning.
        assert [v.returning for v in visits] == [False] + [True] * (len(visits) - 1)
        for name in ("ua", "res", "lang"):
            assert len({v.params[name] for v in visits}) == 1
        # A member logs in from its second visit on (the first is anonymous), with Matomo's
        # id for its user id as `cid` from the start.
        assert visits[0].uid is None
        assert len({v.uid for v in visits[1:]}) == 1
        assert len({v.device for v in visits}) == 1


def test_two_visits_of_one_visitor_never_come_within_thirty_minutes(sample):
    by_visitor = defaultdict(list)
    for visit in sample:
        by_visitor[visit.cid].append(visit)
    for visits in by_visitor.values():
        for earlier, later in pairwise(visits):
            assert later.start >= earlier.end + 1800


def test_channel_mix_matches_the_profile(sample):
    channels = Counter(v.channel for v in sample)
    n = len(sample)
    assert channels["direct"] / n == pytest.approx(0.40, abs=0.015)
    for channel, expected in (("search", 0.55), ("social", 0.15), ("websites", 0.15), ("campaign", 0.15)):
        assert channels[channel] / n == pytest.approx(0.60 * expected, abs=0.015), channel


def test_only_the_first_hit_carries_the_external_referrer(sample):
    for visit in sample[:3000]:
        first = visit.hits[0].params
        if visit.channel == "direct":
            assert "urlref" not in first
        elif visit.channel == "search":
            assert (
                "?q=" in first["urlref"]
                or "?p=" in first["urlref"]
                or "?text=" in first["urlref"]
                or "?wd=" in first["urlref"]
                or "?query=" in first["urlref"]
            )
        elif visit.channel == "campaign":
            assert "mtm_campaign=" in first["url"]
        for hit in visit.hits[1:]:
            if "urlref" in hit.params:
                assert hit.params["urlref"].startswith("https://shop.example.com/")


def test_device_mix_matches_the_profile_and_resolutions_match_devices(sample):
    devices = Counter(v.device for v in sample)
    for device, expected in (("desktop", 0.43), ("mobile", 0.53), ("tablet", 0.04)):
        assert devices[device] / len(sample) == pytest.approx(expected, abs=0.015)
    for visit in sample:
        width = int(visit.params["res"].split("x")[0])
        assert (width < 500) == (visit.device == "mobile")


def test_start_hours_follow_the_daily_curve_with_a_strong_peak(sample):
    hours = Counter(int(v.hits[0].params["h"]) for v in sample)
    assert max(hours.values()) / min(hours.values()) >= 3
    weights = hour_weights("default")
    for hour in range(24):
        assert hours[hour] / len(sample) == pytest.approx(weights[hour] / 24, abs=0.006), hour


def test_interaction_rates_match_the_profile(sample):
    for kind, expected in (
        ("search", 0.10),
        ("outlink", 0.05),
        ("download", 0.03),
        ("goal", 0.03),
        ("content_impression", 0.10),
    ):
        assert share(sample, lambda v, k=kind: has(v, k)) == pytest.approx(expected, abs=0.01), kind
    click_or_random = 1 - (1 - 0.15 / 0.55) * (1 - 0.08 / 0.55)
    assert share(sample, lambda v: has(v, "event")) == pytest.approx(0.55 * click_or_random, abs=0.015)


def test_site_search_reports_result_counts_including_zero(sample):
    counts = [int(h.params["search_count"]) for v in sample for h in v.hits if h.kind == "search"]
    assert 0 < share(counts, lambda c: c == 0) < 0.3
    assert max(counts) > 20


def test_orders_and_abandoned_carts_happen_at_the_profile_rates(sample):
    assert share(sample, lambda v: has(v, "order")) == pytest.approx(0.02, abs=0.004)
    abandoned = share(sample, lambda v: has(v, "cart_update") and not has(v, "order"))
    assert abandoned == pytest.approx(0.05, abs=0.007)


def test_every_order_adds_up_to_the_cent_and_stays_in_range(sample):
    orders = [h.params for v in sample for h in v.hits if h.kind == "order"]
    assert len(orders) > 150
    for order in orders:
        st, tx, sh, dt = (Decimal(order[k]) for k in ("ec_st", "ec_tx", "ec_sh", "ec_dt"))
        revenue = Decimal(order["revenue"])
        assert st + tx + sh - dt == revenue
        assert Decimal("5.00") <= revenue <= Decimal("99.99")
        assert sh in (Decimal("0"), Decimal("4.99"), Decimal("9.99"), Decimal("19.99"))
        assert abs(tx - st * Decimal("0.25")) <= Decimal("0.01")
    assert len({o["ec_id"] for o in orders}) == len(orders)
    assert all(o["ec_id"].startswith("run1-20250305-") for o in orders)


def test_a_shopping_visit_views_and_carts_its_products_before_ordering(sample):
    for visit in sample:
        if not has(visit, "order"):
            continue
        kinds = [h.kind for h in visit.hits]
        carts = [h for h in visit.hits if h.kind == "cart_update"]
        order = next(h for h in visit.hits if h.kind == "order")
        assert kinds.index("cart_update") < kinds.index("order")
        assert carts[-1].params["ec_items"] == order.params["ec_items"]
        viewed = {h.params["_pks"]: h.params["_pkp"] for h in visit.hits if "_pks" in h.params}
        for sku, _name, _category, price, _qty in __import__("json").loads(order.params["ec_items"]):
            assert Decimal(viewed[sku]) == Decimal(str(price))


def test_order_ids_never_repeat_across_days_with_the_same_prefix():
    first = make_day(count=3000, seed=5, order_id_prefix="run9")
    second = make_day(count=3000, seed=5, order_id_prefix="run9", day=__import__("datetime").date(2025, 3, 6))
    ids = [h.params["ec_id"] for v in first + second for h in v.hits if h.kind == "order"]
    assert len(ids) > 80 and len(set(ids)) == len(ids)


def test_personas_shape_pages_duration_and_purchases(sample):
    def browsing(persona):
        return [v for v in sample if v.persona == persona and not v.is_bounce and not has(v, "cart_update")]

    assert mean(map(pageviews, browsing("researcher"))) > mean(map(pageviews, browsing("casual"))) + 0.5
    assert (
        mean(v.end - v.start for v in browsing("researcher")) > mean(v.end - v.start for v in browsing("casual")) + 15
    )
    buyers = share([v for v in sample if v.persona == "buyer"], lambda v: has(v, "order"))
    casuals = share([v for v in sample if v.persona == "casual"], lambda v: has(v, "order"))
    assert buyers > 5 * casuals


def test_page_popularity_is_skewed_and_landing_pages_differ_from_inner_pages(sample):
    views = Counter(h.params["url"] for v in sample for h in v.hits if h.kind == "pageview")
    top = sum(count for _, count in views.most_common(len(views) // 100))
    assert top / sum(views.values()) > 0.2
    landing = Counter(v.hits[0].params["url"].split("?")[0] for v in sample)
    inner = Counter(h.params["url"] for v in sample for h in v.hits[1:] if h.kind == "pageview")
    assert landing.most_common(1)[0][0] == "https://shop.example.com/"
    top_landing = {u for u, _ in landing.most_common(10)}
    top_inner = {u for u, _ in inner.most_common(10)}
    assert len(top_landing & top_inner) <= 4


def test_titles_follow_the_url_tree(sample):
    for visit in sample[:2000]:
        for hit in visit.hits:
            if hit.kind == "pageview" and hit.params["url"].count("/") == 6:
                assert hit.params["action_name"].count(" / ") == 2


def test_page_performance_timings_are_plausible(sample):
    timings = [h.params for v in sample[:3000] for h in v.hits if h.kind == "pageview"]
    assert all({"pf_net", "pf_srv", "pf_tfr", "pf_dm1", "pf_dm2", "pf_onl"} <= set(t) for t in timings)
    servers = sorted(int(t["pf_srv"]) for t in timings)
    assert 80 < servers[len(servers) // 2] < 400
    assert servers[-1] < 10_000
    no_timings = make_day(make_profile(page_performance=False), count=200, seed=3)
    assert not any("pf_srv" in h.params for v in no_timings for h in v.hits)


def test_utm_style_campaigns_when_asked():
    visits = make_day(make_profile(campaign_param_style="utm"), count=2000, seed=6)
    campaign = [v for v in visits if v.channel == "campaign"]
    assert campaign and all("utm_campaign=" in v.hits[0].params["url"] for v in campaign)
    assert not any("mtm_" in v.hits[0].params["url"] for v in campaign)


def test_order_tags_of_a_years_days_and_a_runs_sub_streams_never_repeat():
    """Matomo ignores an order whose id its site has seen: the streams under one order id
    prefix (a plan's days, a live run's 64 sub-streams of each target) need tags of their
    own. 20,000 of them, where 24-bit tags would repeat about a dozen times."""
    from datetime import date, timedelta

    from trafficinator.traffic.catalog import Catalog
    from trafficinator.traffic.hits import HitFactory
    from trafficinator.traffic.site_model import compile_site

    factory = HitFactory(compile_site(Catalog.load_default(), None), False, "bf1", ("seed", "day:2025-01-01"))
    tags = set()
    for number in range(10_000):
        day = date(2000, 1, 1) + timedelta(days=number)
        factory.reset_orders(("seed", f"day:{day.isoformat()}"))
        tags.add(factory.order_tag)
    for target in range(157):
        for part in range(64):
            factory.reset_orders((f"target-{target}", "live:key:1", "part", part))
            tags.add(factory.order_tag)
    assert len(tags) == 10_000 + 157 * 64
    assert all(len(tag) == 12 for tag in tags)
