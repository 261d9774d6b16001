"""Streams are lazy and constant in memory; generation is fast enough."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from itertools import islice

import pytest

from trafficinator.bench.generation import benchmark_generation
from trafficinator.traffic import encode_visit, encoding, generator, live_visits

from .conftest import make_profile

START = datetime(2025, 3, 3, tzinfo=UTC)


@pytest.fixture(autouse=True)
def quiet_heap():
    """Other modules' session samples keep ~100k dicts alive, which makes every garbage
    collection slow; a loader process does not carry them, so set them aside."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def stream():
    visits = live_visits(make_profile(visits_per_day=100_000), seed="memory", start=START)
    next(visits)  # compiled tables are shared and cached: measure the streaming itself
    return visits


def test_memory_does_not_grow_with_the_length_of_the_stream():
    visits = stream()
    for _ in range(4_000):
        encode_visit(next(visits))
    gc.collect()
    objects_before = len(gc.get_objects())
    for _ in range(16_000):
        encode_visit(next(visits))
    gc.collect()
    # Four times more visits, and the live objects are the same (within the bounded
    # quoting cache, the returning-visitor pool and the members' traits: a tuple and a
    # Traits per cached member).
    assert len(gc.get_objects()) - objects_before < 2_000 + 2 * generator.MEMBER_CACHE_SIZE
    # Strings are not tracked by gc: the quoting cache is bounded by construction.
    assert len(encoding._cache) <= encoding._CACHE_LIMIT


def test_day_visits_is_lazy():
    from trafficinator.traffic import day_visits

    stream = day_visits(make_profile(), day=START.date(), count=10_000_000, seed=1)
    first = next(stream)  # ten million visits would not fit; the first comes at once
    assert first.index == 0


def test_the_generation_benchmark_measures_speed_and_memory():
    """Speed is measured by `manage.py bench`, not asserted here (a loaded CI machine
    would make a threshold flaky); this checks the benchmark itself works."""
    result = benchmark_generation(0.3)
    assert result["hits_per_second"] > 0 and result["encoded_hits_per_second"] > 0
    # Traced peak while compiling the model and streaming 2,000 encoded visits.
    assert result["peak_memory_bytes"] < 4 * 1024 * 1024
    assert set(result) >= {"hits_per_second", "visits_per_second", "peak_memory_bytes"}


def _visits(count: int) -> list[tuple]:
    visits = live_visits(make_profile(visits_per_day=100_000), seed="members", start=START)
    return [(v.cid, v.uid, v.returning, v.params, [h.params for h in v.hits]) for v in islice(visits, count)]


def test_the_member_cache_changes_nothing(monkeypatch):
    """Members' traits are cached for their next visit: the stream is the same as one
    that draws every member afresh (a cache of one)."""
    cached = _visits(6_000)
    assert sum(visit[2] for visit in cached) > 1_000  # returning visits came from the cache
    monkeypatch.setattr(generator, "MEMBER_CACHE_SIZE", 1)
    assert _visits(6_000) == cached
