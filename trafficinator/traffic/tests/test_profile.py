from __future__ import annotations

from decimal import Decimal

import pytest

from trafficinator.traffic import Profile, resolve_timezone


def fields_of(problems):
    return {field for field, _ in problems}


def test_default_profile_is_valid():
    assert Profile().validate() == []


def test_default_profile_has_the_documented_values():
    profile = Profile()
    assert profile.visits_per_day == 1000
    assert (profile.pageviews_min, profile.pageviews_max) == (2, 4)
    assert profile.ecommerce_shipping_options == (Decimal("0"), Decimal("4.99"), Decimal("9.99"), Decimal("19.99"))
    assert profile.currency == "SEK" and profile.timezone == "CET"
    assert dict(profile.device_mix) == {"desktop": 0.43, "mobile": 0.53, "tablet": 0.04}


def test_profile_is_built_from_a_plain_mapping_like_a_model_row():
    values = Profile().as_dict()
    assert Profile(**values) == Profile()
    assert set(values) == set(Profile.field_names())


def test_minimum_above_maximum_is_reported_on_the_maximum_field():
    problems = Profile(pageviews_min=5, pageviews_max=3, pause_min=10, pause_max=2).validate()
    assert {"pageviews_max", "pause_max"} <= fields_of(problems)


@pytest.mark.parametrize(
    "name",
    ["bounce_share", "direct_traffic_share", "site_search_probability", "returning_visitor_share", "logged_in_share"],
)
def test_probabilities_outside_zero_to_one_are_rejected(name):
    assert name in fields_of(Profile(**{name: 1.5}).validate())
    assert name in fields_of(Profile(**{name: -0.1}).validate())


def test_an_interaction_cannot_be_more_likely_than_not_bouncing():
    problems = Profile(bounce_share=0.9, click_events_probability=0.2).validate()
    assert "click_events_probability" in fields_of(problems)


def test_mixes_must_sum_to_one_and_use_known_keys():
    assert "device_mix" in fields_of(Profile(device_mix={"desktop": 0.5, "mobile": 0.3}).validate())
    assert "persona_mix" in fields_of(Profile(persona_mix={"researcher": 0.5, "shopper": 0.5}).validate())
    near_one = {"desktop": 0.433, "mobile": 0.53, "tablet": 0.04}
    assert Profile(device_mix=near_one).validate() == []


def test_time_zone_must_be_iana_or_a_matomo_utc_offset():
    assert "timezone" in fields_of(Profile(timezone="Mars/Olympus").validate())
    for name in ("Europe/Stockholm", "UTC", "UTC+2", "UTC-4.5", "UTC+5.5"):
        assert Profile(timezone=name).validate() == []
    assert resolve_timezone("UTC+5.5").utcoffset(None).total_seconds() == 5.5 * 3600


def test_currency_must_look_like_iso_4217():
    assert "currency" in fields_of(Profile(currency="kr").validate())
    assert Profile(currency="EUR").validate() == []


def test_money_fields_accept_strings_and_report_garbage():
    profile = Profile(ecommerce_order_value_min="10.50", ecommerce_shipping_options="0, 49")
    assert profile.ecommerce_order_value_min == Decimal("10.50")
    assert profile.ecommerce_shipping_options == (Decimal("0"), Decimal("49"))
    assert "ecommerce_order_value_max" in fields_of(Profile(ecommerce_order_value_max="lots").validate())
    assert "ecommerce_order_value_min" in fields_of(Profile(ecommerce_order_value_min=Decimal("1.001")).validate())


def test_order_range_too_small_for_the_item_count_is_rejected():
    problems = Profile(ecommerce_order_value_min=Decimal("0.10"), ecommerce_items_max=20).validate()
    assert "ecommerce_order_value_min" in fields_of(problems)


def test_unknown_daily_curve_is_rejected():
    assert "daily_curve" in fields_of(Profile(daily_curve="lunar").validate())


def test_pause_of_thirty_minutes_or_more_is_rejected_because_it_ends_the_visit():
    assert "pause_max" in fields_of(Profile(pause_max=1800).validate())
