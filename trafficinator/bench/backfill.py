"""How fast one worker backfills: a real plan against a fake Matomo in another process.

    from trafficinator.bench.backfill import benchmark_backfill
    benchmark_backfill(days=3, visits_per_day=20_000)

Everything a worker does is measured: generating the visits, encoding them, sending bulk
batches (one request in flight), a checkpoint UPDATE per acknowledged batch. The fake
Matomo (``python -m targets.fake_matomo --count-only``) runs in its own process and
evaluates every hit. The plan and its target are created for the run and deleted after.

Measured on the 2-core dev box (other jobs running): see README "Backfill".
"""

from __future__ import annotations

import resource
import secrets
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from backfill.foreground import run_in_foreground
from backfill.models import BackfillPlan
from presets.models import Preset
from targets.fake_matomo.process import fake_call, start_fake_server, stop_fake_server
from trafficinator.bench.common import make_bench_target

BENCH_TIMEZONE = "Europe/Stockholm"


def benchmark_backfill(
    days: int = 3,
    visits_per_day: int = 20_000,
    *,
    batch_size: int = 1000,
    preset_name: str = "Medium",
    server_workers: int = 2,
) -> dict:
    """Backfill ``days`` days of ``visits_per_day`` visits into a fresh fake Matomo and
    return hits/s (wall, this process), CPU seconds per 1,000 hits, and the counts."""
    token = secrets.token_hex(16)
    process, url = start_fake_server(
        ["--sites", f"1:{BENCH_TIMEZONE}", "--token", token, "--workers", str(server_workers)]
    )
    target = plan = None
    try:
        target = make_bench_target(url, token, BENCH_TIMEZONE)
        preset = Preset.objects.get(name=preset_name)
        yesterday = datetime.now(UTC).astimezone(ZoneInfo(BENCH_TIMEZONE)).date() - timedelta(days=1)
        plan = BackfillPlan.objects.create_plan(
            targets=[target],
            preset=preset,
            start_date=yesterday - timedelta(days=days - 1),
            end_date=yesterday,
            visits_per_day=visits_per_day,
            daily_cap=None,
            batch_size=batch_size,
        )
        plan.confirm(by_name="benchmark")
        plan.start(enqueue=False)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_start = usage.ru_utime + usage.ru_stime
        wall_start = time.perf_counter()
        run_in_foreground(plan)
        wall = time.perf_counter() - wall_start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu_start
        progress = plan.progress()
        server = fake_call(url, "_fake/stats")
        plan.refresh_from_db()
        return {
            "days": progress.days,
            "visits": progress.visits_done,
            "hits": progress.hits_sent,
            "accepted": progress.hits_accepted,
            "batch_size": batch_size,
            "requests": server["bulk_requests"],
            "seconds": round(wall, 3),
            "hits_per_second": round(progress.hits_sent / wall) if wall else None,
            "cpu_seconds_per_1k_hits": round(cpu / progress.hits_sent * 1000, 4) if progress.hits_sent else None,
            # What one worker core does when Matomo never makes it wait (load-independent).
            "hits_per_cpu_second": round(progress.hits_sent / cpu) if cpu else None,
            "server_recorded": server["recorded"],
            "status": plan.status,
        }
    finally:
        stop_fake_server(process)
        if plan is not None:
            plan.delete()
        if target is not None:
            target.delete()
