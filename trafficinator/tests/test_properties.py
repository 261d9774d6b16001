"""Property-based tests (hypothesis) of every place where outside values enter: forms,
the commands' argument parsing, funnel/catalog/URL-list imports and the connection
check's reading of Matomo's answers.

The properties: no exception other than the documented refusal (so no 500 and no
traceback), a refusal changes nothing in the database, and what is accepted can be
stored and used. Examples per property: HYPOTHESIS_MAX_EXAMPLES (40 by default, see
conftest.py); CI runs them derandomized."""

from __future__ import annotations

import io
import json
import math
import re
from argparse import ArgumentTypeError
from contextlib import contextmanager, suppress
from datetime import date
from unittest.mock import patch

import pytest
import requests
from django import forms
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import Client
from hypothesis import event, given
from hypothesis import strategies as st
from urllib3.response import HTTPResponse

from backfill.forms import BackfillPlanForm
from backfill.models import BackfillPlan
from funnels.forms import FunnelStepForm
from funnels.models import Funnel, FunnelStep
from funnels.transfer import FunnelImportError, import_funnels
from presets.forms import PresetForm
from presets.models import Preset
from runs.forms import StartRunForm
from runs.management.commands.run_traffic import parse_duration, target_share
from runs.models import Run, RunTarget
from targets.checks import GOAL_NAME_MAX, CheckFailed, CheckResult, MatomoClient, _goals, parse_site, parse_version
from targets.forms import TargetForm
from targets.models import Target
from targets.readback import ReadBackError, day_summary, live_counters
from trafficinator.cli import float_between, int_between
from trafficinator.models import ApiToken
from trafficinator.sending.sender import _bulk_counts
from trafficinator.testing import make_funnel, make_preset, make_target, make_user
from trafficinator.traffic import Catalog, CatalogError
from trafficinator.traffic.catalog import parse_url_list
from trafficinator.validation import timezone_is_known

# Text that looks like what people and programs type: numbers in every spelling, special
# float words, huge values, control characters, unicode.
NUMBERISH = st.one_of(
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["NaN", "nan", "inf", "-inf", "Infinity", "1e999", "-0", "0x10", "1_000", " 5 ", "", "٣"]),
    st.text(max_size=20),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def counts() -> tuple[int, ...]:
    """What a refused input must leave unchanged."""
    return tuple(model.objects.count() for model in (Target, Run, RunTarget, Funnel, FunnelStep, Preset, BackfillPlan))


