"""Plain factories for tests (no factory library): make_* returns a saved object."""

from __future__ import annotations

from itertools import count

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

_sequence = count(1)
TEST_PASSWORD = "pw-for-tests-only"


def make_user(username: str | None = None, *, superuser: bool = False, staff: bool = True, perms: tuple[str, ...] = ()):
    User = get_user_model()
    username = username or f"user{next(_sequence)}"
    if superuser:
        return User.objects.create_superuser(username=username, password=TEST_PASSWORD)
    user = User.objects.create_user(username=username, password=TEST_PASSWORD, is_staff=staff)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def make_target(**fields):
    from targets.models import Target

    values = {
        "name": f"target-{next(_sequence)}",
        "matomo_url": "http://127.0.0.1:9/",
        "site_id": 1,
    }
    values.update(fields)
    target = Target(**values)
    target.full_clean()
    target.save()
    return target


def make_preset(**fields):
    from presets.models import Preset

    values = {"name": f"preset-{next(_sequence)}"}
    values.update(fields)
    preset = Preset(**values)
    preset.full_clean()
    preset.save()
    return preset


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child process (loader, worker, command) that must use the
    database the current test uses, e.g. test_trafficinator on PostgreSQL."""
    import os
    from urllib.parse import quote

    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        url = "sqlite:///" + str(db["NAME"])
    else:
        auth = quote(db["USER"] or "", safe="")
        if db["PASSWORD"]:
            auth += ":" + quote(db["PASSWORD"], safe="")
        host = db["HOST"] or "127.0.0.1"
        port = f":{db['PORT']}" if db["PORT"] else ""
        url = f"postgres://{auth}@{host}{port}/{db['NAME']}"
    env = dict(os.environ)
    env.update({"DATABASE_URL": url, **extra})
    return env


def log_in(page, live_server, user, next_url: str = "/") -> None:
    """Log a Playwright page in through the admin's login form."""
    page.goto(f"{live_server.url}/admin/login/?next={next_url}")
    page.fill("#id_username", user.username)
    page.fill("#id_password", TEST_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}{next_url}")
