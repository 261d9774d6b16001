"""Unusual but valid settings still give valid traffic."""

from __future__ import annotations

from decimal import Decimal
from random import Random

import pytest

from trafficinator.traffic import Catalog, FunnelSpec, FunnelStep, Profile, validate_visit
from trafficinator.traffic.ecommerce import OrderPlanner
from trafficinator.traffic.site_model import compile_site

from .conftest import make_day

INTERACTIONS = (
    "site_search_probability",
    "outlinks_probability",
    "downloads_probability",
    "click_events_probability",
    "random_events_probability",
    "ecommerce_probability",
    "cart_abandonment_probability",
    "goal_probability",
    "content_impressions_probability",
)
ODD_PROFILES = {
    "one page per visit": {"pageviews_min": 1, "pageviews_max": 1},
    "never bounces": {"bounce_share": 0.0, "pageviews_min": 8, "pageviews_max": 12},
    "always bounces": {
        "bounce_share": 1.0,
        **dict.fromkeys(INTERACTIONS, 0.0),
    },
    "zero-length visits": {"visit_duration_min": 0.0, "visit_duration_max": 0.0, "pause_min": 0, "pause_max": 0},
    "long visits": {"visit_duration_min": 25.0, "visit_duration_max": 90.0, "pause_min": 600, "pause_max": 1700},
    "shopaholics": {
        "ecommerce_probability": 0.4,
        "cart_abandonment_probability": 0.1,
        "ecommerce_items_min": 10,
        "ecommerce_items_max": 20,
    },
    "tiny orders": {
        "ecommerce_probability": 0.3,
        "ecommerce_order_value_min": Decimal("1.00"),
        "ecommerce_order_value_max": Decimal("1.00"),
        "ecommerce_items_max": 3,
        "ecommerce_tax_rate": Decimal("0"),
    },
    "everyone returns, logged in": {"returning_visitor_share": 1.0, "logged_in_share": 1.0},
    "all campaigns, pk_ style": {
        "direct_traffic_share": 0.0,
        "channel_mix": {"campaign": 1.0},
        "campaign_param_style": "pk",
    },
    "no extras": {"page_performance": False, "client_hints": False},
    "only tablets": {"device_mix": {"tablet": 1.0}, "persona_mix": {"researcher": 1.0}},
}


@pytest.mark.parametrize("name", list(ODD_PROFILES))
def test_odd_profiles_still_give_valid_visits_inside_the_day(name):
    profile = Profile(visits_per_day=2000, **ODD_PROFILES[name])
    assert profile.validate() == []
    visits = make_day(profile, count=600, seed=name, token_present=True)
    assert len(visits) == 600
    for visit in visits:
        assert validate_visit(visit, token_present=True) == [], (name, visit)
    if name == "always bounces":
        assert all(v.is_bounce for v in visits)
    if name == "never bounces":
        assert not any(v.is_bounce for v in visits)
    if name == "one page per visit":
        browsing = [v for v in visits if not any(h.kind == "cart_update" for h in v.hits)]
        assert {sum(h.kind == "pageview" for h in v.hits) for v in browsing} == {1}
        assert all(len(v.hits) >= 3 for v in browsing if not v.is_bounce)  # page, event, ping


def test_a_bare_catalog_degrades_to_what_it_has():
    bare = Catalog.load_default().with_overrides(
        {
            part: []
            for part in (
                "search_terms",
                "outlinks",
                "downloads",
                "click_events",
                "events",
                "products",
                "search_engines",
                "social_networks",
                "websites",
                "campaigns",
                "countries",
                "goals",
                "content",
            )
        }
    )
    profile = Profile(randomize_countries=True)
    visits = make_day(profile, count=800, seed=3, catalog=bare, token_present=True)
    assert {v.channel for v in visits} == {"direct"}
    kinds = {h.kind for v in visits for h in v.hits}
    assert kinds <= {"pageview", "ping"}
    assert not any("cip" in v.params for v in visits)
    assert all(validate_visit(v, True) == [] for v in visits)


def test_a_funnel_may_start_with_an_event_before_any_page_view():
    spec = FunnelSpec(
        "Event first",
        1.0,
        (
            FunnelStep.event("App", "Open"),
            FunnelStep.pageview("/", delay_min=1, delay_max=2),
            FunnelStep.search("tent", "Products", 0, delay_min=1, delay_max=2),
            FunnelStep.event("Search", "No result", delay_min=1, delay_max=2),
        ),
    )
    visits = make_day(count=50, seed=2, funnels=[spec])
    for visit in visits:
        assert [h.kind for h in visit.hits] == ["event", "pageview", "search", "event", "ping"]
        assert validate_visit(visit, False) == []
        assert visit.hits[2].params["search_count"] == "0"


@pytest.mark.parametrize("seed", range(6))
def test_random_order_settings_always_add_up(seed):
    rng = Random(seed)
    low = Decimal(rng.randint(100, 50_000)) / 100
    high = low + Decimal(rng.randint(0, 500_000)) / 100
    items_min = rng.randint(1, 6)
    profile = Profile(
        ecommerce_order_value_min=low,
        ecommerce_order_value_max=high,
        ecommerce_items_min=items_min,
        ecommerce_items_max=items_min + rng.randint(0, 8),
        ecommerce_tax_rate=Decimal(rng.choice(["0", "0.06", "0.12", "0.25", "0.2"])),
        ecommerce_shipping_options=tuple(Decimal(s) for s in rng.sample(["0", "4.99", "49", "99", "0.5"], 3)),
    )
    if profile.validate():
        pytest.skip("combination rejected by validation")
    site = compile_site(Catalog.load_default(), None)
    planner = OrderPlanner(profile, site.products, site.product_picker)
    low_cents, high_cents = int(low * 100), int(high * 100)
    for _ in range(2000):
        _products, order = planner.plan(rng)
        assert low_cents <= order.revenue <= high_cents
        assert order.subtotal == sum(line.price * line.quantity for line in order.lines)
        assert order.subtotal + order.tax + order.shipping - order.discount == order.revenue
        assert all(line.price >= 1 and line.quantity >= 1 for line in order.lines)
        assert order.tax >= 0 and order.shipping <= order.revenue
        assert profile.ecommerce_items_min <= len(order.lines) <= profile.ecommerce_items_max


def test_the_fast_quoting_gives_exactly_what_urllib_quote_gives():
    from urllib.parse import quote

    from trafficinator.traffic.encoding import _quote

    every_ascii = "".join(chr(code) for code in range(128))
    for text in (every_ascii, "", "Über uns / Café & Co.", "名前=値", "a+b c%20d~e_f.g-h"):
        assert _quote(text) == quote(text, safe="")
