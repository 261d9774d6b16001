import json
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from funnels.models import Funnel, FunnelStep
from funnels.transfer import FunnelImportError, export_queryset, import_funnels
from trafficinator.testing import make_funnel, make_preset, make_step

pytestmark = pytest.mark.django_db

ITEM = {"sku": "SKU-1", "name": "Boots", "category": "Shoes", "price": 99.5, "quantity": 2}


def make_rich_funnels():
    shop = make_preset(name="Shop")
    make_funnel(
        name="Purchase",
        description="Buys boots",
        share="0.125",
        priority=2,
        presets=[shop],
        steps=[
            make_step("pageview", url="/", title="Home", continue_probability=0.7),
            make_step("search", search_keyword="boots", search_count=0, delay_min=1.5, delay_max=3),
            make_step("product_view", product_sku="SKU-1", product_name="Boots", product_price=Decimal("99.50")),
            make_step("cart_update", items=[ITEM], delay_min=5, delay_max=10),
            make_step("order", items=[ITEM], shipping=Decimal("49"), discount=Decimal("10.5")),
        ],
    )
    make_funnel(
        name="Engaged reader",
        enabled=False,
        steps=[
            make_step("event", event_category="Video", event_action="Play", event_name="Intro", event_value=2.5),
            make_step("content_interaction", content_name="Box", content_target="https://shop.example.com/x"),
            make_step("goal", goal_id=1, revenue=Decimal("5")),
            make_step("download", url="/guide.pdf"),
            make_step("outlink", url="https://partner.example.org/"),
        ],
    )


def export_all() -> str:
    return export_queryset(Funnel.objects.all())


def snapshot() -> list:
    return list(Funnel.objects.values_list("pk", "name", "share", "updated_at")) + list(
        FunnelStep.objects.values_list("pk", "funnel_id", "position", "kind", "url")
    )


def test_export_then_import_into_an_empty_database_then_export_gives_identical_json():
    make_rich_funnels()
    first = export_all()
    Funnel.objects.all().delete()
    result = import_funnels(first)
    assert sorted(result.created) == ["Engaged reader", "Purchase"]
    assert export_all() == first


def test_import_with_replace_overwrites_funnels_of_the_same_name_and_keeps_their_ids():
    make_rich_funnels()
    first = export_all()
    ids = dict(Funnel.objects.values_list("name", "pk"))
    data = json.loads(first)
    data["funnels"][1]["steps"][0]["title"] = "Start page"
    result = import_funnels(json.dumps(data), replace=True)
    assert sorted(result.replaced) == ["Engaged reader", "Purchase"]
    assert dict(Funnel.objects.values_list("name", "pk")) == ids
    assert Funnel.objects.get(name="Purchase").ordered_steps()[0].title == "Start page"
    assert json.loads(export_all()) == data


def test_exported_json_is_readable_and_holds_only_each_kinds_parameters():
    make_rich_funnels()
    data = json.loads(export_all())
    assert (data["format"], data["version"]) == ("trafficinator-funnels", 1)
    purchase = data["funnels"][1]
    assert purchase["presets"] == ["Shop"] and purchase["all_presets"] is False and purchase["share"] == 0.125
    assert purchase["steps"][1] == {
        "kind": "search",
        "keyword": "boots",
        "count": 0,
        "delay_min": 1.5,
        "delay_max": 3.0,
        "continue_probability": 1.0,
    }
    assert purchase["steps"][4]["items"] == [ITEM]
    assert (purchase["steps"][4]["shipping"], purchase["steps"][4]["discount"]) == (49.0, 10.5)


def bad_file() -> str:
    return json.dumps(
        {
            "format": "trafficinator-funnels",
            "version": 1,
            "funnels": [
                {"name": "Fine", "share": 0.1, "steps": [{"kind": "pageview", "url": "/"}]},
                {
                    "name": "Broken",
                    "share": 0.2,
                    "presets": ["Nope"],
                    "colour": "red",
                    "steps": [
                        {"kind": "pageview", "url": "/a"},
                        {"kind": "teleport"},
                        {"kind": "pageview", "url": "/b", "delay_min": 10, "delay_max": 5},
                        {"kind": "goal", "goal_id": "one"},
                        {"kind": "order", "items": []},
                        {"kind": "event", "category": "Video", "label": "x"},
                        {"kind": "outlink", "url": "partner.example.org"},
                        {"kind": "pageview", "url": "/c", "continue_probability": 2},
                    ],
                },
                {"name": "Empty", "steps": []},
                {"name": "Fine", "steps": [{"kind": "pageview", "url": "/"}]},
            ],
        }
    )


