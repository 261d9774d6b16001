"""Presets: traffic profiles. Built-ins ship with the app; custom ones are the user's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from zoneinfo import available_timezones

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction

from presets.channels import misfiled_referrers
from presets.currencies import ISO_4217
from trafficinator.traffic import Catalog, CatalogError, Profile
from trafficinator.validation import check_model_values


def probability_field(verbose_name: str, default: float, help_text: str = "") -> models.FloatField:
    return models.FloatField(
        verbose_name,
        default=default,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text=help_text or "A probability from 0 to 1.",
    )


def validate_currency(value: str) -> None:
    if value not in ISO_4217:
        raise ValidationError(f"“{value}” is not an ISO 4217 currency code (e.g. SEK, EUR, USD).")


def validate_timezone(value: str) -> None:
    if value not in _timezones():
        raise ValidationError(f"“{value}” is not an IANA time zone (e.g. CET, Europe/Stockholm, UTC).")


def validate_thresholds(value: str) -> None:
    from trafficinator.thresholds import ThresholdError, parse_many

    try:
        parse_many(value)
    except ThresholdError as error:
        raise ValidationError(str(error)) from None


_TIMEZONES: frozenset[str] | None = None


def _timezones() -> frozenset[str]:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = frozenset(available_timezones())
    return _TIMEZONES


def validate_shipping_options(value) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError("Enter a list of shipping costs, e.g. [0, 4.99, 9.99].")
    for item in value:
        try:
            amount = Decimal(str(item))
        except ArithmeticError:
            raise ValidationError(f"Shipping cost “{item}” is not a number.") from None
        if isinstance(item, bool) or not amount.is_finite() or amount < 0:
            raise ValidationError(f"Shipping cost “{item}” must be a number of 0 or more.")


def default_shipping_options() -> list[float]:
    return [0, 4.99, 9.99, 19.99]


def default_device_mix() -> dict[str, float]:
    return {"desktop": 0.43, "mobile": 0.53, "tablet": 0.04}


def default_persona_mix() -> dict[str, float]:
    return {"researcher": 0.25, "buyer": 0.15, "casual": 0.60}


def default_channel_mix() -> dict[str, float]:
    return {"search": 0.55, "social": 0.15, "websites": 0.15, "campaign": 0.15}


def profile_from_knobs(knobs: Mapping[str, Any], **overrides: Any) -> Profile:
    """The traffic model's Profile from a preset's knobs: a live preset's, or the snapshot a
    run or a backfill plan took of them."""
    values = {name: value for name, value in knobs.items() if name in Profile.field_names()}
    values.update(overrides)
    return Profile(**values)


def catalog_with_overrides(overrides: dict | None) -> Catalog:
    """The default content catalog with a preset's overrides applied (raises CatalogError)."""
    base = Catalog.load_default()
    return base.with_overrides(overrides) if overrides else base


@dataclass(frozen=True)
class PresetSnapshot:
    """A preset's knobs as a run or a backfill plan took them when it was created, so
    editing the preset later changes nothing that already started. Stored as JSON in
    ``Run.profile`` and ``BackfillPlan.profile``, decimals as exact strings; a snapshot
    taken before a knob existed gets the traffic model's default for it."""

    knobs: Mapping[str, Any]

    @classmethod
    def of(cls, preset: Preset) -> PresetSnapshot:
        values = preset.knob_values()
        return cls({key: str(value) if isinstance(value, Decimal) else value for key, value in values.items()})

    def as_json(self) -> dict[str, Any]:
        return dict(self.knobs)

    def profile(self, **overrides: Any) -> Profile:
        return profile_from_knobs(self.knobs, **overrides)

    def catalog(self) -> Catalog:
        return catalog_with_overrides(self.knobs.get("catalog_overrides"))

    @property
    def timezone(self) -> str:
        return self.knobs.get("timezone") or "UTC"


class PresetQuerySet(models.QuerySet["Preset"]):
    def builtin(self) -> PresetQuerySet:
        return self.filter(is_builtin=True)

    def custom(self) -> PresetQuerySet:
        return self.filter(is_builtin=False)


class BuiltinPresetError(ValidationError):
    pass


