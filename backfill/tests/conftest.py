"""Fixtures for backfill tests: a target on the local fake Matomo and plan factories."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from conftest import TOKEN
from trafficinator.testing import make_preset, make_target

STOCKHOLM = ZoneInfo("Europe/Stockholm")


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
