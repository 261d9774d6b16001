"""What tests share: plain factories (no factory library; make_* returns a saved object),
the permission sets of the app's personas, logging a client or a browser page in, and
waiting on a condition instead of a fixed sleep."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

if TYPE_CHECKING:
    from django.test import Client

    from backfill.models import BackfillPlan
    from funnels.models import Funnel, FunnelStep
    from runs.models import Run

_sequence = count(1)
T = TypeVar("T")
TEST_PASSWORD = "pw-for-tests-only"
TOKEN = "test-token-0123456789abcdef"  # the super user token of conftest's fake_matomo

# The personas' permissions (a superuser has them all).
RUN_VIEWER = ("runs.view_run",)
RUN_OPERATOR = (*RUN_VIEWER, "runs.run_traffic")
BACKFILL_VIEWER = ("backfill.view_backfillplan",)
BACKFILL_PLANNER = (*BACKFILL_VIEWER, "backfill.add_backfillplan", "backfill.change_backfillplan")
BACKFILL_OPERATOR = (*BACKFILL_PLANNER, "backfill.run_backfill")
FUNNEL_VIEWER = ("funnels.view_funnel",)


def make_user(username: str | None = None, *, superuser: bool = False, staff: bool = True, perms: Iterable[str] = ()):
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


def make_local_target(server: Any, **fields: Any):
    """A target named "local" (or ``name``) on site 1 of a fake Matomo, with its super user TOKEN."""
    values: dict[str, Any] = {"name": "local", "matomo_url": server.url, "site_id": 1, "token_auth": TOKEN}
    values.update(fields)
    return make_target(**values)


def make_preset(**fields):
    from presets.models import Preset

    values = {"name": f"preset-{next(_sequence)}"}
    values.update(fields)
    preset = Preset(**values)
    preset.full_clean()
    preset.save()
    return preset


# A preset whose visits last well under a second and arrive ~20 per second at any hour
# (flat curve), so a test run finishes quickly. Tests change what they are about.
FAST_PRESET = {
    "visits_per_day": 1_728_000,
    "daily_curve": "flat",
    "pause_min": 0.0,
    "pause_max": 0.1,
    "visit_duration_min": 0.0,
    "visit_duration_max": 0.01,
    "concurrency": 20,
}


def make_fast_preset(name: str = "Fast", **fields: Any):
    """A saved FAST_PRESET named ``name``, with ``fields`` changed (``pause_min=1.0`` ...)."""
    return make_preset(name=name, **{**FAST_PRESET, **fields})


def make_browser_paced_preset(name: str = "Quick visits"):
    """A fast preset at a pace a browser test can follow: ~1 visit a second, page views
    0.2-0.5 s apart, so the run page shows hits within seconds."""
    return make_fast_preset(
        name,
        visits_per_day=100_000,
        pause_min=0.2,
        pause_max=0.5,
        visit_duration_min=0.05,
        visit_duration_max=0.1,
        concurrency=10,
    )


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


def start_loader(run: Run, token: Any, *extra: str, **env: str) -> subprocess.Popen:
    """A real ``manage.py run_loader`` process (monkey-patched, as a worker starts it) for
    the shard ``token`` claimed, on the test database; ``extra`` arguments and ``env``
    variables added. Its output is piped: read it with ``finish_loader``."""
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    return subprocess.Popen(  # noqa: S603 - our own interpreter and manage.py
        [sys.executable, manage, "run_loader", str(run.pk), "--claim", str(token), *extra],
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_loader(process: subprocess.Popen, timeout: float = 90, *, check: bool = True) -> str:
    """Wait for a ``start_loader`` process to end and return its stderr. It fails, killing
    the process, when it has not ended after ``timeout`` seconds (generous: a loaded box
    starts a loader slowly); with ``check``, also when it exited with an error."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"loader {process.pid} did not end: {err[-2000:]}") from None
    if check:
        assert process.returncode == 0, err[-2000:]
    return err


def log_in(page, live_server, user, next_url: str = "/") -> None:
    """Log a Playwright page in through the application's login page."""
    page.goto(f"{live_server.url}/login/?next={next_url}")
    page.fill("#id_username", user.username)
    page.fill("#id_password", TEST_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}{next_url}")


def make_run(targets: list | None = None, **fields: Any) -> Run:
    """A queued run of the built-in Light preset (or ``preset=``) on a new target (or ``targets``)."""
    from presets.models import Preset
    from runs.models import Run

    preset = fields.pop("preset", None) or Preset.objects.get(name="Light")
    return Run.objects.create_run(preset=preset, targets=targets or [make_target()], **fields)


def make_step(kind: str = "pageview", **fields: Any) -> FunnelStep:
    """An unsaved, valid-looking funnel step; pageviews get a URL unless one is given."""
    from funnels.models import FunnelStep

    if kind == "pageview":
        fields.setdefault("url", f"/page-{next(_sequence)}")
    return FunnelStep(kind=kind, **fields)


