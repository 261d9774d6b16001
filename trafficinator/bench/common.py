"""What the benchmarks share: a ready target on the fake Matomo they started."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
