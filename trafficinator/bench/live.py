"""How fast the real live loader sends, and how it behaves when asked for far more.

    from trafficinator.bench.live import benchmark_live
    benchmark_live(bulk=False, seconds=20)

A real run (a bench target, preset and run in the project's database, deleted after) is
sent by ``manage.py run_loader`` in its own, monkey-patched process, exactly as a worker
starts it, to the fake Matomo (``python -m targets.fake_matomo --count-only``) in another
process. The loader process is measured from outside: CPU time from ``/proc/PID/stat``
(user + system, including its children) from its first report (startup excluded) to its
exit, resident memory sampled from ``/proc/PID/status`` every half second, its peak from
``wait4``.

A run may ask at most ``MAX_VISITS_PER_DAY`` per target (about 2,000 hits/s with the
bench preset), and one loader sends several times that. So a rate above it is split over
several targets on the same fake Matomo, each with an explicit rate, as a user with
several sites would run it: asked enough, the loader saturates and the figures are its
end-to-end capacity (generation, pacing, encoding, sending, telemetry, reports). At a
rate it can keep up with, hits per CPU-second are lower: the event loop wakes for fewer
hits at a time, and the scheduler's and reports' fixed cost is shared by fewer hits.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from runs.models import MAX_VISITS_PER_DAY, Run
from targets.fake_matomo.process import fake_call, start_fake_server, stop_fake_server
from targets.models import Target
from trafficinator.bench.common import make_bench_preset, make_bench_target
from trafficinator.testing import subprocess_env

MANAGE_PY = Path(__file__).resolve().parents[2] / "manage.py"
TICKS = os.sysconf("SC_CLK_TCK")
BENCH_TIMEZONE = "UTC"


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of ``pid`` (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime..cstime are fields 14..17.
    return sum(int(value) for value in fields[11:15]) / TICKS


def process_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_loader(run: Run, shard: int | None = None) -> subprocess.Popen:
    """Claim ``run``'s shard ``shard`` (default: the first one queued) and send it with
    ``manage.py run_loader`` in its own process, exactly as a worker starts it."""
    claim = run.claim(pid=os.getpid(), host="bench", shard=shard)
    assert claim is not None, f"shard {shard} could not be claimed"
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, str(MANAGE_PY), "run_loader", str(run.pk), "--claim", str(claim)],
        env=subprocess_env(),  # the database this process uses (a test database under pytest)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run.shards.filter(claim_token=claim).update(loader_pid=child.pid)
    return child


def benchmark_live(
    *,
    bulk: bool,
    seconds: float = 20.0,
    visits_per_day: int = MAX_VISITS_PER_DAY,
    concurrency: int = 20,
    batch_size: int = 100,
    server_workers: int = 2,
    stop_after: float | None = None,
    server_args: list[str] | None = None,
) -> dict:
    """Run the live loader for ``seconds`` (or press Stop after ``stop_after`` seconds and
    measure how long it takes to end) and return its figures."""
    token = secrets.token_hex(16)
    server, url = start_fake_server(
        ["--sites", f"1:{BENCH_TIMEZONE}", "--token", token, "--workers", str(server_workers), *(server_args or [])]
    )
    targets: list[Target] = []
    preset = run = None
    try:
        # Above what one target may ask: several targets, each with its share as its own rate.
        count = -(-visits_per_day // MAX_VISITS_PER_DAY)
        for _ in range(count):
            targets.append(make_bench_target(url, token, BENCH_TIMEZONE))
        shares: list[tuple[Target, float, int | None]] = [(target, 1.0, visits_per_day // count) for target in targets]
        entries: list[Target] | list[tuple[Target, float, int | None]] = shares if count > 1 else list(targets)
        preset = make_bench_preset("live", visits_per_day=1_000_000, concurrency=concurrency)
        run = Run.objects.create_run(
            preset=preset,
            targets=entries,
            seed=1,
            visits_per_day=min(visits_per_day, MAX_VISITS_PER_DAY),
            duration_seconds=None if stop_after else max(1, round(seconds)),
            bulk=bulk,
            batch_size=batch_size,
        )
        child = start_loader(run)
        cpu_at_start = None
        started = None
        rss: list[tuple[float, float]] = []
        stop_asked = stopped_in = None
        next_sample = 0.0
        while not exited(child.pid):
            now = time.monotonic()
            if cpu_at_start is None and Run.objects.filter(pk=run.pk).exclude(stats={}).exists():
                cpu_at_start, started = process_cpu_seconds(child.pid), now  # the loop's first report
            if started is not None and now >= next_sample:
                next_sample = now + 0.5
                value = process_rss_mb(child.pid)
                if value is not None:
                    rss.append((now - started, value))
            if stop_after and started is not None and stop_asked is None and now - started >= stop_after:
                run.request_stop("Stopped by the benchmark.", by="the benchmark")
                stop_asked = now
            time.sleep(0.05)
        ended = time.monotonic()
        if stop_asked is not None:
            stopped_in = ended - stop_asked
        # The exit status and resource usage of the loader (incl. the children it waited for).
        usage = resource_usage(child)
        cpu = usage["cpu"] - (cpu_at_start or 0.0)
        wall = ended - (started or ended)
        run.refresh_from_db()
        totals = run.stats.get("totals", {})
        stats = fake_call(url, "_fake/stats")
        sent = int(totals.get("sent", 0))
        return {
            "mode": "bulk" if bulk else "single",
            "status": run.status,
            "seconds": round(wall, 1),
            "sent": sent,
            "accepted": int(totals.get("accepted", 0)),
            "server_recorded": stats.get("recorded"),
            "hits_per_second": round(sent / wall) if wall else None,
            "cpu_seconds": round(cpu, 2),
            "hits_per_cpu_second": round(sent / cpu) if cpu > 0 else None,
            "peak_rss_mb": round(usage["peak_rss_mb"], 1),
            "rss_samples": rss,
            "stopped_in": None if stopped_in is None else round(stopped_in, 2),
            "visits_per_day_asked": visits_per_day,
            "targets": len(targets),
            "visits_started": int(totals.get("visits_started", 0)),
            "visits_delivered": int(totals.get("visits_delivered", 0)),
            "visits_behind": int(totals.get("visits_behind", 0)),
            "delivered_percent": totals.get("delivered_percent"),
            "saturated": bool(totals.get("saturated")),
            "lag_seconds": totals.get("lag_seconds"),
            "late_hits": int(totals.get("late_hits", 0)),
            "wait_ms": totals.get("wait_ms") or {},
            "latency_ms": totals.get("latency_ms") or {},
            "end_reason": run.end_reason,
        }
    finally:
        stop_fake_server(server)
        if run is not None:
            run.delete()
        if preset is not None:
            preset.delete()
        for target in targets:
            target.delete()


def exited(pid: int) -> bool:
    """Whether the child ended, without reaping it (so wait4 can still read its usage)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def resource_usage(child: subprocess.Popen) -> dict:
    """Reap ``child`` with wait4: its CPU seconds (user + system, with the children it
    waited for, the same as /proc/PID/stat's utime + stime + cutime + cstime at exit)
    and its peak RSS."""
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {"cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}
