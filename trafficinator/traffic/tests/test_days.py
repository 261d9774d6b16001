"""Backfill days: exact counts, every hit inside the site's local day, in order."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from trafficinator.traffic import Population, Profile, day_visits, resolve_timezone, visits_for_day_count
from trafficinator.traffic.clock import local_day_bounds

from .conftest import make_day, make_profile


@pytest.mark.parametrize(
    "day, zone",
    [
        (date(2025, 3, 5), "CET"),
        (date(2025, 3, 30), "Europe/Stockholm"),  # 23 hours: clocks go forward
        (date(2025, 10, 26), "Europe/Stockholm"),  # 25 hours: clocks go back
        (date(2025, 6, 1), "America/New_York"),
        (date(2025, 6, 1), "UTC+5.5"),
    ],
)
def test_a_day_has_exactly_count_visits_all_inside_the_local_day_in_order(day, zone):
    visits = make_day(count=2500, seed=9, day=day, timezone=zone)
    assert len(visits) == 2500
    start, end = local_day_bounds(day, resolve_timezone(zone))
    starts = [v.start for v in visits]
    assert starts == sorted(starts)
    for visit in visits:
        times = [h.due for h in visit.hits]
        assert times == sorted(times)
        assert start <= times[0] and times[-1] < end - 0.5
        # cdt is whole seconds: it must still be before midnight
        assert int(times[-1]) < end


def test_hour_minute_second_are_the_visitors_local_time_in_the_site_zone():
    zone = "America/New_York"
    tz = ZoneInfo(zone)
    for visit in make_day(count=300, seed=2, day=date(2025, 7, 4), timezone=zone):
        for hit in visit.hits:
            local = datetime.fromtimestamp(int(hit.due), tz)
            assert (hit.params["h"], hit.params["m"], hit.params["s"]) == (
                str(local.hour),
                str(local.minute),
                str(local.second),
            )


def test_the_site_time_zone_moves_the_rhythm_with_it():
    tokyo = make_day(count=3000, seed=4, day=date(2025, 3, 5), timezone="Asia/Tokyo")
    busy = sum(1 for v in tokyo if 9 <= int(v.hits[0].params["h"]) <= 21)
    assert busy / len(tokyo) > 0.7


def test_zero_visits_is_an_empty_day():
    assert make_day(count=0) == []


def test_visits_per_day_shaped_by_the_week_averages_to_visits_per_day():
    profile = Profile(visits_per_day=10_000)
    monday = date(2025, 3, 3)
    week = [visits_for_day_count(profile, monday + timedelta(days=i), "CET") for i in range(7)]
    assert sum(week) == pytest.approx(70_000, abs=7)
    assert max(week) > min(week)


def test_business_sites_get_far_fewer_visits_at_weekends():
    profile = Profile(visits_per_day=10_000, daily_curve="business")
    monday = date(2025, 3, 3)
    week = [visits_for_day_count(profile, monday + timedelta(days=i), "CET") for i in range(7)]
    weekday, weekend = sum(week[:5]) / 5, sum(week[5:]) / 2
    assert weekend <= 0.75 * weekday


def test_a_daylight_saving_day_counts_its_missing_hour():
    profile = Profile(visits_per_day=10_000, daily_curve="flat")
    assert visits_for_day_count(profile, date(2025, 3, 30), "Europe/Stockholm") == round(10_000 * 23 / 24)
    assert visits_for_day_count(profile, date(2025, 10, 26), "Europe/Stockholm") == round(10_000 * 25 / 24)
    assert visits_for_day_count(profile, date(2025, 3, 30), "UTC") == 10_000


def test_evening_curve_peaks_in_the_early_evening():
    visits = make_day(make_profile(daily_curve="evening"), count=6000, seed=5)
    hours = [int(v.hits[0].params["h"]) for v in visits]
    peak = max(range(24), key=hours.count)
    assert 17 <= peak <= 21


def test_returning_visits_are_visitors_seen_before_from_the_first_day_on():
    """What Matomo counts: a visit is returning when its visitor id had an earlier visit.
    Days of one population share their members, so every day shows the preset's share."""
    profile = Profile(visits_per_day=1000)
    population = Population("week", date(2025, 3, 3))
    seen: set[str] = set()
    shares = []
    for offset in range(7):
        day = date(2025, 3, 3) + timedelta(days=offset)
        count = visits_for_day_count(profile, day, "CET")
        again = 0
        for visit in day_visits(profile, day=day, count=count, seed="week", population=population):
            assert visit.returning == (visit.cid in seen)
            again += visit.cid in seen
            seen.add(visit.cid)
        shares.append(again / count)
    assert all(share == pytest.approx(0.35, abs=0.03) for share in shares), shares
    # A loyal core: some members come back often, most rarely.
    per_visitor: dict[str, int] = {}
    for offset in range(7):
        day = date(2025, 3, 3) + timedelta(days=offset)
        count = visits_for_day_count(profile, day, "CET")
        for visit in day_visits(profile, day=day, count=count, seed="week", population=population):
            per_visitor[visit.cid] = per_visitor.get(visit.cid, 0) + 1
    returning_counts = sorted((n for n in per_visitor.values() if n > 1), reverse=True)
    assert returning_counts[0] >= 5 * returning_counts[len(returning_counts) // 2]


def test_days_without_a_shared_population_share_no_visitors():
    profile = Profile(visits_per_day=1000)
    first = {v.cid for v in day_visits(profile, day=date(2025, 3, 3), count=500, seed="week")}
    second = {v.cid for v in day_visits(profile, day=date(2025, 3, 4), count=500, seed="week")}
    assert not first & second


def test_parts_of_a_population_split_its_members_and_know_only_their_own():
    """Members of part p are those with index p modulo parts: each part joins and brings
    back only its own, and the parts together are the whole population."""
    from random import Random

    from trafficinator.traffic.visitors import Members

    profile = Profile(visits_per_day=1000, returning_visitor_share=0.3)
    population = Population("split", date(2025, 3, 3))
    whole = Members(population, profile)
    parts = [Members(population, profile, part, 4) for part in range(4)]
    for members in (whole, *parts):
        members.start_day(2)
    joined = [member for members in parts for member in iter(members.join, None)]
    assert sorted(joined) == list(iter(whole.join, None))  # today's intake, dealt out
    rng = Random(1)
    for part, members in enumerate(parts):
        assert members.known() == len([m for m in range(3 * whole.joins) if m % 4 == part])
        picked = {members.free_member(rng, 0.0) for _ in range(300)}
        assert picked and all(member % 4 == part and member < 3 * whole.joins for member in picked)


def test_a_stream_after_fewer_known_days_brings_back_only_members_who_visited():
    """A live run after a backfill knows the backfill's days only: members of the days
    between were never seen, so a returning visit never picks one of them."""
    from random import Random

    from trafficinator.traffic.visitors import Members

    profile = Profile(visits_per_day=1000, returning_visitor_share=0.3)
    members = Members(Population("gap", date(2025, 3, 3), known_days=2), profile)
    members.start_day(10)
    today = [members.join() for _ in range(5)]
    assert today == [10 * members.joins + i for i in range(5)]
    seen = set(range(2 * members.joins)) | set(today)
    rng = Random(2)
    picked = {members.free_member(rng, 0.0) for _ in range(2000)}
    assert picked <= seen and set(today) & picked


def test_members_forget_who_cannot_be_busy_any_more_and_nothing_else():
    """Only a member whose last visit ended under 30 minutes before a start is busy. Those
    whose visit ended earlier are forgotten as stream time goes on, so what a stream holds
    stays about 38 minutes of visits however fast it runs; a busy member is never
    forgotten, and a forgotten one is free, as it was before. Today's joiners are kept by
    join order; a return, and the next day, move them to the map."""
    from random import Random

    from trafficinator.traffic.visitors import PRUNE_INTERVAL_SECONDS, VISIT_GAP_SECONDS, Members

    profile = Profile(visits_per_day=1_000_000, returning_visitor_share=0.3)
    members = Members(Population("prune", date(2025, 3, 3)), profile)
    members.start_day(0)
    ends: dict[int, float] = {}
    rng = Random(3)
    # Two hours of stream time, a visit of 60 s every second: a new member, and every
    # tenth second also a returning one.
    for second in range(7200):
        member = members.join()
        assert member is not None
        members.visited(member, float(second), second + 60.0, joined=True)
        ends[member] = second + 60.0
        if second % 10 == 0:
            back = members.free_member(rng, float(second))
            if back is not None:
                assert ends[back] + VISIT_GAP_SECONDS < second
                members.visited(back, float(second), second + 60.0)
                ends[back] = second + 60.0
        if second % 600 == 0:  # every member still busy at this start is remembered, as it is
            assert all(members.last_visit_end(m) == end for m, end in ends.items() if end + VISIT_GAP_SECONDS >= second)
    remembered = [m for m in ends if members.last_visit_end(m) is not None]
    assert len(remembered) <= 1.1 * (VISIT_GAP_SECONDS + PRUNE_INTERVAL_SECONDS + 62)
    assert min(members.last_visit_end(m) for m in remembered) >= 7199 - VISIT_GAP_SECONDS - 1 - PRUNE_INTERVAL_SECONDS
    # A forgotten member is free at the next start, a remembered one only once its 30
    # minutes have passed.
    picked = [members.free_member(rng, 7200.0) for _ in range(500)]
    assert any(m is not None for m in picked)
    assert all(ends[m] + VISIT_GAP_SECONDS < 7200.0 for m in picked if m is not None)
    # The next day: yesterday's joiners still busy are remembered by id.
    busy = [m for m, end in ends.items() if end + VISIT_GAP_SECONDS >= 7200.0]
    members.start_day(1)
    assert busy and all(members.last_visit_end(m) == ends[m] for m in busy)


def test_a_members_traits_take_no_more_draws_than_its_digest_holds():
    """A member's traits are read off its digest (sampling.DigestDraws), which holds
    DIGEST_UNIFORMS uniforms and 64 bits: the sampler with every trait on (countries and
    IPs, logins) stays within them, for any member."""
    from trafficinator.traffic.catalog import Catalog
    from trafficinator.traffic.sampling import DIGEST_UNIFORMS, DigestDraws
    from trafficinator.traffic.site_model import compile_site
    from trafficinator.traffic.visitors import Members, TraitSampler

    class Counting:
        def __init__(self, draws: DigestDraws) -> None:
            self.draws, self.uniforms, self.bits = draws, 0, 0

        def random(self) -> float:
            self.uniforms += 1
            return self.draws.random()

        def getrandbits(self, k: int) -> int:
            self.bits += k
            return self.draws.getrandbits(k)

    profile = Profile(visits_per_day=1000, logged_in_share=1.0, randomize_countries=True)
    sampler = TraitSampler(profile, compile_site(Catalog.load_default(), None), use_ip=True)
    members = Members(Population("digest", date(2025, 3, 3)), profile)
    uniforms = []
    for member in range(2000):
        counting = Counting(DigestDraws(members.member_digest(member)))
        traits = sampler.draw(counting, pooled=True)
        assert traits.ip and traits.uid  # every draw the sampler can make was made
        assert counting.uniforms <= DIGEST_UNIFORMS and counting.bits <= 64
        uniforms.append(counting.uniforms)
    assert max(uniforms) == min(uniforms)  # a fixed number: the sampler has no loop


def test_digest_draws_are_uniform_and_the_same_for_the_same_digest():
    import hashlib

    from trafficinator.traffic.sampling import DIGEST_SIZE, DIGEST_UNIFORMS, DigestDraws

    digests = [hashlib.blake2b(str(n).encode(), digest_size=DIGEST_SIZE).digest() for n in range(3000)]
    values = [[draws.random() for _ in range(DIGEST_UNIFORMS)] for draws in map(DigestDraws, digests)]
    flat = [u for row in values for u in row]
    assert all(0.0 <= u < 1.0 for u in flat)
    assert abs(sum(flat) / len(flat) - 0.5) < 0.01
    assert sum(u < 0.1 for u in flat) / len(flat) == pytest.approx(0.1, abs=0.01)
    again = DigestDraws(digests[7])
    assert [again.random() for _ in range(DIGEST_UNIFORMS)] == values[7]
    bits = DigestDraws(digests[7])
    assert 0 <= bits.getrandbits(48) < 1 << 48 and 0 <= bits.getrandbits(16) < 1 << 16
    with pytest.raises(ValueError):
        bits.getrandbits(1)  # 64 bits used up
    exhausted = DigestDraws(digests[7])
    for _ in range(DIGEST_UNIFORMS):
        exhausted.random()
    with pytest.raises(StopIteration):
        exhausted.random()


def test_after_a_search_finds_no_free_member_the_next_second_searches_none():
    """In a stream's first half hour all its members are busy: a search that found none
    is not tried again (no draws) for SEARCH_PAUSE_SECONDS of stream time, then is."""
    from random import Random

    from trafficinator.traffic.visitors import SEARCH_PAUSE_SECONDS, Members

    profile = Profile(visits_per_day=1_000_000, returning_visitor_share=0.3)
    members = Members(Population("pause", date(2025, 3, 3)), profile)
    members.start_day(0)
    for second in range(100):  # 100 joiners, each still busy for half an hour
        member = members.join()
        assert member is not None
        members.visited(member, float(second), second + 10.0, joined=True)
    rng = Random(4)
    assert members.free_member(rng, 100.0) is None
    state = rng.getstate()
    assert members.free_member(rng, 100.0 + SEARCH_PAUSE_SECONDS / 2) is None
    assert rng.getstate() == state  # no search, no draws
    assert members.free_member(rng, 100.0 + SEARCH_PAUSE_SECONDS) is None
    assert rng.getstate() != state  # searched again (in vain: all still busy)
    # Half an hour after the first visits ended, members are free again and found.
    assert members.free_member(rng, 10.0 + 1800.0 + 60.0) is not None
