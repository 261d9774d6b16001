"""Live arrivals: rate, rhythm and burstiness; visits in arrival order."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from itertools import islice, pairwise
from random import Random
from statistics import mean, pvariance
from zoneinfo import ZoneInfo

import pytest

from trafficinator.traffic import live_visits, resolve_timezone
from trafficinator.traffic.clock import local_day_bounds
from trafficinator.traffic.curves import ArrivalProcess, hour_weights

from .conftest import make_profile

MONDAY = datetime(2025, 3, 3, tzinfo=ZoneInfo("Europe/Stockholm"))


def arrivals(visits_per_day, curve, seconds, seed=1, zone="Europe/Stockholm"):
    process = ArrivalProcess(MONDAY.timestamp(), resolve_timezone(zone), visits_per_day, curve, Random(seed))
    end = MONDAY.timestamp() + seconds
    times = []
    for t, _offset, _day_end in process:
        if t >= end:
            return times
        times.append(t)


def test_a_week_of_arrivals_averages_visits_per_day():
    times = arrivals(50_000, "default", 7 * 86400)
    assert len(times) / 7 == pytest.approx(50_000, rel=0.02)
    assert times == sorted(times)


def test_arrivals_follow_the_hour_of_day_curve():
    tz = ZoneInfo("Europe/Stockholm")
    times = arrivals(50_000, "default", 7 * 86400, seed=2)
    hours = Counter(datetime.fromtimestamp(t, tz).hour for t in times)
    weights = hour_weights("default")
    for hour in range(24):
        assert hours[hour] / len(times) == pytest.approx(weights[hour] / 24, rel=0.08), hour
    assert max(hours.values()) / min(hours.values()) >= 3


def test_business_weekends_are_quieter_than_weekdays():
    tz = ZoneInfo("Europe/Stockholm")
    times = arrivals(20_000, "business", 7 * 86400, seed=3)
    days = Counter(datetime.fromtimestamp(t, tz).weekday() for t in times)
    weekday = mean(days[d] for d in range(5))
    weekend = mean(days[d] for d in (5, 6))
    assert weekend <= 0.75 * weekday


def test_arrivals_are_burstier_than_poisson():
    times = arrivals(2 * 86400, "flat", 2 * 3600, seed=4)  # 2 visits per second
    start = MONDAY.timestamp()
    counts = Counter(int((t - start) // 10) for t in times)
    windows = [counts[i] for i in range(2 * 360)]
    dispersion = pvariance(windows) / mean(windows)
    assert dispersion > 1.4  # a Poisson process gives 1
    assert mean(windows) == pytest.approx(20, rel=0.05)


def test_live_visits_come_in_arrival_order_and_never_cross_local_midnight():
    start = datetime(2025, 3, 5, 23, 45, tzinfo=ZoneInfo("Europe/Stockholm"))
    visits = list(islice(live_visits(make_profile(visits_per_day=200_000), seed=7, start=start), 3000))
    starts = [v.start for v in visits]
    assert starts == sorted(starts)
    assert starts[0] >= start.timestamp()
    tz = resolve_timezone("CET")
    for visit in visits:
        day = datetime.fromtimestamp(visit.start, tz).date()
        assert visit.end < local_day_bounds(day, tz)[1]
    assert any(datetime.fromtimestamp(v.start, tz).hour == 0 for v in visits)  # went past midnight


def test_live_visitors_never_overlap_themselves():
    start = datetime(2025, 3, 5, 9, tzinfo=UTC)
    profile = make_profile(visits_per_day=5_000, returning_visitor_share=0.9)
    visits = list(islice(live_visits(profile, seed=8, start=start), 4000))
    by_visitor = defaultdict(list)
    for visit in visits:
        by_visitor[visit.cid].append(visit)
    assert sum(len(v) > 1 for v in by_visitor.values()) > 100
    for own in by_visitor.values():
        for earlier, later in pairwise(own):
            assert later.start >= earlier.end + 1800