def make_funnel(*, steps: list[FunnelStep] | None = None, presets: Iterable[Any] = (), **fields: Any) -> Funnel:
    """A saved, validated funnel (three page views unless ``steps``) for all presets or ``presets``."""
    from funnels.models import Funnel

    presets = list(presets)
    values: dict[str, Any] = {"name": f"funnel-{next(_sequence)}", "share": Decimal("0.05"), "all_presets": not presets}
    values.update(fields)
    if isinstance(values["share"], (str, float, int)):
        values["share"] = Decimal(str(values["share"]))
    funnel = Funnel(**values)
    funnel.set_pending_presets(presets)
    funnel.full_clean()
    funnel.save()
    funnel.presets.set(presets)
    steps = steps if steps is not None else [make_step(), make_step(), make_step()]
    for position, step in enumerate(steps, start=1):
        step.funnel = funnel
        step.position = step.position or position
        step.full_clean()
        step.save()
    return funnel


def make_plan(targets: Iterable[Any], preset: Any, **fields: Any) -> BackfillPlan:
    """A draft backfill plan (the last two days unless dates are given, seed 7)."""
    from backfill.models import BackfillPlan

    if "start_date" not in fields and "last_days" not in fields:
        fields["last_days"] = 2
    fields.setdefault("seed", 7)
    return BackfillPlan.objects.create_plan(targets=list(targets), preset=preset, **fields)


def confirmed_plan(targets: Iterable[Any], preset: Any, **fields: Any) -> BackfillPlan:
    plan = make_plan(targets, preset, **fields)
    assert plan.confirm(by_name="tests")
    return plan


def edit_while_confirming(monkeypatch: Any, **edit: Any) -> None:
    """Make the next ``BackfillPlan.confirm`` lose its race deterministically: another tab
    saves a draft edit (``edit``: ``prepare_draft`` arguments, e.g. ``last_days=3``) after
    confirm planned its days and estimate and before its conditional UPDATE. Only
    confirm passes ``days=`` to ``build_estimate``; estimates of a page or the command
    run as usual."""
    from backfill import planning
    from backfill.models import BackfillPlan

    build = planning.build_estimate

    def build_then_edit_elsewhere(plan, targets, **kwargs):
        estimate = build(plan, targets, **kwargs)
        if "days" in kwargs:
            elsewhere = BackfillPlan.objects.get(pk=plan.pk)
            elsewhere.prepare_draft(preset=elsewhere.preset, targets=targets, **edit)
            elsewhere.save_draft(targets, by="tab 2")
        return estimate

    monkeypatch.setattr(planning, "build_estimate", build_then_edit_elsewhere)


def log_in_client(client: Client, perms: Iterable[str] = (), **user_fields: Any) -> Client:
    """Log a Django test client in as a new user with ``perms`` (e.g. RUN_OPERATOR)."""
    client.force_login(make_user(perms=perms, **user_fields))
    return client


def api_token_for(*perms: str, **user_fields: Any) -> str:
    """A personal API token (the secret, as shown once) of a new user with ``perms``."""
    from trafficinator.models import ApiToken

    return ApiToken.issue(make_user(perms=perms, **user_fields), "tests")[1]


def api_call(client: Client, method: str, path: str, token: str | None = None, body: Any = None, **extra: Any) -> Any:
    """``METHOD /api/v1/<path>`` with the token as a Bearer header and ``body`` as JSON."""
    import json

    if token:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    if body is not None:
        extra.update(data=json.dumps(body), content_type="application/json")
    return getattr(client, method.lower())(f"/api/v1/{path}", **extra)


def wait_until(
    condition: Callable[[], T],
    timeout: float = 20.0,
    *,
    what: str = "the condition",
    sleep: Callable[[float], object] = time.sleep,
    interval: float = 0.02,
) -> T:
    """Poll ``condition`` until it returns something true, and return that; fail after
    ``timeout`` seconds saying ``what`` did not happen. The timeout is generous on purpose:
    it bounds a hang, it is not a speed requirement (a loaded machine runs timers seconds
    late). Pass ``sleep=gevent.sleep`` where greenlets must run meanwhile, and a longer
    ``interval`` where asking is costly (a subprocess, an HTTP request)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        sleep(interval)
    return result


def set_heartbeat(run: Run, when) -> None:
    """Date the last report of the run and of its claimed shards (a loader gone quiet)."""
    from runs.models import RunShard

    type(run).objects.filter(pk=run.pk).update(heartbeat_at=when)
    RunShard.objects.filter(run_id=run.pk, status__in=RunShard.CLAIMED_STATUSES).update(heartbeat_at=when)
