"""What the fake Matomo knows about: sites, tokens, recorded hits and the visits they form.

Plain data, no I/O. Visits are grouped the way Matomo groups actions into visits (see
``group_visits``), so tests can assert "N visits sent -> N visits recorded".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from trafficinator.referrers import campaign_of, classify

# Matomo's default `visit_standard_length`: a visit ends after 30 minutes without actions.
VISIT_INACTIVITY_SECONDS = 1800

_CURRENCY_NAMES = {
    "USD": "US Dollar",
    "EUR": "Euro",
    "GBP": "British Pound",
    "SEK": "Swedish Krona",
    "NOK": "Norwegian Krone",
    "DKK": "Danish Krone",
    "CHF": "Swiss Franc",
    "JPY": "Japanese Yen",
}


@dataclass(frozen=True)
class Site:
    """One Matomo site (``idsite``). ``record_statistics=False`` makes its tracking requests
    answer 503, like Matomo's global ``[Tracker] record_statistics = 0`` but scoped to the
    site (a fake-only convenience; see ``FakeMatomo`` for the bulk behaviour)."""

    id: int
    name: str = ""
    main_url: str = "https://example.org"
    timezone: str = "UTC"
    currency: str = "USD"
    ecommerce: bool = False
    record_statistics: bool = True
    ts_created: str = "2020-01-01 00:00:00"
    sitesearch: bool = True
    # Goal id -> name. Like a new Matomo site, none by default: a conversion for a goal
    # that is not here is rejected ("idGoal N does not exist"). Given as ids or a mapping;
    # Goals.addGoal adds to it (the dict is shared, the site stays frozen).
    goals: dict[int, str] = field(default_factory=dict)
    # Fake-only: values that replace fields of the getSiteFromId answer, to play a
    # hostile or broken server (a zone unknown here, a 20-letter currency, ...).
    answer_overrides: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", int(self.id))
        goals = self.goals if isinstance(self.goals, Mapping) else {g: f"Goal {g}" for g in self.goals}
        object.__setattr__(self, "goals", {int(k): str(v) for k, v in goals.items()})
        if not self.name:
            object.__setattr__(self, "name", f"Site {self.id}")
        ZoneInfo(self.timezone)  # fail loudly on a bad IANA name

    @property
    def hosts(self) -> tuple[str, ...]:
        host = urlsplit(self.main_url).hostname or ""
        return (host,) if host else ()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def local_date(self, timestamp: float) -> date:
        """The calendar day of a UTC timestamp in this site's time zone."""
        return datetime.fromtimestamp(timestamp, self.tz).date()

    def as_matomo_dict(self, *, superuser: bool) -> dict[str, Any]:
        """The shape of ``SitesManager.getSiteFromId`` in Matomo 5 (PHP 8.1+ returns the
        integer columns as JSON numbers; older stacks send them as strings)."""
        data: dict[str, Any] = {
            "idsite": self.id,
            "name": self.name,
            "main_url": self.main_url,
            "ts_created": self.ts_created,
            "ecommerce": int(self.ecommerce),
            "sitesearch": int(self.sitesearch),
            "sitesearch_keyword_parameters": "",
            "sitesearch_category_parameters": "",
            "timezone": self.timezone,
            "currency": self.currency,
            "exclude_unknown_urls": 0,
            "excluded_ips": "",
            "excluded_parameters": "",
            "excluded_user_agents": "",
            "excluded_referrers": "",
            "group": "",
            "type": "website",
            "keep_url_fragment": 0,
            "creator_login": "admin",
            "timezone_name": self.timezone,
            "currency_name": _CURRENCY_NAMES.get(self.currency, self.currency),
        }
        if not superuser:
            # Matomo hides other users' logins from non-super users.
            del data["creator_login"]
        data.update(self.answer_overrides)
        return data


def make_sites(spec: Any) -> dict[int, Site]:
    """Sites from what a caller finds convenient: ``None`` (site 1 only), ints, ``Site``
    objects, dicts of keyword arguments, or a mapping ``id -> Site | dict``."""
    if spec is None:
        return {1: Site(1)}
    sites: dict[int, Site] = {}
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            site = _make_site(value, default_id=int(key))
            sites[site.id] = site
        return sites
    for value in spec:
        site = _make_site(value)
        sites[site.id] = site
    return sites