def test_a_bad_import_reports_every_problem_with_its_path_and_changes_nothing():
    make_rich_funnels()
    before = snapshot()
    with pytest.raises(FunnelImportError) as caught:
        import_funnels(bad_file(), replace=True)
    problems = caught.value.problems
    expected = [
        "funnels[1]: unknown key(s) colour",
        'funnels[1].presets[0]: no preset named "Nope"',
        'funnels[1].steps[1].kind: "teleport" is not a step kind',
        "funnels[1].steps[2].delay_max: The maximum delay must be at least the minimum delay (10 s).",
        "funnels[1].steps[3].goal_id: must be a whole number",
        "funnels[1].steps[4].items: An order needs at least one item.",
        "funnels[1].steps[5]: unknown key(s) label (steps of kind “event” take kind, category, action, name, value,",
        "funnels[1].steps[5].action: An event needs an action.",
        "funnels[1].steps[6].url: “partner.example.org” is not an absolute http(s) URL (an outlink leaves the site).",
        "funnels[1].steps[7].continue_probability: A probability is between 0 and 1.",
        "funnels[2].steps: A funnel needs at least one step.",
        "funnels[3].name: “Fine” is also the name of funnels[0]",
    ]
    for line in expected:
        assert any(problem.startswith(line) for problem in problems), (line, problems)
    assert len(problems) == len(expected), problems
    assert snapshot() == before


def test_an_import_that_pushes_a_presets_shares_above_100_percent_is_refused():
    make_funnel(name="Existing", share="0.7")
    text = json.dumps({"funnels": [{"name": "New", "share": 0.4, "steps": [{"kind": "pageview", "url": "/"}]}]})
    with pytest.raises(FunnelImportError) as caught:
        import_funnels(text)
    (problem,) = caught.value.problems
    assert problem.startswith("funnels[0].share: Enabled funnels for every preset add up to 110 %")
    assert "“Existing” 70 %" in problem and "“New” 40 %" in problem
    assert not Funnel.objects.filter(name="New").exists()


def test_replacing_a_funnel_counts_its_new_share_instead_of_the_old_one():
    make_funnel(name="Existing", share="0.7")
    make_funnel(name="Other", share="0.3")
    text = json.dumps({"funnels": [{"name": "Existing", "share": 0.6, "steps": [{"kind": "pageview", "url": "/"}]}]})
    import_funnels(text, replace=True)
    assert Funnel.objects.get(name="Existing").share == Decimal("0.6")


def test_importing_a_name_that_exists_without_replace_is_an_error():
    make_funnel(name="Existing")
    text = json.dumps({"funnels": [{"name": "Existing", "steps": [{"kind": "pageview", "url": "/"}]}]})
    with pytest.raises(FunnelImportError, match=r"funnels\[0\].name: a funnel named “Existing” already exists"):
        import_funnels(text)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ('"funnels"', "file: expected an object"),
        ('{"format": "other", "funnels": []}', "format: expected “trafficinator-funnels”, got 'other'"),
        ('{"version": 2, "funnels": []}', "version: this Trafficinator reads version 1, the file has 2"),
        ('{"funnels": {}}', "funnels: expected a list of funnels"),
        ('{"funnels": []}', "funnels: the file has no funnels"),
    ],
)
def test_malformed_files_are_explained(text, problem):
    with pytest.raises(FunnelImportError) as caught:
        import_funnels(text)
    assert [line for line in caught.value.problems if line.startswith(problem)], caught.value.problems


def test_command_exports_named_funnels_to_a_file_and_imports_them_back(tmp_path, capsys):
    make_rich_funnels()
    path = tmp_path / "funnels.json"
    call_command("funnels", "export", "Purchase", "-o", str(path))
    exported = path.read_text()
    assert [f["name"] for f in json.loads(exported)["funnels"]] == ["Purchase"]
    Funnel.objects.filter(name="Purchase").delete()
    call_command("funnels", "import", str(path))
    assert "Funnels created 1 (Purchase)." in capsys.readouterr().out
    call_command("funnels", "export", "Purchase")
    assert capsys.readouterr().out == exported


def test_command_import_reports_problems_and_exits_with_an_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(bad_file())
    with pytest.raises(CommandError, match=r"Nothing was imported; 12 problem\(s\)") as caught:
        call_command("funnels", "import", str(path))
    assert "funnels[1].steps[2].delay_max: The maximum delay must be at least" in str(caught.value)
    assert not Funnel.objects.exists()


def test_command_import_dry_run_saves_nothing(tmp_path, capsys):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"funnels": [{"name": "One", "steps": [{"kind": "pageview", "url": "/"}]}]}))
    call_command("funnels", "import", str(path), "--dry-run")
    assert "Dry run, nothing saved. Would create 1 (One)." in capsys.readouterr().out
    assert not Funnel.objects.exists()


def test_command_export_of_an_unknown_name_is_an_error():
    make_funnel(name="Known")
    with pytest.raises(CommandError, match=r"No funnel named “Missing”\. Known funnels: Known\."):
        call_command("funnels", "export", "Missing")


def test_an_imported_funnel_without_share_or_presets_gets_the_same_defaults_as_in_the_admin():
    import_funnels(json.dumps({"funnels": [{"name": "Bare", "steps": [{"kind": "pageview", "url": "/"}]}]}))
    funnel = Funnel.objects.get(name="Bare")
    assert (funnel.share, funnel.enabled, funnel.all_presets, funnel.priority) == (Decimal("0.05"), True, True, 0)
