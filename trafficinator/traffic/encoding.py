"""Turn a visit's hits into Matomo query strings.

Each string is ``idsite=1&rec=1&...`` (``?`` in front for bulk ``requests`` entries; the
POST body of a single hit has none). The visit's constant part (idsite, rec, apiv,
send_image, cid, _id, uid, ua, lang, res, uadata, cip) is encoded once per visit and
reused for each hit; values that recur across visits (URLs, titles, event names) are
quoted once and cached in a bounded table. A hit from the generator arrives already
encoded (``Hit.query``, built from fragments encoded once per catalog page); others are
encoded here. No token is ever added here: the sender puts ``token_auth`` into the POST
body separately.

``cdt`` (custom date-time, UTC) comes from each hit's due time, in whole seconds:
``cdt="datetime"`` gives ``YYYY-MM-DD HH:MM:SS``, ``cdt="unix"`` gives epoch seconds.
Backfill always sends it; live may.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal
from urllib.parse import quote

from .visit import Visit

CdtFormat = Literal["datetime", "unix"] | None

# Values of these keys are digits/alphanumerics by construction: no quoting needed.
_PLAIN = frozenset(
    {
        "idsite",
        "rec",
        "apiv",
        "send_image",
        "cid",
        "_id",
        "rand",
        "pv_id",
        "h",
        "m",
        "s",
        "new_visit",
        "ping",
        "search_count",
        "idgoal",
        "res",
        "pf_net",
        "pf_srv",
        "pf_tfr",
        "pf_dm1",
        "pf_dm2",
        "pf_onl",
    }
)
# Values of these keys are unique per hit (no point caching them).
_UNIQUE = frozenset({"ec_id", "ec_items", "revenue", "ec_st", "ec_tx", "ec_sh", "ec_dt", "uid", "cip", "_pkp", "e_v"})
_CACHE_LIMIT = 20_000
_cache: dict[str, str] = {}


# quote(value, safe="") for ASCII text as one str.translate: letters, digits and "_.-~"
# stay, every other character becomes %XX (the same text, 2-3x faster than quote).
_ALWAYS_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_ASCII_QUOTED = {code: chr(code) if chr(code) in _ALWAYS_SAFE else f"%{code:02X}" for code in range(128)}


def _quote(value: str) -> str:
    return value.translate(_ASCII_QUOTED) if value.isascii() else quote(value, safe="")


def _quote_and_remember(key: str, value: str) -> str:
    text = _quote(value)
    if key not in _UNIQUE:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()  # bounded memory; refills with what is in use now
        _cache[value] = text
    return text


def encode_params(params: dict[str, str]) -> str:
    """``k=v&...`` for one parameter dict."""
    plain, cache, miss = _PLAIN, _cache, _quote_and_remember
    return "&".join(
        [
            f"{key}={value}" if key in plain else f"{key}={cache.get(value) or miss(key, value)}"
            for key, value in params.items()
        ]
    )


def encode_pair(key: str, value: str) -> str:
    """``k=v`` for one parameter, exactly as encode_params writes it."""
    if key in _PLAIN:
        return f"{key}={value}"
    return f"{key}={_cache.get(value) or _quote_and_remember(key, value)}"


_dates: dict[int, str] = {}
# "YYYY-MM-DD%20HH:MM:" by minute since 1970: a visit's hits share a few minutes.
_minutes: dict[int, str] = {}


def _minute_text(minute: int) -> str:
    """cdt up to its seconds ("YYYY-MM-DD%20HH:MM:", the space URL-encoded) for a minute
    since 1970, remembered in ``_minutes``."""
    day, minute_of_day = divmod(minute, 1440)
    date = _dates.get(day)
    if date is None:
        if len(_dates) > 1000:
            _dates.clear()
        date = _dates[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    hour, minute_of_hour = divmod(minute_of_day, 60)
    if len(_minutes) > 5000:
        _minutes.clear()  # bounded memory; refills with the minutes in use now
    text = _minutes[minute] = f"{date}%20{_TWO_DIGITS[hour]}:{_TWO_DIGITS[minute_of_hour]}:"
    return text


_TWO_DIGITS = [f"{n:02d}" for n in range(60)]


def visit_head(visit: Visit, prefix: str = "?") -> str:
    """What each of the visit's query strings starts with: ``prefix``, its constant params
    encoded, "&"."""
    return prefix + (encode_params(visit.params) if visit.query is None else visit.query) + "&"


def hit_queries(visit: Visit) -> list[str]:
    """Each hit's own params encoded (what follows the visit's head), in time order."""
    return [encode_params(hit.params) if hit.query is None else hit.query for hit in visit.hits]


def encode_visit(visit: Visit, cdt: CdtFormat = None, prefix: str = "?") -> list[str]:
    """One query string per hit, in time order; ``prefix="?"`` for bulk requests,
    ``prefix=""`` for a single hit's POST body. An unknown ``cdt`` raises ValueError
    (encode_entries checks it)."""
    head = visit_head(visit, prefix)
    if cdt is None:  # written out: no list of queries first (every single-hit visit)
        return [head + (encode_params(hit.params) if hit.query is None else hit.query) for hit in visit.hits]
    return encode_entries(head, hit_queries(visit), [hit.due for hit in visit.hits], cdt)


def encode_entries(head: str, queries: Sequence[str], dues: Sequence[float], cdt: CdtFormat) -> list[str]:
    """``head`` + each query + its hit's ``cdt`` (``dues``: the hits' times): the query
    strings of encode_visit from the parts a live loader holds while a visit's hits come
    due (visit_head, hit_queries; the head once per visit rather than once per hit)."""
    if cdt is None:
        return [head + query for query in queries]
    if cdt == "unix":
        return [f"{head}{query}&cdt={int(due)}" for query, due in zip(queries, dues, strict=True)]
    if cdt != "datetime":
        raise ValueError("cdt must be None, 'datetime' or 'unix'")
    # "YYYY-MM-DD%20HH:MM:SS" from the per-minute cache: it runs for every hit a backfill sends.
    minutes, two_digits = _minutes, _TWO_DIGITS
    entries = []
    for query, due in zip(queries, dues, strict=True):
        minute, second = divmod(int(due), 60)
        date_time = minutes.get(minute) or _minute_text(minute)
        entries.append(f"{head}{query}&cdt={date_time}{two_digits[second]}")
    return entries
