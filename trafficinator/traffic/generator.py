"""Builds one visit at a time: visitor, channel, hits, times.

A ``Generator`` holds the bounded state of one stream (the returning-visitor pool and
the order counter) and compiled lookup tables; all randomness comes from the ``Random``
the stream passes in, so a stream is reproducible hit for hit.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from datetime import date
from random import Random

from .catalog import Catalog
from .ecommerce import OrderPlanner
from .encoding import encode_pair, encode_params
from .funnel_visits import FunnelVisits
from .funnels import FunnelPartition, FunnelSpec, validate_funnels
from .goals import SiteGoals
from .hits import HitFactory
from .ordinary import OrdinaryVisits
from .personas import behaviours
from .profile import CHANNELS, Profile
from .sampling import DigestDraws, Weighted
from .site_model import compile_site
from .visit import Hit, Visit
from .visitors import Members, Population, Traits, TraitSampler

_CLOCK = [f"{n}" for n in range(60)]
# (h, m) of each minute of the day: one lookup per hit instead of two and their arithmetic.
_HOUR_MINUTE = [(_CLOCK[minute // 60], _CLOCK[minute % 60]) for minute in range(1440)]
# The same, encoded, up to the second's value: "&h=13&m=5&s=".
_HOUR_MINUTE_QUERY = [f"&h={hour}&m={minute}&s=" for hour, minute in _HOUR_MINUTE]
# Returning members whose traits and visitor id are kept for their next visit (a loyal
# core member comes back often); about 1.5 MB at most. Evicted first in, first out.
MEMBER_CACHE_SIZE = 4096
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


# "&ua=...&lang=...&res=...[&uadata=...]" by browser: a few thousand combinations.
_BROWSER_QUERY_LIMIT = 10_000
_browser_queries: dict[tuple[str, str, str, str], str] = {}


def _browser_query(ua: str, lang: str, res: str, uadata: str) -> str:
    """A visitor's browser params encoded, as a visit's constant params end with them."""
    key = (ua, lang, res, uadata)
    found = _browser_queries.get(key)
    if found is None:
        if len(_browser_queries) >= _BROWSER_QUERY_LIMIT:
            _browser_queries.clear()
        params = {"ua": ua, "lang": lang, "res": res}
        if uadata:
            params["uadata"] = uadata
        found = _browser_queries[key] = "&" + encode_params(params)
    return found


def _uid_visitor_id(uid: str) -> str:
    """Matomo's visitor id for a user id: the first 16 hex characters of its sha1."""
    return hashlib.sha1(uid.encode(), usedforsecurity=False).hexdigest()[:16]


