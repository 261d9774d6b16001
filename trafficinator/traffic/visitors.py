"""Who visits: new visitors, and members of a population who come back.

A member is an index into a population (see ``Population``). Everything about them
(visitor id, persona, device, browser, language, IP, login) derives from
``(seed, index)``, so the same visitor comes back with the same id and device on any
day, in any process, without storing anything. A stream remembers only the last visit
end of members seen in the last half hour or so, so two visits of one visitor never
overlap or come within 30 minutes of each other (Matomo would merge them).
"""

from __future__ import annotations

import hashlib
import math
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date
from random import Random

from .profile import DEVICES, PERSONAS, Profile
from .sampling import DIGEST_SIZE, Draws, Weighted, derive_seed
from .site_model import SiteModel

VISIT_GAP_SECONDS = 1800.0  # Matomo's visit_standard_length
MEMBER_ATTEMPTS = 6
# Of each day's new visitors, this share stays (becomes a member who may return): low
# enough that a quiet day (weekend, caps) still fills the intake the next days rely on.
JOIN_SHARE_OF_NEW = 0.4
CORE_SHARE, CORE_VISITS = 0.1, 0.5  # 10 % of the members make half the returning visits
# How often (in stream seconds) a stream forgets the members that can no longer be busy.
PRUNE_INTERVAL_SECONDS = VISIT_GAP_SECONDS / 4
# After MEMBER_ATTEMPTS found no free member, stream seconds before looking again. In a
# stream's first half hour every member it knows is busy (they all joined in it), and
# each returning visit, and then each visit catching up on the share, probed six members
# in vain: 8 % of a busy new stream's generation. Members become free 30 minutes after a
# visit, so a second's pause delays a return by at most a second; a stream slower than
# a visit per second is never paused.
SEARCH_PAUSE_SECONDS = 1.0


@dataclass(slots=True)
class Traits:
    persona: str
    device: str
    ua: str
    res: str
    uadata: str
    lang: str
    ip: str | None
    uid: str | None


class TraitSampler:
    """Draws visitor traits from a Random (a new visitor) or a member's DigestDraws, in a
    fixed order (determinism)."""

    def __init__(self, profile: Profile, site: SiteModel, use_ip: bool):
        self.personas = Weighted(PERSONAS, [profile.persona_mix.get(p, 0.0) for p in PERSONAS])
        available = [d for d in DEVICES if site.user_agents[d]]
        self.devices = Weighted(available, [profile.device_mix.get(d, 0.0) for d in available])
        if not self.devices:  # the mix only names devices the catalog has no browser for
            self.devices = Weighted(available, [1.0] * len(available))
        self.site = site
        self.client_hints = profile.client_hints
        self.use_ip = use_ip and bool(site.countries)
        self.logged_in_share = profile.logged_in_share

    def draw(self, rng: Draws, pooled: bool) -> Traits:
        site = self.site
        random = rng.random
        # Weighted.pick written out (see Weighted.table): a visit draws its traits once.
        items, bounds, total = self.personas.table
        persona = items[bisect_right(bounds, random() * total)]
        items, bounds, total = self.devices.table
        device = items[bisect_right(bounds, random() * total)]
        agents, bounds, total = site.user_agents[device].table
        ua, resolutions, uadata = agents[bisect_right(bounds, random() * total)]
        items, bounds, total = resolutions.table
        res = items[bisect_right(bounds, random() * total)]
        ip = None
        if self.use_ip:
            country = site.countries.pick(rng)
            lang = country.languages[int(rng.random() * len(country.languages))]
            base, size = site.country_networks[country.code].pick(rng)
            # Skip the network and broadcast addresses of the block.
            n = base + 1 + int(rng.random() * (size - 2))
            ip = f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        else:
            items, bounds, total = site.languages.table
            lang = items[bisect_right(bounds, random() * total)]
        uid = None
        if pooled and rng.random() < self.logged_in_share:
            uid = f"user-{rng.getrandbits(48):012x}"
        return Traits(persona, device, ua, res, uadata if self.client_hints else "", lang, ip, uid)


