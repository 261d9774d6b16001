"""Time zones and local days.

Matomo sites use IANA zone names, or fixed offsets written as ``UTC+2`` / ``UTC-4.5``
(``SitesManager`` accepts both), so both are resolved here.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_MATOMO_OFFSET = re.compile(r"^UTC(?:([+-])(\d{1,2})(?:[.:](\d{1,2}))?)?$")


@lru_cache(maxsize=64)
def resolve_timezone(name: str) -> tzinfo:
    """Return the tzinfo for an IANA name or a Matomo ``UTC+5.5``-style offset.

    Raises ValueError for anything else.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("time zone must be a non-empty string")
    name = name.strip()
    match = _MATOMO_OFFSET.match(name)
    if match:
        sign, hours, fraction = match.groups()
        if not sign:
            return UTC
        if fraction is None:
            minutes = 0
        elif "." in name:
            # Matomo writes half hours as decimals: UTC+5.5 is +05:30.
            minutes = round(float("0." + fraction) * 60)
        else:
            minutes = int(fraction)
        offset = timedelta(hours=int(hours), minutes=minutes)
        if offset > timedelta(hours=14) or minutes >= 60:
            raise ValueError(f"'{name}' is not a valid UTC offset")
        return timezone(-offset if sign == "-" else offset)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"'{name}' is not a known time zone") from error


def local_day_bounds(day: date, tz: tzinfo) -> tuple[float, float]:
    """Epoch seconds of local midnight at the start and at the end of ``day``.

    On DST days the span is 23 or 25 hours.
    """
    start = datetime.combine(day, time(0), tzinfo=tz).timestamp()
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).timestamp()
    return start, end


def utc_offset_at(epoch: float, tz: tzinfo) -> float:
    """The zone's offset from UTC in seconds at the instant ``epoch``."""
    offset = datetime.fromtimestamp(epoch, tz).utcoffset()
    assert offset is not None  # an aware datetime always has one
    return offset.total_seconds()


def to_datetime(epoch: float) -> datetime:
    """An aware UTC datetime for epoch seconds."""
    return datetime.fromtimestamp(epoch, UTC)
