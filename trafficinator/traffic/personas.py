"""Personas: researcher, buyer and casual visitors behave differently.

Each persona multiplies the profile's per-visit probabilities by a factor. Factors are
normalised over the profile's persona mix, so the site-wide rates still equal the
profile's values (unless a persona's rate would pass 1 and is capped). Page counts and
dwell times are skewed inside the profile's ranges, never outside them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .profile import PERSONAS, Profile

# knob -> factor per persona (researcher, buyer, casual)
_FACTORS = {
    "search": (1.8, 1.2, 0.5),
    "outlink": (1.5, 0.6, 0.9),
    "download": (2.2, 0.6, 0.6),
    "click_event": (1.2, 1.2, 0.8),
    "random_event": (1.3, 0.9, 0.9),
    "order": (0.4, 4.0, 0.3),
    "abandon": (0.8, 2.5, 0.6),
    "goal": (1.5, 1.0, 0.8),
    "content": (1.0, 1.1, 1.0),
}
_PROFILE_FIELDS = {
    "search": "site_search_probability",
    "outlink": "outlinks_probability",
    "download": "downloads_probability",
    "click_event": "click_events_probability",
    "random_event": "random_events_probability",
    "order": "ecommerce_probability",
    "abandon": "cart_abandonment_probability",
    "goal": "goal_probability",
    "content": "content_impressions_probability",
}
# Exponent on a uniform draw: < 1 skews towards the top of a range, > 1 towards the bottom.
_PAGE_SKEW = {"researcher": 0.5, "buyer": 1.0, "casual": 2.0}
_DWELL_SKEW = {"researcher": 0.6, "buyer": 1.0, "casual": 1.6}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """One persona's rates, already conditioned on the visit not being a bounce."""

    name: str
    page_skew: float
    dwell_skew: float
    search: float
    outlink: float
    download: float
    click_event: float
    random_event: float
    order: float
    abandon: float
    goal: float
    content: float


def behaviours(profile: Profile) -> dict[str, Behaviour]:
    """Per-persona rates for non-bounce visits, averaging to the profile's rates."""
    non_bounce = profile.non_bounce_share
    mix = [profile.persona_mix.get(name, 0.0) for name in PERSONAS]
    result = {}
    for index, name in enumerate(PERSONAS):
        rates = {}
        for knob, factors in _FACTORS.items():
            mean_factor = sum(m * f for m, f in zip(mix, factors, strict=True)) or 1.0
            base = getattr(profile, _PROFILE_FIELDS[knob])
            conditional = base / non_bounce if non_bounce > 0 else 0.0
            rates[knob] = min(1.0, conditional * factors[index] / mean_factor)
        result[name] = Behaviour(name, _PAGE_SKEW[name], _DWELL_SKEW[name], **rates)
    return result
