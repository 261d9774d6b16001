"""The validator must catch what Matomo would reject or silently drop."""

from __future__ import annotations

import pytest

from trafficinator.traffic import validate_hit

CID = "0123456789abcdef"


def page_view(**changes) -> dict[str, str]:
    params = {
        "idsite": "1",
        "rec": "1",
        "apiv": "1",
        "send_image": "0",
        "cid": CID,
        "_id": CID,
        "rand": "42",
        "url": "https://shop.example.com/",
        "action_name": "Home",
        "pv_id": "aB3dE5",
        "ua": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
        "lang": "en-US",
        "res": "1920x1080",
        "h": "12",
        "m": "0",
        "s": "0",
    }
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


def order(**changes) -> dict[str, str]:
    params = page_view(
        action_name=None,
        idgoal="0",
        ec_id="run-1",
        revenue="131.24",
        ec_st="100.00",
        ec_tx="25.00",
        ec_sh="9.99",
        ec_dt="3.75",
        ec_items='[["A1","Boots","Hiking",40.00,2],["B2","Socks","Hiking",20.00,1]]',
    )
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


def test_a_complete_page_view_is_valid():
    assert validate_hit(page_view(), token_present=False) == []


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"rec": None}, "rec must be 1"),
        ({"idsite": "0"}, "idsite"),
        ({"cid": "ABC"}, "cid must be 16 lowercase hex"),
        ({"_id": "fedcba9876543210"}, "_id must equal cid"),
        ({"url": "/relative"}, "url must be an absolute"),
        ({"ua": "Mozilla/5.0 (compatible; Googlebot/2.1)"}, "bot"),
        ({"ua": None}, "ua is missing"),
        ({"lang": None}, "lang is missing"),
        ({"pv_id": "toolong1"}, "pv_id must be 6"),
        ({"cdt": "2025-03-05T12:00:00Z"}, "cdt must be"),
        ({"token_auth": "secret"}, "token_auth must never"),
        ({"h": "24"}, "h must be 0..23"),
        ({"shoe_size": "42"}, "unknown parameter"),
        ({"pf_srv": "1.5"}, "pf_srv must be whole"),
    ],
)
def test_broken_page_views_are_caught(changes, fragment):
    problems = validate_hit(page_view(**changes), token_present=True)
    assert any(fragment in p for p in problems), problems


@pytest.mark.parametrize("name", ["cip", "country", "region", "city", "lat", "long"])
def test_token_only_parameters_need_a_token(name):
    params = page_view(**{name: "81.224.10.10" if name == "cip" else "se"})
    assert any("needs token_auth" in p for p in validate_hit(params, token_present=False))


def test_a_cip_in_a_search_bot_range_is_caught_even_with_a_token():
    problems = validate_hit(page_view(cip="66.249.66.1"), token_present=True)
    assert any("bot" in p for p in problems)
    assert validate_hit(page_view(cip="81.224.10.10"), token_present=True) == []


def test_cdt_older_than_a_day_needs_a_token_and_future_cdt_is_flagged():
    now = 1_741_176_000.0  # 2025-03-05 12:00:00 UTC
    old = page_view(cdt="2025-03-01 12:00:00")
    assert any("older than 24 hours" in p for p in validate_hit(old, False, now=now))
    assert validate_hit(old, True, now=now) == []
    future = page_view(cdt=str(int(now) + 3600))
    assert any("future" in p for p in validate_hit(future, True, now=now))


def test_an_order_that_adds_up_is_valid():
    assert validate_hit(order(), token_present=False) == []


def test_an_order_off_by_one_cent_is_caught():
    problems = validate_hit(order(revenue="131.25"), token_present=False)
    assert any("revenue 131.25 != ec_st + ec_tx + ec_sh - ec_dt" in p for p in problems)


def test_an_order_whose_items_do_not_make_the_subtotal_is_caught():
    problems = validate_hit(order(ec_st="99.99", revenue="131.23"), token_present=False)
    assert any("differs from the items' total" in p for p in problems)


def test_an_item_without_a_positive_price_is_caught():
    problems = validate_hit(order(ec_items='[["A1","Boots","Hiking",0,1]]'), token_present=False)
    assert any("price must be positive" in p for p in problems)


def test_a_cart_update_must_not_carry_an_order_id():
    cart = order(ec_id=None, ec_st=None, ec_tx=None, ec_sh=None, ec_dt=None, revenue="100.00")
    assert validate_hit(cart, token_present=False) == []
    with_id = {**cart, "ec_id": "x", "ec_st": "100.00", "ec_tx": "0", "ec_sh": "0", "ec_dt": "0"}
    assert validate_hit(with_id, token_present=False) == []  # that is an order, and it adds up
    wrong_total = {**cart, "revenue": "99.00"}
    assert any("cart revenue 99.00 differs" in p for p in validate_hit(wrong_total, False))


def test_events_need_category_and_action_and_a_numeric_value():
    event = page_view(action_name=None, e_c="Video", e_a="", e_v="many")
    problems = validate_hit(event, token_present=False)
    assert any("non-empty e_c and e_a" in p for p in problems)
    assert any("e_v must be a number" in p for p in problems)


def test_an_outlink_must_repeat_its_target_in_url():
    outlink = page_view(action_name=None, link="https://elsewhere.test/")
    assert any("link == url" in p for p in validate_hit(outlink, token_present=False))
