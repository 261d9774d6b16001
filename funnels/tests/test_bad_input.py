"""Bad funnel imports and step values: a message per problem, nothing saved, never a 500
or a traceback. Each test is a reproduction from issue 14."""

from __future__ import annotations

import io
import json
import math

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from funnels.models import Funnel, FunnelStep
from funnels.transfer import FunnelImportError, export_funnels, import_funnels
from trafficinator.cli import USAGE_EXIT_CODE
from trafficinator.testing import make_funnel, make_step, make_user


def funnel_json(**step) -> str:
    """A one-funnel export whose first step has these keys (raw JSON values)."""
    fields = {"kind": '"event"', "category": '"Video"', "action": '"Play"', **step}
    values = ", ".join(f'"{key}": {value}' for key, value in fields.items())
    head = '{"format": "trafficinator-funnels", "version": 1, "funnels": [{"name": "Watch", "share": 0.1, '
    return head + '"steps": [{' + values + "}]}]}"


BAD_IMPORTS = [
    pytest.param(funnel_json(delay_min="NaN"), "NaN", id="nan-delay"),
    pytest.param(funnel_json(continue_probability="NaN"), "NaN", id="nan-probability"),
    pytest.param(funnel_json(value="Infinity"), "Infinity", id="infinite-event-value"),
    pytest.param(funnel_json(value="-Infinity"), "Infinity", id="minus-infinite-event-value"),
    pytest.param(funnel_json(value="1e999"), "too large", id="overflowing-event-value"),
    pytest.param(funnel_json(value="1" + "0" * 400), "finite", id="huge-integer-event-value"),
    pytest.param(funnel_json(value="NaN"), "NaN", id="nan-event-value"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nested", id="deep-nesting"),
    pytest.param(funnel_json(name='"Intro\\u0000"'), "NUL", id="nul-in-event-name"),
    pytest.param(funnel_json().replace('"Watch"', '"Wat\\u0000ch"'), "control character", id="nul-in-funnel-name"),
    # Found by the property suite: a list where a preset name belongs was a TypeError (500).
    pytest.param(
        funnel_json().replace('"share": 0.1,', '"share": 0.1, "presets": [[]],'), "no preset", id="list-as-preset"
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("text", "named"), BAD_IMPORTS)
def test_a_bad_import_names_the_problem_and_saves_nothing(text, named):
    with pytest.raises(FunnelImportError) as info:
        import_funnels(text)
    assert named.lower() in str(info.value).lower()
    assert not Funnel.objects.exists() and not FunnelStep.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("text", "named"), BAD_IMPORTS)
def test_a_bad_import_in_the_admin_is_a_form_error_not_a_500(client, text, named):
    client.force_login(make_user(superuser=True))
    response = client.post(reverse("admin:funnels_funnel_import"), {"text": text})
    assert response.status_code == 200
    assert named.lower() in response.content.decode().lower()
    assert not Funnel.objects.exists()


@pytest.mark.django_db
def test_a_bad_import_on_the_command_line_is_a_message_with_exit_status_2(tmp_path):
    path = tmp_path / "funnels.json"
    path.write_text(funnel_json(delay_min="NaN"))
    with pytest.raises(CommandError) as info:
        call_command("funnels", "import", str(path), stdout=io.StringIO())
    assert "NaN" in str(info.value) and info.value.returncode == USAGE_EXIT_CODE
    assert not Funnel.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields",
    [{"delay_min": math.nan}, {"continue_probability": math.nan}, {"delay_max": math.inf}],
)
def test_step_timing_that_is_not_finite_is_refused_by_the_model(fields):
    with pytest.raises(ValidationError) as info:
        make_funnel(steps=[make_step(**fields)])
    assert "finite" in str(info.value)


@pytest.mark.django_db
def test_an_infinite_event_value_never_reaches_the_database_or_an_export():
    with pytest.raises(ValidationError):
        make_funnel(steps=[make_step("event", event_category="V", event_action="P", event_value=math.inf)])
    funnel = make_funnel(steps=[make_step("event", event_category="V", event_action="P", event_value=2.5)])
    json.loads(export_funnels([funnel]), parse_constant=lambda name: pytest.fail(f"{name} in export"))


@pytest.mark.django_db
def test_deeply_nested_items_in_the_step_admin_are_a_form_error(client):
    from funnels.forms import FunnelStepForm

    form = FunnelStepForm(data={"position": 1, "kind": "order", "items": "[" * 50_000 + "]" * 50_000})
    assert not form.is_valid() and "nested" in str(form.errors["items"])
