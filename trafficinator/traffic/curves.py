"""Daily and weekly rhythm, and the two ways visits get start times.

* ``DaySchedule``: ``count`` start times inside one local day, drawn from the hour-of-day
  curve and yielded in order without holding them all (sequential order statistics).
* ``ArrivalProcess``: an endless non-homogeneous arrival stream whose rate is
  ``visits_per_day`` shaped by hour of day and day of week. Arrivals come in small
  bursts (a compound Poisson process: Poisson bursts x geometric visits each), which is
  how real per-second counts behave (docs/realism.md).

Curves are in local time of the site's time zone. Hour weights are normalised to a mean
of 1 and weekday factors to a mean of 1, so a week averages ``visits_per_day``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from datetime import date, datetime, tzinfo
from itertools import accumulate
from math import log
from random import Random
from typing import TYPE_CHECKING

from .clock import local_day_bounds, utc_offset_at

if TYPE_CHECKING:
    from .profile import Profile


# Hour 0..23, relative; peak/trough >= 3 for every curve except 'flat'.
_DAILY = {
    # Mixed consumer site: lunch and evening peaks, trough at 3-4 am (ratio ~9).
    "default": (
        0.40,
        0.26,
        0.18,
        0.15,
        0.15,
        0.22,
        0.45,
        0.80,
        1.10,
        1.25,
        1.35,
        1.40,
        1.45,
        1.40,
        1.35,
        1.30,
        1.30,
        1.35,
        1.45,
        1.55,
        1.50,
        1.25,
        0.90,
        0.60,
    ),
    # Work tool / B2B: office hours, little at night.
    "business": (
        0.10,
        0.07,
        0.06,
        0.06,
        0.08,
        0.15,
        0.40,
        1.10,
        2.00,
        2.30,
        2.30,
        2.10,
        1.80,
        2.10,
        2.20,
        2.10,
        1.80,
        1.30,
        0.80,
        0.55,
        0.45,
        0.35,
        0.25,
        0.15,
    ),
    # Content site: early-evening peak.
    "evening": (
        0.50,
        0.30,
        0.20,
        0.15,
        0.14,
        0.18,
        0.35,
        0.60,
        0.75,
        0.80,
        0.85,
        0.90,
        1.00,
        0.95,
        0.90,
        0.95,
        1.10,
        1.45,
        1.85,
        2.10,
        2.15,
        1.90,
        1.40,
        0.85,
    ),
    "flat": (1.0,) * 24,
}
# Monday..Sunday.
_WEEKLY = {
    "default": (1.04, 1.06, 1.05, 1.03, 0.98, 0.90, 0.94),
    # Weekends ~35% below weekdays.
    "business": (1.12, 1.15, 1.15, 1.12, 1.04, 0.71, 0.71),
    "evening": (0.96, 0.97, 0.98, 0.99, 1.02, 1.05, 1.03),
    "flat": (1.0,) * 7,
}

# Bursts: mean visits per burst, and the mean gap inside a burst as a fraction of the
# mean gap between visits at the current rate.
BURST_MEAN = 1.5
BURST_GAP = 0.2


def _mean_one(values: tuple[float, ...]) -> tuple[float, ...]:
    mean = sum(values) / len(values)
    return tuple(v / mean for v in values)


DAILY_CURVES = {name: _mean_one(v) for name, v in _DAILY.items()}
WEEKLY_CURVES = {name: _mean_one(v) for name, v in _WEEKLY.items()}


def hour_weights(curve: str) -> tuple[float, ...]:
    return DAILY_CURVES[curve]


def weekday_factor(curve: str, day: date) -> float:
    return WEEKLY_CURVES[curve][day.weekday()]


class DaySchedule:
    """The local day split into hour slots with their share of the day's visits.

    Slots step one hour from local midnight in real (UTC) time, so a DST day has 23
    or 25 of them and each slot takes the weight of its local hour.
    """

    def __init__(self, day: date, tz: tzinfo, curve: str):
        self.start, self.end = local_day_bounds(day, tz)
        weights = hour_weights(curve)
        self.slot_starts: list[float] = []
        self.slot_offsets: list[float] = []  # UTC offset (s) in force in the slot
        slot_weights: list[float] = []
        t = self.start
        while t < self.end:
            local = datetime.fromtimestamp(t, tz)
            self.slot_starts.append(t)
            self.slot_offsets.append(utc_offset_at(t, tz))
            length = min(3600.0, self.end - t)
            slot_weights.append(weights[local.hour] * length / 3600.0)
            t += 3600.0
        self.slot_weights = slot_weights
        self.cumulative = list(accumulate(slot_weights))
        self.total_weight = self.cumulative[-1]

    def day_share(self) -> float:
        """The day's weight relative to a normal 24-hour day (1.0; a DST day differs)."""
        return self.total_weight / 24.0

    def start_times(self, rng: Random, count: int) -> Iterator[tuple[float, float]]:
        """``count`` sorted (epoch, utc_offset) pairs distributed by the curve."""
        cumulative, total, weights = self.cumulative, self.total_weight, self.slot_weights
        starts, offsets, end = self.slot_starts, self.slot_offsets, self.end
        u = 0.0
        random = rng.random
        for remaining in range(count, 0, -1):
            # The minimum of `remaining` uniforms on [u, 1): sorted without storing.
            u = 1.0 - (1.0 - u) * random() ** (1.0 / remaining)
            target = u * total
            slot = min(bisect_right(cumulative, target), len(starts) - 1)
            before = cumulative[slot] - weights[slot]
            fraction = (target - before) / weights[slot] if weights[slot] else 0.0
            t = starts[slot] + min(max(fraction, 0.0), 1.0) * min(3600.0, end - starts[slot])
            yield min(t, end - 1e-3), offsets[slot]


