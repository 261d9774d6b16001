from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from funnels.kinds import KIND_PARAMS, StepKind
from funnels.models import Funnel, FunnelStep
from trafficinator.testing import make_funnel, make_preset, make_step
from trafficinator.traffic import STEP_KINDS

pytestmark = pytest.mark.django_db

ITEM = {"sku": "SKU-1", "name": "Boots", "category": "Shoes", "price": 99.5, "quantity": 2}


def step_errors(**fields) -> dict[str, list[str]]:
    step = FunnelStep(position=1, **fields)
    with pytest.raises(ValidationError) as caught:
        step.full_clean(exclude=["funnel"])
    return caught.value.message_dict


def test_to_spec_lists_steps_in_position_order_with_the_traffic_models_parameter_names():
    funnel = make_funnel(
        name="Signup",
        share="0.125",
        priority=3,
        steps=[
            make_step("goal", position=20, goal_id=4, revenue=Decimal("50.00"), delay_min=1, delay_max=2),
            make_step("pageview", position=10, url="/newsletter", title="Newsletter", continue_probability=0.4),
        ],
    )
    spec = funnel.to_spec()
    assert (spec.name, spec.share, spec.priority) == ("Signup", 0.125, 3)
    assert [step.kind for step in spec.steps] == ["pageview", "goal"]
    assert dict(spec.steps[0].params) == {"url": "/newsletter", "title": "Newsletter"}
    assert spec.steps[0].continue_probability == 0.4
    assert dict(spec.steps[1].params) == {"idgoal": 4, "revenue": Decimal("50.00")}
    assert (spec.steps[1].delay_min, spec.steps[1].delay_max) == (1, 2)
    assert spec.validate() == []


def test_for_preset_returns_enabled_funnels_that_apply_to_it_by_priority():
    light, medium = make_preset(), make_preset()
    everywhere = make_funnel(name="Everywhere", priority=1)
    only_light = make_funnel(name="Only light", presets=[light], priority=5)
    make_funnel(name="Only medium", presets=[medium])
    make_funnel(name="Disabled", enabled=False)
    assert list(Funnel.objects.for_preset(light)) == [only_light, everywhere]
    assert [spec.name for spec in Funnel.objects.specs_for_preset(medium)] == ["Everywhere", "Only medium"]


def test_shares_above_100_percent_for_one_preset_are_rejected_naming_the_funnels_and_the_total():
    shop = make_preset(name="Shop")
    make_funnel(name="Checkout", share="0.6", presets=[shop])
    with pytest.raises(ValidationError) as caught:
        make_funnel(name="Lead", share="0.55")
    (message,) = caught.value.message_dict["share"]
    assert "preset “Shop”" in message
    assert "115 %" in message
    assert "“Checkout” 60 %" in message and "“Lead” 55 %" in message


def test_all_presets_funnels_alone_must_fit_even_before_any_custom_preset_uses_them():
    make_funnel(name="A", share="0.7")
    with pytest.raises(ValidationError, match="for every preset add up to 130 %"):
        make_funnel(name="B", share="0.6")


def test_shares_of_funnels_for_different_presets_do_not_add_up():
    light, medium = make_preset(), make_preset()
    make_funnel(share="0.8", presets=[light])
    make_funnel(share="0.8", presets=[medium])
    assert Funnel.objects.count() == 2


def test_disabled_funnels_do_not_count_towards_the_share_total():
    make_funnel(share="0.9", enabled=False)
    make_funnel(share="1")
    with pytest.raises(ValidationError, match="110 %"):
        make_funnel(share="0.1")


def test_raising_a_share_while_removing_a_preset_is_judged_with_the_new_presets():
    light, medium = make_preset(), make_preset()
    make_funnel(share="0.9", presets=[medium])
    funnel = make_funnel(share="0.05", presets=[light, medium])
    funnel.share = Decimal("0.5")
    funnel.set_pending_presets([light])
    funnel.full_clean()  # would be 140 % for medium with the old presets


def test_a_funnel_must_apply_to_some_preset():
    with pytest.raises(ValidationError, match="Pick the presets"):
        make_funnel(all_presets=False)
    with pytest.raises(ValidationError, match="Untick “used by all presets”"):
        make_funnel(all_presets=True, presets=[make_preset()])


def test_share_is_between_0_and_1():
    with pytest.raises(ValidationError, match="at most 1"):
        make_funnel(share="1.5")
    with pytest.raises(ValidationError, match="cannot be negative"):
        make_funnel(share="-0.1")


def test_a_funnel_needs_at_least_one_step_and_distinct_positions():
    with pytest.raises(ValidationError, match="at least one step"):
        Funnel.validate_steps([])
    with pytest.raises(ValidationError, match=r"same position \(2\)"):
        Funnel.validate_steps([make_step(position=2), make_step(position=2)])


