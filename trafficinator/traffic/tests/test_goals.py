"""Only conversions for goals the site has are sent (Matomo rejects the others)."""

from __future__ import annotations

from collections import Counter

from trafficinator.traffic import Catalog, SiteGoals, encode_params
from trafficinator.traffic.funnels import FunnelSpec, FunnelStep

from .conftest import make_day, make_profile


def conversions(visits) -> Counter:
    return Counter(
        hit.params["idgoal"] for visit in visits for hit in visit.hits if hit.params.get("idgoal", "0") != "0"
    )


def test_without_site_goals_every_catalog_goal_is_converted():
    assert set(conversions(make_day(count=3000, seed=4))) == {"1", "2", "3", "4"}


def test_conversions_for_goals_the_site_lacks_are_left_out_and_counted():
    goals = SiteGoals({1: "Newsletter signup", 2: "Contact form sent"}, Catalog.load_default())
    visits = make_day(count=3000, seed=4, goals=goals)
    unfiltered = conversions(make_day(count=3000, seed=4))
    assert set(conversions(visits)) == {"1", "2"}
    assert goals.left_out == Counter({3: unfiltered["3"], 4: unfiltered["4"]})
    assert "conversions left out" in goals.describe_left_out()
    assert all(visit.hits for visit in visits)


def test_a_catalog_goal_is_sent_as_the_site_goal_with_the_same_name():
    catalog = Catalog.load_default()
    goals = SiteGoals({7: "newsletter SIGNUP", 3: "Account created"}, catalog)
    assert goals.convert(1) == 7
    assert goals.convert(3) == 3
    assert goals.convert(2) is None
    assert goals.missing(catalog) == ["Contact form sent", "Store fitting booked"]


def test_an_empty_site_gets_no_goal_conversions_but_keeps_its_orders():
    visits = make_day(make_profile(), count=3000, seed=4, goals=SiteGoals({}, Catalog.load_default()))
    assert conversions(visits) == Counter()
    assert any(hit.params.get("idgoal") == "0" for visit in visits for hit in visit.hits)


def test_a_visit_whose_first_hit_is_left_out_starts_with_its_next_hit():
    """A funnel that starts with a conversion the site lacks: the hit after it becomes the
    visit's first and says new_visit=1, in its params and in its encoding."""
    starts_with_goal = FunnelSpec(
        "Goal first",
        1.0,
        (FunnelStep.goal(3), FunnelStep.pageview("/", "Home", delay_min=1, delay_max=2)),
    )
    goals = SiteGoals({1: "Newsletter signup"}, Catalog.load_default())
    visits = make_day(count=50, seed=4, funnels=(starts_with_goal,), goals=goals)
    for visit in visits:
        first = visit.hits[0]
        assert "idgoal" not in first.params
        assert first.params["new_visit"] == "1"
        assert first.query == encode_params(first.params)
