"""Benchmark the sender against a fake Matomo in another process (count-only mode).

    python -m trafficinator.bench.sending                      # the whole matrix, JSON lines
    python -m trafficinator.bench.sending --mode bulk --hits 200000 --batch-size 100

Only the loader process is measured (CPU time, peak RSS); the fake server runs in its own
process, so on a two-core machine each gets a core. Hits are pre-encoded before the clock
starts, like the traffic model's encoder hands them over.

Measured on the 2-core dev box (other jobs running, so wall rates are noisy; CPU per hit
is the stable figure), concurrency 20, ~410-byte hits:

=========================  ===========  ======================  ==================
path                       hits/s wall  loader CPU s/1k hits    hits per CPU-s
=========================  ===========  ======================  ==================
single, geventhttpclient   4,900-6,500  0.10-0.15               6,800-10,000
single, requests           420-940      1.0-1.2                 820-990
bulk 100, geventhttpclient 19,000-41k   0.0064-0.0082           120k-157k
bulk 100, requests         12,000-40k   0.018-0.021             47k-57k
bulk 500, geventhttpclient 40,500       0.0047                  213k
=========================  ===========  ======================  ==================

Wall rates are bounded by the fake server (it evaluates every hit), not the loader. The
loader's RSS grows by ~2 MB while sending; the peak (42 MB for 20k hits, 136 MB for
200k) is mostly the pre-encoded hits themselves.
"""

if __name__ == "__main__":  # patch before anything imports socket (requests needs it)
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from targets.fake_matomo.process import fake_call, start_fake_server, stop_fake_server
from trafficinator.sending.sender import RetryPolicy, TargetSender

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WARMUP_HITS = 500


def make_hits(count: int, hits_per_visit: int = 5) -> list[list[str]]:
    """``count`` realistic-length single-site hits (~350 bytes), grouped in visits."""
    visits = []
    made = 0
    visit = 0
    while made < count:
        cid = f"{visit:016x}"
        size = min(hits_per_visit, count - made)
        hits = []
        for step in range(size):
            hits.append(
                "idsite=1&rec=1&apiv=1&send_image=0"
                f"&_id={cid}&cid={cid}&pv_id={visit % 999999:06d}&rand={made + step}"
                f"&url=https%3A%2F%2Fshop.example.org%2Fcategory%2F{step}%2Fproduct-{visit % 5000}"
                f"&action_name=Product%20{visit % 5000}%20%2F%20Category%20{step}"
                "&urlref=https%3A%2F%2Fwww.google.com%2F&res=1920x1080&lang=en-US"
                "&ua=Mozilla%2F5.0%20(Windows%20NT%2010.0%3B%20Win64%3B%20x64)%20AppleWebKit%2F537.36"
                "%20(KHTML%2C%20like%20Gecko)%20Chrome%2F126.0%20Safari%2F537.36"
            )
        visits.append(hits)
        made += size
        visit += 1
    return visits


def benchmark_sender(
    mode: str = "single",
    client: str = "geventhttpclient",
    hits: int = 20_000,
    concurrency: int = 20,
    batch_size: int = 100,
) -> dict[str, Any]:
    """Send ``hits`` pre-encoded hits to a fresh fake Matomo process and measure the loader.

    Returns hits/s (wall), loader CPU seconds per 1,000 hits, hits per loader CPU second,
    peak RSS of the loader process (MB, a high-water mark of the whole process), and what
    the server counted. ``client="requests"`` needs a gevent-monkey-patched process."""
    if mode not in ("single", "bulk"):
        raise ValueError("mode must be 'single' or 'bulk'")
    if client == "requests":
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            raise RuntimeError(
                "the requests client needs gevent monkey-patching: run python -m trafficinator.bench.sending"
            )
    visits = make_hits(hits)
    warmup = make_hits(WARMUP_HITS)
    process, url = start_fake_server()
    try:
        sender = TargetSender(
            url + "matomo.php",
            None,
            concurrency=concurrency,
            timeout=30.0,
            bulk=mode == "bulk",
            batch_size=batch_size,
            retry=RetryPolicy(max_attempts=2),
            client=client,
            name="bench",
        )
        # Warm-up: open the connections before the clock starts.
        _send_all(sender, warmup, mode)
        sender.join()
        fake_call(url, "_fake/reset", "POST")
        before = sender.telemetry.counts()

        usage = resource.getrusage(resource.RUSAGE_SELF)
        rss_before = usage.ru_maxrss
        cpu_start = usage.ru_utime + usage.ru_stime
        wall_start = time.perf_counter()
        _send_all(sender, visits, mode)
        sender.join()
        wall = time.perf_counter() - wall_start
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu_start

        after = sender.telemetry.counts()
        sender.close(1.0)
        server = fake_call(url, "_fake/stats")
    finally:
        stop_fake_server(process)
    accepted = after["accepted"] - before["accepted"]
    return {
        "mode": mode,
        "client": client,
        "hits": hits,
        "concurrency": concurrency,
        "batch_size": batch_size if mode == "bulk" else None,
        "seconds": round(wall, 3),
        "hits_per_second": round(hits / wall),
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_1k_hits": round(cpu / hits * 1000, 4),
        "hits_per_cpu_second": round(hits / cpu) if cpu else None,
        # Linux reports KiB. The pre-encoded hits are part of it (~0.4 KB each).
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "rss_growth_while_sending_mb": round((usage.ru_maxrss - rss_before) / 1024, 1),
        "accepted": accepted,
        "not_accepted": (after["sent"] - before["sent"]) - accepted,
        "server_hits_received": server["hits_received"],
        "server_requests": server["requests"],
    }


def _send_all(sender: TargetSender, visits: list[list[str]], mode: str) -> None:
    if mode == "bulk":
        for visit in visits:
            sender.send_visit(visit)
    else:
        send_hit = sender.send_hit
        for visit in visits:
            for hit in visit:
                send_hit(hit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trafficinator.bench.sending",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mode", choices=["single", "bulk"], help="default: the whole matrix")
    parser.add_argument("--client", choices=["geventhttpclient", "requests"])
    parser.add_argument("--hits", type=int)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args(argv)
    if args.mode or args.client:
        runs = [(args.mode or "single", args.client or "geventhttpclient", args.hits or 20_000)]
    else:
        runs = [
            ("single", "geventhttpclient", args.hits or 20_000),
            ("single", "requests", args.hits or 5_000),
            ("bulk", "geventhttpclient", (args.hits or 20_000) * 10),
            ("bulk", "requests", (args.hits or 20_000) * 10),
        ]
    for mode, client, hits in runs:
        result = benchmark_sender(mode, client, hits, args.concurrency, args.batch_size)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
