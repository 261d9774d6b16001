"""The public streams: one local day of visits (backfill), or endless visits (live).

Both are lazy generators holding constant memory (compiled tables, the returning-visitor
pool, one RNG). Same arguments give the same stream, hit for hit.

Common arguments:
    profile, catalog (None = default), funnels, seed (int or str), site_id,
    token_present (only then may hits carry cip), order_id_prefix (make it unique per
    run; a tag from the seed and stream is added, so ec_id never repeats within a stream
    and differs between days and shards), site_url (None = catalog's), timezone (the
    site's; None = profile.timezone).

Returning visitors come from a pool keyed by the seed alone, so the same visitors return
across days of a backfill. Matomo must see each visitor's hits oldest first: run a
backfill's days in date order per site (days in parallel may record a pooled visitor's
later visit before an earlier one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, tzinfo
from random import Random

from .catalog import Catalog
from .clock import resolve_timezone, utc_offset_at
from .curves import ArrivalProcess, DaySchedule
from .curves import visits_for_day_count as _visits_for_day_count
from .funnels import FunnelSpec
from .generator import Generator
from .goals import SiteGoals
from .profile import Profile
from .sampling import derive_seed
from .visit import Visit
from .visitors import Population

# Hits are dated in whole seconds (cdt); keep the last one clearly before midnight.
MIDNIGHT_MARGIN = 1.0


def day_visits(
    profile: Profile,
    catalog: Catalog | None = None,
    funnels: Sequence[FunnelSpec] = (),
    seed: int | str = 0,
    site_id: int = 1,
    token_present: bool = False,
    order_id_prefix: str = "",
    site_url: str | None = None,
    timezone: str | tzinfo | None = None,
    *,
    day: date,
    count: int,
    skip: int = 0,
    goals: SiteGoals | None = None,
    population: Population | None = None,
) -> Iterator[Visit]:
    """Exactly ``count`` visits of the local ``day``, in start order, every hit inside it.

    ``skip`` resumes after that many visits (they are regenerated and dropped, so the
    rest is identical to an uninterrupted stream). Raises TrafficConfigError at once for
    an invalid profile or funnels.
    """
    if count < 0 or skip < 0:
        raise ValueError("count and skip must be 0 or more")
    tz = _tz(timezone, profile)
    generator = Generator(
        profile,
        catalog,
        funnels,
        seed,
        site_id,
        token_present,
        order_id_prefix,
        site_url,
        f"day:{day.isoformat()}",
        goals,
        population,
    )
    rng = Random(derive_seed("day", seed, day.isoformat()))
    schedule = DaySchedule(day, tz, profile.daily_curve)
    limit = schedule.end - MIDNIGHT_MARGIN

    def visits() -> Iterator[Visit]:
        make = generator.visit
        for index, (start, offset) in enumerate(schedule.start_times(rng, count)):
            visit = make(rng, index, start, offset, limit)
            if index >= skip:
                yield visit

    return visits()


def live_visits(
    profile: Profile,
    catalog: Catalog | None = None,
    funnels: Sequence[FunnelSpec] = (),
    seed: int | str = 0,
    site_id: int = 1,
    token_present: bool = False,
    order_id_prefix: str = "",
    site_url: str | None = None,
    timezone: str | tzinfo | None = None,
    *,
    start: datetime,
    goals: SiteGoals | None = None,
    population: Population | None = None,
    key: str | None = None,
    parts: int = 1,
    owned: Iterable[int] | None = None,
) -> Iterator[Visit]:
    """Endless visits arriving from ``start`` on, in arrival order.

    Arrivals follow visits_per_day shaped by hour of day and weekday (bursty, see
    curves.ArrivalProcess). A naive ``start`` is taken as UTC.

    ``key`` names the stream: the same seed and key give the same visits (visitor ids,
    pages, events, gaps) whenever the stream starts; only the daily curve moves arrival
    times, and with the flat curve the whole schedule is the same, shifted to ``start``.
    Without a key the start time names the stream (every start is a new stream).

    ``parts`` > 1 splits the stream into that many sub-streams so that several processes
    can each generate a share of it (a sharded live run): every arrival is dealt to a
    part by a draw of its own, and each part builds its visits from its own random
    numbers and returning visitors (``Members`` of that part). Only the ``owned`` parts
    (default: all) are generated; the others cost an arrival time and one draw. The
    union of any partition of the parts is the whole stream, visit for visit, and
    ``Visit.index`` stays the position in the whole stream. A stream of 64 parts is
    another stream than one of 1 part: keep ``parts`` fixed for a seed to replay.
    """
    if parts < 1:
        raise ValueError("parts must be 1 or more")
    tz = _tz(timezone, profile)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    epoch = start.timestamp()
    label = f"live:{epoch:.6f}" if key is None else f"live:key:{key}"
    generator = Generator(
        profile, catalog, funnels, seed, site_id, token_present, order_id_prefix, site_url, label, goals, population
    )
    arrivals = ArrivalProcess(
        epoch, tz, profile.visits_per_day, profile.daily_curve, Random(derive_seed("arrivals", seed, label))
    )
    if parts == 1:
        rng = Random(derive_seed("live", seed, label))

        def visits() -> Iterator[Visit]:
            make = generator.visit
            for index, (arrival, offset, day_end) in enumerate(arrivals):
                yield make(rng, index, arrival, offset, day_end - MIDNIGHT_MARGIN)

        return visits()

    # makers[part]: the part's visit() and its own Random, or None when not owned.
    makers: list[tuple[Callable[..., Visit], Random] | None] = [None] * parts
    for part in range(parts) if owned is None else sorted(set(owned)):
        if not 0 <= part < parts:
            raise ValueError(f"part {part} is not one of 0..{parts - 1}")
        makers[part] = (generator.fork(part, parts).visit, Random(derive_seed("live", seed, label, "part", part)))
    deal = Random(derive_seed("parts", seed, label)).random

    def dealt_visits() -> Iterator[Visit]:
        for index, (arrival, offset, day_end) in enumerate(arrivals):
            maker = makers[int(deal() * parts)]
            if maker is not None:
                yield maker[0](maker[1], index, arrival, offset, day_end - MIDNIGHT_MARGIN)

    return dealt_visits()


def visits_for_day_count(profile: Profile, day: date, tz: str | tzinfo | None = None) -> int:
    """Visits the day gets: visits_per_day x weekday factor (a week averages
    visits_per_day per day) x the day's length on DST days."""
    return _visits_for_day_count(profile, day, _tz(tz, profile))


def sample_funnel_visit(
    spec: FunnelSpec,
    seed: int | str = 0,
    profile: Profile | None = None,
    catalog: Catalog | None = None,
    site_url: str | None = None,
    start: datetime | None = None,
    timezone: str | tzinfo | None = None,
    site_id: int = 1,
    token_present: bool = False,
) -> Visit:
    """One visit that follows ``spec`` (for a preview), with drop-offs drawn as usual."""
    profile = profile or Profile()
    tz = _tz(timezone, profile)
    start = start or datetime.now(UTC).replace(microsecond=0)
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    generator = Generator(
        profile,
        catalog,
        [replace(spec, share=1.0)],
        seed,
        site_id,
        token_present,
        "preview",
        site_url,
        f"preview:{spec.name}",
    )
    rng = Random(derive_seed("preview", seed, spec.name))
    epoch = start.timestamp()
    offset = utc_offset_at(epoch, tz)
    # A preview is not squeezed before midnight: the limit is a day away.
    return generator.visit(rng, 0, epoch, offset, epoch + 86400.0)


def _tz(value: str | tzinfo | None, profile: Profile) -> tzinfo:
    if value is None:
        value = profile.timezone
    return resolve_timezone(value) if isinstance(value, str) else value
