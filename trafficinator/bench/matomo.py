"""Backfill and live bulk against a Matomo-sized fake, next to a bare bulk sender.

    manage.py bench --only matomo [--matomo-workers 4 --hit-ms 4 --request-ms 10 --in-flight 4]

The fake Matomo runs in its own process in capacity mode: a fixed number of "PHP workers",
each busy for a time per request and per hit, so a sender that leaves workers idle is
visibly slower, as it is against a real Matomo (issue: the old batch-then-wait backfill
left a third of a real 2-core Matomo idle).

Five senders push the same kind of traffic into it:

* **bare**: the yardstick for speed, written for this benchmark. The hits are encoded into
  bulk bodies before the clock starts; ``in_flight`` greenlets each POST the next body
  over their own keep-alive connection (geventhttpclient) as soon as the previous answer
  came back. No accounting, no retries, no per-visitor order, no database: as fast as the
  fake takes bulk requests. It loses what the fake refuses as out of order (a returning
  visitor's later visit served first): "recorded" says how much it really delivered.
* **bare generating**: the yardstick for CPU. The same bare loop, but it generates,
  encodes and packs the backfill's visits while sending, as the backfill must (generation
  is ~40 us per hit; a sender with pre-built bodies pays none of it).
* **sender**: our TargetSender with the bare sender's pre-encoded requests (the sending
  part alone: pipelining, per-visitor order, settling, telemetry).
* **backfill**: a real one-day plan run in this process with the workers' code (packing,
  pipelining, checkpoints in the database, telemetry). The bare sender sends exactly the
  backfill's requests (same visits, same packing), into a fresh fake.
* **live bulk**: ``manage.py run_traffic --bulk`` in its own process, offered about twice
  what the fake takes, for a fixed duration; hits/s counts what the fake recorded.

Each prints hits/s (wall), CPU seconds per 1,000 hits of the sending process (this process
for bare and backfill, the loader process for live) and the ratio to bare.
"""

from __future__ import annotations

import gc
import os
import resource
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import gevent
import gevent.lock
from geventhttpclient import HTTPClient
from geventhttpclient.url import URL

from targets.fake_matomo.process import fake_call, start_fake_server, stop_fake_server
from trafficinator.bench.common import make_bench_target
from trafficinator.sending.sender import bulk_requests_json

BENCH_TIMEZONE = "Europe/Stockholm"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process and its waited-for children
    (/proc/PID/stat), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(value) for value in fields[11:15]) / ticks


def capacity_args(workers: int, hit_ms: float, request_ms: float, token: str) -> list[str]:
    return [
        "--sites",
        f"1:{BENCH_TIMEZONE}",
        "--token",
        token,
        "--capacity",
        str(workers),
        "--hit-ms",
        str(hit_ms),
        "--request-ms",
        str(request_ms),
    ]


def bare_bulk(
    url: str, token: str, requests: Iterable[list[str]], in_flight: int, *, encoded: bool = True
) -> dict[str, Any]:
    """POST bulk bodies with ``in_flight`` connections, each sending its next body as soon
    as its previous answer is read. Returns hits/s and CPU per 1,000 hits.

    ``encoded`` (the yardstick for speed): the bodies are built before the clock starts.
    Otherwise ``requests`` is consumed while sending (e.g. a generator that generates and
    encodes the visits), and the bodies are built on the clock: the yardstick for CPU."""
    tail = f',"token_auth":"{token}"}}'.encode()

    def bodies_of(source: Iterable[list[str]]) -> Iterator[tuple[bytes, int]]:
        for entries in source:
            yield b'{"requests":' + bulk_requests_json(entries) + tail, len(entries)

    bodies: Iterable[tuple[bytes, int]] = list(bodies_of(requests)) if encoded else bodies_of(requests)
    address = URL(url + "matomo.php")
    clients = [HTTPClient.from_url(address, concurrency=1, network_timeout=60) for _ in range(in_flight)]
    headers = {"Content-Type": "application/json"}
    queue = iter(bodies)
    taking = gevent.lock.Semaphore()  # a generating source yields to other greenlets mid-step
    statuses: list[int] = []
    sent = [0, 0]  # requests, hits

    def worker(client: HTTPClient) -> None:
        while True:
            with taking:
                body, count = next(queue, (b"", 0))
            if not count:
                return
            response = client.post(address.request_uri, body=body, headers=headers)
            response.read()
            statuses.append(response.status_code)
            sent[0] += 1
            sent[1] += count

    gc.collect()  # each row starts without the garbage of the one before
    cpu_start = cpu_seconds()
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, client) for client in clients], raise_error=True)
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_start
    for client in clients:
        client.close()
    hits = sent[1]
    return {
        "hits": hits,
        "requests": sent[0],
        "ok": statuses.count(200),
        "seconds": wall,
        "hits_per_second": hits / wall,
        "cpu_per_1k": cpu / hits * 1000,
    }