@contextmanager
def rolled_back():
    """Run an example in a savepoint that is always rolled back, so examples that are
    accepted do not leak into the next one."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


# --- command arguments ---------------------------------------------------------------


@given(NUMBERISH, st.integers(-100, 100), st.integers(0, 10**9))
def test_whole_number_flags_accept_exactly_the_numbers_in_range(text, low, span):
    parse = int_between(low, low + span)
    try:
        value = parse(text)
    except ArgumentTypeError as exc:
        assert f"{low:,}" in str(exc)  # the message names the allowed range
    else:
        assert low <= value <= low + span


@given(NUMBERISH)
def test_number_flags_never_accept_nan_or_infinity(text):
    try:
        value = float_between(0.01, 10_000)(text)
    except ArgumentTypeError as exc:
        assert "0.01 to 10000" in str(exc)
    else:
        assert math.isfinite(value) and 0.01 <= value <= 10_000


@given(st.one_of(NUMBERISH, st.from_regex(r"\A[0-9]{1,12}(\.[0-9]{1,3})?[smhdSMHD]?\Z")))
def test_durations_are_refused_or_within_the_run_limit(text):
    from django.conf import settings

    try:
        seconds = parse_duration(text)
    except ArgumentTypeError:
        return
    assert 1 <= seconds <= settings.MAX_RUN_HOURS * 3600


@pytest.mark.django_db
@given(separator=st.sampled_from([":", "="]), amount=NUMBERISH)
def test_a_target_spec_is_a_usable_share_or_a_usage_error_that_saves_nothing(separator, amount):
    with rolled_back():
        target = make_target(name="fm2")
        before = counts()
        try:
            _, weight, rate = target_share(f"fm2{separator}{amount}")
        except CommandError as exc:
            assert exc.returncode == 2 and counts() == before
            return
        assert RunTarget.share_problem(weight, rate) == ""
        run = Run.objects.create_run(preset=Preset.objects.get(name="Light"), targets=[(target, weight, rate)])
        assert run.run_targets.get().share_of(run, list(run.run_targets.all())) >= 0


@pytest.mark.django_db
@given(
    flag=st.sampled_from(["--rate", "--duration", "--visits", "--seed", "--batch-size"]),
    value=NUMBERISH.filter(lambda text: not text.startswith("-") or text[1:2].isdigit()),
)
def test_run_traffic_refuses_bad_flags_with_a_usage_error_and_saves_nothing(flag, value):
    with rolled_back():
        make_target(name="fm2")
        before = counts()
        from runs.management.commands.run_traffic import Command

        parser = Command().create_parser("manage.py", "run_traffic")
        try:
            options = vars(parser.parse_args(["--preset", "Light", "--target", "fm2", flag, value]))
        except CommandError as exc:  # argparse's error under call_command
            assert flag in str(exc) and counts() == before
            return
        run = Command().create_run(options)  # valid flags make a storable run (not started here)
        assert run.pk and Run.objects.filter(pk=run.pk).exists()


@pytest.mark.django_db
@given(rps=NUMBERISH, days=NUMBERISH)
def test_backfill_refuses_bad_flags_without_a_traceback_or_a_plan(rps, days):
    with rolled_back():
        make_target(name="shop")
        before = counts()
        try:
            call_command(
                "backfill",
                "--target",
                "shop",
                "--preset",
                "Light",
                "--rps",
                rps,
                "--last-days",
                days,
                "--yes",
                stdout=io.StringIO(),
                stderr=io.StringIO(),
            )
        except CommandError:
            assert counts() == before  # the target is not ready, or a flag was refused
        else:
            pytest.fail("a target without a token cannot be backfilled")


# --- forms -----------------------------------------------------------------------------


@pytest.mark.django_db
@given(
    name=st.text(max_size=120),
    url=st.one_of(st.text(max_size=60), st.from_regex(r"\Ahttps?://[\[\]a-z0-9:.\-_ \t\n\x00]{0,30}(/[^\s]{0,10})?\Z")),
    site_id=NUMBERISH,
    token=st.text(max_size=40),
)
def test_the_target_form_either_saves_a_valid_target_or_changes_nothing(name, url, site_id, token):
    with rolled_back():
        before = counts()
        form = TargetForm(
            data={"name": name, "matomo_url": url, "site_id": site_id, "token_auth": token, "enabled": "on"}
        )
        if not form.is_valid():
            assert counts() == before
            return
        target = form.save()
        target.refresh_from_db()
        assert target.tracking_url.endswith("/matomo.php") and 1 <= target.site_id < 2**31


@pytest.mark.django_db
@given(visits=NUMBERISH, minutes=NUMBERISH, limit=NUMBERISH)
def test_the_start_run_form_never_raises_and_a_valid_one_makes_a_storable_run(visits, minutes, limit):
    with rolled_back():
        target = make_target(name="fm2")
        preset = Preset.objects.get(name="Light")
        data = {"targets": [target.pk], "preset": preset.pk, "visits_per_day": visits, "duration_minutes": minutes}
        form = StartRunForm(data={**data, "max_visits": limit})
        assert form.estimate() is not None  # the estimate beside the form never crashes either
        if form.is_valid():
            run = Run.objects.create_run(**form.run_options())
            assert 1 <= run.visits_per_day <= 50_000_000


# --- imports ------------------------------------------------------------------------------

STEP_KEYS = [
    "kind",
    "url",
    "title",
    "category",
    "action",
    "name",
    "value",
    "delay_min",
    "delay_max",
    "continue_probability",
    "items",
    "idgoal",
    "revenue",
    "keyword",
    "count",
]
STEPS = st.lists(
    st.dictionaries(st.sampled_from(STEP_KEYS), JSON_VALUES, max_size=6).map(
        lambda step: {**step, "kind": step.get("kind") if isinstance(step.get("kind"), str) else "pageview"}
    ),
    max_size=3,
)
FUNNEL = st.fixed_dictionaries(
    {"name": st.text(max_size=20), "share": JSON_VALUES, "steps": STEPS},
    optional={"priority": JSON_VALUES, "enabled": JSON_VALUES, "presets": JSON_VALUES, "all_presets": JSON_VALUES},
)


@pytest.mark.django_db
@given(
    st.one_of(
        st.lists(FUNNEL, max_size=2).map(lambda funnels: {"format": "trafficinator-funnels", "funnels": funnels}),
        JSON_VALUES,
    )
)
def test_a_funnel_import_saves_everything_or_nothing(data):
    for source in (data, json.dumps(data, allow_nan=True)):
        with rolled_back():
            before = counts()
            try:
                result = import_funnels(source)
            except FunnelImportError as exc:
                assert exc.problems and counts() == before
                continue
            saved = Funnel.objects.filter(name__in=result.created)
            assert saved.count() == len(result.created)
            for step in FunnelStep.objects.filter(funnel__in=saved):
                for column in ("delay_min", "delay_max", "continue_probability", "event_value"):
                    value = getattr(step, column)
                    assert value is None or math.isfinite(value)


@pytest.mark.django_db
@given(st.text(max_size=300))
def test_text_never_breaks_the_funnel_import_parser(text):
    before = counts()
    with suppress(FunnelImportError):  # the only refusal there is
        import_funnels(text, dry_run=True)
    assert counts() == before


@given(st.text(alphabet=st.characters(), max_size=400))
def test_a_pasted_url_list_gives_pages_or_line_numbered_problems(text):
    try:
        pages = parse_url_list(text)
    except CatalogError as exc:
        assert all(part == "pages" for part, _ in exc.problems)
    else:
        assert all(re.match(r"https?://|/", page.url) and "\n" not in page.url for page in pages)


@given(st.dictionaries(st.sampled_from(["pages", "events", "site", "products", "search", "unknown"]), JSON_VALUES))
def test_catalog_overrides_are_applied_or_refused_with_problems(overrides):
    try:
        Catalog.load_default().with_overrides(overrides)
    except CatalogError as exc:
        assert exc.problems


# --- Matomo's answers ------------------------------------------------------------------------


@given(st.dictionaries(st.sampled_from(["idsite", "name", "timezone", "currency", "ts_created", "x"]), JSON_VALUES))
def test_any_site_answer_gives_values_that_fit_their_columns(site):
    result = CheckResult(ok=False, message="")
    parse_site(site, result)
    assert len(result.site_name) <= 255 and not re.search(r"[\x00-\x1f\x7f-\x9f]", result.site_name)
    assert result.site_timezone == "" or timezone_is_known(result.site_timezone)
    assert re.fullmatch(r"[A-Z]{3}|", result.site_currency)
    assert parse_version(site.get("x"), []) == "" or len(parse_version(site.get("x"), [])) <= 32


def _answer(body: bytes, status: int = 200) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers["Content-Type"] = "application/json"
    response.raw = HTTPResponse(body=io.BytesIO(body), preload_content=False, status=status)
    return response


@pytest.mark.django_db
@given(
    st.one_of(
        JSON_VALUES.map(lambda value: json.dumps(value).encode()),
        st.binary(max_size=200),
        st.integers(1, 60_000).map(lambda depth: b"[" * depth + b"]" * depth),
    )
)
def test_any_api_answer_is_a_value_or_a_check_failure(body):
    client = MatomoClient(Target(name="t", matomo_url="http://127.0.0.1:9/", site_id=1))
    client._request = lambda *args, **kwargs: _answer(body)
    try:
        value = client.call_api("SitesManager.getSiteFromId", idSite=1)
    except CheckFailed as exc:
        assert str(exc)
    else:
        assert _all_finite(value)  # NaN and Infinity never reach int() or a page


def _all_finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return all(_all_finite(child) for child in children)


ANSWER_BODIES = st.one_of(
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(st.sampled_from(["nb_visits", "nb_actions", "visits", "actions", "tracked", "invalid"]), SCALARS)
    .flatmap(lambda row: st.sampled_from([row, [row]]))
    .map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=100),
)


@given(st.one_of(JSON_VALUES, st.dictionaries(st.text(max_size=3), st.dictionaries(st.just("idgoal"), SCALARS))))
def test_any_goal_list_gives_goal_ids_and_clean_bounded_names(answer):
    for idgoal, name in _goals(answer, []).items():
        assert type(idgoal) is int and idgoal > 0
        assert len(name) <= GOAL_NAME_MAX and not re.search(r"[\x00-\x1f\x7f-\x9f]", name)


@pytest.mark.django_db
@given(ANSWER_BODIES)
def test_any_read_back_answer_is_two_counts_or_a_read_back_error(body):
    target = Target(name="t", matomo_url="http://127.0.0.1:9/", site_id=1, token_auth="tok")
    with patch.object(MatomoClient, "_request", lambda *args, **kwargs: _answer(body)):
        for read in (lambda: day_summary(target, date(2026, 1, 1)), lambda: live_counters(target, 5)):
            try:
                counts = read()
            except ReadBackError as exc:
                assert str(exc)
            else:
                assert counts is None or all(type(count) is int and count >= 0 for count in counts)


@pytest.mark.django_db
@given(ANSWER_BODIES)
def test_any_bulk_probe_answer_gives_two_yes_or_no_answers(body):
    client = MatomoClient(Target(name="t", matomo_url="http://127.0.0.1:9/", site_id=1, token_auth="tok"))
    client._request = lambda *args, **kwargs: _answer(body)
    assert all(type(answer) is bool for answer in client.probe_token_modes())


# What Matomo's bulk tracking answers: a status, the tracked and invalid counts (invalid only
# from Matomo 4 on), sometimes the indices of the invalid requests or a message.
BULK_ANSWER_BODIES = st.fixed_dictionaries(
    {"status": st.sampled_from(["success", "error"]), "tracked": st.integers(0, 10**9)},
    optional={
        "invalid": st.integers(0, 10**9),
        "invalid_indices": st.lists(st.integers(0, 5000), max_size=3),
        "message": st.text(max_size=10),
    },
).map(lambda answer: json.dumps(answer).encode())


def _is_matomo_bulk_answer(answer: dict) -> bool:
    """A valid bulk answer: its status is text and its counts whole numbers of at least 0
    (``invalid`` may be missing)."""
    counts = [answer.get("tracked"), answer.get("invalid", 0)]
    return isinstance(answer.get("status"), str) and all(type(count) is int and count >= 0 for count in counts)


@given(st.one_of(BULK_ANSWER_BODIES, ANSWER_BODIES))
def test_any_bulk_answer_gives_its_counts_or_none(body):
    counts = _bulk_counts(body)
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict) or "tracked" not in answer:
        assert counts is None  # no count to read: as if unreadable
    elif _is_matomo_bulk_answer(answer):
        event("a valid bulk answer")
        assert counts == (answer["status"] == "success", answer["tracked"], answer.get("invalid", 0))
    else:  # a hostile answer: counts of the right types, or none
        assert counts is None or (type(counts[0]) is bool and all(type(count) is int for count in counts[1:]))


@pytest.mark.django_db
@pytest.mark.parametrize("spec", ["fm2:\x00", "fm\x002", "fm2=1\n", "\x00"])
def test_a_target_spec_with_a_control_character_is_a_usage_error_before_any_query(spec):
    # PostgreSQL refuses NUL in a query (a DataError traceback before this check); found
    # by the property test above on PostgreSQL.
    make_target(name="fm2")
    with pytest.raises(CommandError) as error:
        target_share(spec)
    assert error.value.returncode == 2 and "control character" in str(error.value)


# --- more forms: backfill plan, preset (admin), funnel step ----------------------------------

READY_TARGET = {"token_auth": "tok", "last_check_ok": True, "token_can_write": True, "site_timezone": "UTC"}
DATEISH = st.one_of(
    st.dates().map(str), st.sampled_from(["0001-01-01", "9999-12-31", "2026-02-30", "yesterday", ""]), NUMBERISH
)


@pytest.mark.django_db
@given(
    window=st.one_of(
        st.fixed_dictionaries({"last_days": st.one_of(st.integers(1, 5).map(str), NUMBERISH)}),
        st.fixed_dictionaries({"start_date": DATEISH, "end_date": DATEISH}),
    ),
    settings=st.dictionaries(
        st.sampled_from(
            [
                "visits_per_day",
                "daily_cap",
                "total_cap",
                "seed",
                "max_requests_per_second",
                "batch_size",
                "requests_in_flight",
                "parallel_days",
            ]
        ),
        st.one_of(st.integers(1, 1000).map(str), NUMBERISH),
        max_size=3,
    ),
)
def test_the_backfill_plan_form_saves_a_usable_draft_or_changes_nothing(window, settings):
    with rolled_back():
        target = make_target(name="shop", **READY_TARGET)
        before = counts()
        data = {
            "targets": [target.pk],
            "preset": Preset.objects.get(name="Light").pk,
            "batch_size": "400",
            "parallel_days": "1",
        }
        form = BackfillPlanForm(data={**data, **window, **settings})
        event(f"valid: {form.is_valid()}")
        if not form.is_valid():
            assert counts() == before and form.errors
            return
        plan = form.save_draft()
        plan.refresh_from_db()
        assert plan.start_date <= plan.end_date and 1 <= plan.visits_per_day <= 50_000_000
        rps = plan.max_requests_per_second
        assert rps is None or (math.isfinite(rps) and rps > 0)


def preset_form_data(preset: Preset) -> dict:
    """What the admin's preset form posts for ``preset`` unchanged."""
    form = PresetForm(instance=preset)
    data = {}
    for name, field in form.fields.items():
        if isinstance(field, forms.FileField):
            continue
        value = form[name].value()
        if isinstance(field, forms.BooleanField):
            if value:
                data[name] = "on"
            continue
        data[name] = "" if value is None else value
    return data


