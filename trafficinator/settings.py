"""Trafficinator settings: one module, driven by environment variables.

With no variables set you get a working local setup: DEBUG on, SQLite in ``var/``,
django-q2 on the ORM broker and a secret key generated once and kept in ``var/``.
Every variable is documented in the README ("Settings"). The helpers below reject bad
values loudly at start-up instead of falling back silently.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from trafficinator.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean; use one of 1/0, true/false, yes/no, on/off.")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} is below the minimum of {minimum}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def database_from_url(url: str) -> dict:
    """Turn ``DATABASE_URL`` into a Django DATABASES entry with dj-database-url, which
    knows every form (``postgres://user:p%40ss@host:5432/name?sslmode=require``, the
    unix-socket form ``postgres://%2Fvar%2Frun%2Fpostgresql/name``, ``sqlite:////abs.db``).
    Only the two engines we test on are accepted, and each mistake is named."""
    try:
        parsed = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:  # UnknownSchemeError and malformed URLs
        raise ImproperlyConfigured(f"DATABASE_URL could not be read: {exc}") from None
    engine = parsed["ENGINE"]
    if engine == "django.db.backends.postgresql":
        if not parsed["NAME"]:
            raise ImproperlyConfigured("DATABASE_URL has no database name (postgres://user@host:5432/NAME).")
        # CONN_MAX_AGE/CONN_HEALTH_CHECKS: web and workers reuse connections between
        # requests/tasks and notice a connection the server closed.
        return dict(parsed)
    if engine == "django.db.backends.sqlite3":
        # sqlite:///relative.db and sqlite:////absolute/path.db; bare sqlite:// would be
        # an in-memory database that the workers and loaders could never share.
        if parsed["NAME"] in ("", ":memory:"):
            raise ImproperlyConfigured("DATABASE_URL sqlite:// needs a file path, e.g. sqlite:////srv/traffic.db.")
        return sqlite_database(Path(parsed["NAME"]))
    scheme = url.split("://", 1)[0]
    raise ImproperlyConfigured(f"DATABASE_URL scheme {scheme!r} is not supported; use postgres:// or sqlite://.")


def sqlite_database(path: Path) -> dict:
    """SQLite tuned for web + q2 cluster + loader writing at once: WAL lets readers run
    beside a writer, IMMEDIATE takes the write lock at BEGIN (no upgrade deadlocks) and the
    20 s timeout waits for it. Measured (docs/architecture.md, "Storage"): zero "database is locked" with all three."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": path,
        # Tests start loaders and workers as separate processes, which cannot see an
        # in-memory database: the test database is a file next to the real one, one per
        # test process so parallel test runs never share it (children get its exact
        # path through DATABASE_URL, see trafficinator.testing.subprocess_env).
        "TEST": {"NAME": str(path.with_name(f"{path.stem}-test-{os.getpid()}{path.suffix}"))},
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


DATA_DIR = Path(env_str("TRAFFICINATOR_DATA_DIR", str(BASE_DIR / "var")))
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DEBUG", True)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    # Local use: generate once and keep, so sessions survive restarts.
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_q",
    "trafficinator",
    "targets",
    "presets",
    "funnels",
    "backfill",
    "runs",
]

MIDDLEWARE = [
    # First: /health/ answers load balancers and probes whatever Host header they send
    # and without the https redirect (they talk to the container, not the proxy).
    "trafficinator.middleware.HealthCheckMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files from the web process itself, compressed, with far-future cache headers
    # for hashed names: no separate file server needed behind the proxy.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "trafficinator.middleware.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "trafficinator.middleware.RequestTooBigMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "trafficinator.urls"
WSGI_APPLICATION = "trafficinator.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "trafficinator.context_processors.admin_chrome",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL")
DATABASES = {"default": database_from_url(DATABASE_URL) if DATABASE_URL else sqlite_database(DATA_DIR / "db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(DATA_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Production: content-hashed names (cacheable forever) and pre-compressed copies; they
    # need `collectstatic` before start (scripts/serve and the image do it). Locally the
    # plain storage serves files straight from static/ and the packages.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
# Locally (DEBUG) whitenoise finds files in their source folders at each request, so an
# edited CSS file shows at once and no collectstatic is needed (the test suite relies on it).
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# A cache every process shares. django-q2 keeps its clusters' heartbeats ("Stat") in it
# when the ORM broker is used (the Redis broker keeps them in Redis); with Django's
# default per-process memory cache, `qinfo` and /health/ saw no cluster at all.
# The table is created by `migrate` (trafficinator.apps) and by the test database setup.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "trafficinator_cache",
    }
}

# Production switches. Each defaults to the safe value when DEBUG is off, and each can be
# overridden (e.g. SECURE_SSL_REDIRECT=0 behind a proxy that already redirects).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    # Only behind a proxy that sets X-Forwarded-Proto and strips it from clients.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
# htmx and all our CSS/JS come from our own static files; inline SVG charts need no script.
# The admin and htmx's indicator styles use inline style attributes.
CONTENT_SECURITY_POLICY = env_str(
    "CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; object-src 'none'",
)

