"""Shared samples: generating them once keeps the suite fast."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from trafficinator.traffic import Profile, day_visits

# A Wednesday in winter (CET, no DST change).
DAY = date(2025, 3, 5)
SAMPLE_VISITS = 12_000


def make_profile(**changes) -> Profile:
    values: dict[str, Any] = {"visits_per_day": SAMPLE_VISITS}
    values.update(changes)
    return Profile(**values)


def make_day(profile: Profile | None = None, count: int = 2_000, seed: int | str = 1, **kwargs):
    return list(day_visits(profile or make_profile(), day=kwargs.pop("day", DAY), count=count, seed=seed, **kwargs))


@pytest.fixture(scope="session")
def sample() -> list:
    """12,000 visits of one day with the default profile, no token."""
    return make_day(count=SAMPLE_VISITS, seed=11, order_id_prefix="run1-20250305")


@pytest.fixture(scope="session")
def token_sample() -> list:
    """5,000 visits with a token and randomized countries (so hits carry cip)."""
    profile = make_profile(randomize_countries=True)
    return make_day(profile, count=5_000, seed=12, token_present=True)