def visits_for_day_count(profile: Profile, day: date, tz: tzinfo) -> int:
    """How many visits ``day`` gets: visits_per_day x weekday factor x DST length.

    The weekday factors average 1 over a week, so a week gets 7 x visits_per_day.
    """
    share = DaySchedule(day, tz, profile.daily_curve).day_share()
    expected = profile.visits_per_day * weekday_factor(profile.daily_curve, day) * share
    return int(expected + 0.5)


class ArrivalProcess:
    """Endless arrival times from ``start`` at the curve-shaped rate.

    Gaps are drawn in "operational time" (expected visits), then mapped to real time
    through the piecewise-constant rate, hour by local hour. Yields
    (epoch, utc_offset, local_day_end).
    """

    def __init__(self, start: float, tz: tzinfo, visits_per_day: float, curve: str, rng: Random):
        self.tz = tz
        self.per_second = visits_per_day / 86400.0
        self.hours = hour_weights(curve)
        self.weekdays = WEEKLY_CURVES[curve]
        self.rng = rng
        self.t = start
        self._segment(start)

    def _segment(self, t: float) -> None:
        local = datetime.fromtimestamp(t, self.tz)
        into_hour = local.minute * 60 + local.second + local.microsecond / 1e6
        self.segment_end = t - into_hour + 3600.0
        self.rate = self.per_second * self.hours[local.hour] * self.weekdays[local.weekday()]
        self.offset = utc_offset_at(t, self.tz)
        if getattr(self, "_day", None) != local.date():
            self._day = local.date()
            self.day_end = local_day_bounds(local.date(), self.tz)[1]

    def expected_until(self, end: float) -> float:
        """Visits the curve expects between the current time and ``end`` (no draw, no
        state change): how many visits a loader that fell behind schedule owes."""
        t, total = self.t, 0.0
        segment_end, rate = self.segment_end, self.rate
        while t < end:
            stop = min(segment_end, end)
            total += (stop - t) * rate
            t = stop
            if t < end:
                local = datetime.fromtimestamp(t, self.tz)
                segment_end = t + 3600.0 - (local.minute * 60 + local.second + local.microsecond / 1e6)
                rate = self.per_second * self.hours[local.hour] * self.weekdays[local.weekday()]
        return total

    def _advance(self, expected_visits: float) -> None:
        t = self.t
        while expected_visits > (self.segment_end - t) * self.rate:
            expected_visits -= (self.segment_end - t) * self.rate
            t = self.segment_end
            self._segment(t)
        self.t = t + expected_visits / self.rate

    def __iter__(self) -> Iterator[tuple[float, float, float]]:
        random = self.rng.random
        # A burst of K ~ Geometric(mean m) visits uses (K-1) inner gaps of mean c, so the
        # gap before a burst has mean m - (m-1)c: one visit per unit on average.
        continue_burst = 1.0 - 1.0 / BURST_MEAN
        between = BURST_MEAN - (BURST_MEAN - 1.0) * BURST_GAP
        # Random.expovariate(lambd) is -log(1.0 - random()) / lambd: written out here,
        # the same numbers without its Python call per arrival.
        outer_rate = 1.0 / between
        inner_rate = 1.0 / BURST_GAP
        while True:
            self._advance(-log(1.0 - random()) / outer_rate)
            yield self.t, self.offset, self.day_end
            while random() < continue_burst:
                self._advance(-log(1.0 - random()) / inner_rate)
                yield self.t, self.offset, self.day_end


def expected_visits(start: float, end: float, tz: tzinfo, visits_per_day: float, curve: str) -> float:
    """Visits the arrival process expects between two epoch times (0 when end <= start)."""
    if end <= start or visits_per_day <= 0:
        return 0.0
    return ArrivalProcess(start, tz, visits_per_day, curve, Random(0)).expected_until(end)
