"""manage.py bench: the speed and memory figures the product promises, measured here.

Everything runs against the local fake Matomo on 127.0.0.1 (started as its own process in
count-only mode), never against a real Matomo. Not monkey-patched: the backfill path runs
that way in a django-q2 worker, and the loader's hot path (geventhttpclient) uses gevent's
sockets either way.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from argparse import ArgumentParser
from datetime import date, timedelta

from django.core.management.base import BaseCommand, CommandError

from targets.fake_matomo.process import fake_call, start_fake_server, stop_fake_server
from trafficinator.bench.backfill import benchmark_backfill
from trafficinator.bench.generation import benchmark_generation
from trafficinator.bench.sending import benchmark_sender
from trafficinator.sending.sender import TargetSender
from trafficinator.traffic import Profile, day_visits, encode_visit

SECTIONS = ("generation", "single", "bulk", "stream", "backfill", "matomo", "live", "overload", "shards")


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident set size right now (not the high-water mark earlier sections left)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return rss_mb()


class Command(BaseCommand):
    help = (
        "Benchmark generation, the loader's single-hit and bulk paths, memory over a long "
        "stream, and backfill, against a local fake Matomo. Prints one line per figure."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--only", choices=SECTIONS, action="append", help="Run only these sections.")
        parser.add_argument("--hits", type=int, default=30_000, help="Hits for the single-hit path (default 30,000).")
        parser.add_argument("--bulk-hits", type=int, default=200_000, help="Hits for the bulk path (default 200,000).")
        parser.add_argument("--concurrency", type=int, default=20)
        parser.add_argument(
            "--overload-seconds",
            type=float,
            default=60.0,
            help="Seconds of the overload run before Stop is pressed (default 60).",
        )
        parser.add_argument("--batch-size", type=int, default=100)
        parser.add_argument(
            "--visits",
            type=int,
            default=200_000,
            help="Visits streamed through generation, encoding and bulk sending for the memory figure "
            "(default 200,000; the product's promise is about 1,000,000).",
        )

        matomo = parser.add_argument_group("--only matomo: against a fake Matomo in capacity mode")
        matomo.add_argument("--matomo-workers", type=int, default=4, help="The fake's PHP workers (default 4).")
        matomo.add_argument("--hit-ms", type=float, default=4.0, help="A worker's time per hit (default 4 ms).")
        matomo.add_argument(
            "--request-ms", type=float, default=10.0, help="A worker's time per request (default 10 ms)."
        )
        matomo.add_argument(
            "--in-flight", type=int, default=None, help="Requests the backfill and bare keep in flight (default: ours)."
        )
        matomo.add_argument("--matomo-visits", type=int, default=5000, help="Visits of the backfilled day.")
        matomo.add_argument(
            "--live-seconds",
            type=float,
            default=20.0,
            help="Duration of the live bulk run, and of each run of --only live (default 20).",
        )

        sharded = parser.add_argument_group("--only shards: one bulk run with 1, 2, ... shards")
        sharded.add_argument(
            "--shard-counts",
            default="1,2",
            help="Shard counts to run, comma-separated; the first is the baseline of the ratio (default 1,2).",
        )
        sharded.add_argument("--shard-seconds", type=float, default=20.0, help="Length of each run (default 20).")
        sharded.add_argument(
            "--server-workers", type=int, default=4, help="Processes of the count-only fake Matomo (default 4)."
        )

    def handle(self, *args, only, hits, bulk_hits, concurrency, batch_size, visits, **options) -> None:
        sections = only or list(SECTIONS)
        if "generation" in sections:
            self.generation()
        if "single" in sections:
            self.sender("single", hits, concurrency, batch_size)
        if "bulk" in sections:
            self.sender("bulk", bulk_hits, concurrency, batch_size)
        if "stream" in sections:
            self.stream(visits, concurrency, batch_size)
        if "backfill" in sections:
            self.backfill()
        if "matomo" in sections:
            self.matomo(options)
        if "live" in sections:
            self.live(options["live_seconds"], concurrency, batch_size)
        if "overload" in sections:
            self.overload(options["overload_seconds"], concurrency)
        if "shards" in sections:
            self.shards(options["shard_counts"], options["shard_seconds"], options["server_workers"], concurrency)

    def line(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def generation(self) -> None:
        result = benchmark_generation(3.0)
        self.line(
            f"generation: {result['hits_per_second']:,.0f} hits/s ({result['visits_per_second']:,.0f} visits/s), "
            f"with encoding {result['encoded_hits_per_second']:,.0f} hits/s, on one core (target > 20,000 hits/s)"
        )

    def sender(self, mode: str, hits: int, concurrency: int, batch_size: int) -> None:
        result = benchmark_sender(
            mode=mode, client="geventhttpclient", hits=hits, concurrency=concurrency, batch_size=batch_size
        )
        target = "5,000 hits per CPU-second" if mode == "single" else "20,000 hits/s"
        self.line(
            f"{mode}: {result['hits_per_second']:,.0f} hits/s, loader CPU {result['cpu_seconds_per_1k_hits']:.4f} s "
            f"per 1,000 hits ({result['hits_per_cpu_second'] or 0:,.0f} hits per CPU-second), peak RSS "
            f"{result['peak_rss_mb']:.0f} MB, accepted {result['accepted']:,}/{result['hits']:,} (target {target})"
        )

    def stream(self, visits: int, concurrency: int, batch_size: int) -> None:
        """Generate, encode and bulk-send ``visits`` visits lazily; RSS must stay flat."""
        server, url = start_fake_server()
        try:
            sender = TargetSender(url + "matomo.php", None, concurrency=concurrency, bulk=True, batch_size=batch_size)
            profile = Profile(visits_per_day=visits)
            gc.collect()
            start_rss = current_rss_mb()
            highest = start_rss
            checkpoints = []
            started = time.monotonic()
            sent_hits = 0
            day = date.today() - timedelta(days=2)
            stream = day_visits(profile, day=day, count=visits, seed=1, timezone="UTC")
            for number, visit in enumerate(stream, start=1):
                # No cdt: these days are older than 24 h and the bench has no token.
                entries = encode_visit(visit, cdt=None)
                sent_hits += len(entries)
                sender.send_visit(entries)
                if number % 1000 == 0:
                    highest = max(highest, current_rss_mb())
                if number % max(1, visits // 5) == 0:
                    checkpoints.append(f"{number:,}: {current_rss_mb():.0f} MB")
            sender.join(timeout=120)
            sender.close(grace_seconds=5)
            elapsed = time.monotonic() - started
            stats = fake_call(url, "_fake/stats")
        finally:
            stop_fake_server(server)
        self.line(
            f"stream: {visits:,} visits ({sent_hits:,} hits) generated, encoded and bulk-sent in {elapsed:.1f} s "
            f"({sent_hits / elapsed:,.0f} hits/s), tracked {stats.get('tracked', '?'):,}; RSS "
            f"{start_rss:.0f} MB at start, highest {highest:.0f} MB (target: flat, under 100 MB); "
            f"checkpoints {', '.join(checkpoints)}"
        )

    def live(self, seconds: float, concurrency: int, batch_size: int) -> None:
        """The real live loader (run_loader in its own process), single then bulk: at the
        most one target may ask (a rate it keeps up with), then asked for more than it can
        send, over several targets (its end-to-end capacity, the figure the goals are for).

        The capacity rows ask 16 and 32 targets' worth: on the 2-core box the loader and the
        fake Matomo share, 8 and 16 saturated one development machine and not the next (a
        faster CPU delivered them in full). Their lines say saturated=True when the loader
        could not keep up, which is what makes them capacity figures."""
        from runs.models import MAX_VISITS_PER_DAY
        from trafficinator.bench.live import benchmark_live

        for bulk, capacity_rate, target in (
            (False, 16 * MAX_VISITS_PER_DAY, "12,000"),
            (True, 32 * MAX_VISITS_PER_DAY, "50,000"),
        ):
            for rate in (MAX_VISITS_PER_DAY, capacity_rate):
                result = benchmark_live(
                    bulk=bulk, seconds=seconds, visits_per_day=rate, concurrency=concurrency, batch_size=batch_size
                )
                goal = f" (target >= {target} hits per CPU-second at capacity)" if rate == capacity_rate else ""
                core_share = result["cpu_seconds"] / max(result["seconds"], 0.1)
                self.line(
                    f"live {result['mode']}, {rate:,} visits/day on {result['targets']} target(s): "
                    f"{result['hits_per_second'] or 0:,} hits/s, "
                    f"{result['hits_per_cpu_second'] or 0:,} hits per loader CPU-second ({result['cpu_seconds']} CPU-s "
                    f"for {result['sent']:,} hits, /proc incl. children, {core_share:.0%} of a core), "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB, "
                    f"accepted {result['accepted']:,}, server recorded {result['server_recorded']:,}; "
                    f"{self.saturation(result)}{goal}"
                )

    def overload(self, seconds: float, concurrency: int) -> None:
        """Ten times what one loader can deliver (single hits), for ``seconds``; then Stop.

        Against a fake Matomo in capacity mode (one process of 2 workers, 10 ms per hit,
        ~200 hits/s), so ten times its capacity stays below the most a run may ask for
        (runs.models.MAX_VISITS_PER_DAY); against the count-only server one loader already
        delivers about that much, and the overload would be no overload at all. The
        capacity is measured in visits delivered (their every hit accepted): visits started
        include those still waiting for a worker, which would overstate it."""
        from runs.models import MAX_VISITS_PER_DAY
        from trafficinator.bench.live import benchmark_live

        server = ["--capacity", "2", "--hit-ms", "10"]
        calibration = benchmark_live(
            bulk=False,
            seconds=max(3.0, min(10.0, seconds)),
            concurrency=concurrency,
            server_workers=1,
            server_args=server,
        )
        capacity = calibration["visits_delivered"] / max(calibration["seconds"], 1) * 86400
        asked = min(int(capacity * 10), MAX_VISITS_PER_DAY)
        result = benchmark_live(
            bulk=False,
            visits_per_day=asked,
            concurrency=concurrency,
            stop_after=seconds,
            server_workers=1,
            server_args=server,
        )
        samples = result["rss_samples"]
        highest = max((value for _, value in samples), default=0.0)
        marks = ", ".join(f"{at:.0f} s: {value:.0f} MB" for at, value in samples[:: max(1, len(samples) // 6)])
        self.line(
            f"overload: asked {asked:,} visits/day ({asked / max(capacity, 1):.1f}x what the loader delivers to a "
            f"2-worker Matomo) for {seconds:.0f} s: "
            f"{result['hits_per_second'] or 0:,} hits/s, {result['hits_per_cpu_second'] or 0:,} hits per loader "
            f"CPU-second; RSS highest {highest:.0f} MB, peak {result['peak_rss_mb']:.0f} MB ({marks}) "
            f"(target: flat, under 150 MB); stopped in {result['stopped_in']} s after Stop (target <= 2 s), "
            f"status {result['status']}; {self.saturation(result)}"
        )

    def shards(self, counts: str, seconds: float, server_workers: int, concurrency: int) -> None:
        """The same bulk run with each shard count; hits/s and hits per loader CPU-second of
        the whole run, and the scaling ratio to the first count."""
        from trafficinator.bench.shards import benchmark_shards

        try:
            numbers = [int(part) for part in counts.split(",") if part.strip()]
        except ValueError:
            raise CommandError(f"--shard-counts: “{counts}” is not a comma-separated list of numbers.") from None
        if not numbers or any(n < 1 for n in numbers):
            raise CommandError("--shard-counts: give at least one shard count, each 1 or more.")
        baseline = None
        for count in numbers:
            result = benchmark_shards(
                shards=count, seconds=seconds, concurrency=concurrency, server_workers=server_workers
            )
            rate = result["hits_per_second"] or 0
            baseline = baseline if baseline is not None else (rate, count)
            ratio = rate / baseline[0] if baseline[0] else 0.0
            load = result["load_average"]
            self.line(
                f"shards {count}: {rate:,} hits/s, {result['hits_per_cpu_second'] or 0:,} hits per loader CPU-second "
                f"({result['cpu_seconds']} CPU-s for {result['sent']:,} hits over {result['seconds']} s, /proc incl. "
                f"children), per shard {', '.join(f'{n:,}' for n in result['sent_per_shard'])} hits, accepted "
                f"{result['accepted']:,}, server recorded {result['server_recorded']:,}; scaling {ratio:.2f}x "
                f"{baseline[1]} shard(s); saturated={result['saturated']}, delivered {result['delivered_percent']} %, "
                f"loader wait p50/p95 {result['wait_ms'].get('p50')}/{result['wait_ms'].get('p95')} ms, latency "
                f"p50/p95 {result['latency_ms'].get('p50')}/{result['latency_ms'].get('p95')} ms; {os.cpu_count()} "
                f"cores, load average {load[0]:.1f} before, {load[1]:.1f} after"
            )

    @staticmethod
    def saturation(result: dict) -> str:
        wait = result["wait_ms"]
        latency = result["latency_ms"]
        return (
            f"saturated={result['saturated']}, delivered {result['delivered_percent']} % of "
            f"{result['visits_per_day_asked']:,} visits/day asked, {result['visits_behind']:,} visits behind, "
            f"lag {result['lag_seconds']} s, late hits {result['late_hits']:,}, loader wait p50/p95 "
            f"{wait.get('p50')}/{wait.get('p95')} ms, latency p50/p95 {latency.get('p50')}/{latency.get('p95')} ms"
        )

    def backfill(self) -> None:
        result = benchmark_backfill()
        self.line(
            f"backfill: {result['hits_per_second']:,.0f} hits/s for {result.get('hits', 0):,} hits "
            "(one worker, target >= 20,000 hits/s)"
        )

    def matomo(self, options: dict) -> None:
        from trafficinator.bench.matomo import benchmark_matomo

        result = benchmark_matomo(
            visits=options["matomo_visits"],
            workers=options["matomo_workers"],
            hit_ms=options["hit_ms"],
            request_ms=options["request_ms"],
            in_flight=options["in_flight"],
            live_seconds=options["live_seconds"],
        )
        settings = result["settings"]
        self.line(
            f"matomo: fake Matomo in capacity mode, {settings['workers']} workers x ({settings['request_ms']} ms per "
            f"request + {settings['hit_ms']} ms per hit); bulk requests of {settings['request_hits']} hits, "
            f"{settings['in_flight']} in flight"
        )
        bare, generating = result["bare"], result["bare_generating"]
        for name in ("bare", "bare_generating", "sender", "backfill", "live"):
            data = result[name]
            extra = ""
            if name in ("bare", "bare_generating"):
                extra = f", {data['recorded']:,} recorded (the bare sender keeps no per-visitor order)"
            if name != "bare":
                cpu_ratio = data["cpu_per_1k"] / bare["cpu_per_1k"] if bare["cpu_per_1k"] else 0.0
                extra += f", ratio to bare {data['ratio']:.2f} (goal >= 0.95), CPU {cpu_ratio:.2f}x bare's"
            if name in ("backfill", "live") and generating["cpu_per_1k"]:
                extra += f", {data['cpu_per_1k'] / generating['cpu_per_1k']:.2f}x bare generating's"
            if name == "live":
                extra += f", offered {data['offered_hits_per_second']:,.0f} hits/s; {data['summary']}"
            per_cpu = 1000 / data["cpu_per_1k"] if data["cpu_per_1k"] else 0.0
            self.line(
                f"matomo {name.replace('_', ' ')}: {data['hits_per_second']:,.0f} hits/s over {data['seconds']:.1f} s, "
                f"{data['hits']:,} hits, CPU {data['cpu_per_1k']:.4f} s per 1,000 hits ({per_cpu:,.0f} hits per "
                f"CPU-second){extra}"
            )
        run = result["run"]
        self.line(
            f"matomo: the section took {run['seconds']:.0f} s; load average {run['load_before']:.1f} before, "
            f"{run['load_after']:.1f} after (CPU figures are of the sending process only)"
        )
