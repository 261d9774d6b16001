"""Matomo 5's rules for one tracking request, without state.

``evaluate`` answers: is this request invalid (HTTP 400 alone, ``invalid`` inside a bulk),
excluded (answered OK, recorded nowhere), or to be recorded, and with which time and
visitor id. The checks run in the order Matomo's tracker runs them (checked against the
Matomo 5 sources: ``core/Tracker/Request.php``, ``core/Tracker/VisitExcluded.php``,
``plugins/UserCountry/Columns/Base.php``), because the order decides which answer a
request with several problems gets. Stateful rules (repeated ``ec_id``, backdating,
duplicates) live in ``store.py``.
"""

from __future__ import annotations

import codecs
import hashlib
import ipaddress
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from .model import Site, Token, user_id_hash

# Matomo's `tracking_requests_require_authentication_when_custom_timestamp_newer_than`.
CDT_WITHOUT_TOKEN_SECONDS = 86400
# Matomo's Request::isTimestampValid accepts up to 20 years back; older is ignored (= now).
_CDT_MAX_AGE_SECONDS = 20 * 365 * 86400

# Matomo's DeviceDetector "Generic Bot" rule (regexes/bots.yml), plus the words the
# docs/matomo-tracking.md lists (monitor, probe, scanner, script, fetcher, uptime...) and a few named
# bots. A real Matomo knows hundreds of named bots on top; synthetic traffic must avoid all
# of them. HTTP libraries (curl, python-requests, Wget) are "libraries" to DeviceDetector,
# not bots: Matomo records their hits, so the fake does too.
_BOT_UA = re.compile(
    r"[a-z0-9\-_]*((?<!cu)(?<!power[ _])(?<!m[ _])bot(?![ _]TAB|[ _]?5[0-9])|crawler|crawl|checker|archiver"
    r"|transcoder"
    r"|spider)([^a-z]|$)"
    r"|monitor|probe|scanner|script|fetcher|uptime|slurp|apachebench|facebookexternalhit|mediapartners"
    r"|feedburner|pingdom|lighthouse",
    re.IGNORECASE,
)

# VisitExcluded::getBotIpRanges() in Matomo 5 (Google, Bing/MSN, Yahoo, one Chinese bot).
BOT_IP_RANGES = (
    "216.239.32.0/19",
    "64.233.160.0/19",
    "66.249.80.0/20",
    "72.14.192.0/18",
    "209.85.128.0/17",
    "66.102.0.0/20",
    "74.125.0.0/16",
    "64.18.0.0/20",
    "207.126.144.0/20",
    "173.194.0.0/16",
    "64.4.0.0/18",
    "65.52.0.0/14",
    "157.54.0.0/15",
    "157.56.0.0/14",
    "157.60.0.0/16",
    "207.46.0.0/16",
    "207.68.128.0/18",
    "207.68.192.0/20",
    "131.253.26.0/20",
    "131.253.24.0/20",
    "72.30.198.0/20",
    "72.30.196.0/20",
    "98.137.207.0/20",
    "1.202.218.8/32",
)
_BOT_NETWORKS = tuple(ipaddress.ip_network(r, strict=False) for r in BOT_IP_RANGES)

# Parameters that need a token with write/admin access (or a super user).
TOKEN_LOCATION_PARAMS = ("country", "region", "city", "lat", "long")
# Browser plugin flags, part of Matomo's configuration fingerprint (Request::getPlugins).
PLUGIN_PARAMS = ("fla", "java", "qt", "realp", "pdf", "wma", "ag", "cookie")

_HEX16 = re.compile(r"[0-9a-fA-F]{16}")


class _Cache(dict):
    """A dict that forgets everything when it grows too big (enough for UA/IP lookups)."""

    def __init__(self, limit: int = 50_000) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key, value):
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


_bot_ua_cache = _Cache()
_bot_ip_cache = _Cache()


def is_bot_user_agent(ua: str) -> bool:
    found = _bot_ua_cache.get(ua)
    if found is None:
        found = _bot_ua_cache.put(ua, bool(ua) and _BOT_UA.search(ua) is not None)
    return found


def is_bot_ip(ip: str) -> bool:
    found = _bot_ip_cache.get(ip)
    if found is None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            found = False
        else:
            found = any(address in net for net in _BOT_NETWORKS if net.version == address.version)
        _bot_ip_cache.put(ip, found)
    return found