def _make_site(value: Any, default_id: int | None = None) -> Site:
    if isinstance(value, Site):
        return value
    if isinstance(value, int):
        return Site(value)
    if isinstance(value, Mapping):
        kwargs = dict(value)
        if "idsite" in kwargs:
            kwargs["id"] = kwargs.pop("idsite")
        kwargs.setdefault("id", default_id)
        return Site(**kwargs)
    raise TypeError(f"cannot make a Site from {value!r}")


@dataclass(frozen=True)
class Token:
    """A Matomo ``token_auth`` and the access of the user it belongs to.

    Matomo access levels per site are view < write < admin; a super user has everything.
    ``secure_only`` is Matomo 5's default for new tokens: accepted only when sent securely
    (a POST form field), treated as absent in a query string or a JSON bulk body."""

    value: str
    login: str = ""
    superuser: bool = False
    write: frozenset[int] = field(default_factory=frozenset)
    admin: frozenset[int] = field(default_factory=frozenset)
    view: frozenset[int] = field(default_factory=frozenset)
    secure_only: bool = False

    def __post_init__(self) -> None:
        for name in ("write", "admin", "view"):
            object.__setattr__(self, name, frozenset(int(i) for i in getattr(self, name)))
        if not self.login:
            object.__setattr__(self, "login", "superuser" if self.superuser else f"user_{self.value[:6]}")

    def can_track(self, site_id: int) -> bool:
        """What the tracker calls "Super User / Admin / Write" authentication."""
        return self.superuser or site_id in self.write or site_id in self.admin

    def can_view(self, site_id: int) -> bool:
        return self.superuser or site_id in self.view or site_id in self.write or site_id in self.admin

    def is_admin(self, site_id: int) -> bool:
        return self.superuser or site_id in self.admin

    def access_level(self, site_id: int) -> str | None:
        if site_id in self.admin:
            return "admin"
        if site_id in self.write:
            return "write"
        if site_id in self.view:
            return "view"
        return None


def make_tokens(spec: Any) -> dict[str, Token]:
    """Tokens from ``None``, an iterable of ``Token``, or a mapping ``value -> Token | dict``
    (dict keys: superuser, write, admin, view, secure_only, login)."""
    if spec is None:
        return {}
    tokens: dict[str, Token] = {}
    if isinstance(spec, Mapping):
        for value, item in spec.items():
            if isinstance(item, Token):
                tokens[item.value] = item
            else:
                tokens[value] = Token(value=value, **dict(item or {}))
        return tokens
    for item in spec:
        if not isinstance(item, Token):
            raise TypeError(f"expected Token, got {item!r}")
        tokens[item.value] = item
    return tokens


def user_id_hash(uid: str) -> str:
    """Matomo's visitor id for a user id: the first 16 hex chars of sha1(uid)."""
    return hashlib.sha1(uid.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]


# Parameters that identify an action kind; see ``Hit.action_type``.
def action_type(params: Mapping[str, str]) -> str:
    """Which Matomo action (or request kind) a hit is, in Matomo's order of precedence."""
    get = params.get
    if get("ping") == "1":
        return "ping"
    idgoal = get("idgoal")
    if idgoal not in (None, ""):
        if idgoal == "0":
            return "ecommerce_order" if get("ec_id") else "ecommerce_cart"
        return "goal"
    if get("search"):
        return "site_search"
    if get("link"):
        return "outlink"
    if get("download"):
        return "download"
    if get("e_c") and get("e_a"):
        return "event"
    if get("c_n"):
        return "content_interaction" if get("c_i") else "content_impression"
    if get("url") or get("action_name"):
        return "pageview"
    return "other"


class Hit:
    """One recorded tracking request.

    ``time`` is UTC epoch seconds (``cdt`` if given and accepted, else arrival time);
    ``visitor_id`` is what Matomo would use: sha1(uid)[:16], else ``cid``, else ``_id``,
    else a fingerprint of IP + user agent + language."""

    __slots__ = ("bulk", "params", "pv_id", "seq", "site_id", "time", "visitor_id")

    def __init__(
        self,
        site_id: int,
        params: dict[str, str],
        time: float,
        visitor_id: str,
        pv_id: str,
        bulk: bool,
        seq: int = 0,
    ) -> None:
        self.site_id = site_id
        self.params = params
        self.time = time
        self.visitor_id = visitor_id
        self.pv_id = pv_id
        self.bulk = bulk
        self.seq = seq

    @property
    def action_type(self) -> str:
        return action_type(self.params)

    @property
    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.time, UTC)

    def as_dict(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "time": self.time,
            "visitor_id": self.visitor_id,
            "pv_id": self.pv_id,
            "bulk": self.bulk,
            "seq": self.seq,
            "action_type": self.action_type,
            "params": self.params,
        }

    def __repr__(self) -> str:
        return f"Hit(site={self.site_id}, visitor={self.visitor_id}, time={self.time}, type={self.action_type})"


