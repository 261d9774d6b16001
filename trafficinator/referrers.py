"""Matomo's referrer classification, for the referrers a visit's first hit carries.

Follows ``plugins/Referrers/Columns/Base.php`` (Matomo 5): a campaign in the landing URL
wins, then a referrer on the site's own host is a direct entry, then the search-engine
list (``SearchEngine::extractInformationFromUrl``: host, then host + path, then the
"lossy" host with country codes and ``www.``/``m.`` folded to ``{}``; a keyword from the
engine's parameters, or an empty keyword when the path matches its ``hiddenkeyword``
patterns, default ``/^$/`` and ``/``), then the social list (a domain anywhere in the
URL), else a website. The lists are Matomo's own (``data/referrer_lists.json``, built
from matomo-org/searchengine-and-social-list by ``data/build_referrer_lists.py``).

Plain Python (stdlib only): the fake Matomo (targets.fake_matomo) files its visits with
it, and a preset's catalog overrides are checked against it (presets.channels).

Simplifications: no charset conversion of keywords, no Google ``as_*`` keyword assembly,
and none of the special hosts Matomo hard-codes (Google custom search, InfoSpace) beyond
``*.search.yahoo.com``.

That is why ``https://www.facebook.com/`` is a *search engine* here as in Matomo 5
(``www.facebook.com`` is in the search list with ``params: [q]`` and the default
hidden-keyword path ``/``), while ``https://m.facebook.com/`` is social.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

_DATA = Path(__file__).parent / "data" / "referrer_lists.json"
_DEFAULT_HIDDEN = ["/^$/", "/"]

DIRECT = "direct"
SEARCH = "search"
SOCIAL = "social"
WEBSITE = "website"
CAMPAIGN = "campaign"


_CAMPAIGN_NAME_KEYS = (
    "mtm_campaign",
    "matomo_campaign",
    "mtm_cpn",
    "pk_campaign",
    "piwik_campaign",
    "pk_cpn",
    "utm_campaign",
)
_CAMPAIGN_KEYWORD_KEYS = ("mtm_kwd", "matomo_kwd", "mtm_keyword", "pk_kwd", "piwik_kwd", "pk_keyword", "utm_term")


def campaign_of(params: Mapping[str, str]) -> tuple[str, str] | None:
    """(name, keyword) of a campaign on a hit, lower-cased like Matomo does, or None.

    Looks at the page URL's query (``mtm_*``, ``pk_*``, ``utm_*``) and at ``_rcn``/``_rck``."""
    name = params.get("_rcn", "")
    keyword = params.get("_rck", "")
    url = params.get("url", "")
    if not name and "?" in url:
        query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
        name = next((query[k] for k in _CAMPAIGN_NAME_KEYS if query.get(k)), "")
        keyword = next((query[k] for k in _CAMPAIGN_KEYWORD_KEYS if query.get(k)), "")
    if not name:
        return None
    return (name.strip().lower(), keyword.strip().lower())


@cache
def _lists() -> dict[str, Any]:
    return json.loads(_DATA.read_text())


@cache
def _lossy_patterns() -> list[tuple[re.Pattern[str], str]]:
    countries = "|".join(_lists()["countries"])
    return [
        (re.compile(r"^(w+[0-9]*|search)\."), ""),
        (re.compile(r"(^|\.)m\."), r"\1"),
        (re.compile(r"(\.(com|org|net|co|it|edu))?\.(" + countries + r")(/|$)"), r".{}\4"),
        (re.compile(r"(^|\.)(" + countries + r")\."), r"\1{}."),
    ]


def lossy_host(host: str) -> str:
    """``UrlHelper::getLossyUrl``: www.google.se -> google.{}, m.facebook.com -> facebook.com."""
    for pattern, replacement in _lossy_patterns():
        host = pattern.sub(replacement, host)
    return host


@cache
def _php_regex(pattern: str) -> re.Pattern[str] | None:
    """A PHP ``/.../flags`` regex as a Python one (None if it is not one)."""
    if len(pattern) < 2 or pattern[0] != "/":
        return None
    end = pattern.rfind("/")
    if end <= 0:
        return None
    flags = re.IGNORECASE if "i" in pattern[end + 1 :] else 0
    try:
        return re.compile(pattern[1:end], flags)
    except re.error:
        return None


def _engine_host(host: str, path: str, query: str) -> str | None:
    engines = _lists()["search_engines"]
    lossy = lossy_host(host)
    for candidate in (host + path, host, lossy + path, lossy):
        if candidate in engines:
            return candidate
    if ".images.search.yahoo.com" in host:
        return "images.search.yahoo.com"
    if ".search.yahoo.com" in host:
        return "search.yahoo.com"
    return None


def search_engine(url: str) -> tuple[str, str] | None:
    """(engine name, keyword) when Matomo files ``url`` as a search engine, else None.
    An empty keyword is Matomo's "keyword not defined"."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        return None
    query = parts.query + ("&" + parts.fragment if parts.fragment else "")
    found = _engine_host(host, parts.path, query)
    if found is None:
        return None
    definition = _lists()["search_engines"][found]
    values: dict[str, str] = {}
    for key, item in parse_qsl(query, keep_blank_values=True):
        values.setdefault(key, item)
    keyword: str | None = None
    for name in definition["params"]:
        regex = _php_regex(name) if name.startswith("/") else None
        if regex is not None:
            match = regex.search(url)
            if match and match.groups():
                keyword = unquote_plus(match.group(1)).strip()
                break
            continue
        found_value = values.get(name)
        if found_value is not None and found_value.strip():
            keyword = found_value.strip()
            break
        if found_value is not None:  # the parameter is there but empty: "keyword not defined"
            keyword = ""
            break
    if keyword is None:
        hidden = definition.get("hiddenkeyword", _DEFAULT_HIDDEN)
        full_path = parts.path + ("?" + query if query else "") + ("#" + parts.fragment if parts.fragment else "")
        for pattern in hidden:
            regex = _php_regex(pattern) if len(pattern) > 1 else None
            if (regex is not None and regex.search(full_path)) or (regex is None and pattern == full_path):
                keyword = ""
                break
    if keyword is None:
        return None
    return definition["name"], keyword.lower()


def social_network(url: str) -> str | None:
    """``Social::getSocialNetworkFromDomain``: the first list domain found in the URL."""
    for domain, name in _lists()["socials"].items():
        # Matomo puts the domain into the pattern unescaped; so do we.
        try:
            if re.search(r"(^|[./])" + domain + r"([./]|$)", url):
                return name
        except re.error:
            continue
    return None


def classify(referrer: str, landing_url: str = "", site_hosts: tuple[str, ...] = ()) -> tuple[str, str]:
    """(channel, name) Matomo would give a visit whose first hit has this ``urlref`` and
    ``url``: campaign, direct, search, social or website."""
    campaign = campaign_of({"url": landing_url}) if landing_url else None
    if campaign is not None:
        return CAMPAIGN, campaign[0]
    host = (urlsplit(referrer).hostname or "") if referrer else ""
    if not host or host in site_hosts:
        return DIRECT, ""
    engine = search_engine(referrer)
    if engine is not None:
        return SEARCH, engine[0]
    network = social_network(referrer)
    if network is not None:
        return SOCIAL, network
    return WEBSITE, host