# django-q2. The default queue runs short tasks (backfill days, report invalidation, the
# reaper; connection checks run in the request, not here); loaders
# go to the "loaders" queue whose timeout exceeds the longest allowed run and whose retry
# exceeds the timeout, tried once: django-q2 re-delivers a task not acknowledged within
# `retry` seconds, and a run longer than that was measured running three times.
MAX_RUN_HOURS = env_int("TRAFFICINATOR_MAX_RUN_HOURS", 24 * 7, minimum=1)
# /metrics: addresses or networks that may scrape without an API token (README "Metrics").
# Empty (the default): only a Bearer API token of a user who may view runs.
METRICS_ALLOWED_IPS = env_list("TRAFFICINATOR_METRICS_ALLOWED_IPS", [])
for _network in METRICS_ALLOWED_IPS:
    try:
        import ipaddress

        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"TRAFFICINATOR_METRICS_ALLOWED_IPS: “{_network}” is not an IP address or network (e.g. 10.0.0.0/8)."
        ) from None
# How often a run's page reads Matomo's live counter (Live.getCounters) while the run is
# active, whatever the number of open pages: each read is a Reporting API request to Matomo.
MATOMO_LIVE_SECONDS = env_int("MATOMO_LIVE_SECONDS", 30, minimum=10)
Q_WORKERS = env_int("Q_WORKERS", 2, minimum=1)
LOADER_WORKERS = env_int("LOADER_WORKERS", 4, minimum=1)
# A running run whose loader has not reported (heartbeat) for this long is shown as lost and
# can be resumed. A loader stops sending when it could not confirm its claim for a third
# of it, so a frozen loader can never send next to the one that resumed its run.
RUN_HEARTBEAT_STALE_SECONDS = env_int("RUN_HEARTBEAT_STALE_SECONDS", 30, minimum=3)
# What one loader process may hold at once, whatever rate is asked (admission control):
# visits in progress, and the encoded hits of those visits in megabytes.
LOADER_MAX_VISITS_IN_PROGRESS = env_int("LOADER_MAX_VISITS_IN_PROGRESS", 20_000, minimum=10)
LOADER_MEMORY_BUDGET_MB = env_int("LOADER_MEMORY_BUDGET_MB", 48, minimum=1)
# What one loader process (one shard of a run) carries, in hits per second, for runs with
# --shards auto (README "Sharded runs"): single hits, and hits sent in bulk batches.
SHARD_HITS_PER_SECOND = env_int("TRAFFICINATOR_SHARD_HITS_PER_SECOND", 5000, minimum=1)
SHARD_BULK_HITS_PER_SECOND = env_int("TRAFFICINATOR_SHARD_BULK_HITS_PER_SECOND", 20000, minimum=1)
_loader_timeout = MAX_RUN_HOURS * 3600 + 600
# A run or backfill day taken off the broker by a cluster that died (or that is busy) is
# enqueued again once it has been missing from the broker this long: the bound on
# re-delivery, on the ORM broker and on Redis alike (trafficinator/taskqueue.py, README
# "Scaling out"). Short enough that a lost task costs a minute; long enough that a task on
# its way from the broker to a worker is never counted as missing.
TASK_REDELIVER_AFTER_SECONDS = env_int("TASK_REDELIVER_AFTER_SECONDS", 60, minimum=2)
REDIS_URL = env_str("REDIS_URL")
Q_CLUSTER = {
    "name": "trafficinator",
    "workers": Q_WORKERS,
    "timeout": 600,
    "retry": 900,
    "max_attempts": 3,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 500,
    "label": "Task queue",
    # Our brokers (django-q2's ORM and Redis brokers plus two things): a cluster takes a
    # task off the broker only for a worker of its own that is free, so an idle cluster
    # gets the next run, shard or backfill day instead of a busy one holding it; and a task
    # a cluster took and never ran is enqueued again after TASK_REDELIVER_AFTER_SECONDS.
    "broker_class": f"trafficinator.taskqueue.{'RedisBroker' if REDIS_URL else 'ORMBroker'}",
    # The cluster's own queue between broker and workers; the broker gate above keeps it
    # to the tasks its free workers are about to start.
    "queue_limit": 1,
    "ALT_CLUSTERS": {
        "loaders": {
            "workers": LOADER_WORKERS,
            "timeout": _loader_timeout,
            # django-q2's own re-delivery (ORM broker only) of a task not acknowledged in
            # time; a run's task is unacknowledged for as long as the run lasts, so this
            # exceeds the longest run. Our re-delivery (above) is what bounds a lost task.
            "retry": _loader_timeout + 3600,
            "max_attempts": 1,
            "ack_failures": True,
            "queue_limit": 1,
        },
    },
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# Logs: stdout, one line per event; LOG_FORMAT=json for log shippers (trafficinator.logs).
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").strip().upper()
LOG_FORMAT = env_str("LOG_FORMAT", "text").strip().lower()
try:
    LOGGING = logging_config(LOG_FORMAT, LOG_LEVEL)
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