_escape_decode = codecs.escape_decode


def unquote_plus_fast(value: str) -> str:
    """``urllib.parse.unquote_plus``, 3-5 times faster: C's escape decoder does the work
    ("%2F" -> "\\x2F" -> "/"); anything unusual (a stray "%", invalid UTF-8) falls back
    to the standard function, so results are identical."""
    if "+" in value:
        value = value.replace("+", " ")
    if "%" not in value:
        return value
    try:
        return _escape_decode(value.replace("\\", "\\\\").replace("%", "\\x").encode("utf-8"))[0].decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return unquote_plus(value)


# Values that repeat across many hits; interned so a server that keeps every hit stores
# each distinct user agent once, not once per hit.
_REPETITIVE_KEYS = frozenset({"idsite", "rec", "apiv", "send_image", "ua", "lang", "res", "urlref", "bots", "uadata"})


def parse_query(query: str) -> dict[str, str]:
    """``a=1&b=x%20y`` -> dict, last value wins (PHP's ``parse_str`` for plain keys).

    Several times faster than ``urllib.parse.parse_qsl`` for tracking query strings,
    which matters at thousands of hits per second."""
    params: dict[str, str] = {}
    if not query:
        return params
    intern = sys.intern
    for pair in query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        if "%" in key or "+" in key:
            key = unquote_plus_fast(key)
        if "%" in value or "+" in value:
            value = unquote_plus_fast(value)
        if key:
            key = intern(key)
            params[key] = intern(value) if key in _REPETITIVE_KEYS else value
    return params


_LEADING_INT = re.compile(r"\s*([+-]?\d+)")


def php_int(value: str | None) -> int:
    """PHP's ``(int)`` cast of a request string: leading digits, else 0."""
    if not value:
        return 0
    if value.isdigit():
        return int(value)
    match = _LEADING_INT.match(value)
    return int(match.group(1)) if match else 0


