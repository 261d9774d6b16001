"""Funnels as the traffic model runs them, built from the Django models with to_spec()."""

import json
from collections import Counter
from datetime import date
from decimal import Decimal

import pytest

from funnels.models import Funnel
from trafficinator.testing import make_funnel, make_preset, make_step
from trafficinator.traffic import Profile, day_visits, hit_kind, sample_funnel_visit, simulate_funnel

pytestmark = pytest.mark.django_db

DAY = date(2025, 3, 4)
ITEM = {"sku": "SKU-1", "name": "Boots", "category": "Shoes", "price": 100.0, "quantity": 2}


def every_kind_funnel(**fields) -> Funnel:
    steps = [
        make_step("pageview", url="/start", title="Start", delay_min=0, delay_max=0),
        make_step("search", search_keyword="boots", search_count=4, delay_min=1, delay_max=2),
        make_step("event", event_category="Video", event_action="Play", event_value=3, delay_min=3, delay_max=5),
        make_step("content_impression", content_name="Banner", content_piece="Sale", delay_min=0, delay_max=1),
        make_step("content_interaction", content_name="Banner", content_interaction="tap", delay_min=2, delay_max=4),
        make_step("product_view", product_sku="SKU-1", product_name="Boots", product_price=Decimal("100")),
        make_step("cart_update", items=[ITEM], delay_min=10, delay_max=20),
        make_step("order", items=[ITEM], shipping=Decimal("49"), delay_min=30, delay_max=60),
        make_step("goal", goal_id=3, revenue=Decimal("25"), delay_min=1, delay_max=1),
        make_step("download", url="/guide.pdf", delay_min=5, delay_max=9),
        make_step("outlink", url="https://partner.example.org/", delay_min=5, delay_max=9),
    ]
    # A fixed name: the funnel's name is part of what its visits are drawn from, so a
    # name from the factory's counter made the sample depend on which tests ran before.
    fields.setdefault("name", "Every kind")
    return make_funnel(steps=steps, **fields)


def test_generated_hits_follow_the_step_order_with_delays_in_each_steps_range():
    funnel = every_kind_funnel()
    spec = funnel.to_spec()
    steps = funnel.ordered_steps()
    for seed in range(20):
        visit = sample_funnel_visit(spec, seed=seed)
        hits = [hit for hit in visit.hits if hit_kind(hit.params) != "ping"]
        # A product view is a page view with product parameters, as Matomo sees it.
        expected = ["pageview" if step.kind == "product_view" else step.kind for step in steps]
        assert [hit_kind(hit.params) for hit in hits] == expected
        for step, before, after in zip(steps[1:], hits, hits[1:], strict=False):
            assert step.delay_min - 1e-6 <= after.due - before.due <= step.delay_max + 1e-6, (seed, step)


def test_each_step_sends_the_matomo_parameters_of_its_kind():
    visit = sample_funnel_visit(every_kind_funnel().to_spec(), seed=1)
    pageview, search, event, impression, interaction, product, cart, order, goal, download, outlink = visit.hits[:11]
    assert pageview.params["url"] == "https://shop.example.com/start"
    assert pageview.params["action_name"] == "Start"
    assert (search.params["search"], search.params["search_count"]) == ("boots", "4")
    assert (event.params["e_c"], event.params["e_a"], float(event.params["e_v"])) == ("Video", "Play", 3.0)
    assert impression.params["c_n"] == "Banner" and "c_i" not in impression.params
    assert interaction.params["c_i"] == "tap"
    assert (product.params["_pks"], product.params["_pkn"]) == ("SKU-1", "Boots")
    assert cart.params["idgoal"] == "0" and "ec_id" not in cart.params
    assert json.loads(order.params["ec_items"])[0][:2] == ["SKU-1", "Boots"]
    assert Decimal(order.params["revenue"]) >= Decimal("249")  # 2 x 100 + 49 shipping (+ tax)
    assert (goal.params["idgoal"], Decimal(goal.params["revenue"])) == ("3", Decimal("25"))
    assert download.params["download"] == "https://shop.example.com/guide.pdf"
    assert outlink.params["link"] == "https://partner.example.org/"


def test_drop_off_rates_match_the_continue_probabilities_on_10000_journeys():
    funnel = make_funnel(
        share="1",
        steps=[
            make_step(continue_probability=0.8),
            make_step(continue_probability=0.5, delay_min=1, delay_max=5),
            make_step(continue_probability=0.25, delay_min=1, delay_max=5),
            make_step(delay_min=1, delay_max=5),
        ],
    )
    expected = [1.0, 0.8, 0.4, 0.1]
    simulation = simulate_funnel(funnel.to_spec(), 10_000, seed=11)
    assert simulation.expected_reach == pytest.approx(expected)
    assert simulation.reach_rates == pytest.approx(expected, abs=0.015)
    # The same drop-off in real generated visits (every visit follows the funnel at share 1).
    visits = list(day_visits(Profile(), funnels=[funnel.to_spec()], seed=11, day=DAY, count=10_000))
    reached = Counter()
    for visit in visits:
        pages = sum(1 for hit in visit.hits if hit_kind(hit.params) == "pageview")
        for step in range(pages):
            reached[step] += 1
    assert [reached[step] / len(visits) for step in range(4)] == pytest.approx(expected, abs=0.015)


def test_funnel_shares_are_exact_shares_of_all_visits_not_conditional_chains():
    preset = make_preset()
    make_funnel(name="A", share="0.10", presets=[preset], priority=1)
    make_funnel(name="B", share="0.05", presets=[preset])
    make_funnel(name="Elsewhere", share="0.50", presets=[make_preset()])
    specs = Funnel.objects.specs_for_preset(preset)
    visits = list(day_visits(Profile(), funnels=specs, seed=5, day=DAY, count=20_000))
    followed = Counter(visit.funnel for visit in visits)
    assert followed["A"] / len(visits) == pytest.approx(0.10, abs=0.008)
    assert followed["B"] / len(visits) == pytest.approx(0.05, abs=0.006)
    assert followed["Elsewhere"] == 0
    assert followed[None] / len(visits) == pytest.approx(0.85, abs=0.01)
