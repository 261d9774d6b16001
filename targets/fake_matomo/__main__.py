"""Run the fake Matomo as its own process.

    python -m targets.fake_matomo --port 8765 --sites 1:Europe/Stockholm:SEK:ecommerce,2 \\
        --token su-token --token w-token:write=1,2:secure --count-only --workers 2

Prints the base URL (``http://127.0.0.1:PORT/``) as the first line of stdout, then serves
until SIGINT/SIGTERM. Drive it with ``GET /_fake/stats``, ``POST /_fake/faults`` and
``POST /_fake/reset``. By default it runs under gevent (monkey-patched, one greenlet per
connection), which is several times faster than threads; ``--threads`` turns that off.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any


def parse_sites(spec: str) -> list[dict[str, Any]]:
    """``1:Europe/Stockholm:SEK:ecommerce,2`` -> site dicts (id[:timezone[:currency[:ecommerce]]])."""
    sites = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        fields = item.split(":")
        site: dict[str, Any] = {"id": int(fields[0])}
        if len(fields) > 1 and fields[1]:
            site["timezone"] = fields[1]
        if len(fields) > 2 and fields[2]:
            site["currency"] = fields[2]
        if len(fields) > 3:
            site["ecommerce"] = fields[3].lower() in ("ecommerce", "1", "true", "yes")
        sites.append(site)
    return sites


def parse_token(spec: str) -> tuple[str, dict[str, Any]]:
    """``VALUE[:superuser][:secure][:write=1,2][:admin=1][:view=3][:login=NAME]``.

    A bare ``VALUE`` is a super user's token (not secure-only)."""
    value, *options = spec.split(":")
    if not value:
        raise argparse.ArgumentTypeError(f"empty token in {spec!r}")
    token: dict[str, Any] = {}
    for option in options:
        name, _, arg = option.partition("=")
        if name == "superuser":
            token["superuser"] = True
        elif name in ("secure", "secure_only"):
            token["secure_only"] = True
        elif name in ("write", "admin", "view"):
            token[name] = [int(i) for i in arg.split(",") if i]
        elif name == "login":
            token["login"] = arg
        else:
            raise argparse.ArgumentTypeError(f"unknown token option {name!r} in {spec!r}")
    if not any(k in token for k in ("superuser", "write", "admin", "view")):
        token["superuser"] = True
    return value, token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m targets.fake_matomo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free port)")
    parser.add_argument("--sites", default="1", help="id[:timezone[:currency[:ecommerce]]],... (default 1)")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        type=parse_token,
        metavar="SPEC",
        help="VALUE[:superuser][:secure][:write=1,2][:admin=..][:view=..][:login=NAME]; repeatable",
    )
    parser.add_argument("--config", help='JSON file: {"sites": ..., "tokens": ..., "options": {...}}')
    parser.add_argument("--version", dest="matomo_version", default="5.3.0", help="Matomo version to report")
    parser.add_argument("--count-only", action="store_true", help="keep counters only, not every hit")
    parser.add_argument("--retention-days", type=float, default=None, help="reject cdt older than this")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument(
        "--modern-auth",
        action="store_true",
        help="accept secure-only tokens in JSON bulk bodies and Authorization: Bearer",
    )
    parser.add_argument("--record-statistics-off", action="store_true", help="Matomo's record_statistics = 0")
    parser.add_argument(
        "--capacity",
        type=int,
        default=None,
        metavar="WORKERS",
        help="capacity mode: serve at most WORKERS tracking requests at once, like a Matomo's PHP workers",
    )
    parser.add_argument(
        "--hit-ms", type=float, default=0.0, help="capacity mode: milliseconds of a worker's time per hit"
    )
    parser.add_argument(
        "--request-ms", type=float, default=0.0, help="capacity mode: milliseconds of a worker's time per request"
    )
    parser.add_argument("--threads", action="store_true", help="use OS threads instead of gevent")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the port with SO_REUSEPORT (counters are merged in /_fake/stats)",
    )
    return parser


def make_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    sites: Any = parse_sites(args.sites)
    tokens: dict[str, Any] = dict(args.token)
    options: dict[str, Any] = {}
    if args.config:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
        sites = config.get("sites", sites)
        tokens.update(config.get("tokens", {}))
        options.update(config.get("options", {}))
    options.setdefault("keep_hits", not args.count_only)
    options.setdefault("raw_data_retention_days", args.retention_days)
    options.setdefault("latency", args.latency)
    options.setdefault("modern_auth", args.modern_auth)
    options.setdefault("record_statistics", not args.record_statistics_off)
    if args.capacity is not None:
        if args.capacity < 1:
            raise SystemExit("--capacity must be at least 1")
        options.setdefault("capacity", args.capacity)
        options.setdefault("service_time_per_hit", args.hit_ms / 1000)
        options.setdefault("service_time_per_request", args.request_ms / 1000)
    return {"sites": sites, "tokens": tokens, "version": args.matomo_version, **options}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.threads:
        from gevent import monkey

        monkey.patch_all()

    from .cluster import run_cluster
    from .httpserver import run_in_background
    from .server import FakeMatomo

    kwargs = make_kwargs(args)
    if args.workers > 1:
        return run_cluster(kwargs, host=args.host, port=args.port, workers=args.workers)

    matomo = FakeMatomo(host=args.host, port=args.port, **kwargs)
    print(matomo.url, flush=True)

    def shut_down(signum: int, frame: object) -> None:
        # Under gevent the handler runs in the event loop, where nothing may block.
        run_in_background(matomo.stop)

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    try:
        matomo.serve_forever()
    finally:
        matomo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
