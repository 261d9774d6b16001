"""The traffic model: what a visit to a Matomo-tracked site looks like.

Plain Python, no Django and no I/O beyond reading its own data files, so live runs,
backfills, previews and tests all use the same code. Start here:

    from trafficinator.traffic import Profile, Catalog, day_visits, encode_visit

    for visit in day_visits(Profile(), day=date(2025, 3, 3), count=1000, seed=7):
        bodies = encode_visit(visit, cdt="datetime")
"""

from .catalog import Catalog, CatalogError, parse_url_list
from .clock import local_day_bounds, resolve_timezone
from .curves import DAILY_CURVES, WEEKLY_CURVES, expected_visits
from .encoding import CdtFormat, encode_entries, encode_params, encode_visit, hit_queries, visit_head
from .funnels import (
    MAX_DELAY_SECONDS,
    STEP_KINDS,
    FunnelSimulation,
    FunnelSpec,
    FunnelStep,
    parse_items,
    simulate_funnel,
    validate_funnels,
)
from .generator import TrafficConfigError
from .goals import SiteGoals
from .profile import Profile
from .rules import is_absolute_url
from .stream import day_visits, live_visits, sample_funnel_visit, visits_for_day_count
from .validation import validate_hit, validate_visit
from .visit import Hit, Visit, hit_kind
from .visitors import Population

__all__ = [
    "DAILY_CURVES",
    "MAX_DELAY_SECONDS",
    "STEP_KINDS",
    "WEEKLY_CURVES",
    "Catalog",
    "CatalogError",
    "CdtFormat",
    "FunnelSimulation",
    "FunnelSpec",
    "FunnelStep",
    "Hit",
    "Population",
    "Profile",
    "SiteGoals",
    "TrafficConfigError",
    "Visit",
    "day_visits",
    "encode_entries",
    "encode_params",
    "encode_visit",
    "expected_visits",
    "hit_kind",
    "hit_queries",
    "is_absolute_url",
    "live_visits",
    "local_day_bounds",
    "parse_items",
    "parse_url_list",
    "resolve_timezone",
    "sample_funnel_visit",
    "simulate_funnel",
    "validate_funnels",
    "validate_hit",
    "validate_visit",
    "visit_head",
    "visits_for_day_count",
]
