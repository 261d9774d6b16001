"""Who visits: new visitors, and a pool of returning visitors with stable identities.

A returning visitor is an index into a fixed-size pool. Everything about them (visitor
id, persona, device, browser, language, IP, login) derives from ``(seed, index)``, so
the same visitor comes back with the same id and device on any day, in any process,
without storing anything. The pool remembers only each visitor's last visit end (one
float each) so two visits of one visitor never overlap or come within 30 minutes of
each other (Matomo would merge them).

Pool size is about three days of returning visits: a pooled visitor comes back every
few days, and over a week nearly all of them have been seen before.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from random import Random

from .profile import DEVICES, PERSONAS, Profile
from .sampling import Weighted, derive_seed
from .site_model import SiteModel

VISIT_GAP_SECONDS = 1800.0  # Matomo's visit_standard_length
POOL_DAYS = 3.0
POOL_MIN, POOL_MAX = 50, 200_000
POOL_ATTEMPTS = 4


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
    """Draws visitor traits from any Random, in a fixed order (determinism)."""

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

    def draw(self, rng: Random, pooled: bool) -> Traits:
        site = self.site
        persona = self.personas.pick(rng)
        device = self.devices.pick(rng)
        ua, resolutions, uadata = site.user_agents[device].pick(rng)
        res = resolutions.pick(rng)
        ip = None
        if self.use_ip:
            country = site.countries.pick(rng)
            lang = country.languages[int(rng.random() * len(country.languages))]
            base, size = site.country_networks[country.code].pick(rng)
            # Skip the network and broadcast addresses of the block.
            n = base + 1 + int(rng.random() * (size - 2))
            ip = f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        else:
            lang = site.languages.pick(rng)
        uid = None
        if pooled and rng.random() < self.logged_in_share:
            uid = f"user-{rng.getrandbits(48):012x}"
        return Traits(persona, device, ua, res, uadata if self.client_hints else "", lang, ip, uid)


def pool_size(profile: Profile) -> int:
    wanted = math.ceil(profile.visits_per_day * profile.returning_visitor_share * POOL_DAYS)
    return max(POOL_MIN, min(POOL_MAX, wanted))


class VisitorPool:
    def __init__(self, seed: int | str, size: int):
        self.key = derive_seed("visitors", seed)
        self.size = size
        self.last_end = array("d", [-math.inf]) * size

    def free_index(self, rng: Random, start: float) -> int | None:
        """A pooled visitor whose last visit ended 30+ minutes before ``start``."""
        last_end = self.last_end
        for _ in range(POOL_ATTEMPTS):
            index = int(rng.random() * self.size)
            if last_end[index] + VISIT_GAP_SECONDS < start:
                return index
        return None  # all tried visitors are busy: the caller makes a new visitor

    def visitor_seed(self, index: int) -> int:
        return derive_seed(self.key, index)
