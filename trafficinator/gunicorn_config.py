"""gunicorn settings for scripts/serve (`gunicorn -c python:trafficinator.gunicorn_config`).

Every value can be changed with an environment variable (README, "Settings"). The web
process only renders pages and answers short htmx polls (every 2 s per open tab); loads
run in the workers. So: a few processes with a few threads each (the gthread worker; a
thread waiting on the database does not block the others), a request timeout that a
page never needs, and workers recycled now and then so a slow leak cannot grow.
"""

from __future__ import annotations

import os

from trafficinator.logs import logging_config


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a whole number.") from None


bind = os.environ.get("SERVE_BIND", "0.0.0.0:8000")
# WEB_CONCURRENCY is the name gunicorn and most platforms use for the process count.
workers = _int("WEB_CONCURRENCY", 2)
worker_class = "gthread"
# gunicorn 27's gthread worker gives a new connection a thread from accept until its first
# request is read (TLS handshake included), and a browser opens up to 6 connections to a
# host, some only in case it needs them. With 4 threads, a worker that got a browser's
# idle connections left a page's static files waiting until the 30 s timeout (seen in
# the production test; with 1 thread, every time). 8 covers one browser's connections
# per worker; a thread waiting for a first request costs no CPU.
threads = _int("WEB_THREADS", 8)
timeout = _int("WEB_TIMEOUT", 30)
graceful_timeout = _int("WEB_GRACEFUL_TIMEOUT", 30)
keepalive = 5
max_requests = 1000
max_requests_jitter = 100
# Heartbeat files in memory, not on a container's overlay disk (gunicorn's advice).
SHM = "/dev/shm"  # noqa: S108 - a directory gunicorn writes only its own heartbeat files to
worker_tmp_dir = SHM if os.path.isdir(SHM) else None
# gunicorn 27's control socket lives in $HOME by default; a container's user has none.
control_socket_disable = True
# Optional TLS in gunicorn itself (without a proxy, or to test production settings).
certfile = os.environ.get("SERVE_CERTFILE") or None
keyfile = os.environ.get("SERVE_KEYFILE") or None
# X-Forwarded-* is trusted from these addresses only (FORWARDED_ALLOW_IPS; gunicorn's
# own default is 127.0.0.1).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Access and error lines go to stdout in the same format as Django's (LOG_FORMAT).
accesslog = "-"
errorlog = "-"
logconfig_dict = logging_config(
    os.environ.get("LOG_FORMAT", "text"), os.environ.get("LOG_LEVEL", "INFO"), for_gunicorn=True
)