PRESET_NUMBERS = [
    "visits_per_day",
    "pageviews_min",
    "pageviews_max",
    "visit_duration_min",
    "visit_duration_max",
    "pause_min",
    "pause_max",
    "concurrency",
    "auto_stop_after_hours",
    "ecommerce_tax_rate",
    "ecommerce_order_value_min",
]
PRESET_JSON = ["device_mix", "channel_mix", "persona_mix", "catalog_overrides", "ecommerce_shipping_options"]


@pytest.mark.django_db
@given(
    numbers=st.dictionaries(st.sampled_from(PRESET_NUMBERS), NUMBERISH, max_size=3),
    json_fields=st.dictionaries(
        st.sampled_from([*PRESET_JSON, "events_json"]),
        st.one_of(JSON_VALUES.map(lambda value: json.dumps(value, allow_nan=True)), st.text(max_size=30)),
        max_size=2,
    ),
    text=st.dictionaries(
        st.sampled_from(["site_url", "pages_text", "timezone", "currency", "name"]), st.text(max_size=60), max_size=2
    ),
)
def test_the_preset_admin_form_saves_a_usable_preset_or_changes_nothing(numbers, json_fields, text):
    with rolled_back():
        preset = make_preset(name="Custom")
        base = preset_form_data(preset)
        assert PresetForm(data=base, instance=preset).is_valid()  # the unchanged form is valid
        before = counts()
        stored = Preset.objects.filter(pk=preset.pk).values().get()
        form = PresetForm(data={**base, **numbers, **json_fields, **text}, instance=Preset.objects.get(pk=preset.pk))
        event(f"valid: {form.is_valid()}")
        if not form.is_valid():
            assert counts() == before and Preset.objects.filter(pk=preset.pk).values().get() == stored
            return
        saved = form.save()
        saved.refresh_from_db()
        saved.catalog()  # the traffic model can use what was saved
        for name in ("visit_duration_min", "visit_duration_max", "pause_min", "pause_max", "auto_stop_after_hours"):
            value = getattr(saved, name)
            assert value is None or math.isfinite(value)


