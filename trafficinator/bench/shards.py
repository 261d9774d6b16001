"""How a live run scales with its shards: the same bulk run with 1, 2, ... shards.

    from trafficinator.bench.shards import benchmark_shards
    benchmark_shards(shards=2, seconds=20)

Each shard is claimed here and sent by its own ``manage.py run_loader`` process, exactly as
a worker starts it, to the fake Matomo in count-only mode with several server workers (its
own process, so it never shares a loader's core). Every loader is measured from outside as
in ``trafficinator.bench.live``: CPU seconds (user + system of the loader and its children,
/proc/PID/stat, then wait4) from its shard's first report to its exit. The run asks for the
most a run may (50 M visits/day) with long visits of instant page views (40 hits a visit:
about 23,000 hits/s), more than one loader process sends, so one shard is CPU-bound and
more shards show what more processes add. The figures are the run's merged counters.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time

from runs.models import MAX_VISITS_PER_DAY, Run, RunShard
from targets.fake_matomo.process import fake_call, start_fake_server, stop_fake_server
from trafficinator.bench.common import make_bench_preset, make_bench_target
from trafficinator.bench.live import exited, process_cpu_seconds, resource_usage, start_loader

BENCH_TIMEZONE = "UTC"
PAGEVIEWS_PER_VISIT = 40


def benchmark_shards(
    *,
    shards: int,
    seconds: float = 20.0,
    concurrency: int = 20,
    batch_size: int = 100,
    server_workers: int = 4,
) -> dict:
    """One bulk run of ``shards`` shards for ``seconds``; its aggregate figures."""
    token = secrets.token_hex(16)
    server, url = start_fake_server(
        ["--sites", f"1:{BENCH_TIMEZONE}", "--token", token, "--workers", str(server_workers)]
    )
    target = preset = run = None
    children: list[subprocess.Popen] = []
    load_before = os.getloadavg()
    try:
        target = make_bench_target(url, token, BENCH_TIMEZONE)
        # Many page views with no pause: hits are due at once, and a visit is long enough
        # that one process cannot keep up.
        preset = make_bench_preset(
            "shards",
            visits_per_day=MAX_VISITS_PER_DAY,
            pageviews_min=PAGEVIEWS_PER_VISIT,
            pageviews_max=PAGEVIEWS_PER_VISIT,
            pause_max=0.05,
            concurrency=concurrency,
        )
        run = Run.objects.create_run(
            preset=preset,
            targets=[target],
            seed=1,
            visits_per_day=MAX_VISITS_PER_DAY,
            duration_seconds=max(1, round(seconds)),
            bulk=True,
            batch_size=batch_size,
            shards=shards,
        )
        for index in range(shards):
            children.append(start_loader(run, index))  # one by one: the finally ends those started
        cpu_at_start: dict[int, float] = {}
        started: dict[int, float] = {}
        ended: dict[int, float] = {}
        while len(ended) < len(children):
            now = time.monotonic()
            for index, child in enumerate(children):
                if index in ended:
                    continue
                if exited(child.pid):
                    ended[index] = now
                elif index not in started and RunShard.objects.filter(run=run, index=index).exclude(stats={}).exists():
                    cpu_at_start[index] = process_cpu_seconds(child.pid) or 0.0  # the loop's first report
                    started[index] = now
            time.sleep(0.05)
        cpu = 0.0
        for index, child in enumerate(children):
            cpu += resource_usage(child)["cpu"] - cpu_at_start.get(index, 0.0)
        wall = max(ended.values()) - min(started.values(), default=max(ended.values()))
        run.refresh_from_db()
        totals = run.stats.get("totals", {})
        per_shard = [
            int((shard.stats.get("totals") or {}).get("sent", 0)) for shard in RunShard.objects.filter(run=run)
        ]
        # The shards start a few seconds apart (each its own process start-up) and each
        # sends for the run's duration: the run's rate is the sum of theirs.
        rates = [
            sent_i / (ended[index] - started[index])
            for index, sent_i in enumerate(per_shard)
            if index in started and ended[index] > started[index]
        ]
        stats = fake_call(url, "_fake/stats")
        sent = int(totals.get("sent", 0))
        return {
            "shards": shards,
            "status": run.status,
            "seconds": round(wall, 1),
            "sent": sent,
            "sent_per_shard": per_shard,
            "accepted": int(totals.get("accepted", 0)),
            "server_recorded": stats.get("recorded"),
            "hits_per_second": round(sum(rates)) if rates else None,
            "saturated": bool(totals.get("saturated")),
            "delivered_percent": totals.get("delivered_percent"),
            "wait_ms": totals.get("wait_ms") or {},
            "latency_ms": totals.get("latency_ms") or {},
            "cpu_seconds": round(cpu, 2),
            "hits_per_cpu_second": round(sent / cpu) if cpu > 0 else None,
            "load_average": (load_before[0], os.getloadavg()[0]),
            "end_reason": run.end_reason,
        }
    finally:
        for child in children:
            if child.returncode is None and child.poll() is None:
                child.kill()
                child.wait(10)
        stop_fake_server(server)
        if run is not None:
            run.delete()
        if preset is not None:
            preset.delete()
        if target is not None:
            target.delete()
