"""How many shards (loader processes) a run needs, and how many loader slots are free.

"auto" divides the run's expected peak hits/s (the preset's mean hits per visit, measured
on visits the traffic model generates, times the busiest hour of its daily and weekly
curve) by what one loader process carries: ``settings.SHARD_HITS_PER_SECOND`` for single
hits, ``settings.SHARD_BULK_HITS_PER_SECOND`` in bulk mode (README "Sharded runs").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings

from funnels.models import Funnel
from presets.models import Preset, catalog_with_overrides, profile_from_knobs
from runs.models import MAX_SHARDS
from trafficinator.traffic import DAILY_CURVES, WEEKLY_CURVES, live_visits

logger = logging.getLogger(__name__)

AUTO = "auto"
# The start form's estimate generates this many visits with the traffic model. Hits per
# visit vary a lot (a bounce is one hit, a buyer's visit twenty): 3,000 visits put the
# sample's mean within ~3 % of a 60,000-visit mean for every built-in preset (measured
# with five seeds each), in ~0.1-0.3 s, once per preset and process.
HITS_SAMPLE_VISITS = 3000
# A fixed Monday noon, so the sample is the same on every call (and cacheable).
HITS_SAMPLE_START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
_hits_per_visit_cache: dict[str, float] = {}


def sample_hits_per_visit(preset: Preset) -> float:
    """Mean hits per visit of the traffic a run of ``preset`` sends: measured on
    HITS_SAMPLE_VISITS visits that the traffic model generates from the preset's knobs,
    catalog and funnels, the same code a live run uses. Cached per process by those
    inputs, so changing the preset or its funnels gives a new figure. (Here, not on
    Preset: it needs the preset's funnels, and funnels depend on presets.)"""
    knobs = preset.knob_values()
    funnels = Funnel.objects.specs_for_preset(preset)
    key = hashlib.sha256(json.dumps([knobs, repr(funnels)], sort_keys=True, default=str).encode()).hexdigest()
    if key not in _hits_per_visit_cache:
        visits = live_visits(
            profile_from_knobs(knobs),
            catalog_with_overrides(knobs.get("catalog_overrides")),
            funnels,
            seed="estimate",
            token_present=True,
            order_id_prefix="estimate",
            start=HITS_SAMPLE_START,
        )
        hits = sum(len(next(visits).hits) for _ in range(HITS_SAMPLE_VISITS))
        _hits_per_visit_cache[key] = hits / HITS_SAMPLE_VISITS
    return _hits_per_visit_cache[key]


def parse_shards(value: object) -> int | str:
    """``"auto"`` or a whole number of shards from 1 to MAX_SHARDS; ValueError says why not."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, bool):
        raise ValueError(f"shards must be {AUTO} or a whole number from 1 to {MAX_SHARDS}.")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else value
    except ValueError:
        number = None
    if not isinstance(number, int) or not 1 <= number <= MAX_SHARDS:
        raise ValueError(f"shards must be {AUTO} or a whole number from 1 to {MAX_SHARDS} (got “{value}”).")
    return number


def capacity(bulk: bool) -> int:
    """Hits per second one loader process carries (a setting: machines differ)."""
    return settings.SHARD_BULK_HITS_PER_SECOND if bulk else settings.SHARD_HITS_PER_SECOND


def peak_factor(curve: str) -> float:
    """The busiest hour of the busiest weekday, as a multiple of the day's average."""
    return max(DAILY_CURVES.get(curve, (1.0,))) * max(WEEKLY_CURVES.get(curve, (1.0,)))


def free_loader_slots() -> tuple[int, int] | None:
    """(free, total) loader worker slots of the clusters alive now, or None when the
    cluster heartbeats cannot be read."""
    from trafficinator import health

    try:
        loaders = [
            cluster
            for cluster in (health.describe_cluster(stat) for stat in health.cluster_stats())
            if cluster["queue"] == health.LOADER_QUEUE
        ]
    except Exception:
        logger.warning("Could not read the loader clusters' heartbeats", exc_info=True)
        return None
    total = sum(cluster["workers"] for cluster in loaders)
    busy = sum(cluster["busy_workers"] or 0 for cluster in loaders)
    return max(total - busy, 0), total


@dataclass(frozen=True)
class ShardPlan:
    """What a run asks of the loaders: its peak rate, the shards that carry it."""

    peak_hits_per_second: float
    bulk: bool
    capacity: int
    needed: int  # shards the peak needs at ``capacity`` (at most MAX_SHARDS)
    shards: int  # what the run gets: ``needed`` for "auto", else the number asked

    @property
    def enough(self) -> bool:
        return self.shards >= self.needed

    @property
    def over_limit(self) -> bool:
        """Even MAX_SHARDS loaders would not carry the peak."""
        return self.peak_hits_per_second > MAX_SHARDS * self.capacity


def plan_shards(
    preset: Preset, visits_per_day: int | None, bulk: bool, asked: int | str = 1, hits_per_visit: float | None = None
) -> ShardPlan:
    rate = visits_per_day or preset.visits_per_day
    per_visit = sample_hits_per_visit(preset) if hits_per_visit is None else hits_per_visit
    peak = rate / 86_400 * per_visit * peak_factor(preset.daily_curve)
    carried = capacity(bulk)
    needed = min(MAX_SHARDS, max(1, math.ceil(peak / carried)))
    return ShardPlan(peak, bulk, carried, needed, needed if asked == AUTO else int(asked))


def resolve_shards(preset: Preset, visits_per_day: int | None, bulk: bool, asked: int | str) -> int:
    """The number of shards a run gets: ``asked``, or for "auto" what its peak needs."""
    return plan_shards(preset, visits_per_day, bulk, AUTO).needed if asked == AUTO else int(asked)


def describe(plan: ShardPlan, slots: tuple[int, int] | None) -> str:
    """One sentence for the estimate, the command and the run log."""
    text = (
        f"Needs {plan.needed} loader slot{'s' if plan.needed != 1 else ''} at its peak of about "
        f"{plan.peak_hits_per_second:,.0f} hits/s (one loader carries about {plan.capacity:,} hits/s, "
        f"TRAFFICINATOR_SHARD_{'BULK_' if plan.bulk else ''}"
        "HITS_PER_SECOND)"
    )
    if plan.over_limit:
        text += f"; more than the {MAX_SHARDS} shards a run may have, so it will fall behind at its peak"
    elif not plan.enough:
        text += f"; with {plan.shards} shard{'s' if plan.shards != 1 else ''} it will fall behind at its peak"
    if slots is not None:
        free, total = slots
        text += f". {free} of {total} loader slots are free now"
        if free < plan.shards:
            text += f": {plan.shards - free} shard{'s' if plan.shards - free != 1 else ''} will wait for a worker"
    return text + "."
