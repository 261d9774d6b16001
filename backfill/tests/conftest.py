"""Fixtures for backfill tests: a target on the local fake Matomo and plan factories."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings

from backfill import runner
from conftest import TOKEN
from trafficinator.sending.sender import RetryPolicy
from trafficinator.testing import make_preset, make_target, subprocess_env

if TYPE_CHECKING:
    from backfill.models import BackfillPlan

STOCKHOLM = ZoneInfo("Europe/Stockholm")
# Retries a tenth of a second apart (the ``fast_retries`` fixture; a module opts in with
# ``pytestmark = pytest.mark.usefixtures("fast_retries")``).
FAST_RETRY = RetryPolicy(max_attempts=5, backoff_base=0.05, backoff_max=0.1, retry_after_max=1.0)


def stockholm_today() -> date:
    return datetime.now(STOCKHOLM).date()


def days_ago(n: int) -> date:
    return stockholm_today() - timedelta(days=n)


def make_backfill_target(server, **fields):
    """A target that passed the connection check against ``server`` (site 1, Stockholm)."""
    values = {
        "name": "shop",
        "matomo_url": server.url,
        "site_id": 1,
        "token_auth": TOKEN,
        "last_check_ok": True,
        "token_can_write": True,
        "site_timezone": "Europe/Stockholm",
        "site_name": "Shop",
    }
    values.update(fields)
    return make_target(**values)


def kill_worker_mid_plan(server, plan, *, recorded: int = 600) -> subprocess.Popen:
    """Start ``plan`` and send it with a real ``backfill --resume`` worker process until
    ``server`` recorded ``recorded`` hits, then SIGKILL the worker: the plan is left
    mid-day, its day held by a dead worker. Returns the killed process."""
    plan.start(enqueue=False)
    server.set_latency(0.02)  # slow enough to kill it mid-day
    worker = subprocess.Popen(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "backfill", "--resume", str(plan.pk)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while server.stats()["recorded"] < recorded:
            assert time.monotonic() < deadline and worker.poll() is None, "worker did not get going"
            time.sleep(0.02)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    server.set_latency(0.0)
    return worker


def hit_keys(hits) -> Counter:
    """What identifies a sent hit: its visitor and its own random number and date."""
    return Counter((hit.params["cid"], hit.params["rand"], hit.params["cdt"]) for hit in hits)


def expected_keys(plan: BackfillPlan) -> Counter:
    """The hit keys (``hit_keys``) of every visit ``plan`` sends, counted."""
    keys: Counter = Counter()
    for day in plan.days.select_related("target"):
        for visit in runner.day_stream(plan, day, skip=0):
            for entry in runner.encode_visit(visit, cdt="datetime"):
                params = dict(part.split("=", 1) for part in entry[1:].split("&"))
                keys[(params["cid"], params["rand"], params["cdt"].replace("%20", " "))] += 1
    return keys


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(runner, "RETRY", FAST_RETRY)


# A target that passed its connection check (no server behind it: for pages and plans).
READY = {"token_auth": "tok", "last_check_ok": True, "token_can_write": True, "site_timezone": "Europe/Stockholm"}


@pytest.fixture
def target(db):
    return make_target(name="shop", **READY)


@pytest.fixture
def preset(db):
    return make_preset(name="Plain", visits_per_day=300)


@pytest.fixture
def small_preset(db):
    """Realistic visits (pauses of seconds, several page views), few of them."""
    return make_preset(name="Small", visits_per_day=120, pause_min=1.0, pause_max=20.0, daily_curve="default")


@pytest.fixture
def shop(fake_matomo):
    return make_backfill_target(fake_matomo)