def parse_cdt(value: str, now: float) -> float | None:
    """A ``cdt`` value as UTC epoch seconds, or None when Matomo would ignore it and use
    "now": unparsable, in the future (Matomo silently replaces it by now), or more than
    20 years old. Accepts UNIX seconds or ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    value = value.strip()
    if not value:
        return None
    try:
        ts = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value.replace("T", " ", 1))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ts = parsed.timestamp()
    ts = float(int(ts))  # Matomo keeps whole seconds
    if ts > now or ts <= now - _CDT_MAX_AGE_SECONDS:
        return None
    return ts


@dataclass(slots=True)
class Outcome:
    """What Matomo would do with one tracking request.

    kind: "record", "exclude", "invalid", "empty" (a request without parameters inside a
    bulk: Matomo counts it as tracked and records nothing) or "disabled" (the site has
    ``record_statistics`` off)."""

    kind: str
    reason: str = ""
    message: str = ""
    site_id: int = 0
    time: float = 0.0
    visitor_id: str = ""
    params: dict[str, str] = field(default_factory=dict)  # the request's parameters, for "record"
    # False: no accepted cdt, the hit is timed on arrival (set again when it is recorded, so
    # concurrent hits of one visitor can never look backdated).
    explicit_time: bool = False
    # The user id (``uid``) and Matomo's configuration fingerprint (``config_id``) of a hit
    # to record: a uid hit of a visitor id Matomo has never seen is matched by fingerprint.
    uid: str = ""
    config_id: int = 0


@dataclass
class RuleConfig:
    sites: dict[int, Site]
    cdt_without_token_seconds: int = CDT_WITHOUT_TOKEN_SECONDS
    raw_data_retention_days: float | None = None
    strict_cid_hex: bool = True


TokenResolver = Callable[[Mapping[str, str]], Token | None]


def evaluate(
    params: dict[str, str],
    *,
    config: RuleConfig,
    now: float,
    token: Token | None,
    client_ip: str,
    header_user_agent: str,
    header_language: str,
) -> Outcome:
    """Judge one tracking request. ``token`` is the token that counts for this request
    (already resolved for secure-only rules), or None."""
    if not params:
        return Outcome("empty", reason="empty_request")

    site_id = php_int(params.get("idsite"))
    site = config.sites.get(site_id) if site_id > 0 else None

    def authenticated() -> bool:
        return token is not None and site is not None and token.can_track(site_id)

    # 1. The custom time is read first (Tracker::trackRequest prints the current datetime).
    ts = now
    explicit_time = False
    cdt = params.get("cdt")
    if cdt:
        parsed = parse_cdt(cdt, now)
        if parsed is not None:
            age = now - parsed
            if age >= config.cdt_without_token_seconds and not authenticated():
                return Outcome(
                    "invalid",
                    reason="cdt_needs_token",
                    message=f"Custom timestamp is {int(age)} seconds old, requires &token_auth...",
                )
            if config.raw_data_retention_days is not None and age > config.raw_data_retention_days * 86400:
                return Outcome(
                    "invalid",
                    reason="cdt_older_than_retention",
                    message=(
                        "Custom timestamp is older than the configured 'deleted old raw data' value of "
                        f"{config.raw_data_retention_days:g} days"
                    ),
                )
            ts = parsed
            explicit_time = True

    # 2. The site.
    if site is None:
        if site_id <= 0:
            message = f"Invalid idSite: '{site_id}'"
        else:
            message = f"An unexpected website was found in the request: website id was set to '{site_id}' ."
        return Outcome("invalid", reason="unknown_site", message=message, site_id=site_id)
    if not site.record_statistics:
        return Outcome("disabled", reason="record_statistics", site_id=site_id)

    # 3. The visitor IP (VisitExcluded reads it before deciding anything).
    cip = params.get("cip")
    if cip:
        if not authenticated():
            return Outcome(
                "invalid",
                reason="cip_needs_token",
                site_id=site_id,
                message="Tracker API 'cip' was used, requires valid token_auth",
            )
        ip = cip
    else:
        ip = client_ip
    user_agent = params.get("ua") or header_user_agent

    # 4. Exclusion: bots (by user agent or IP range) unless bots=1, then rec.
    if php_int(params.get("bots")) == 0:
        if is_bot_user_agent(user_agent):
            return Outcome("exclude", reason="bot_user_agent", site_id=site_id)
        if is_bot_ip(ip):
            return Outcome("exclude", reason="bot_ip", site_id=site_id)
    if php_int(params.get("rec")) == 0:
        return Outcome("exclude", reason="rec_missing", site_id=site_id)

    # 5. The visitor id: uid wins over cid (enable_userid_overwrites_visitorid), then _id.
    language = params.get("lang") or header_language
    config_id = hash((site_id, user_agent, ip, language, tuple(params.get(name, "0") for name in PLUGIN_PARAMS)))
    uid = params.get("uid")
    if uid:
        visitor_id = user_id_hash(uid)
    else:
        cid = params.get("cid")
        if cid:
            if len(cid) != 16:
                return Outcome(
                    "invalid",
                    reason="bad_cid",
                    site_id=site_id,
                    message=f"Visitor ID (cid) {cid} must be 16 characters long",
                )
            if config.strict_cid_hex and not _HEX16.fullmatch(cid):
                return Outcome(
                    "invalid",
                    reason="bad_cid",
                    site_id=site_id,
                    message=f"Visitor ID (cid) {cid} must be 16 hexadecimal characters",
                )
            visitor_id = cid.lower()
        else:
            idv = params.get("_id", "")
            if len(idv) >= 16 and _HEX16.fullmatch(idv[:16]):
                visitor_id = idv[:16].lower()
            else:
                fingerprint = f"{ip}|{user_agent}|{language}".encode("utf-8", "replace")
                visitor_id = hashlib.sha1(fingerprint, usedforsecurity=False).hexdigest()[:16]

    # 6. Location overrides (UserCountry), checked while the visit is processed.
    for name in TOKEN_LOCATION_PARAMS:
        if params.get(name) and not authenticated():
            return Outcome(
                "invalid",
                reason=f"{name}_needs_token",
                site_id=site_id,
                message=f"Tracker API '{name}' was used, requires valid token_auth",
            )

    # 7. Goal conversions (GoalManager): the goal must exist in the site.
    idgoal = params.get("idgoal")
    if idgoal and idgoal != "0" and php_int(idgoal) not in site.goals:
        return Outcome(
            "invalid", reason="unknown_goal", site_id=site_id, message=f"idGoal {php_int(idgoal)} does not exist"
        )

    return Outcome(
        "record",
        site_id=site_id,
        time=ts,
        visitor_id=visitor_id,
        params=params,
        explicit_time=explicit_time,
        uid=uid or "",
        config_id=config_id,
    )
