"""What the benchmarks share: a ready target on the fake Matomo they started, and a
preset of short visits."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presets.models import Preset
    from targets.models import Target


def make_bench_target(url: str, token: str, timezone: str) -> Target:
    """A target on site 1 of the fake Matomo at ``url``, checked and writable, so no
    connection check runs before the benchmark sends."""
    from targets.models import Target

    return Target.objects.create(
        name=f"bench-{secrets.token_hex(4)}",
        matomo_url=url,
        site_id=1,
        token_auth=token,
        last_check_ok=True,
        token_can_write=True,
        site_timezone=timezone,
        site_name="Benchmark",
    )


def make_bench_preset(kind: str, **fields: Any) -> Preset:
    """A saved preset ``bench-KIND-...`` of short visits (pauses under a second) on the
    flat curve, ``fields`` changed: every hit is due within seconds, so a short benchmark
    measures sending, not waiting."""
    from presets.models import Preset

    values: dict[str, Any] = {
        "name": f"bench-{kind}-{secrets.token_hex(4)}",
        "daily_curve": "flat",
        "pause_min": 0.0,
        "pause_max": 0.5,
        "visit_duration_min": 0.0,
        "visit_duration_max": 0.05,
    }
    preset = Preset(**{**values, **fields})
    preset.full_clean()
    preset.save()
    return preset