def sender_only(url: str, token: str, requests: list[list[str]], in_flight: int) -> dict[str, Any]:
    """Our TargetSender (pipelining, per-visitor order, settling, telemetry) with the
    bare sender's pre-encoded requests: the sending part of the backfill, without
    generating visits or writing checkpoints."""
    from trafficinator.sending.sender import TargetSender

    sender = TargetSender(url + "matomo.php", token, concurrency=in_flight, timeout=60, bulk=True, name="bench")
    visits = [[[entry] for entry in entries] for entries in requests]  # visitor order needs no grouping here
    gc.collect()  # each row starts without the garbage of the one before
    cpu_start = cpu_seconds()
    started = time.perf_counter()
    for request in visits:
        sender.send_request(request)
    sender.join()
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_start
    counts = sender.telemetry.counts()
    sender.close(1.0)
    hits = sum(len(entries) for entries in requests)
    return {
        "hits": hits,
        "accepted": counts["accepted"],
        "seconds": wall,
        "hits_per_second": hits / wall,
        "cpu_per_1k": cpu / hits * 1000,
    }


def benchmark_matomo(
    *,
    visits: int = 5000,
    workers: int = 4,
    hit_ms: float = 4.0,
    request_ms: float = 10.0,
    in_flight: int | None = None,
    batch_size: int = 400,
    live_seconds: float = 20.0,
) -> dict[str, dict[str, Any]]:
    """Run bare, backfill and live bulk against the fake in capacity mode; see the module
    docstring. ``in_flight``: requests the backfill (and bare) keep in flight (default:
    the backfill's default)."""
    from backfill import planning
    from backfill.models import DEFAULT_REQUESTS_IN_FLIGHT

    in_flight = in_flight or DEFAULT_REQUESTS_IN_FLIGHT
    results: dict[str, dict[str, Any]] = {}
    token = secrets.token_hex(16)
    started = time.monotonic()
    load_before = os.getloadavg()
    process, url = start_fake_server(capacity_args(workers, hit_ms, request_ms, token))
    try:
        results["backfill"], requests, results["bare_generating"] = _backfill(url, token, visits, batch_size, in_flight)
        fake_call(url, "_fake/reset", "POST")
        results["bare"] = bare_bulk(url, token, requests, in_flight)
        results["bare"]["recorded"] = fake_call(url, "_fake/stats")["recorded"]
        fake_call(url, "_fake/reset", "POST")
        results["sender"] = sender_only(url, token, requests, in_flight)
        fake_call(url, "_fake/reset", "POST")
        offered = 2 * results["bare"]["hits_per_second"]
        results["live"] = _live(url, token, offered, live_seconds)
    finally:
        stop_fake_server(process)
    for name in ("sender", "backfill", "live", "bare_generating"):
        results[name]["ratio"] = results[name]["hits_per_second"] / results["bare"]["hits_per_second"]
    results["run"] = {
        "seconds": time.monotonic() - started,
        "load_before": load_before[0],
        "load_after": os.getloadavg()[0],
    }
    results["settings"] = {
        "workers": workers,
        "hit_ms": hit_ms,
        "request_ms": request_ms,
        "in_flight": in_flight,
        "batch_size": batch_size,
        "request_hits": planning.request_hits(batch_size),
    }
    return results


def _backfill(
    url: str, token: str, visits: int, batch_size: int, in_flight: int
) -> tuple[dict[str, Any], list[list[str]], dict[str, Any]]:
    """The backfill's figures, its requests (as the bare sender sends them), and the bare
    sender's figures when it generates and encodes the same visits on the clock, as the
    backfill does (its CPU per hit is the like-for-like yardstick: generation costs
    ~40 us/hit, which the bare sender with bodies built beforehand never pays)."""
    from backfill import planning, runner
    from backfill.foreground import run_in_foreground
    from backfill.models import BackfillPlan
    from presets.models import Preset

    target = plan = None
    try:
        target = make_bench_target(url, token, BENCH_TIMEZONE)
        yesterday = datetime.now(UTC).astimezone(ZoneInfo(BENCH_TIMEZONE)).date() - timedelta(days=1)
        plan = BackfillPlan.objects.create_plan(
            targets=[target],
            preset=Preset.objects.get(name="Medium"),
            start_date=yesterday,
            end_date=yesterday,
            visits_per_day=visits,
            daily_cap=None,
            batch_size=batch_size,
            requests_in_flight=in_flight,
        )
        plan.confirm(by_name="benchmark")
        day = plan.days.get()
        requests = [
            [entry for visit in request.visits for entry in visit]
            for request in runner.iter_requests(runner.day_stream(plan, day, skip=0), planning.request_hits(batch_size))
        ]
        plan.start(enqueue=False)
        gc.collect()  # each row starts without the garbage of the one before
        cpu_start = cpu_seconds()
        started = time.perf_counter()
        run_in_foreground(plan)
        wall = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_start
        progress = plan.progress()
        server = fake_call(url, "_fake/stats")
        plan.refresh_from_db()
        hits = progress.hits_sent
        fake_call(url, "_fake/reset", "POST")

        def generated() -> Iterator[list[str]]:
            # All on the clock, as in the backfill's worker: load the plan and its day and
            # build the day's generator (~10 ms), then generate, encode and pack.
            again = BackfillPlan.objects.get(pk=plan.pk)
            stream = runner.day_stream(again, again.days.get(pk=day.pk), skip=0)
            for request in runner.iter_requests(stream, planning.request_hits(batch_size)):
                yield [entry for visit in request.visits for entry in visit]

        generating = bare_bulk(url, token, generated(), in_flight, encoded=False)
        generating["recorded"] = fake_call(url, "_fake/stats")["recorded"]
        return (
            {
                "hits": hits,
                "accepted": progress.hits_accepted,
                "recorded": server["recorded"],
                "requests": server["bulk_requests"],
                "status": plan.status,
                "seconds": wall,
                "hits_per_second": hits / wall,
                "cpu_per_1k": cpu / hits * 1000 if hits else 0.0,
            },
            requests,
            generating,
        )
    finally:
        if plan is not None:
            plan.delete()
        if target is not None:
            target.delete()


