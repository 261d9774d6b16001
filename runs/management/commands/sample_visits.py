"""manage.py sample_visits: print generated hits as JSON lines, exactly as they would be sent."""

from __future__ import annotations

import json
from argparse import ArgumentParser
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from funnels.models import Funnel
from presets.models import Preset
from trafficinator.cli import get_preset, iso_date
from trafficinator.traffic import (
    TrafficConfigError,
    Visit,
    day_visits,
    live_visits,
    resolve_timezone,
    visits_for_day_count,
)

MAX_DAYS = 366


def split_count(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``, summing exactly to ``total``
    (largest remainders get the leftover visits)."""
    if not sum(weights):
        weights = [1] * len(weights)
    raw = [total * weight / sum(weights) for weight in weights]
    counts = [int(value) for value in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    return counts


class Command(BaseCommand):
    help = (
        "Write generated visits to stdout as JSON lines, one per hit: "
        '{"visit": n, "visitor": cid, "ts": ISO-8601 UTC, "params": {...}}. '
        "params are exactly the tracking parameters that would be sent (a token shows as ***)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--preset", required=True, help="Preset name, e.g. Light.")
        parser.add_argument("--count", type=int, default=10, help="Number of visits (default 10).")
        parser.add_argument("--seed", type=int, default=0, help="Seed (default 0): same seed, same hits.")
        parser.add_argument("--start", type=iso_date, help="First day (YYYY-MM-DD); default: the last 24 hours.")
        parser.add_argument("--days", type=int, default=1, help="Days from --start (default 1).")
        parser.add_argument("--site-id", type=int, default=1, help="idsite to put in the hits (default 1).")
        parser.add_argument(
            "--token", action="store_true", help="As if the target had a token: visitor IPs (cip) may be sent."
        )

    def handle(
        self,
        *args,
        preset: str,
        count: int,
        seed: int,
        start: date | None,
        days: int,
        site_id: int,
        token: bool,
        **options,
    ) -> None:
        if count < 1:
            raise CommandError("--count must be 1 or more.")
        if not 1 <= days <= MAX_DAYS:
            raise CommandError(f"--days must be between 1 and {MAX_DAYS}.")
        if site_id < 1:
            raise CommandError("--site-id must be 1 or more.")
        chosen = get_preset(preset)
        visits = self.visits(chosen, count, seed, start, days, site_id, token)
        try:
            for number, visit in enumerate(visits, start=1):
                self.write_visit(number, visit, token)
        except TrafficConfigError as exc:
            raise CommandError("; ".join(f"{field}: {message}" for field, message in exc.problems)) from None

    def visits(
        self, preset: Preset, count: int, seed: int, start: date | None, days: int, site_id: int, token: bool
    ) -> Iterator[Visit]:
        common: dict[str, Any] = {
            "catalog": preset.catalog(),
            "funnels": Funnel.objects.specs_for_preset(preset),
            "seed": seed,
            "site_id": site_id,
            "token_present": token,
            "order_id_prefix": f"sample{seed}",
        }
        if start is None:
            return self._last_24_hours(preset, count, common)
        profile = preset.to_profile()
        zone = resolve_timezone(profile.timezone)
        day_list = [start + timedelta(days=offset) for offset in range(days)]
        counts = split_count(count, [visits_for_day_count(profile, day, zone) for day in day_list])
        return (
            visit
            for day, day_count in zip(day_list, counts, strict=True)
            for visit in day_visits(profile, day=day, count=day_count, **common)
        )

    def _last_24_hours(self, preset: Preset, count: int, common: dict) -> Iterator[Visit]:
        """The first ``count`` arrivals from 24 hours ago, at twice the rate that would give
        ``count`` a day (at least two an hour), so they all start in the past day."""
        now = datetime.now(UTC)
        profile = preset.to_profile(visits_per_day=max(48, count * 2))
        stream = live_visits(profile, start=now - timedelta(hours=24), **common)
        for produced, visit in enumerate(stream):
            if produced >= count or visit.start > now.timestamp():
                return
            yield visit

    def write_visit(self, number: int, visit: Visit, token: bool) -> None:
        for hit in visit.hits:
            params = visit.full_params(hit)
            params["cdt"] = datetime.fromtimestamp(int(hit.due), UTC).strftime("%Y-%m-%d %H:%M:%S")
            if token:
                params["token_auth"] = "***"  # noqa: S105 - a mask, never the token
            line = {"visit": number, "visitor": visit.cid, "ts": hit.due_datetime.isoformat(), "params": params}
            self.stdout.write(json.dumps(line, ensure_ascii=False))
