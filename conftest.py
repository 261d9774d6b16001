"""Fixtures shared by every app's tests: a local Matomo and a preset fast enough to test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from targets.fake_matomo import FakeMatomo

# The property-based suite (test_properties.py files): a bounded number of examples per
# property so the whole suite stays fast; HYPOTHESIS_MAX_EXAMPLES=2000 explores more.
# No deadline: the machine is shared and timings swing. Examples use the test's
# database transaction, hence the function-scoped fixture check is off.
settings.register_profile(
    "trafficinator",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "40")),
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
settings.load_profile("trafficinator")


def pytest_collection_modifyitems(items):
    """Every transactional test restores the migrations' data (built-in presets, content
    types, the reaper schedule) the same way: with serialized_rollback. Mixing would break:
    a flush without it re-creates content types with new ids through post_migrate, and the
    next serialized test's restore then collides with them (seen as IntegrityError on
    django_content_type, depending on test order)."""
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker and marker.kwargs.get("transaction") and not marker.kwargs.get("serialized_rollback"):
            serialized = pytest.mark.django_db(*marker.args, **marker.kwargs, serialized_rollback=True)
            item.add_marker(serialized, append=False)


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
    """testing.make_fast_preset(): visits of well under a second, ~20 a second at any hour."""
    from trafficinator.testing import make_fast_preset

    return make_fast_preset()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """make_user() hashes a password; the default hasher costs ~0.5 s per user."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


CHROMIUM = Path("/usr/bin/chromium")
# What Chromium needs on these machines: no sandbox as root, no GPU, and no background
# connections (the network is closed; they would fail noisily).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


@pytest.fixture
def browser_page(live_server, monkeypatch):
    """A page in Debian's headless Chromium, driven by Playwright, with the console errors
    it logs collected in ``page.console_errors`` and the requests that failed or got an
    error answer in ``page.failed_requests``."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (scripts/test installs it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(15_000)
        page.console_errors = []
        page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
        # Requests that failed or got an error answer (a missing favicon, a 500 from a
        # refresh): every page is checked to have none.
        page.failed_requests = []
        # net::ERR_ABORTED is the browser cancelling a request itself (a navigation or an htmx
        # swap while the favicon or a poll was loading), not an answer that failed.
        page.on(
            "requestfailed",
            lambda request: (
                "ERR_ABORTED" not in (request.failure or "")
                and page.failed_requests.append(f"{request.url} ({request.failure})")
            ),
        )
        page.on(
            "response",
            lambda response: (
                response.status >= 400 and page.failed_requests.append(f"{response.url} ({response.status})")
            ),
        )
        yield page
        browser.close()