STEP_FIELDS = ["kind", "delay_min", "delay_max", "continue_probability", "event_value", "goal_id", "revenue", "items"]


@pytest.mark.django_db
@given(
    st.dictionaries(
        st.sampled_from(STEP_FIELDS),
        st.one_of(
            NUMBERISH,
            JSON_VALUES.map(lambda value: json.dumps(value, allow_nan=True)),
            st.sampled_from(["pageview", "event", "goal", "ecommerce_order"]),
        ),
        max_size=5,
    )
)
def test_the_funnel_step_form_saves_a_usable_step_or_changes_nothing(fields):
    with rolled_back():
        funnel = make_funnel(name="Checkout")
        before = counts()
        data = {
            "position": "1",
            "kind": "pageview",
            "url": "/cart",
            "items": "[]",
            "delay_min": "1",
            "delay_max": "5",
            "continue_probability": "0.8",
            **fields,
        }
        form = FunnelStepForm(data=data, instance=FunnelStep(funnel=funnel))
        event(f"valid: {form.is_valid()}")
        if not form.is_valid():
            assert counts() == before
            return
        step = form.save()
        step.refresh_from_db()
        for column in ("delay_min", "delay_max", "continue_probability", "event_value"):
            value = getattr(step, column)
            assert value is None or math.isfinite(value)
        assert Funnel.objects.specs_for_preset(Preset.objects.get(name="Light")) is not None