@dataclass
class Visit:
    """Hits of one visitor that Matomo would count as one visit."""

    site_id: int
    visitor_id: str
    hits: list[Hit]
    campaign: tuple[str, str] | None = None
    # Host names of the site's own URLs: a referrer from them is a direct entry.
    site_hosts: tuple[str, ...] = ()
    # Matomo's visitor_returning: the visitor id had an earlier visit (see group_visits).
    returning: bool = False

    @property
    def start(self) -> float:
        return self.hits[0].time

    @property
    def end(self) -> float:
        return self.hits[-1].time

    @property
    def actions(self) -> list[Hit]:
        """Hits that are actions (pings only extend the time on the last page)."""
        return [h for h in self.hits if h.action_type not in ("ping", "goal", "ecommerce_order", "ecommerce_cart")]

    @property
    def matomo_actions(self) -> int:
        """Matomo's ``visit_total_actions``: page views, downloads, outlinks, site searches
        and events (content impressions and interactions are not counted)."""
        return sum(1 for h in self.hits if h.action_type in ("pageview", "download", "outlink", "site_search", "event"))

    @property
    def pageviews(self) -> int:
        return sum(1 for h in self.hits if h.action_type == "pageview")

    @property
    def is_bounce(self) -> bool:
        return len(self.actions) == 1

    @property
    def referrer(self) -> tuple[str, str]:
        """(channel, name) as Matomo files this visit: from its first hit's ``urlref`` and
        landing ``url`` (campaign, direct, search, social or website); see ``referrers``."""
        first = self.hits[0].params
        return classify(first.get("urlref", ""), first.get("url", ""), self.site_hosts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "site_id": self.site_id,
            "visitor_id": self.visitor_id,
            "start": self.start,
            "end": self.end,
            "hits": len(self.hits),
            "actions": len(self.actions),
            "pageviews": self.pageviews,
            "campaign": list(self.campaign) if self.campaign else None,
            "referrer": list(self.referrer),
            "returning": self.returning,
        }


def group_visits(hits: Iterable[Hit], site: Site, *, inactivity: float = VISIT_INACTIVITY_SECONDS) -> list[Visit]:
    """Group one site's hits into visits like Matomo does.

    A hit starts a new visit for its visitor id when there is no current visit, when it
    comes more than ``inactivity`` seconds after the visit's last hit, when it falls on
    another calendar day in the site's time zone (Matomo splits visits at the site's
    midnight), when it carries ``new_visit=1``, or when it carries a campaign that differs
    from the visit's (``create_new_visit_when_campaign_changes``, a Matomo default).
    A ``ping=1`` hit never starts a visit: one that cannot extend the current visit is
    dropped, as Matomo drops it."""
    tz = site.tz
    site_hosts = site.hosts
    by_visitor: dict[str, list[Hit]] = {}
    for hit in hits:
        by_visitor.setdefault(hit.visitor_id, []).append(hit)
    visits: list[Visit] = []
    day_cache: dict[int, date] = {}

    def local_day(ts: float) -> date:
        # Cache per UTC minute: cheap and exact enough (no time zone changes mid-minute).
        key = int(ts // 60)
        found = day_cache.get(key)
        if found is None:
            found = datetime.fromtimestamp(key * 60, tz).date()
            day_cache[key] = found
        return found

    for visitor_id, visitor_hits in by_visitor.items():
        visitor_hits.sort(key=lambda h: (h.time, h.seq))
        current: Visit | None = None
        for hit in visitor_hits:
            is_ping = hit.params.get("ping") == "1"
            campaign = campaign_of(hit.params)
            new = (
                current is None or hit.time - current.end > inactivity or local_day(hit.time) != local_day(current.end)
            )
            if current is not None and not new and not is_ping:
                new = hit.params.get("new_visit") == "1" or (campaign is not None and campaign != current.campaign)
            if new or current is None:
                if is_ping:
                    continue
                current = Visit(
                    site_id=site.id,
                    visitor_id=visitor_id,
                    hits=[hit],
                    campaign=campaign,
                    site_hosts=site_hosts,
                    returning=current is not None,
                )
                visits.append(current)
            else:
                current.hits.append(hit)
    visits.sort(key=lambda v: (v.start, v.hits[0].seq))
    return visits