class TrafficConfigError(ValueError):
    """The profile or funnels cannot generate traffic; ``problems`` is (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("; ".join(f"{field}: {message}" for field, message in self.problems))


class Generator:
    def __init__(
        self,
        profile: Profile,
        catalog: Catalog | None,
        funnels: Sequence[FunnelSpec],
        seed: int | str,
        site_id: int,
        token_present: bool,
        order_id_prefix: str,
        site_url: str | None,
        stream_label: str,
        goals: SiteGoals | None = None,
        population: Population | None = None,
    ):
        problems = profile.validate() + validate_funnels(list(funnels))
        if problems:
            raise TrafficConfigError(problems)
        catalog = catalog or Catalog.load_default()
        site = compile_site(catalog, site_url)
        self.site = site
        self.hits = HitFactory(site, profile.page_performance, order_id_prefix, (seed, stream_label))
        planner = OrderPlanner(profile, site.products, site.product_picker)
        self.ordinary = OrdinaryVisits(profile, site, self.hits, planner)
        self.funnel_visits = FunnelVisits(site, self.hits, profile.pause_min, profile.pause_max)
        self.order_tag_seed: tuple[object, ...] = (seed, stream_label)
        self.partition = FunnelPartition(funnels)
        self.any_funnel = bool(self.partition.funnels)
        self.behaviours = behaviours(profile)
        self.traits = TraitSampler(profile, site, use_ip=token_present and profile.randomize_countries)
        self.profile = profile
        # Without a population the stream starts its own on the day of its first visit,
        # keyed by the stream so that two streams never share visitors by accident.
        self.own_population_seed = f"{seed}:{stream_label}"
        self.population = population
        self.returning_share = profile.returning_visitor_share
        self._start_state(part=0, parts=1)
        self.direct_share = profile.direct_traffic_share
        self.site_id = str(site_id)
        # The encoded start of every visit's constant params, up to the visitor id.
        self._constant_query = encode_params({"idsite": self.site_id, "rec": "1", "apiv": "1", "send_image": "0"})
        # None: the site's goals are unknown and every conversion is sent as generated.
        self.goals = goals
        available = {
            "search": bool(site.search_engines),
            "social": bool(site.social),
            "websites": bool(site.websites),
            "campaign": bool(site.campaigns),
        }
        # A channel the catalog has no sources for sends its share to direct.
        self.channels = Weighted(CHANNELS, [profile.channel_mix.get(c, 0.0) if available[c] else 0.0 for c in CHANNELS])
        self.any_channel = bool(self.channels)  # (a call: asked once, not per visit)
        self.campaign_queries = [site.campaign_query(c, profile.campaign_param_style) for c in site.campaigns.items]
        self.campaign_landings = [site.absolute(c.landing) if c.landing else "" for c in site.campaigns.items]

    def _start_state(self, part: int, parts: int) -> None:
        """The stream's state, all of it: what a fork starts afresh."""
        self.part = part
        self.parts = parts
        population = self.population
        self.members = Members(population, self.profile, part, parts) if population is not None else None
        self._day_key: int | None = None  # the local day (days since 1970) of the last visit
        self._member_cache: dict[int, tuple[Traits, str]] = {}
        # The parts share the population, so they share the cache's budget.
        self._member_cache_size = max(64, MEMBER_CACHE_SIZE // parts)
        self.visits_made = 0
        self.returning_made = 0

    def fork(self, part: int, parts: int) -> Generator:
        """The generator of sub-stream ``part`` of ``parts`` (see stream.live_visits): the
        same compiled tables, its own state (members: this part's share of the
        population; its own order counter and tag, so order ids never collide)."""
        other = copy.copy(self)
        other.hits = copy.copy(self.hits)
        other.hits.reset_orders((*self.order_tag_seed, "part", part))
        other.ordinary = copy.copy(self.ordinary)
        other.ordinary.hits = other.hits
        other.funnel_visits = copy.copy(self.funnel_visits)
        other.funnel_visits.hits = other.hits
        other._start_state(part, parts)
        return other

    def visit(self, rng: Random, index: int, start: float, utc_offset: float, limit: float) -> Visit:
        """The visit starting at ``start`` whose hits all come before ``limit``."""
        random = rng.random
        u = random()  # drawn with or without funnels: the stream is the same
        funnel = self.partition.pick(u) if self.any_funnel else None

        members = self.members
        day_key = int((start + utc_offset) // 86400)
        if day_key != self._day_key or members is None:
            # A new local day (once a day: dates are slow next to the rest of a visit).
            self._day_key = day_key
            local_day = date.fromordinal(_EPOCH_ORDINAL + day_key)
            if members is None:
                population = Population(self.own_population_seed, local_day)
                members = self.members = Members(population, self.profile, self.part, self.parts)
            members.start_day(members.population.day_number(local_day))
        # Returning visits come only from members Matomo has seen (see Population). When
        # none is free (a population's first hours), later visits catch up on the share.
        share = self.returning_share
        deficit = share * self.visits_made - self.returning_made
        member = None
        returning = False
        if share > 0 and (random() < share or deficit >= 1.0):
            member = members.free_member(rng, start)
            returning = member is not None
        if member is None:
            member = members.join()
        if member is not None:
            traits, cid = self._member(member, returning)
            uid = traits.uid if returning else None  # the first visit is anonymous; logins come later
        else:
            traits = self.traits.draw(rng, pooled=False)
            cid = f"{rng.getrandbits(64):016x}"
            uid = None
        self.visits_made += 1
        self.returning_made += returning

        channel, referrer, campaign_query, campaign_landing = self._channel(rng)
        if funnel is not None:
            entries = self.funnel_visits.build(rng, funnel, traits.device, referrer, campaign_query)
        else:
            entries = self.ordinary.build(
                rng, self.behaviours[traits.persona], traits.device, referrer, campaign_query, campaign_landing
            )

        # A visit crossing local midnight would be split by Matomo: squeeze the few that
        # start too late to end in time (keeps starts in order, unlike shifting them).
        start = min(start, limit)
        duration = entries[-1][0]
        if start + duration > limit:
            scale = (limit - start) / duration
            entries = [(t * scale, params, query) for t, params, query in entries]

        first_t, first, first_query = entries[0]
        if first_query is not None and "new_visit" not in first:
            entries[0] = (first_t, first, first_query + "&new_visit=1")
        else:
            entries[0] = (first_t, first, None)
        first["new_visit"] = "1"
        hits: list[Hit] = []
        append = hits.append
        getrandbits = rng.getrandbits
        clock = _CLOCK
        hour_minute, hour_minute_query = _HOUR_MINUTE, _HOUR_MINUTE_QUERY
        local_start = start + utc_offset
        for t, params, query in entries:
            # Each hit leaves here encoded (Hit.query); builders encode page views from
            # fragments of the catalog page, the rest is encoded now, before h/m/s/rand.
            if query is None:
                query = encode_params(params)
            minute, second = divmod(int(local_start + t) % 86400, 60)
            params["h"], params["m"] = hour_minute[minute]  # assigned in this order: h, then m
            params["s"] = second_text = clock[second]
            params["rand"] = rand = str(getrandbits(30))
            append(Hit(start + t, params, f"{query}{hour_minute_query[minute]}{second_text}&rand={rand}"))

        if self.goals is not None:
            # After the hits got their times and `rand`: leaving a conversion out must not
            # change the rest of the stream (the same seed gives the same visits).
            hits = self._accepted_conversions(hits)

        constant = {"idsite": self.site_id, "rec": "1", "apiv": "1", "send_image": "0", "cid": cid, "_id": cid}
        # The same params encoded as they are added (Visit.query): cid and _id need no quoting.
        query = f"{self._constant_query}&cid={cid}&_id={cid}"
        if uid:
            constant["uid"] = uid
            # Matomo looks a uid visitor whose id it has never seen up by its configuration
            # fingerprint (OS, browser, plugin flags, IP, language) and adopts a concurrent
            # visit with an empty user id (Tracker/Model::findVisitor). Its id is known
            # here (`cid` above, sent since the member's first visit), but if that visit
            # was never recorded, and without `cip` every visitor shares one IP, it would
            # take over an anonymous visit. Logged-in browsers report cookie support (their
            # session needs it); anonymous visitors send no plugin flags, so the two
            # fingerprints never match.
            constant["cookie"] = "1"
            query = f"{query}&{encode_pair('uid', uid)}&cookie=1"
        constant["ua"] = traits.ua
        constant["lang"] = traits.lang
        constant["res"] = traits.res
        if traits.uadata:
            constant["uadata"] = traits.uadata
        query += _browser_query(traits.ua, traits.lang, traits.res, traits.uadata)
        if traits.ip:
            constant["cip"] = traits.ip
            query = f"{query}&{encode_pair('cip', traits.ip)}"

        if member is not None:
            members.visited(member, start, hits[-1].due, joined=not returning)
        return Visit(
            index,
            cid,
            uid,
            start,
            traits.persona,
            traits.device,
            channel,
            returning,
            funnel.name if funnel is not None else None,
            constant,
            hits,
            self.part,
            query,
        )

    def _member(self, member: int, returning: bool) -> tuple[Traits, str]:
        """A member's traits and visitor id, the same in every stream of the population.

        Kept for the next visit only when the member comes back (``returning``), not on
        its first visit: a new member cannot return within 30 minutes, and a busy stream,
        where every new visitor joins, would evict it long before it does (caching them
        all cost ~3 % per hit in a new 50 M visits/day stream and helped none)."""
        cache = self._member_cache
        found = cache.get(member)
        if found is not None:
            return found
        assert self.members is not None
        draws = DigestDraws(self.members.member_digest(member))
        traits = self.traits.draw(draws, pooled=True)
        # A logged-in member's id is Matomo's id for its user id from the first visit on,
        # so the visit that later sends `uid` is found by id, never by fingerprint.
        cid = _uid_visitor_id(traits.uid) if traits.uid else f"{draws.seed:016x}"
        found = (traits, cid)
        if returning:
            if len(cache) >= self._member_cache_size:
                del cache[next(iter(cache))]
            cache[member] = found
        return found

    def _accepted_conversions(self, hits: list[Hit]) -> list[Hit]:
        """Conversions as the site's goal ids; those for goals it lacks are left out."""
        assert self.goals is not None
        kept = []
        for hit in hits:
            idgoal = hit.params.get("idgoal")
            if idgoal is not None and idgoal != "0":
                found = self.goals.convert(int(idgoal))
                if found is None:
                    continue
                hit.params["idgoal"] = str(found)
                hit.query = encode_params(hit.params)
            kept.append(hit)
        if not kept:  # a visit of nothing but a left-out conversion: keep it (it is 1 hit)
            return hits
        first = kept[0]
        # The visit's first hit already says new_visit=1 (params and query); only a hit
        # that became first because the one before it was left out needs it added.
        if first is not hits[0]:
            first.params["new_visit"] = "1"
            first.query = encode_params(first.params)
        return kept

    def _channel(self, rng: Random) -> tuple[str, str | None, str, str]:
        """(channel, referrer URL or None, campaign query, campaign landing URL)."""
        if not self.any_channel or rng.random() < self.direct_share:
            return "direct", None, "", ""
        site = self.site
        channel = self.channels.pick(rng)
        if channel == "search":
            referrers = site.search_referrers[site.search_engines.pick(rng)]
            term = site.term_picker.pick(rng) if site.search_terms else 0
            return channel, referrers[term], "", ""
        if channel == "social":
            return channel, site.social.pick(rng), "", ""
        if channel == "websites":
            return channel, site.websites.pick(rng), "", ""
        index = site.campaigns.index_of(rng.random())
        campaign = site.campaigns.items[index]
        return (channel, campaign.referrer or None, self.campaign_queries[index], self.campaign_landings[index])
