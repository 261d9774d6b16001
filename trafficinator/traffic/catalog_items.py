"""The item types of a catalog and how each is read from JSON or pasted text.

Every reader takes one raw item (a JSON object, or a string with ``|``-separated
fields as pasted in a textarea) and returns the typed item or raises ``ItemError`` with a
message that names the bad value. The same readers load the shipped data files and
user overrides, so both are held to the same rules.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote, urlsplit

from .profile import DEVICES
from .rules import bot_word_in, is_absolute_url, network_overlaps_bots

_RESOLUTION = re.compile(r"^[1-9]\d{1,4}x[1-9]\d{1,4}$")


class ItemError(ValueError):
    """One bad item; the message is shown to the user after 'part line N: '."""


@dataclass(frozen=True, slots=True)
class Site:
    url: str  # base URL for every relative path in the catalog
    search_url: str = "/search?q={keyword}"
    cart_url: str = "/cart"
    checkout_url: str = "/checkout"
    confirmation_url: str = "/checkout/thank-you"


@dataclass(frozen=True, slots=True)
class Page:
    url: str  # absolute, or a path starting with '/' (joined to the site URL)
    title: str


@dataclass(frozen=True, slots=True)
class SearchTerm:
    term: str
    category: str = ""
    results: int = 12  # typical result count; 0 marks a term that finds nothing


@dataclass(frozen=True, slots=True)
class Event:
    category: str
    action: str
    name: str = ""
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    category: str
    price: Decimal  # list price; see ecommerce.py for how orders use it
    url: str = ""  # path or absolute; empty means /product/<sku>


@dataclass(frozen=True, slots=True)
class SearchEngine:
    name: str
    url: str
    keyword_param: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Referrer:
    name: str
    url: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    source: str = ""
    medium: str = ""
    keyword: str = ""
    content: str = ""
    landing: str = ""  # path or URL; empty means a normal landing page
    referrer: str = ""  # e.g. the search engine of a paid search ad
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Country:
    code: str
    name: str
    languages: tuple[str, ...]  # Accept-Language values spoken there
    networks: tuple[str, ...]  # IPv4 CIDR blocks of its ISPs
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class UserAgent:
    device: str
    ua: str
    resolutions: tuple[tuple[str, float], ...]
    uadata: str = ""  # client hints JSON for Chromium browsers
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Language:
    value: str  # an Accept-Language header value
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Goal:
    idgoal: int
    name: str = ""
    revenue: Decimal | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ContentBlock:
    name: str
    piece: str = ""
    target: str = ""


# ---------------------------------------------------------------- field helpers


def _fields(raw: Any, names: tuple[str, ...], required: int) -> dict[str, Any]:
    """Turn 'a | b | c' or {"a":..} into a dict of the given names."""
    if isinstance(raw, str):
        parts = [part.strip() for part in raw.split("|")]
        if len(parts) > len(names):
            raise ItemError(f"{raw.strip()!r} has more than {len(names)} fields ({' | '.join(names)})")
        values = dict(zip(names, parts, strict=False))
    elif isinstance(raw, Mapping):
        unknown = sorted(set(map(str, raw)) - set(names))
        if unknown:
            raise ItemError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(names)}")
        values = dict(raw)
    else:
        raise ItemError(f"{raw!r} must be text or an object with {', '.join(names)}")
    for name in names[:required]:
        value = values.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ItemError(f"{name} is missing")
    return values


def _text(values: dict, name: str, default: str = "", limit: int = 1000) -> str:
    value = values.get(name, default)
    if value is None:
        return default
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ItemError(f"{name} must be text")
    text = str(value).strip()
    if len(text) > limit:
        raise ItemError(f"{name} is longer than {limit} characters")
    return text


def _weight(values: dict) -> float:
    value = values.get("weight", 1.0)
    if value in (None, ""):
        return 1.0
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise ItemError(f"weight {value!r} is not a number") from None
    if not weight >= 0 or weight == float("inf"):
        raise ItemError(f"weight {value!r} must be 0 or more")
    return weight


def _amount(value: Any, name: str, positive: bool) -> Decimal:
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ItemError(f"{name} {value!r} is not an amount") from None
    if not amount.is_finite() or amount < 0 or (positive and amount == 0):
        raise ItemError(f"{name} {value!r} must be {'greater than 0' if positive else '0 or more'}")
    if amount != amount.quantize(Decimal("0.01")):
        raise ItemError(f"{name} {value!r} has more than two decimals")
    return amount.quantize(Decimal("0.01"))


def _location(value: str, what: str) -> str:
    """An absolute http(s) URL or a site path."""
    if value.startswith("/") and not value.startswith("//") and " " not in value:
        return value
    if is_absolute_url(value):
        return value
    raise ItemError(f"{what}{value!r} is not an absolute http(s) URL (or a path starting with '/')")


def _absolute(value: str, what: str = "") -> str:
    if is_absolute_url(value):
        return value
    raise ItemError(f"{what}{value!r} is not an absolute http(s) URL")


def title_from_url(url: str) -> str:
    """A human title from a URL path: '/shop/trail-shoes/x-2' -> 'Shop / Trail shoes / X 2'."""
    path = urlsplit(url).path if "://" in url else url.split("?")[0]
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments:
        return "Home"
    words = []
    for segment in segments:
        segment = re.sub(r"\.(html?|php|aspx?)$", "", segment)
        segment = re.sub(r"[-_+]+", " ", segment).strip()
        words.append(segment[:1].upper() + segment[1:] if segment else segment)
    return " / ".join(w for w in words if w) or "Home"


# ---------------------------------------------------------------- item readers


# The class attributes of a slots dataclass are slot descriptors, not the defaults.
_SITE_DEFAULTS: dict[str, str] = {f.name: f.default for f in fields(Site) if isinstance(f.default, str)}


def read_site(raw: Any) -> Site:
    values = _fields(raw, ("url", "search_url", "cart_url", "checkout_url", "confirmation_url"), 1)
    url = _absolute(_text(values, "url"), "url ").rstrip("/")
    search_url = _text(values, "search_url", _SITE_DEFAULTS["search_url"])
    if "{keyword}" not in search_url:
        raise ItemError("search_url must contain {keyword}")
    paths = {
        "search_url": _location(search_url.replace("{keyword}", "k"), "search_url ") and search_url,
        "cart_url": _location(_text(values, "cart_url", _SITE_DEFAULTS["cart_url"]), "cart_url "),
        "checkout_url": _location(_text(values, "checkout_url", _SITE_DEFAULTS["checkout_url"]), "checkout_url "),
        "confirmation_url": _location(
            _text(values, "confirmation_url", _SITE_DEFAULTS["confirmation_url"]), "confirmation_url "
        ),
    }
    return Site(url=url, **paths)


def read_page(raw: Any) -> Page:
    values = _fields(raw, ("url", "title"), 1)
    url = _location(_text(values, "url", limit=2000), "")
    title = _text(values, "title", limit=500) or title_from_url(url)
    return Page(url=url, title=title)


def read_search_term(raw: Any) -> SearchTerm:
    values = _fields(raw, ("term", "category", "results"), 1)
    results = values.get("results", 12)
    if results in (None, ""):
        results = 12
    try:
        count = int(results)
    except (TypeError, ValueError):
        raise ItemError(f"results {results!r} is not a whole number") from None
    if count < 0:
        raise ItemError("results must be 0 or more")
    return SearchTerm(_text(values, "term", limit=200), _text(values, "category", limit=200), count)


def read_outlink(raw: Any) -> str:
    values = _fields(raw, ("url",), 1)
    return _absolute(_text(values, "url", limit=2000))


def read_download(raw: Any) -> str:
    values = _fields(raw, ("url",), 1)
    return _location(_text(values, "url", limit=2000), "")


def read_event(raw: Any) -> Event:
    values = _fields(raw, ("category", "action", "name", "value"), 2)
    value = values.get("value")
    if value in (None, ""):
        number = None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ItemError(f"value {value!r} is not a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ItemError(f"value {value!r} is not a number")
    return Event(
        _text(values, "category", limit=200),
        _text(values, "action", limit=200),
        _text(values, "name", limit=200),
        number,
    )


def read_product(raw: Any) -> Product:
    values = _fields(raw, ("sku", "name", "category", "price", "url"), 4)
    url = _text(values, "url", limit=2000)
    return Product(
        sku=_text(values, "sku", limit=100),
        name=_text(values, "name", limit=200),
        category=_text(values, "category", limit=200),
        price=_amount(values.get("price"), "price", positive=True),
        url=_location(url, "url ") if url else "",
    )


def read_search_engine(raw: Any) -> SearchEngine:
    values = _fields(raw, ("name", "url", "keyword_param", "weight"), 3)
    param = _text(values, "keyword_param", limit=50)
    if not re.match(r"^[A-Za-z0-9_.-]+$", param):
        raise ItemError(f"keyword_param {param!r} must be a plain query parameter name")
    return SearchEngine(
        _text(values, "name", limit=100),
        _absolute(_text(values, "url"), "url "),
        param,
        _weight(values),
    )


def read_referrer(raw: Any) -> Referrer:
    if isinstance(raw, str) and "|" not in raw:
        raw = {"url": raw}
    values = _fields(raw, ("url", "name", "weight"), 1)
    url = _absolute(_text(values, "url", limit=2000))
    return Referrer(_text(values, "name") or urlsplit(url).hostname or url, url, _weight(values))


def read_campaign(raw: Any) -> Campaign:
    names = ("name", "source", "medium", "keyword", "content", "landing", "referrer", "weight")
    values = _fields(raw, names, 1)
    landing = _text(values, "landing", limit=2000)
    referrer = _text(values, "referrer", limit=2000)
    return Campaign(
        name=_text(values, "name", limit=200),
        source=_text(values, "source", limit=200),
        medium=_text(values, "medium", limit=200),
        keyword=_text(values, "keyword", limit=200),
        content=_text(values, "content", limit=200),
        landing=_location(landing, "landing ") if landing else "",
        referrer=_absolute(referrer, "referrer ") if referrer else "",
        weight=_weight(values),
    )


def read_country(raw: Any) -> Country:
    values = _fields(raw, ("code", "languages", "networks", "name", "weight"), 3)
    code = _text(values, "code", limit=2).lower()
    if not re.match(r"^[a-z]{2}$", code):
        raise ItemError(f"code {code!r} must be a two-letter country code")
    languages = values.get("languages")
    networks = values.get("networks")
    if not isinstance(languages, list) or not languages or not all(isinstance(x, str) and x for x in languages):
        raise ItemError("languages must be a non-empty list of Accept-Language values")
    if not isinstance(networks, list) or not networks:
        raise ItemError("networks must be a non-empty list of IPv4 CIDR blocks")
    for cidr in networks:
        try:
            network = ipaddress.IPv4Network(str(cidr))
        except ValueError:
            raise ItemError(f"network {cidr!r} is not an IPv4 CIDR block like 81.224.0.0/12") from None
        if network.num_addresses < 4:
            raise ItemError(f"network {cidr!r} is too small (use /30 or larger)")
        if network_overlaps_bots(network):
            raise ItemError(f"network {cidr!r} overlaps a range Matomo treats as bots or that is not public")
    return Country(
        code, _text(values, "name") or code.upper(), tuple(languages), tuple(str(n) for n in networks), _weight(values)
    )


def read_user_agent(raw: Any) -> UserAgent:
    values = _fields(raw, ("device", "ua", "resolutions", "uadata", "weight"), 3)
    device = _text(values, "device")
    if device not in DEVICES:
        raise ItemError(f"device {device!r} must be one of {', '.join(DEVICES)}")
    ua = _text(values, "ua", limit=1000)
    word = bot_word_in(ua)
    if word:
        raise ItemError(f"user agent {ua!r} contains {word!r}, so Matomo would drop it as a bot")
    resolutions = []
    raw_resolutions = values.get("resolutions")
    if not isinstance(raw_resolutions, list) or not raw_resolutions:
        raise ItemError('resolutions must be a non-empty list like ["1920x1080", ...]')
    for entry in raw_resolutions:
        res, weight = (entry, 1.0) if isinstance(entry, str) else (*tuple(entry), None)[:2]
        if not isinstance(res, str) or not _RESOLUTION.match(res):
            raise ItemError(f"resolution {res!r} must look like 1920x1080")
        resolutions.append((res, _weight({"weight": weight})))
    uadata = values.get("uadata") or ""
    if uadata and not isinstance(uadata, str):
        uadata = json.dumps(uadata, separators=(",", ":"))
    if uadata:
        try:
            json.loads(uadata)
        except ValueError:
            raise ItemError("uadata must be a JSON object of client hints") from None
    return UserAgent(device, ua, tuple(resolutions), uadata, _weight(values))


def read_language(raw: Any) -> Language:
    if isinstance(raw, str) and "|" not in raw:
        raw = {"value": raw}
    values = _fields(raw, ("value", "weight"), 1)
    value = _text(values, "value", limit=200)
    if not re.match(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})?(?:[,;=. A-Za-z0-9-]*)$", value):
        raise ItemError(f"{value!r} is not an Accept-Language value like 'sv-SE,sv;q=0.9'")
    return Language(value, _weight(values))


def read_goal(raw: Any) -> Goal:
    values = _fields(raw, ("idgoal", "name", "revenue", "weight"), 1)
    try:
        idgoal = int(values["idgoal"])
    except (TypeError, ValueError):
        raise ItemError(f"idgoal {values['idgoal']!r} is not a whole number") from None
    if idgoal < 1:
        raise ItemError("idgoal must be 1 or more (0 is reserved for ecommerce)")
    revenue = values.get("revenue")
    return Goal(
        idgoal,
        _text(values, "name"),
        None if revenue in (None, "") else _amount(revenue, "revenue", positive=False),
        _weight(values),
    )


def read_content(raw: Any) -> ContentBlock:
    values = _fields(raw, ("name", "piece", "target"), 1)
    target = _text(values, "target", limit=2000)
    return ContentBlock(
        _text(values, "name", limit=200),
        _text(values, "piece", limit=500),
        _location(target, "target ") if target else "",
    )


# part name -> (reader, must it have at least one item?)
READERS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "pages": (read_page, True),
    "search_terms": (read_search_term, False),
    "outlinks": (read_outlink, False),
    "downloads": (read_download, False),
    "click_events": (read_event, False),
    "events": (read_event, False),
    "products": (read_product, False),
    "search_engines": (read_search_engine, False),
    "social_networks": (read_referrer, False),
    "websites": (read_referrer, False),
    "campaigns": (read_campaign, False),
    "countries": (read_country, False),
    "user_agents": (read_user_agent, True),
    "languages": (read_language, True),
    "goals": (read_goal, False),
    "content": (read_content, False),
}