# --- the API's request bodies and `target add` ---------------------------------------------

RUN_KEYS = ["preset", "targets", "visits_per_day", "duration_seconds", "max_visits", "daily_cap", "seed"]
RUN_KEYS += ["bulk", "batch_size", "thresholds", "shards", "colour"]
PLAN_KEYS = ["preset", "targets", "start_date", "end_date", "last_days", "visits_per_day", "daily_cap", "total_cap"]
PLAN_KEYS += ["seed", "max_requests_per_second", "batch_size"]


def _api_bodies(keys: list[str]):
    usable = {"preset": st.just("Light"), "targets": st.just(["shop"])}
    values = st.one_of(JSON_VALUES, st.sampled_from(["Light", ["shop"], 1, 7, "2026-01-01"]))
    return st.one_of(
        st.fixed_dictionaries(usable, optional={key: values for key in keys if key not in usable}).map(json.dumps),
        st.dictionaries(st.sampled_from(keys), values).map(lambda body: json.dumps(body, allow_nan=True)),
        st.text(max_size=60),
        st.integers(1, 50_000).map(lambda depth: "[" * depth),
    )


@pytest.mark.django_db
@given(path=st.sampled_from(["runs/", "backfills/"]), body=st.data())
def test_any_api_body_is_created_or_a_json_error_that_changes_nothing(path, body):
    text = body.draw(_api_bodies(RUN_KEYS if path == "runs/" else PLAN_KEYS))
    with rolled_back():
        make_target(name="shop", **READY_TARGET)
        user = make_user(superuser=True)
        token = ApiToken.issue(user, "tests")[1]
        before = counts()
        response = Client().post(
            f"/api/v1/{path}", data=text, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
        assert response.status_code in (201, 400, 409), response.content[:300]
        event(f"HTTP {response.status_code}")
        answer = response.json()
        if response.status_code != 201:
            assert answer["error"] and counts() == before


@pytest.mark.django_db
@given(name=st.text(max_size=120), url=st.text(max_size=60), site_id=NUMBERISH)
def test_target_add_adds_a_valid_target_or_is_an_error_that_adds_nothing(name, url, site_id):
    with rolled_back():
        before = counts()
        try:
            call_command(
                "target", "add", "--name", name, "--url", url, "--site-id", site_id,
                stdout=io.StringIO(), stderr=io.StringIO(),
            )  # fmt: skip
        except CommandError as exc:
            assert str(exc) and counts() == before
            return
        target = Target.objects.get(name=name)
        assert target.tracking_url.endswith("/matomo.php") and 1 <= target.site_id < 2**31
