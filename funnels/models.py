"""Funnels: ordered journeys that a fixed share of a preset's visits follows.

The traffic model (``trafficinator.traffic.funnels``) does the sampling; these models hold what
the user configured, validate it with messages a person can act on, and convert it with
``Funnel.to_spec()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Exists, OuterRef, Q

from funnels.kinds import DETAIL_COLUMNS, KIND_PARAMS, StepKind, columns_for
from presets.models import Preset
from trafficinator.traffic import MAX_DELAY_SECONDS, FunnelSpec, is_absolute_url, parse_items
from trafficinator.traffic import FunnelStep as TrafficStep
from trafficinator.validation import check_model_values

ONE = Decimal(1)
# Money in step parameters: at least a cent, at most what a DecimalField(12, 2) holds.
MONEY: dict[str, Any] = {"max_digits": 12, "decimal_places": 2, "null": True, "blank": True}


def percent(share: Decimal | float) -> str:
    """0.125 -> "12.5 %"."""
    value = (Decimal(str(share)) * 100).quantize(Decimal("0.01"))
    text = f"{value:f}".rstrip("0").rstrip(".")
    return f"{text} %"


@dataclass(frozen=True)
class ShareClaim:
    """One enabled funnel's claim on the visits of the presets it applies to."""

    key: Any  # identifies the funnel (a primary key, or a placeholder for an unsaved one)
    name: str
    share: Decimal
    all_presets: bool
    preset_ids: frozenset[int]

    @classmethod
    def of(cls, funnel: Funnel) -> ShareClaim:
        return cls(
            funnel.pk, funnel.name, funnel.share, funnel.all_presets, frozenset(p.pk for p in funnel.presets.all())
        )

    def applies_to(self, preset_id: int | None) -> bool:
        return self.all_presets or preset_id in self.preset_ids


def share_overflows(
    claims: Sequence[ShareClaim], preset_names: dict[int, str], concerning: set[Any]
) -> list[tuple[tuple[ShareClaim, ...], str]]:
    """(funnels, message) for every preset whose enabled funnels take more than all of its visits,
    counting only overflows that involve a claim whose key is in ``concerning``.

    Presets with the same overflowing funnels share one message. ``None`` stands for a
    preset created later: only "all presets" funnels reach it, so they alone must fit too.
    """
    groups: dict[tuple[ShareClaim, ...], list[int | None]] = {}
    for preset_id in [*preset_names, None]:
        members = tuple(sorted((c for c in claims if c.applies_to(preset_id)), key=lambda c: c.name))
        if sum((c.share for c in members), Decimal(0)) > ONE and any(c.key in concerning for c in members):
            groups.setdefault(members, []).append(preset_id)
    messages = []
    for members, preset_ids in groups.items():
        total = sum((c.share for c in members), Decimal(0))
        if None in preset_ids:
            where = "every preset"
        else:
            names = [preset_names[pk] for pk in preset_ids if pk is not None]
            where = f"preset “{names[0]}”" if len(names) == 1 else "presets " + ", ".join(f"“{n}”" for n in names)
        listing = ", ".join(f"“{c.name}” {percent(c.share)}" for c in members)
        messages.append(
            (
                members,
                f"Enabled funnels for {where} add up to {percent(total)} of visits ({listing}); "
                "together they can take at most 100 %. Lower a share or disable a funnel.",
            )
        )
    return messages


class FunnelQuerySet(models.QuerySet["Funnel"]):
    def enabled(self) -> FunnelQuerySet:
        return self.filter(enabled=True)

    def for_preset(self, preset: Preset) -> FunnelQuerySet:
        """Enabled funnels that visits of ``preset`` follow, steps prefetched, in the
        traffic model's order (priority first, then name)."""
        chosen = Funnel.presets.through.objects.filter(funnel=OuterRef("pk"), preset=preset)
        return (
            self.enabled()
            .filter(Q(all_presets=True) | Q(Exists(chosen)))
            .order_by("-priority", "name")
            .prefetch_related("steps")
        )

    def share_totals(self) -> list[tuple[Preset, Decimal]]:
        """Share of each preset's visits that enabled funnels take (for the changelist)."""
        claims = [ShareClaim.of(funnel) for funnel in self.enabled().prefetch_related("presets")]
        return [
            (preset, sum((claim.share for claim in claims if claim.applies_to(preset.pk)), Decimal(0)))
            for preset in Preset.objects.all()
        ]

    def specs_for_preset(self, preset: Preset) -> list[FunnelSpec]:
        """What a live run or backfill passes to the traffic model as ``funnels=``."""
        return [funnel.to_spec() for funnel in self.for_preset(preset)]