@pytest.mark.parametrize(
    ("fields", "column", "message"),
    [
        ({"kind": "pageview", "url": "shop.example.com/cart"}, "url", "is not an absolute http(s) URL"),
        ({"kind": "pageview", "url": "ftp://example.com/x"}, "url", "is not an absolute http(s) URL"),
        ({"kind": "pageview", "url": ""}, "url", "Enter the page URL."),
        ({"kind": "outlink", "url": "/partners"}, "url", "an outlink leaves the site"),
        ({"kind": "download", "url": "javascript:alert(1)"}, "url", "is not an absolute http(s) URL"),
        ({"kind": "pageview", "url": "/", "delay_min": 10, "delay_max": 5}, "delay_max", "at least the minimum"),
        ({"kind": "pageview", "url": "/", "delay_min": -1}, "delay_min", "cannot be negative"),
        ({"kind": "pageview", "url": "/", "delay_max": 4000}, "delay_max", "30 minutes"),
        ({"kind": "pageview", "url": "/", "continue_probability": 1.2}, "continue_probability", "between 0 and 1"),
        ({"kind": "pageview", "url": "/", "continue_probability": -0.2}, "continue_probability", "between 0 and 1"),
        ({"kind": "goal", "goal_id": 0}, "goal_id", "1 or more"),
        ({"kind": "goal", "goal_id": "two"}, "goal_id", "must be an integer"),
        ({"kind": "goal"}, "goal_id", "Enter the Matomo goal id"),
        ({"kind": "order", "items": []}, "items", "An order needs at least one item."),
        ({"kind": "cart_update"}, "items", "A cart update needs at least one item."),
        ({"kind": "order", "items": [{**ITEM, "price": 0}]}, "items", "Item 1 price must be greater than 0"),
        ({"kind": "order", "items": [{**ITEM, "quantity": 0}]}, "items", "Item 1 quantity"),
        ({"kind": "event", "event_category": "Video"}, "event_action", "An event needs an action."),
        ({"kind": "event", "event_action": "Play"}, "event_category", "An event needs a category."),
        ({"kind": "search"}, "search_keyword", "needs a keyword"),
        ({"kind": "product_view", "product_sku": "S", "product_name": "N", "product_price": 0}, "product_price", "> 0"),
        ({"kind": "goal", "goal_id": 1, "revenue": Decimal("-5")}, "revenue", "greater than 0"),
        ({"kind": "order", "items": [ITEM], "shipping": Decimal("-1")}, "shipping", "cannot be negative"),
        ({"kind": "content_impression"}, "content_name", "content name"),
        ({"kind": "content_impression", "content_name": "Box", "content_target": "x y"}, "content_target", "absolute"),
    ],
)
def test_invalid_steps_are_explained_on_the_field_at_fault(fields, column, message):
    errors = step_errors(**fields)
    assert column in errors, errors
    assert any(message in text or (message == "> 0" and "greater than 0" in text) for text in errors[column]), errors


def test_valid_steps_of_every_kind_pass_model_and_traffic_model_validation():
    steps = [
        make_step("pageview", url="https://shop.example.com/", title="Home"),
        make_step("search", search_keyword="boots", search_category="Shoes", search_count=0),
        make_step("event", event_category="Video", event_action="Play", event_name="Intro", event_value=3),
        make_step("outlink", url="https://partner.example.org/"),
        make_step("download", url="/files/guide.pdf"),
        make_step("goal", goal_id=2),
        make_step("product_view", product_sku="S1", product_name="Boots", product_price=Decimal("99.50")),
        make_step("cart_update", items=[ITEM]),
        make_step("order", items=[["SKU-2", "Tent", "Camping", "1999.00", 1]], shipping=Decimal("49")),
        make_step("content_impression", content_name="Banner", content_piece="Sale", content_target="/sale"),
        make_step("content_interaction", content_name="Banner", content_interaction="click"),
    ]
    funnel = make_funnel(steps=steps)
    assert funnel.to_spec().validate() == []
    order = funnel.ordered_steps()[8]
    # Matomo's list form is stored as objects, the form the export writes.
    assert order.items == [{"sku": "SKU-2", "name": "Tent", "category": "Camping", "price": 1999.0, "quantity": 1}]


def test_changing_a_steps_kind_clears_the_fields_of_its_old_kind():
    funnel = make_funnel(steps=[make_step("event", event_category="Video", event_action="Play")])
    step = funnel.steps.get()
    step.kind, step.url = "pageview", "/video"
    step.full_clean()
    step.save()
    step.refresh_from_db()
    assert (step.event_category, step.event_action, step.url) == ("", "", "/video")


def test_step_kinds_and_parameters_agree_with_the_traffic_model():
    assert set(StepKind.values) == set(STEP_KINDS)
    for kind, params in KIND_PARAMS.items():
        required, optional = STEP_KINDS[kind]
        assert {p.traffic_name for p in params} <= set(required) | set(optional), kind
        assert {p.traffic_name for p in params if p.required} == set(required), kind
