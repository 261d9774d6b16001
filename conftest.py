"""Fixtures shared by every app's tests: a local Matomo and a preset fast enough to test."""

from __future__ import annotations

import pytest

from targets.fake_matomo import FakeMatomo

TOKEN = "test-token-0123456789abcdef"  # noqa: S105 - the fake server's token


@pytest.fixture
def fake_matomo():
    """A Matomo-compatible server on 127.0.0.1 with site 1 (Europe/Stockholm, ecommerce) and a
    super user's token (not secure-only)."""
    server = FakeMatomo(
        sites=[{"id": 1, "name": "Shop", "timezone": "Europe/Stockholm", "currency": "SEK", "ecommerce": True}],
        tokens={TOKEN: {"superuser": True}},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fast_preset(db):
    """A custom preset whose visits last well under a second and arrive ~20 per second at
    any hour (flat curve), so a test run finishes quickly."""
    from trafficinator.testing import make_preset

    return make_preset(
        name="Fast",
        visits_per_day=1_728_000,
        daily_curve="flat",
        pause_min=0.0,
        pause_max=0.1,
        visit_duration_min=0.0,
        visit_duration_max=0.01,
        concurrency=20,
    )


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """make_user() hashes a password; the default hasher costs ~0.5 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
