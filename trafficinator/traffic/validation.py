"""Is a hit valid by Matomo's rules, and would Matomo keep it?

``validate_hit(params, token_present)`` returns human-readable problems (empty list =
fine) for one hit's full parameter set; ``validate_visit`` adds the rules that span a
visit (order of hits, pv_id links, bounces). The tests use these on large samples, and a
test Matomo stand-in can use them on what it receives.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from .rules import bot_word_in, is_absolute_url, is_bot_ip
from .visit import Visit, hit_kind

TOKEN_ONLY = ("cip", "country", "region", "city", "lat", "long")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_PV_ID = re.compile(r"^[A-Za-z0-9]{6}$")
_CDT = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}|\d{9,11})$")
_RES = re.compile(r"^\d{2,5}x\d{2,5}$")
_DIMENSION = re.compile(r"^dimension\d+$")
_KNOWN = frozenset(
    {
        "idsite",
        "rec",
        "apiv",
        "send_image",
        "cid",
        "_id",
        "rand",
        "url",
        "action_name",
        "urlref",
        "pv_id",
        "uid",
        "ua",
        "lang",
        "res",
        "uadata",
        "cip",
        "cdt",
        "h",
        "m",
        "s",
        "new_visit",
        "ping",
        "search",
        "search_cat",
        "search_count",
        "link",
        "download",
        "e_c",
        "e_a",
        "e_n",
        "e_v",
        "c_n",
        "c_p",
        "c_t",
        "c_i",
        "idgoal",
        "revenue",
        "ec_id",
        "ec_st",
        "ec_tx",
        "ec_sh",
        "ec_dt",
        "ec_items",
        "_pks",
        "_pkn",
        "_pkc",
        "_pkp",
        "pf_net",
        "pf_srv",
        "pf_tfr",
        "pf_dm1",
        "pf_dm2",
        "pf_onl",
        "country",
        "region",
        "city",
        "lat",
        "long",
        "queuedtracking",
        "bots",
        "fla",
        "java",
        "qt",
        "realp",
        "pdf",
        "wma",
        "ag",
        "cookie",
    }
)
_PERFORMANCE = ("pf_net", "pf_srv", "pf_tfr", "pf_dm1", "pf_dm2", "pf_onl")
_FOLLOW_UPS = {
    "event",
    "outlink",
    "download",
    "goal",
    "cart_update",
    "order",
    "content_impression",
    "content_interaction",
}
CENT = Decimal("0.01")


def validate_hit(params: dict[str, str], token_present: bool, now: float | None = None) -> list[str]:
    """Problems with one hit (its full parameters). ``now`` enables the cdt age checks."""
    problems: list[str] = []
    add = problems.append
    get = params.get

    for key, value in params.items():
        if key == "token_auth":
            add("token_auth must never be part of a hit's parameters")
        elif key not in _KNOWN and not _DIMENSION.match(key):
            add(f"unknown parameter {key!r}")
        if not isinstance(value, str):
            add(f"{key} must be a string, not {type(value).__name__}")
    if any(not isinstance(v, str) for v in params.values()):
        return problems

    idsite = get("idsite", "")
    if not idsite.isdigit() or int(idsite) < 1:
        add(f"idsite must be a positive integer, got {idsite!r}")
    if get("rec") != "1":
        add("rec must be 1 (without it Matomo silently ignores the hit)")
    if get("apiv") != "1":
        add("apiv must be 1")
    if get("send_image") != "0":
        add("send_image must be 0")
    cid, visitor_id = get("cid"), get("_id")
    if not cid or not _HEX16.match(cid):
        add(f"cid must be 16 lowercase hex characters, got {cid!r}")
    if visitor_id != cid:
        add("_id must equal cid")
    if not get("rand"):
        add("rand is missing")
    url = get("url")
    if not url or not is_absolute_url(url):
        add(f"url must be an absolute http(s) URL, got {url!r}")
    if "urlref" in params and not is_absolute_url(params["urlref"]):
        add(f"urlref must be an absolute URL, got {params['urlref']!r}")
    ua = get("ua", "")
    if not ua:
        add("ua is missing (send the user agent as a parameter)")
    else:
        word = bot_word_in(ua)
        if word:
            add(f"ua contains {word!r}: Matomo would exclude the hit as a bot")
    if not get("lang"):
        add("lang is missing")
    if "res" in params and not _RES.match(params["res"]):
        add(f"res must look like 1920x1080, got {params['res']!r}")
    if "uadata" in params:
        try:
            if not isinstance(json.loads(params["uadata"]), dict):
                add("uadata must be a JSON object")
        except ValueError:
            add("uadata must be JSON")
    if "uid" in params and not params["uid"].strip():
        add("uid must not be empty")
    if "pv_id" in params and not _PV_ID.match(params["pv_id"]):
        add(f"pv_id must be 6 alphanumeric characters, got {params['pv_id']!r}")
    for name, high in (("h", 23), ("m", 59), ("s", 59)):
        time_part = get(name)
        if time_part is not None and not (time_part.isdigit() and int(time_part) <= high):
            add(f"{name} must be 0..{high}, got {time_part!r}")

    for name in TOKEN_ONLY:
        if name in params and not token_present:
            add(f"{name} needs token_auth: without a token Matomo rejects the hit")
    if "cip" in params and is_bot_ip(params["cip"]):
        add(f"cip {params['cip']} is in a bot or non-public range: Matomo would exclude it")

    cdt = get("cdt")
    if cdt is not None:
        if not _CDT.match(cdt):
            add(f"cdt must be 'YYYY-MM-DD HH:MM:SS' (UTC) or unix seconds, got {cdt!r}")
        elif now is not None:
            stamp = int(cdt) if cdt.isdigit() else _utc_seconds(cdt)
            if stamp > now + 60:
                add("cdt is in the future: Matomo would replace it with now")
            elif stamp < now - 86400 and not token_present:
                add("cdt older than 24 hours needs token_auth")

    _check_kind(params, add)
    return problems


def _check_kind(params: dict[str, str], add: Callable[[str], None]) -> None:
    kind = hit_kind(params)
    get = params.get
    if kind in ("pageview", "ping") and not get("pv_id"):
        add(f"a {kind} needs a pv_id")
    if kind == "pageview" and not get("action_name"):
        add("a page view needs an action_name")
    if kind == "event":
        if not get("e_c") or not get("e_a"):
            add("an event needs non-empty e_c and e_a")
        if "e_v" in params and not _is_number(params["e_v"]):
            add(f"e_v must be a number, got {params['e_v']!r}")
    if kind == "search":
        if not params["search"]:
            add("search keyword must not be empty")
        count = get("search_count")
        if count is not None and not count.isdigit():
            add(f"search_count must be a whole number >= 0, got {count!r}")
    if kind == "outlink" and (params["link"] != get("url") or not is_absolute_url(params["link"])):
        add("an outlink needs link == url, an absolute URL")
    if kind == "download" and (params["download"] != get("url") or not is_absolute_url(params["download"])):
        add("a download needs download == url, an absolute URL")
    if kind == "goal" and not params["idgoal"].isdigit():
        add(f"idgoal must be a whole number, got {params['idgoal']!r}")
    if "revenue" in params and not _is_number(params["revenue"]):
        add(f"revenue must be a number, got {params['revenue']!r}")
    if kind in ("cart_update", "order"):
        _check_ecommerce(params, kind, add)
    if "_pks" in params or "_pkp" in params:
        if not get("_pks") or not get("_pkn"):
            add("a product view needs _pks and _pkn")
        if "_pkp" in params and not (_is_number(params["_pkp"]) and Decimal(params["_pkp"]) > 0):
            add(f"_pkp must be a positive number, got {params.get('_pkp')!r}")
    if "c_i" in params and not get("c_n"):
        add("a content interaction needs c_n")
    for name in _PERFORMANCE:
        if name in params and not params[name].isdigit():
            add(f"{name} must be whole milliseconds, got {params[name]!r}")


def _check_ecommerce(params: dict[str, str], kind: str, add: Callable[[str], None]) -> None:
    try:
        items = json.loads(params.get("ec_items", ""))
    except ValueError:
        add("ec_items must be a JSON array")
        return
    if not isinstance(items, list) or not items:
        add("ec_items must be a non-empty JSON array")
        return
    subtotal = Decimal(0)
    for number, item in enumerate(items, start=1):
        if not (isinstance(item, list) and len(item) == 5):
            add(f"ec_items item {number} must be [sku, name, category, price, quantity]")
            return
        sku, name, category, price, quantity = item
        if not sku or not name:
            add(f"ec_items item {number} needs a sku and a name")
        if isinstance(category, list) and len(category) > 5:
            add(f"ec_items item {number} has more than 5 categories")
        if not _is_number(str(price)) or Decimal(str(price)) <= 0:
            add(f"ec_items item {number} price must be positive, got {price!r}")
            return
        if not isinstance(quantity, int) or quantity < 1:
            add(f"ec_items item {number} quantity must be a whole number >= 1")
            return
        subtotal += Decimal(str(price)) * quantity
    if not _is_number(params.get("revenue", "")):
        add("an ecommerce hit needs a numeric revenue")
        return
    revenue = Decimal(params["revenue"])
    if kind == "cart_update":
        if "ec_id" in params:
            add("a cart update must not have ec_id")
        if revenue != subtotal.quantize(CENT):
            add(f"cart revenue {revenue} differs from its items' total {subtotal}")
        return
    amounts = {}
    for name in ("ec_st", "ec_tx", "ec_sh", "ec_dt"):
        value = params.get(name)
        if value is None or not _is_number(value):
            add(f"an order needs a numeric {name}")
            return
        amounts[name] = Decimal(value)
    if not params.get("ec_id"):
        add("an order needs an ec_id")
    if amounts["ec_st"] != subtotal.quantize(CENT):
        add(f"ec_st {amounts['ec_st']} differs from the items' total {subtotal}")
    total = amounts["ec_st"] + amounts["ec_tx"] + amounts["ec_sh"] - amounts["ec_dt"]
    if total != revenue:
        add(f"revenue {revenue} != ec_st + ec_tx + ec_sh - ec_dt ({total})")
    if any(v < 0 for v in amounts.values()) or revenue <= 0:
        add("order amounts must not be negative and revenue must be positive")


def validate_visit(visit: Visit, token_present: bool, now: float | None = None) -> list[str]:
    """Problems of every hit, plus order, pv_id links and bounce rules of the visit."""
    problems: list[str] = []
    if not visit.hits:
        return ["a visit needs at least one hit"]
    previous = visit.hits[0].due
    page_pv = None
    search_pv = None
    actions = 0
    has_ping = False
    for number, hit in enumerate(visit.hits, start=1):
        params = visit.full_params(hit)
        problems.extend(f"hit {number}: {p}" for p in validate_hit(params, token_present, now))
        if hit.due < previous:
            problems.append(f"hit {number} is dated before the hit before it")
        previous = hit.due
        kind = hit_kind(hit.params)
        if kind == "pageview":
            page_pv, search_pv = hit.params.get("pv_id"), None
        elif kind == "search":
            search_pv = hit.params.get("pv_id")
        elif kind == "ping":
            has_ping = True
            if hit.params.get("pv_id") != page_pv:
                problems.append(f"hit {number}: a ping must carry the last page view's pv_id")
        elif kind in _FOLLOW_UPS and page_pv is not None and hit.params.get("pv_id") not in (page_pv, search_pv):
            problems.append(f"hit {number}: a {kind} must carry its page view's pv_id")
        if kind != "ping":
            actions += 1
    if visit.hits[0].params.get("new_visit") != "1":
        problems.append("the first hit of a visit should force a new visit (new_visit=1)")
    if actions == 1 and has_ping:
        problems.append("a bounce (one action) must not have a ping")
    if visit.hits[-1].due < visit.start:
        problems.append("hits end before the visit starts")
    return problems


def _is_number(value: str) -> bool:
    try:
        return Decimal(value).is_finite()
    except (InvalidOperation, TypeError, ValueError):
        return False


def _utc_seconds(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))
