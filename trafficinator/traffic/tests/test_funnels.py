"""Funnels: exact shares of all visits, drop-off rates, step order and delays."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from trafficinator.traffic import (
    FunnelSpec,
    FunnelStep,
    sample_funnel_visit,
    simulate_funnel,
    validate_funnels,
    validate_visit,
)
from trafficinator.traffic.funnels import FunnelPartition

from .conftest import make_day

ITEM = ["TENT-1", "Tent", "Camping", "1490.00", 1]
CHECKOUT = FunnelSpec(
    "Checkout",
    0.10,
    (
        FunnelStep.pageview("/", "Home", continue_probability=0.8),
        FunnelStep.product_view(
            "TENT-1", "Tent", "Camping", "1490.00", delay_min=5, delay_max=20, continue_probability=0.6
        ),
        FunnelStep.cart_update([ITEM], delay_min=2, delay_max=10, continue_probability=0.5),
        FunnelStep.pageview("/checkout", "Checkout", delay_min=10, delay_max=40, continue_probability=0.7),
        FunnelStep.order([ITEM], shipping="49.00", tax="298.00", delay_min=30, delay_max=90),
    ),
    priority=1,
)
NEWSLETTER = FunnelSpec(
    "Newsletter",
    0.05,
    (
        FunnelStep.pageview("https://shop.example.com/journal/", continue_probability=0.9),
        FunnelStep.content_impression("Newsletter box", "Get 10% off", "/newsletter", delay_min=1, delay_max=3),
        FunnelStep.event("Newsletter", "Submit", "Footer", 1, delay_min=20, delay_max=60, continue_probability=0.5),
        FunnelStep.goal(1, delay_min=1, delay_max=2),
    ),
)
FUNNELS = (CHECKOUT, NEWSLETTER)


@pytest.fixture(scope="module")
def funnel_day():
    return make_day(count=20_000, seed=21, funnels=FUNNELS, order_id_prefix="f")


def test_funnel_specs_are_valid_and_their_total_share_is_checked():
    assert validate_funnels(FUNNELS) == []
    too_much = (CHECKOUT, FunnelSpec("Other", 0.95, CHECKOUT.steps))
    assert (
        "share",
        "Funnel shares add up to 1.050; together they can take at most all visits (1.0)",
    ) in validate_funnels(too_much)


@pytest.mark.parametrize(
    "step, fragment",
    [
        (FunnelStep.pageview("foo"), "url 'foo' is not an absolute http(s) URL"),
        (FunnelStep.outlink("/relative"), "url '/relative' is not an absolute http(s) URL"),
        (FunnelStep.pageview("/", delay_max=3600), "delay_max must be between 0 and 1800 seconds"),
        (FunnelStep.pageview("/", delay_min=9, delay_max=3), "delay_max must be at least delay_min"),
        (FunnelStep.pageview("/", continue_probability=1.5), "continue_probability must be between 0 and 1"),
        (FunnelStep("teleport", {}), "unknown kind 'teleport'"),
        (FunnelStep("event", {"category": "Video"}), "action is required"),
        (FunnelStep.order([ITEM], revenue="1000.00", tax="0", shipping="0"), "revenue 1000.00 must equal"),
        (FunnelStep.cart_update([["A", "B", "C", "-1", 1]]), "item 1 price"),
        (FunnelStep.search("boots", count=-1), "count must be 0 or more"),
    ],
)
def test_bad_steps_are_explained(step, fragment):
    problems = validate_funnels([FunnelSpec("Broken", 0.1, (FunnelStep.pageview("/"), step))])
    assert any(fragment in message for _, message in problems), problems
    assert any(field.startswith("steps[1]") for field, _ in problems)


def test_funnel_shares_are_shares_of_all_visits_not_a_chain(funnel_day):
    counts = Counter(v.funnel for v in funnel_day)
    n = len(funnel_day)
    assert counts["Checkout"] / n == pytest.approx(0.10, abs=0.006)
    assert counts["Newsletter"] / n == pytest.approx(0.05, abs=0.004)
    assert counts[None] / n == pytest.approx(0.85, abs=0.007)


def test_partition_orders_funnels_by_priority_and_leaves_the_rest_ordinary():
    partition = FunnelPartition(FUNNELS)
    assert [f.name for f in partition.funnels] == ["Checkout", "Newsletter"]
    assert partition.pick(0.0).name == "Checkout"
    assert partition.pick(0.0999).name == "Checkout"
    assert partition.pick(0.1001).name == "Newsletter"
    assert partition.pick(0.1499).name == "Newsletter"
    assert partition.pick(0.1501) is None


def test_simulated_journeys_drop_off_at_the_configured_rates():
    result = simulate_funnel(CHECKOUT, 10_000, seed=3)
    assert result.reach[0] == 10_000
    assert result.expected_reach == pytest.approx([1.0, 0.8, 0.48, 0.24, 0.168])
    for observed, expected in zip(result.reach_rates, result.expected_reach, strict=True):
        assert observed == pytest.approx(expected, abs=0.015)


def test_funnel_visits_in_the_stream_drop_off_at_the_configured_rates(funnel_day):
    visits = [v for v in funnel_day if v.funnel == "Checkout"]
    steps_reached = Counter(len([h for h in v.hits if h.kind != "ping"]) for v in visits)
    reach = [sum(c for k, c in steps_reached.items() if k >= step) / len(visits) for step in range(1, 6)]
    for observed, expected in zip(reach, CHECKOUT.expected_reach(), strict=True):
        assert observed == pytest.approx(expected, abs=0.035)


def test_funnel_hits_follow_the_steps_in_order(funnel_day):
    expected = {
        "Checkout": ["pageview", "pageview", "cart_update", "pageview", "order"],
        "Newsletter": ["pageview", "content_impression", "event", "goal"],
    }
    for visit in funnel_day:
        if visit.funnel:
            kinds = [h.kind for h in visit.hits if h.kind != "ping"]
            assert kinds == expected[visit.funnel][: len(kinds)]


def test_delays_between_steps_stay_in_their_ranges(funnel_day):
    late = funnel_day[0].start + 86400 - 4 * 3600  # visits squeezed before midnight excluded
    for visit in funnel_day:
        if visit.funnel != "Checkout" or visit.start > late:
            continue
        actions = [h for h in visit.hits if h.kind != "ping"]
        for hit, earlier, step in zip(actions[1:], actions, CHECKOUT.steps[1:], strict=False):
            assert step.delay_min <= hit.due - earlier.due <= step.delay_max


def test_a_funnel_visit_ends_with_a_ping_unless_it_is_a_bounce(funnel_day):
    for visit in funnel_day:
        if not visit.funnel:
            continue
        actions = [h for h in visit.hits if h.kind != "ping"]
        if len(actions) == 1:
            assert visit.is_bounce
        else:
            ping = visit.hits[-1]
            assert ping.kind == "ping"
            last_page = [h for h in actions if h.kind == "pageview"][-1]
            assert ping.params["pv_id"] == last_page.params["pv_id"]


def test_funnel_orders_add_up_and_every_funnel_hit_is_valid(funnel_day):
    orders = [h for v in funnel_day if v.funnel for h in v.hits if h.kind == "order"]
    assert orders
    for order in orders:
        assert (order.params["revenue"], order.params["ec_st"], order.params["ec_tx"], order.params["ec_sh"]) == (
            "1837.00",
            "1490.00",
            "298.00",
            "49.00",
        )
    problems = [p for v in funnel_day if v.funnel for p in validate_visit(v, False)]
    assert problems == []
    ids = [h.params["ec_id"] for v in funnel_day for h in v.hits if h.kind == "order"]
    assert len(ids) == len(set(ids))


def test_funnel_visits_are_ordinary_visits_otherwise(funnel_day):
    funnel = [v for v in funnel_day if v.funnel]
    devices = Counter(v.device for v in funnel)
    assert devices["mobile"] / len(funnel) == pytest.approx(0.53, abs=0.04)
    assert sum(v.returning for v in funnel) / len(funnel) == pytest.approx(0.35, abs=0.04)
    channels = Counter(v.channel for v in funnel)
    assert channels["direct"] / len(funnel) == pytest.approx(0.40, abs=0.04)
    campaign = [v for v in funnel if v.channel == "campaign"]
    assert all("mtm_campaign=" in v.hits[0].params["url"] for v in campaign)


def test_a_sample_journey_for_the_preview_page():
    start = datetime(2025, 3, 5, 12, tzinfo=UTC)
    journeys = [sample_funnel_visit(NEWSLETTER, seed=s, start=start) for s in range(50)]
    assert all(j.funnel == "Newsletter" and j.start == start.timestamp() for j in journeys)
    assert all(j.hits[0].params["url"].startswith("https://shop.example.com/journal/") for j in journeys)
    assert sample_funnel_visit(NEWSLETTER, seed=1, start=start) == journeys[1]
    assert max(len(j.hits) for j in journeys) == 5  # all four steps and the ping


def test_a_funnel_with_share_zero_is_never_followed():
    quiet = FunnelSpec("Quiet", 0.0, NEWSLETTER.steps)
    assert not any(v.funnel for v in make_day(count=500, seed=2, funnels=[quiet]))
