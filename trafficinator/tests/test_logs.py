"""Log lines (trafficinator.logs): one line per event, as text or JSON, for log shippers."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from logging.config import BaseConfigurator
from pathlib import Path

import pytest

from trafficinator.logs import logging_config

BASE_DIR = Path(__file__).resolve().parents[2]


def handler_of(log_format: str, level: str = "INFO") -> tuple[logging.Logger, io.StringIO]:
    """A private logger with the formatter and level that logging_config() chooses, writing
    to a buffer (dictConfig itself would replace the test run's own handlers)."""
    config = logging_config(log_format, level)
    formatter = BaseConfigurator({}).resolve(config["formatters"]["line"]["()"])()
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"tests.logs.{log_format}.{level}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(config["root"]["level"])
    return logger, buffer


def log_a_failure(logger: logging.Logger) -> None:
    try:
        raise RuntimeError("Matomo went away\nsecond line of the message")
    except RuntimeError:
        logger.exception("Loader crashed on run %s", 7, extra={"run": 7, "target": "shop"})


def test_text_lines_fold_a_traceback_into_the_events_one_line():
    logger, buffer = handler_of("text")
    log_a_failure(logger)
    logger.info("next event")
    first, second = buffer.getvalue().splitlines()
    assert " ERROR tests.logs.text.INFO: Loader crashed on run 7\\nTraceback (most recent call last):\\n" in first
    assert "RuntimeError: Matomo went away\\nsecond line of the message" in first
    assert second.endswith(" INFO tests.logs.text.INFO: next event")


def test_json_lines_carry_the_traceback_as_a_field_and_keep_extra_fields():
    logger, buffer = handler_of("json")
    log_a_failure(logger)
    logger.warning("plain")
    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["level"] == "ERROR" and first["logger"] == "tests.logs.json.INFO"
    assert first["message"] == "Loader crashed on run 7"
    assert first["exception"].startswith("Traceback (most recent call last):\n")
    assert first["exception"].endswith("RuntimeError: Matomo went away\nsecond line of the message")
    assert (first["run"], first["target"]) == (7, "shop")  # extra= fields are kept
    assert first["process"] == os.getpid() and first["time"].endswith("+00:00")
    assert "exception" not in second and "run" not in second and second["message"] == "plain"


def test_the_level_drops_quieter_events():
    logger, buffer = handler_of("text", " warning ")
    logger.info("not shown")
    logger.warning("shown")
    assert [line.rsplit(": ", 1)[1] for line in buffer.getvalue().splitlines()] == ["shown"]


@pytest.mark.parametrize(
    ("log_format", "level", "message"),
    [
        ("xml", "INFO", "LOG_FORMAT='xml' is not one of text, json."),
        ("json", "LOUD", "LOG_LEVEL='LOUD' is not a logging level"),
    ],
)
def test_an_unknown_format_or_level_is_refused(log_format, level, message):
    with pytest.raises(ValueError, match=message):
        logging_config(log_format, level)


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_a_process_with_log_format_json_writes_one_json_object_per_line_on_stdout(tmp_path):
    code = (
        "import logging\n"
        "try:\n    1 / 0\n"
        "except ZeroDivisionError:\n    logging.getLogger('runs.loader').exception('boom', extra={'run': 3})\n"
    )
    result = _manage("shell", "-v", "0", "-c", code, LOG_FORMAT="json", TRAFFICINATOR_DATA_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    entry = json.loads(line)
    assert (entry["logger"], entry["message"], entry["run"]) == ("runs.loader", "boom", 3)
    assert entry["exception"].endswith("ZeroDivisionError: division by zero")


def test_a_bad_log_format_stops_start_up_with_its_name(tmp_path):
    result = _manage("check", LOG_FORMAT="xml", TRAFFICINATOR_DATA_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "LOG_FORMAT='xml' is not one of text, json." in result.stderr