@dataclass(frozen=True)
class Population:
    """The visitors a stream's returning visits come from, possibly shared between streams.

    Matomo 5 counts a visit as returning only when it already knows the visitor id from
    an earlier visit (``plugins/CoreHome/Columns/VisitorReturning.php``). So returning
    visits here always come from *members*: visitors whose first visit was sent earlier.
    Members join deterministically: on the population's k-th day (``step_days`` apart,
    counted from ``start_day``, the site's local days) the first ``joins_per_day`` new
    visitors become members ``J*k .. J*k+J-1``; a member's id and traits derive from
    ``(seed, member)``. A stream for a later day therefore knows every member of the days
    before it without storing anything, and a live run started with the same population
    as an earlier backfill (same seed, start, size) continues its visitors.

    ``known_days``: how many population days before the stream's first day actually had
    traffic (a live run after a backfill: the backfill's days); None means all of them.
    ``visits_per_day`` sets the size of the daily intake (default: the profile's rate).
    """

    seed: int | str
    start_day: date
    step_days: int = 1
    known_days: int | None = None
    visits_per_day: int | None = None

    def joins_per_day(self, profile: Profile) -> int:
        visits = self.visits_per_day or profile.visits_per_day
        return max(1, int(visits * (1.0 - profile.returning_visitor_share) * JOIN_SHARE_OF_NEW))

    def day_number(self, local_day: date) -> int:
        return max(0, (local_day - self.start_day).days // max(1, self.step_days))


class Members:
    """One stream's view of a population: who is known, who may come back now.

    Returning visits are spread over the known members with a loyal core: the first
    ``CORE_SHARE`` of the members get ``CORE_VISITS`` of the returning visits, the rest
    share the remainder evenly, so a few visitors come back often and most rarely, as in
    real audiences. A member is free when its last visit in this stream ended 30 minutes
    before (Matomo would merge the two visits otherwise)."""

    def __init__(self, population: Population, profile: Profile, part: int = 0, parts: int = 1):
        if not 0 <= part < parts:
            raise ValueError(f"part {part} is not one of 0..{parts - 1}")
        self.population = population
        self.key = derive_seed("visitors", population.seed)
        # A member's digest (see member_digest) without hashing the key's text each time:
        # a copy of a hash that has already seen it.
        self._member_hash = hashlib.blake2b(f"{self.key}\x1f".encode(), digest_size=DIGEST_SIZE)
        self.joins = population.joins_per_day(profile)
        # A stream split into sub-streams (stream.live_visits) gives each its own members:
        # those whose index is ``part`` modulo ``parts``, so a visitor only ever returns in
        # the sub-stream it joined in (one loader sends all of its visits, in order).
        self.part = part
        self.parts = parts
        # When each member's last visit ended, for those that may still be busy (see
        # visited): a returning visit's end by member, and the first visit's end of each
        # of today's joiners by join order (8 bytes each, where a dict entry takes ~110:
        # at 50 M visits/day nearly every visit of a new stream's first half hour joins).
        self.last_end: dict[int, float] = {}
        self._joined_ends = array("d")
        self._joined_from = 0  # today's join index of _joined_ends[0] (older ones forgotten)
        self.day: int | None = None
        self.joined_today = 0
        # This part's members known from the days before today, and those below today's
        # intake (more than the first when the known days end before today: a live run
        # after a backfill); set by start_day.
        self._known_before = 0
        self._below_today = 0
        self._prune_at = 0.0  # stream time of the next prune (see visited)
        self._search_from = -math.inf  # stream time of the next search (see free_member)

    def _count_below(self, limit: int) -> int:
        """This part's members among members [0, limit)."""
        return max(0, (limit - self.part + self.parts - 1) // self.parts)

    def start_day(self, day_number: int) -> None:
        if day_number != self.day:
            # Yesterday's joiners are no longer today's: those still remembered go to the
            # map (a later return's end, already there, wins). The next prune trims them.
            last_end, first = self.last_end, self._below_today + self._joined_from
            for index, end in enumerate(self._joined_ends):
                last_end.setdefault(self.part + self.parts * (first + index), end)
            self._joined_ends = array("d")
            self._joined_from = 0
            self.day = day_number
            self.joined_today = 0
            known_days = self.population.known_days
            before = day_number if known_days is None else min(day_number, known_days)
            self._known_before = self._count_below(self.joins * before)
            self._below_today = self._count_below(self.joins * day_number)

    def known(self) -> int:
        """How many of this part's members have had a visit before now (earlier known
        days, or joined today)."""
        return self._known_before + self.joined_today

    def known_member(self, rank: int) -> int:
        """The ``rank``-th of this part's known members (0 <= rank < known())."""
        if rank >= self._known_before:  # joined today
            rank += self._below_today - self._known_before
        return self.part + self.parts * rank

    def join(self) -> int | None:
        """The member a new visitor becomes, or None once today's intake is full."""
        member = self.part + self.parts * (self._below_today + self.joined_today)
        if member >= self.joins * ((self.day or 0) + 1):
            return None
        self.joined_today += 1
        return member

    def free_member(self, rng: Random, start: float) -> int | None:
        """A known member free to visit at ``start`` (its last visit ended 30 minutes
        before), found in MEMBER_ATTEMPTS draws, else None (and no search for the next
        SEARCH_PAUSE_SECONDS of stream time, so no draws either)."""
        known = self._known_before + self.joined_today  # known(), inlined: runs for every returning visit
        if known == 0 or start < self._search_from:
            return None
        core = max(1, int(known * CORE_SHARE))
        last_end, joined_ends = self.last_end, self._joined_ends
        random = rng.random
        # known_member() and last_visit_end() inlined: a new stream's first half hour tries
        # all attempts in vain.
        known_before, part, parts = self._known_before, self.part, self.parts
        today_shift = self._below_today - known_before
        joined_from = known_before + self._joined_from
        for _ in range(MEMBER_ATTEMPTS):
            rank = int(random() * (core if random() < CORE_VISITS else known))
            if rank >= known_before:  # joined today: rank - known_before is its join index
                member = part + parts * (rank + today_shift)
                end = last_end.get(member)
                if end is None:
                    index = rank - joined_from
                    end = joined_ends[index] if 0 <= index < len(joined_ends) else -math.inf
            else:
                member = part + parts * rank
                end = last_end.get(member, -math.inf)
            if end + VISIT_GAP_SECONDS < start:
                return member
        self._search_from = start + SEARCH_PAUSE_SECONDS
        return None

    def last_visit_end(self, member: int) -> float | None:
        """When ``member``'s last visit ended, if it may still be busy (None: free)."""
        end = self.last_end.get(member)
        if end is None:
            index = self._join_index(member) - self._joined_from
            if 0 <= index < len(self._joined_ends):
                return self._joined_ends[index]
        return end

    def _join_index(self, member: int) -> int:
        """Its position in today's intake (negative or past it: not one of today's)."""
        return (member - self.part) // self.parts - self._below_today

    def visited(self, member: int, start: float, end: float, *, joined: bool = False) -> None:
        """``member``'s visit from ``start`` (no earlier than the visit before it) to
        ``end``; ``joined``: its first, just after ``join()`` returned it."""
        if joined:
            index = self._join_index(member) - self._joined_from
            ends = self._joined_ends
            if index == len(ends):  # joiners visit in join order
                ends.append(end)
            elif 0 <= index < len(ends):
                ends[index] = end
            else:
                self.last_end[member] = end
        else:
            self.last_end[member] = end
        if start >= self._prune_at:
            # A member whose last visit ended 30 minutes before this start is free for every
            # later visit (starts only grow), as if never seen: forget it. Pruned by stream
            # time, this holds at most ~38 minutes of visits; by count (every 20,000 visits
            # of a part, keeping an hour) it held ~1.7 million entries and ~220 MB for one
            # target at 50 M visits/day after an hour. One second of slack keeps the float
            # comparison in free_member on the same side.
            self._prune_at = start + PRUNE_INTERVAL_SECONDS
            horizon = start - VISIT_GAP_SECONDS - 1.0
            self.last_end = {m: t for m, t in self.last_end.items() if t >= horizon}
            # Joiners come in start order, so their ends nearly do: forget the leading ones
            # that ended before the horizon (a later one that did too is free all the same).
            ends, done = self._joined_ends, 0
            while done < len(ends) and ends[done] < horizon:
                done += 1
            if done:
                del ends[:done]
                self._joined_from += done

    def member_digest(self, member: int) -> bytes:
        """A member's own hash (of the population's key and its number), the same in
        every stream and shard: its visitor id and the draws of its traits
        (sampling.DigestDraws)."""
        hasher = self._member_hash.copy()
        hasher.update(str(member).encode())
        return hasher.digest()
