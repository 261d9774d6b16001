"""How fast the model generates traffic on this machine (for a management command).

The sender must never wait for the generator: one core should produce well over
20,000 hits/s, several times what a bulk sender pushes into a real Matomo.
"""

from __future__ import annotations

import time
import tracemalloc
from datetime import UTC, datetime

from trafficinator.traffic.encoding import encode_visit
from trafficinator.traffic.profile import Profile
from trafficinator.traffic.site_model import compile_site
from trafficinator.traffic.stream import live_visits

_START = datetime(2025, 1, 6, tzinfo=UTC)
_MEMORY_VISITS = 2_000


def benchmark_generation(seconds: float = 2.0, profile: Profile | None = None) -> dict:
    """Generate for about ``seconds`` of CPU time and report the rates and peak memory.

    Rates are per CPU second of this process (``time.process_time``), so other busy
    processes on the machine do not distort them: it is the speed of one core.

    Returns hits_per_second and visits_per_second (generation: since the generator
    builds each hit's query string as it goes, this includes most of the encoding),
    encoded_hits_per_second (generation + the visit's query strings with cdt, what a
    backfill does), hits, visits, and peak_memory_bytes: the traced peak while building
    the model from scratch and streaming 2,000 visits (tracemalloc, so it excludes the
    interpreter itself).
    """
    profile = profile or Profile(visits_per_day=100_000)
    half = max(seconds, 0.2) / 2

    stream = live_visits(profile, seed="benchmark", start=_START)
    next(stream)  # compile outside the timing
    visits = hits = 0
    began = time.process_time()
    while True:
        for _ in range(200):
            hits += len(next(stream).hits)
        visits += 200
        elapsed = time.process_time() - began
        if elapsed >= half:
            break
    generated = (hits / elapsed, visits / elapsed)

    encoded_hits = 0
    began = time.process_time()
    while True:
        for _ in range(200):
            encoded_hits += len(encode_visit(next(stream), cdt="datetime"))
        encoded_elapsed = time.process_time() - began
        if encoded_elapsed >= half:
            break

    compile_site.cache_clear()
    tracemalloc.start()
    try:
        stream = live_visits(profile, seed="benchmark-memory", start=_START)
        for _ in range(_MEMORY_VISITS):
            encode_visit(next(stream), cdt="datetime")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    return {
        "hits_per_second": round(generated[0]),
        "visits_per_second": round(generated[1]),
        "encoded_hits_per_second": round(encoded_hits / encoded_elapsed),
        "hits": hits + encoded_hits,
        "visits": visits,
        "seconds": round(elapsed + encoded_elapsed, 2),
        "peak_memory_bytes": peak,
    }
