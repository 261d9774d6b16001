"""Fixtures shared by every app's tests: a local Matomo and a preset fast enough to test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from targets.fake_matomo import FakeMatomo
from trafficinator.testing import TOKEN

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


def _is_transactional(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("django_db")
    return bool(marker and marker.kwargs.get("transaction")) or "transactional_db" in getattr(item, "fixturenames", ())


# Whether the last transactional test of this process emptied the database (Django's flush
# at its teardown) and nothing has put the migrations' data back since.
_flushed = {"yes": False}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    yield
    if _is_transactional(item):
        _flushed["yes"] = True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Give a test that follows a transactional one the migrations' data back (built-in
    presets, content types, permissions, the reaper schedule) before its fixtures open
    their transaction. A serial run never needs it: pytest-django runs the transactional
    tests last. Under pytest-xdist (scripts/test runs the suite on several processes) a
    process runs whole files in the scheduler's order, so a plain test can come after a
    transactional test's flush; the transactional tests restore the data themselves
    (serialized_rollback, above)."""
    if not _flushed["yes"]:
        return
    _flushed["yes"] = False
    if _is_transactional(item):
        return
    from django.db import connections
    from pytest_django.plugin import blocking_manager_key

    with item.config.stash[blocking_manager_key].unblock():
        for connection in connections.all(initialized_only=True):
            contents = getattr(connection, "_test_serialized_contents", None)
            if contents:
                connection.creation.deserialize_db_from_string(contents)


def _delete_instead_of_truncate() -> None:
    """Transactional tests empty the test database after each test (Django's ``flush``).
    On PostgreSQL that is one TRUNCATE of every table, which costs a file operation per
    table: ~3 s a test on a busy machine, most of the suite's time on PostgreSQL. DELETE
    of the few rows a test leaves is milliseconds. The statements run in one transaction
    and Django's foreign keys are deferred to its commit, so the order does not matter;
    like TRUNCATE without RESTART IDENTITY, sequences go on. Real ``manage.py flush``
    outside the tests is untouched."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if reset_sequences or allow_cascade:
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        return [f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};" for table in tables]

    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign]


_delete_instead_of_truncate()


def _restore_in_bulk() -> None:
    """After that flush, the next transactional test gets the migrations' data back
    (serialized_rollback: content types, permissions, built-in presets, the reaper
    schedule). Django saves the ~120 objects one by one, an UPDATE and an INSERT each (~1 s
    a test on a busy PostgreSQL); one INSERT (or update) per table restores the same rows.
    Objects with many-to-many data or of an inherited model are still saved Django's way.
    Django's raw saves send post_save, which no receiver of these models acts on;
    bulk_create sends none."""
    from collections import defaultdict

    from django.core import serializers
    from django.db import transaction
    from django.db.backends.base.creation import BaseDatabaseCreation

    def deserialize_db_from_string(self, data):
        alias = self.connection.alias
        pending = defaultdict(list)
        table_names = set()
        with transaction.atomic(using=alias):
            with self.connection.constraint_checks_disabled():
                for obj in serializers.deserialize("json", data, using=alias):
                    model = type(obj.object)
                    table_names.add(model._meta.db_table)
                    if obj.m2m_data or obj.deferred_fields or model._meta.parents:
                        obj.save()
                    else:
                        pending[model].append(obj.object)
                for model, objects in pending.items():
                    # Rows may be there (the first test after migrating, or after a test in
                    # a transaction): updated, as Django's UPDATE-then-INSERT would.
                    pk = model._meta.pk
                    fields = [f.name for f in model._meta.concrete_fields if f is not pk]
                    model._base_manager.using(alias).bulk_create(
                        objects, update_conflicts=True, unique_fields=[pk.name], update_fields=fields
                    )
            self.connection.check_constraints(table_names=table_names)

    BaseDatabaseCreation.deserialize_db_from_string = deserialize_db_from_string  # type: ignore[method-assign]


_restore_in_bulk()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database set-up, plus: on PostgreSQL, end the sessions this test
    process left open before the database is dropped. The live server answers each request
    in a thread of its own, and with CONN_MAX_AGE (settings) that thread's connection
    outlives the request; PostgreSQL then refused the drop ("database ... is being accessed
    by other users"), leaving a test database behind with a warning."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


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


def browser_problems(page) -> list[str]:
    """What went wrong in the browser so far: console errors, then failed requests."""
    return [*page.console_errors, *page.failed_requests]


@pytest.fixture
def browser_page(request, live_server, monkeypatch):
    """A page in Debian's headless Chromium, driven by Playwright, with the console errors
    it logs collected in ``page.console_errors`` and the requests that failed or got an
    error answer in ``page.failed_requests``. A test fails when it leaves any (issue 16:
    no console errors and no failed requests on any page), unless it is marked
    ``browser_errors_expected``."""
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
        try:
            if not request.node.get_closest_marker("browser_errors_expected"):
                assert browser_problems(page) == [], "the browser reported errors"
        finally:
            browser.close()