class Funnel(models.Model):
    """An ordered journey. ``share`` is of ALL visits of a preset that uses the funnel:
    funnels A at 0.10 and B at 0.05 get exactly 10 % and 5 % of visits, so the shares of
    enabled funnels that apply to one preset must add up to at most 1."""

    name = models.CharField(max_length=100, help_text="A unique name, also used in exported JSON.")
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True, help_text="Disabled funnels are kept but no visit follows them.")
    share = models.DecimalField(
        "share of visits",
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.05"),
        validators=[
            MinValueValidator(Decimal(0), "A share cannot be negative."),
            MaxValueValidator(ONE, "A share is at most 1 (all visits)."),
        ],
        help_text="Share of all visits that follow this funnel, 0 to 1 (0.05 = 5 %). Enabled funnels of "
        "one preset may add up to at most 1.",
    )
    priority = models.SmallIntegerField(
        default=0,
        help_text="Higher comes first when visits are divided between funnels. It decides which visits "
        "follow which funnel, never how many.",
    )
    all_presets = models.BooleanField(
        "used by all presets",
        default=True,
        help_text="Every preset, including ones created later. Untick it to pick presets below.",
    )
    presets = models.ManyToManyField(
        Preset,
        blank=True,
        related_name="funnels",
        help_text="The presets whose visits follow this funnel (only when “used by all presets” is off).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = FunnelQuerySet.as_manager()

    # clean() checks share totals against the saved funnels. An import that saves many
    # funnels at once turns this off and checks the totals of the whole file instead.
    check_share_total = True

    class Meta:
        ordering = ["-priority", "name"]
        constraints = [
            # `funnels export NAME` and JSON import look funnels up by name.
            models.UniqueConstraint(fields=["name"], name="funnel_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name

    # --- validation -------------------------------------------------------------

    def set_pending_presets(self, presets: Iterable[Preset | int]) -> None:
        """The presets this funnel is about to have. Forms and the importer know them
        before the many-to-many rows are saved, and ``clean()`` must judge those."""
        self._pending_preset_ids = frozenset(p if isinstance(p, int) else p.pk for p in presets)

    def preset_ids_for_validation(self) -> frozenset[int]:
        pending = getattr(self, "_pending_preset_ids", None)
        if pending is not None:
            return pending
        if self.pk is None:
            return frozenset()
        return frozenset(self.presets.values_list("pk", flat=True))

    def clean(self) -> None:
        super().clean()
        # NaN, infinity, NUL and control characters that field validators let through.
        plain = check_model_values(self)
        if plain:
            raise ValidationError(plain)
        preset_ids = self.preset_ids_for_validation()
        if not self.all_presets and not preset_ids:
            raise ValidationError(
                {"presets": "Pick the presets whose visits follow this funnel, or tick “used by all presets”."}
            )
        if self.all_presets and preset_ids:
            raise ValidationError(
                {"presets": "Untick “used by all presets” to use only the presets you picked, or clear the list."}
            )
        problems = self.share_problems(preset_ids) if self.check_share_total else []
        if problems:
            raise ValidationError({"share": problems})

    def share_problems(self, preset_ids: Iterable[int]) -> list[str]:
        """Overflowing share totals this funnel would cause or take part in, if enabled."""
        if not self.enabled or not isinstance(self.share, Decimal) or not Decimal(0) <= self.share <= ONE:
            return []
        others = Funnel.objects.enabled().prefetch_related("presets")
        if self.pk is not None:
            others = others.exclude(pk=self.pk)
        me = ShareClaim(self.pk or "new", self.name, self.share, self.all_presets, frozenset(preset_ids))
        claims = [ShareClaim.of(funnel) for funnel in others] + [me]
        overflows = share_overflows(claims, dict(Preset.objects.values_list("pk", "name")), {me.key})
        return [message for _members, message in overflows]

    @staticmethod
    def validate_steps(steps: Sequence[FunnelStep]) -> None:
        """Rules about the list of steps as a whole (each step validates itself)."""
        if not steps:
            raise ValidationError("A funnel needs at least one step.")
        positions = [step.position for step in steps if step.position is not None]
        duplicates = sorted({p for p in positions if positions.count(p) > 1})
        if duplicates:
            raise ValidationError(
                f"Two steps have the same position ({', '.join(map(str, duplicates))}); give each step its own."
            )

    # --- use -------------------------------------------------------------------

    def ordered_steps(self) -> list[FunnelStep]:
        return sorted(self.steps.all(), key=lambda step: (step.position, step.pk or 0))

    def to_spec(self) -> FunnelSpec:
        """The traffic model's view of this funnel."""
        return FunnelSpec(
            name=self.name,
            share=float(self.share),
            steps=tuple(step.to_spec() for step in self.ordered_steps()),
            priority=self.priority,
        )

    @property
    def share_percent(self) -> str:
        return percent(self.share)

    def applies_to_label(self) -> str:
        if self.all_presets:
            return "all presets"
        return ", ".join(preset.name for preset in self.presets.all()) or "no preset"


def _delay_field(verbose_name: str, help_text: str) -> models.FloatField:
    return models.FloatField(
        verbose_name,
        default=0.0,
        validators=[
            MinValueValidator(0.0, "A delay cannot be negative."),
            MaxValueValidator(
                MAX_DELAY_SECONDS, f"A delay is at most {MAX_DELAY_SECONDS:g} s: 30 minutes without a hit end a visit."
            ),
        ],
        help_text=help_text,
    )


_REQUIRED_MESSAGES = {
    "url": "Enter the URL.",
    "search_keyword": "A site search needs a keyword.",
    "event_category": "An event needs a category.",
    "event_action": "An event needs an action.",
    "goal_id": "Enter the Matomo goal id (a whole number of 1 or more).",
    "product_sku": "A product view needs the product's SKU.",
    "product_name": "A product view needs the product's name.",
    "content_name": "Content tracking needs a content name.",
}

_ITEMS_HELP = (
    'A JSON list of products, e.g. [{"sku": "SKU-1", "name": "Blue shirt", "category": "Shirts", '
    '"price": 19.99, "quantity": 2}]. Cart updates and orders.'
)


class FunnelStep(models.Model):
    """One hit of a funnel: what it sends, the pause before it, and whether the journey goes on."""

    Kind = StepKind

    funnel = models.ForeignKey(Funnel, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveIntegerField(help_text="Steps run in ascending position.")
    kind = models.CharField(max_length=24, choices=StepKind.choices, default=StepKind.PAGEVIEW)
    delay_min = _delay_field(
        "delay before, seconds (min)",
        "Pause before this step. The first step starts the visit, so its delay is unused.",
    )
    delay_max = _delay_field("delay before, seconds (max)", "")
    continue_probability = models.FloatField(
        "probability of continuing",
        default=1.0,
        validators=[
            MinValueValidator(0.0, "A probability is between 0 and 1."),
            MaxValueValidator(1.0, "A probability is between 0 and 1."),
        ],
        help_text="Chance (0 to 1) that a visit goes on to the next step; the rest drop off here.",
    )

    url = models.CharField(
        "URL",
        max_length=500,
        blank=True,
        help_text="Absolute http(s) URL, or a path starting with / on the target's site. Page views, downloads, "
        "product views; outlinks need an absolute URL.",
    )
    title = models.CharField(
        max_length=255, blank=True, help_text="Page title; use “ / ” to build Matomo's title tree."
    )
    search_keyword = models.CharField("search keyword", max_length=255, blank=True)
    search_category = models.CharField("search category", max_length=255, blank=True)
    search_count = models.PositiveIntegerField(
        "search result count", null=True, blank=True, help_text="0 feeds Matomo's “no result” report."
    )
    event_category = models.CharField("event category", max_length=255, blank=True)
    event_action = models.CharField("event action", max_length=255, blank=True)
    event_name = models.CharField("event name", max_length=255, blank=True)
    event_value = models.FloatField("event value", null=True, blank=True)
    goal_id = models.IntegerField("goal id", null=True, blank=True, help_text="The goal's id in Matomo (idgoal).")
    revenue = models.DecimalField(**MONEY, help_text="Goal revenue (optional).")
    product_sku = models.CharField("product SKU", max_length=255, blank=True)
    product_name = models.CharField("product name", max_length=255, blank=True)
    product_category = models.CharField("product category", max_length=255, blank=True)
    product_price = models.DecimalField("product price", **MONEY)
    items = models.JSONField(default=list, blank=True, help_text=_ITEMS_HELP)
    shipping = models.DecimalField(
        **MONEY, validators=[MinValueValidator(Decimal(0), "Shipping cannot be negative.")], help_text="Orders."
    )
    discount = models.DecimalField(
        **MONEY, validators=[MinValueValidator(Decimal(0), "A discount cannot be negative.")], help_text="Orders."
    )
    content_name = models.CharField("content name", max_length=255, blank=True)
    content_piece = models.CharField("content piece", max_length=255, blank=True)
    content_target = models.CharField(
        "content target", max_length=500, blank=True, help_text="Absolute http(s) URL or a path starting with /."
    )
    content_interaction = models.CharField(
        "content interaction", max_length=100, blank=True, help_text="e.g. click (interactions only)."
    )

    class Meta:
        verbose_name = "step"
        ordering = ["position", "id"]
        indexes = [
            # A funnel's steps in order: to_spec(), the inline and the preview.
            models.Index(fields=["funnel", "position"], name="funnelstep_funnel_position"),
        ]

    def __str__(self) -> str:
        return f"{self.position}. {self.get_kind_display()}: {self.summary()}"

    def summary(self) -> str:
        """A short description of what the step sends. Money is named (an order's bare
        "49.00" read as its value when it was the shipping)."""
        if self.kind in (StepKind.CART_UPDATE, StepKind.ORDER):
            return self._basket_summary()
        values = [str(getattr(self, column)) for column in columns_for(self.kind)]
        return " · ".join(value for value in values if value not in ("", "None"))

    def _basket_summary(self) -> str:
        items = self.items if isinstance(self.items, list) else []
        count = sum(int(item.get("quantity") or 1) for item in items if isinstance(item, dict)) or len(items)
        subtotal = sum(
            (
                Decimal(str(item.get("price") or 0)) * int(item.get("quantity") or 1)
                for item in items
                if isinstance(item, dict)
            ),
            Decimal(0),
        )
        parts = [f"{count} item{'' if count == 1 else 's'}", f"subtotal {subtotal:,.2f}"]
        if self.kind == StepKind.ORDER:
            shipping = Decimal(str(self.shipping or 0))
            discount = Decimal(str(self.discount or 0))
            if shipping:
                parts.append(f"shipping {shipping:,.2f}")
            if discount:
                parts.append(f"discount {discount:,.2f}")
            parts.append(f"order value {subtotal + shipping - discount:,.2f}")
        return " · ".join(parts)

    # --- validation -------------------------------------------------------------

    def clean(self) -> None:
        super().clean()
        # NaN, infinity, NUL and control characters that field validators let through.
        plain = check_model_values(self)
        if plain:
            raise ValidationError(plain)
        if self.kind not in KIND_PARAMS:
            return  # the choices validator has said so
        self.clear_unused_columns()
        errors: dict[str, list[str]] = {}

        def add(column: str, message: str) -> None:
            errors.setdefault(column, []).append(message)

        for param in KIND_PARAMS[self.kind]:
            if param.required and _is_empty(getattr(self, param.column)):
                add(param.column, self._required_message(param.column))
        self._check_locations(add)
        self._check_amounts(add)
        if isinstance(self.goal_id, int) and self.goal_id < 1:
            add("goal_id", "A goal id is a whole number of 1 or more.")
        if self.kind in (StepKind.CART_UPDATE, StepKind.ORDER) and not _is_empty(self.items):
            try:
                self.items = normalize_items(self.items)
            except ValidationError as exc:
                errors.setdefault("items", []).extend(exc.messages)
        if _is_number(self.delay_min) and _is_number(self.delay_max) and self.delay_min > self.delay_max:
            add("delay_max", f"The maximum delay must be at least the minimum delay ({self.delay_min:g} s).")
        if errors:
            raise ValidationError(errors)

    def full_clean(self, *args, **kwargs) -> None:
        super().full_clean(*args, **kwargs)
        # Reached only when every field and clean() passed: whatever passes here must pass
        # the traffic model too, which has the last word.
        problems = self.to_spec().validate()
        if problems:
            raise ValidationError([message.split(": ", 1)[-1].capitalize() + "." for _path, message in problems])

    def clear_unused_columns(self) -> None:
        """Columns that belong to other kinds are emptied, so a step never carries
        leftovers from a kind it had before."""
        used = set(columns_for(self.kind))
        for column in DETAIL_COLUMNS:
            if column not in used:
                field = self._meta.get_field(column)
                assert isinstance(field, models.Field)  # a concrete column, not a relation
                setattr(self, column, field.get_default() if not field.null else None)

    def _required_message(self, column: str) -> str:
        if column == "items":
            return (
                "An order needs at least one item."
                if self.kind == StepKind.ORDER
                else "A cart update needs at least one item."
            )
        if column == "url":
            return {
                StepKind.OUTLINK: "Enter the external URL the visitor leaves to.",
                StepKind.DOWNLOAD: "Enter the URL of the downloaded file.",
            }.get(StepKind(self.kind), "Enter the page URL.")
        return _REQUIRED_MESSAGES.get(column, "This field is required.")

    def _check_locations(self, add) -> None:
        absolute_only = self.kind == StepKind.OUTLINK
        for column in ("url", "content_target"):
            value = getattr(self, column)
            if _is_empty(value) or is_absolute_url(value):
                continue
            if not absolute_only and value.startswith("/") and not value.startswith("//") and " " not in value:
                continue
            if absolute_only:
                add(column, f"“{value}” is not an absolute http(s) URL (an outlink leaves the site).")
            else:
                add(column, f"“{value}” is not an absolute http(s) URL or a path starting with /.")

    def _check_amounts(self, add) -> None:
        if isinstance(self.product_price, Decimal) and self.product_price <= 0:
            add("product_price", "A price must be greater than 0.")
        if isinstance(self.revenue, Decimal) and self.revenue <= 0:
            add("revenue", "Revenue must be greater than 0 (or leave it empty).")

    # --- use -------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The kind's parameters by their JSON key, empty ones left out."""
        values = {}
        for param in KIND_PARAMS.get(self.kind, ()):
            value = getattr(self, param.column)
            if not _is_empty(value):
                values[param.key] = value
        return values

    def to_spec(self) -> TrafficStep:
        params = {}
        for param in KIND_PARAMS.get(self.kind, ()):
            value = getattr(self, param.column)
            if not _is_empty(value):
                params[param.traffic_name] = value
        return TrafficStep(
            self.kind,
            params,
            delay_min=self.delay_min,
            delay_max=self.delay_max,
            continue_probability=self.continue_probability,
        )


def normalize_items(raw: Any) -> list[dict[str, Any]]:
    """Cart or order items as [{"sku", "name", "category", "price", "quantity"}], from
    that shape or from Matomo's [sku, name, category, price, quantity] lists."""
    try:
        parsed = parse_items(raw)
    except ValueError as exc:
        message = str(exc)
        raise ValidationError(message[:1].upper() + message[1:] + ".") from None
    return [
        {"sku": sku, "name": name, "category": category, "price": float(price), "quantity": quantity}
        for sku, name, category, price, quantity in parsed
    ]


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