def _live(url: str, token: str, offered_hits_per_second: float, seconds: float) -> dict[str, Any]:
    """``manage.py run_traffic --bulk`` in its own process, offered about
    ``offered_hits_per_second`` for ``seconds``; hits/s is what the fake recorded."""
    from presets.models import Preset
    from targets.models import Target
    from trafficinator.testing import make_preset, subprocess_env

    target: Target | None = None
    preset: Preset | None = None
    try:
        target = make_bench_target(url, token, BENCH_TIMEZONE)
        # Short visits (well under a second), flat curve: the offered rate is the rate.
        preset = make_preset(
            name=f"bench-live-{secrets.token_hex(4)}",
            visits_per_day=1000,
            daily_curve="flat",
            pause_min=0.0,
            pause_max=0.1,
            visit_duration_min=0.0,
            visit_duration_max=0.01,
            concurrency=8,
        )
        from runs.models import MAX_VISITS_PER_DAY

        # ~3 hits a visit; never more than a run may ask for (at the default capacity twice
        # the bare rate is ~54 M visits/day, so the cap makes the offer ~1.9x, still over).
        visits_per_day = min(MAX_VISITS_PER_DAY, int(offered_hits_per_second / 3.0 * 86400))
        loader = subprocess.Popen(  # noqa: S603 - our own interpreter and command
            [
                sys.executable,
                str(PROJECT_ROOT / "manage.py"),
                "run_traffic",
                "--target",
                target.name,
                "--preset",
                preset.name,
                "--bulk",
                "--batch-size",
                "100",
                "--rate",
                str(visits_per_day),
                "--duration",
                f"{int(seconds)}s",
                "--seed",
                "1",
            ],
            cwd=PROJECT_ROOT,
            env=subprocess_env(),  # the database this process uses (a test database under pytest)
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Measure the sending itself: from the second poll after traffic began to the
        # last poll before the loader ended (start-up and shut-down excluded).
        samples: list[tuple[float, float, int]] = []  # (time, loader CPU s, recorded)
        deadline = time.monotonic() + seconds + 120
        while loader.poll() is None and time.monotonic() < deadline:
            cpu = process_cpu_seconds(loader.pid)
            recorded = fake_call(url, "_fake/stats")["recorded"]
            if cpu is not None and (recorded or samples):
                samples.append((time.perf_counter(), cpu, recorded))
            time.sleep(0.5)
        if loader.poll() is None:
            loader.kill()
        output, errors = loader.communicate(timeout=30)
        lines = output.strip().splitlines() + errors.strip().splitlines()[-3:]
        server = fake_call(url, "_fake/stats")
        if len(samples) < 3:
            raise RuntimeError(f"the live loader sent nothing measurable: {lines[-1:]}")
        (t0, cpu0, hits0), (t1, cpu1, hits1) = samples[1], samples[-1]
        hits = hits1 - hits0
        return {
            "hits": hits,
            "recorded": server["recorded"],
            "requests": server["bulk_requests"],
            "offered_hits_per_second": offered_hits_per_second,
            "seconds": t1 - t0,
            "hits_per_second": hits / (t1 - t0),
            "cpu_per_1k": (cpu1 - cpu0) / hits * 1000 if hits else 0.0,
            "summary": next((line for line in reversed(lines) if line.startswith("visits_started=")), ""),
        }
    finally:
        from runs.models import Run

        if target is not None:
            Run.objects.filter(run_targets__target=target).delete()
            target.delete()
        if preset is not None:
            preset.delete()
