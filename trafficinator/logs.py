"""Log lines on stdout, one line per event, as plain text or JSON (LOG_FORMAT).

One configuration for every process: Django (web, commands, django-q2 clusters, loaders)
through settings.LOGGING, and gunicorn's own error and access logs through
trafficinator.gunicorn_config. A container runtime, journald or a log shipper reads
stdout line by line, so a traceback is folded into its event's line instead of
spreading over many.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Attributes every LogRecord has; anything else was passed with `extra=` and is kept.
_RECORD_ATTRIBUTES = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class TextFormatter(logging.Formatter):
    """``2026-03-01 12:00:00,123 INFO runs.loader: message``; newlines (in a message or a
    traceback) are written as ``\\n`` so the event stays on one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process,
    the traceback as ``exception`` when there is one, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry and not key.startswith("_"):
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


def logging_config(log_format: str, level: str, *, for_gunicorn: bool = False) -> dict[str, Any]:
    """A dictConfig for stdout in the given format. Raises ValueError on an unknown format
    or level (settings turns that into ImproperlyConfigured)."""
    log_format = log_format.strip().lower()
    level = level.strip().upper()
    if log_format not in LOG_FORMATS:
        raise ValueError(f"LOG_FORMAT={log_format!r} is not one of {', '.join(LOG_FORMATS)}.")
    if level not in LOG_LEVELS:
        raise ValueError(f"LOG_LEVEL={level!r} is not a logging level ({', '.join(LOG_LEVELS)}).")
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    # Loggers that would otherwise write on their own (Django's debug console and
    # runserver handlers, on stderr) hand their records to the root's stdout handler.
    own_handlers = ["django", "django.server"]
    if for_gunicorn:
        own_handlers += ["gunicorn.error", "gunicorn.access"]
    loggers: dict[str, Any] = {name: {"handlers": [], "propagate": True} for name in own_handlers}
    # SQL logging (DEBUG level) would print token values from query parameters: never.
    loggers["django.db.backends"] = {"level": "INFO"}
    if for_gunicorn:
        loggers["gunicorn.access"]["level"] = "INFO"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "line"}},
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": loggers,
    }