class Preset(models.Model):
    """A traffic profile. Field names match ``trafficinator.traffic.Profile`` so a run can
    snapshot a preset into the traffic model without a translation table."""

    class DailyCurve(models.TextChoices):
        DEFAULT = "default", "Default (daytime peak, quiet nights)"
        BUSINESS = "business", "Business hours (weekday peak, quiet weekends)"
        EVENING = "evening", "Evening-heavy (content sites)"
        FLAT = "flat", "Flat (same rate around the clock)"

    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    is_builtin = models.BooleanField("built-in", default=False, editable=False)

    visits_per_day = models.PositiveIntegerField(
        default=1000, validators=[MinValueValidator(1), MaxValueValidator(50_000_000)]
    )
    pageviews_min = models.PositiveSmallIntegerField(
        "page views per visit (min)", default=2, validators=[MinValueValidator(1), MaxValueValidator(200)]
    )
    pageviews_max = models.PositiveSmallIntegerField(
        "page views per visit (max)", default=4, validators=[MinValueValidator(1), MaxValueValidator(200)]
    )
    visit_duration_min = models.FloatField(
        "visit duration, minutes (min)", default=0.5, validators=[MinValueValidator(0.0), MaxValueValidator(240.0)]
    )
    visit_duration_max = models.FloatField(
        "visit duration, minutes (max)", default=3.0, validators=[MinValueValidator(0.0), MaxValueValidator(240.0)]
    )
    pause_min = models.FloatField(
        "pause between page views, seconds (min)",
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(3600.0)],
    )
    pause_max = models.FloatField(
        "pause between page views, seconds (max)",
        default=3.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(3600.0)],
    )
    concurrency = models.PositiveIntegerField(
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(5000)],
        help_text="Most requests in flight at once, per target.",
    )
    auto_stop_after_hours = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.01)], help_text="Blank: run until stopped."
    )
    auto_stop_after_visits = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)], help_text="Blank: no visit limit."
    )
    daily_cap = models.PositiveIntegerField(
        "daily visit cap",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Pause after this many visits in a day and resume the next day. Blank: no cap.",
    )

    site_search_probability = probability_field("site search probability", 0.10)
    outlinks_probability = probability_field("outlinks probability", 0.05)
    downloads_probability = probability_field("downloads probability", 0.03)
    click_events_probability = probability_field("click events probability", 0.15)
    random_events_probability = probability_field("other events probability", 0.08)
    ecommerce_probability = probability_field("ecommerce probability", 0.02)
    direct_traffic_share = probability_field("direct traffic share", 0.40, "Share of visits with no referrer (0 to 1).")
    randomize_countries = models.BooleanField(
        "randomise visitor countries",
        default=False,
        help_text="Sends a visitor IP (cip) per country; Matomo accepts it only with a token that can write.",
    )

    ecommerce_order_value_min = models.DecimalField(
        max_digits=10, decimal_places=2, default=Decimal("15.99"), validators=[MinValueValidator(Decimal("0.01"))]
    )
    ecommerce_order_value_max = models.DecimalField(
        max_digits=10, decimal_places=2, default=Decimal("99.99"), validators=[MinValueValidator(Decimal("0.01"))]
    )
    ecommerce_items_min = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    ecommerce_items_max = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    ecommerce_tax_rate = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal("0.25"),
        validators=[MinValueValidator(Decimal("0")), MaxValueValidator(Decimal("1"))],
        help_text="Tax as a share of the subtotal, e.g. 0.25 for 25 %.",
    )
    ecommerce_shipping_options = models.JSONField(
        default=default_shipping_options,
        validators=[validate_shipping_options],
        error_messages={"blank": "Enter a list of shipping costs, e.g. [0, 4.99, 9.99]."},
        help_text="Shipping costs to choose from, as a JSON list, e.g. [0, 4.99, 9.99, 19.99].",
    )
    currency = models.CharField(max_length=3, default="SEK", validators=[validate_currency])
    timezone = models.CharField(
        "time zone",
        max_length=64,
        default="CET",
        validators=[validate_timezone],
        help_text="IANA name. The site's own time zone wins once a connection check has learned it.",
    )

    # Beyond the original tool: realism knobs (see README "Presets").
    bounce_share = probability_field("bounce share", 0.45, "Share of one-page visits (0 to 1).")
    returning_visitor_share = probability_field("returning visitor share", 0.35)
    logged_in_share = probability_field(
        "logged-in share", 0.10, "Share of returning visitors who log in (sends a user id)."
    )
    daily_curve = models.CharField(max_length=16, choices=DailyCurve.choices, default=DailyCurve.DEFAULT)
    device_mix = models.JSONField(
        default=default_device_mix,
        help_text='Shares that sum to 1, e.g. {"desktop": 0.43, "mobile": 0.53, "tablet": 0.04}.',
    )
    persona_mix = models.JSONField(
        default=default_persona_mix,
        help_text="Shares of researcher / buyer / casual visitors that sum to 1.",
    )
    channel_mix = models.JSONField(
        default=default_channel_mix,
        help_text="How non-direct visits arrive: search, social, websites, campaign (shares that sum to 1).",
    )
    campaign_param_style = models.CharField(
        max_length=8,
        choices=[("mtm", "mtm_* (Matomo)"), ("utm", "utm_* (Google Analytics)"), ("pk", "pk_* (legacy Piwik)")],
        default="mtm",
    )
    cart_abandonment_probability = probability_field("cart abandonment probability", 0.05)
    goal_probability = probability_field("goal conversion probability", 0.03)
    content_impressions_probability = probability_field("content impressions probability", 0.10)
    page_performance = models.BooleanField(default=True, help_text="Send page timings (pf_*) with page views.")
    client_hints = models.BooleanField(default=True, help_text="Send client hints (uadata) for Chromium browsers.")
    catalog_overrides = models.JSONField(
        default=dict,
        blank=True,
        help_text="Replace or extend parts of the default content catalog (pages, events, products, ...); "
        "see README “Catalog”.",
    )

    thresholds = models.TextField(
        blank=True,
        validators=[validate_thresholds],
        help_text="Default pass/fail criteria of runs with this preset, one per line, e.g. “p95_ms < 500” or "
        "“success_rate >= 0.99” (README “Thresholds”). A run can replace them.",
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PresetQuerySet.as_manager()

    class Meta:
        ordering = ["-is_builtin", "visits_per_day", "name"]
        constraints = [
            # Commands look presets up by name (`--preset Medium`).
            models.UniqueConstraint(fields=["name"], name="preset_name_unique"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if self.pk and self.is_builtin and Preset.objects.filter(pk=self.pk, is_builtin=True).exists():
            raise BuiltinPresetError("Built-in presets cannot be edited. Duplicate it into a custom preset instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        if self.is_builtin:
            raise BuiltinPresetError("Built-in presets cannot be deleted.")
        return super().delete(*args, **kwargs)

    def clean(self) -> None:
        super().clean()
        if self.is_builtin and self.pk:
            raise BuiltinPresetError("Built-in presets cannot be edited. Duplicate it into a custom preset instead.")
        # NaN, infinity, NUL and control characters that field validators let through.
        plain = check_model_values(self)
        if plain:
            raise ValidationError(plain)
        errors: dict[str, str] = {}
        pairs = [
            ("pageviews_min", "pageviews_max", "page views"),
            ("visit_duration_min", "visit_duration_max", "visit duration"),
            ("pause_min", "pause_max", "pause"),
            ("ecommerce_order_value_min", "ecommerce_order_value_max", "order value"),
            ("ecommerce_items_min", "ecommerce_items_max", "items per order"),
        ]
        for low_field, high_field, label in pairs:
            low, high = getattr(self, low_field), getattr(self, high_field)
            if low is not None and high is not None and low > high:
                errors[high_field] = f"The maximum {label} must be at least the minimum ({low})."
        if not errors:
            # The traffic model's own rules (mixes summing to 1, probabilities that fit
            # in the non-bounce share, ...), so admin, commands and imports agree.
            for field, message in self.to_profile().validate():
                errors.setdefault(field if field in self._field_names() else "__all__", message)
            errors.update(self._catalog_errors())
        if errors:
            raise ValidationError(errors)

    @classmethod
    def _field_names(cls) -> set[str]:
        return {field.name for field in cls._meta.get_fields()}

    def _catalog_errors(self) -> dict[str, str]:
        if not isinstance(self.catalog_overrides, dict):
            return {"catalog_overrides": 'Catalog overrides are a JSON object, e.g. {"pages": ...}, or {}.'}
        if not self.catalog_overrides:
            return {}
        try:
            catalog = self.catalog()
        except CatalogError as exc:
            return {"catalog_overrides": "; ".join(exc.messages())}
        # Referrers are checked like the built-in catalog's: against Matomo's own lists.
        misfiled = misfiled_referrers(catalog)
        if misfiled:
            return {"catalog_overrides": "; ".join(misfiled) + "."}
        return {}

    def to_profile(self, **overrides) -> Profile:
        """The traffic model's view of this preset (plain Python, no Django)."""
        return profile_from_knobs(self.knob_values(), **overrides)

    def catalog(self) -> Catalog:
        """The default content catalog with this preset's overrides applied."""
        return catalog_with_overrides(self.catalog_overrides)

    def can_edit(self) -> bool:
        return not self.is_builtin

    def available_copy_name(self) -> str:
        base = f"{self.name} (copy)"
        name, number = base, 2
        while Preset.objects.filter(name=name).exists():
            name = f"{base[:-1]} {number})"
            number += 1
        return name

    @transaction.atomic
    def duplicate(self, name: str | None = None) -> Preset:
        """A custom copy of this preset (built-in or not), with every knob kept."""
        copy = Preset.objects.get(pk=self.pk)
        copy.pk = None
        copy.is_builtin = False
        copy.name = name or self.available_copy_name()
        copy.full_clean()
        copy.save()
        return copy

    def threshold_lines(self) -> list[str]:
        """The default thresholds of runs with this preset (blank lines and # comments dropped)."""
        return [
            line.strip() for line in self.thresholds.splitlines() if line.strip() and not line.strip().startswith("#")
        ]

    def knob_values(self) -> dict:
        """Every traffic knob by name: what a run snapshots at start."""
        skip = {"id", "name", "description", "is_builtin", "created_at", "updated_at", "thresholds"}
        return {field.name: getattr(self, field.name) for field in self._meta.concrete_fields if field.name not in skip}
